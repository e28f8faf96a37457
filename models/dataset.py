"""Point-in-time training examples from an event log, through the stream job's own code.

Events are replayed in log order through `udfs.profile.fold` (exactly what the job does per
event); after each folded event we take a snapshot: the model features as of that event's time,
computed only from events folded so far. The label is 1 when the same user has a PURCHASE with
event time in (t, t + horizon]. Snapshots whose horizon runs past the end of the log are dropped
(their label is not observable).
"""

from __future__ import annotations

import bisect
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from udfs.events import PURCHASE, Event, InvalidEvent, decode_event
from udfs.features import FEATURE_NAMES, compute_features, feature_vector
from udfs.profile import DAY_MS, Outcome, Profile, ProfileParams, fold

Array = np.ndarray[Any, Any]


@dataclass
class Examples:
    x: Array  # (n, len(FEATURE_NAMES)) float64, NaN = missing
    y: Array  # (n,) 0/1
    t: Array  # (n,) snapshot event time, ms
    users: Array  # (n,) user ids
    events_used: int
    messages_rejected: int
    time_range_ms: tuple[int, int]


def decode_all(messages: Iterable[bytes]) -> tuple[list[Event], int]:
    now_ms = int(time.time() * 1000)
    events, rejected = [], 0
    for raw in messages:
        try:
            events.append(decode_event(raw, now_ms))
        except InvalidEvent:
            rejected += 1
    return events, rejected


def build_examples(
    events: list[Event], params: ProfileParams, horizon_ms: int = DAY_MS, progress: Any = None
) -> Examples:
    purchases: dict[str, list[int]] = defaultdict(list)
    for e in events:
        if e.event_type == PURCHASE:
            purchases[e.user_id].append(e.event_time_ms)
    for times in purchases.values():
        times.sort()
    end = max((e.event_time_ms for e in events), default=0)
    start = min((e.event_time_ms for e in events), default=0)
    profiles: dict[str, Profile] = {}
    rows: list[tuple[float, ...]] = []
    labels: list[int] = []
    times_out: list[int] = []
    users: list[str] = []
    for e in events if progress is None else progress(events):
        profile, outcome = fold(profiles.get(e.user_id), e, params)
        profiles[e.user_id] = profile
        if outcome is not Outcome.APPLIED or e.event_time_ms + horizon_ms > end:
            continue
        t = e.event_time_ms
        bought = purchases.get(e.user_id, [])
        i = bisect.bisect_right(bought, t)
        labels.append(1 if i < len(bought) and bought[i] <= t + horizon_ms else 0)
        rows.append(feature_vector(compute_features(profile, t, params)))
        times_out.append(t)
        users.append(e.user_id)
    return Examples(
        x=np.asarray(rows, dtype=np.float64).reshape(len(rows), len(FEATURE_NAMES)),
        y=np.asarray(labels, dtype=np.int8),
        t=np.asarray(times_out, dtype=np.int64),
        users=np.asarray(users, dtype=object),
        events_used=len(events),
        messages_rejected=0,
        time_range_ms=(start, end),
    )
