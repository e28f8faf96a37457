"""Profile maths, time semantics and the versioned state encoding (JVM-free)."""

from __future__ import annotations

import math
import random
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.shared_data import shared_file
from udfs import events as ev
from udfs.codec import ProfileEncodingError, decode_profile, encode_profile
from udfs.events import Event, validate_message
from udfs.features import compute_features
from udfs.fold import (
    Outcome,
    Transition,
    apply_event,
    catch_up,
    fold,
    inactivity_transition,
    next_timer_ms,
    replay,
)
from udfs.params import DAY_MS, HOUR_MS, MINUTE_MS, ProfileParams
from udfs.profile import Inactivity, Profile
from udfs.sketches import NAME_MARGIN
from udfs.sources import SyntheticSpec, read_rees46, read_taobao, synthetic_events

P = ProfileParams()
T0 = 1_735_689_600_000  # 2025-01-01T00:00:00Z
_ids = iter(range(10**9))


def event(
    kind: int = ev.VIEW,
    t: int = T0,
    user: str = "u",
    cat: str | None = "c1",
    price: int | None = None,
    currency: str | None = None,
    qty: int = 1,
    item: str | None = "i1",
    brand: str | None = None,
    eid: str | None = None,
) -> Event:
    return Event(
        eid or f"e{next(_ids)}",
        user,
        kind,
        t,
        item,
        cat,
        brand,
        price,
        currency,
        qty,
        None,
        None,
        0,
    )


def folded(events: list[Event], params: ProfileParams = P) -> Profile:
    profile: Profile | None = None
    for e in events:
        profile, _ = fold(profile, e, params)
    assert profile is not None
    return profile


def test_counts_times_and_version() -> None:
    kinds = [
        ev.VIEW,
        ev.VIEW,
        ev.ADD_TO_CART,
        ev.SEARCH,
        ev.FAVORITE,
        ev.REMOVE_FROM_CART,
        ev.PURCHASE,
    ]
    p = folded([event(k, T0 + 10 * i) for i, k in enumerate(kinds)])
    assert p.counts == [2, 1, 1, 1, 1, 1]
    assert (p.version, p.event_count, p.epoch_ms) == (7, 7, T0)
    assert (p.first_ms, p.last_ms) == (T0, T0 + 60)


def test_spend_prices_and_aov_are_exact_in_the_reporting_currency() -> None:
    p = folded(
        [
            event(ev.VIEW, T0, price=10_000_000, currency="USD"),
            event(ev.VIEW, T0 + 1, price=30_000_000, currency="USD"),
            event(ev.PURCHASE, T0 + 2, price=19_990_000, currency="USD", qty=3),
            event(ev.PURCHASE, T0 + 3, price=10_000_000, currency="EUR"),
            event(ev.PURCHASE, T0 + 4),  # no price
        ]
    )
    assert p.spend_micros == 59_970_000
    assert (p.priced_purchases, p.other_purchases) == (1, 2)
    f = compute_features(p, p.last_ms, P)
    assert f["rfm_spend_life"] == pytest.approx(59.97)
    assert f["rfm_aov"] == pytest.approx(59.97)
    assert f["prc_mean_viewed"] == pytest.approx(20.0)
    assert f["prc_bought_to_viewed"] == pytest.approx(19.99 / 20.0)


def test_sliding_windows_are_bucketed_by_event_time() -> None:
    times = [
        T0 - 40 * DAY_MS,
        T0 - 20 * DAY_MS,
        T0 - 3 * DAY_MS,
        T0 - 3 * HOUR_MS,
        T0 - 30 * MINUTE_MS,
        T0,
    ]
    p = folded([event(ev.ADD_TO_CART, t) for t in times])
    f = compute_features(p, T0, P)
    assert (
        f["cnt_cart_1h"],
        f["cnt_cart_24h"],
        f["cnt_cart_7d"],
        f["cnt_cart_30d"],
        f["cnt_cart_life"],
    ) == (2, 3, 4, 5, 6)
    later = compute_features(p, T0 + 2 * DAY_MS, P)  # windows as of a later time
    assert (later["cnt_cart_1h"], later["cnt_cart_24h"], later["cnt_cart_7d"]) == (0, 0, 4)


def test_decayed_counters_halve_per_half_life() -> None:
    p = folded([event(ev.PURCHASE, T0), event(ev.VIEW, T0 + 7 * DAY_MS)])
    f = compute_features(p, T0 + 7 * DAY_MS, P)
    assert f["dcy_purchase_7d"] == pytest.approx(0.5, rel=1e-6)
    assert f["dcy_purchase_1d"] == pytest.approx(2.0**-7, rel=1e-6)
    assert f["dcy_view_1h"] == pytest.approx(1.0, rel=1e-6)
    assert f["act_score"] == pytest.approx(1 + 2.0**-7, rel=1e-6)
    # reading later decays without touching the state
    assert compute_features(p, T0 + 14 * DAY_MS, P)["dcy_purchase_7d"] == pytest.approx(
        0.25, rel=1e-6
    )


def test_rebasing_keeps_decayed_values() -> None:
    p = folded([event(ev.VIEW, T0 + k * 6 * HOUR_MS) for k in range(40)])  # 10 days: rebases
    assert p.ref_ms > T0
    expected = sum(2.0 ** (-(39 - k) * 6 / 24) for k in range(40))
    assert compute_features(p, p.last_ms, P)["dcy_view_1d"] == pytest.approx(expected, rel=1e-5)


def test_preferences_top_k_share_and_entropy() -> None:
    evs = (
        [event(cat="shoes", brand="acme") for _ in range(6)]
        + [event(cat="bags", brand="zed") for _ in range(3)]
        + [event(cat="hats")]
    )
    f = compute_features(folded(evs), T0, P)
    assert [name for name, _ in f["pref_top_categories"]] == ["shoes", "bags", "hats"]
    assert [name for name, _ in f["pref_top_brands"]] == ["acme", "zed"]
    assert f["pref_top_category_share"] == pytest.approx(0.6, rel=1e-6)
    expected = -sum(p * math.log2(p) for p in (0.6, 0.3, 0.1))
    assert f["pref_category_entropy"] == pytest.approx(expected, rel=1e-5)
    assert f["pref_distinct_categories"] == 3


def test_preferences_stay_bounded_and_keep_names_for_the_top() -> None:
    evs = [event(cat=f"cat{i}") for i in range(100)] + [event(cat="fav") for _ in range(5)]
    p = folded(evs)
    assert len(p.categories.slots) == P.preference_slots
    assert len(p.categories.names) <= P.top_k + NAME_MARGIN
    assert compute_features(p, p.last_ms, P)["pref_top_categories"][0][0] == "fav"


def test_distinct_categories_exact_then_estimated() -> None:
    p = folded([event(cat=f"c{i % 12}") for i in range(60)])
    assert p.distinct_categories == 12
    q = folded([event(cat=f"c{i}") for i in range(400)])
    assert q.distinct_exact == [] and len(q.distinct_hll) == 128
    assert 340 <= q.distinct_categories <= 460  # HyperLogLog, 128 registers: about 9 % error


def test_recent_items_are_the_last_distinct_twenty_newest_first() -> None:
    evs = [event(ev.VIEW, T0 + i, item=f"i{i % 25}") for i in range(60)]
    f = compute_features(folded(evs), T0 + 60, P)
    assert f["rec_viewed_items"] == [f"i{i % 25}" for i in range(59, 39, -1)]


def test_cart_abandonment_and_conversion() -> None:
    evs = [
        event(ev.ADD_TO_CART, T0, item="a"),
        event(ev.ADD_TO_CART, T0 + 1, item="b"),
        event(ev.PURCHASE, T0 + HOUR_MS, item="a"),  # converts a
        event(ev.VIEW, T0 + 2 * DAY_MS),  # b is now older than the window: abandoned
    ]
    f = compute_features(folded(evs), T0 + 2 * DAY_MS, P)
    assert (f["fun_converted_carts"], f["fun_abandoned_carts"]) == (1, 1)
    assert f["fun_cart_abandonment_rate"] == 0.5


def test_sessions_by_thirty_minute_gap() -> None:
    times = [0, 10, 25, 70, 80, 200]  # minutes: sessions [0-25], [70-80], [200]
    p = folded([event(t=T0 + m * MINUTE_MS) for m in times])
    f = compute_features(p, p.last_ms, P)
    assert f["ses_count"] == 3
    assert f["ses_mean_events"] == pytest.approx(2.0)
    assert f["ses_mean_minutes"] == pytest.approx((25 + 10 + 0) / 3)
    assert f["ses_current_depth"] == 1


def test_hour_histogram_and_tenure() -> None:
    evs = [event(t=T0 + d * DAY_MS + 9 * HOUR_MS) for d in range(3)] + [
        event(t=T0 + 3 * DAY_MS + 20 * HOUR_MS)
    ]
    f = compute_features(folded(evs), T0 + 4 * DAY_MS, P)
    assert f["hab_peak_hour"] == 9
    assert f["ten_active_days"] == 4 and f["ten_days"] == pytest.approx(4 - 9 / 24)


# --- time semantics -------------------------------------------------------------------------
def _shuffle_within(events: list[Event], bound_ms: int, seed: int) -> list[Event]:
    """A random arrival order in which no event comes after one more than `bound_ms` newer."""
    rng = random.Random(seed)
    keyed = sorted(events, key=lambda e: e.event_time_ms + rng.uniform(0, bound_ms))
    return keyed


# Once a user has more distinct categories (brands) than preference slots, the Space-Saving
# sketch behind these features depends slightly on arrival order (documented); the rest of the
# profile does not.
SKETCHED = {
    "pref_category_entropy",
    "pref_top_category_share",
    "pref_top_categories",
    "pref_top_brands",
}


def _assert_same(a: Profile, b: Profile) -> None:
    fa = compute_features(a, a.last_ms, P)
    fb = compute_features(b, b.last_ms, P)
    assert fa.keys() == fb.keys()
    for key, va in fa.items():
        vb = fb[key]
        if key in SKETCHED:  # bounded Space-Saving sketch: approximate past its slots
            continue
        if (isinstance(va, float) and not math.isnan(va)) or (
            isinstance(va, list) and va and isinstance(va[0], float)
        ):
            assert vb == pytest.approx(va, rel=1e-5, abs=1e-9), key
        elif isinstance(va, list) and va and isinstance(va[0], list):  # [name, share]
            assert [x[0] for x in va] == [x[0] for x in vb], key
            assert [x[1] for x in va] == pytest.approx([x[1] for x in vb], rel=1e-4), key
        else:
            assert va == vb or (isinstance(va, float) and math.isnan(vb)), key
    assert (a.counts, a.spend_micros, a.first_ms, a.last_ms, a.version) == (
        b.counts,
        b.spend_micros,
        b.first_ms,
        b.last_ms,
        b.version,
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_shuffling_within_the_lateness_bound_gives_the_same_profile(seed: int) -> None:
    spec = SyntheticSpec(events=6000, users=40, seed=seed, days=3)
    events = [validate_message(m, 2**62) for m in synthetic_events(spec)]
    ordered = replay(events, P)
    shuffled = replay(_shuffle_within(events, P.allowed_lateness_ms - 1, seed), P)
    assert ordered.keys() == shuffled.keys()
    for user, profile in ordered.items():
        _assert_same(profile, shuffled[user])


def test_a_duplicate_changes_nothing() -> None:
    evs = [
        event(ev.PURCHASE, T0, price=5_000_000, currency="USD", eid="order-1"),
        event(ev.VIEW, T0 + 5),
    ]
    p = folded(evs)
    before = encode_profile(p)
    assert apply_event(p, evs[0], P) is Outcome.DUPLICATE
    assert encode_profile(p) == before


def test_an_event_later_than_the_allowed_lateness_is_not_folded() -> None:
    p = folded([event(t=T0)])
    before = encode_profile(p)
    late = event(t=T0 - P.allowed_lateness_ms - 1)
    assert apply_event(p, late, P) is Outcome.LATE
    assert encode_profile(p) == before
    assert apply_event(p, event(t=T0 - P.allowed_lateness_ms), P) is Outcome.APPLIED


# --- inactivity --------------------------------------------------------------------------------
def test_inactivity_transitions_at_day_aligned_times() -> None:
    p = folded([event(t=T0 + 5 * HOUR_MS)])
    due = next_timer_ms(p, P)
    assert due == T0 + 15 * DAY_MS  # first midnight after 14 days of silence
    assert inactivity_transition(p, due - 1, P) is Transition.NONE  # 15 d - 5 h of silence
    assert inactivity_transition(p, due, P) is Transition.AT_RISK
    assert p.inactivity == Inactivity.AT_RISK and p.version == 2
    assert next_timer_ms(p, P) == T0 + 31 * DAY_MS
    assert catch_up(p, T0 + 91 * DAY_MS, P) is True  # dormant, then expired
    assert p.inactivity == Inactivity.DORMANT


def test_an_event_after_expiry_starts_a_new_profile() -> None:
    old = folded([event(t=T0), event(ev.PURCHASE, T0 + 1)])
    new, outcome = fold(old, event(t=T0 + 95 * DAY_MS), P)
    assert outcome is Outcome.APPLIED and new is not old
    assert (new.epoch_ms, new.version, new.event_count) == (T0 + 95 * DAY_MS, 1, 1)


def test_activity_resets_inactivity() -> None:
    p = folded([event(t=T0)])
    p, _ = fold(p, event(t=T0 + 20 * DAY_MS), P)  # caught up to at_risk, then active again
    assert p.inactivity == Inactivity.ACTIVE and p.version == 3


def test_params_validate() -> None:
    with pytest.raises(ValueError, match="reporting_currency"):
        ProfileParams(reporting_currency="usd")
    with pytest.raises(ValueError, match="allowed_lateness_ms"):
        ProfileParams(allowed_lateness_ms=2 * HOUR_MS)
    with pytest.raises(ValueError, match="inactivity thresholds"):
        ProfileParams(at_risk_after_ms=40 * DAY_MS)


# --- encoding ----------------------------------------------------------------------------------
events_strategy = st.lists(
    st.builds(
        event,
        kind=st.sampled_from(ev.EVENT_TYPES),
        t=st.integers(min_value=T0, max_value=T0 + 60 * DAY_MS),
        cat=st.one_of(st.none(), st.text(min_size=1, max_size=8)),
        price=st.one_of(st.none(), st.integers(min_value=0, max_value=10**12)),
        currency=st.sampled_from(["USD", "EUR"]),
        qty=st.integers(min_value=1, max_value=100),
        item=st.text(min_size=1, max_size=70),
        brand=st.one_of(st.none(), st.text(min_size=1, max_size=8)),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(events_strategy)
def test_encoding_round_trips_and_the_round_trip_changes_nothing(events: list[Event]) -> None:
    p = replay(sorted(events, key=lambda e: e.event_time_ms), P).get("u", Profile())
    data = encode_profile(p)
    assert data[0] == 3  # format version byte
    assert decode_profile(data) == p
    # The job round-trips through bytes on every event; offline replays do not.
    q: Profile | None = None
    for e in sorted(events, key=lambda e: e.event_time_ms):
        q, _ = fold(q, e, P)
        q = decode_profile(encode_profile(q))
    assert q is None or q == p


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.parametrize("reader", ["taobao", "rees46", "synthetic"])
def test_heavy_users_stay_under_two_kilobytes(reader: str) -> None:
    if reader == "taobao":
        msgs = list(read_taobao(shared_file("taobao_userbehavior_head.csv")))
    elif reader == "rees46":
        msgs = list(read_rees46(shared_file("rees46_2019-Oct_head.csv")))
    else:
        msgs = synthetic_events(SyntheticSpec(events=200_000, users=50_000))
    profiles = replay([validate_message(m, 2**62) for m in msgs], P)
    sizes = sorted(len(encode_profile(p)) for p in profiles.values())
    assert sizes[-1] < 2048, f"largest {reader} profile is {sizes[-1]} bytes"


def test_v1_state_from_issue_2_is_upgraded() -> None:
    v1 = struct.pack("<BQqq6IqIdH", 1, 7, T0, T0 + 9, 5, 1, 0, 0, 1, 0, 2_000_000, 0, 1.5, 2)
    v1 += struct.pack("<2I", 11, 22)
    p = decode_profile(v1)
    assert (p.version, p.counts, p.spend_micros, p.distinct_categories) == (
        7,
        [5, 1, 0, 0, 1, 0],
        2_000_000,
        2,
    )


def test_v2_state_reads_as_v3_without_score_reasons_yet() -> None:
    """Format 3 is format 2 plus the score reasons (`explained_micros`, `reasons`); state
    written before issue 10 (format 2) reads back without them, so the next row computes them."""
    p = folded([event(ev.VIEW, T0), event(ev.ADD_TO_CART, T0 + 60_000)])
    p.explained_micros = 123_456
    p.reasons = [3, -51_234, 70, 8_765]
    v3 = encode_profile(p)
    assert v3[0] == 3 and decode_profile(v3) == p
    fields = msgpack.unpackb(v3[1:], raw=False)
    v2 = b"\x02" + msgpack.packb(fields[:-2], use_bin_type=True, use_single_float=True)
    old = decode_profile(v2)
    assert (old.explained_micros, old.reasons) == (-1, [])
    old.explained_micros, old.reasons = p.explained_micros, p.reasons
    assert old == p


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty"),
        (b"\x03\x93\x01\x02\x03", "corrupt v3"),
        (b"\x09rest", "unknown profile format version 9"),
        (b"\x01\x00\x00", "corrupt v1"),
        (b"\x02\x93\x01\x02\x03", "corrupt v2"),
        (b"\x02\xff", "corrupt v2"),
    ],
)
def test_decode_rejects_corrupt_state(data: bytes, match: str) -> None:
    with pytest.raises(ProfileEncodingError, match=match):
        decode_profile(data)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_preference_sketch_is_exact_while_within_its_slots(seed: int) -> None:
    """Users with at most `preference_slots` distinct categories: the sketch is exact, so even
    the preference features are independent of arrival order."""
    rng = random.Random(seed)
    cats = [f"c{i}" for i in range(P.preference_slots)]
    events = [event(t=T0 + i * 1000, cat=rng.choice(cats), user="u") for i in range(500)]
    a = folded(events)
    b = folded(_shuffle_within(events, P.allowed_lateness_ms - 1, seed))
    fa, fb = (compute_features(x, x.last_ms, P) for x in (a, b))
    assert [n for n, _ in fa["pref_top_categories"]] == [n for n, _ in fb["pref_top_categories"]]
    assert fa["pref_category_entropy"] == pytest.approx(fb["pref_category_entropy"], rel=1e-5)
