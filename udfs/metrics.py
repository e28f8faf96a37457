"""The profile operator's metrics, without Flink: what it counts, in plain ints per event, and the
increments it hands Flink's metric group about once a second.

A call into a Flink counter from Python costs microseconds in thread mode (~10 % of the job's
throughput at one call per event), and a Python gauge blocks the task's initialisation (Flink's
metrics thread calls back into the interpreter). So the operator adds to the ints below, and
`OperatorMetrics.flush` turns what changed since the last flush into `(metric, label, amount)`
increments for Flink counters. Values that go up and down (the event-time lag, the model serving)
are counters too, moved by the difference from what was reported: Flink's Prometheus reporter
exports every counter as a Prometheus gauge anyway.

`METRICS` is the one list of what the job exports; `prometheus_name` is the name each gets from
Flink's Prometheus reporter (the operator scope, the group, the name; a label's key is part of
the name, as Flink's key-value metric groups make it). The Grafana dashboard may only use names
the metrics test saw on a running cluster (docker/grafana/).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from udfs.events import Reason

GROUP = "profilestream"  # the operator's metric group: every name below is under it
OPERATOR_SCOPE = "flink_taskmanager_job_task_operator"  # Flink's Prometheus prefix for operators
FLUSH_INTERVAL_MS = 1_000
SAMPLE_EVERY = 64  # time one call in this many (scoring, explanations, cluster assignment)


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # "counter": only goes up; "gauge": a value (a Flink counter moved both ways)
    help: str
    label: str | None = None  # the key of its key-value group: a Prometheus label

    @property
    def prometheus_name(self) -> str:
        key = f"{self.label}_" if self.label else ""
        return f"{OPERATOR_SCOPE}_{GROUP}_{key}{self.name}"


METRICS: tuple[Metric, ...] = (
    Metric("events_folded", "counter", "valid events folded into a profile"),
    Metric(
        "dead_letters",
        "counter",
        "messages written to dead_letter_events, by reason (docs/event-contract.md)",
        label="reason",
    ),
    Metric("events_late", "counter", "valid events too late to fold (dead letters: late_event)"),
    Metric("events_duplicate", "counter", "duplicate events dropped (an event_id seen before)"),
    Metric("events_failed", "counter", "events whose processing raised (processing_error)"),
    Metric("profiles_expired", "counter", "profiles expired by inactivity (state deleted)"),
    Metric("users_erased", "counter", "ERASE events applied (state and row deleted)"),
    Metric(
        "record_timestamp_skewed",
        "counter",
        "events whose Kafka record timestamp is over a minute from their event_time",
    ),
    Metric(
        "profile_rows_sent",
        "counter",
        "profile rows (upserts and erasure deletes) sent to the PostgreSQL sink",
    ),
    Metric("scoring_sampled_ns", "counter", f"time of one scoring call in {SAMPLE_EVERY}, ns"),
    Metric("scoring_samples", "counter", "scoring calls timed"),
    Metric("explain_sampled_ns", "counter", f"time of one explanation in {SAMPLE_EVERY}, ns"),
    Metric("explain_samples", "counter", "explanations timed"),
    Metric(
        "clustering_sampled_ns",
        "counter",
        f"time of one cluster assignment (learned segment) in {SAMPLE_EVERY}, ns",
    ),
    Metric("clustering_samples", "counter", "cluster assignments timed"),
    Metric(
        "event_time_lag_ms",
        "gauge",
        "wall clock minus the newest event time folded, at the last flush (0 before any event)",
    ),
    Metric(
        "serving",
        "gauge",
        "1 for the model version scoring now, 0 for versions served before",
        label="model_version",
    ),
)
BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}
EXPORTED_NAMES: tuple[str, ...] = tuple(m.prometheus_name for m in METRICS)
TIMED_SUFFIXES = ("_sampled_ns", "_samples")  # the two counters of a SampledTimer
# The plain counters: int attributes of OperatorMetrics with the same names.
COUNTERS: tuple[str, ...] = tuple(
    m.name
    for m in METRICS
    if m.kind == "counter" and m.label is None and not m.name.endswith(TIMED_SUFFIXES)
)

Increment = tuple[str, str, int]  # (metric name, label value or "", amount)


class SampledTimer:
    """Calls `fn`, timing one call in `every`: `ns` and `samples` are the sampled calls' total
    time and count (so ns / samples is the in-job cost of one call)."""

    __slots__ = ("calls", "every", "fn", "ns", "samples")

    def __init__(self, fn: Callable[[Any], Any], every: int = SAMPLE_EVERY) -> None:
        self.fn = fn
        self.every = every
        self.calls = 0
        self.ns = 0
        self.samples = 0

    def __call__(self, arg: Any) -> Any:
        self.calls += 1
        if self.calls % self.every:
            return self.fn(arg)
        start = time.perf_counter_ns()
        out = self.fn(arg)
        self.ns += time.perf_counter_ns() - start
        self.samples += 1
        return out


class OperatorMetrics:
    """One operator instance's metrics. The operator adds to the counter attributes (named as in
    `METRICS`) and calls `dead_letter(reason)`. When an element finds the wall clock past
    `next_flush_ms` it calls `flush`, applies the increments to Flink counters and sets a
    processing-time timer at `schedule(now_ms)`, whose `flush` hands over what came in after
    (the input may go quiet). A timer's flush does not reschedule: the first element after the
    timer fired finds a flush due and sets the next timer, so nothing counted waits for more
    input."""

    def __init__(self, flush_interval_ms: int = FLUSH_INTERVAL_MS) -> None:
        self.flush_interval_ms = flush_interval_ms
        self.next_flush_ms = 0
        self.events_folded = 0
        self.events_late = 0
        self.events_duplicate = 0
        self.events_failed = 0
        self.profiles_expired = 0
        self.users_erased = 0
        self.record_timestamp_skewed = 0
        self.profile_rows_sent = 0
        self.dead_letters: dict[str, int] = {}
        self.timers: dict[str, SampledTimer] = {}
        self._reported: dict[tuple[str, str], int] = {}  # gauge series -> value reported
        self._serving: str | None = None

    @staticmethod
    def series() -> list[tuple[str, str]]:
        """Every (metric, label value) series known in advance: registered at start-up so each
        exists, at 0, before its first increment (a model version appears when served)."""
        out = [(m.name, "") for m in METRICS if m.label is None]
        return out + [("dead_letters", reason.value) for reason in Reason]

    def dead_letter(self, reason: str) -> None:
        self.dead_letters[reason] = self.dead_letters.get(reason, 0) + 1

    def timed(self, name: str, fn: Callable[[Any], Any]) -> SampledTimer:
        """`fn` timed into `<name>_sampled_ns` / `<name>_samples`."""
        if f"{name}_samples" not in BY_NAME:
            raise ValueError(f"no metric {name}_samples in udfs.metrics.METRICS")
        timer = self.timers[name] = SampledTimer(fn)
        return timer

    def schedule(self, now_ms: int) -> int:
        """The next flush is due one interval from `now_ms`: that time."""
        self.next_flush_ms = now_ms + self.flush_interval_ms
        return self.next_flush_ms

    def flush(self, now_ms: int, newest_event_ms: int = 0) -> list[Increment]:
        """The increments since the last flush (zeros left out), with the event-time lag against
        `newest_event_ms`, the newest event time folded (0: none yet, no lag)."""
        out: list[Increment] = []
        for name in COUNTERS:
            amount: int = getattr(self, name)
            if amount:
                out.append((name, "", amount))
                setattr(self, name, 0)
        for reason, amount in self.dead_letters.items():
            if amount:
                out.append(("dead_letters", reason, amount))
        self.dead_letters.clear()
        for name, timer in self.timers.items():
            if timer.samples:
                out.append((f"{name}_sampled_ns", "", timer.ns))
                out.append((f"{name}_samples", "", timer.samples))
                timer.ns = timer.samples = 0
        if newest_event_ms:
            out.extend(self._set("event_time_lag_ms", "", now_ms - newest_event_ms))
        return out

    def serve(self, version: str) -> list[Increment]:
        """The model `version` now scores: its `serving` series goes to 1 and the one
        served before to 0."""
        out: list[Increment] = []
        if self._serving is not None and self._serving != version:
            out.extend(self._set("serving", self._serving, 0))
        self._serving = version
        out.extend(self._set("serving", version, 1))
        return out

    def _set(self, name: str, label: str, value: int) -> Iterable[Increment]:
        before = self._reported.get((name, label), 0)
        self._reported[(name, label)] = value
        return [(name, label, value - before)] if value != before else []
