"""`build_pipeline` on a local MiniCluster with an injected source and sinks: no Kafka, no
PostgreSQL, one Flink job (thread mode, RocksDB, as in production) shared by every test here.

- Source: a collection of `Row(user_key, event)` (`SOURCE_ROW_TYPE`) with event-time timestamps
  and watermarks as the production Kafka source makes them: each record carries the timestamp its
  producer set, and the watermark trails the newest one by `max_out_of_orderness_ms` + 1 ms
  (`WatermarkStrategy.for_bounded_out_of_orderness`, emitted periodically). Parallelism 1: the
  order is the list's. The source stalls at two records (as a topic goes quiet), so watermarks
  advance while events still flow, not only at the end of the input.
- Sinks: both outputs (profile rows, dead letters) come back into this process through Flink's
  collect sink, with their row kinds, exactly as the operator hands them to the JDBC sinks.
- Expectations: the job's own engine driven in memory (`udfs.consistency.recompute`, as
  `profilestream verify` does), plus explicit checks of timers, late events, dead letters and
  erasure.
"""

from __future__ import annotations

import contextlib
import pickle
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyflink.common import Duration, Row, RowKind, WatermarkStrategy
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import DataStream, StreamExecutionEnvironment
from pyflink.java_gateway import get_gateway

from flink_jobs.config import DEFAULT_SEGMENTS_DIR, JobConfig
from flink_jobs.job.functions import SOURCE_ROW_TYPE, UpdateProfile
from flink_jobs.job.pipeline import build_pipeline, create_environment
from flink_jobs.ops.flink_config import flink_settings
from flink_jobs.ops.runtime import find_java
from udfs import events as ev
from udfs.clusters import load_segmentation
from udfs.consistency import Expected, compare_profiles, recompute, scored_engine
from udfs.events import Reason, make_message
from udfs.params import DAY_MS, HOUR_MS, ProfileParams
from udfs.pseudonym import Pseudonymiser, load_key
from udfs.rows import DEAD_LETTER_COLUMNS, PROFILE_COLUMN_NAMES, PROFILE_COLUMNS, dead_letter_id
from udfs.scoring import Scorer
from udfs.sources import SyntheticSpec, synthetic_events

pytestmark = pytest.mark.flink

T0 = 1_735_689_600_000  # 2025-01-01T00:00:00Z, a UTC midnight (inactivity timers are day-aligned)
TOPIC = "inprocess-events"
WATERMARK_INTERVAL_MS = 100  # periodic watermark emission (pipeline.auto-watermark-interval)
STALL_S = 0.5  # a source stall: several watermark intervals
JOB_TIMEOUT_S = 300
COL = {name: i for i, name in enumerate(PROFILE_COLUMN_NAMES)}
DEAD_LETTER_NAMES = [name for name, _ in DEAD_LETTER_COLUMNS]
Columns = tuple[tuple[str, str], ...]


# ---------------------------------------------------------------------------------------------
# The injected source and sinks
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Record:
    """One Kafka record as the production source delivers it: key, value, record timestamp.
    `stall_s`: the source waits this long before delivering it."""

    key: str
    raw: bytes
    timestamp_ms: int
    stall_s: float = 0.0


class RecordTimestamps(TimestampAssigner):  # type: ignore[misc]
    """The record timestamps of a collection (a collection source has none of its own), looked
    up by (key, value): what the Kafka source reads from each record's metadata. Runs in the
    source task, so a stall here holds back the records behind it."""

    def __init__(self, records: list[Record]) -> None:
        self.times: dict[tuple[str, bytes], int] = {}
        self.stalls: dict[tuple[str, bytes], float] = {}
        for r in records:
            if self.times.setdefault((r.key, r.raw), r.timestamp_ms) != r.timestamp_ms:
                raise ValueError(f"two timestamps for one (key, value) of {r.key!r}")
            if r.stall_s:
                self.stalls[(r.key, r.raw)] = r.stall_s

    def extract_timestamp(self, value: Any, record_timestamp: int) -> int:
        record = (value[0], bytes(value[1]))
        stall = self.stalls.get(record)
        if stall:
            time.sleep(stall)
        return self.times[record]


def collection_source(
    env: StreamExecutionEnvironment, records: list[Record], max_out_of_orderness_ms: int
) -> DataStream:
    """`records` as `Row(user_key, event)` with timestamps and bounded-out-of-orderness
    watermarks: newest timestamp - max_out_of_orderness_ms - 1, as the Kafka source's
    `WATERMARK FOR record_time AS record_time - (max_out_of_orderness_ms + 1 ms)`."""
    strategy = WatermarkStrategy.for_bounded_out_of_orderness(
        Duration.of_millis(max_out_of_orderness_ms)
    ).with_timestamp_assigner(RecordTimestamps(records))
    rows = [Row(r.key, r.raw) for r in records]
    # A collection is a legacy source: its own thread emits each record holding the task's
    # checkpoint lock, and the watermark timer's mail must win that lock between two records,
    # which it may not for a whole stall. Unchained, the timestamps and watermarks are made in a
    # task of their own whose mailbox runs a due timer before its next record: every stall lets
    # a watermark out before the stalled record's successors (CI once saw none pass).
    return (
        env.from_collection(rows, type_info=SOURCE_ROW_TYPE)
        .name("collection source")
        .disable_chaining()
        .assign_timestamps_and_watermarks(strategy)
    )


class CollectingSinks:
    """`Sinks` that bring both outputs back into this process: Flink's collect sink
    (`DataStream.collectAsync` in Java) on each stream, read while the job runs. Rows keep their
    kind (UPDATE_AFTER, DELETE) and columns as the operator handed them to Java, which is what
    the JDBC sinks receive."""

    def __init__(self) -> None:
        self.outputs: dict[str, tuple[Any, Columns, Any]] = {}

    def _collect(self, name: str, stream: DataStream, columns: Columns) -> None:
        # PyFlink offers only execute_and_collect (one stream, and it runs the job itself). The
        # Java API registers a collect sink per stream; the next execute_async feeds them all.
        j_iterator = stream._j_data_stream.collectAsync()
        self.outputs[name] = (j_iterator, columns, stream.get_type().get_java_type_info())

    def profiles(self, stream: DataStream) -> None:
        self._collect("profiles", stream, PROFILE_COLUMNS)

    def dead_letters(self, stream: DataStream) -> None:
        self._collect("dead_letters", stream, DEAD_LETTER_COLUMNS)

    def read(self, name: str) -> list[Row]:
        """Every row of one output, in order (returns when the job has finished)."""
        j_iterator, columns, j_type = self.outputs[name]
        rows = []
        with contextlib.closing(j_iterator):
            while j_iterator.hasNext():
                rows.append(python_row(j_iterator.next(), columns, j_type))
        return rows


def python_row(j_row: Any, columns: Columns, j_type: Any) -> Row:
    """A Java Row as a Python Row of the same kind. PyFlink's own conversion
    (`convert_to_python_obj`, behind `execute_and_collect`) raises TypeError on a null byte-array
    field (the DELETE row has them) and turns byte arrays into lists of ints, so byte-array
    columns are read through py4j (byte[] arrives as bytes) and the rest from PyFlink's pickled
    form of the row."""
    pickled = get_gateway().jvm.PythonBridgeUtils.getPickledBytesFromJavaObject(j_row, j_type)
    fields = [
        j_row.getField(i) if kind in ("bytes", "json") else pickle.loads(pickled[i + 1])
        for i, (_, kind) in enumerate(columns)
    ]
    row = Row(*fields)
    row.set_row_kind(RowKind(pickled[0][0]))
    return row


# ---------------------------------------------------------------------------------------------
# The input: shoppers, three users who fall silent, an erasure, a duplicate, a late event and
# two bad messages
# ---------------------------------------------------------------------------------------------
def message(user: str, t: int, n: int = 0, event_type: int = ev.VIEW) -> bytes:
    item = event_type != ev.ERASE
    return make_message(
        event_id=f"{user}-{t}-{n}",
        user_id=user,
        event_type=event_type,
        event_time_ms=t,
        item_id=f"item{n}" if item else None,
        category_id="c001" if item else None,
    ).SerializeToString()


def record(user: str, t: int, n: int = 0, event_type: int = ev.VIEW, stall_s: float = 0) -> Record:
    return Record(user, message(user, t, n, event_type), t, stall_s)


@dataclass(frozen=True)
class Scenario:
    records: list[Record]
    garbage: Record  # undecodable bytes
    mismatch: Record  # a valid event under another user's key
    late: Record  # older than the allowed lateness behind its user's newest event
    last_event: Record  # the newest valid event: the input ends with it (and the late one)
    shoppers: frozenset[str]


def scenario() -> Scenario:
    good = message("victim", T0 + 50_000)
    garbage = Record("victim", good[: len(good) // 2] + b"\xff\xff\xff\xff\x0f", T0 + 50_000)
    mismatch = Record("mallory", message("alice", T0 + 60_000), T0 + 60_000)
    records = [
        # Silent after three events: at risk, dormant and expired as event time moves on.
        *(record("silent", T0 + n * 1_000, n) for n in (1, 2, 3)),
        # Two events, then the user asks to be forgotten.
        record("erased", T0 + 10_000, 1),
        record("erased", T0 + 11_000, 2),
        record("erased", T0 + 20_000, 3, ev.ERASE),
        garbage,
        mismatch,
        # Event time passes the silent user's at-risk (day 15) and dormant (day 31) timers; the
        # source stalls on the second, so a watermark fires them while events still flow.
        record("filler", T0 + 20 * DAY_MS, 1),
        record("filler", T0 + 40 * DAY_MS, 2, stall_s=STALL_S),
        record("sleepy", T0 + 60 * DAY_MS),  # 40 silent days at the end: dormant
        record("quiet", T0 + 80 * DAY_MS),  # 20 silent days at the end: at risk
    ]
    # Shoppers from day 86 to day 100; the source stalls again past the silent user's expiry
    # (day 91). One event is delivered twice (a producer retry).
    spec = SyntheticSpec(events=400, users=25, seed=3, start_ms=T0 + 86 * DAY_MS, days=14)
    shopping: list[Record] = []
    for msg in synthetic_events(spec):
        t = msg.event_time.seconds * 1000 + msg.event_time.nanos // 1_000_000
        first_past_day_92 = t > T0 + 92 * DAY_MS and not any(r.stall_s for r in shopping)
        stall = STALL_S if first_past_day_92 else 0.0
        shopping.append(Record(msg.user_id, msg.SerializeToString(), t, stall))
    shopping.insert(-50, shopping[-60])  # the same record again, ten records later
    records += shopping
    shoppers = frozenset(r.key for r in shopping)
    # Two hours behind its user's newest event (allowed: 10 minutes), with its own old record
    # timestamp.
    last = records[-1]
    late_t = last.timestamp_ms - 2 * HOUR_MS
    late = record(last.key, late_t, 99)
    records.append(late)
    return Scenario(records, garbage, mismatch, late, last, shoppers)


# ---------------------------------------------------------------------------------------------
# One job for the module
# ---------------------------------------------------------------------------------------------
@dataclass
class JobOutput:
    profiles: list[Row]  # in emission order
    dead_letters: list[Row]
    expected: Expected  # the offline recomputation
    wall_s: float
    rocksdb_log_dir: Path  # RocksDB's LOG files of the run


@pytest.fixture(scope="module")
def scene() -> Scenario:
    return scenario()


def inprocess_config(tmp: Path, job_name: str) -> JobConfig:
    """A job config whose Kafka and PostgreSQL are never contacted (the source and sinks are
    injected; they only have to validate), with a pseudonym key file under `tmp`."""
    key_file = tmp / "pseudonym.key"
    key_file.write_text("inprocess-test-pseudonym-key-" + "7" * 24)
    return JobConfig(
        kafka_bootstrap="127.0.0.1:9",
        pg_dsn="postgresql://unused@127.0.0.1:9/unused",
        topic=TOPIC,
        job_name=job_name,
        state_dir=tmp,
        pseudonym_key_file=key_file,
        checkpoint_interval_ms=1_000,  # a bounded job ends with a checkpoint: do not wait 10 s
        restart_attempts=0,  # a failure fails the test instead of replaying into the sinks
        flink_settings=(("pipeline.auto-watermark-interval", f"{WATERMARK_INTERVAL_MS} ms"),),
    )


def run_pipeline(
    config: JobConfig, records: list[Record], operator: type[UpdateProfile] = UpdateProfile
) -> dict[str, list[Row]]:
    """`build_pipeline` on a MiniCluster over `records`; both outputs as the sinks got them."""
    env = create_environment(config, find_java())
    sinks = CollectingSinks()
    build_pipeline(
        env,
        collection_source(env, records, config.max_out_of_orderness_ms),
        sinks,
        config,
        operator,
    )
    client = env.execute_async(config.job_name)
    # Drain both collect sinks at once: a full collect buffer would hold up the operator.
    with ThreadPoolExecutor(len(sinks.outputs)) as pool:
        futures = {name: pool.submit(sinks.read, name) for name in sinks.outputs}
        try:
            collected = {name: f.result(timeout=JOB_TIMEOUT_S) for name, f in futures.items()}
        except FutureTimeout:
            client.cancel().result()  # ends the reads
            raise
    client.get_job_execution_result().result()  # done: both outputs ended
    return collected


@pytest.fixture(scope="module")
def output(tmp_path_factory: pytest.TempPathFactory, scene: Scenario) -> JobOutput:
    tmp = tmp_path_factory.mktemp("inprocess")
    config = inprocess_config(tmp, "pipeline-inprocess")
    key_file = config.pseudonym_key_file
    assert key_file is not None
    start = time.monotonic()
    collected = run_pipeline(config, scene.records)
    wall_s = time.monotonic() - start
    print(f"\nin-process pipeline job: {wall_s:.1f} s, JVM start included")

    scorer = Scorer(config.model_dir)
    engine = scored_engine(
        scorer,
        Pseudonymiser(load_key(key_file)),
        config.profile,
        load_segmentation(config.segments_dir),
    )
    # The job dead-letters a record whose key is not its user_id; the recomputation, which
    # knows no keys, would fold it.
    expected = recompute(
        (r.raw for r in scene.records if r is not scene.mismatch),
        engine,
        now_ms=int(time.time() * 1000),
        topic=TOPIC,
        max_out_of_orderness_ms=config.max_out_of_orderness_ms,
        watermark_tolerance_ms=0,  # one partition, parallelism 1: the final watermark is exact
    )
    scorer.close()
    logs = Path(flink_settings("local", config)["state.backend.rocksdb.log.dir"])
    return JobOutput(collected["profiles"], collected["dead_letters"], expected, wall_s, logs)


def rows_of(out: JobOutput, user: str) -> list[Row]:
    return [r for r in out.profiles if r[COL["user_id"]] == user]


def final_rows(out: JobOutput) -> dict[str, tuple[object, ...]]:
    """What the upsert sink leaves: each user's last row, none after a DELETE."""
    final: dict[str, tuple[object, ...]] = {}
    for row in out.profiles:
        user = row[COL["user_id"]]
        if row.get_row_kind() == RowKind.DELETE:
            final.pop(user, None)
        else:
            final[user] = tuple(row)
    return final


def dead_letters(out: JobOutput) -> dict[str, Row]:
    return {r[0]: r for r in out.dead_letters}


def next_midnight(ms: int) -> int:
    """Inactivity timers fire at the first UTC midnight after a silence threshold."""
    return -(-ms // DAY_MS) * DAY_MS


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------
def test_outputs_have_the_sink_columns_and_row_kinds(output: JobOutput) -> None:
    assert output.profiles, "the job emitted no profile rows"
    assert {len(r) for r in output.profiles} == {len(PROFILE_COLUMNS)}
    assert {len(r) for r in output.dead_letters} == {len(DEAD_LETTER_COLUMNS)}
    kinds = {r.get_row_kind() for r in output.profiles}
    assert kinds == {RowKind.UPDATE_AFTER, RowKind.DELETE}
    deleted = [r[COL["user_id"]] for r in output.profiles if r.get_row_kind() == RowKind.DELETE]
    assert deleted == ["erased"]
    assert {r.get_row_kind() for r in output.dead_letters} == {RowKind.INSERT}


def test_rocksdb_uses_bloom_filters(output: JobOutput) -> None:
    """The keyed state's column families have a Bloom filter (flink_jobs.ops.flink_config: a
    key with no state is then not searched for in each file's blocks), as RocksDB's own LOG of
    the keyed operator reports its table options."""
    logs = list(output.rocksdb_log_dir.glob("*KeyedProcessOperator*LOG"))
    assert logs, f"no RocksDB LOG of the keyed operator in {output.rocksdb_log_dir}"
    policies = [
        line.split(":", 1)[1].strip()
        for log in logs
        for line in log.read_text(errors="replace").splitlines()
        if line.strip().startswith("filter_policy:")
    ]
    assert policies and set(policies) == {"bloomfilter"}, policies


def test_final_profiles_equal_the_offline_recomputation(output: JobOutput, scene: Scenario) -> None:
    final = final_rows(output)
    expected = output.expected.profiles
    assert scene.shoppers | {"silent", "sleepy", "quiet", "filler"} == expected.keys()
    assert output.expected.duplicates == 1  # folded once: event counts would differ otherwise
    assert final.keys() == expected.keys()
    mismatches = compare_profiles(expected, final)
    assert mismatches == [], mismatches[:10]
    # Not vacuous: the shoppers bought things, and the model scored and explained them.
    assert sum(final[u][COL["purchases"]] for u in scene.shoppers) > 0  # type: ignore[misc]
    assert all(0.0 < final[u][COL["score"]] < 1.0 for u in scene.shoppers)  # type: ignore[operator]
    assert all(final[u][COL["score_reasons"]] for u in scene.shoppers)
    # Every row the job emitted (timer and expiry rows too) carries its learned segment.
    rows = [r for r in output.profiles if r.get_row_kind() != RowKind.DELETE]
    assert {r[COL["cluster_version"]] for r in rows} == {DEFAULT_SEGMENTS_DIR.name}
    assert all(isinstance(r[COL["cluster_id"]], int) for r in rows)


def test_silent_user_goes_at_risk_then_dormant_then_expires(
    output: JobOutput, scene: Scenario
) -> None:
    rows = rows_of(output, "silent")
    assert [r.get_row_kind() for r in rows] == [RowKind.UPDATE_AFTER] * 6
    events, timers = rows[:3], rows[3:]
    assert [r[COL["event_count"]] for r in events] == [1, 2, 3]
    last_event = T0 + 3_000
    # Fired by event time alone (the user sent nothing more) after 14 / 30 / 90 silent days.
    params = ProfileParams()
    due = [
        next_midnight(last_event + after)
        for after in (params.at_risk_after_ms, params.dormant_after_ms, params.expire_after_ms)
    ]
    assert due == [T0 + 15 * DAY_MS, T0 + 31 * DAY_MS, T0 + 91 * DAY_MS]
    got = [
        (
            r[COL["as_of_ms"]],
            r[COL["segment"]],
            r[COL["expired"]],
            r[COL["profile_version"]],
            r[COL["event_count"]],
            r[COL["last_event_ms"]],
        )
        for r in timers
    ]
    assert got == [
        (due[0], "at_risk", False, 4, 3, last_event),
        (due[1], "dormant", False, 5, 3, last_event),
        (due[2], "dormant", True, 6, 3, last_event),  # expired: the state is gone
    ]
    # ... by watermarks that passed while events were still arriving, not by the end of input
    # (which fires every timer): all three came before the row of the newest event.
    last = scene.last_event
    positions = {id(r): i for i, r in enumerate(output.profiles)}
    end = next(
        i
        for i, r in enumerate(output.profiles)
        if r[COL["user_id"]] == last.key and r[COL["as_of_ms"]] == last.timestamp_ms
    )
    assert [positions[id(r)] < end for r in timers] == [True, True, True]


def test_users_silent_at_the_end_are_at_risk_or_dormant(output: JobOutput) -> None:
    """Event time ends on day 100: 20 silent days (quiet) is at risk, 40 (sleepy) dormant,
    each from a timer row."""
    params = ProfileParams()
    final = final_rows(output)
    quiet, sleepy = final["quiet"], final["sleepy"]
    assert (quiet[COL["segment"]], quiet[COL["expired"]], quiet[COL["as_of_ms"]]) == (
        "at_risk",
        False,
        next_midnight(T0 + 80 * DAY_MS + params.at_risk_after_ms),
    )
    assert (sleepy[COL["segment"]], sleepy[COL["expired"]], sleepy[COL["as_of_ms"]]) == (
        "dormant",
        False,
        next_midnight(T0 + 60 * DAY_MS + params.dormant_after_ms),
    )
    assert [r[COL["segment"]] for r in rows_of(output, "sleepy")] == ["new", "at_risk", "dormant"]


def test_late_event_is_a_dead_letter_and_not_folded(output: JobOutput, scene: Scenario) -> None:
    late = dead_letters(output)[dead_letter_id(scene.late.raw)]
    assert late[1] == Reason.LATE_EVENT.value
    assert "allowed lateness" in late[2]
    assert (bytes(late[3]), late[4], late[6], late[7]) == (
        scene.late.raw,
        TOPIC,
        scene.late.key,
        scene.late.timestamp_ms,
    )
    # The user's newest row is the one of their newest event: nothing after it.
    final = final_rows(output)[scene.late.key]
    assert (final[COL["as_of_ms"]], final[COL["last_event_ms"]]) == (
        scene.last_event.timestamp_ms,
        scene.last_event.timestamp_ms,
    )
    assert rows_of(output, scene.late.key)[-1][COL["as_of_ms"]] == scene.last_event.timestamp_ms


def test_undecodable_and_mismatched_messages_are_dead_letters(
    output: JobOutput, scene: Scenario
) -> None:
    dead = dead_letters(output)
    garbage = dead[dead_letter_id(scene.garbage.raw)]
    assert (garbage[1], bytes(garbage[3]), garbage[4], garbage[6]) == (
        Reason.DECODE_ERROR.value,
        scene.garbage.raw,
        TOPIC,
        None,
    )
    mismatch = dead[dead_letter_id(scene.mismatch.raw)]
    assert (mismatch[1], bytes(mismatch[3]), mismatch[6], mismatch[7]) == (
        Reason.KEY_MISMATCH.value,
        scene.mismatch.raw,
        "alice",
        scene.mismatch.timestamp_ms,
    )
    # Neither the key's user nor the event's got a profile from them.
    assert not {r[COL["user_id"]] for r in output.profiles} & {"alice", "mallory", "victim"}
    # Exactly these three dead letters, and the offline recomputation's (it knows no keys).
    assert len(output.dead_letters) == 3
    assert {k: r[1] for k, r in dead.items()} == {
        **output.expected.dead_letters,
        dead_letter_id(scene.mismatch.raw): Reason.KEY_MISMATCH.value,
    }


def test_erasure_deletes_the_row(output: JobOutput) -> None:
    rows = rows_of(output, "erased")
    assert [r.get_row_kind() for r in rows] == [
        RowKind.UPDATE_AFTER,
        RowKind.UPDATE_AFTER,
        RowKind.DELETE,
    ]
    # The DELETE carries the key only. No timer row follows: the erasure removed the timer.
    assert list(rows[-1]) == ["erased"] + [None] * (len(PROFILE_COLUMNS) - 1)
    assert "erased" not in final_rows(output)


# ---------------------------------------------------------------------------------------------
# A failure inside the operator: a job of its own
# ---------------------------------------------------------------------------------------------
POISON_EVENT_ID = "boom-poison"


class FailingUpdate(UpdateProfile):
    """The job's operator, with scoring that raises for one chosen event (a bug or a bad model)."""

    def open(self, runtime_context: Any) -> None:
        super().open(runtime_context)
        real_score = self.engine.score
        self.poisoned = False

        def score(vector: Any) -> float:
            if self.poisoned:
                raise FloatingPointError("injected: the model produced NaN")
            return float(real_score(vector))

        self.engine.score = score

    def process_event(self, event: Any, key: str, now_ms: int, ctx: Any) -> Any:
        self.poisoned = event.event_id == POISON_EVENT_ID
        yield from super().process_event(event, key, now_ms, ctx)


def test_an_event_that_fails_is_a_dead_letter_and_the_job_goes_on(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    tmp = tmp_path_factory.mktemp("failing")
    poison = make_message(
        event_id=POISON_EVENT_ID, user_id="boom", event_type=ev.VIEW, event_time_ms=T0 + 2_000,
        item_id="item2", category_id="c001",
    ).SerializeToString()  # fmt: skip
    records = [
        record("boom", T0 + 1_000, 1),
        Record("boom", poison, T0 + 2_000),
        record("boom", T0 + 3_000, 3),
        record("other", T0 + 4_000, 1),
    ]
    out = run_pipeline(inprocess_config(tmp, "pipeline-failing-event"), records, FailingUpdate)
    letters = [dict(zip(DEAD_LETTER_NAMES, row, strict=True)) for row in out["dead_letters"]]
    assert [(d["reason"], d["user_id"]) for d in letters] == [("processing_error", "boom")]
    assert letters[0]["detail"] == "FloatingPointError: injected: the model produced NaN"
    assert bytes(letters[0]["raw"]) == poison
    boom = [r for r in out["profiles"] if r[COL["user_id"]] == "boom"]
    # Rows for events 1 and 3 only; the third continues from the state before the poison event.
    assert [r[COL["event_count"]] for r in boom] == [1, 2]
    assert [r[COL["user_id"]] for r in out["profiles"]].count("other") == 1
