"""The shopper profile: the state the job keeps for one user (`Profile`) and what its fields mean.

The stream job keeps one profile per user, encoded (udfs.codec), in a Flink ValueState (RocksDB);
events are folded into it and inactivity moves it on (udfs.fold); features read it
(udfs.features). Its bounded summaries are in udfs.sketches. Nothing here knows Flink.

Decayed quantities are stored *forward-scaled*: an event at time t adds 2^((t - ref_ms) / h), and
the value as of `now` is the stored sum times 2^(-(now - ref_ms) / h). Moving the clock then costs
nothing, late events need no special case, and rankings and shares (which do not depend on the
common factor) are read directly. `ref_ms` moves forward (a rebase) before the factors grow large.
Every float in the state is rounded to float32 when it changes, so the state is exactly what its
encoding stores: folding with or without a round trip through bytes gives identical profiles.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final

from udfs.events import ADD_TO_CART, EVENT_TYPES, PURCHASE, VIEW
from udfs.params import DAY_MS, HOUR_MS
from udfs.sketches import Preferences, hll_estimate

N_TYPES: Final = 6  # `counts` and the rings have one field per event type
assert len(EVENT_TYPES) == N_TYPES

# Half-lives of the forward-scaled values (activity's is `ProfileParams.activity_half_life_ms`).
DECAY_TYPES: Final = (VIEW, ADD_TO_CART, PURCHASE)
DECAY_HALF_LIVES_MS: Final = (HOUR_MS, DAY_MS, 7 * DAY_MS)
PREFERENCE_HALF_LIFE_MS: Final = 7 * DAY_MS
HOUR_HIST_HALF_LIFE_MS: Final = 30 * DAY_MS


class Inactivity(enum.IntEnum):
    ACTIVE = 0
    AT_RISK = 1
    DORMANT = 2


@dataclass(slots=True)
class Profile:
    """One shopper's state. Feature definitions are in docs/features.md."""

    epoch_ms: int = 0  # event time of the first event of this state's life (fixed)
    version: int = 0  # updates: folded events plus inactivity transitions; orders PG rows
    first_ms: int = 0
    last_ms: int = 0
    counts: list[int] = field(default_factory=lambda: [0] * N_TYPES)
    spend_micros: int = 0
    priced_purchases: int = 0  # purchases priced in the reporting currency
    other_purchases: int = 0  # purchases without a price or in another currency
    last_purchase_ms: int = 0  # 0 = never
    # rings: bucket index -> counts by type (+ spend micros in the daily ring)
    ring_short: dict[int, list[int]] = field(default_factory=dict)
    ring_mid: dict[int, list[int]] = field(default_factory=dict)
    ring_day: dict[int, list[int]] = field(default_factory=dict)
    retired_active_days: int = 0  # active days that fell out of the daily ring
    ref_ms: int = 0  # reference time of the forward-scaled values below
    activity: float = 0.0  # all events, activity_half_life_ms
    decay: list[float] = field(default_factory=lambda: [0.0] * 9)  # DECAY_TYPES x HALF_LIVES
    hour_hist: list[float] = field(default_factory=lambda: [0.0] * 24)
    categories: Preferences = field(default_factory=Preferences)
    brands: Preferences = field(default_factory=Preferences)
    distinct_exact: list[int] = field(default_factory=list)  # sorted 32-bit hashes, or
    distinct_hll: bytes = b""  # ... HyperLogLog registers past udfs.fold.EXACT_DISTINCT
    recent_viewed: list[tuple[int, str]] = field(default_factory=list)  # (t, item), distinct
    recent_carted: list[tuple[int, str]] = field(default_factory=list)
    pending_carts: list[tuple[int, str]] = field(default_factory=list)  # (cart time, item)
    recent_purchases: list[tuple[int, str]] = field(default_factory=list)  # (time, item)
    abandoned_carts: int = 0
    converted_carts: int = 0
    sessions: list[list[int]] = field(default_factory=list)  # open sessions [start, end, events]
    sessions_closed: int = 0
    sessions_closed_events: int = 0
    sessions_closed_ms: int = 0
    view_price_sum: int = 0  # micros, reporting currency
    view_price_n: int = 0
    buy_price_sum: int = 0
    buy_price_n: int = 0
    recent_ids: list[int] = field(default_factory=list)  # 64-bit event id hashes, oldest first
    inactivity: int = Inactivity.ACTIVE
    timer_ms: int = 0  # the inactivity timer the job has registered (0 = none)
    # score reasons (udfs.engine): the score in millionths when they were computed (-1 = never)
    # and the reasons, flat [feature index in FEATURE_NAMES, contribution in millionths, ...]
    explained_micros: int = -1
    reasons: list[int] = field(default_factory=list)

    # Written out, not generated: the dataclass's generated __init__ is interpreted Python even in
    # the compiled module, and a profile is made for every new user and every state decode
    # (tests/unit/test_native.py checks it against the fields above).
    def __init__(
        self,
        epoch_ms: int = 0,
        version: int = 0,
        first_ms: int = 0,
        last_ms: int = 0,
        counts: list[int] | None = None,
        spend_micros: int = 0,
        priced_purchases: int = 0,
        other_purchases: int = 0,
        last_purchase_ms: int = 0,
        ring_short: dict[int, list[int]] | None = None,
        ring_mid: dict[int, list[int]] | None = None,
        ring_day: dict[int, list[int]] | None = None,
        retired_active_days: int = 0,
        ref_ms: int = 0,
        activity: float = 0.0,
        decay: list[float] | None = None,
        hour_hist: list[float] | None = None,
        categories: Preferences | None = None,
        brands: Preferences | None = None,
        distinct_exact: list[int] | None = None,
        distinct_hll: bytes = b"",
        recent_viewed: list[tuple[int, str]] | None = None,
        recent_carted: list[tuple[int, str]] | None = None,
        pending_carts: list[tuple[int, str]] | None = None,
        recent_purchases: list[tuple[int, str]] | None = None,
        abandoned_carts: int = 0,
        converted_carts: int = 0,
        sessions: list[list[int]] | None = None,
        sessions_closed: int = 0,
        sessions_closed_events: int = 0,
        sessions_closed_ms: int = 0,
        view_price_sum: int = 0,
        view_price_n: int = 0,
        buy_price_sum: int = 0,
        buy_price_n: int = 0,
        recent_ids: list[int] | None = None,
        inactivity: int = Inactivity.ACTIVE,
        timer_ms: int = 0,
        explained_micros: int = -1,
        reasons: list[int] | None = None,
    ) -> None:
        self.epoch_ms = epoch_ms
        self.version = version
        self.first_ms = first_ms
        self.last_ms = last_ms
        self.counts = [0] * N_TYPES if counts is None else counts
        self.spend_micros = spend_micros
        self.priced_purchases = priced_purchases
        self.other_purchases = other_purchases
        self.last_purchase_ms = last_purchase_ms
        self.ring_short = {} if ring_short is None else ring_short
        self.ring_mid = {} if ring_mid is None else ring_mid
        self.ring_day = {} if ring_day is None else ring_day
        self.retired_active_days = retired_active_days
        self.ref_ms = ref_ms
        self.activity = activity
        self.decay = [0.0] * 9 if decay is None else decay
        self.hour_hist = [0.0] * 24 if hour_hist is None else hour_hist
        self.categories = Preferences() if categories is None else categories
        self.brands = Preferences() if brands is None else brands
        self.distinct_exact = [] if distinct_exact is None else distinct_exact
        self.distinct_hll = distinct_hll
        self.recent_viewed = [] if recent_viewed is None else recent_viewed
        self.recent_carted = [] if recent_carted is None else recent_carted
        self.pending_carts = [] if pending_carts is None else pending_carts
        self.recent_purchases = [] if recent_purchases is None else recent_purchases
        self.abandoned_carts = abandoned_carts
        self.converted_carts = converted_carts
        self.sessions = [] if sessions is None else sessions
        self.sessions_closed = sessions_closed
        self.sessions_closed_events = sessions_closed_events
        self.sessions_closed_ms = sessions_closed_ms
        self.view_price_sum = view_price_sum
        self.view_price_n = view_price_n
        self.buy_price_sum = buy_price_sum
        self.buy_price_n = buy_price_n
        self.recent_ids = [] if recent_ids is None else recent_ids
        self.inactivity = inactivity
        self.timer_ms = timer_ms
        self.explained_micros = explained_micros
        self.reasons = [] if reasons is None else reasons

    @property
    def event_count(self) -> int:
        return sum(self.counts)

    @property
    def distinct_categories(self) -> int:
        if not self.distinct_hll:
            return len(self.distinct_exact)
        return hll_estimate(self.distinct_hll)

    def decayed(self, value: float, half_life_ms: int, now_ms: int) -> float:
        """A forward-scaled value as of `now_ms`."""
        return value * float(2.0 ** (-(now_ms - self.ref_ms) / half_life_ms))
