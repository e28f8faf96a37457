"""The shopper profile: its fields, the pure update `apply_event`, and its versioned byte encoding.

The stream job keeps one encoded profile per user in a Flink ValueState (RocksDB); the trainer and
the consistency checker replay events through the same `apply_event`. Nothing here knows Flink.

Time is event time throughout: `last_event_ms` is the largest event time seen, never wall clock.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from udfs.events import EVENT_TYPES, PURCHASE, Event

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
MAX_TRACKED_CATEGORIES = 128


@dataclass(frozen=True, slots=True)
class ProfileParams:
    """Settings of the profile maths. The job and every offline replay must use the same ones."""

    reporting_currency: str = "USD"  # spend sums purchases priced in this currency
    activity_half_life_ms: int = DAY_MS  # half-life of the decayed activity score

    def __post_init__(self) -> None:
        if not (
            len(self.reporting_currency) == 3
            and self.reporting_currency.isalpha()
            and self.reporting_currency.isupper()
        ):
            raise ValueError(
                f"reporting_currency={self.reporting_currency!r}: use an ISO 4217 code like USD"
            )
        if self.activity_half_life_ms <= 0:
            raise ValueError("activity_half_life_ms must be positive")


@dataclass(slots=True)
class Profile:
    """One shopper's state. `version` counts applied events; it orders rows in PostgreSQL."""

    version: int = 0
    first_event_ms: int = 0
    last_event_ms: int = 0
    # counts[i]: events of type EVENT_TYPES[i] (view, cart, remove, fav, buy, search)
    counts: list[int] = field(default_factory=lambda: [0] * len(EVENT_TYPES))
    spend_micros: int = 0  # purchases priced in the reporting currency: sum(price * quantity)
    other_purchases: int = 0  # purchases without a price or in another currency
    activity: float = 0.0  # exponentially decayed event count, as of last_event_ms
    category_hashes: set[int] = field(default_factory=set)  # crc32 of category ids, capped

    @property
    def event_count(self) -> int:
        return sum(self.counts)

    @property
    def distinct_categories(self) -> int:
        """Distinct categories seen: exact up to MAX_TRACKED_CATEGORIES, then capped there."""
        return len(self.category_hashes)


def apply_event(profile: Profile, event: Event, params: ProfileParams) -> Profile:
    """Fold one valid event into `profile` (in place) and return it.

    Out-of-order events are handled: time only moves forward (`last_event_ms` is a maximum) and a
    late event's activity contribution is decayed to the profile's current time.
    """
    t = event.event_time_ms
    if profile.version == 0:
        profile.first_event_ms = t
        profile.last_event_ms = t
        profile.activity = 1.0
    else:
        profile.first_event_ms = min(profile.first_event_ms, t)
        half_life = params.activity_half_life_ms
        if t >= profile.last_event_ms:
            profile.activity = (
                profile.activity * 2.0 ** (-(t - profile.last_event_ms) / half_life) + 1.0
            )
            profile.last_event_ms = t
        else:
            profile.activity += 2.0 ** (-(profile.last_event_ms - t) / half_life)
    profile.version += 1
    profile.counts[event.event_type - 1] += 1

    if event.event_type == PURCHASE:
        if event.price_micros is not None and event.currency == params.reporting_currency:
            profile.spend_micros += event.price_micros * event.quantity
        else:
            profile.other_purchases += 1

    cat = event.category_id
    if cat and len(profile.category_hashes) < MAX_TRACKED_CATEGORIES:
        profile.category_hashes.add(zlib.crc32(cat.encode("utf-8")))
    return profile


def replay(events: Iterable[Event], params: ProfileParams) -> dict[str, Profile]:
    """Fold events (in the given order) into one profile per user: the offline recomputation."""
    profiles: dict[str, Profile] = {}
    for event in events:
        profile = profiles.get(event.user_id)
        if profile is None:
            profile = profiles[event.user_id] = Profile()
        apply_event(profile, event, params)
    return profiles


# ---------------------------------------------------------------------------------------------
# Encoding. Layout v1 (little-endian), documented so other tools can read state dumps:
#   u8 format version (=1) | u64 version | i64 first_event_ms | i64 last_event_ms
#   | 6 x u32 counts | i64 spend_micros | u32 other_purchases | f64 activity
#   | u16 n | n x u32 category hashes (ascending)
# A new layout gets a new version byte; `decode_profile` keeps reading every older one.
# ---------------------------------------------------------------------------------------------
FORMAT_V1 = 1
_HEADER_V1 = struct.Struct("<BQqq6IqIdH")
_HASHES = {n: struct.Struct(f"<{n}I") for n in range(MAX_TRACKED_CATEGORIES + 1)}


class ProfileEncodingError(ValueError):
    pass


def encode_profile(profile: Profile) -> bytes:
    hashes = sorted(profile.category_hashes)
    return _HEADER_V1.pack(
        FORMAT_V1,
        profile.version,
        profile.first_event_ms,
        profile.last_event_ms,
        *profile.counts,
        profile.spend_micros,
        profile.other_purchases,
        profile.activity,
        len(hashes),
    ) + _HASHES[len(hashes)].pack(*hashes)


def decode_profile(data: bytes) -> Profile:
    if not data:
        raise ProfileEncodingError("empty profile bytes")
    if data[0] != FORMAT_V1:
        raise ProfileEncodingError(f"unknown profile format version {data[0]}")
    try:
        (_, version, first, last, c0, c1, c2, c3, c4, c5, spend, other, activity, n) = (
            _HEADER_V1.unpack_from(data)
        )
        hashes = _HASHES[n].unpack_from(data, _HEADER_V1.size)
    except (struct.error, KeyError) as exc:
        raise ProfileEncodingError(f"corrupt v1 profile ({len(data)} bytes): {exc}") from None
    if len(data) != _HEADER_V1.size + 4 * n or not math.isfinite(activity):
        raise ProfileEncodingError(f"corrupt v1 profile ({len(data)} bytes)")
    return Profile(
        version=version,
        first_event_ms=first,
        last_event_ms=last,
        counts=[c0, c1, c2, c3, c4, c5],
        spend_micros=spend,
        other_purchases=other,
        activity=activity,
        category_hashes=set(hashes),
    )
