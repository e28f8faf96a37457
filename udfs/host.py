"""The engine driven the way the job drives it, in memory: a dict for state, a table for the
event-time timers (at most one per key), and optionally the job's write-through profile cache.

The consistency checker, the benchmark's plain-Python loop and the tests use it; the Flink adapter
(flink_jobs/job/functions.py) does the same moves with Flink's state and timer service. Both follow
the rule for where event time stands when a bounded input ends (`final_watermark`).
"""

from __future__ import annotations

import gc
import heapq
from collections.abc import Iterator

from udfs.cache import ProfileCache
from udfs.engine import ProfileEngine, Step
from udfs.events import Event
from udfs.profile import Profile

# The profile step allocates many short-lived containers per event while the write-through cache
# keeps a large, long-lived graph of them: with CPython's defaults (a young collection every 700
# allocations, frequent scans of the old generations) the collector cost 10-20 % of the step.
# In the job it finds no garbage at all (the profiles hold no cycles): a middle-generation pass
# rescans every profile object that arrived since the last one (~250 ms with 50,000 cached
# profiles, a pause in the rows' freshness) for nothing, so it runs after 1,000 young passes
# rather than 20; cycles (none seen) are still collected, only later (docs/performance.md).
GC_THRESHOLDS = (50_000, 1_000, 100)
# Flink's watermark at the end of a bounded input (Long.MAX_VALUE): every timer fires.
MAX_WATERMARK = 2**63 - 1


def final_watermark(max_event_ms: int, max_out_of_orderness_ms: int) -> int:
    """The last watermark a bounded input's data implies (Flink's bounded-out-of-orderness
    strategy): the newest event time, minus the allowed out-of-orderness, minus 1. Event time
    never gets further; Flink's final MAX_WATERMARK after it is no event time."""
    return max_event_ms - max_out_of_orderness_ms - 1


def beyond_final_watermark(
    timestamp: int, watermark: int, max_event_ms: int, max_out_of_orderness_ms: int
) -> bool:
    """Whether a timer firing at `timestamp` under `watermark` is one Flink fires only because a
    bounded input ended (the MAX_WATERMARK), at an event time the data never reached: the job
    skips it, as the offline recomputation never fires it."""
    return watermark >= MAX_WATERMARK and timestamp > final_watermark(
        max_event_ms, max_out_of_orderness_ms
    )


def tune_gc() -> None:
    """Collect less often (process-wide; the job's TaskManager and the benchmark call this)."""
    gc.set_threshold(*GC_THRESHOLDS)


class MemoryHost:
    def __init__(self, engine: ProfileEngine, cache: ProfileCache | None = None) -> None:
        self.engine = engine
        self.cache = cache
        self.states: dict[str, bytes] = {}
        self.timers: dict[str, int] = {}  # key -> its registered event-time timer
        self._queue: list[tuple[int, str]] = []  # (time, key); may hold deleted timers

    def copy(self) -> MemoryHost:
        """An independent host with the same state and timers (and no cache: cached profiles
        are mutable and would be shared)."""
        other = MemoryHost(self.engine)
        other.states = dict(self.states)
        other.timers = dict(self.timers)
        other._queue = list(self._queue)
        return other

    def _profile(self, key: str) -> Profile | None:
        if self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None:
                return cached
        return self.engine.load(self.states.get(key))

    def on_event(self, event: Event, topic: str, now_ms: int) -> Step:
        step = self.engine.on_event(self._profile(event.user_id), event, topic, now_ms)
        self.apply(event.user_id, step)
        return step

    def fire(self, watermark: int) -> Iterator[tuple[str, Step]]:
        """Fire every timer at or before `watermark`, earliest first, as Flink does when the
        watermark passes them (timers they register at or before it fire too)."""
        queue = self._queue
        while queue and queue[0][0] <= watermark:
            t, key = heapq.heappop(queue)
            if self.timers.get(key) != t:
                continue  # deleted or replaced
            del self.timers[key]
            step = self.engine.on_timer(self._profile(key), key, t)
            self.apply(key, step)
            yield key, step

    def apply(self, key: str, step: Step) -> None:
        """What the adapter does with a step: state, cache, timers (rows are the caller's)."""
        if step.clear or step.discard:
            if step.clear:
                self.states.pop(key, None)
            if self.cache is not None:
                self.cache.drop(key)
        elif step.state is not None:
            self.states[key] = step.state
            if self.cache is not None and step.profile is not None:
                self.cache.put(key, step.profile)
        if step.timer_delete and self.timers.get(key) == step.timer_delete:
            del self.timers[key]
        if step.timer_register:
            if key in self.timers:
                raise AssertionError(f"{key} would hold two timers: the engine keeps one per key")
            self.timers[key] = step.timer_register
            heapq.heappush(self._queue, (step.timer_register, key))
