"""Profile maths and the versioned state encoding (JVM-free)."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udfs import events as ev
from udfs.events import Event
from udfs.features import FEATURE_NAMES, feature_vector
from udfs.profile import (
    DAY_MS,
    HOUR_MS,
    MAX_TRACKED_CATEGORIES,
    Profile,
    ProfileEncodingError,
    ProfileParams,
    apply_event,
    decode_profile,
    encode_profile,
    replay,
)

P = ProfileParams()
T0 = 1_735_689_600_000


def event(
    kind: int = ev.VIEW,
    t: int = T0,
    user: str = "u",
    cat: str | None = "c1",
    price: int | None = None,
    currency: str | None = None,
    qty: int = 1,
) -> Event:
    return Event("e", user, kind, t, "item", cat, None, price, currency, qty, None, None, 0)


def test_counts_times_and_version() -> None:
    p = Profile()
    for kind, t in [
        (ev.VIEW, T0),
        (ev.VIEW, T0 + 10),
        (ev.ADD_TO_CART, T0 + 20),
        (ev.SEARCH, T0 + 30),
        (ev.FAVORITE, T0 + 40),
        (ev.REMOVE_FROM_CART, T0 + 50),
        (ev.PURCHASE, T0 + 60),
    ]:
        apply_event(p, event(kind, t), P)
    assert p.counts == [2, 1, 1, 1, 1, 1]
    assert (p.version, p.event_count) == (7, 7)
    assert (p.first_event_ms, p.last_event_ms) == (T0, T0 + 60)


def test_spend_is_exact_and_only_in_the_reporting_currency() -> None:
    p = Profile()
    apply_event(p, event(ev.PURCHASE, price=19_990_000, currency="USD", qty=3), P)
    apply_event(p, event(ev.PURCHASE, price=10_000_000, currency="EUR"), P)
    apply_event(p, event(ev.PURCHASE), P)  # no price
    apply_event(p, event(ev.ADD_TO_CART, price=5_000_000, currency="USD"), P)  # not a purchase
    assert p.spend_micros == 59_970_000
    assert p.other_purchases == 2
    assert p.counts[ev.PURCHASE - 1] == 3


def test_activity_halves_after_one_half_life() -> None:
    p = Profile()
    apply_event(p, event(t=T0), P)
    apply_event(p, event(t=T0 + DAY_MS), P)
    assert p.activity == pytest.approx(1.5)
    apply_event(p, event(t=T0 + 3 * DAY_MS), P)
    assert p.activity == pytest.approx(1.5 / 4 + 1)


def test_late_event_does_not_move_time_backwards_and_is_decayed() -> None:
    p = Profile()
    apply_event(p, event(t=T0 + DAY_MS), P)
    apply_event(p, event(t=T0), P)  # one day late
    assert (p.first_event_ms, p.last_event_ms) == (T0, T0 + DAY_MS)
    assert p.activity == pytest.approx(1.5)


def test_activity_is_order_independent_up_to_rounding() -> None:
    times = [T0 + k * 7 * HOUR_MS for k in (3, 0, 5, 1, 4, 2)]
    shuffled, ordered = Profile(), Profile()
    for t in times:
        apply_event(shuffled, event(t=t), P)
    for t in sorted(times):
        apply_event(ordered, event(t=t), P)
    assert shuffled.activity == pytest.approx(ordered.activity, rel=1e-12)


def test_distinct_categories_exact_then_capped() -> None:
    p = Profile()
    for i in range(10):
        apply_event(p, event(cat=f"c{i % 4}"), P)
    apply_event(p, event(cat=None), P)
    assert p.distinct_categories == 4
    for i in range(MAX_TRACKED_CATEGORIES * 2):
        apply_event(p, event(cat=f"x{i}"), P)
    assert p.distinct_categories == MAX_TRACKED_CATEGORIES


def test_replay_groups_by_user() -> None:
    profiles = replay([event(user="a"), event(user="b"), event(user="a", kind=ev.PURCHASE)], P)
    assert {u: p.counts for u, p in profiles.items()} == {
        "a": [1, 0, 0, 0, 1, 0],
        "b": [1, 0, 0, 0, 0, 0],
    }


def test_params_validate() -> None:
    with pytest.raises(ValueError, match="reporting_currency"):
        ProfileParams(reporting_currency="usd")
    with pytest.raises(ValueError, match="half_life"):
        ProfileParams(activity_half_life_ms=0)


def test_feature_vector_matches_names() -> None:
    p = Profile()
    apply_event(p, event(ev.VIEW, t=T0), P)
    apply_event(p, event(ev.ADD_TO_CART, t=T0 + 2 * HOUR_MS), P)
    vec = feature_vector(p)
    assert len(vec) == len(FEATURE_NAMES)
    named = dict(zip(FEATURE_NAMES, vec, strict=True))
    assert named["views"] == 1 and named["carts"] == 1
    assert named["tenure_hours"] == 2.0
    assert named["cart_per_view"] == 0.5


# --- encoding ----------------------------------------------------------------------------------
events_strategy = st.lists(
    st.builds(
        event,
        kind=st.sampled_from(ev.EVENT_TYPES),
        t=st.integers(min_value=T0, max_value=T0 + 90 * DAY_MS),
        cat=st.one_of(st.none(), st.text(min_size=1, max_size=8)),
        price=st.one_of(st.none(), st.integers(min_value=0, max_value=10**12)),
        currency=st.sampled_from(["USD", "EUR"]),
        qty=st.integers(min_value=1, max_value=100),
    ),
    max_size=60,
)


@given(events_strategy)
def test_encoding_round_trips_any_profile(events: list[Event]) -> None:
    p = Profile()
    for e in events:
        apply_event(p, e, P)
    data = encode_profile(p)
    assert data[0] == 1  # format version byte
    assert decode_profile(data) == p
    # folding after a round trip equals folding without one (the job round-trips every event)
    q = Profile()
    for e in events:
        q = decode_profile(encode_profile(apply_event(q, e, P)))
    assert q == p


def test_heavy_profile_stays_small() -> None:
    p = Profile()
    for i in range(5000):
        apply_event(p, event(t=T0 + i * 1000, cat=f"cat{i}"), P)
    assert len(encode_profile(p)) <= 2048


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty"),
        (b"\x09rest", "unknown profile format version 9"),
        (b"\x01\x00\x00", "corrupt"),
        (encode_profile(Profile()) + b"\x00", "corrupt"),
        (struct.pack("<BQqq6IqIdH", 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, math.nan, 0), "corrupt"),
    ],
)
def test_decode_rejects_corrupt_state(data: bytes, match: str) -> None:
    with pytest.raises(ProfileEncodingError, match=match):
        decode_profile(data)
