"""Decoding and validation of UserEvent bytes (JVM-free)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.profilestream.events.v1 import user_event_pb2 as pb
from tests.support import hostile
from udfs import events as ev
from udfs.events import InvalidEvent, Reason, decode_event, make_message, price_to_micros

NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z
T = 1_735_689_600_123  # 2025-01-01T00:00:00.123Z


def good(**overrides: object) -> pb.UserEvent:
    fields: dict[str, object] = dict(
        event_id="e1",
        user_id="alice",
        event_type=ev.PURCHASE,
        event_time_ms=T,
        item_id="sku-1",
        category_id="shoes",
        brand="acme",
        price_micros=19_990_000,
        currency="EUR",
        quantity=2,
        session_id="s1",
        channel=pb.CHANNEL_IOS_APP,
    )
    fields.update(overrides)
    return make_message(**fields)  # type: ignore[arg-type]


def reason_of(msg: pb.UserEvent | bytes) -> Reason:
    raw = msg if isinstance(msg, bytes) else msg.SerializeToString()
    with pytest.raises(InvalidEvent) as info:
        decode_event(raw, NOW)
    return info.value.reason


def test_valid_event_round_trips_every_field() -> None:
    raw = good().SerializeToString()
    e = decode_event(raw, NOW)
    assert e.raw == raw  # kept for a late-event dead letter
    e = e._replace(raw=b"")
    assert e == ev.Event(
        event_id="e1",
        user_id="alice",
        event_type=ev.PURCHASE,
        event_time_ms=T,
        item_id="sku-1",
        category_id="shoes",
        brand="acme",
        price_micros=19_990_000,
        currency="EUR",
        quantity=2,
        session_id="s1",
        search_query=None,
        channel=pb.CHANNEL_IOS_APP,
    )


def test_absent_optionals_are_none_and_quantity_defaults_to_one() -> None:
    msg = make_message(event_id="e", user_id="u", event_type=ev.VIEW, event_time_ms=T, item_id="i")
    e = decode_event(msg.SerializeToString(), NOW)
    assert (e.price_micros, e.currency, e.brand, e.quantity) == (None, None, None, 1)


def test_zero_price_is_kept_apart_from_no_price() -> None:
    e = decode_event(good(price_micros=0).SerializeToString(), NOW)
    assert e.price_micros == 0


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"\xff\xff\xff", Reason.DECODE_ERROR),
        (good().SerializeToString()[:-3], Reason.DECODE_ERROR),
        (b"\x00" * (ev.MAX_MESSAGE_BYTES + 1), Reason.MESSAGE_TOO_LARGE),
        (good(event_id=""), Reason.MISSING_EVENT_ID),
        (good(event_id="x" * 129), Reason.EVENT_ID_TOO_LONG),
        (good(user_id=""), Reason.MISSING_USER_ID),
        (good(user_id="   "), Reason.MISSING_USER_ID),
        (good(user_id="u" * 257), Reason.USER_ID_TOO_LONG),
        (good(user_id="bad\nid"), Reason.USER_ID_INVALID_CHARS),
        (good(event_type=0), Reason.MISSING_EVENT_TYPE),
        (good(event_type=42), Reason.UNKNOWN_EVENT_TYPE),
        (good(channel=77), Reason.UNKNOWN_CHANNEL),
        (good(event_time_ms=900_000_000_000), Reason.EVENT_TIME_OUT_OF_RANGE),
        (good(event_time_ms=NOW + 2 * 24 * 3600 * 1000), Reason.EVENT_TIME_OUT_OF_RANGE),
        (good(item_id=None), Reason.MISSING_ITEM_ID),
        (good(item_id=""), Reason.MISSING_ITEM_ID),
        (good(event_type=ev.SEARCH, item_id=None), Reason.MISSING_SEARCH_QUERY),
        (good(brand="b" * 2000), Reason.FIELD_TOO_LONG),
        (good(price_micros=-1), Reason.INVALID_PRICE),
        (good(price_micros=ev.MAX_PRICE_MICROS + 1), Reason.INVALID_PRICE),
        (good(currency=None), Reason.MISSING_CURRENCY),
        (good(currency="euro"), Reason.INVALID_CURRENCY),
        (good(quantity=0), Reason.INVALID_QUANTITY),
        (good(quantity=10_001), Reason.INVALID_QUANTITY),
    ],
)
def test_contract_violations_have_specific_reasons(
    message: pb.UserEvent | bytes, reason: Reason
) -> None:
    assert reason_of(message) == reason


def test_missing_event_time() -> None:
    msg = good()
    msg.ClearField("event_time")
    assert reason_of(msg) == Reason.MISSING_EVENT_TIME


def test_invalid_event_message_names_reason_and_detail() -> None:
    with pytest.raises(InvalidEvent, match=r"^invalid_quantity: quantity 0 not in 1\.\.10000$"):
        decode_event(good(quantity=0).SerializeToString(), NOW)


@given(st.binary(max_size=300))
def test_decoder_never_raises_anything_but_invalid_event(raw: bytes) -> None:
    try:
        decode_event(raw, NOW)
    except InvalidEvent as exc:
        assert exc.reason in Reason


@given(
    user=st.text(min_size=1, max_size=40).filter(
        lambda s: s.strip() and not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in s)
    ),
    kind=st.sampled_from(ev.EVENT_TYPES),
    t=st.integers(min_value=ev.MIN_EVENT_TIME_MS, max_value=NOW),
    price=st.one_of(st.none(), st.integers(min_value=0, max_value=ev.MAX_PRICE_MICROS)),
    qty=st.one_of(st.none(), st.integers(min_value=1, max_value=ev.MAX_QUANTITY)),
    query=st.text(min_size=1, max_size=50).filter(
        lambda s: not any((ord(c) < 0x20 and c not in "\t\n\r") or 0x7F <= ord(c) < 0xA0 for c in s)
    ),
)
def test_every_valid_message_decodes_to_what_was_encoded(
    user: str, kind: int, t: int, price: int | None, qty: int | None, query: str
) -> None:
    msg = make_message(
        event_id="id",
        user_id=user,
        event_type=kind,
        event_time_ms=t,
        item_id="item",
        price_micros=price,
        currency="USD" if price is not None else None,
        quantity=qty,
        search_query=query,
    )
    e = decode_event(msg.SerializeToString(), NOW)
    assert (
        e.user_id,
        e.event_type,
        e.event_time_ms,
        e.price_micros,
        e.quantity,
        e.search_query,
    ) == (user, kind, t, price, qty or 1, query)


@pytest.mark.parametrize(
    ("text", "micros"),
    [("35.79", 35_790_000), ("0", 0), ("1.000001", 1_000_001), (" 2.5 ", 2_500_000)],
)
def test_price_to_micros_is_exact(text: str, micros: int) -> None:
    assert price_to_micros(text) == micros


@pytest.mark.parametrize("text", ["abc", "NaN", "inf", "1.0000001", ""])
def test_price_to_micros_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        price_to_micros(text)


# --- hostile input (issue 5) -----------------------------------------------------------------
CORPUS = list(
    hostile.malformed(
        3000, users=["alice", "bob", "Robert'); DROP TABLE x;--"], t0=NOW - 10**9, now_ms=NOW
    )
)


@given(st.integers(min_value=0, max_value=len(CORPUS) - 1))
def test_every_malformed_message_gets_the_reason_it_was_built_with(i: int) -> None:
    raw, reason = CORPUS[i]
    with pytest.raises(InvalidEvent) as info:
        decode_event(raw, NOW)
    if reason is not None:
        assert info.value.reason is reason, (raw, info.value)


def test_the_corpus_covers_every_contract_reason() -> None:
    built = {reason for _, reason in CORPUS if reason is not None}
    # Set by the job, not by decoding: late events, records keyed by another user_id, and events
    # whose processing raised (tests/unit/test_processing_error.py).
    assert built == set(Reason) - {Reason.LATE_EVENT, Reason.KEY_MISMATCH, Reason.PROCESSING_ERROR}


@given(
    number=st.integers(min_value=14, max_value=2**29 - 1),
    wire=st.sampled_from([0, 1, 2, 5]),
    payload=st.binary(min_size=0, max_size=20),
)
def test_unknown_fields_from_newer_producers_are_ignored(
    number: int, wire: int, payload: bytes
) -> None:
    good = make_message(
        event_id="e", user_id="u", event_type=ev.VIEW, event_time_ms=NOW - 1, item_id="i"
    ).SerializeToString()
    body = {
        0: b"\x05",
        1: payload.ljust(8, b"\0")[:8],
        2: bytes([len(payload)]) + payload,
        5: payload.ljust(4, b"\0")[:4],
    }[wire]
    extra = hostile._field(number, wire, body)
    assert decode_event(good + extra, NOW).user_id == "u"


@given(number=st.sampled_from([1, 2, 3, 4, 8, 9, 10, 12, 13]), wire=st.sampled_from([0, 1, 5]))
def test_a_known_field_with_another_wire_type_is_rejected(number: int, wire: int) -> None:
    good = make_message(
        event_id="e", user_id="u", event_type=ev.VIEW, event_time_ms=NOW - 1, item_id="i"
    ).SerializeToString()
    descriptor = {f.number: f for f in pb.UserEvent.DESCRIPTOR.fields}[number]
    natural = 2 if descriptor.type in (descriptor.TYPE_STRING, descriptor.TYPE_MESSAGE) else 0
    if wire == natural:
        return
    body = {0: b"\x05", 1: b"\0" * 8, 5: b"\0" * 4}[wire]
    with pytest.raises(InvalidEvent) as info:
        decode_event(good + hostile._field(number, wire, body), NOW)
    assert info.value.reason is Reason.WRONG_WIRE_TYPE


@given(st.binary(max_size=400))
def test_anything_accepted_is_storable(raw: bytes) -> None:
    """Whatever passes the decoder can be written to PostgreSQL text/jsonb: no NUL, bounded."""
    try:
        e = decode_event(raw, NOW)
    except InvalidEvent:
        return
    for text in (
        e.event_id,
        e.user_id,
        e.item_id,
        e.category_id,
        e.brand,
        e.session_id,
        e.search_query,
        e.currency,
    ):
        if text is not None:
            assert "\x00" not in text and len(text.encode()) <= 1024


@pytest.mark.parametrize("text", hostile.HOSTILE_STRINGS)
def test_hostile_but_valid_strings_pass_verbatim(text: str) -> None:
    user = text if len(text.encode()) <= 256 else "u"
    msg = make_message(
        event_id="e",
        user_id=user,
        event_type=ev.VIEW,
        event_time_ms=NOW - 1,
        item_id=text,
        category_id=text,
        brand=text,
        session_id=text,
    )
    e = decode_event(msg.SerializeToString(), NOW)
    assert (e.user_id, e.item_id, e.category_id, e.brand, e.session_id) == (
        user,
        text,
        text,
        text,
        text,
    )


def test_a_bad_message_keeps_the_user_it_names() -> None:
    raw = make_message(
        event_id="e",
        user_id="carol",
        event_type=ev.VIEW,
        event_time_ms=NOW - 1,
        item_id="i",
        quantity=0,
    ).SerializeToString()
    with pytest.raises(InvalidEvent) as info:
        decode_event(raw, NOW)
    assert info.value.user_id == "carol"


def test_erase_needs_only_who_and_when() -> None:
    raw = make_message(
        event_id="e", user_id="carol", event_type=ev.ERASE, event_time_ms=NOW - 1
    ).SerializeToString()
    assert decode_event(raw, NOW).event_type == ev.ERASE


def test_the_producer_api_refuses_an_invalid_event_with_its_reason() -> None:
    from flink_jobs.io.producer import EventPublisher

    publisher = EventPublisher("127.0.0.1:1", "t")  # refused before anything is sent
    bad = make_message(
        event_id="e",
        user_id="u",
        event_type=ev.PURCHASE,
        event_time_ms=NOW - 1,
        item_id="i",
        price_micros=-1,
        currency="USD",
    )
    with pytest.raises(InvalidEvent) as info:
        publisher.publish(bad)
    assert info.value.reason is Reason.INVALID_PRICE
    assert str(info.value) == "invalid_price: price_micros -1 out of range"
    assert publisher.report.sent == 0
