"""`profilestream status` against the real job: a standalone cluster (one TaskManager) running the
job from the local broker into the embedded PostgreSQL, events stamped at send time as the
contract asks.

While the job is healthy and has caught up, the command exits 0 and reports what was sent: the
end offset of every partition as the producer's delivery reports give them (not the local
broker's ListOffsets figure, which counts batches), no lag, every profile written in the last
minute, the dead letters by reason, the model serving. Then it exits 1 with the reason when the
TaskManager is killed (the job stays RUNNING, its tasks wait for a slot), when the job is
cancelled (and the lag counts what arrived since), when PostgreSQL is down, and when neither the
JobManager nor Kafka answers; and 2 for a database the job does not write.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from flink_jobs.config import DEFAULT_MODEL_DIR, ClusterSettings, JobConfig
from flink_jobs.io.db import pg_counts
from flink_jobs.io.producer import EventPublisher, client_config, ensure_topic
from flink_jobs.ops.cluster import LocalCluster
from flink_jobs.ops.services import EmbeddedPostgres, free_port
from tests.support.cli import assert_one_line_error, run_cli
from udfs import events as ev
from udfs.events import make_message
from udfs.scoring import read_metadata

pytestmark = [pytest.mark.flink, pytest.mark.integration, pytest.mark.slow]
TOPIC = "status-events"
JOB = "status-job"
USERS = 40
EVENTS = 600
BAD = 5  # undecodable messages: dead letters `decode_error`
LATE = 3  # events more than the allowed lateness behind their user's newest: `late_event`


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(
        home=tmp_path / "cluster",
        settings=ClusterSettings(rest_port=free_port(), rpc_port=free_port()),
    )
    c.start(taskmanagers=1)
    yield c
    c.stop()


def wait_for(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def committed(kafka: str, partitions: int) -> dict[int, int]:
    """The job's consumer group's committed offsets, as Kafka's own API gives them."""
    consumer = Consumer(client_config(kafka, **{"group.id": "profilestream"}))
    try:
        tps = [TopicPartition(TOPIC, p) for p in range(partitions)]
        return {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=10)}
    finally:
        consumer.close()


def publish(kafka: str, start: int, n: int, now_ms: int) -> dict[int, int]:
    """`n` events of USERS users stamped `now_ms` (sent in one burst, so the broker gets batches
    of many records); returns the delivery reports' end offsets."""
    with EventPublisher(kafka, TOPIC) as pub:
        for i in range(start, start + n):
            pub.publish(
                make_message(
                    event_id=f"s{i}",
                    user_id=f"u{i % USERS:03d}",
                    event_type=ev.VIEW,
                    event_time_ms=now_ms + i,
                    item_id=f"i{i % 17}",
                    category_id="c1",
                )
            )
    return pub.report.end_offsets


def status(cluster: LocalCluster, *extra: str, **sources: str) -> subprocess.CompletedProcess[str]:
    args = ["status", "--rest-port", str(cluster.rest_port), "--job-name", JOB, "--topic", TOPIC]
    for flag, value in sources.items():
        args += [f"--{flag.replace('_', '-')}", value]
    return run_cli(*args, *extra)


def as_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def test_status_healthy_then_degraded(
    cluster: LocalCluster, kafka: str, pg_dsn: str, pg_server: EmbeddedPostgres
) -> None:
    ensure_topic(kafka, TOPIC, partitions=2)
    config = JobConfig(
        kafka_bootstrap=kafka, pg_dsn=pg_dsn, topic=TOPIC, job_name=JOB, checkpoint_interval_ms=2000
    )
    job_id = cluster.submit(config.to_args())
    wait_for(lambda: cluster.rest(f"/jobs/{job_id}")["state"] == "RUNNING", 90, "RUNNING")

    now = int(time.time() * 1000)
    ends = publish(kafka, 0, EVENTS, now)
    with EventPublisher(kafka, TOPIC) as pub:
        for i in range(BAD):
            pub.publish_raw(b"bad", b"\xff\xfe not a UserEvent %d" % i, now)
        for i in range(LATE):  # 20 minutes behind u000's newest event: late
            late = make_message(
                event_id=f"late{i}",
                user_id="u000",
                event_type=ev.VIEW,
                event_time_ms=now - 20 * 60_000 - i,
                item_id="i0",
            )
            pub.publish_raw(b"u000", late.SerializeToString(), late.event_time.ToMilliseconds())
    for p, end in pub.report.end_offsets.items():
        ends[p] = max(ends.get(p, 0), end)
    ends = {p: ends.get(p, 0) for p in range(2)}

    sources = {"bootstrap": kafka, "pg_dsn": pg_dsn}
    wait_for(
        lambda: (
            pg_counts(pg_dsn)[0] == USERS
            and pg_counts(pg_dsn)[2] == BAD + LATE
            and committed(kafka, 2) == ends
        ),
        120,
        "every row, every dead letter and a checkpoint past the last event",
    )

    healthy = status(cluster, "--json", **sources)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    out = as_json(healthy)
    assert out["healthy"] is True and out["reasons"] == []
    job = out["job"]
    assert (job["job_id"], job["state"], job["tasks"]) == (job_id, "RUNNING", {"RUNNING": 4})
    assert job["checkpoints"]["last_id"] >= 1 and job["checkpoints"]["interval_ms"] == 2000
    partitions = {p["partition"]: p for p in out["kafka"]["partitions"]}
    assert {p: v["end"] for p, v in partitions.items()} == ends
    assert {p: v["committed"] for p, v in partitions.items()} == ends
    assert {p: v["lag"] for p, v in partitions.items()} == {0: 0, 1: 0}
    database = out["database"]
    assert database["rows_last_minute"] == USERS
    fresh = database["freshness"]
    assert fresh["rows"] == USERS and 0 <= fresh["p50_ms"] <= fresh["p99_ms"] <= fresh["max_ms"]
    assert database["dead_letters_last_hour"] == {"decode_error": BAD, "late_event": LATE}
    assert database["model_version"] == read_metadata(DEFAULT_MODEL_DIR).version

    screen = status(cluster, **sources)
    assert screen.returncode == 0, screen.stdout + screen.stderr
    lines = screen.stdout.splitlines()
    assert lines[0] == "status        HEALTHY"
    for p, end in ends.items():
        assert f"partition {p}: 0 (committed {end:,}, end {end:,})" in screen.stdout
    assert f"{USERS} updated in the last minute" in screen.stdout
    assert f"{BAD + LATE} in the last hour: {BAD} decode_error, {LATE} late_event" in screen.stdout

    # The TaskManager dies and none replaces it: the job stays RUNNING, its tasks wait for slots.
    cluster.kill_taskmanager(cluster.taskmanager_pids()[0])

    def tasks_waiting() -> bool:
        proc = status(cluster, "--json")
        reasons = as_json(proc)["reasons"] if proc.returncode == 1 else []
        return any(r.startswith("only 0 of 4 tasks running") for r in reasons)

    wait_for(tasks_waiting, 90, "status to see the tasks without a TaskManager")

    # Cancelled: degraded, and the lag counts what arrives while the job is down.
    cluster.rest(f"/jobs/{job_id}?mode=cancel", method="PATCH")
    wait_for(lambda: cluster.rest(f"/jobs/{job_id}")["state"] == "CANCELED", 60, "the cancel")
    publish(kafka, EVENTS, 50, int(time.time() * 1000))
    cancelled = status(cluster, "--json", **sources)
    assert cancelled.returncode == 1, cancelled.stdout + cancelled.stderr
    out = as_json(cancelled)
    assert out["reasons"] == [f"job {JOB} ({job_id}) is CANCELED, not RUNNING"]
    assert out["kafka"]["total_lag"] == 50
    text = status(cluster, **sources)
    assert text.returncode == 1
    assert text.stdout.splitlines()[:2] == [
        "status        DEGRADED",
        f"  - job {JOB} ({job_id}) is CANCELED, not RUNNING",
    ]

    # A database the job does not write is a mistake in the command, not a health problem.
    assert_one_line_error(
        status(cluster, pg_dsn=pg_server.dsn("postgres")), "schema version 0", "db migrate"
    )

    # PostgreSQL down.
    pg_server.stop()
    try:
        down = status(cluster, pg_dsn=pg_dsn)
    finally:
        pg_server.start()
    assert down.returncode == 1, down.stdout + down.stderr
    assert f"  - PostgreSQL: {pg_dsn} does not answer" in down.stdout
    assert "rows          unavailable (PostgreSQL)" in down.stdout

    # Neither the JobManager nor Kafka answers.
    cluster.stop()
    dead = f"127.0.0.1:{free_port()}"
    gone = status(cluster, "--json", bootstrap=dead)
    assert gone.returncode == 1, gone.stdout + gone.stderr
    out = as_json(gone)
    assert sorted(out["unavailable"]) == ["JobManager", "Kafka"]
    assert out["reasons"] == [
        f"JobManager: {out['unavailable']['JobManager']}",
        f"Kafka: {dead} does not answer (within 5 s)",
    ]
    assert f"127.0.0.1:{cluster.rest_port} does not answer" in out["unavailable"]["JobManager"]
