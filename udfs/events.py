"""Decoding and validation of `UserEvent` messages: bytes in, a typed `Event` or a reason out.

This is the contract check every consumer applies (the stream job, the trainer, the consistency
checker), so they all accept and reject exactly the same messages. Rejections carry a
machine-readable `Reason` and a human-readable detail; the job sends them to the dead-letter table.
The rules are documented for producer teams in docs/event-contract.md.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable
from typing import NamedTuple, cast

from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet  # type: ignore[import-not-found]

from schemas.profilestream.events.v1 import user_event_pb2 as pb
from udfs._impl import native_module

# Event types, mirrored from the contract as plain ints for the hot path.
VIEW = pb.EVENT_TYPE_VIEW
ADD_TO_CART = pb.EVENT_TYPE_ADD_TO_CART
REMOVE_FROM_CART = pb.EVENT_TYPE_REMOVE_FROM_CART
FAVORITE = pb.EVENT_TYPE_FAVORITE
PURCHASE = pb.EVENT_TYPE_PURCHASE
SEARCH = pb.EVENT_TYPE_SEARCH
ERASE = pb.EVENT_TYPE_ERASE  # a request to forget the user, not a shopper action
# The shopper actions a profile counts (ERASE is not one of them).
EVENT_TYPES: tuple[int, ...] = (VIEW, ADD_TO_CART, REMOVE_FROM_CART, FAVORITE, PURCHASE, SEARCH)
EVENT_TYPE_NAMES: dict[int, str] = {
    VIEW: "view",
    ADD_TO_CART: "add_to_cart",
    REMOVE_FROM_CART: "remove_from_cart",
    FAVORITE: "favorite",
    PURCHASE: "purchase",
    SEARCH: "search",
    ERASE: "erase",
}
_ITEM_EVENTS = frozenset({VIEW, ADD_TO_CART, REMOVE_FROM_CART, FAVORITE, PURCHASE})
_CHANNELS = frozenset(pb.Channel.values())
# Field numbers the contract defines: such a field arriving with another wire type is malformed
# (protobuf would silently move it to the unknown fields). Unknown numbers are newer fields and
# are ignored (forward compatibility).
_KNOWN_FIELDS = frozenset(f.number for f in pb.UserEvent.DESCRIPTOR.fields)
_KNOWN_TIMESTAMP_FIELDS = frozenset((1, 2))

# Contract limits (docs/event-contract.md).
MAX_USER_ID_BYTES = 256
MAX_EVENT_ID_BYTES = 128
MAX_FIELD_BYTES = 1024
MAX_MESSAGE_BYTES = 16 * 1024
MIN_EVENT_TIME_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_FUTURE_SKEW_MS = 24 * 3600 * 1000  # event_time may be at most one day ahead of the wall clock
MAX_PRICE_MICROS = 10**9 * 10**6  # one billion currency units
MAX_QUANTITY = 10_000
MICROS = 1_000_000


class Reason(enum.StrEnum):
    """Machine-readable dead-letter reasons. Values are stable: BI queries and alerts use them."""

    DECODE_ERROR = "decode_error"
    WRONG_WIRE_TYPE = "wrong_wire_type"
    MESSAGE_TOO_LARGE = "message_too_large"
    MISSING_EVENT_ID = "missing_event_id"
    EVENT_ID_TOO_LONG = "event_id_too_long"
    MISSING_USER_ID = "missing_user_id"
    USER_ID_TOO_LONG = "user_id_too_long"
    USER_ID_INVALID_CHARS = "user_id_invalid_chars"
    MISSING_EVENT_TYPE = "missing_event_type"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    UNKNOWN_CHANNEL = "unknown_channel"
    MISSING_EVENT_TIME = "missing_event_time"
    EVENT_TIME_OUT_OF_RANGE = "event_time_out_of_range"
    MISSING_ITEM_ID = "missing_item_id"
    MISSING_SEARCH_QUERY = "missing_search_query"
    FIELD_TOO_LONG = "field_too_long"
    INVALID_CHARS = "invalid_chars"
    INVALID_PRICE = "invalid_price"
    MISSING_CURRENCY = "missing_currency"
    INVALID_CURRENCY = "invalid_currency"
    INVALID_QUANTITY = "invalid_quantity"
    # Valid, but older than the user's newest event by more than the allowed lateness: not
    # folded into the profile (set by the profile step, not by decoding).
    LATE_EVENT = "late_event"
    # Valid, but the Kafka record key is not its user_id (set by the job, which is keyed by the
    # record key, not by decoding).
    KEY_MISMATCH = "key_mismatch"
    # Valid, but folding, featurising or scoring it raised (a bug or a bad model): the exception
    # in the detail; the user's state stays as it was (set by the profile step).
    PROCESSING_ERROR = "processing_error"


class InvalidEvent(ValueError):
    """A message that breaks the contract. `reason` is stable; `detail` says what exactly.
    `user_id` is the user the message names when it parsed far enough and the id is valid, and
    `event_time_ms` its event time when set and representable (dead letters keep both, so an
    erasure finds them)."""

    def __init__(
        self,
        reason: Reason,
        detail: str,
        user_id: str | None = None,
        event_time_ms: int | None = None,
    ) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.user_id = user_id
        self.event_time_ms = event_time_ms


class Event(NamedTuple):
    """A validated event. A tuple so it pickles cheaply between Flink operators."""

    event_id: str
    user_id: str
    event_type: int
    event_time_ms: int
    item_id: str | None
    category_id: str | None
    brand: str | None
    price_micros: int | None
    currency: str | None
    quantity: int  # 1 when the message has none
    session_id: str | None
    search_query: str | None
    channel: int
    raw: bytes = b""  # the message as received (kept for a late-event dead letter)


_CONTROL = frozenset(chr(c) for c in (*range(0x20), *range(0x7F, 0xA0)))
_CONTROL_BUT_SPACE = _CONTROL - {"\t", "\n", "\r"}
# The same sets as regular expressions (one scan in C instead of a set probe per character).
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_SPACE_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _has_control_chars(text: str) -> bool:
    if text.isascii() and text.isprintable():  # the common case: printable ASCII
        return False
    return _CONTROL_RE.search(text) is not None


def _utf8_len_over(text: str, limit: int) -> bool:
    """Whether `text` is over `limit` bytes in UTF-8 (at most 4 bytes a character)."""
    return len(text) * 4 > limit and len(text.encode("utf-8")) > limit


def _check_identifier(
    value: str, field: str, limit: int, too_long: Reason, bad_chars: Reason
) -> None:
    if _utf8_len_over(value, limit):
        raise InvalidEvent(too_long, f"{field} is over {limit} bytes")
    if _has_control_chars(value):
        raise InvalidEvent(bad_chars, f"{field} holds control characters")


def _optional_text(msg: pb.UserEvent, field: str) -> str | None:
    if not msg.HasField(field):
        return None
    value: str = getattr(msg, field)
    if _utf8_len_over(value, MAX_FIELD_BYTES):
        raise InvalidEvent(Reason.FIELD_TOO_LONG, f"{field} is over {MAX_FIELD_BYTES} bytes")
    # NUL cannot be stored in PostgreSQL text or jsonb; other control characters in identifiers
    # are producer bugs. Free text (search_query) may hold tabs and line breaks.
    if value.isascii() and value.isprintable():
        return value
    forbidden = _CONTROL_BUT_SPACE_RE if field == "search_query" else _CONTROL_RE
    if forbidden.search(value) is not None:
        raise InvalidEvent(Reason.INVALID_CHARS, f"{field} holds control characters")
    return value


def _check_wire_types(msg: pb.UserEvent) -> None:
    for unknown in UnknownFieldSet(msg):
        if unknown.field_number in _KNOWN_FIELDS:
            raise InvalidEvent(
                Reason.WRONG_WIRE_TYPE,
                f"field {unknown.field_number} has wire type {unknown.wire_type}",
            )
    if msg.HasField("event_time"):
        for unknown in UnknownFieldSet(msg.event_time):
            if unknown.field_number in _KNOWN_TIMESTAMP_FIELDS:
                raise InvalidEvent(
                    Reason.WRONG_WIRE_TYPE,
                    f"event_time field {unknown.field_number} has wire type {unknown.wire_type}",
                )


_LIMITS = {
    "MAX_USER_ID_BYTES": MAX_USER_ID_BYTES,
    "MAX_EVENT_ID_BYTES": MAX_EVENT_ID_BYTES,
    "MAX_FIELD_BYTES": MAX_FIELD_BYTES,
    "MAX_MESSAGE_BYTES": MAX_MESSAGE_BYTES,
    "MIN_EVENT_TIME_MS": MIN_EVENT_TIME_MS,
    "MAX_FUTURE_SKEW_MS": MAX_FUTURE_SKEW_MS,
    "MAX_PRICE_MICROS": MAX_PRICE_MICROS,
    "MAX_QUANTITY": MAX_QUANTITY,
}


def _fast_decoder() -> Callable[[bytes, int, type], object] | None:
    """udfs._eventdecode.decode when the native build is selected and has it (and it was built
    with this module's contract limits), else None."""
    module = native_module("udfs._eventdecode")
    if module is None:
        return None
    if any(getattr(module, name, None) != value for name, value in _LIMITS.items()):
        return None  # limits changed here but not in udfs/_eventdecode.c: never guess
    decoder: Callable[[bytes, int, type], object] = module.decode
    return decoder


# The common case in C (udfs/_eventdecode.c): a plainly valid message (known fields, printable
# ASCII text, every rule met) decoded in one pass; anything else returns None and takes the
# protobuf path below, which decides the event or the dead letter exactly as before.
_FAST_DECODE = _fast_decoder()


def decode_event(raw: bytes, now_ms: int) -> Event:
    """Parse and validate one Kafka message value. Raises `InvalidEvent`, never anything else.

    `now_ms` is the wall clock (ms since the epoch) used for the future-timestamp rule.
    """
    fast = _FAST_DECODE
    if fast is not None:
        event = fast(raw, now_ms, Event)
        if event is not None:
            return cast(Event, event)
    return decode_event_py(raw, now_ms)


def decode_event_py(raw: bytes, now_ms: int) -> Event:
    """`decode_event` through protobuf's parser: the reference the C path is checked against,
    and the path for every message it leaves (it gives the event or the reason)."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidEvent(Reason.MESSAGE_TOO_LARGE, f"{len(raw)} bytes > {MAX_MESSAGE_BYTES}")
    msg = pb.UserEvent()
    try:
        msg.ParseFromString(raw)
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        raise InvalidEvent(Reason.DECODE_ERROR, f"not a UserEvent: {exc}") from None
    try:
        _check_wire_types(msg)
        return validate_message(msg, now_ms, raw)
    except InvalidEvent as exc:
        exc.user_id = _usable_user_id(msg.user_id)
        if msg.HasField("event_time") and abs(msg.event_time.seconds) < 10**12:
            exc.event_time_ms = msg.event_time.seconds * 1000 + msg.event_time.nanos // 1_000_000
        raise


def _usable_user_id(user_id: str) -> str | None:
    if not user_id or len(user_id.encode("utf-8")) > MAX_USER_ID_BYTES:
        return None
    return None if _has_control_chars(user_id) else user_id


def validate_message(msg: pb.UserEvent, now_ms: int, raw: bytes = b"") -> Event:
    """Check a parsed `UserEvent` against the contract and convert it to an `Event` (carrying
    `raw`, the message as received)."""
    event_id = msg.event_id
    if not event_id:
        raise InvalidEvent(Reason.MISSING_EVENT_ID, "event_id is empty")
    _check_identifier(
        event_id, "event_id", MAX_EVENT_ID_BYTES, Reason.EVENT_ID_TOO_LONG, Reason.INVALID_CHARS
    )

    user_id = msg.user_id
    if not user_id or user_id.isspace():
        raise InvalidEvent(Reason.MISSING_USER_ID, "user_id is empty")
    _check_identifier(
        user_id, "user_id", MAX_USER_ID_BYTES, Reason.USER_ID_TOO_LONG, Reason.USER_ID_INVALID_CHARS
    )

    event_type = msg.event_type
    if event_type == pb.EVENT_TYPE_UNSPECIFIED:
        raise InvalidEvent(Reason.MISSING_EVENT_TYPE, "event_type is EVENT_TYPE_UNSPECIFIED")
    if event_type not in EVENT_TYPE_NAMES:
        raise InvalidEvent(Reason.UNKNOWN_EVENT_TYPE, f"event_type {event_type} is not in v1")
    channel = msg.channel
    if channel not in _CHANNELS:
        raise InvalidEvent(Reason.UNKNOWN_CHANNEL, f"channel {channel} is not in v1")

    if not msg.HasField("event_time"):
        raise InvalidEvent(Reason.MISSING_EVENT_TIME, "event_time is not set")
    ts = msg.event_time
    if not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidEvent(Reason.EVENT_TIME_OUT_OF_RANGE, f"event_time.nanos {ts.nanos} invalid")
    event_time_ms = ts.seconds * 1000 + ts.nanos // 1_000_000
    if event_time_ms < MIN_EVENT_TIME_MS:
        raise InvalidEvent(
            Reason.EVENT_TIME_OUT_OF_RANGE, f"event_time {ts.seconds}s is before 2000"
        )
    if event_time_ms > now_ms + MAX_FUTURE_SKEW_MS:
        raise InvalidEvent(
            Reason.EVENT_TIME_OUT_OF_RANGE, f"event_time {ts.seconds}s is over a day in the future"
        )

    item_id = _optional_text(msg, "item_id")
    if event_type in _ITEM_EVENTS and not item_id:
        raise InvalidEvent(Reason.MISSING_ITEM_ID, f"{EVENT_TYPE_NAMES[event_type]} needs item_id")
    search_query = _optional_text(msg, "search_query")
    if event_type == SEARCH and not search_query:
        raise InvalidEvent(Reason.MISSING_SEARCH_QUERY, "search needs search_query")

    price_micros: int | None = None
    currency: str | None = None
    if msg.HasField("price_micros"):
        price_micros = msg.price_micros
        if not 0 <= price_micros <= MAX_PRICE_MICROS:
            raise InvalidEvent(Reason.INVALID_PRICE, f"price_micros {price_micros} out of range")
        if not msg.HasField("currency") or not msg.currency:
            raise InvalidEvent(Reason.MISSING_CURRENCY, "price_micros is set without currency")
    if msg.HasField("currency"):
        currency = msg.currency
        if not (
            len(currency) == 3 and currency.isascii() and currency.isalpha() and currency.isupper()
        ):
            raise InvalidEvent(Reason.INVALID_CURRENCY, f"currency {currency!r} is not ISO 4217")

    quantity = 1
    if msg.HasField("quantity"):
        quantity = msg.quantity
        if not 1 <= quantity <= MAX_QUANTITY:
            raise InvalidEvent(Reason.INVALID_QUANTITY, f"quantity {quantity} not in 1..10000")

    category_id = _optional_text(msg, "category_id")
    brand = _optional_text(msg, "brand")
    session_id = _optional_text(msg, "session_id")
    return Event(
        event_id,
        user_id,
        event_type,
        event_time_ms,
        item_id,
        category_id,
        brand,
        price_micros,
        currency,
        quantity,
        session_id,
        search_query,
        channel,
        raw,
    )


def make_message(
    *,
    event_id: str,
    user_id: str,
    event_type: int,
    event_time_ms: int,
    item_id: str | None = None,
    category_id: str | None = None,
    brand: str | None = None,
    price_micros: int | None = None,
    currency: str | None = None,
    quantity: int | None = None,
    session_id: str | None = None,
    search_query: str | None = None,
    channel: int = pb.CHANNEL_UNSPECIFIED,
) -> pb.UserEvent:
    """Build a `UserEvent` message from plain values (absent optionals stay unset)."""
    msg = pb.UserEvent(event_id=event_id, user_id=user_id)
    msg.event_type = event_type  # type: ignore[assignment]  # open enum: any int is encodable
    msg.channel = channel  # type: ignore[assignment]
    msg.event_time.seconds, millis = divmod(event_time_ms, 1000)
    msg.event_time.nanos = millis * 1_000_000
    for field, value in (
        ("item_id", item_id),
        ("category_id", category_id),
        ("brand", brand),
        ("price_micros", price_micros),
        ("currency", currency),
        ("quantity", quantity),
        ("session_id", session_id),
        ("search_query", search_query),
    ):
        if value is not None:
            setattr(msg, field, value)
    return msg


def price_to_micros(text: str) -> int:
    """Convert a decimal price string ("35.79") to exact micros, rejecting NaN/inf/over-precise."""
    from decimal import Decimal, InvalidOperation

    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"price {text!r} is not a decimal number") from None
    if not value.is_finite():
        raise ValueError(f"price {text!r} is not finite")
    micros = value * MICROS
    if micros != micros.to_integral_value():
        raise ValueError(f"price {text!r} has more than 6 decimal places")
    result = int(micros)
    if not math.isfinite(float(result)):
        raise ValueError(f"price {text!r} is out of range")
    return result
