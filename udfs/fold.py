"""Folding events into a profile (`fold`, `apply_event`, `replay`) and the inactivity rules the
job's event-time timers apply (`next_timer_ms`, `inactivity_transition`, `catch_up`). Pure: the
job, the trainer and the consistency checker replay events through the same functions.

Time semantics (docs/features.md states them for users):
- Event time throughout. A profile's clock is `last_ms`, the largest event time folded in.
- An event older than `last_ms - allowed_lateness_ms` is *late*: it is not folded (the job keeps
  it as a dead letter with reason `late_event`). Every feature is a function of the *set* of
  folded events, so any arrival order within the lateness bound gives the same profile (floating
  sums up to rounding).
- A repeated `event_id` among the user's last `dedup_memory` events is a *duplicate* (a producer
  retry) and changes nothing.
- Silence is measured by event-time timers in the job: `at_risk` after 14 days, `dormant` after
  30, and after 90 days the state is deleted and the PostgreSQL row marked expired.

Decayed values are forward-scaled and floats rounded to float32 (see udfs.profile).
"""

from __future__ import annotations

import bisect
import enum
import math
from array import array
from collections.abc import Iterable
from typing import Final

from udfs.events import ADD_TO_CART, PURCHASE, VIEW, Event
from udfs.params import DAY_MS, HOUR_MS, RING_DAY, RING_MID, RING_SHORT, ProfileParams
from udfs.profile import (
    DECAY_HALF_LIVES_MS,
    HOUR_HIST_HALF_LIFE_MS,
    N_TYPES,
    PREFERENCE_HALF_LIFE_MS,
    Inactivity,
    Profile,
)
from udfs.sketches import (
    HLL_REGISTERS,
    MAX_ITEM_CHARS,
    f32,
    f32_cast,
    hash32,
    hash64,
    hll_add,
    insert_recent,
    ring_add,
    ring_trim,
)

REBASE_AFTER_MS: Final = 48 * HOUR_MS  # 48 half-lives of the shortest: far from f32 overflow
EXACT_DISTINCT: Final = 16  # distinct categories are exact up to here, then HyperLogLog


class Outcome(enum.Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    LATE = "late"


def admit(profile: Profile, event: Event, params: ProfileParams) -> tuple[Outcome, int]:
    """Whether `event` would be folded into `profile`: DUPLICATE, LATE or APPLIED, and the hash
    of its event id. Changes nothing."""
    id_hash = hash64(event.event_id)
    if id_hash in profile.recent_ids:
        return Outcome.DUPLICATE, id_hash
    if profile.event_count and event.event_time_ms < profile.last_ms - params.allowed_lateness_ms:
        return Outcome.LATE, id_hash
    return Outcome.APPLIED, id_hash


def apply_event(profile: Profile, event: Event, params: ProfileParams) -> Outcome:
    """Fold one valid event into `profile` (in place) unless it is a duplicate or late (then
    `profile` is left untouched)."""
    outcome, id_hash = admit(profile, event, params)
    if outcome is not Outcome.APPLIED:
        return outcome
    _apply(profile, event, id_hash, params)
    return Outcome.APPLIED


def _apply(profile: Profile, event: Event, id_hash: int, params: ProfileParams) -> None:
    t = event.event_time_ms
    if profile.event_count == 0:
        profile.epoch_ms = profile.first_ms = profile.last_ms = profile.ref_ms = t
    profile.recent_ids.append(id_hash)
    if len(profile.recent_ids) > params.dedup_memory:
        del profile.recent_ids[0]
    _advance_clock(profile, t, params)

    profile.version += 1
    profile.inactivity = Inactivity.ACTIVE
    profile.first_ms = min(profile.first_ms, t)
    kind = event.event_type
    ti = kind - 1
    profile.counts[ti] += 1

    # Money, in the reporting currency: spend and unit prices of purchases, unit prices of views.
    priced = event.price_micros is not None and event.currency == params.reporting_currency
    spend = 0
    if kind == PURCHASE:
        profile.last_purchase_ms = max(profile.last_purchase_ms, t)
        if priced and event.price_micros is not None:
            spend = event.price_micros * event.quantity
            profile.spend_micros += spend
            profile.priced_purchases += 1
            profile.buy_price_sum += event.price_micros
            profile.buy_price_n += 1
        else:
            profile.other_purchases += 1
    elif kind == VIEW and priced and event.price_micros is not None:
        profile.view_price_sum += event.price_micros
        profile.view_price_n += 1

    ring_add(profile.ring_short, t // RING_SHORT[0], ti, 0, N_TYPES)
    ring_add(profile.ring_mid, t // RING_MID[0], ti, 0, N_TYPES)
    ring_add(profile.ring_day, t // RING_DAY[0], ti, spend, N_TYPES + 1)

    # Decayed values, forward-scaled from ref_ms; each rounded to float32 as an array('f')
    # stores it. math.pow is 2.0 ** with the same libm call (compiled, it skips the boxing);
    # rel is at most REBASE_AFTER_MS, so neither overflows.
    rel = t - profile.ref_ms
    hour = (t // HOUR_MS) % 24
    hours = profile.hour_hist
    profile.activity = f32_cast(
        profile.activity + math.pow(2.0, rel / params.activity_half_life_ms)
    )
    hours[hour] = f32_cast(hours[hour] + math.pow(2.0, rel / HOUR_HIST_HALF_LIFE_MS))
    base = 0 if kind == VIEW else 3 if kind == ADD_TO_CART else 6 if kind == PURCHASE else -1
    if base >= 0:
        decay = profile.decay
        decay[base] = f32_cast(decay[base] + math.pow(2.0, rel / HOUR_MS))
        decay[base + 1] = f32_cast(decay[base + 1] + math.pow(2.0, rel / DAY_MS))
        decay[base + 2] = f32_cast(decay[base + 2] + math.pow(2.0, rel / (7 * DAY_MS)))
    weight = math.pow(2.0, rel / PREFERENCE_HALF_LIFE_MS)
    if event.category_id:
        profile.categories.add(event.category_id, weight, params)
        add_distinct(profile, event.category_id)
    if event.brand:
        profile.brands.add(event.brand, weight, params)

    if event.item_id:
        item = event.item_id[:MAX_ITEM_CHARS]
        if kind == VIEW:
            insert_recent(profile.recent_viewed, t, item, params.recent_items)
        elif kind == ADD_TO_CART:
            insert_recent(profile.recent_carted, t, item, params.recent_items)
            _cart(profile, t, item, params)
        elif kind == PURCHASE:
            _purchase(profile, t, item, params)

    _add_to_sessions(profile, t, params)
    _settle(profile, params)


def _advance_clock(profile: Profile, t: int, params: ProfileParams) -> None:
    """Move the clock forward to `t`: trim the rings; rebase the scaled values when due."""
    if t <= profile.last_ms:
        return
    profile.last_ms = t
    ring_trim(profile.ring_short, t // RING_SHORT[0], RING_SHORT[1])
    ring_trim(profile.ring_mid, t // RING_MID[0], RING_MID[1])
    profile.retired_active_days += ring_trim(profile.ring_day, t // RING_DAY[0], RING_DAY[1])
    if t - profile.ref_ms > REBASE_AFTER_MS:
        dt = t - profile.ref_ms
        profile.ref_ms = t
        profile.activity = f32(profile.activity * 2.0 ** (-dt / params.activity_half_life_ms))
        for j, half_life in enumerate(DECAY_HALF_LIVES_MS):
            factor = 2.0 ** (-dt / half_life)
            for base in (0, 3, 6):
                profile.decay[base + j] = f32(profile.decay[base + j] * factor)
        factor = 2.0 ** (-dt / HOUR_HIST_HALF_LIFE_MS)
        profile.hour_hist = array("f", [v * factor for v in profile.hour_hist]).tolist()
        factor = 2.0 ** (-dt / PREFERENCE_HALF_LIFE_MS)
        profile.categories.scale(factor)
        profile.brands.scale(factor)


def add_distinct(profile: Profile, category: str) -> None:
    """Exact (sorted 32-bit hashes) up to EXACT_DISTINCT categories, then HyperLogLog. Every
    category enters the registers through its 32-bit hash, so the registers are a function of
    the set of categories, whatever the order."""
    h = hash32(category)
    if profile.distinct_hll:
        registers = bytearray(profile.distinct_hll)
        hll_add(registers, hash64(str(h)))
        profile.distinct_hll = bytes(registers)
        return
    i = bisect.bisect_left(profile.distinct_exact, h)
    if i < len(profile.distinct_exact) and profile.distinct_exact[i] == h:
        return
    profile.distinct_exact.insert(i, h)
    if len(profile.distinct_exact) > EXACT_DISTINCT:
        registers = bytearray(HLL_REGISTERS)
        for member in profile.distinct_exact:
            hll_add(registers, hash64(str(member)))
        profile.distinct_hll = bytes(registers)
        profile.distinct_exact = []


def _convert(
    others: list[tuple[int, str]], t: int, item: str, window_ms: int, is_cart: bool
) -> bool:
    """Remove the first entry of `others` (purchases for a cart event, pending carts for a
    purchase) that pairs with this event: the same item, bought within `window_ms` of the cart.
    Either may arrive first (allowed-late events)."""
    for i, (t_other, other) in enumerate(others):
        cart_t, buy_t = (t, t_other) if is_cart else (t_other, t)
        if other == item and cart_t <= buy_t <= cart_t + window_ms:
            del others[i]
            return True
    return False


def _keep(entries: list[tuple[int, str]], t: int, item: str, limit: int) -> bool:
    """Keep (t, item) in time order; whether the oldest entry fell off to stay within `limit`."""
    bisect.insort(entries, (t, item))
    if len(entries) > limit:
        entries.pop(0)
        return True
    return False


def _cart(profile: Profile, t: int, item: str, params: ProfileParams) -> None:
    if _convert(profile.recent_purchases, t, item, params.abandonment_window_ms, True):
        profile.converted_carts += 1
    elif _keep(profile.pending_carts, t, item, params.pending_carts):
        profile.abandoned_carts += 1


def _purchase(profile: Profile, t: int, item: str, params: ProfileParams) -> None:
    if _convert(profile.pending_carts, t, item, params.abandonment_window_ms, False):
        profile.converted_carts += 1
    else:
        # Kept for a cart of the same item that may still arrive within the lateness bound.
        _keep(profile.recent_purchases, t, item, params.pending_carts)


def _add_to_sessions(profile: Profile, t: int, params: ProfileParams) -> None:
    """Sessions are the runs of events with gaps of at most session_gap_ms; an event can join,
    start, or bridge open sessions (kept sorted and disjoint, so the sessions it touches are
    consecutive)."""
    gap = params.session_gap_ms
    sessions = profile.sessions
    first = -1
    last = -1
    for i, s in enumerate(sessions):
        if s[0] - gap <= t <= s[1] + gap:
            if first < 0:
                first = i
            last = i
    if first < 0:
        bisect.insort(sessions, [t, t, 1])
        return
    events = 1
    for s in sessions[first : last + 1]:
        events += s[2]
    merged = [min(t, sessions[first][0]), max(t, sessions[last][1]), events]
    sessions[first : last + 1] = [merged]


def _settle(profile: Profile, params: ProfileParams) -> None:
    """Close what no allowed-late event can change any more: old sessions and carts."""
    horizon = profile.last_ms - params.allowed_lateness_ms
    while profile.sessions and profile.sessions[0][1] < horizon - params.session_gap_ms:
        start, end, n = profile.sessions.pop(0)
        profile.sessions_closed += 1
        profile.sessions_closed_events += n
        profile.sessions_closed_ms += end - start
    window = params.abandonment_window_ms
    while profile.pending_carts and profile.pending_carts[0][0] + window < horizon:
        profile.pending_carts.pop(0)
        profile.abandoned_carts += 1
    while profile.recent_purchases and profile.recent_purchases[0][0] < horizon:
        profile.recent_purchases.pop(0)


# ---------------------------------------------------------------------------------------------
# Inactivity: event-time timers in the job call these (it registers `next_timer_ms`).
# ---------------------------------------------------------------------------------------------
class Transition(enum.Enum):
    NONE = "none"
    AT_RISK = "at_risk"
    DORMANT = "dormant"
    EXPIRE = "expire"


def _day_ceil(ms: int) -> int:
    return -(-ms // DAY_MS) * DAY_MS


def settle_order(profile: Profile) -> None:
    """Give a profile that stays in memory after being stored (a write-through cache) the dict
    order decoding its bytes would give it. Floating sums over the preference slots follow that
    order, so the next event computes exactly what it computes on a profile read from state."""
    profile.categories.settle_order()
    profile.brands.settle_order()


def next_timer_ms(profile: Profile, params: ProfileParams) -> int:
    """When the next inactivity transition is due: the first UTC midnight after the silence
    threshold of the next level (day-aligned, so a user has at most one new timer a day)."""
    level = profile.inactivity
    if level == Inactivity.ACTIVE:
        after = params.at_risk_after_ms
    elif level == Inactivity.AT_RISK:
        after = params.dormant_after_ms
    elif level == Inactivity.DORMANT:
        after = params.expire_after_ms
    else:
        raise ValueError(f"inactivity level {level} is not 0, 1 or 2")
    return _day_ceil(profile.last_ms + after)


def inactivity_transition(profile: Profile, now_ms: int, params: ProfileParams) -> Transition:
    """Apply the transition due at or before event time `now_ms`, if any: one level at a time
    (active -> at risk -> dormant -> expired). EXPIRE changes nothing: the caller deletes the
    state."""
    if not profile.event_count or now_ms < next_timer_ms(profile, params):
        return Transition.NONE
    level = Inactivity(profile.inactivity)
    if level == Inactivity.DORMANT:
        return Transition.EXPIRE
    profile.inactivity = level + 1
    profile.version += 1
    return Transition.AT_RISK if level == Inactivity.ACTIVE else Transition.DORMANT


def catch_up(profile: Profile, now_ms: int, params: ProfileParams) -> bool:
    """Apply every inactivity transition due at or before `now_ms`. Returns True when the
    profile has expired (the caller deletes it).

    The job calls this from its timer and, lazily, before folding an event, so the state after
    an event does not depend on whether the watermark fired the timer first."""
    while True:
        transition = inactivity_transition(profile, now_ms, params)
        if transition is Transition.EXPIRE:
            return True
        if transition is Transition.NONE:
            return False


def expires_by(profile: Profile, now_ms: int, params: ProfileParams) -> bool:
    """Whether `catch_up(profile, now_ms)` would expire the profile (silent for the whole
    expiry period: every earlier level is passed on the way). Changes nothing."""
    return bool(profile.event_count) and now_ms >= _day_ceil(
        profile.last_ms + params.expire_after_ms
    )


def fold(profile: Profile | None, event: Event, params: ProfileParams) -> tuple[Profile, Outcome]:
    """The job's per-event step: catch up on inactivity, start a new profile if the old one
    expired, then apply the event. Returns the (possibly new) profile and the outcome.

    A duplicate or late event leaves `profile` exactly as it was (no inactivity catch-up
    either): what is not stored must not change, so a cached profile stays equal to its state."""
    t = event.event_time_ms
    if profile is None or expires_by(profile, t, params):
        profile = Profile()
        _apply(profile, event, hash64(event.event_id), params)
        return profile, Outcome.APPLIED
    outcome, id_hash = admit(profile, event, params)
    if outcome is not Outcome.APPLIED:
        return profile, outcome
    catch_up(profile, t, params)  # transitions due before the event (it cannot expire here)
    _apply(profile, event, id_hash, params)
    return profile, Outcome.APPLIED


def replay(events: Iterable[Event], params: ProfileParams) -> dict[str, Profile]:
    """Fold events (in the given order) into one profile per user, as the job does per event
    (inactivity caught up lazily; transitions still due at the end are not applied)."""
    profiles: dict[str, Profile] = {}
    for event in events:
        profiles[event.user_id], _ = fold(profiles.get(event.user_id), event, params)
    return profiles
