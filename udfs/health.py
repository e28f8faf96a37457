"""The operator's health judgement behind `profilestream status`: what the job, Kafka and
PostgreSQL show (`Figures`) and the limits an operator sets (`Thresholds`) in, healthy or
degraded with one reason per problem (`Verdict`) out.

Pure: the figures are gathered elsewhere (flink_jobs.ops.monitor from Flink's REST API,
flink_jobs.io.status from Kafka and PostgreSQL); nothing here does I/O or reads a clock, so
every rule is unit-tested on plain values.

Degraded means the job is not doing its work, or cannot be seen doing it:
- a source that is configured but does not answer (the JobManager, Kafka, PostgreSQL), or
  answers without what the status needs (a topic that does not exist);
- no job of the name on the JobManager, a job that is not RUNNING, or a RUNNING job with tasks
  that are not running (waiting for slots after a TaskManager died);
- no completed checkpoint for more than `checkpoint_intervals` checkpoint intervals (the last
  one's age, or the time since the job last started when none completed yet);
- Kafka lag over `max_lag` records on any partition;
- event-to-row freshness p99 over `max_freshness_ms`;
- more than `max_dead_letters` dead letters in the last hour.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from udfs.errors import ConfigError

RUNNING = "RUNNING"
# Task states of a healthy running job (FINISHED: a bounded source that reached its end).
TASKS_OK = frozenset({"RUNNING", "FINISHED"})


@dataclass(frozen=True)
class Thresholds:
    """When `profilestream status` calls the job degraded (README, "Operating the job")."""

    checkpoint_intervals: float = 3.0  # the newest checkpoint older than this many intervals
    max_lag: int = 100_000  # records behind on any partition (committed offsets, see io.status)
    max_freshness_ms: int = 60_000  # p99 of event time -> row written, rows of the last minute
    max_dead_letters: int = 1_000  # dead letters seen in the last hour

    def __post_init__(self) -> None:
        checks = (
            ("--checkpoint-intervals", self.checkpoint_intervals, 1),
            ("--max-lag", self.max_lag, 0),
            ("--max-freshness-s", self.max_freshness_ms, 0),
            ("--max-dead-letters", self.max_dead_letters, 0),
        )
        for flag, value, minimum in checks:
            if value < minimum:
                raise ConfigError(f"{flag} must be at least {minimum}", setting=flag)


@dataclass(frozen=True)
class Checkpoints:
    """The job's checkpoints (Flink's `/jobs/<id>/checkpoints`), ages on the JobManager's clock."""

    interval_ms: int  # the configured interval (0: checkpointing off)
    completed: int = 0  # completed since the job was submitted (restores included)
    failed: int = 0
    last_id: int | None = None  # the newest completed checkpoint; None: none yet
    age_ms: int | None = None  # since it completed
    state_bytes: int | None = None  # the full state it holds
    written_bytes: int | None = None  # what it wrote (incremental RocksDB checkpoints)
    duration_ms: int | None = None  # trigger to the last acknowledgement


@dataclass(frozen=True)
class Job:
    """The job of a name on the JobManager (the running one, else the newest)."""

    name: str
    job_id: str | None = None  # None: no job of that name
    state: str | None = None  # Flink's job status: RUNNING, RESTARTING, FAILED, CANCELED, ...
    running_ms: int | None = None  # since it last switched to RUNNING (a restart resets it)
    submitted_ms: int | None = None  # since it was submitted
    ended_ms: int | None = None  # since it ended (FINISHED, CANCELED, FAILED)
    restarts: int = 0  # restarts after failures since it was submitted
    tasks: Mapping[str, int] = field(default_factory=dict)  # task state -> count (non-zero)
    checkpoints: Checkpoints | None = None


@dataclass(frozen=True)
class PartitionLag:
    partition: int
    committed: int | None  # the group's committed offset; None: nothing committed yet
    end: int  # the partition's end offset (the next record's offset)
    lag: int  # records written after the committed offset (or the log start)


@dataclass(frozen=True)
class KafkaLag:
    topic: str
    group: str
    partitions: tuple[PartitionLag, ...]

    @property
    def total(self) -> int:
        return sum(p.lag for p in self.partitions)


@dataclass(frozen=True)
class Freshness:
    """Event time -> row written, over the rows of the last minute that an event wrote."""

    rows: int
    p50_ms: int
    p99_ms: int
    max_ms: int


@dataclass(frozen=True)
class Database:
    """What PostgreSQL shows (database clock)."""

    rows_last_minute: int  # user_profiles rows written in the last 60 s
    freshness: Freshness | None  # None: no row of the last minute was written for an event
    dead_letters_last_hour: Mapping[str, int]  # reason -> count
    model_version: str | None  # the model serving (None: no rows yet)

    @property
    def dead_letters(self) -> int:
        return sum(self.dead_letters_last_hour.values())


@dataclass(frozen=True)
class Figures:
    """Everything gathered for one status. A source that was not configured is None and absent
    from `unavailable`; one that did not answer is None and in it."""

    job: Job | None = None
    kafka: KafkaLag | None = None
    database: Database | None = None
    unavailable: Mapping[str, str] = field(default_factory=dict)  # source -> what failed


@dataclass(frozen=True)
class Verdict:
    reasons: tuple[str, ...]

    @property
    def healthy(self) -> bool:
        return not self.reasons

    @property
    def exit_code(self) -> int:
        return 0 if self.healthy else 1


def judge(figures: Figures, thresholds: Thresholds) -> Verdict:
    """Healthy, or degraded with one line per reason (in the order of the status screen)."""
    reasons = [f"{source}: {why}" for source, why in figures.unavailable.items()]
    if figures.job is not None:
        reasons += _job_reasons(figures.job, thresholds)
    if figures.kafka is not None:
        for p in figures.kafka.partitions:
            if p.lag > thresholds.max_lag:
                reasons.append(
                    f"Kafka lag {p.lag:,} records on {figures.kafka.topic}[{p.partition}], over "
                    f"--max-lag {thresholds.max_lag:,}"
                )
    if figures.database is not None:
        fresh = figures.database.freshness
        if fresh is not None and fresh.p99_ms > thresholds.max_freshness_ms:
            reasons.append(
                f"freshness p99 {seconds(fresh.p99_ms)} (event time -> row), over "
                f"--max-freshness-s {seconds(thresholds.max_freshness_ms)}"
            )
        dead = figures.database.dead_letters
        if dead > thresholds.max_dead_letters:
            reasons.append(
                f"{dead:,} dead letters in the last hour, over --max-dead-letters "
                f"{thresholds.max_dead_letters:,}"
            )
    return Verdict(tuple(reasons))


def _job_reasons(job: Job, thresholds: Thresholds) -> list[str]:
    if job.job_id is None:
        return [f"no job named {job.name!r} on the JobManager"]
    if job.state != RUNNING:
        return [f"job {job.name} ({job.job_id}) is {job.state}, not RUNNING"]
    reasons = []
    waiting = {state: n for state, n in job.tasks.items() if state not in TASKS_OK and n}
    if waiting:
        total = sum(job.tasks.values())
        running = total - sum(waiting.values())
        states = ", ".join(f"{n} {state}" for state, n in sorted(waiting.items()))
        reasons.append(f"only {running} of {total} tasks running ({states})")
    cp = job.checkpoints
    if cp is not None and cp.interval_ms > 0:
        limit = thresholds.checkpoint_intervals * cp.interval_ms
        bound = f"{thresholds.checkpoint_intervals:g} x the {seconds(cp.interval_ms)} interval"
        if cp.age_ms is not None and cp.age_ms > limit:
            reasons.append(f"last checkpoint completed {seconds(cp.age_ms)} ago, over {bound}")
        elif cp.age_ms is None and job.running_ms is not None and job.running_ms > limit:
            reasons.append(
                f"no checkpoint completed in {seconds(job.running_ms)} of running, over {bound}"
            )
    return reasons


def seconds(ms: float) -> str:
    """A duration for people: `850 ms`, `4.2 s`, `75 s`, `12 min`, `3.5 h`, `2.1 d`."""
    if abs(ms) < 1_000:
        return f"{ms:.0f} ms"
    s = ms / 1000
    if abs(s) < 10:
        return f"{s:.1f} s"
    if abs(s) < 120:
        return f"{s:.0f} s"
    if abs(s) < 7_200:
        return f"{s / 60:.0f} min"
    if abs(s) < 172_800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86_400:.1f} d"
