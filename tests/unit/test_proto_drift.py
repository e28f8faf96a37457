"""The committed generated code must be exactly what protoc makes of the .proto (`make proto`)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
PROTO = "profilestream/events/v1/user_event.proto"


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    from grpc_tools import protoc  # type: ignore[import-untyped]

    include = Path(protoc.__file__).parent / "_proto"
    rc = protoc.main(
        [
            "protoc",
            f"-I{SCHEMAS}",
            f"-I{include}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            str(SCHEMAS / PROTO),
        ]
    )
    assert rc == 0
    for suffix in ("_pb2.py", "_pb2.pyi"):
        name = PROTO.replace(".proto", suffix)
        fresh = (tmp_path / name).read_text()
        committed = (SCHEMAS / name).read_text()
        if fresh != committed:
            pytest.fail(f"schemas/{name} is stale: run `make proto` and commit the result")


def test_contract_enums_are_as_documented() -> None:
    from schemas.profilestream.events.v1 import user_event_pb2 as pb

    assert dict(pb.EventType.items()) == {
        "EVENT_TYPE_UNSPECIFIED": 0,
        "EVENT_TYPE_VIEW": 1,
        "EVENT_TYPE_ADD_TO_CART": 2,
        "EVENT_TYPE_REMOVE_FROM_CART": 3,
        "EVENT_TYPE_FAVORITE": 4,
        "EVENT_TYPE_PURCHASE": 5,
        "EVENT_TYPE_SEARCH": 6,
        "EVENT_TYPE_ERASE": 7,
    }
    optional = {f.name for f in pb.UserEvent.DESCRIPTOR.fields if f.has_presence}
    assert {
        "item_id",
        "category_id",
        "brand",
        "price_micros",
        "currency",
        "quantity",
        "session_id",
        "search_query",
        "event_time",
    } <= optional
