"""Each sketch of udfs.sketches alone, its update and its query against exact computation on small
inputs: Space-Saving top-K, HyperLogLog, the bucketed ring counters, the bounded recent-items list
and the hashes they key on (JVM-free)."""

from __future__ import annotations

import itertools
import math
import random
import struct
from array import array
from collections import Counter

import pytest

from udfs._impl import native_module
from udfs.params import DAY_MS, MINUTE_MS, RING_DAY, RING_MID, RING_SHORT, ProfileParams
from udfs.sketches import (
    HLL_ESTIMATE_MEMO,
    HLL_REGISTERS,
    MAX_ITEM_CHARS,
    NAME_MARGIN,
    Preferences,
    f32,
    f32_cast,
    f32_cast_py,
    f32_py,
    hash32,
    hash64,
    hll_add,
    hll_estimate,
    insert_recent,
    ring_add,
    ring_trim,
    window_counts,
)

T0 = 1_735_689_600_000  # 2025-01-01T00:00:00Z
HLL_SIGMA = 1.04 / math.sqrt(HLL_REGISTERS)  # HyperLogLog's relative standard error


# ---------------------------------------------------------------------------------------------
# Hashes and float32 rounding: the state depends on their exact values.
# ---------------------------------------------------------------------------------------------
def test_hashes_are_the_stored_ones() -> None:
    assert hash32("") == 0
    assert hash32("category-7") == 1875158428  # CRC-32
    assert hash64("") == 16476032584258269876  # BLAKE2b, 8 bytes, big-endian
    assert hash64("event-1") == 2107970223676160285
    for i in range(1000):
        assert 0 <= hash32(f"k{i}") < 2**32
        assert 0 <= hash64(f"k{i}") < 2**64


def test_f32_rounds_to_the_nearest_float32() -> None:
    assert f32(0.1) == struct.unpack("<f", struct.pack("<f", 0.1))[0] != 0.1
    assert f32(f32(1 / 3)) == f32(1 / 3)
    assert f32(float(2**24)) == 2**24 and f32(2**24 + 1.0) == 2**24  # 24-bit mantissa


def _float32_edge_values() -> list[float]:
    """Subnormals, float32's limits, infinities, ints, random doubles and bit patterns (NaNs
    with payloads among them), and values spread over float32's exponents and beyond."""
    rng = random.Random(7)
    values = [0.0, -0.0, 1e-45, 1.4e-45, 7e-46, 1e-40, 3.4028234e38, 3.4028235e38, 2**24 + 1.0]
    values += [math.inf, -math.inf, 5, -(2**40), True]
    values += [rng.uniform(-1e6, 1e6) for _ in range(2000)]
    values += [struct.unpack("<d", rng.randbytes(8))[0] for _ in range(2000)]
    values += [v * 2.0 ** rng.randint(-160, 130) for v in (rng.random() for _ in range(2000))]
    return values


def test_native_f32_is_struct_rounding() -> None:
    """udfs._statecodec.f32 (what `f32` is in the native build) against struct's '<f' round trip
    (`f32_py`): the same value bit for bit, the same errors."""
    module = native_module("udfs._statecodec")
    if module is None:
        pytest.skip("the native build is not selected")
    native = module.f32
    assert f32 is native
    for v in _float32_edge_values():
        try:
            expected: float | str = f32_py(v)
        except OverflowError as exc:
            expected = str(exc)
        try:
            got: float | str = native(v)
        except OverflowError as exc:
            got = str(exc)
        if isinstance(expected, float) and isinstance(got, float):
            assert struct.pack("<d", got) == struct.pack("<d", expected), v
        else:
            assert got == expected, v
    assert math.isnan(native(math.nan)) and math.isnan(f32_py(math.nan))
    with pytest.raises(TypeError):
        native("0.5")


def test_f32_cast_is_what_an_array_of_floats_stores() -> None:
    """`f32_cast` (udfs._statecodec.f32_cast in the native build, `f32_cast_py` otherwise) gives
    what array('f') stores, bit for bit: `f32`'s rounding, and an infinity where `f32` raises."""
    module = native_module("udfs._statecodec")
    assert f32_cast is (module.f32_cast if module is not None else f32_cast_py)
    assert f32_cast(0.1) == f32(0.1)
    assert f32_cast(3.5e38) == math.inf and f32_cast(-1e300) == -math.inf
    for cast in {f32_cast, f32_cast_py}:
        for v in _float32_edge_values():
            got = cast(v)
            assert struct.pack("<d", got) == struct.pack("<d", array("f", [v])[0]), v
        with pytest.raises(TypeError):
            cast("0.5")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Space-Saving top-K (Preferences)
# ---------------------------------------------------------------------------------------------
def _zipf_stream(keys: int, events: int, s: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    names = [f"key-{seed}-{i}" for i in range(keys)]
    weights = [1 / (i + 1) ** s for i in range(keys)]
    return rng.choices(names, weights, k=events)


def _ranked(affinity: dict[int, float]) -> list[int]:
    return [h for h, _ in sorted(affinity.items(), key=lambda kv: (-kv[1], kv[0]))]


def test_preferences_are_exact_while_the_keys_fit_in_the_slots() -> None:
    params = ProfileParams(preference_slots=16, top_k=5)
    rng = random.Random(1)
    keys = [f"cat-{i}" for i in range(12)]
    prefs = Preferences()
    exact: Counter[int] = Counter()
    for _ in range(500):
        key = rng.choice(keys)
        weight = float(rng.randint(1, 9))  # integers: exact in float32
        prefs.add(key, weight, params)
        exact[hash32(key)] += int(weight)
    assert prefs.slots == exact
    assert prefs.total == sum(exact.values())
    for k in (1, 5, 12, 20):
        assert prefs.top(k) == _ranked(dict(exact))[:k]


@pytest.mark.parametrize("seed", range(5))
def test_space_saving_holds_the_heavy_hitters_within_its_bounds(seed: int) -> None:
    m = 16
    params = ProfileParams(preference_slots=m, top_k=5)
    stream = _zipf_stream(keys=300, events=4000, s=1.2, seed=seed)
    true = Counter(hash32(k) for k in stream)
    assert len(true) == len(set(stream)), "a hash collision: pick other keys"
    prefs = Preferences()
    for key in stream:
        prefs.add(key, 1.0, params)

    n = len(stream)
    assert len(prefs.slots) == m
    assert prefs.total == n == sum(prefs.slots.values())  # every unit of weight is in a slot
    low = min(prefs.slots.values())
    assert low <= n / m
    heavy = {h for h, c in true.items() if c > n / m}
    assert heavy, "the stream has no heavy hitter to look for"
    assert heavy <= prefs.slots.keys()  # every key above total / m is held
    for h, v in prefs.slots.items():
        assert true[h] <= v <= true[h] + low  # overestimates, by at most the smallest slot
    # The query ranks by the held affinity, so the true top keys come first, in order, as long
    # as their true counts are further apart than the error.
    top = prefs.top(m)
    assert top == _ranked(prefs.slots)
    exact = _ranked(dict(true))
    apart = next(
        i for i, (a, b) in enumerate(itertools.pairwise(exact)) if true[a] - true[b] <= low
    )
    assert apart >= 1, "no top key stands out of the error: the test would check nothing"
    assert top[:apart] == exact[:apart]


def test_space_saving_bounds_hold_for_decayed_weights() -> None:
    """Forward-scaled weights 2^(t / h), as the fold adds them (float32: up to rounding)."""
    m = 8
    params = ProfileParams(preference_slots=m, top_k=3)
    stream = _zipf_stream(keys=100, events=2000, s=1.1, seed=7)
    half_life = 500
    prefs = Preferences()
    true: dict[int, float] = {}
    for t, key in enumerate(stream):
        weight = 2.0 ** (t / half_life)
        prefs.add(key, weight, params)
        true[hash32(key)] = true.get(hash32(key), 0.0) + weight
    total = sum(true.values())
    assert prefs.total == pytest.approx(total, rel=1e-5)
    low = min(prefs.slots.values())
    assert low <= total / m * (1 + 1e-5)
    assert {h for h, c in true.items() if c > total / m} <= prefs.slots.keys()
    for h, v in prefs.slots.items():
        assert true.get(h, 0.0) * (1 - 1e-5) <= v <= (true.get(h, 0.0) + low) * (1 + 1e-5)


def test_top_ranks_by_affinity_then_smaller_hash() -> None:
    """`top` against sorting (-affinity, key) pairs, with many ties and keys in any order."""
    rng = random.Random(5)
    for _ in range(3000):
        n = rng.randint(0, 20)
        keys = rng.sample(range(2**32), n) if rng.random() < 0.5 else rng.sample(range(40), n)
        values = [rng.choice([0.5, 1.0, 2.0]) if rng.random() < 0.6 else rng.random() for _ in keys]
        p = Preferences(slots=dict(zip(keys, values, strict=True)))
        want = [key for _, key in sorted((-v, key) for key, v in p.slots.items())]
        for k in (0, 1, 5, 8, 25):
            assert p.top(k) == want[:k], (p.slots, k)


def test_settle_order_puts_the_slots_in_key_order() -> None:
    """As decoding gives them (floating sums over the slots follow this order)."""
    rng = random.Random(8)
    params = ProfileParams()
    for _ in range(200):
        p = Preferences()
        for _ in range(rng.randint(1, 40)):
            p.add(f"k{rng.randint(0, 30)}", rng.choice([1.0, 0.5, rng.random()]), params)
        before = dict(p.slots)
        p.settle_order()
        assert list(p.slots) == sorted(before) and p.slots == before and not p.unsorted


def test_preferences_name_the_top_keys_and_only_keys_near_the_top() -> None:
    params = ProfileParams(preference_slots=16, top_k=5)
    long_tail = "x" * (MAX_ITEM_CHARS + 10)
    stream = [
        k + (long_tail if i % 3 == 0 else "") for i, k in enumerate(_zipf_stream(60, 2000, 1.0, 3))
    ]
    by_hash = {hash32(k): k for k in stream}
    prefs = Preferences()
    for key in stream:
        prefs.add(key, 1.0, params)
        assert set(prefs.top(params.top_k)) <= prefs.names.keys()
        assert prefs.names.keys() <= set(prefs.top(params.top_k + NAME_MARGIN))
        for h, name in prefs.names.items():
            assert name == by_hash[h][:MAX_ITEM_CHARS]


def test_scaling_multiplies_every_affinity_and_keeps_the_ranking() -> None:
    params = ProfileParams(preference_slots=4, top_k=2)
    prefs = Preferences()
    for key, weight in [("a", 8.0), ("b", 4.0), ("c", 2.0), ("d", 1.0), ("a", 8.0)]:
        prefs.add(key, weight, params)
    before = prefs.top(4)
    prefs.scale(0.25)
    assert prefs.slots == {hash32("a"): 4.0, hash32("b"): 1.0, hash32("c"): 0.5, hash32("d"): 0.25}
    assert prefs.total == 5.75 and prefs.top(4) == before


# ---------------------------------------------------------------------------------------------
# HyperLogLog
# ---------------------------------------------------------------------------------------------
def _hll(items: list[str]) -> bytearray:
    registers = bytearray(HLL_REGISTERS)
    for item in items:
        hll_add(registers, hash64(item))
    return registers


def test_hll_register_and_rank_of_a_hash() -> None:
    registers = bytearray(HLL_REGISTERS)
    hll_add(registers, (1 << 63) | 5)  # register 5; the other 57 bits start with a one
    assert registers[5] == 1
    hll_add(registers, (1 << 7) | 3)  # register 3; 56 zeros, then a one
    assert registers[3] == 57
    hll_add(registers, 3)  # register 3; all 57 other bits zero
    assert registers[3] == 58
    hll_add(registers, (1 << 60) | 3)  # a smaller rank leaves the register as it is
    assert registers[3] == 58 and sum(1 for r in registers if r) == 2


def test_hll_registers_depend_only_on_the_set() -> None:
    items = [f"item-{i}" for i in range(3000)]
    shuffled = [*items, *items[:500]]  # with repeats
    random.Random(4).shuffle(shuffled)
    assert _hll(items) == _hll(shuffled)


def test_hll_estimate_is_within_its_error_bound_for_ten_thousand_items() -> None:
    n = 10_000
    errors = []
    for s in range(20):  # 20 disjoint sets
        estimate = hll_estimate(bytes(_hll([f"set{s}-item-{i}" for i in range(n)])))
        errors.append((estimate - n) / n)
    assert all(abs(e) <= 4 * HLL_SIGMA for e in errors), errors
    rms = math.sqrt(sum(e * e for e in errors) / len(errors))
    assert rms <= 1.5 * HLL_SIGMA, (rms, HLL_SIGMA)  # about 1 sigma expected
    # Unbiased: the mean of 20 errors is within 3 standard errors of 0.
    assert abs(sum(errors) / len(errors)) <= 3 * HLL_SIGMA / math.sqrt(len(errors))


def test_hll_estimate_is_the_formula_over_the_registers() -> None:
    """The stored features depend on its exact value: the raw HyperLogLog estimate summed over
    the registers in order (linear counting while some are zero), rounded, for every rank."""
    rng = random.Random(11)
    m = HLL_REGISTERS
    sets = [
        bytes(rng.randint(0, top) for _ in range(m))
        for top in rng.choices([3, 12, 58, 255], k=HLL_ESTIMATE_MEMO + 500)
    ]
    for registers in sets + sets[:1000]:  # past the memo's size, then again (memoised or not)
        raw = 0.7213 / (1 + 1.079 / m) * m * m / sum(2.0**-r for r in registers)
        zeros = registers.count(0)
        if raw <= 2.5 * m and zeros:
            raw = m * math.log(m / zeros)
        assert hll_estimate(registers) == round(raw), registers
        assert hll_estimate(registers) == round(raw)


@pytest.mark.parametrize("n", [1, 5, 20, 50, 100, 200])
def test_hll_counts_small_sets_by_linear_counting(n: int) -> None:
    m = HLL_REGISTERS
    sd = math.sqrt(m * (math.exp(n / m) - n / m - 1))  # linear counting's standard error
    for s in range(10):
        estimate = hll_estimate(bytes(_hll([f"small{s}-{i}" for i in range(n)])))
        assert abs(estimate - n) <= max(1.0, 4 * sd), (n, s, estimate)


# ---------------------------------------------------------------------------------------------
# Ring counters
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_ring_window_counts_match_brute_force(seed: int) -> None:
    """Events over ten days, arriving up to 40 minutes out of order, folded the way the profile
    does (trim when the clock moves forward, then add); every window at many times and spans
    equals the exact count."""
    rng = random.Random(seed)
    width = 7  # six event types, then spend
    times = sorted(T0 + rng.randrange(10 * DAY_MS) for _ in range(1500))
    arrivals = sorted(times, key=lambda t: t + rng.randrange(40 * MINUTE_MS))
    specs = {"short": RING_SHORT, "mid": RING_MID, "day": RING_DAY}
    rings: dict[str, dict[int, list[int]]] = {name: {} for name in specs}
    seen: list[tuple[int, int, int]] = []  # (t, type, spend)
    dropped = 0
    clock = 0
    for i, t in enumerate(arrivals):
        ti = rng.randrange(6)
        spend = rng.randrange(1, 10**6) if ti == 4 else 0
        if t > clock:
            clock = t
            for name, (bucket_ms, keep) in specs.items():
                n = ring_trim(rings[name], clock // bucket_ms, keep)
                if name == "day":
                    dropped += n
        for name, (bucket_ms, _) in specs.items():
            ring_add(rings[name], t // bucket_ms, ti, spend, width)
        seen.append((t, ti, spend))
        if i % 50:
            continue
        for name, (bucket_ms, keep) in specs.items():
            assert len(rings[name]) <= keep
            now = clock + rng.randrange(2 * bucket_ms)
            head = now // bucket_ms
            for span in (1, 2, keep // 2, keep, None):
                s = keep if span is None else span
                want = [0] * width
                for et, eti, esp in seen:
                    if head - s < et // bucket_ms <= head:
                        want[eti] += 1
                        want[width - 1] += esp
                got = window_counts(rings[name], now, (bucket_ms, keep), width, span)
                assert got == want, (name, span, now)
    # Days that left the daily ring plus days in it: every active day, once.
    assert dropped + len(rings["day"]) == len({t // DAY_MS for t in times})


def test_ring_trim_drops_what_left_the_window() -> None:
    ring = {b: [1] for b in (3, 5, 6, 9, 10)}
    assert ring_trim(ring, head=10, keep=4) == 3  # buckets 7..10 stay
    assert sorted(ring) == [9, 10]
    assert ring_trim(ring, head=10, keep=4) == 0


# ---------------------------------------------------------------------------------------------
# Bounded recent distinct items
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("limit", [1, 3, 5])
def test_recent_items_are_the_latest_distinct_ones_in_any_order(limit: int) -> None:
    rng = random.Random(limit)
    items: list[tuple[int, str]] = []
    latest: dict[str, int] = {}
    for _ in range(400):
        t = rng.randrange(200)
        item = f"i{rng.randrange(12)}"
        insert_recent(items, t, item, limit)
        latest[item] = max(t, latest.get(item, t))
        assert items == sorted((t, i) for i, t in latest.items())[-limit:]
