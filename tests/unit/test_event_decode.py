"""The C decoder of plainly valid events (udfs/_eventdecode.c) against the protobuf path it
short-cuts: whatever it returns is exactly the protobuf path's event, and every message it
leaves (None) still gets its event or its dead-letter reason from the protobuf path."""

from __future__ import annotations

import importlib
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import hostile
from udfs import events as ev
from udfs._impl import selected
from udfs.events import InvalidEvent, decode_event, decode_event_py, make_message
from udfs.sources import SyntheticSpec, encode_varint, synthetic_events

NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z
USERS = ["alice", "bob", "Robert'); DROP TABLE x;--"]


def _fast() -> Any:
    if selected["mode"] != "native":
        pytest.skip(f"no native build ({selected.get('reason')})")
    return importlib.import_module("udfs._eventdecode").decode


def _python(raw: bytes) -> ev.Event | InvalidEvent:
    try:
        return decode_event_py(raw, NOW)
    except InvalidEvent as exc:
        return exc


def _agree(raw: bytes) -> bool:
    """The C decoder returned an event (True) equal to the protobuf path's, or left it (False)."""
    got = _fast()(raw, NOW, ev.Event)
    if got is None:
        return False
    want = _python(raw)
    assert isinstance(want, ev.Event), (raw, want)
    assert type(got) is ev.Event
    assert got == want and got._asdict() == want._asdict(), raw
    assert decode_event(raw, NOW) == want
    return True


def test_the_native_build_decodes_in_c_with_the_contract_limits() -> None:
    if selected["mode"] == "native":
        assert ev._FAST_DECODE is not None, "the native build should include _eventdecode"
        module = importlib.import_module("udfs._eventdecode")
        for name, value in ev._LIMITS.items():
            assert getattr(module, name) == value, name
    else:
        assert ev._FAST_DECODE is None


def test_plainly_valid_events_are_decoded_in_c() -> None:
    """The bench's synthetic shoppers: every event of the common shape takes the C path."""
    spec = SyntheticSpec(events=20_000, users=2_000, seed=4)
    raws = [m.SerializeToString() for m in synthetic_events(spec)]
    now = 10**13
    fast = _fast()
    for raw in raws:
        got = fast(raw, now, ev.Event)
        assert got is not None, raw
        assert got == decode_event_py(raw, now)


def _message(rng: random.Random, **overrides: Any) -> bytes:
    kind = rng.choice([*ev.EVENT_TYPES, ev.ERASE])
    price = rng.choice([None, 0, 1, 199_990_000, ev.MAX_PRICE_MICROS])
    fields: dict[str, Any] = dict(
        event_id=f"e-{rng.randrange(10**9)}",
        user_id=rng.choice(USERS),
        event_type=kind,
        event_time_ms=rng.choice([ev.MIN_EVENT_TIME_MS, NOW - 5, NOW + ev.MAX_FUTURE_SKEW_MS]),
        item_id=rng.choice([None, "", "i-1", "x" * ev.MAX_FIELD_BYTES]),
        category_id=rng.choice([None, "", "c.1"]),
        brand=rng.choice([None, "", "acme"]),
        price_micros=price,
        currency=rng.choice(["USD", "EUR"]) if price is not None else rng.choice([None, "GBP"]),
        quantity=rng.choice([None, 1, ev.MAX_QUANTITY]),
        session_id=rng.choice([None, "", "s-1"]),
        search_query=rng.choice([None, "", "red shoes"]),
        channel=rng.choice([0, 1, 5]),
    )
    fields.update(overrides)
    return make_message(**fields).SerializeToString()


def test_valid_and_invalid_field_combinations_agree() -> None:
    rng = random.Random(11)
    decided = 0
    for _ in range(5_000):
        decided += _agree(_message(rng))
    assert decided > 2_000  # most combinations are valid, and plain


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return encode_varint(number << 3 | wire) + payload


def _text(number: int, value: bytes) -> bytes:
    return _field(number, 2, encode_varint(len(value)) + value)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (_text(99, b"x"), "an unknown field of a newer producer"),
        (_text(1, b"again"), "event_id repeated (protobuf keeps the last)"),
        (_field(3, 0, encode_varint(1)), "event_type repeated"),
        (_text(6, "caf\u00e9".encode()), "text beyond ASCII"),
        (_text(6, b"tab\there"), "a control character"),
        (_field(13, 0, encode_varint(6)), "a channel the contract does not know"),
        (_field(10, 0, encode_varint(0)), "quantity 0"),
        (_field(10, 0, encode_varint(2**32 + 1)), "quantity beyond int32 (protobuf truncates)"),
        (_text(9, b"usd"), "lower-case currency"),
        (_field(8, 0, encode_varint(2**63)), "a negative price"),
        (_field(3, 1, b"\x00" * 8), "a known field with another wire type"),
        (b"\x80", "a truncated varint"),
        (_field(5, 2, encode_varint(100) + b"short"), "a length past the end"),
    ],
)
def test_what_is_not_plainly_valid_takes_the_protobuf_path(raw: bytes, why: str) -> None:
    """Appended to a valid message, each of these makes C leave the message to protobuf, whose
    answer (event or reason) decode_event returns."""
    base = _message(random.Random(1), event_type=ev.VIEW, item_id="i", price_micros=None,
                    currency=None, quantity=None)  # fmt: skip
    assert _agree(base), "the base message is plainly valid"
    message = base + raw
    assert _fast()(message, NOW, ev.Event) is None, why
    want = _python(message)
    if isinstance(want, InvalidEvent):
        with pytest.raises(InvalidEvent) as info:
            decode_event(message, NOW)
        assert (info.value.reason, info.value.detail) == (want.reason, want.detail)
    else:
        assert decode_event(message, NOW) == want


def test_the_hostile_corpus_agrees() -> None:
    """3,000 malformed messages (each must stay a dead letter: C never accepts one) and the
    valid events with hostile strings (non-ASCII ones take the protobuf path)."""
    for raw, _ in hostile.malformed(3000, users=USERS, t0=NOW - 10**9, now_ms=NOW):
        assert _fast()(raw, NOW, ev.Event) is None, raw
    for raw in hostile.hostile_valid_events(USERS, NOW - 10**9):
        _agree(raw)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_agree(raw: bytes) -> None:
    _agree(raw)


@settings(max_examples=300)
@given(st.data())
def test_mutated_valid_messages_agree(data: st.DataObject) -> None:
    """A valid message with a few bytes changed, cut or added: C accepts it only when protobuf
    gives the same event."""
    raw = bytearray(_message(random.Random(data.draw(st.integers(0, 10**6)))))
    for _ in range(data.draw(st.integers(1, 3))):
        action = data.draw(st.sampled_from(["flip", "cut", "add"]))
        at = data.draw(st.integers(0, len(raw)))
        if action == "flip" and at < len(raw):
            raw[at] = data.draw(st.integers(0, 255))
        elif action == "cut":
            del raw[at:]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    _agree(bytes(raw))


def test_other_argument_types_take_the_python_path() -> None:
    raw = _message(random.Random(2), event_type=ev.ERASE)
    fast = _fast()
    assert fast(bytearray(raw), NOW, ev.Event) is None
    assert fast(raw, 2**70, ev.Event) is None
    assert decode_event(raw, NOW) == decode_event_py(raw, NOW)
