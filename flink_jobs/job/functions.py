"""Thin Flink adapters around the pure `udfs` code: the keyed operator that decodes and validates
each message and updates the user's profile.

They move state, timers and outputs between Flink and `udfs.engine.ProfileEngine` (as
`udfs.host.MemoryHost` does in memory); all logic lives in `udfs`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pyflink.common import Row, RowKind
from pyflink.common.typeinfo import Types
from pyflink.datastream import KeyedProcessFunction, OutputTag, RuntimeContext
from pyflink.datastream.state import ValueStateDescriptor

from flink_jobs.io.registry import Candidate, RegistryPoller
from udfs.cache import DEFAULT_CAPACITY, ProfileCache
from udfs.engine import ProfileEngine, Step, StepOutcome
from udfs.events import Event, InvalidEvent, Reason, decode_event
from udfs.host import beyond_final_watermark, tune_gc
from udfs.params import ProfileParams
from udfs.profile import Profile
from udfs.pseudonym import Pseudonymiser, load_key
from udfs.rows import DEAD_LETTER_COLUMNS, PROFILE_COLUMNS, dead_letter_row
from udfs.scoring import Scorer


def _bytes() -> Any:
    return Types.PRIMITIVE_ARRAY(Types.BYTE())


# Column kind (udfs.rows) -> (its PyFlink type in the job's rows, its SQL type in the JDBC table,
# its SQL type as the rows carry it). JSON text travels as UTF-8 bytes; the sink casts it.
COLUMN_KINDS: dict[str, tuple[Callable[[], Any], str, str]] = {
    "string": (Types.STRING, "STRING", "STRING"),
    "bigint": (Types.LONG, "BIGINT", "BIGINT"),
    "int": (Types.INT, "INT", "INT"),
    "double": (Types.DOUBLE, "DOUBLE", "DOUBLE"),
    "boolean": (Types.BOOLEAN, "BOOLEAN", "BOOLEAN"),
    "json": (_bytes, "STRING", "BYTES"),
    "bytes": (_bytes, "BYTES", "BYTES"),
}
RECORD_SKEW_MS = 60_000  # record timestamp vs event_time beyond this is counted (contract breach)
SCORE_SAMPLE_EVERY = 64  # time one scoring call in this many


def row_type(columns: tuple[tuple[str, str], ...]) -> Any:
    return Types.ROW_NAMED([n for n, _ in columns], [COLUMN_KINDS[k][0]() for _, k in columns])


# What the source delivers: the Kafka record key as text (the user_id, by contract) and the value.
SOURCE_ROW_TYPE = Types.ROW_NAMED(
    ["user_key", "event"], [Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE())]
)
PROFILE_ROW_TYPE = row_type(PROFILE_COLUMNS)
DEAD_LETTER_ROW_TYPE = row_type(DEAD_LETTER_COLUMNS)
DEAD_LETTERS = OutputTag("dead-letters", DEAD_LETTER_ROW_TYPE)


def _now_ms() -> int:
    return int(time.time() * 1000)


def apply_step(step: Step, key: str, state: Any, cache: ProfileCache, ctx: Any) -> None:
    """What a step asks of Flink: the key's ValueState, the write-through cache and the
    event-time timer service (rows are the caller's). `udfs.host.MemoryHost.apply` is the same
    in memory."""
    if step.clear or step.discard:
        if step.clear:
            state.clear()
        cache.drop(key)
    elif step.state is not None:
        state.update(step.state)
        if step.profile is not None:
            cache.put(key, step.profile)
    if step.timer_delete or step.timer_register:
        timers = ctx.timer_service()
        if step.timer_delete:
            timers.delete_event_time_timer(step.timer_delete)
        if step.timer_register:
            timers.register_event_time_timer(step.timer_register)


class DecodingFunction(KeyedProcessFunction):  # type: ignore[misc]
    """Keyed by the Kafka record key: decodes and validates each message (the contract check of
    `udfs.events`) and checks that the key is the event's user_id; every message that fails goes
    to the DEAD_LETTERS side output with its reason. Subclasses get the valid events.

    Decoding here, not in a operator of its own, keeps Python out of the source task (see
    flink_jobs/job/pipeline.py)."""

    def __init__(self, topic: str) -> None:
        self.topic = topic

    def open(self, runtime_context: RuntimeContext) -> None:
        # Valid events are counted by Flink's own numRecordsIn; a per-event Python counter call
        # costs several microseconds in thread mode.
        group = runtime_context.get_metrics_group()
        self.invalid = group.counter("events_dead_lettered")
        # Watermarks come from Kafka record timestamps; the contract says they equal event_time.
        self.skewed = group.counter("record_timestamp_skewed")

    def process_element(self, value: bytes, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        now_ms = _now_ms()
        try:
            event = decode_event(value, now_ms)
        except InvalidEvent as exc:
            self.invalid.inc()
            yield (
                DEAD_LETTERS,
                Row(
                    *dead_letter_row(
                        value,
                        exc.reason.value,
                        exc.detail,
                        self.topic,
                        now_ms,
                        exc.user_id,
                        exc.event_time_ms,
                    )
                ),
            )
            return
        key = ctx.get_current_key()
        if key != event.user_id:
            self.invalid.inc()
            yield (
                DEAD_LETTERS,
                Row(
                    *dead_letter_row(
                        value,
                        Reason.KEY_MISMATCH.value,
                        f"the record key ({len(key.encode('utf-8'))} bytes) is not the event's "
                        "user_id: producers key each event by its user_id (UTF-8)",
                        self.topic,
                        now_ms,
                        event.user_id,
                        event.event_time_ms,
                    )
                ),
            )
            return
        record_ts = ctx.timestamp()
        if record_ts is not None and abs(record_ts - event.event_time_ms) > RECORD_SKEW_MS:
            self.skewed.inc()
        yield from self.process_event(event, key, now_ms, ctx)

    def process_event(
        self, event: Event, key: str, now_ms: int, ctx: KeyedProcessFunction.Context
    ) -> Iterator[Any]:
        """A valid event of the current key (`key` is its user_id)."""
        return iter(())


class _Timed:
    """Calls `fn`, timing one call in SCORE_SAMPLE_EVERY into two Flink counters
    (`<name>_sampled_ns` / `<name>_samples` is the in-job cost of one call: `scoring` for the
    score, `explain` for its reasons). Counters, not a gauge: a Python gauge is read from a Java
    metrics thread, which blocks the task in thread mode."""

    def __init__(self, fn: Callable[[Any], Any], group: Any, name: str) -> None:
        self.fn = fn
        self.calls = 0
        self.sampled_ns = group.counter(f"{name}_sampled_ns")
        self.samples = group.counter(f"{name}_samples")

    def __call__(self, features: Any) -> Any:
        self.calls += 1
        if self.calls % SCORE_SAMPLE_EVERY:
            return self.fn(features)
        start = time.perf_counter_ns()
        out = self.fn(features)
        self.sampled_ns.inc(time.perf_counter_ns() - start)
        self.samples.inc()
        return out


class UpdateProfile(DecodingFunction):
    """Keeps each user's whole profile in one ValueState (versioned bytes, see udfs.codec),
    folds every event into it, scores it, and emits the profile row; one lazy event-time timer
    per user drives inactivity (at risk, dormant, expired: state deleted).

    Decoded profiles are kept in a write-through cache (`udfs.cache`): this instance is the only
    writer of its keys' state, and a restore or rescale starts a new instance with an empty
    cache, so a cached profile is exactly what reading the state would give.

    The model: `model_dir` at start; with `registry_dsn` (no password: it comes from the
    worker's environment, see flink_jobs.io.registry) the instance polls the model registry every
    `model_poll_interval_ms` of wall clock, on the first event or timer after that, and switches
    to a newer checked model (`switch_model`) before scoring it."""

    def __init__(
        self,
        model_dir: Path,
        params: ProfileParams,
        topic: str,
        max_out_of_orderness_ms: int,
        pseudonym_key_file: Path | None,
        cache_entries: int = DEFAULT_CAPACITY,
        registry_dsn: str | None = None,
        model_poll_interval_ms: int = 0,
    ) -> None:
        super().__init__(topic)
        self.model_dir = str(model_dir)
        self.params = params
        self.max_out_of_orderness_ms = max_out_of_orderness_ms
        # Where the worker reads the pseudonym key (None: the environment): the key itself is
        # never part of the job (see udfs.pseudonym).
        self.pseudonym_key_file = str(pseudonym_key_file) if pseudonym_key_file else None
        self.cache_entries = cache_entries
        self.registry_dsn = registry_dsn
        self.model_poll_interval_ms = model_poll_interval_ms

    def open(self, runtime_context: RuntimeContext) -> None:
        super().open(runtime_context)
        self.state = runtime_context.get_state(
            ValueStateDescriptor("profile", Types.PICKLED_BYTE_ARRAY())
        )
        group = runtime_context.get_metrics_group()
        self.scorer = Scorer(self.model_dir)
        self.timed_score = _Timed(self.scorer.score, group, "scoring")
        self.timed_explain = _Timed(self.scorer.explain, group, "explain")
        self.engine = ProfileEngine(
            self.params,
            self.timed_score,
            self.scorer.version,
            Pseudonymiser(load_key(self.pseudonym_key_file)),
            explain=self.timed_explain,
        )
        self.registry = (
            RegistryPoller(
                self.registry_dsn,
                self.model_poll_interval_ms,
                Path(self.model_dir),
                self.scorer.version,
            )
            if self.registry_dsn and self.model_poll_interval_ms > 0
            else None
        )
        self.cache = ProfileCache(self.cache_entries)
        tune_gc()
        self.erased = group.counter("users_erased")
        self.late = group.counter("events_late")
        self.failed = group.counter("events_failed")  # dead-lettered as processing_error
        self.duplicates = group.counter("events_duplicate")
        self.expired = group.counter("profiles_expired")
        # Largest event time this subtask has folded: where event time really stands when a
        # bounded input ends with Flink's final MAX watermark.
        self.max_event_ms = 0

    def close(self) -> None:
        if self.registry is not None:
            self.registry.close()
        self.scorer.close()

    def poll_registry(self, now_ms: int) -> None:
        """Ask the registry for a newer model (when due) and switch to it."""
        registry = self.registry
        if registry is not None and registry.due(now_ms):
            candidate: Candidate | None = registry.poll(now_ms)
            if candidate is not None:
                self.switch_model(candidate.scorer)
                registry.switched(candidate)

    def switch_model(self, scorer: Scorer) -> None:
        """The one place the serving model changes: the next row is scored and explained by
        `scorer` and names its version."""
        old = self.scorer
        self.scorer = scorer
        self.timed_score.fn = scorer.score
        self.timed_explain.fn = scorer.explain
        self.engine.use_model(self.timed_score, scorer.version, self.timed_explain)
        old.close()

    def _profile(self, key: str) -> Profile | None:
        cached = self.cache.get(key)
        return cached if cached is not None else self.engine.load(self.state.value())

    def process_event(
        self, event: Event, key: str, now_ms: int, ctx: KeyedProcessFunction.Context
    ) -> Iterator[Any]:
        self.max_event_ms = max(self.max_event_ms, event.event_time_ms)
        self.poll_registry(now_ms)
        step = self.engine.on_event(self._profile(key), event, self.topic, now_ms)
        if step.dead_letter is not None:
            (self.failed if step.outcome is StepOutcome.FAILED else self.late).inc()
            # A failed step discards the cached profile, which the fold may have half-updated.
            apply_step(step, key, self.state, self.cache, ctx)
            yield DEAD_LETTERS, Row(*step.dead_letter)
            return
        if step.outcome is StepOutcome.DUPLICATE:
            self.duplicates.inc()
            return
        yield from self._apply(key, step, ctx)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        watermark = ctx.timer_service().current_watermark()
        if beyond_final_watermark(
            timestamp, watermark, self.max_event_ms, self.max_out_of_orderness_ms
        ):
            # End of a bounded input: Flink fires every timer, but event time only reached the
            # watermark the data implies (newest event minus the allowed out-of-orderness).
            return
        key = ctx.get_current_key()
        self.poll_registry(_now_ms())
        step = self.engine.on_timer(self._profile(key), key, timestamp)
        if step.outcome is StepOutcome.EXPIRED:
            self.expired.inc()
        yield from self._apply(key, step, ctx)

    def _apply(self, key: str, step: Step, ctx: Any) -> Iterator[Row]:
        if step.erase:
            self.erased.inc()
            # Deleting the row deletes its history and dead letters too (a database trigger).
            row = Row(key, *([None] * (len(PROFILE_COLUMNS) - 1)))
            row.set_row_kind(RowKind.DELETE)
            yield row
        apply_step(step, key, self.state, self.cache, ctx)
        if step.row is not None:
            row = Row(*step.row)
            row.set_row_kind(RowKind.UPDATE_AFTER)
            yield row
