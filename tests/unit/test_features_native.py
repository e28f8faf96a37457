"""The features in C (udfs/_features.c) against the Python code they replace
(`udfs.features.features_and_vector_py`): the same dict (keys in order, every value of the same
type and, for floats, the same bits up to NaN), the same model input, on synthetic, decoded, real
and odd profiles; and the Python path for what the C code does not cover."""

from __future__ import annotations

import importlib
import math
import random
from typing import Any

import pytest

from tests.support.lookalike import lookalike
from tests.support.shared_data import shared_file
from udfs import features
from udfs._impl import selected
from udfs.codec import decode_profile, encode_profile
from udfs.events import decode_event, validate_message
from udfs.features import features_and_vector, features_and_vector_py
from udfs.fold import replay
from udfs.params import DAY_MS, HOUR_MS, ProfileParams
from udfs.profile import Profile
from udfs.sketches import Preferences
from udfs.sources import SyntheticSpec, read_rees46, read_taobao, synthetic_events

PARAMS = ProfileParams()
NOW_MS = 10**13
# Rows are made at the profile's newest event; timer rows days later.
OFFSETS_MS = (0, 1, 599_999, 3 * HOUR_MS + 7, 14 * DAY_MS, 40 * DAY_MS)


def _native() -> Any:
    """udfs._features.features_and_vector: always on a native build; tests skip without one."""
    if selected["mode"] != "native":
        pytest.skip(f"no native build ({selected.get('reason')})")
    assert features._NATIVE_FEATURES is not None
    return features._NATIVE_FEATURES


def _c(p: Profile, now_ms: int, params: ProfileParams = PARAMS) -> Any:
    return _native()(p, now_ms, params.top_k, params.activity_half_life_ms)


def same(a: Any, b: Any) -> bool:
    """Equal values of the same types; floats bit for bit (NaN equals NaN, -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def _check(p: Profile, now_ms: int, params: ProfileParams = PARAMS) -> None:
    got = _c(p, now_ms, params)
    assert got is not NotImplemented
    want = features_and_vector_py(p, now_ms, params)
    if not same(got, want):
        diff = {k: (got[0].get(k), v) for k, v in want[0].items() if not same(got[0].get(k), v)}
        raise AssertionError(f"C and Python differ: {diff}, key order equal: "
                             f"{list(got[0]) == list(want[0])}")  # fmt: skip
    assert same(features_and_vector(p, now_ms, params), want)


def _profiles(events: int, users: int, seed: int) -> list[Profile]:
    spec = SyntheticSpec(events=events, users=users, seed=seed)
    raws = [m.SerializeToString() for m in synthetic_events(spec)]
    return list(replay((decode_event(r, NOW_MS) for r in raws), PARAMS).values())


def test_the_native_build_computes_features_in_c() -> None:
    if selected["mode"] == "native":
        assert features._NATIVE_FEATURES is not None, "the native build should have _features"
        module = importlib.import_module("udfs._features")
        keys = module.key_order()
        assert keys == tuple(features_and_vector_py(Profile(), 0, PARAMS)[0])
    else:
        assert features._NATIVE_FEATURES is None


@pytest.mark.parametrize(("events", "users", "seed"), [(20_000, 3_000, 1), (20_000, 150, 2)])
def test_the_c_features_are_the_python_features(events: int, users: int, seed: int) -> None:
    """Light and heavy synthetic shoppers (150 users with ~130 events each: full rings,
    HyperLogLog, evicted preference slots, closed sessions), at their newest event and later,
    as held in memory and as read back from their state."""
    profiles = _profiles(events, users, seed)
    assert users > 1000 or any(p.distinct_hll for p in profiles)
    for p in profiles:
        for offset in OFFSETS_MS:
            _check(p, p.last_ms + offset)
        _check(decode_profile(encode_profile(p)), p.last_ms)


def test_the_c_features_read_any_class_with_the_profiles_attributes() -> None:
    """Profiles and look-alikes (plain objects with the same values) in turn: the C reader's
    cached attribute getters follow the class, so each gives the Python features."""
    profiles = _profiles(4_000, 150, 4)
    for p in profiles:
        want = features_and_vector_py(p, p.last_ms, PARAMS)
        assert same(_c(p, p.last_ms), want)
        assert same(_c(lookalike(p), p.last_ms), want)
    incomplete = lookalike(profiles[0])
    del incomplete.hour_hist
    with pytest.raises(AttributeError, match="hour_hist"):
        _c(incomplete, NOW_MS)


@pytest.mark.parametrize(
    "params",
    [
        ProfileParams(top_k=1),
        ProfileParams(top_k=16, preference_slots=16),
        ProfileParams(preference_slots=3, top_k=2),
        ProfileParams(activity_half_life_ms=HOUR_MS),
    ],
    ids=["top 1", "top 16 of 16", "3 slots", "short activity half-life"],
)
def test_the_c_features_follow_the_params(params: ProfileParams) -> None:
    spec = SyntheticSpec(events=3_000, users=60, seed=4)
    msgs = [m.SerializeToString() for m in synthetic_events(spec)]
    for p in replay((decode_event(r, NOW_MS) for r in msgs), params).values():
        _check(p, p.last_ms, params)
        _check(p, p.last_ms + 2 * DAY_MS, params)


@pytest.mark.data
@pytest.mark.parametrize("reader", ["taobao", "rees46"])
def test_the_c_features_are_the_python_features_on_real_events(reader: str) -> None:
    if reader == "taobao":
        msgs = list(read_taobao(shared_file("taobao_userbehavior_head.csv")))
    else:
        msgs = list(read_rees46(shared_file("rees46_2019-Oct_head.csv")))
    for p in replay([validate_message(m, 2**62) for m in msgs], PARAMS).values():
        _check(p, p.last_ms)
        _check(p, p.last_ms + DAY_MS)


def _odd_profile(rng: random.Random) -> Profile:
    """Values no event stream makes but the C code covers: zero and negative totals, signed
    zeros, infinities, unnamed top keys, ties, empty and out-of-window rings."""
    floats = [0.0, -0.0, 1.5, 2.25, 1e-45, 3.4e38, math.inf, -math.inf, 0.1, 1 / 3]
    last = 1_700_000_000_000 + rng.randrange(DAY_MS)

    def slots() -> dict[int, float]:
        return {rng.randrange(2**32): rng.choice([1.0, 2.0, 0.5, 0.0]) for _ in range(8)}

    return Profile(
        epoch_ms=last - 10 * DAY_MS, version=5, first_ms=last - rng.randrange(40 * DAY_MS),
        last_ms=last, counts=[rng.randrange(4) for _ in range(6)],
        spend_micros=rng.choice([0, 1, 10**12]), priced_purchases=rng.randrange(3),
        other_purchases=1, last_purchase_ms=rng.choice([0, last - 1]),
        ring_short={last // 600_000 - k: [rng.randrange(3) for _ in range(6)]
                    for k in (0, 2, 7)},
        ring_mid={last // 7_200_000 + 1: [1] * 6, last // 7_200_000: [0, 0, 0, 2, 0, 0]},
        ring_day={last // DAY_MS - k: [rng.randrange(3) for _ in range(7)] for k in (0, 6, 29)},
        retired_active_days=rng.randrange(3), ref_ms=last - rng.randrange(HOUR_MS),
        activity=rng.choice(floats), decay=[rng.choice(floats) for _ in range(9)],
        hour_hist=[rng.choice([0.0, 0.0, 1.0, 2.0, -0.0]) for _ in range(24)],
        categories=Preferences(slots=slots(), names={}, total=rng.choice([0.0, 4.0, -1.0])),
        brands=Preferences(slots=slots(), names={}, total=rng.choice(floats)),
        distinct_exact=[1, 2, 3],
        recent_viewed=[(last - DAY_MS, "a"), (last - DAY_MS + 1, "b"), (last, "c")],
        recent_carted=[(-5, "x")], pending_carts=[(last, "p")],
        abandoned_carts=rng.randrange(2), converted_carts=rng.randrange(2),
        sessions=rng.choice([[], [[last - 100, last, 4]]]),
        sessions_closed=rng.randrange(2), sessions_closed_events=3, sessions_closed_ms=59_999,
        view_price_sum=rng.choice([0, 5]), view_price_n=rng.randrange(2),
        buy_price_sum=7, buy_price_n=rng.randrange(2),
    )  # fmt: skip


@pytest.mark.parametrize("seed", range(60))
def test_the_c_features_cover_odd_values(seed: int) -> None:
    p = _odd_profile(random.Random(seed))
    for offset in (0, 1, DAY_MS):
        _check(p, p.last_ms + offset)


def test_an_empty_profile_and_a_share_on_a_rounding_half() -> None:
    _check(Profile(), 0)
    # 0.0000125 * 1e6 is 12.5 (a half): round6 takes round(x, 6), and so must the C code.
    p = Profile(categories=Preferences(slots={7: 0.0000125}, names={7: "c"}, total=1.0))
    _check(p, 0)
    assert _c(p, 0)[0]["pref_top_categories"] == [["c", round(0.0000125, 6)]]


def _raises(fn: Any) -> type[BaseException] | None:
    try:
        fn()
    except Exception as exc:
        return type(exc)
    return None


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda p: setattr(p, "spend_micros", 2**53 + 1), id="int beyond 2**53"),
        pytest.param(lambda p: p.counts.__setitem__(0, 2**70), id="count beyond 64 bits"),
        pytest.param(lambda p: p.counts.append(1), id="seven counts"),
        pytest.param(lambda p: p.categories.slots.update({5: math.nan}), id="NaN affinity"),
        pytest.param(lambda p: p.ring_short.update({0: [1, 2]}), id="short cell"),
        pytest.param(lambda p: p.ring_day.update({2**60: [1] * 7}), id="huge bucket"),
        pytest.param(lambda p: setattr(p, "ref_ms", p.last_ms + 10**13), id="overflowing power"),
        pytest.param(lambda p: p.recent_viewed.append(("t", "x")), id="text time"),
        pytest.param(lambda p: p.sessions.append([1, 2]), id="short session"),
        pytest.param(lambda p: p.decay.__setitem__(3, "1"), id="text decay"),
    ],
)
def test_what_the_c_features_do_not_cover_takes_the_python_path(change: Any) -> None:
    """NotImplemented from C, then the Python code: the same features or the same error."""
    p = _profiles(400, 20, 5)[0]
    change(p)
    assert _c(p, p.last_ms) is NotImplemented
    error = _raises(lambda: features_and_vector_py(p, p.last_ms, PARAMS))
    assert _raises(lambda: features_and_vector(p, p.last_ms, PARAMS)) is error
    if error is None:
        assert same(features_and_vector(p, p.last_ms, PARAMS),
                    features_and_vector_py(p, p.last_ms, PARAMS))  # fmt: skip
