"""CSV readers and the synthetic generator (JVM-free)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.support.shared_data import shared_file
from udfs import events as ev
from udfs.events import validate_message
from udfs.sources import SyntheticSpec, read_events, read_rees46, read_taobao, synthetic_events

NOW = 2**62


def test_taobao_rows_sorted_by_time_and_bad_rows_reported(tmp_path: Path) -> None:
    f = tmp_path / "t.csv"
    f.write_text(
        "1,10,100,pv,1511544070\n1,11,100,buy,1511500000\n2,12,101,cart,x\n"
        "2,12,101,smell,1511544000\n3,1\n2,13,102,fav,1511544000\n"
    )
    errors: list[tuple[int, str]] = []
    msgs = list(read_taobao(f, on_error=lambda line, m: errors.append((line, m))))
    assert [(m.event_id, m.event_type) for m in msgs] == [
        ("taobao-2", ev.PURCHASE),
        ("taobao-6", ev.FAVORITE),
        ("taobao-1", ev.VIEW),
    ]
    assert [line for line, _ in errors] == [3, 4, 5]
    e = validate_message(msgs[0], NOW)
    assert (e.user_id, e.item_id, e.category_id, e.event_time_ms) == (
        "1",
        "11",
        "100",
        1_511_500_000_000,
    )


def test_rees46_prices_exact_and_empty_fields_absent(tmp_path: Path) -> None:
    f = tmp_path / "r.csv"
    f.write_text(
        "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,"
        "user_session\n"
        "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,"
        "72d7\n"
        "2019-10-01 00:00:05 UTC,purchase,3900821,2053013552326770905,x.y,,33.20,554748717,9333\n"
        "2019-10-01 00:00:06 UTC,teleport,1,2,,,1,3,4\n"
        "2019-10-01 00:00:07 UTC,view,1,2,,,abc,3,4\n"
    )
    errors: list[int] = []
    msgs = list(read_rees46(f, on_error=lambda line, m: errors.append(line)))
    assert errors == [4, 5]
    first, second = (validate_message(m, NOW) for m in msgs)
    assert (first.price_micros, first.currency, first.brand) == (35_790_000, "USD", "shiseido")
    assert (second.event_type, second.price_micros, second.brand, second.session_id) == (
        ev.PURCHASE,
        33_200_000,
        None,
        "9333",
    )


def test_rees46_wrong_header_is_reported(tmp_path: Path) -> None:
    f = tmp_path / "r.csv"
    f.write_text("a,b,c\n1,2,3\n")
    errors: list[int] = []
    assert list(read_rees46(f, on_error=lambda line, m: errors.append(line))) == []
    assert errors == [1]


def test_synthetic_is_seeded_valid_time_ordered_and_funnel_shaped() -> None:
    spec = SyntheticSpec(events=5000, users=400, seed=3)
    a, b = synthetic_events(spec), synthetic_events(spec)
    assert [m.SerializeToString() for m in a] == [m.SerializeToString() for m in b]
    assert len(a) == 5000
    decoded = [validate_message(m, NOW) for m in a]  # every synthetic event is valid
    times = [e.event_time_ms for e in decoded]
    assert times == sorted(times)
    kinds = Counter(e.event_type for e in decoded)
    assert kinds[ev.VIEW] > kinds[ev.ADD_TO_CART] > kinds[ev.PURCHASE] > 0
    assert len({e.user_id for e in decoded}) == 400
    assert len({e.event_id for e in decoded}) == 5000
    assert synthetic_events(SyntheticSpec(events=5000, users=400, seed=4))[0] != a[0]


def test_read_events_errors() -> None:
    with pytest.raises(ValueError, match="needs a file path"):
        list(read_events("taobao"))
    with pytest.raises(FileNotFoundError):
        list(read_events("taobao", "/nonexistent.csv"))


@pytest.mark.data
def test_shared_taobao_sample_reads_completely() -> None:
    path = shared_file("taobao_userbehavior_head.csv")
    errors: list[int] = []
    msgs = list(read_taobao(path, on_error=lambda line, m: errors.append(line)))
    assert len(msgs) == 84_475 and errors == []
    assert len({m.user_id for m in msgs}) == 815


@pytest.mark.data
def test_shared_rees46_sample_reads_completely() -> None:
    path = shared_file("rees46_2019-Oct_head.csv")
    msgs = list(read_rees46(path))
    assert len(msgs) == 17_434
    assert sum(m.event_type == ev.PURCHASE for m in msgs) == 214


def test_delimited_files_keep_every_message_byte_for_byte(tmp_path: Path) -> None:
    from udfs.sources import message_bytes, read_delimited, write_delimited

    messages = [b"", b"\x00", b"x" * 300, bytes(range(256)) * 70]
    path = tmp_path / "log.pb"
    assert write_delimited(path, messages) == 4
    assert list(read_delimited(path)) == messages
    assert list(message_bytes("proto", path)) == messages
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match="runs past the end"):
        list(read_delimited(path))
