"""The state encoding's C writer (udfs/_statecodec.c) against the Python encoder it replaces:
the same bytes for every profile, and the Python path (same bytes, or the same error) for what
the C writer does not cover."""

from __future__ import annotations

import importlib
import math
import random
from typing import Any

import pytest

from tests.support.lookalike import lookalike
from tests.support.shared_data import shared_file
from udfs import codec
from udfs._impl import selected
from udfs.codec import decode_profile, encode_profile, encode_profile_py
from udfs.events import decode_event, validate_message
from udfs.fold import replay
from udfs.params import RING_DAY, RING_MID, RING_SHORT, ProfileParams
from udfs.profile import Profile
from udfs.sketches import Preferences
from udfs.sources import SyntheticSpec, read_rees46, read_taobao, synthetic_events

NOW_MS = 10**13


def _writer() -> Any:
    """udfs._statecodec.encode_v3: always on a native build; tests skip without one."""
    if selected["mode"] != "native":
        pytest.skip(f"no native build ({selected.get('reason')})")
    return importlib.import_module("udfs._statecodec").encode_v3


def _c(p: Profile) -> Any:
    return _writer()(p, RING_SHORT[0], RING_MID[0], RING_DAY[0])


def _profiles(events: int, users: int, seed: int) -> list[Profile]:
    spec = SyntheticSpec(events=events, users=users, seed=seed)
    raws = [m.SerializeToString() for m in synthetic_events(spec)]
    return list(replay((decode_event(r, NOW_MS) for r in raws), ProfileParams()).values())


def test_the_native_build_encodes_state_in_c() -> None:
    if selected["mode"] == "native":
        assert codec._NATIVE_ENCODE is not None, "the native build should include _statecodec"
    else:
        assert codec._NATIVE_ENCODE is None


@pytest.mark.parametrize(("events", "users", "seed"), [(30_000, 4_000, 1), (20_000, 200, 2)])
def test_the_c_writer_gives_the_python_bytes(events: int, users: int, seed: int) -> None:
    """Synthetic shoppers, light and heavy (200 users with ~100 events each: full rings,
    HyperLogLog, evicted preference slots, closed sessions)."""
    profiles = _profiles(events, users, seed)
    assert any(p.distinct_hll for p in profiles) or users > 1000
    for p in profiles:
        data = _c(p)
        assert data == encode_profile_py(p), p
        assert encode_profile(p) == data
        assert encode_profile(decode_profile(data)) == data


@pytest.mark.data
@pytest.mark.parametrize("reader", ["taobao", "rees46"])
def test_the_c_writer_gives_the_python_bytes_on_real_events(reader: str) -> None:
    if reader == "taobao":
        msgs = list(read_taobao(shared_file("taobao_userbehavior_head.csv")))
    else:
        msgs = list(read_rees46(shared_file("rees46_2019-Oct_head.csv")))
    profiles = replay([validate_message(m, 2**62) for m in msgs], ProfileParams())
    for p in profiles.values():
        assert _c(p) == encode_profile_py(p)


# Every MessagePack integer width on both sides of each boundary.
BOUNDARIES = sorted(
    {v + d for v in (0, 2**5, 2**7, 2**8, 2**15, 2**16, 2**31, 2**32, 2**63) for d in (-1, 0, 1)}
    | {-(v + d) for v in (2**5, 2**7, 2**15, 2**31) for d in (-1, 0, 1)}
    | {-(2**63), 2**64 - 1, 2**63 - 1}
)


def _edge_profile(rng: random.Random) -> Profile:
    """A profile with values no event stream makes: every integer width, odd floats, long and
    non-ASCII strings, rings in insertion order out of key order."""
    ints = [v for v in BOUNDARIES if -(2**63) <= v < 2**63]
    times = [v for v in BOUNDARIES if abs(v) <= 2**62]  # differences of two stay in int64

    def i() -> int:
        return rng.choice(ints)

    def t() -> int:
        return rng.choice(times)

    def name(n: int) -> str:
        return "".join(rng.choice("aé€😀z") for _ in range(n))

    floats = [0.0, -0.0, 1.5, -2.25, math.inf, -math.inf, math.nan, 1e-45, 3.4e38, 1e-300]
    last = rng.choice([t(), 1_700_000_000_000, -5_000])
    return Profile(
        epoch_ms=i(), version=rng.choice(BOUNDARIES), first_ms=i(), last_ms=last,
        counts=[rng.choice(BOUNDARIES) for _ in range(6)], spend_micros=rng.choice(BOUNDARIES),
        priced_purchases=i(), other_purchases=i(), last_purchase_ms=i(),
        ring_short={rng.randrange(-10**9, 10**9): [i() for _ in range(6)] for _ in range(5)},
        ring_mid={b: [1, 2, 3, 4, 5, 6] for b in (9, 3, 7, -4)},
        ring_day={rng.randrange(10**6): [i() for _ in range(7)] for _ in range(3)},
        retired_active_days=i(), ref_ms=i(), activity=rng.choice(floats),
        decay=[rng.choice(floats) for _ in range(9)],
        hour_hist=[rng.choice(floats) for _ in range(24)],
        categories=Preferences(
            slots={rng.randrange(2**32): rng.choice(floats) for _ in range(40)},
            names={rng.randrange(2**32): name(rng.choice([0, 31, 32, 255, 256, 300]))
                   for _ in range(8)},
            total=rng.choice(floats),
        ),
        brands=Preferences(),
        distinct_exact=sorted(rng.randrange(2**32) for _ in range(16)),
        distinct_hll=bytes(rng.randrange(256) for _ in range(rng.choice([0, 128, 300]))),
        recent_viewed=[(t(), name(rng.choice([1, 64, 70000]))) for _ in range(3)],
        recent_carted=[(last - 5, "x")], pending_carts=[], recent_purchases=[(last, "")],
        abandoned_carts=i(), converted_carts=i(),
        sessions=[[last - 100, last - 10, i()], [last, last, 1]],
        sessions_closed=i(), sessions_closed_events=i(), sessions_closed_ms=i(),
        view_price_sum=i(), view_price_n=i(), buy_price_sum=i(), buy_price_n=i(),
        recent_ids=[rng.randrange(2**64) for _ in range(rng.choice([0, 3, 100]))],
        inactivity=2, timer_ms=i(), explained_micros=-1,
        reasons=[rng.choice(BOUNDARIES) for _ in range(6)],
    )  # fmt: skip


@pytest.mark.parametrize("seed", range(40))
def test_the_c_writer_covers_every_width_and_odd_values(seed: int) -> None:
    p = _edge_profile(random.Random(seed))
    assert _c(p) == encode_profile_py(p)


def _raises(fn: Any, p: Profile) -> type[BaseException] | None:
    try:
        fn(p)
    except Exception as exc:
        return type(exc)
    return None


def test_the_c_writer_reads_any_class_with_the_profiles_attributes() -> None:
    """Profiles and look-alikes (plain objects with the same values) in turn: the C writer's
    cached attribute getters follow the class, so each gives the Python bytes."""
    profiles = _profiles(4_000, 150, 4)
    for p in profiles:
        want = encode_profile_py(p)
        assert _c(p) == want
        assert _c(lookalike(p)) == want
    incomplete = lookalike(profiles[0])
    del incomplete.categories.names
    with pytest.raises(AttributeError, match="names"):
        _c(incomplete)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda p: setattr(p, "spend_micros", 2**64), id="int beyond 64 bits"),
        pytest.param(lambda p: setattr(p, "activity", 1e300), id="float beyond float32"),
        pytest.param(lambda p: p.decay.__setitem__(0, 3.4028236e38), id="rounds beyond float32"),
        pytest.param(lambda p: setattr(p, "spend_micros", -(2**63) - 1), id="int below int64"),
        pytest.param(lambda p: p.recent_ids.append(-1), id="negative event id hash"),
        pytest.param(lambda p: p.recent_ids.append(2**64), id="event id hash beyond 64 bits"),
        pytest.param(lambda p: p.recent_viewed.append((1, "\ud800")), id="lone surrogate"),
        pytest.param(lambda p: p.ring_short.update({2**70: [1] * 6}), id="huge bucket"),
        pytest.param(lambda p: p.categories.slots.update({-(2**70): 1.0}), id="huge key"),
    ],
)
def test_what_the_c_writer_does_not_cover_takes_the_python_path(change: Any) -> None:
    """NotImplemented from C, then the Python encoder: the same bytes or the same error."""
    p = _profiles(200, 20, 5)[0]
    change(p)
    assert _c(p) is NotImplemented
    error = _raises(encode_profile_py, p)
    assert _raises(encode_profile, p) is error
    if error is None:
        assert encode_profile(p) == encode_profile_py(p)
