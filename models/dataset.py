"""Point-in-time training examples from an event log, through the stream job's own code.

Events are replayed in log order through `udfs.fold.fold` (exactly what the job does per
event). Two ways to take examples:

- `cutoff` (the default): one example per user per period at a fixed cut-off — local midnight of
  the data's time zone for the daily model (`period_ms` = one day, `tz_offset_hours`), every
  `period_ms` for a short-horizon model. The features are the profile's as of the cut-off,
  computed only from events before it; every user seen before the cut-off gets an example, so
  heavy users do not dominate and consecutive examples of a user are a period apart.
- `event`: one randomly sampled event per user and period (the per-event view the job scores):
  the features right after that event.

The label is 1 when the same user has a PURCHASE with event time in (t, t + horizon], t being
the cut-off (or the sampled event's time). Examples whose label window runs past the end of the
log are dropped: their label is not observed.
"""

from __future__ import annotations

import bisect
import time
import zlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from udfs.events import PURCHASE, Event, InvalidEvent, decode_event
from udfs.features import FEATURE_NAMES, features_and_vector
from udfs.fold import Outcome, fold
from udfs.params import DAY_MS, HOUR_MS, ProfileParams
from udfs.profile import Profile

Array = np.ndarray[Any, Any]
MODES = ("cutoff", "event")


@dataclass(frozen=True)
class ExampleSpec:
    """How examples are taken: the label horizon, the period between cut-offs and its time zone."""

    horizon_ms: int = DAY_MS
    period_ms: int = DAY_MS
    tz_offset_hours: float = 8.0  # Taobao's data is Beijing time; midnight there is the cut-off
    mode: str = "cutoff"
    seed: int = 7

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"example mode {self.mode!r} is not one of {MODES}")
        if self.horizon_ms <= 0 or self.period_ms <= 0:
            raise ValueError("horizon and period must be positive")
        if not -14 <= self.tz_offset_hours <= 14:
            raise ValueError(f"tz_offset_hours {self.tz_offset_hours} is not a UTC offset")

    @property
    def offset_ms(self) -> int:
        return round(self.tz_offset_hours * HOUR_MS)

    def period_of(self, t_ms: int) -> int:
        """The index of the local period holding t (periods start at local cut-offs)."""
        return (t_ms + self.offset_ms) // self.period_ms

    def cutoff(self, period: int) -> int:
        """Event time (UTC ms) of the cut-off that starts `period`."""
        return period * self.period_ms - self.offset_ms

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "horizon_hours": self.horizon_ms / HOUR_MS,
            "period_hours": self.period_ms / HOUR_MS,
            "tz_offset_hours": self.tz_offset_hours,
            "seed": self.seed,
        }


@dataclass
class Examples:
    x: Array  # (n, len(FEATURE_NAMES)) float64, NaN = missing: every feature the job computes
    y: Array  # (n,) 0/1
    t: Array  # (n,) snapshot time (the cut-off, or the sampled event's time), ms
    period: Array  # (n,) index of the example's period: the unit of the rolling origin
    users: Array  # (n,) user ids
    events_used: int
    messages_rejected: int
    time_range_ms: tuple[int, int]
    spec: ExampleSpec = field(default_factory=ExampleSpec)


def decode_all(messages: Iterable[bytes]) -> tuple[list[Event], int]:
    now_ms = int(time.time() * 1000)
    events, rejected = [], 0
    for raw in messages:
        try:
            events.append(decode_event(raw, now_ms))
        except InvalidEvent:
            rejected += 1
    return events, rejected


class _Labels:
    def __init__(self, events: list[Event]) -> None:
        self.purchases: dict[str, list[int]] = defaultdict(list)
        for e in events:
            if e.event_type == PURCHASE:
                self.purchases[e.user_id].append(e.event_time_ms)
        for times in self.purchases.values():
            times.sort()

    def label(self, user: str, t: int, horizon_ms: int) -> int:
        bought = self.purchases.get(user, [])
        i = bisect.bisect_right(bought, t)
        return 1 if i < len(bought) and bought[i] <= t + horizon_ms else 0


DENSE_SHARE = 0.05


def first_dense_period(events: list[Event], spec: ExampleSpec) -> int:
    """The first period holding at least DENSE_SHARE of the busiest period's events. Real logs
    carry stray events long before the data really starts (Taobao's sample has a few from
    September in a late-November export); examples start after this period, not in the empty
    months before it."""
    per: dict[int, int] = defaultdict(int)
    for e in events:
        per[spec.period_of(e.event_time_ms)] += 1
    if not per:
        return 0
    busiest = max(per.values())
    return min(p for p, n in per.items() if n >= DENSE_SHARE * busiest)


def build_examples(
    events: list[Event],
    params: ProfileParams,
    spec: ExampleSpec | None = None,
    progress: Any = None,
) -> Examples:
    spec = spec or ExampleSpec()
    labels = _Labels(events)
    end = max((e.event_time_ms for e in events), default=0)
    start = min((e.event_time_ms for e in events), default=0)
    rows: list[tuple[Any, ...]] = []
    out_y: list[int] = []
    out_t: list[int] = []
    out_period: list[int] = []
    out_users: list[str] = []

    def add(user: str, t: int, period: int, vector: tuple[Any, ...]) -> None:
        rows.append(vector)
        out_y.append(labels.label(user, t, spec.horizon_ms))
        out_t.append(t)
        out_period.append(period)
        out_users.append(user)

    profiles: dict[str, Profile] = {}
    iterable = events if progress is None else progress(events)
    first = first_dense_period(events, spec)
    if spec.mode == "cutoff":
        # Cut-offs are taken when the replay's event time first reaches them (the log is replayed
        # in time order; an event older than a cut-off already taken is folded but cannot change
        # that snapshot, as in the stream).
        next_period = first + 1
        for e in iterable:
            while e.event_time_ms >= spec.cutoff(next_period):
                cut = spec.cutoff(next_period)
                if cut + spec.horizon_ms <= end:
                    for user, profile in profiles.items():
                        add(user, cut, next_period, features_and_vector(profile, cut, params)[1])
                next_period += 1
            profiles[e.user_id] = fold(profiles.get(e.user_id), e, params)[0]
    else:
        # one event per user and period, uniformly at random: a reservoir of one per (user,
        # period) with a deterministic generator, so the examples are reproducible
        chosen: dict[tuple[str, int], tuple[int, tuple[Any, ...]]] = {}
        seen: dict[tuple[str, int], int] = defaultdict(int)
        for e in iterable:
            profile, outcome = fold(profiles.get(e.user_id), e, params)
            profiles[e.user_id] = profile
            t = e.event_time_ms
            if outcome is not Outcome.APPLIED or t + spec.horizon_ms > end:
                continue
            if spec.period_of(t) <= first:
                continue
            key = (e.user_id, spec.period_of(t))
            seen[key] += 1
            n = seen[key]
            draw = zlib.crc32(f"{spec.seed}:{e.user_id}:{key[1]}:{n}".encode()) / 2**32
            if n == 1 or draw < 1 / n:
                chosen[key] = (t, features_and_vector(profile, t, params)[1])
        for (user, period), (t, vector) in sorted(chosen.items(), key=lambda kv: kv[1][0]):
            add(user, t, period, vector)
    return Examples(
        x=np.asarray(rows, dtype=np.float64).reshape(len(rows), len(FEATURE_NAMES)),
        y=np.asarray(out_y, dtype=np.int8),
        t=np.asarray(out_t, dtype=np.int64),
        period=np.asarray(out_period, dtype=np.int64),
        users=np.asarray(out_users, dtype=object),
        events_used=len(events),
        messages_rejected=0,
        time_range_ms=(start, end),
        spec=spec,
    )
