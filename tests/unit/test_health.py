"""The health judgement of `profilestream status` (udfs.health.judge) on plain figures: every rule
fires just over its threshold and not at it, each with its own reason line; sources not
configured are not judged. Also the screen and the JSON the command prints, and its exit codes
for mistakes and for sources with nothing behind them."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from flink_jobs.cli.status import as_json, screen
from flink_jobs.config import ClusterSettings, StatusSettings
from tests.support.cli import assert_one_line_error, run_cli
from udfs.errors import ConfigError
from udfs.health import (
    Checkpoints,
    Database,
    Figures,
    Freshness,
    Job,
    KafkaLag,
    PartitionLag,
    Thresholds,
    judge,
    seconds,
)

LIMITS = Thresholds(
    checkpoint_intervals=3, max_lag=1000, max_freshness_ms=5000, max_dead_letters=10
)
CHECKPOINTS = Checkpoints(
    interval_ms=10_000,
    completed=40,
    failed=1,
    last_id=40,
    age_ms=4_000,
    state_bytes=5_000_000,
    written_bytes=300_000,
    duration_ms=120,
)
JOB = Job(
    name="profilestream-profiles",
    job_id="a" * 32,
    state="RUNNING",
    running_ms=600_000,
    submitted_ms=900_000,
    restarts=1,
    tasks={"RUNNING": 4},
    checkpoints=CHECKPOINTS,
)
KAFKA = KafkaLag(
    "user-events", "profilestream", (PartitionLag(0, 90, 100, 10), PartitionLag(1, None, 7, 7))
)
DATABASE = Database(
    rows_last_minute=250,
    freshness=Freshness(rows=240, p50_ms=400, p99_ms=1200, max_ms=1500),
    dead_letters_last_hour={"decode_error": 3, "late_event": 2},
    model_version="taobao-v2",
)
HEALTHY = Figures(job=JOB, kafka=KAFKA, database=DATABASE)


def reasons(figures: Figures) -> tuple[str, ...]:
    return judge(figures, LIMITS).reasons


def test_healthy_figures_are_healthy() -> None:
    verdict = judge(HEALTHY, LIMITS)
    assert verdict.healthy and verdict.reasons == () and verdict.exit_code == 0


def test_sources_not_configured_are_not_judged() -> None:
    assert judge(Figures(job=JOB), LIMITS).healthy


def test_a_source_that_does_not_answer_is_degraded() -> None:
    figures = Figures(
        job=JOB,
        unavailable={"Kafka": "127.0.0.1:1 does not answer", "PostgreSQL": "refused"},
    )
    verdict = judge(figures, LIMITS)
    assert verdict.exit_code == 1
    assert verdict.reasons == ("Kafka: 127.0.0.1:1 does not answer", "PostgreSQL: refused")


@pytest.mark.parametrize("state", ["CANCELED", "FAILED", "RESTARTING", "FINISHED", "CREATED"])
def test_a_job_that_is_not_running(state: str) -> None:
    job = replace(JOB, state=state, running_ms=None)
    assert reasons(replace(HEALTHY, job=job)) == (
        f"job profilestream-profiles ({'a' * 32}) is {state}, not RUNNING",
    )


def test_no_job_of_the_name() -> None:
    assert reasons(replace(HEALTHY, job=Job(name="nightly"))) == (
        "no job named 'nightly' on the JobManager",
    )


def test_a_running_job_with_tasks_waiting_for_slots() -> None:
    job = replace(JOB, tasks={"RUNNING": 2, "SCHEDULED": 1, "DEPLOYING": 1})
    assert reasons(replace(HEALTHY, job=job)) == (
        "only 2 of 4 tasks running (1 DEPLOYING, 1 SCHEDULED)",
    )
    finished = replace(JOB, tasks={"RUNNING": 3, "FINISHED": 1})  # a bounded source at its end
    assert reasons(replace(HEALTHY, job=finished)) == ()


def test_checkpoint_age_against_the_interval() -> None:
    def with_age(age_ms: int | None, running_ms: int = 600_000) -> tuple[str, ...]:
        cp = replace(CHECKPOINTS, age_ms=age_ms, last_id=None if age_ms is None else 40)
        return reasons(replace(HEALTHY, job=replace(JOB, checkpoints=cp, running_ms=running_ms)))

    assert with_age(30_000) == ()  # exactly 3 intervals
    assert with_age(30_001) == ("last checkpoint completed 30 s ago, over 3 x the 10 s interval",)
    assert with_age(None, running_ms=30_000) == ()  # none yet, but only just started
    assert with_age(None, running_ms=45_000) == (
        "no checkpoint completed in 45 s of running, over 3 x the 10 s interval",
    )
    off = replace(CHECKPOINTS, interval_ms=0, age_ms=10**9)  # checkpointing off: not judged
    assert reasons(replace(HEALTHY, job=replace(JOB, checkpoints=off))) == ()


def test_a_job_that_is_not_running_is_not_judged_on_its_checkpoints() -> None:
    cp = replace(CHECKPOINTS, age_ms=10**9)
    job = replace(JOB, state="CANCELED", running_ms=None, ended_ms=5_000, checkpoints=cp)
    assert len(reasons(replace(HEALTHY, job=job))) == 1


def test_lag_per_partition() -> None:
    at_limit = replace(KAFKA, partitions=(PartitionLag(0, 0, 1000, 1000), PartitionLag(1, 0, 3, 3)))
    assert reasons(replace(HEALTHY, kafka=at_limit)) == ()
    over = replace(
        KAFKA, partitions=(PartitionLag(0, 0, 1000, 1000), PartitionLag(1, 5, 1006, 1001))
    )
    assert over.total == 2001
    assert reasons(replace(HEALTHY, kafka=over)) == (
        "Kafka lag 1,001 records on user-events[1], over --max-lag 1,000",
    )


def test_freshness_p99() -> None:
    def with_p99(p99: int) -> tuple[str, ...]:
        fresh = Freshness(rows=10, p50_ms=100, p99_ms=p99, max_ms=p99)
        return reasons(replace(HEALTHY, database=replace(DATABASE, freshness=fresh)))

    assert with_p99(5000) == ()
    assert with_p99(5001) == (
        "freshness p99 5.0 s (event time -> row), over --max-freshness-s 5.0 s",
    )
    no_rows = replace(DATABASE, rows_last_minute=0, freshness=None)
    assert reasons(replace(HEALTHY, database=no_rows)) == ()


def test_dead_letters_in_the_last_hour() -> None:
    def with_dead(**by_reason: int) -> tuple[str, ...]:
        return reasons(
            replace(HEALTHY, database=replace(DATABASE, dead_letters_last_hour=by_reason))
        )

    assert with_dead(decode_error=6, late_event=4) == ()
    assert with_dead(decode_error=6, late_event=5) == (
        "11 dead letters in the last hour, over --max-dead-letters 10",
    )


def test_every_problem_gets_its_own_line() -> None:
    figures = Figures(
        job=replace(
            JOB,
            tasks={"RUNNING": 3, "SCHEDULED": 1},
            checkpoints=replace(CHECKPOINTS, age_ms=31_000),
        ),
        kafka=replace(KAFKA, partitions=(PartitionLag(0, 0, 5000, 5000),)),
        database=replace(
            DATABASE,
            freshness=Freshness(10, 100, 9000, 9000),
            dead_letters_last_hour={"decode_error": 11},
        ),
        unavailable={"JobManager": "x"},
    )
    assert len(reasons(figures)) == 6


@pytest.mark.parametrize(
    "kwargs",
    [
        {"checkpoint_intervals": 0.5},
        {"max_lag": -1},
        {"max_freshness_ms": -1},
        {"max_dead_letters": -5},
    ],
)
def test_thresholds_are_checked(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="must be at least"):
        Thresholds(**kwargs)  # type: ignore[arg-type]


def test_durations_for_people() -> None:
    assert [seconds(ms) for ms in (850, 4_200, 75_000, 720_000, 12_600_000, 181_440_000)] == [
        "850 ms",
        "4.2 s",
        "75 s",
        "12 min",
        "3.5 h",
        "2.1 d",
    ]


SETTINGS = StatusSettings(
    cluster=ClusterSettings(jobmanager="jm:8081"),
    kafka_bootstrap="k:9092",
    pg_dsn="postgresql://bi:secret@db:5432/profiles",
    thresholds=LIMITS,
)


def test_the_screen() -> None:
    text = "\n".join(screen(SETTINGS, HEALTHY, judge(HEALTHY, LIMITS)))
    assert text.splitlines()[0] == "status        HEALTHY"
    for needle in (
        "RUNNING for 10 min (submitted 15 min ago, 1 restart, 4/4 tasks running)",
        "#40 completed 4.0 s ago (interval 10 s; 40 completed, 1 failed)",
        "state 4.8 MB, this checkpoint wrote 293.0 KB in 120 ms",
        "17 records on user-events (group profilestream at k:9092",
        "partition 0: 10 (committed 90, end 100)",
        "partition 1: 7 (committed none, end 7)",
        "250 updated in the last minute",
        "p50 400 ms, p99 1.2 s, max 1.5 s (event time -> row written, 240 rows)",
        "5 in the last hour: 3 decode_error, 2 late_event",
        "model         taobao-v2",
    ):
        assert needle in text, needle
    assert "secret" not in text
    assert len(text.splitlines()) < 25  # one screen


def test_the_screen_when_degraded_and_partly_configured() -> None:
    settings = replace(SETTINGS, kafka_bootstrap=None)
    figures = Figures(
        job=replace(JOB, state="CANCELED", running_ms=None, ended_ms=8_000),
        unavailable={"PostgreSQL": "refused"},
    )
    lines = screen(settings, figures, judge(figures, LIMITS))
    assert lines[:3] == [
        "status        DEGRADED",
        "  - PostgreSQL: refused",
        f"  - job profilestream-profiles ({'a' * 32}) is CANCELED, not RUNNING",
    ]
    text = "\n".join(lines)
    assert "CANCELED 8.0 s ago" in text
    assert "kafka lag     not checked (set --bootstrap or KAFKA_BOOTSTRAP)" in text
    assert "rows          unavailable (PostgreSQL)" in text


def test_the_json() -> None:
    out = json.loads(json.dumps(as_json(SETTINGS, HEALTHY, judge(HEALTHY, LIMITS))))
    assert out["healthy"] is True and out["exit_code"] == 0 and out["reasons"] == []
    assert out["job"]["checkpoints"]["age_ms"] == 4_000
    assert out["kafka"]["total_lag"] == 17
    assert out["kafka"]["partitions"][1] == {"partition": 1, "committed": None, "end": 7, "lag": 7}
    assert out["database"]["dead_letters_last_hour"] == {"decode_error": 3, "late_event": 2}
    assert out["database"]["freshness"]["p99_ms"] == 1200
    assert out["thresholds"]["max_freshness_ms"] == 5000
    assert out["sources"]["postgresql"] == "postgresql://bi:***@db:5432/profiles"


def test_mistakes_exit_2() -> None:
    assert_one_line_error(
        run_cli("status", "--jobmanager", "localhost"), "--jobmanager", "host:port"
    )
    assert_one_line_error(run_cli("status", "--max-lag", "-1"), "--max-lag must be at least 0")
    assert_one_line_error(
        run_cli("status", "--pg-dsn", "127.0.0.1:5432"), "is not a postgresql://", "--pg-dsn"
    )


def test_nothing_behind_the_addresses_is_degraded() -> None:
    """A JobManager and a database that refuse connections: exit 1, one reason each (the real
    services are in tests/integration/test_status.py)."""
    proc = run_cli(
        "status", "--jobmanager", "127.0.0.1:1", "--pg-dsn", "postgresql://u@127.0.0.1:1/db"
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "status        DEGRADED"
    assert lines[1].startswith("  - JobManager: 127.0.0.1:1 does not answer (/jobs/overview:")
    assert lines[2].startswith("  - PostgreSQL: postgresql://u@127.0.0.1:1/db does not answer")
    assert "kafka lag     not checked" in proc.stdout
