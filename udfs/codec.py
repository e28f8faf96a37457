"""The profile's versioned byte encoding: what the job stores in its Flink ValueState.

Format 3: byte 0x03, then a MessagePack array of the fields in `encode_profile` order; times
inside lists are stored relative to last_ms, ring buckets by their age, floats as float32 (exact:
the state only holds float32 values, see udfs.profile). Format 2 is format 3 without its last two
fields (`explained_micros`, `reasons`: issue 10) and is still read, as is format 1 (issue 2's
struct layout), which is upgraded. A new layout gets a new version byte.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import Any

import msgpack

from udfs._impl import native_module
from udfs.fold import add_distinct
from udfs.params import RING_DAY, RING_MID, RING_SHORT
from udfs.profile import N_TYPES, Profile
from udfs.sketches import Preferences, f32

FORMAT_V1 = 1
FORMAT_V2 = 2
FORMAT_V3 = 3
_HEADER_V1 = struct.Struct("<BQqq6IqIdH")


class ProfileEncodingError(ValueError):
    pass


def _pref_out(p: Preferences) -> list[Any]:
    slots: list[Any] = []  # key, affinity, key, affinity, ... (Any: keys stay ints)
    for key in sorted(p.slots):
        slots.append(key)
        slots.append(p.slots[key])
    names: list[Any] = []
    for key in sorted(p.names):
        names.append(key)
        names.append(p.names[key])
    return [p.total, slots, names]


def _pref_in(raw: list[Any]) -> Preferences:
    total, slots, names = raw
    return Preferences(
        slots={slots[i]: slots[i + 1] + 0.0 for i in range(0, len(slots), 2)},
        names={names[i]: names[i + 1] for i in range(0, len(names), 2)},
        total=total + 0.0,
    )


def _ring_out(ring: dict[int, list[int]], head: int) -> list[list[int]]:
    return [[head - b, *cell] for b, cell in ring.items()]


def _ring_in(raw: list[list[int]], head: int) -> dict[int, list[int]]:
    return {head - r[0]: r[1:] for r in raw}


def _flat_pairs(pairs: list[tuple[int, str]], last: int) -> list[Any]:
    return [x for t, item in pairs for x in (last - t, item)]


def _pairs(flat: list[Any], last: int) -> list[tuple[int, str]]:
    return [(last - flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


# One packer (its C method runs whole under the GIL); what msgpack.packb would make.
_PACKER = msgpack.Packer(use_bin_type=True, use_single_float=True)
_V3_BYTE = bytes([FORMAT_V3])


def _ids_out(ids: list[int]) -> bytes:
    """64-bit event id hashes as consecutive big-endian words."""
    return struct.pack(f">{len(ids)}Q", *ids)


def _ids_in(data: bytes) -> list[int]:
    if len(data) % 8:
        raise ValueError(f"{len(data)} bytes of event id hashes is not a multiple of 8")
    return list(struct.unpack(f">{len(data) // 8}Q", data))


def _native_encoder() -> Callable[..., object] | None:
    """udfs._statecodec.encode_v3 when the native build is selected and has it, else None."""
    module = native_module("udfs._statecodec")
    if module is None:
        return None
    encoder: Callable[..., object] = module.encode_v3
    return encoder


# The format-3 encoding in C (udfs/_statecodec.c): the same bytes as `encode_profile_py`,
# without building the body as Python lists; NotImplemented for a profile it does not cover.
_NATIVE_ENCODE = _native_encoder()


def encode_profile(p: Profile) -> bytes:
    """The profile's state bytes (format 3)."""
    encode = _NATIVE_ENCODE
    if encode is not None:
        data = encode(p, RING_SHORT[0], RING_MID[0], RING_DAY[0])
        if isinstance(data, bytes):
            return data
    return encode_profile_py(p)


def encode_profile_py(p: Profile) -> bytes:
    """`encode_profile` in Python: the reference the C writer is checked against, and the path
    for what it does not cover."""
    last = p.last_ms
    body = [
        p.epoch_ms, p.version, p.first_ms, last, p.counts, p.spend_micros,
        p.priced_purchases, p.other_purchases, p.last_purchase_ms,
        _ring_out(p.ring_short, last // RING_SHORT[0]),
        _ring_out(p.ring_mid, last // RING_MID[0]),
        _ring_out(p.ring_day, last // RING_DAY[0]), p.retired_active_days,
        p.ref_ms, p.activity, p.decay, [v if v else 0 for v in p.hour_hist],
        _pref_out(p.categories), _pref_out(p.brands), p.distinct_exact, p.distinct_hll,
        _flat_pairs(p.recent_viewed, last), _flat_pairs(p.recent_carted, last),
        _flat_pairs(p.pending_carts, last), _flat_pairs(p.recent_purchases, last),
        p.abandoned_carts, p.converted_carts,
        [x for s in p.sessions for x in (last - s[0], last - s[1], s[2])],
        p.sessions_closed, p.sessions_closed_events, p.sessions_closed_ms,
        p.view_price_sum, p.view_price_n, p.buy_price_sum, p.buy_price_n,
        _ids_out(p.recent_ids),
        int(p.inactivity), p.timer_ms, p.explained_micros, p.reasons,
    ]  # fmt: skip
    packed: bytes = _PACKER.pack(body)
    return _V3_BYTE + packed


def decode_profile(data: bytes) -> Profile:
    if not data:
        raise ProfileEncodingError("empty profile bytes")
    if data[0] == FORMAT_V3 or data[0] == FORMAT_V2:
        return _decode_v2(data)
    if data[0] == FORMAT_V1:
        return _decode_v1(data)
    raise ProfileEncodingError(f"unknown profile format version {data[0]}")


def _decode_v2(data: bytes) -> Profile:
    """Formats 2 and 3 (format 3 adds `explained_micros` at the end)."""
    fmt = data[0]
    try:
        fields = msgpack.unpackb(data[1:], raw=False)
        reasons = fields.pop() if fmt == FORMAT_V3 else []
        explained = fields.pop() if fmt == FORMAT_V3 else -1
        (epoch, version, first, last, counts, spend, priced, other, last_purchase, r_short,
         r_mid, r_day, retired, ref, activity, decay, hours, cats, brands, d_exact, d_hll,
         viewed, carted, pending, purchases, abandoned, converted, sessions, s_closed, s_events,
         s_ms, vps, vpn, bps, bpn, ids, inactivity, timer) = fields  # fmt: skip
        profile = Profile(
            epoch_ms=epoch, version=version, first_ms=first, last_ms=last, counts=counts,
            spend_micros=spend, priced_purchases=priced, other_purchases=other,
            last_purchase_ms=last_purchase,
            ring_short=_ring_in(r_short, last // RING_SHORT[0]),
            ring_mid=_ring_in(r_mid, last // RING_MID[0]),
            ring_day=_ring_in(r_day, last // RING_DAY[0]),
            retired_active_days=retired, ref_ms=ref, activity=activity + 0.0, decay=decay,
            hour_hist=[v + 0.0 for v in hours], categories=_pref_in(cats),
            brands=_pref_in(brands), distinct_exact=d_exact, distinct_hll=d_hll,
            recent_viewed=_pairs(viewed, last), recent_carted=_pairs(carted, last),
            pending_carts=_pairs(pending, last), recent_purchases=_pairs(purchases, last),
            abandoned_carts=abandoned, converted_carts=converted,
            sessions=[[last - sessions[i], last - sessions[i + 1], sessions[i + 2]]
                      for i in range(0, len(sessions), 3)],
            sessions_closed=s_closed, sessions_closed_events=s_events, sessions_closed_ms=s_ms,
            view_price_sum=vps, view_price_n=vpn, buy_price_sum=bps, buy_price_n=bpn,
            recent_ids=_ids_in(ids),
            inactivity=inactivity, timer_ms=timer, explained_micros=explained, reasons=reasons,
        )  # fmt: skip
    except (ValueError, TypeError, IndexError, AttributeError, msgpack.UnpackException) as exc:
        raise ProfileEncodingError(f"corrupt v{fmt} profile ({len(data)} bytes): {exc}") from None
    if len(profile.counts) != N_TYPES or len(profile.decay) != 9 or len(profile.hour_hist) != 24:
        raise ProfileEncodingError(f"corrupt v{fmt} profile ({len(data)} bytes): wrong shapes")
    return profile


def _decode_v1(data: bytes) -> Profile:
    """Issue 2's layout: lifetime counts, spend, first/last time, activity, category hashes.
    Windows, preferences and the rest start empty after the upgrade."""
    try:
        (_, version, first, last, c0, c1, c2, c3, c4, c5, spend, other, activity, n) = (
            _HEADER_V1.unpack_from(data)
        )
    except struct.error as exc:
        raise ProfileEncodingError(f"corrupt v1 profile ({len(data)} bytes): {exc}") from None
    if len(data) != _HEADER_V1.size + 4 * n or not math.isfinite(activity):
        raise ProfileEncodingError(f"corrupt v1 profile ({len(data)} bytes)")
    profile = Profile(
        epoch_ms=first,
        version=version,
        first_ms=first,
        last_ms=last,
        ref_ms=last,
        counts=[c0, c1, c2, c3, c4, c5],
        spend_micros=spend,
        other_purchases=other,
        priced_purchases=max(0, c4 - other),
        activity=f32(activity),
    )
    for h in struct.unpack_from(f"<{n}I", data, _HEADER_V1.size):
        add_distinct(profile, f"v1:{h}")
    return profile
