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
from pyflink.datastream import KeyedProcessFunction, OutputTag, RuntimeContext, TimeDomain
from pyflink.datastream.state import ValueStateDescriptor

from flink_jobs.io.registry import Candidate, RegistryPoller
from udfs.cache import DEFAULT_CAPACITY, ProfileCache
from udfs.clusters import Segmentation, load_segmentation
from udfs.engine import ProfileEngine, Step, StepOutcome
from udfs.events import Event, InvalidEvent, Reason, decode_event
from udfs.host import beyond_final_watermark, tune_gc
from udfs.metrics import BY_NAME, GROUP, Increment, OperatorMetrics
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
        # Counted in plain ints, handed to Flink counters about once a second (udfs.metrics).
        self.metrics = OperatorMetrics()
        self.counters = FlinkCounters(runtime_context, self.metrics.series())
        # The newest event time folded (by a subclass that folds): for the event-time lag, and
        # where event time really stands when a bounded input ends with Flink's final watermark.
        self.max_event_ms = 0

    def process_element(self, value: bytes, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        now_ms = _now_ms()
        if now_ms >= self.metrics.next_flush_ms:
            self.flush_metrics(now_ms)
            # Flushes what comes in until then, if the input goes quiet (see on_timer).
            ctx.timer_service().register_processing_time_timer(self.metrics.schedule(now_ms))
        try:
            event = decode_event(value, now_ms)
        except InvalidEvent as exc:
            self.metrics.dead_letter(exc.reason.value)
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
            self.metrics.dead_letter(Reason.KEY_MISMATCH.value)
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
        # Watermarks come from Kafka record timestamps; the contract says they equal event_time.
        if record_ts is not None and abs(record_ts - event.event_time_ms) > RECORD_SKEW_MS:
            self.metrics.record_timestamp_skewed += 1
        yield from self.process_event(event, key, now_ms, ctx)

    def process_event(
        self, event: Event, key: str, now_ms: int, ctx: KeyedProcessFunction.Context
    ) -> Iterator[Any]:
        """A valid event of the current key (`key` is its user_id)."""
        return iter(())

    def flush_metrics(self, now_ms: int) -> None:
        """Hand what the metrics counted since the last flush to Flink."""
        self.counters.apply(self.metrics.flush(now_ms, self.max_event_ms))

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        """The metrics' processing-time timer (process_element registers it). A subclass with
        event-time timers of its own passes the processing-time ones here."""
        self.flush_metrics(_now_ms())
        return iter(())

    def close(self) -> None:
        self.flush_metrics(_now_ms())


class FlinkCounters:
    """The Flink counters behind `udfs.metrics.OperatorMetrics`, in the operator's metric group
    `udfs.metrics.GROUP`; a labelled metric's series are counters in key-value groups
    (`add_group(label, value)`: the label of the Prometheus series). Counters only: a Python gauge
    is read from a Java metrics thread, which blocks the task in thread mode."""

    def __init__(self, runtime_context: RuntimeContext, series: list[tuple[str, str]]) -> None:
        self.group = runtime_context.get_metrics_group().add_group(GROUP)
        self.counters: dict[tuple[str, str], Any] = {}
        for name, label in series:
            self._counter(name, label)

    def _counter(self, name: str, label: str) -> Any:
        counter = self.counters.get((name, label))
        if counter is None:
            key = BY_NAME[name].label
            group = self.group.add_group(key, label) if key else self.group
            counter = self.counters[(name, label)] = group.counter(name)
        return counter

    def apply(self, increments: list[Increment]) -> None:
        for name, label, amount in increments:
            self._counter(name, label).inc(amount)


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
    to a newer checked model (`switch_model`) before scoring it.

    The segmentation (`segments_dir`; None: rows carry no cluster) is loaded once per instance in
    `open()` and assigns every row's cluster_id (timed like scoring: `clustering_*` metrics)."""

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
        segments_dir: Path | None = None,
    ) -> None:
        super().__init__(topic)
        self.model_dir = str(model_dir)
        self.segments_dir = str(segments_dir) if segments_dir is not None else None
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
        self.scorer = Scorer(self.model_dir)
        self.timed_score = self.metrics.timed("scoring", self.scorer.score)
        self.timed_explain = self.metrics.timed("explain", self.scorer.explain)
        segmentation: Segmentation | None = None
        if self.segments_dir is not None:
            segmentation = load_segmentation(Path(self.segments_dir))
        self.engine = ProfileEngine(
            self.params,
            self.timed_score,
            self.scorer.version,
            Pseudonymiser(load_key(self.pseudonym_key_file)),
            explain=self.timed_explain,
            segmentation=segmentation,
            assign=self.metrics.timed("clustering", segmentation.assign) if segmentation else None,
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
        self.serve_model(self.scorer.version)
        self.cache = ProfileCache(self.cache_entries)
        tune_gc()

    def close(self) -> None:
        super().close()
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
        self.serve_model(scorer.version)
        old.close()

    def serve_model(self, version: str) -> None:
        """Report `version` as the model serving (its `serving` series 1, the previous
        version's 0): at start-up and on every switch."""
        self.counters.apply(self.metrics.serve(version))

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
            if step.outcome is StepOutcome.FAILED:
                self.metrics.events_failed += 1
                self.metrics.dead_letter(Reason.PROCESSING_ERROR.value)
            else:
                self.metrics.events_late += 1
                self.metrics.dead_letter(Reason.LATE_EVENT.value)
            # A failed step discards the cached profile, which the fold may have half-updated.
            apply_step(step, key, self.state, self.cache, ctx)
            yield DEAD_LETTERS, Row(*step.dead_letter)
            return
        if step.outcome is StepOutcome.DUPLICATE:
            self.metrics.events_duplicate += 1
            return
        if step.outcome is StepOutcome.APPLIED:
            self.metrics.events_folded += 1
        yield from self._apply(key, step, ctx)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        if ctx.time_domain() == TimeDomain.PROCESSING_TIME:
            yield from super().on_timer(timestamp, ctx)  # the metrics' flush
            return
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
            self.metrics.profiles_expired += 1
        yield from self._apply(key, step, ctx)

    def _apply(self, key: str, step: Step, ctx: Any) -> Iterator[Row]:
        if step.erase:
            self.metrics.users_erased += 1
            self.metrics.profile_rows_sent += 1
            # Deleting the row deletes its history and dead letters too (a database trigger).
            row = Row(key, *([None] * (len(PROFILE_COLUMNS) - 1)))
            row.set_row_kind(RowKind.DELETE)
            yield row
        apply_step(step, key, self.state, self.cache, ctx)
        if step.row is not None:
            self.metrics.profile_rows_sent += 1
            row = Row(*step.row)
            row.set_row_kind(RowKind.UPDATE_AFTER)
            yield row
