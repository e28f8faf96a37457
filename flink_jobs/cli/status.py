"""`profilestream status`: the operator's view of the running job in one screen, and its health as
the exit code (0 healthy, 1 degraded with one line per reason, 2 a mistake in the command).

The figures come from Flink's REST API (flink_jobs.ops.monitor), Kafka and PostgreSQL
(flink_jobs.io.status), gathered in parallel with short timeouts so a probe answers within
seconds even when a source is down; the judgement is udfs.health.judge.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from flink_jobs.cli.parser import Subparsers, add_kafka, add_pg
from flink_jobs.config import (
    DEFAULT_GROUP_ID,
    DEFAULT_JOB_NAME,
    ClusterSettings,
    Environment,
    StatusSettings,
    redact_dsn,
)
from flink_jobs.io.status import database_figures, kafka_lag
from flink_jobs.ops.cluster import LocalCluster
from flink_jobs.ops.monitor import job_figures
from udfs.errors import ClusterError, DatabaseError, KafkaUnavailable, ProfileStreamError
from udfs.health import Figures, Thresholds, Verdict, judge, seconds

DEFAULTS = Thresholds()
PARTITIONS_SHOWN = 8


def register(sub: Subparsers, env: Environment) -> None:
    status = sub.add_parser(
        "status",
        help="the running job in one screen; exit 0 healthy, 1 degraded",
        description="Job state and uptime, checkpoints, Kafka lag per partition, rows updated "
        "in the last minute, event-to-row freshness, dead letters in the last hour by reason and "
        "the model serving. Exit code 0 when healthy, 1 when degraded (one line per reason), "
        "2 for a mistake in the command. Kafka and PostgreSQL are checked when configured.",
    )
    status.add_argument(
        "--jobmanager",
        help="host:port of the JobManager's REST endpoint (default: the local cluster, "
        "127.0.0.1:<rest-port>)",
    )
    status.add_argument("--rest-port", type=int, default=ClusterSettings().rest_port)
    status.add_argument("--job-name", default=DEFAULT_JOB_NAME, help="the Flink job's name")
    add_kafka(status, env)
    status.add_argument("--group-id", default=DEFAULT_GROUP_ID, help="the job's consumer group")
    add_pg(status, env)
    status.add_argument(
        "--checkpoint-intervals",
        type=float,
        default=DEFAULTS.checkpoint_intervals,
        help="degraded when the last checkpoint is older than this many checkpoint intervals "
        f"({DEFAULTS.checkpoint_intervals:g})",
    )
    status.add_argument(
        "--max-lag",
        type=int,
        default=DEFAULTS.max_lag,
        help=f"degraded over this many records of lag on a partition ({DEFAULTS.max_lag:,})",
    )
    status.add_argument(
        "--max-freshness-s",
        type=float,
        default=DEFAULTS.max_freshness_ms / 1000,
        help="degraded when the freshness p99 is over this many seconds "
        f"({DEFAULTS.max_freshness_ms / 1000:g})",
    )
    status.add_argument(
        "--max-dead-letters",
        type=int,
        default=DEFAULTS.max_dead_letters,
        help="degraded over this many dead letters in the last hour "
        f"({DEFAULTS.max_dead_letters:,})",
    )
    status.add_argument("--json", action="store_true", help="print the figures as JSON")
    status.set_defaults(handler=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    settings = StatusSettings(
        cluster=ClusterSettings(rest_port=args.rest_port, jobmanager=args.jobmanager),
        job_name=args.job_name,
        kafka_bootstrap=args.bootstrap or None,
        topic=args.topic,
        group_id=args.group_id,
        pg_dsn=args.pg_dsn or None,
        thresholds=Thresholds(
            checkpoint_intervals=args.checkpoint_intervals,
            max_lag=args.max_lag,
            max_freshness_ms=round(args.max_freshness_s * 1000),
            max_dead_letters=args.max_dead_letters,
        ),
    )
    figures = gather(settings)
    verdict = judge(figures, settings.thresholds)
    if args.json:
        print(json.dumps(as_json(settings, figures, verdict), indent=2))
    else:
        print("\n".join(screen(settings, figures, verdict)))
    return verdict.exit_code


def gather(settings: StatusSettings) -> Figures:
    """Ask every configured source at once; a source that fails goes to `unavailable`. A
    mistake (a database the job does not write) is raised."""
    cluster = LocalCluster(settings=settings.cluster)
    bootstrap, dsn = settings.kafka_bootstrap, settings.pg_dsn
    with ThreadPoolExecutor(max_workers=3) as pool:
        job = pool.submit(job_figures, cluster, settings.job_name)
        kafka = (
            pool.submit(kafka_lag, bootstrap, settings.topic, settings.group_id)
            if bootstrap
            else None
        )
        database = pool.submit(database_figures, dsn) if dsn else None
        unavailable: dict[str, str] = {}

        def take(future: Any, source: str, failure: type[ProfileStreamError]) -> Any:
            if future is None:
                return None
            try:
                return future.result()
            except failure as exc:
                unavailable[source] = str(exc)
                return None

        return Figures(
            job=take(job, "JobManager", ClusterError),
            kafka=take(kafka, "Kafka", KafkaUnavailable),
            database=take(database, "PostgreSQL", DatabaseError),
            unavailable=unavailable,
        )


def screen(settings: StatusSettings, figures: Figures, verdict: Verdict) -> list[str]:
    """The status as an operator reads it: the verdict and its reasons, then one block per
    source."""
    lines = ["status        " + ("HEALTHY" if verdict.healthy else "DEGRADED")]
    lines += [f"  - {reason}" for reason in verdict.reasons]
    lines += _job_lines(settings, figures)
    lines += _kafka_lines(settings, figures)
    lines += _database_lines(settings, figures)
    return lines


def _line(label: str, text: str) -> str:
    return f"{label:<14}{text}"


def _unavailable(figures: Figures, source: str, missing: str) -> list[str] | None:
    if source in figures.unavailable:
        return [_line(missing, f"unavailable ({source})")]
    return None


def _job_lines(settings: StatusSettings, figures: Figures) -> list[str]:
    where = settings.cluster.address
    job = figures.job
    if job is None:
        return [_line("job", f"{settings.job_name}: JobManager {where} unavailable")]
    if job.job_id is None:
        return [_line("job", f"no job named {job.name!r} on {where}")]
    state = job.state or "?"
    if job.running_ms is not None:
        state += f" for {seconds(job.running_ms)}"
    elif job.ended_ms is not None:
        state += f" {seconds(job.ended_ms)} ago"
    extra = []
    if job.submitted_ms is not None:
        extra.append(f"submitted {seconds(job.submitted_ms)} ago")
    extra.append(f"{job.restarts} restart{'s' if job.restarts != 1 else ''}")
    total = sum(job.tasks.values())
    if total:
        extra.append(f"{job.tasks.get('RUNNING', 0)}/{total} tasks running")
    lines = [
        _line("job", f"{job.name}  {state} ({', '.join(extra)})"),
        _line("", f"id {job.job_id}, JobManager {where}"),
    ]
    cp = job.checkpoints
    if cp is None:
        lines.append(_line("checkpoints", "none reported"))
    elif cp.last_id is None or cp.age_ms is None:
        lines.append(
            _line(
                "checkpoints",
                f"none completed yet (interval {seconds(cp.interval_ms)}, {cp.failed} failed)",
            )
        )
    else:
        lines.append(
            _line(
                "checkpoints",
                f"#{cp.last_id} completed {seconds(cp.age_ms)} ago (interval "
                f"{seconds(cp.interval_ms)}; {cp.completed} completed, {cp.failed} failed)",
            )
        )
        lines.append(
            _line(
                "",
                f"state {_bytes(cp.state_bytes)}, this checkpoint wrote "
                f"{_bytes(cp.written_bytes)} in {seconds(cp.duration_ms or 0)}",
            )
        )
    return lines


def _kafka_lines(settings: StatusSettings, figures: Figures) -> list[str]:
    lag = figures.kafka
    if not settings.kafka_bootstrap:
        return [_line("kafka lag", "not checked (set --bootstrap or KAFKA_BOOTSTRAP)")]
    if lag is None:
        return _unavailable(figures, "Kafka", "kafka lag") or []
    lines = [
        _line(
            "kafka lag",
            f"{lag.total:,} records on {lag.topic} (group {lag.group} at "
            f"{settings.kafka_bootstrap}, as of its last checkpoint)",
        )
    ]
    shown = sorted(lag.partitions, key=lambda p: p.partition)
    if len(shown) > PARTITIONS_SHOWN:
        shown = sorted(
            sorted(lag.partitions, key=lambda p: -p.lag)[:PARTITIONS_SHOWN],
            key=lambda p: p.partition,
        )
    for p in shown:
        committed = f"{p.committed:,}" if p.committed is not None else "none"
        lines.append(
            _line(
                "", f"  partition {p.partition}: {p.lag:,} (committed {committed}, end {p.end:,})"
            )
        )
    if len(lag.partitions) > len(shown):
        lines.append(_line("", f"  ... {len(lag.partitions) - len(shown)} more partitions"))
    return lines


def _database_lines(settings: StatusSettings, figures: Figures) -> list[str]:
    db = figures.database
    if not settings.pg_dsn:
        return [_line("rows", "not checked (set --pg-dsn or PG_DSN)")]
    if db is None:
        return _unavailable(figures, "PostgreSQL", "rows") or []
    fresh = db.freshness
    dead = ", ".join(f"{n:,} {reason}" for reason, n in db.dead_letters_last_hour.items())
    return [
        _line(
            "rows",
            f"{db.rows_last_minute:,} updated in the last minute ({redact_dsn(settings.pg_dsn)})",
        ),
        _line(
            "freshness",
            f"p50 {seconds(fresh.p50_ms)}, p99 {seconds(fresh.p99_ms)}, max "
            f"{seconds(fresh.max_ms)} (event time -> row written, {fresh.rows:,} rows)"
            if fresh
            else "no row written for an event in the last minute",
        ),
        _line(
            "dead letters", f"{db.dead_letters:,} in the last hour" + (f": {dead}" if dead else "")
        ),
        _line("model", db.model_version or "none serving, no rows yet"),
    ]


def _bytes(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def as_json(settings: StatusSettings, figures: Figures, verdict: Verdict) -> dict[str, Any]:
    """`--json`: the verdict, the figures (null: not configured or unavailable; durations in
    ms, sizes in bytes), the thresholds and the sources asked."""
    return {
        "healthy": verdict.healthy,
        "exit_code": verdict.exit_code,
        "reasons": list(verdict.reasons),
        "job": asdict(figures.job) if figures.job else None,
        "kafka": (
            {**asdict(figures.kafka), "total_lag": figures.kafka.total} if figures.kafka else None
        ),
        "database": (
            {**asdict(figures.database), "dead_letters": figures.database.dead_letters}
            if figures.database
            else None
        ),
        "unavailable": dict(figures.unavailable),
        "thresholds": asdict(settings.thresholds),
        "sources": {
            "jobmanager": settings.cluster.address,
            "job_name": settings.job_name,
            "kafka": settings.kafka_bootstrap,
            "topic": settings.topic,
            "group_id": settings.group_id,
            "postgresql": redact_dsn(settings.pg_dsn) if settings.pg_dsn else None,
        },
    }
