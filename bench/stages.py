"""Keyed functions for the benchmark's plumbing floor and its ablation of the job's per-event cost.

All run on the job's own source, key_by and decoding (`flink_jobs.job.functions.DecodingFunction`),
emit nothing (but `emit`), and do the job's per-event work up to a point, so the difference
between two stages' throughput is what the added step costs inside the running job:

    floor     decode and validate, nothing else (no state, no output): the plumbing floor
    emit      the floor + one row of the job's profile row type per event (a real row, the
              first event's, made once), into a discarding sink: what PyFlink's output path
              (`Row`, its converter, pemja, the Java side) costs per record, apart from the work
    write     + one ValueState write of a profile-sized value, no read: the least a job that keeps
              a per-key state current on every event can do (its reads served by a cache)
    state     + one ValueState read and a write of a profile-sized value
    update    + the profile update as the job does it (write-through cache, the engine's fold,
              lazy inactivity timer, state encoding and write)
    features  + every feature
    scoring   + the model's score

The whole job (+ pseudonym, row, JSON and the JDBC sink) is the production pipeline itself
(`flink_jobs.job.run.run_job`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyflink.common import Row, RowKind
from pyflink.common.typeinfo import Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ValueStateDescriptor

from flink_jobs.job.functions import DecodingFunction, apply_step
from udfs.cache import ProfileCache
from udfs.engine import ProfileEngine
from udfs.events import Event
from udfs.features import features_and_vector
from udfs.params import ProfileParams
from udfs.scoring import Scorer

STAGES = ("floor", "emit", "write", "state", "update", "features", "scoring")


class Stage(DecodingFunction):
    def __init__(
        self,
        stage: str,
        topic: str,
        model_dir: Path,
        params: ProfileParams,
        blob_bytes: int,
        cache: int,
    ) -> None:
        if stage not in STAGES:
            raise ValueError(f"stage {stage!r} is not one of {STAGES}")
        super().__init__(topic)
        self.stage = stage
        self.model_dir = str(model_dir)
        self.params = params
        self.blob = b"\x00" * blob_bytes
        self.cache_entries = cache

    def open(self, runtime_context: RuntimeContext) -> None:
        super().open(runtime_context)
        self.state = runtime_context.get_state(
            ValueStateDescriptor("profile", Types.PICKLED_BYTE_ARRAY())
        )
        self.scorer = Scorer(self.model_dir)
        self.engine = ProfileEngine(self.params, self.scorer.score, "bench", str)
        self.cache = ProfileCache(self.cache_entries)
        self.row: tuple[Any, ...] | None = None  # `emit`'s row

    def close(self) -> None:
        self.scorer.close()

    def process_event(
        self, event: Event, key: str, now_ms: int, ctx: KeyedProcessFunction.Context
    ) -> Iterator[Any]:
        stage = self.stage
        if stage == "floor":
            return
        if stage == "emit":
            if self.row is None:
                row = self.engine.on_event(None, event, self.topic, now_ms).row
                if row is None:  # a valid first event always makes one
                    raise RuntimeError(f"no row from the first event: {event!r}")
                self.row = tuple(row)
            out = Row(*self.row)
            out.set_row_kind(RowKind.UPDATE_AFTER)
            yield out
            return
        if stage == "write":
            self.state.update(self.blob)
            return
        if stage == "state":
            self.state.value()
            self.state.update(self.blob)
            return
        profile = self.cache.get(key)
        if profile is None:
            profile = self.engine.load(self.state.value())
        step, folded = self.engine.fold_event(profile, event, self.topic, now_ms)
        if folded is None:
            return
        if stage != "update":
            _, vector = features_and_vector(folded, folded.last_ms, self.params)
            if stage == "scoring":
                self.scorer.score(vector)
        self.engine.store(step, folded)
        apply_step(step, key, self.state, self.cache, ctx)
        return
        yield  # a generator that emits nothing

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        return
        yield  # the benchmark's input ends with Flink's final watermark: nothing to do
