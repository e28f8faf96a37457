"""Crashes, restarts and rescaling on a real multi-process Flink cluster (a JobManager and two
TaskManagers started by `profilestream cluster`), with a steady stream of events through the real
broker into the embedded PostgreSQL.

After every disruption the stream is drained and checked the way a user would:
`verify` (the offline recomputation) finds 0 mismatches and every dead letter once, and a poller
that sampled PostgreSQL throughout never saw a profile's (epoch, version) go down.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from flink_jobs.cli.data import print_report, verify
from flink_jobs.config import DEFAULT_MODEL_DIR, PROJECT_ROOT, ClusterSettings, JobConfig
from flink_jobs.io.producer import EventPublisher, ensure_topic
from flink_jobs.ops.cluster import LocalCluster, latest_checkpoint, stop_with_savepoint
from flink_jobs.ops.services import EmbeddedPostgres, free_port
from schemas.profilestream.events.v1 import user_event_pb2 as pb
from tests.support.models import tiny_model
from tests.support.prometheus import Sample, read_metric_names, total
from tests.support.prometheus import scrape as scrape_url
from udfs import events as ev
from udfs.events import make_message
from udfs.metrics import BY_NAME, EXPORTED_NAMES
from udfs.params import ProfileParams
from udfs.pseudonym import Pseudonymiser, load_key
from udfs.sources import SyntheticSpec, synthetic_events, write_delimited

pytestmark = [pytest.mark.flink, pytest.mark.integration, pytest.mark.slow]
PSEUDONYM = Pseudonymiser(load_key())  # the key conftest put in the environment
CLI = str(Path(sys.executable).parent / "profilestream")
RATE = 400  # events per second


class Stream:
    """Publishes synthetic events (and a few malformed messages) at a steady rate in a thread,
    remembering every message in order."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.messages = [
            m.SerializeToString()
            for m in synthetic_events(SyntheticSpec(60_000, 2_000, seed=5, days=20))
        ]
        self.publisher = EventPublisher(bootstrap, topic)
        self.sent: list[bytes] = []
        self.last_ts = 0
        self.running = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set() and i < len(self.messages):
            if not self.running.wait(0.1):
                continue
            start = time.monotonic()
            for _ in range(RATE // 10):
                if i >= len(self.messages):
                    break
                raw = self.messages[i]
                if i % 997 == 500:  # now and then a message that breaks the contract
                    bad = b"\xff\xfe not a UserEvent %d" % i
                    self.publisher.publish_raw(b"bad", bad, self.last_ts)
                    self.sent.append(bad)
                user, self.last_ts = _key_time(raw)
                self.publisher.publish_raw(user, raw, self.last_ts)
                self.sent.append(raw)
                i += 1
            self.publisher._producer.poll(0)
            time.sleep(max(0.0, 0.1 - (time.monotonic() - start)))
        self.publisher.flush()

    def pause(self) -> int:
        self.running.clear()
        time.sleep(0.3)
        report = self.publisher.flush()
        # Only delivered messages can be expected downstream: a broker failure is not the job's.
        assert report.failed == 0, f"the broker failed {report.failed} deliveries: {report.errors}"
        return len(self.sent)

    def close(self) -> None:
        self.stop.set()
        self.running.set()
        self.thread.join(10)


def _key_time(raw: bytes) -> tuple[bytes, int]:
    from udfs.events import decode_event

    event = decode_event(raw, 2**62)
    return event.user_id.encode(), event.event_time_ms


class Poller:
    """Samples every profile's (epoch, version) and records any that went down."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.seen: dict[str, tuple[int, int]] = {}
        self.backwards: list[tuple[str, tuple[int, int], tuple[int, int]]] = []
        self.samples = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn = psycopg2.connect(self.dsn, connect_timeout=2)
                with conn.cursor() as cur:
                    cur.execute(
                        "SELECT user_id, profile_epoch_ms, profile_version FROM user_profiles"
                    )
                    rows = cur.fetchall()
                conn.close()
            except psycopg2.Error:
                time.sleep(0.5)  # PostgreSQL is down on purpose in one scenario
                continue
            for user, epoch, version in rows:
                before = self.seen.get(user)
                if before is not None and (epoch, version) < before:
                    self.backwards.append((user, before, (epoch, version)))
                self.seen[user] = (epoch, version)
            self.samples += 1
            time.sleep(0.2)


def rows_updated_since(dsn: str, since: float) -> int:
    conn = psycopg2.connect(dsn, connect_timeout=2)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM user_profiles WHERE updated_at > to_timestamp(%s)", (since,)
        )
        (n,) = cur.fetchone()
    conn.close()
    return int(n)


def wait_for(condition: object, timeout_s: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            if condition():  # type: ignore[operator]
                return time.monotonic() - start
        except (psycopg2.Error, OSError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    # Enough retained checkpoints that one from before an event can still be restored later.
    c = LocalCluster(
        home=tmp_path / "cluster",
        settings=ClusterSettings(
            rest_port=free_port(), rpc_port=free_port(), retained_checkpoints=100
        ),
    )
    c.start(taskmanagers=2)
    yield c
    c.stop()


def drain_and_verify(
    stream: Stream, dsn: str, log: Path, topic: str, poller: Poller | None
) -> None:
    sent = stream.pause()
    write_delimited(log, stream.sent[:sent])

    def consistent() -> bool:
        report = verify(
            "proto", log, dsn, DEFAULT_MODEL_DIR, ProfileParams(), PSEUDONYM, topic=topic
        )
        return report.ok

    try:
        wait_for(consistent, 120, "PostgreSQL to match the offline recomputation")
    finally:
        report = verify(
            "proto", log, dsn, DEFAULT_MODEL_DIR, ProfileParams(), PSEUDONYM, topic=topic
        )
        print_report(report, examples=10)
    assert report.ok and not report.mismatches and not report.dead_letter_problems
    assert report.expected.invalid_messages > 0  # dead letters were part of it
    assert poller is None or poller.backwards == []


def submit(cluster: LocalCluster, kafka: str, dsn: str, topic: str, **kw: object) -> str:
    config = JobConfig(kafka_bootstrap=kafka, pg_dsn=dsn, topic=topic, checkpoint_interval_ms=2000)
    return cluster.submit(config.to_args(), **kw)  # type: ignore[arg-type]


def job_state(cluster: LocalCluster, job_id: str) -> str:
    return str(cluster.rest(f"/jobs/{job_id}")["state"])


def start_streaming(cluster: LocalCluster, kafka: str, dsn: str, topic: str) -> tuple[Stream, str]:
    """A topic, a steady stream into it, and the job on the cluster writing its first rows."""
    ensure_topic(kafka, topic, partitions=2)
    stream = Stream(kafka, topic)
    try:
        job = submit(cluster, kafka, dsn, topic)
        stream.running.set()
        wait_for(lambda: rows_updated_since(dsn, 0) > 50, 90, "the first rows")
    except BaseException:
        stream.close()
        raise
    return stream, job


def test_crashes_restarts_and_rescaling(
    cluster: LocalCluster, kafka: str, pg_dsn: str, pg_server: EmbeddedPostgres, tmp_path: Path
) -> None:
    topic = "cluster-events"
    log = tmp_path / "sent.pb"
    poller = Poller(pg_dsn)
    stream, job = start_streaming(cluster, kafka, pg_dsn, topic)
    try:
        # (a) kill -9 the TaskManager running the job, twice; a fresh one replaces it.
        recoveries = []
        for _ in range(2):
            time.sleep(4)
            pid = cluster.busy_taskmanager_pid()
            assert pid is not None
            killed_at = time.time()
            cluster.kill_taskmanager(pid)
            cluster.add_taskmanager()
            recoveries.append(
                wait_for(
                    lambda t=killed_at: (
                        rows_updated_since(pg_dsn, t + 3) > 0
                        and job_state(cluster, job) == "RUNNING"
                    ),
                    120,
                    "recovery after the kill",
                )
            )
        drain_and_verify(stream, pg_dsn, log, topic, poller)
        print(f"recovery after TaskManager kill -9: {[round(r, 1) for r in recoveries]} s")

        # (b) PostgreSQL down for 20 s mid-stream.
        stream.running.set()
        time.sleep(4)
        pg_server.stop()
        time.sleep(20)
        pg_server.start()
        drain_and_verify(stream, pg_dsn, log, topic, poller)

        # (c) cancel, then resubmit from the last retained checkpoint.
        stream.running.set()
        time.sleep(5)
        cluster.rest(f"/jobs/{job}?mode=cancel", method="PATCH")
        wait_for(lambda: job_state(cluster, job) == "CANCELED", 60, "the cancel")
        checkpoint = latest_checkpoint(cluster, job)
        assert checkpoint is not None
        job = submit(cluster, kafka, pg_dsn, topic, from_savepoint=checkpoint)
        drain_and_verify(stream, pg_dsn, log, topic, poller)

        assert poller.samples > 50
    finally:
        stream.close()
        poller.stop.set()


def test_savepoint_then_resume_at_parallelism_two(
    cluster: LocalCluster, kafka: str, pg_dsn: str, tmp_path: Path
) -> None:
    topic = "rescale-events"
    log = tmp_path / "sent.pb"
    poller = Poller(pg_dsn)
    stream, job = start_streaming(cluster, kafka, pg_dsn, topic)
    try:
        time.sleep(6)
        savepoint = stop_with_savepoint(cluster, job)
        job = submit(cluster, kafka, pg_dsn, topic, from_savepoint=savepoint, parallelism=2)
        wait_for(lambda: job_state(cluster, job) == "RUNNING", 60, "the rescaled job")
        vertices = cluster.rest(f"/jobs/{job}")["vertices"]
        assert max(v["parallelism"] for v in vertices) == 2
        time.sleep(8)
        drain_and_verify(stream, pg_dsn, log, topic, poller)
    finally:
        stream.close()
        poller.stop.set()


def test_cluster_commands(tmp_path: Path) -> None:

    env = {**os.environ, "PROFILESTREAM_STATE_DIR": str(tmp_path)}
    port, rpc = str(free_port()), str(free_port())

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CLI, *args],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
            stdin=subprocess.DEVNULL,
        )

    started = cli("cluster", "start", "--taskmanagers", "2", "--rest-port", port, "--rpc-port", rpc)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "2 TaskManager(s), 2 slots" in started.stdout
        # Where each process serves Prometheus metrics, and that it does.
        urls = re.findall(r"(?:jobmanager|taskmanager) +pid \d+ +(http://\S+)", started.stdout)
        assert len(urls) == 3, started.stdout
        for url in urls:
            assert scrape_url(url)[0], url
        again = cli("cluster", "start", "--rest-port", port, "--rpc-port", rpc)
        assert again.returncode == 2 and "already answers" in again.stderr
        status = cli("cluster", "status", "--rest-port", port)
        assert status.returncode == 0 and "2 TaskManager(s), 2/2 slots free" in status.stdout
        assert re.findall(r"http://\S+/metrics", status.stdout) == urls
    finally:
        stopped = cli("cluster", "stop", "--rest-port", port)
    assert stopped.returncode == 0
    assert cli("cluster", "status", "--rest-port", port).returncode == 1


def rows_naming(dsn: str, user: str) -> dict[str, int]:
    pseudonym = PSEUDONYM(user)
    conn = psycopg2.connect(dsn)
    out = {}
    with conn.cursor() as cur:
        for table, where in (
            ("user_profiles", "user_id = %s OR user_pseudonym = %s"),
            ("user_profile_history", "user_id = %s OR user_pseudonym = %s"),
            ("dead_letter_events", "user_id = %s OR position(convert_to(%s, 'UTF8') IN raw) > 0"),
        ):
            cur.execute(
                f"SELECT count(*) FROM {table} WHERE {where}",
                (user, pseudonym if "pseudonym" in where else user),
            )
            out[table] = cur.fetchone()[0]
    conn.close()
    return out


def test_erasure_holds_through_a_restore_from_before_it(
    cluster: LocalCluster, kafka: str, pg_dsn: str, tmp_path: Path
) -> None:
    from udfs import events as ev
    from udfs.events import make_message

    topic = "erase-events"
    stream, job = start_streaming(cluster, kafka, pg_dsn, topic)
    try:
        time.sleep(3)
        stream.pause()
        conn = psycopg2.connect(pg_dsn)
        with conn.cursor() as cur:
            cur.execute("SELECT user_id FROM user_profiles ORDER BY event_count DESC LIMIT 1")
            (victim,) = cur.fetchone()
        conn.close()
        # A bad message that names the victim: its dead letter carries the identity too.
        bad = make_message(
            event_id="bad-victim",
            user_id=victim,
            event_type=ev.VIEW,
            event_time_ms=stream.last_ts,
            item_id="i",
            quantity=0,
        )
        stream.publisher.publish_raw(victim.encode(), bad.SerializeToString(), stream.last_ts)
        stream.publisher.flush()
        stream.sent.append(bad.SerializeToString())  # the stream is paused: order is kept
        wait_for(
            lambda: rows_naming(pg_dsn, victim)["dead_letter_events"] == 1,
            60,
            "the victim's dead letter",
        )
        time.sleep(5)  # a checkpoint that holds the victim's state
        before = latest_checkpoint(cluster, job)
        assert before is not None
        assert rows_naming(pg_dsn, victim)["user_profiles"] == 1

        erase_ms = stream.last_ts
        erase = subprocess.Popen(
            [
                CLI,
                "erase",
                victim,
                "--bootstrap",
                kafka,
                "--topic",
                topic,
                "--pg-dsn",
                pg_dsn,
                "--event-time-ms",
                str(erase_ms),
                "--wait-s",
                "90",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        assert erase.stdout is not None
        first = erase.stdout.readline()
        assert "erase request published" in first, first + erase.stdout.read()
        # For the offline recomputation: an ERASE at the same place (its event_id is the CLI's).
        stream.sent.append(
            make_message(
                event_id="erase", user_id=victim, event_type=ev.ERASE, event_time_ms=erase_ms
            ).SerializeToString()
        )
        # The victim comes back while the command still waits for the job: a new profile from
        # the new events only, which the command's second, time-bounded deletion must keep.
        with EventPublisher(kafka, topic) as pub:
            for j in range(3):
                msg = make_message(
                    event_id=f"after-erase-{j}",
                    user_id=victim,
                    event_type=ev.VIEW,
                    event_time_ms=erase_ms + 1000 + j,
                    item_id=f"new-{j}",
                )
                pub.publish(msg)
                stream.sent.append(msg.SerializeToString())
        out = first + erase.communicate(timeout=180)[0]
        assert erase.returncode == 0, out
        assert "job checkpointed past the request" in out
        counts = rows_naming(pg_dsn, victim)
        assert counts["dead_letter_events"] == 0 and counts["user_profiles"] <= 1
        conn = psycopg2.connect(pg_dsn)
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM user_profile_history WHERE user_id = %s "
                "AND profile_epoch_ms <= %s",
                (victim, erase_ms),
            )
            assert cur.fetchone() == (0,)
            cur.execute(
                "SELECT count(*) FROM user_profiles WHERE user_id = %s AND profile_epoch_ms <= %s",
                (victim, erase_ms),
            )
            assert cur.fetchone() == (0,)
        conn.close()
        stream.running.set()
        time.sleep(3)
        log = tmp_path / "sent.pb"
        drain_and_verify(stream, pg_dsn, log, topic, None)
        conn = psycopg2.connect(pg_dsn)
        with conn.cursor() as cur:
            cur.execute("SELECT profile_epoch_ms FROM user_profiles WHERE user_id = %s", (victim,))
            (epoch,) = cur.fetchone()
            cur.execute(
                "SELECT min(as_of) >= to_timestamp(%s / 1000.0) FROM user_profile_history "
                "WHERE user_id = %s",
                (erase_ms, victim),
            )
            assert cur.fetchone() == (True,)
        conn.close()
        assert epoch > erase_ms
        assert rows_naming(pg_dsn, victim)["dead_letter_events"] == 0

        # Restore from the checkpoint taken before the erasure: the replay erases again, and
        # nothing from before the erasure comes back.
        cluster.rest(f"/jobs/{job}?mode=cancel", method="PATCH")
        wait_for(lambda: job_state(cluster, job) == "CANCELED", 60, "the cancel")
        job = submit(cluster, kafka, pg_dsn, topic, from_savepoint=before)
        stream.running.set()
        time.sleep(5)
        drain_and_verify(stream, pg_dsn, log, topic, None)
        conn = psycopg2.connect(pg_dsn)
        with conn.cursor() as cur:
            cur.execute("SELECT profile_epoch_ms FROM user_profiles WHERE user_id = %s", (victim,))
            assert cur.fetchone() == (epoch,)
            cur.execute(
                "SELECT count(*) FROM user_profile_history WHERE user_id = %s "
                "AND as_of < to_timestamp(%s / 1000.0)",
                (victim, erase_ms),
            )
            assert cur.fetchone() == (0,)
        conn.close()
        assert rows_naming(pg_dsn, victim)["dead_letter_events"] == 0
    finally:
        stream.close()


def test_secrets_never_leak(
    cluster: LocalCluster, kafka: str, pg_dsn: str, pg_server: EmbeddedPostgres, tmp_path: Path
) -> None:
    """Run the job with a password in the DSN and the pseudonym key set, on the cluster (`submit`)
    and locally (`run`), then search everything a user or operator can see for both secrets:
    command output, error messages, every log file, and the job's configuration and plan as the
    REST API shows them."""
    from tests.support.keys import TEST_PSEUDONYM_KEY

    password = "S3cret-PG-pw-" + "7" * 8
    assert pg_dsn.startswith("postgresql://postgres@")
    secret_dsn = pg_dsn.replace("postgresql://postgres@", f"postgresql://postgres:{password}@")
    secrets = (password, TEST_PSEUDONYM_KEY)
    topic = "secret-events"
    ensure_topic(kafka, topic, partitions=2)
    with EventPublisher(kafka, topic) as pub:
        for m in synthetic_events(SyntheticSpec(300, 20, seed=3)):
            pub.publish(m)
    offsets = pub.report.stopping_offsets(2)
    seen: list[tuple[str, str]] = []  # (where, text)
    env = {**os.environ, "PG_DSN": secret_dsn, "PROFILESTREAM_STATE_DIR": str(tmp_path)}

    def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [CLI, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        seen.append((f"profilestream {args[0]}", proc.stdout + proc.stderr))
        return proc

    submitted = cli(
        "submit",
        "--bootstrap",
        kafka,
        "--topic",
        topic,
        "--rest-port",
        str(cluster.rest_port),
        "--checkpoint-interval-ms",
        "1000",
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job = submitted.stdout.split()[-1]
    wait_for(lambda: rows_updated_since(pg_dsn, 0) >= 20, 120, "the cluster job's rows")
    for path in (
        f"/jobs/{job}",
        f"/jobs/{job}/config",
        f"/jobs/{job}/plan",
        "/jobmanager/config",
        "/jobmanager/environment",
        "/taskmanagers",
    ):
        seen.append((f"REST {path}", json.dumps(cluster.rest(path))))
    cluster.rest(f"/jobs/{job}?mode=cancel", method="PATCH")
    wait_for(lambda: job_state(cluster, job) == "CANCELED", 60, "the cancel")

    # The local MiniCluster path, and mistakes whose messages name the database.
    ran = cli(
        "run",
        "--bootstrap",
        kafka,
        "--topic",
        topic,
        "--checkpoint-interval-ms",
        "1000",
        "--stopping-offsets",
        ",".join(f"{p}:{o}" for p, o in offsets.items()),
        "--state-dir",
        str(tmp_path / "local"),
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    wrong_port = secret_dsn.replace(f":{pg_server.port}/", ":1/")
    env["PG_DSN"] = wrong_port
    assert cli("db", "migrate").returncode == 2
    assert cli("run", "--bootstrap", kafka, "--topic", topic).returncode == 2
    assert (
        cli(
            "verify",
            "--format",
            "synthetic",
            "--synthetic-events",
            "10",
            "--synthetic-users",
            "5",
            timeout=60,
        ).returncode
        != 0
    )

    logs = [*cluster.log_dir.rglob("*"), *tmp_path.rglob("*.log")]
    pyflink_logs = Path(__import__("pyflink").__file__).parent / "log"
    logs += list(pyflink_logs.glob("*")) if pyflink_logs.exists() else []
    for path in logs:
        if path.is_file():
            seen.append((str(path), path.read_text(encoding="utf-8", errors="replace")))
    assert len(seen) > 10
    leaks = [(where, s) for where, text in seen for s in secrets if s in text]
    assert leaks == [], [(w, "password" if s == password else "pseudonym key") for w, s in leaks]
    # The runs really used the secrets: the rows carry the key's pseudonyms.
    conn = psycopg2.connect(pg_dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT user_id, user_pseudonym FROM user_profiles LIMIT 5")
        rows = cur.fetchall()
    conn.close()
    assert rows and all(p == PSEUDONYM(u) for u, p in rows)


# ---------------------------------------------------------------------------------------------
# Prometheus metrics
# ---------------------------------------------------------------------------------------------
METRIC_NAMES_FILE = PROJECT_ROOT / "docker" / "grafana" / "metric-names.txt"


def job_metric(samples: list[Sample], name: str, **labels: str) -> float:
    """The job's metric `name` (udfs.metrics.METRICS) summed over its series matching `labels`."""
    return total(samples, BY_NAME[name].prometheus_name, **labels) or 0.0


def test_prometheus_metrics_move_with_the_stream(
    cluster: LocalCluster, kafka: str, pg_dsn: str, tmp_path: Path
) -> None:
    """Scrape the cluster's Prometheus endpoints (where `cluster status` says they are) while the
    job runs: the job's metrics move by exactly what goes in (valid events, undecodable messages,
    late events, a duplicate, an erasure), the lag is there, the model serving moves with a
    published model, and every name the Grafana dashboard may use
    (docker/grafana/metric-names.txt) is served."""
    topic = "metrics-events"
    ensure_topic(kafka, topic, partitions=2)
    job = submit(cluster, kafka, pg_dsn, topic)
    endpoints = cluster.metrics_endpoints()
    assert sorted(e.process for e in endpoints) == ["jobmanager", "taskmanager", "taskmanager"]
    assert all(e.url for e in endpoints), endpoints
    seen: dict[str, str] = {}  # every metric name served, and its type

    def scrape(process: str = "taskmanager") -> list[Sample]:
        samples = []
        for e in endpoints:
            if e.process == process and e.url:
                got, types = scrape_url(e.url)
                samples += got
                seen.update({s.name: types.get(s.name, "") for s in got})
        return samples

    def metric(name: str, **labels: str) -> float:
        return job_metric(scrape(), name, job_id=job, **labels)

    # The operator is up: its model is serving, nothing counted yet.
    wait_for(lambda: metric("serving", model_version="taobao-v2") == 1, 120, "the job")
    assert metric("events_folded") == 0 and metric("dead_letters") == 0

    # 1. Valid events (one day, ending an hour ago), then the input goes quiet: what was counted
    #    reaches Flink without further events (the metrics' processing-time timer).
    sent_ms = int(time.time() * 1000)
    start_ms = sent_ms - 25 * 3600 * 1000
    events = synthetic_events(SyntheticSpec(300, 30, seed=11, start_ms=start_ms, days=1))
    newest_ms = max(e.event_time.seconds * 1000 + e.event_time.nanos // 10**6 for e in events)
    with EventPublisher(kafka, topic) as pub:
        for e in events:
            pub.publish(e)
    wait_for(lambda: metric("events_folded") == 300, 120, "300 events folded")
    assert metric("profile_rows_sent") == 300  # one row per event (no timer is due in a day)
    assert metric("scoring_samples") >= 300 // 64 and metric("scoring_sampled_ns") > 0
    assert metric("clustering_samples") >= 300 // 64 and metric("clustering_sampled_ns") > 0
    # Wall clock minus the newest event time folded, at a flush after that event was sent.
    lag = metric("event_time_lag_ms")
    assert sent_ms - newest_ms <= lag <= time.time() * 1000 - newest_ms
    wait_for(lambda: rows_updated_since(pg_dsn, 0) == 30, 60, "30 profiles in PostgreSQL")

    # 2. What an operator must see: 5 undecodable messages, 3 late events, a duplicate, an erasure.
    by_user: dict[str, list[pb.UserEvent]] = {}
    for e in events:
        by_user.setdefault(e.user_id, []).append(e)
    users = sorted(by_user)
    with EventPublisher(kafka, topic, validate=False) as pub:
        for i in range(5):
            pub.publish_raw(b"bad", b"\xff\xfe not a UserEvent %d" % i, newest_ms)
        for user in users[:3]:
            last = by_user[user][-1]
            late = make_message(
                event_id=f"late-{user}",
                user_id=user,
                event_type=ev.VIEW,
                event_time_ms=last.event_time.seconds * 1000 - 3600 * 1000,
                item_id="i-late",
            )
            pub.publish(late)
        pub.publish(by_user[users[3]][-1])  # sent again: a duplicate
        erase_ms = by_user[users[4]][-1].event_time.seconds * 1000 + 1000
        pub.publish(
            make_message(
                event_id="erase", user_id=users[4], event_type=ev.ERASE, event_time_ms=erase_ms
            )
        )

    expected = {
        ("dead_letters", "decode_error"): 5,
        ("dead_letters", "late_event"): 3,
        ("events_duplicate", ""): 1,
        ("users_erased", ""): 1,
    }

    def counts() -> dict[tuple[str, str], float]:
        samples = scrape()
        return {
            (name, reason): job_metric(
                samples, name, job_id=job, **({"reason": reason} if reason else {})
            )
            for name, reason in expected
        }

    try:
        wait_for(lambda: counts() == expected, 60, f"the job's metrics to read {expected}")
    finally:
        print(counts())
    assert metric("dead_letters") == 8 and metric("events_late") == 3
    assert metric("events_folded") == 300  # none of them was folded
    assert metric("profile_rows_sent") == 301  # the erasure's delete
    wait_for(lambda: rows_updated_since(pg_dsn, 0) == 29, 60, "the erased profile gone")
    conn = psycopg2.connect(pg_dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT reason, count(*) FROM dead_letter_events GROUP BY reason")
        assert dict(cur.fetchall()) == {"decode_error": 5, "late_event": 3}
    conn.close()

    # 3. A model switch (the model registry) moves the serving series' 1 to the new version. The
    #    job polls the registry on an event once its poll interval has passed: keep events coming.
    published = subprocess.run(
        [CLI, "model", "publish", str(tiny_model(tmp_path / "tiny-v2", "tiny-v2")), "--pg-dsn",
         pg_dsn],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert published.returncode == 0, published.stdout + published.stderr
    more = iter(synthetic_events(SyntheticSpec(600, 60, seed=12, start_ms=start_ms, days=1)))
    with EventPublisher(kafka, topic) as pub:

        def switched() -> bool:
            pub.publish(next(more))
            pub.flush()
            return (metric("serving", model_version="tiny-v2"), metric("serving")) == (1, 1)

        wait_for(switched, 90, "the serving series to move to tiny-v2")
    assert metric("serving", model_version="taobao-v2") == 0

    # Every name: the job's own, and those the dashboard may use (Kafka, checkpoints), once
    # a checkpoint has completed.
    checkpoints = "flink_jobmanager_job_numberOfCompletedCheckpoints"
    wait_for(lambda: (total(scrape("jobmanager"), checkpoints) or 0) > 0, 60, "a checkpoint")
    scrape()
    record = tmp_path / "metric-names-seen.txt"
    record.write_text("".join(f"{n} {t}\n" for n, t in sorted(seen.items())), encoding="utf-8")
    print(f"{len(seen)} metric names seen, written to {record}")
    missing = [n for n in EXPORTED_NAMES if n not in seen]
    assert missing == [], missing
    # Flink's reporter exports counters as Prometheus gauges (the dashboard uses rate() on them).
    assert {seen[n] for n in EXPORTED_NAMES} == {"gauge"}
    committed = read_metric_names(METRIC_NAMES_FILE)
    assert sorted(committed - set(seen)) == [], f"in {METRIC_NAMES_FILE.name}, not served: {record}"
