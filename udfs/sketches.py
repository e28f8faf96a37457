"""The bounded summaries a profile keeps, each with its update and its query, and the hashes they
key on: Space-Saving top-K (`Preferences`), HyperLogLog (`hll_add`, `hll_estimate`), bucketed
ring counters (`ring_add`, `ring_trim`, `window_counts`) and a bounded list of recent distinct
items (`insert_recent`). They know nothing of the profile (udfs.profile) that holds them, nor of
the fold (udfs.fold) that updates them; tests/unit/test_sketches.py checks each against exact
computation.

Floats these sketches hold are rounded to float32 (`f32`) whenever they change, as every float in
the profile state is (its encoding stores float32).
"""

from __future__ import annotations

import bisect
import hashlib
import math
import struct
import zlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from udfs._impl import native_module
from udfs.params import ProfileParams

MAX_ITEM_CHARS: Final = 64  # ids kept in lists are cut to this many characters
HLL_REGISTERS: Final = 128
NAME_MARGIN: Final = 3  # names are kept for the top K plus a few, so ties leave no top key nameless

_F32 = struct.Struct("<f")


def f32_py(x: float) -> float:
    """`x` rounded to the nearest float32 (what the state encoding stores)."""
    return float(_F32.unpack(_F32.pack(x))[0])


def _native_f32() -> Callable[[float], float]:
    """udfs._statecodec.f32 (the same rounding by the same CPython routine, without struct's
    bytes and tuple: it runs several times per event) when the native build has it."""
    module = native_module("udfs._statecodec")
    native: Callable[[float], float] | None = getattr(module, "f32", None)
    return native if native is not None else f32_py


f32: Final = _native_f32()


def f32_cast_py(x: float) -> float:
    """`x` as an array('f') stores it: rounded to the nearest float32 like `f32`, but a finite
    value beyond float32's range becomes an infinity instead of raising."""
    return array("f", [x])[0]


def _native_f32_cast() -> Callable[[float], float]:
    """udfs._statecodec.f32_cast (the same C cast array('f') makes, without the array and its
    list) when the native build has it."""
    module = native_module("udfs._statecodec")
    native: Callable[[float], float] | None = getattr(module, "f32_cast", None)
    return native if native is not None else f32_cast_py


f32_cast: Final = _native_f32_cast()


def hash32(text: str) -> int:
    """CRC-32 of the UTF-8 text: the keys of `Preferences` and of the exact distinct set."""
    return zlib.crc32(text.encode("utf-8"))


# An empty 8-byte BLAKE2b, copied per hash: cheaper than a constructor call with its keyword
# (hash64 runs for every event's id).
_BLAKE2B_64: Final = hashlib.blake2b(digest_size=8)
_U64: Final = struct.Struct(">Q")


def hash64(text: str) -> int:
    """64-bit BLAKE2b of the UTF-8 text (big-endian): event id hashes and HyperLogLog input."""
    h = _BLAKE2B_64.copy()
    h.update(text.encode("utf-8"))
    value: int = _U64.unpack(h.digest())[0]
    return value


@dataclass(slots=True)
class Preferences:
    """Bounded top-K by decayed affinity (forward-scaled, see udfs.profile): Space-Saving
    (Metwally et al., 2005) with weights, over `preference_slots` = m keys.

    Update `add`, query `top`. `slots` maps a 32-bit key hash to its affinity. With at most m
    distinct keys every affinity is exact. Beyond that the newcomer replaces the smallest key and
    inherits its affinity, so (up to float32 rounding, and keys whose hashes collide counting as
    one): the slots sum to `total`; a held key's affinity overestimates its true affinity by at
    most the smallest held affinity, itself at most total / m; and every key whose true affinity
    exceeds total / m is held. Which lighter keys are held can depend on arrival order. Names are
    kept only near the top: a key rises only through an event of that key, which carries its name
    (the common decay never reorders keys).
    """

    slots: dict[int, float] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    total: float = 0.0  # affinity of every keyed event, tracked or not
    # A key was inserted since the slots were last in key order (the order decoding gives them;
    # sums over the slots follow it, see `settle_order`).
    unsorted: bool = field(default=False, compare=False, repr=False)

    # Written out, not generated: the dataclass's generated __init__ is interpreted Python even in
    # the compiled module, and every new or decoded profile makes two (tests/unit/test_native.py
    # checks it against the fields above).
    def __init__(
        self,
        slots: dict[int, float] | None = None,
        names: dict[int, str] | None = None,
        total: float = 0.0,
        unsorted: bool = False,
    ) -> None:
        self.slots = {} if slots is None else slots
        self.names = {} if names is None else names
        self.total = total
        self.unsorted = unsorted

    def add(self, key: str, weight: float, params: ProfileParams) -> None:
        h = hash32(key)
        slots = self.slots
        self.total = f32(self.total + weight)
        old = slots.get(h)
        if old is not None:
            slots[h] = f32(old + weight)
        elif len(slots) >= params.preference_slots:
            # Space-Saving: the newcomer replaces the smallest key (ties: smaller hash) and
            # inherits its affinity (an overestimate), so a rising key is not evicted before it
            # can accumulate.
            low_key = -1
            low_value = 0.0
            for k, v in slots.items():
                if low_key < 0 or v < low_value or (v == low_value and k < low_key):
                    low_key = k
                    low_value = v
            del slots[low_key]
            self.names.pop(low_key, None)
            slots[h] = f32(low_value + weight)
            self.unsorted = True
        else:
            slots[h] = f32(weight)
            self.unsorted = True
        limit = params.top_k + NAME_MARGIN
        if len(slots) <= limit:
            # Every key is among the top ones: all are named (names never hold other keys).
            self.names[h] = key[:MAX_ITEM_CHARS]
            return
        named = self.top(limit)
        if h in named:
            self.names[h] = key[:MAX_ITEM_CHARS]
        names = self.names
        for k in names:
            if k not in named:
                self.names = {n: name for n, name in names.items() if n in named}
                break

    def top(self, k: int) -> list[int]:
        """The `k` keys of highest affinity (ties: smaller hash first)."""
        slots = self.slots
        # Keys in order, then a stable sort by affinity, highest first: ties keep the key order
        # (the same as sorting (-affinity, key) pairs, without a tuple and a float per key).
        ranked = sorted(sorted(slots), key=slots.__getitem__, reverse=True)
        return ranked[:k]

    def scale(self, factor: float) -> None:
        self.total = f32(self.total * factor)
        self.slots = {h: f32(v * factor) for h, v in self.slots.items()}

    def settle_order(self) -> None:
        """Put the slots in key order, as `udfs.codec.decode_profile` returns them."""
        if self.unsorted:
            slots = self.slots
            self.slots = {key: slots[key] for key in sorted(slots)}  # no (key, value) tuples
            self.unsorted = False


def hll_add(registers: bytearray, h64: int) -> None:
    """HyperLogLog (Flajolet et al., 2007) update: add an item by its 64-bit hash to
    `HLL_REGISTERS` one-byte registers (the low 7 bits pick the register). Idempotent and
    order-free: the registers are a function of the set of hashes added."""
    idx = h64 & (HLL_REGISTERS - 1)
    rank = 58 - (h64 >> 7).bit_length()  # leading zeros in the other 57 bits, plus one
    registers[idx] = max(registers[idx], rank)


# 2.0**-r for every register value r (a byte): exact powers of two, looked up instead of computed
# for each of the 128 registers of every row of a profile past the exact distinct set.
_HLL_POWERS: Final = tuple(2.0**-r for r in range(256))


# Estimates by registers: a row reads the estimate twice (its features and its column), and the
# registers change only when a new category arrives. Cleared when full.
HLL_ESTIMATE_MEMO: Final = 4_096
_hll_estimates: dict[bytes, int] = {}


def hll_estimate(registers: bytes) -> int:
    """HyperLogLog query: the number of distinct items added, with a relative standard error of
    about 1.04 / sqrt(128) = 9.2 % (linear counting, more precise, while many registers are 0)."""
    estimate = _hll_estimates.get(registers)
    if estimate is None:
        estimate = _hll_estimate(registers)
        if len(_hll_estimates) >= HLL_ESTIMATE_MEMO:
            _hll_estimates.clear()
        _hll_estimates[registers] = estimate
    return estimate


def _hll_estimate(registers: bytes) -> int:
    m = HLL_REGISTERS
    raw = 0.7213 / (1 + 1.079 / m) * m * m / sum([_HLL_POWERS[r] for r in registers])
    zeros = registers.count(0)
    if raw <= 2.5 * m and zeros:
        raw = m * math.log(m / zeros)  # linear counting for small cardinalities
    return round(raw)


def window_counts(
    ring: dict[int, list[int]],
    now_ms: int,
    spec: tuple[int, int],
    width: int,
    span: int | None = None,
) -> list[int]:
    """Ring counter query: per-field sums over the last `span` buckets (default: the whole ring)
    as of `now_ms`. A ring is bucket index -> `width` counts; `spec` is (bucket width in ms,
    buckets kept). Exact for the buckets kept: windows are bucket-aligned (the current bucket and
    the `span` - 1 before it), so a window is between `span` - 1 and `span` buckets long."""
    bucket_ms, keep = spec
    span = keep if span is None else span
    head = now_ms // bucket_ms
    out = [0] * width
    for b, cell in ring.items():
        if head - span < b <= head:
            for i, v in enumerate(cell):
                out[i] += v
    return out


def ring_add(ring: dict[int, list[int]], bucket: int, ti: int, spend: int, width: int) -> None:
    """Ring counter update: count one event in field `ti` of `bucket`, and add `spend` (if any)
    to the last field (rings that carry spend are one field wider than the event types)."""
    cell = ring.get(bucket)
    if cell is None:
        cell = ring[bucket] = [0] * width
    cell[ti] += 1
    if spend:
        cell[width - 1] += spend


def ring_trim(ring: dict[int, list[int]], head: int, keep: int) -> int:
    """Drop buckets that left the window of `keep` buckets ending at `head`; return how many
    were dropped (the ring then holds at most `keep` buckets at or before `head`)."""
    oldest = head - keep
    for b in ring:
        if b <= oldest:
            break
    else:
        return 0  # most calls: nothing to drop, and no list made to find that out
    old = [b for b in ring if b <= oldest]
    for b in old:
        del ring[b]
    return len(old)


def insert_recent(items: list[tuple[int, str]], t: int, item: str, limit: int) -> None:
    """Keep the `limit` most recent distinct items, ordered by (event time, item). Exact, in any
    arrival order: the list is the `limit` largest (latest time of the item, item) pairs."""
    for i, (seen_t, seen) in enumerate(items):
        if seen == item:
            if seen_t >= t:
                return
            del items[i]
            break
    bisect.insort(items, (t, item))
    if len(items) > limit:
        del items[0]
