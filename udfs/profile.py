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
