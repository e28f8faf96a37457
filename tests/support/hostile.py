"""A generated corpus of hostile input: malformed messages, each with the dead-letter reason it
must get *by construction* (not by asking the decoder), and valid events whose strings are
SQL-injection attempts and odd Unicode, which must be stored verbatim.

Used by the property tests of the decoder (tests/unit/test_events.py), the decoder verdicts
compared across builds (tests/support/fingerprints.py) and the adversarial stream test
(tests/integration/test_hostile_stream.py).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator

from udfs import events as ev
from udfs.events import Reason, make_message
from udfs.sources import encode_varint

# Valid strings that have broken other systems. None holds NUL or another control character
# (those are invalid by contract), so every one is a legal value of every string field.
HOSTILE_STRINGS: tuple[str, ...] = (
    "Robert'); DROP TABLE user_profiles;--",
    "' OR '1'='1",
    '"; DELETE FROM dead_letter_events; --',
    "1; SELECT pg_sleep(10)",
    "$$; DROP SCHEMA public CASCADE; $$",
    "\\x00\\' E'\\\\'",
    '{"json": [1, 2]}',
    "%s %d %n {0} ${jndi:ldap://x}",
    "<script>alert(1)</script>",
    "Zalgo: Z̸̡̢͍̙͔a̵̧̛͔l̴̙̈́g̵̱̈o̶̖̊",
    "RTL \u202eevil\u202c mark",
    "zero\u200bwidth\u200djoiner\ufeff",
    "emoji 🛒💳👩‍👩‍👧",
    "Ωmega 日本語 العربية עברית",
    "noncharacter \uffff\ufffe",
    "combining e\u0301 vs \u00e9",
    "𝕳𝖔𝖘𝖙𝖎𝖑𝖊 math",
    "a" * 1024,  # exactly at the field limit
)
# Free text may hold line breaks and tabs; identifiers may not.
HOSTILE_QUERIES: tuple[str, ...] = (*HOSTILE_STRINGS, "multi\nline\tquery\r\n")

STRING_FIELDS = ("item_id", "category_id", "brand", "session_id", "search_query")


def _base(i: int, t: int, user: str, **kw: object) -> dict[str, object]:
    fields: dict[str, object] = dict(
        event_id=f"bad-{i}",
        user_id=user,
        event_type=ev.VIEW,
        event_time_ms=t,
        item_id="item-1",
    )
    fields.update(kw)
    return fields


def _encode(fields: dict[str, object]) -> bytes:
    return make_message(**fields).SerializeToString()  # type: ignore[arg-type]


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return encode_varint((number << 3) | wire) + payload


def _wrong_wire_type(rng: random.Random, valid: bytes) -> bytes:
    """A known field sent with a wire type it does not have (e.g. a NaN double as the price)."""
    number, wire, payload = rng.choice(
        [
            (1, 0, encode_varint(7)),  # event_id as a varint
            (2, 5, struct.pack("<f", 1.5)),  # user_id as fixed32
            (3, 2, encode_varint(3) + b"abc"),  # event_type as bytes
            (4, 0, encode_varint(5)),  # event_time as a varint
            (8, 1, struct.pack("<d", float("nan"))),  # price_micros as a NaN double
            (8, 1, struct.pack("<d", float("inf"))),
            (8, 1, struct.pack("<d", float("-inf"))),
            (10, 5, struct.pack("<f", float("nan"))),  # quantity as a NaN float
            (10, 5, struct.pack("<f", -1e30)),
            (13, 2, encode_varint(1) + b"x"),  # channel as bytes
        ]
    )
    return valid + _field(number, wire, payload)


def malformed(
    n: int, *, users: list[str], t0: int, now_ms: int, seed: int = 7
) -> Iterator[tuple[bytes, Reason | None]]:
    """`n` distinct malformed messages (None: random bytes, whose reason the decoder decides).
    They name `users` (good users, so they land in the same partitions and keys) at times
    around `t0`."""
    rng = random.Random(seed)

    def kinds(i: int) -> tuple[bytes, Reason | None]:
        user = rng.choice(users)
        t = t0 + rng.randrange(0, 86_400_000)
        base = _base(i, t, user)
        pick = i % 30
        if pick == 0:
            size = rng.randrange(1, 300)
            return bytes(rng.randrange(256) for _ in range(size)), None
        if pick == 1:  # cut inside the last field (session_id): its length overruns the end
            raw = _encode({**base, "session_id": "s" * rng.randrange(5, 60)})
            return raw[: len(raw) - rng.randrange(1, 4)], Reason.DECODE_ERROR
        if pick == 2:
            return _encode({**base, "search_query": "q" * (17 * 1024)}), Reason.MESSAGE_TOO_LARGE
        if pick == 3:
            return _wrong_wire_type(rng, _encode(base)), Reason.WRONG_WIRE_TYPE
        if pick == 4:
            return _encode({**base, "event_type": rng.choice([7 + 1, 99, 2**31 - 1, -3])}), (
                Reason.UNKNOWN_EVENT_TYPE
            )
        if pick == 5:
            return _encode({**base, "channel": rng.choice([6, 42, -1])}), Reason.UNKNOWN_CHANNEL
        if pick == 6:
            blank = rng.choice(["", " ", "\t \u3000"])
            return _encode({**base, "user_id": blank}), Reason.MISSING_USER_ID
        if pick == 7:
            return _encode({**base, "user_id": "u" * rng.randrange(257, 600)}), (
                Reason.USER_ID_TOO_LONG
            )
        if pick == 8:
            bad = rng.choice(["\x00", "\n", "\x1b[31m", "\x7f", "\x85", "\r"])
            return _encode({**base, "user_id": f"{user}{bad}x"}), Reason.USER_ID_INVALID_CHARS
        if pick == 9:
            price = rng.choice([-1, -(10**12), 10**15 + 1, 2**63 - 1, -(2**63)])
            return _encode(
                {**base, "event_type": ev.PURCHASE, "price_micros": price, "currency": "USD"}
            ), Reason.INVALID_PRICE
        if pick == 10:
            qty = rng.choice([0, -1, 10_001, 2**31 - 1, -(2**31)])
            return _encode({**base, "event_type": ev.ADD_TO_CART, "quantity": qty}), (
                Reason.INVALID_QUANTITY
            )
        if pick == 11:
            old = rng.choice([0, 1, 946_684_799_999, -86_400_000 * 365])
            return _encode({**base, "event_time_ms": old}), Reason.EVENT_TIME_OUT_OF_RANGE
        if pick == 12:
            future = now_ms + rng.choice([2, 30, 3650]) * 86_400_000
            return _encode({**base, "event_time_ms": future}), Reason.EVENT_TIME_OUT_OF_RANGE
        if pick == 13:
            field = rng.choice(STRING_FIELDS)
            text = rng.choice(HOSTILE_STRINGS[:6]) + "\x00"
            kind = ev.SEARCH if field == "search_query" else ev.VIEW
            return _encode({**base, "event_type": kind, field: text}), Reason.INVALID_CHARS
        if pick == 14:
            field = rng.choice(STRING_FIELDS)
            kind = ev.SEARCH if field == "search_query" else ev.VIEW
            return _encode({**base, "event_type": kind, field: "x" * 1025}), (Reason.FIELD_TOO_LONG)
        if pick == 15:
            return _encode({**base, "event_id": ""}), Reason.MISSING_EVENT_ID
        if pick == 16:
            return _encode({**base, "event_id": "e" * 129}), Reason.EVENT_ID_TOO_LONG
        if pick == 17:
            return _encode({**base, "event_type": 0}), Reason.MISSING_EVENT_TYPE
        if pick == 18:
            return _encode({**base, "item_id": None}), Reason.MISSING_ITEM_ID
        if pick == 19:
            return _encode({**base, "event_type": ev.SEARCH, "item_id": None}), (
                Reason.MISSING_SEARCH_QUERY
            )
        if pick == 20:
            return _encode({**base, "price_micros": 5_000_000}), Reason.MISSING_CURRENCY
        if pick == 21:
            cur = rng.choice(["usd", "US", "EURO", "€€€", "'; --", "U$D"])
            return _encode({**base, "price_micros": 1, "currency": cur}), Reason.INVALID_CURRENCY
        if pick == 22:  # no event_time at all: drop field 4 from an encoding
            fields = {k: v for k, v in base.items() if k != "event_time_ms"}
            msg = make_message(event_time_ms=0, **fields)  # type: ignore[arg-type]
            msg.ClearField("event_time")
            return msg.SerializeToString(), Reason.MISSING_EVENT_TIME
        if pick == 23:
            msg = make_message(**base)  # type: ignore[arg-type]
            msg.event_time.nanos = rng.choice([-1, 1_000_000_000])
            return msg.SerializeToString(), Reason.EVENT_TIME_OUT_OF_RANGE
        if pick == 24:  # an injection attempt in a valid field, broken elsewhere
            field = rng.choice(STRING_FIELDS[:4])
            return _encode(
                {**base, field: rng.choice(HOSTILE_STRINGS), "quantity": -7}
            ), Reason.INVALID_QUANTITY
        if pick == 25:
            return _encode({**base, "event_id": f"bad-{i}\n"}), Reason.INVALID_CHARS
        if pick == 26:  # over-long varint (11 bytes) in the event_type field
            return _encode(base) + b"\x18" + b"\xff" * 10 + b"\x01", Reason.DECODE_ERROR
        if pick == 27:  # a length prefix far beyond the message
            return _encode(base) + b"\x3a" + encode_varint(10_000) + b"abc", Reason.DECODE_ERROR
        if pick == 28:  # invalid UTF-8 in a string field
            return _encode(base) + b"\x32\x03\xff\xfe\xfd", Reason.DECODE_ERROR
        return (
            _encode({**base, "event_type": ev.ERASE, "user_id": ""}),
            Reason.MISSING_USER_ID,
        )

    seen: set[bytes] = set()
    i = 0
    while len(seen) < n:
        raw, reason = kinds(i)
        i += 1
        if raw in seen:
            continue
        seen.add(raw)
        yield raw, reason


def hostile_valid_events(users: list[str], t0: int, seed: int = 3) -> list[bytes]:
    """Valid events whose string fields hold `HOSTILE_STRINGS`, from users whose ids are hostile
    too. They must be folded like any other event and stored verbatim."""
    rng = random.Random(seed)
    out = []
    for k, user in enumerate(users):
        for j in range(12):
            text = HOSTILE_STRINGS[(k + j) % len(HOSTILE_STRINGS)]
            t = t0 + k * 60_000 + j * 1_000
            if j % 4 == 3:
                fields = dict(event_type=ev.SEARCH, search_query=rng.choice(HOSTILE_QUERIES))
            else:
                fields = dict(
                    event_type=rng.choice([ev.VIEW, ev.ADD_TO_CART, ev.FAVORITE]),
                    item_id=text[:64],
                    category_id=HOSTILE_STRINGS[k % len(HOSTILE_STRINGS)],  # top category
                    brand=text,
                )
            out.append(
                make_message(
                    event_id=f"hostile-{k}-{j}",
                    user_id=user,
                    event_time_ms=t,
                    session_id=text,
                    **fields,  # type: ignore[arg-type]
                ).SerializeToString()
            )
    return out


HOSTILE_USER_IDS: tuple[str, ...] = tuple(s for s in HOSTILE_STRINGS if len(s.encode()) <= 256)
