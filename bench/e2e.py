"""`make bench`: the job's throughput against its plumbing floor and the plain-Python ceiling,
measured in one run, plus freshness under load and the effect of a million users.

    make bench                                  # everything (about 20 minutes on 2 cores)
    python -m bench.e2e --part floor --part job --part ceiling     # one or more parts alone
    python -m bench.e2e --part ablation         # the job's per-event cost, step by step

Parts (each Flink run is a fresh process and JVM, parallelism 1, on the local broker and an
embedded PostgreSQL; bench/runner.py explains how throughput is measured):
- floor     the same Kafka source, key_by and decoding as the job; a keyed function that reads
            no state and emits nothing (bench/stages.py)
- job       the production job (flink_jobs.job.run.run_job) end to end into PostgreSQL
- ceiling   the same udfs code over the same bytes in a plain Python loop: decode, then the
            job's engine with its write-through cache and a dict for state (udfs.host)
- ablation  floor -> + state write -> + state read -> + profile update -> + features -> + scoring
            (-> the job); and floor + one emitted row of the job's row type, nothing else
            (what PyFlink's output path costs per record)
- freshness the job running unbounded under a steady load at half its measured rate for 60 s,
            with the throughput runs' share of first events per user spread evenly (a user's
            first event costs more: state miss, reasons, pseudonym, timer): send time -> row in
            PostgreSQL (the row's commit time), p50 and p99, split at the sink's transaction,
            and the broker leg alone
- scale     the job at 10,000 and at 1,000,000 users, 2 events each on average: throughput,
            state bytes per user, checkpoint size, RocksDB memory settings

Every result goes to bench/results/<timestamp>.json. A benchmark, not a test: the machine is
shared and noisy, so compare the ratios of one run, and repeat (`--repeat`) before believing a
difference of less than 20 %.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench.cpu import postgres_cpu_seconds, process_cpu_seconds
from flink_jobs.config import DEFAULT_MODEL_DIR, DEFAULT_SEGMENTS_DIR, JobConfig
from flink_jobs.io import db
from flink_jobs.io.db import pg_counts
from flink_jobs.io.producer import DEFAULT_LINGER_MS, EventPublisher, PublishReport, ensure_topic
from flink_jobs.ops.runtime import install_connector_jars, install_java
from flink_jobs.ops.services import (
    TERMINATED,
    EmbeddedPostgres,
    LocalBroker,
    exit_on_sigterm,
    free_port,
    raised_by_sigterm,
)
from udfs.cache import ProfileCache
from udfs.clusters import load_segmentation
from udfs.codec import encode_profile
from udfs.consistency import scored_engine
from udfs.engine import ProfileEngine
from udfs.events import VIEW as EVENT_VIEW
from udfs.events import decode_event, make_message
from udfs.host import MemoryHost, tune_gc
from udfs.params import ProfileParams
from udfs.pseudonym import Pseudonymiser, ensure_key_file, load_key
from udfs.scoring import Scorer
from udfs.sources import SyntheticSpec, synthetic_events

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = ("floor", "job", "ceiling", "ablation", "freshness", "scale")
DEFAULT_PARTS = ("floor", "job", "ceiling", "freshness", "scale")
ABLATION = ("emit", "write", "state", "update", "features", "scoring")
PARTITIONS = 2


def say(text: str) -> None:
    print(text, flush=True)


# ---------------------------------------------------------------------------------------------
# The plain-Python ceiling
# ---------------------------------------------------------------------------------------------
def plain_host(model_dir: Path, params: ProfileParams) -> tuple[Scorer, MemoryHost]:
    """The job's engine without Flink, as the job's operator builds it (the model, the
    pseudonym key from the environment, the default segmentation), with its write-through cache,
    a dict for state and a table for timers (`udfs.host.MemoryHost`); the caller closes the
    scorer."""
    scorer = Scorer(model_dir)
    engine = scored_engine(
        scorer, Pseudonymiser(load_key()), params, load_segmentation(DEFAULT_SEGMENTS_DIR)
    )
    return scorer, MemoryHost(engine, ProfileCache())


def plain_python(raws: list[bytes], model_dir: Path, params: ProfileParams) -> dict[str, float]:
    """The job's per-event work without Flink: decode, then the job's engine (`plain_host`):
    the same features, segments, clusters, scoring, rows and state bytes."""
    scorer, host = plain_host(model_dir, params)
    tune_gc()  # what the job's operator does
    now_ms = int(time.time() * 1000)
    rows = 0
    start_cpu, start = time.process_time(), time.perf_counter()
    for raw in raws:
        if host.on_event(decode_event(raw, now_ms), "bench", now_ms).row is not None:
            rows += 1
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    scorer.close()
    sizes = [len(b) for b in host.states.values()]
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "events_per_s": len(raws) / wall,
        "us_per_event": wall / len(raws) * 1e6,
        "state_bytes_per_user": sum(sizes) / len(sizes) if sizes else 0.0,
        "state_bytes_max": max(sizes, default=0),
        "rows": rows,
        "rows_with_new_reasons": scorer.explain_calls,
        # of those, answered by the scorer's memo of explanations (udfs.scoring.EXPLAIN_MEMO)
        "explain_memo_hits": scorer.explain_memo_hits,
    }


def profile_vectors(raws: list[bytes], params: ProfileParams) -> list[Any]:
    """The model input of the row of each of the first 20,000 events (the job's vectors)."""
    from udfs.features import features_and_vector

    host = MemoryHost(ProfileEngine(params, lambda v: 0.0, "bench", str))
    vectors = []
    for raw in raws[:20_000]:
        step = host.on_event(decode_event(raw, 2**62), "bench", 0)
        if step.profile is not None:
            p = step.profile
            vectors.append(features_and_vector(p, p.last_ms, params)[1])
    return vectors


def scoring_standalone(model_dir: Path, vectors: list[Any]) -> float:
    """Microseconds per LightGBM single-row score outside the job (the same rows)."""
    scorer = Scorer(model_dir)
    start = time.perf_counter()
    for v in vectors:
        scorer.score(v)
    per = (time.perf_counter() - start) / max(1, len(vectors)) * 1e6
    scorer.close()
    return per


def cluster_standalone(segments_dir: Path, vectors: list[Any]) -> float:
    """Microseconds per cluster assignment outside the job (the same rows), best of 5."""
    assign = load_segmentation(segments_dir).assign
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for v in vectors:
            assign(v)
        best = min(best, time.perf_counter() - start)
    return best / max(1, len(vectors)) * 1e6


# ---------------------------------------------------------------------------------------------
# Services and Flink runs
# ---------------------------------------------------------------------------------------------
@dataclass
class Bench:
    work: Path
    pg: EmbeddedPostgres
    bootstrap: str
    parallelism: int
    runs: int = 0
    flink_settings: dict[str, str] = field(default_factory=dict)  # --flink-setting, every run
    job_settings: dict[str, int] = field(default_factory=dict)  # --job-setting, the job's runs
    # Keep every run's RocksDB state, checkpoints and database (--keep-work). By default each is
    # removed once its figures are read: a full bench writes ~5 GB, the million-user run most.
    keep_work: bool = False
    log: list[str] = field(default_factory=list)
    broker_pid: int | None = None  # the local broker's process, for its CPU in freshness runs

    def fresh_database(self) -> str:
        """A new, migrated database for the next run; the previous run's is dropped."""
        if self.runs and not self.keep_work:
            self.pg.database = f"bench{self.runs}"
            self.pg.drop_database()
        self.runs += 1
        name = f"bench{self.runs}"
        self.pg.database = name
        self.pg.recreate_database()
        dsn = self.pg.dsn(name)
        db.migrate(dsn)
        return dsn

    def produce(self, topic: str, raws: list[bytes]) -> dict[int, int]:
        ensure_topic(self.bootstrap, topic, partitions=PARTITIONS)
        publisher = EventPublisher(self.bootstrap, topic, validate=False)
        for raw in raws:
            event = decode_event(raw, 2**62)
            publisher.publish_raw(event.user_id.encode("utf-8"), raw, event.event_time_ms)
        report: PublishReport = publisher.flush(timeout_s=600)
        if report.failed:
            raise SystemExit(f"the broker refused {report.failed} messages: {report.errors[:3]}")
        return report.stopping_offsets(PARTITIONS)

    def runner(self, variant: str, dsn: str, topic: str, events: int,
               offsets: dict[int, int] | None, state: str,
               **extra: Any) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """`python -m bench.runner` for one Flink run in a fresh process and JVM."""
        spec = {
            "variant": variant,
            "bootstrap": self.bootstrap,
            "pg_dsn": dsn,
            "topic": topic,
            "state_dir": str(self.work / state),
            "stopping_offsets": offsets,
            "rest_port": free_port(),
            "events": events,
            "parallelism": self.parallelism,
            "flink_settings": self.flink_settings,
            **({"config": self.job_settings} if variant == "job" and self.job_settings else {}),
            **extra,
        }
        try:
            return subprocess.run(
                [sys.executable, "-m", "bench.runner", json.dumps(spec)],
                capture_output=True,
                text=True,
                cwd=Path(__file__).resolve().parent.parent,
            )
        finally:
            if not self.keep_work:
                shutil.rmtree(self.work / state, ignore_errors=True)

    def run(self, variant: str, topic: str, events: int, offsets: dict[int, int] | None,
            **extra: Any) -> dict[str, Any]:  # fmt: skip
        """One Flink run in a fresh process; its JSON result."""
        dsn = self.fresh_database()
        pg_cpu = postgres_cpu_seconds(self.pg.data_dir)
        proc = self.runner(variant, dsn, topic, events, offsets, f"state-{self.runs}", **extra)
        pg_cpu = postgres_cpu_seconds(self.pg.data_dir) - pg_cpu
        lines = proc.stdout.strip().splitlines()
        try:
            result: dict[str, Any] = json.loads(lines[-1])
        except (IndexError, ValueError):
            tail = (proc.stdout + proc.stderr)[-3000:]
            raise SystemExit(
                f"the {variant} run failed (exit {proc.returncode}):\n{tail}"
            ) from None
        result["pg_dsn"] = dsn
        # PostgreSQL's CPU (every backend) over the whole run, start-up included: on a 2-core
        # machine it competes with the job's threads.
        result["postgres_cpu_us_per_event"] = pg_cpu / events * 1e6 if events else 0.0
        if variant == "job" and offsets is not None:
            profiles, folded, dead = pg_counts(dsn)
            result["pg"] = {"profiles": profiles, "events_folded": folded, "dead_letters": dead}
        return result


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"


def thread_summary(r: dict[str, Any]) -> str:
    """A run's CPU per event by thread (and PostgreSQL's), and how the keyed task spent its time."""
    cpu = r.get("cpu_us_per_event") or {}
    threads = ", ".join(f"{k} {v:.0f}" for k, v in cpu.items() if "/" not in k)
    others = sorted(((v, k[6:]) for k, v in cpu.items() if k.startswith("other/")), reverse=True)
    if others:  # the busiest of the "other" threads, by name
        threads += "; other: " + ", ".join(f"{k} {v:.0f}" for v, k in others[:4])
    postgres = r.get("postgres_cpu_us_per_event") or 0.0
    if postgres >= 1:  # the job's runs (the others write nothing)
        threads += f"; postgres {postgres:.0f} (whole run)"
    if "wait/keyed" in cpu:  # ready to run, but the cores were busy with other threads
        threads += f"; keyed waited for a core {cpu['wait/keyed']:.0f}"
    task = r.get("keyed_task_ms_per_s") or {}
    if task:  # Flink's accounting of the keyed task's time, ms per second
        threads += "; keyed task ms/s: " + ", ".join(
            f"{k.removesuffix('TimeMsPerSecond')} {v:.0f}" for k, v in task.items()
        )
    return threads


def _rate(r: dict[str, Any]) -> str:
    return f"{r['events_per_s']:>9,.0f} events/s   (CPU us/event by thread: {thread_summary(r)})"


# ---------------------------------------------------------------------------------------------
# Freshness
# ---------------------------------------------------------------------------------------------
PROBE_EVERY = 20  # every 20th user is a probe: one of its events is timed into PostgreSQL


def freshness(
    bench: Bench,
    rate: float,
    seconds: float,
    new_share: float,
    warmup: float = 30.0,
    linger_ms: int = DEFAULT_LINGER_MS,
) -> dict[str, Any]:
    """The job runs unbounded; a producer sends `rate` events/s for `warmup` + `seconds` with
    event time = send time, and the last `seconds` are measured.

    Every PROBE_EVERY-th user is a probe: in the measured seconds a probe user gets one event and
    none after it, so the row version that holds that event is the row's last. PostgreSQL records
    when each transaction commits (`track_commit_timestamp`, set on the bench's server), and the
    latency of a probe = the commit time of its row's version (the moment the row became
    visible) - send time. The rows are read once after the load: nothing polls PostgreSQL while
    the job runs, so the measurement takes no CPU from the 2-core machine and has no poll
    resolution."""
    topic = f"fresh-{bench.runs}"
    ensure_topic(bench.bootstrap, topic, partitions=PARTITIONS)
    stop_file = bench.work / f"stop-{topic}"
    spec_extra = {"stop_after_s": warmup + seconds + 180, "stop_file": str(stop_file)}
    result: dict[str, Any] = {}
    errors: list[BaseException] = []
    dsn_holder: list[str] = []

    def job() -> None:
        try:
            dsn = bench.fresh_database()
            dsn_holder.append(dsn)
            events = int(rate * (warmup + seconds))
            proc = bench.runner(
                "job", dsn, topic, events, None, f"state-fresh-{bench.runs}", **spec_extra
            )
            result.update(json.loads(proc.stdout.strip().splitlines()[-1]))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    runner = threading.Thread(target=job, daemon=True)
    runner.start()
    while not dsn_holder:
        time.sleep(0.1)
    dsn = dsn_holder[0]
    with closing(db.connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute("SHOW track_commit_timestamp")
        row = cur.fetchone()
        if row is None or row[0] != "on":
            raise SystemExit("freshness needs PostgreSQL's track_commit_timestamp=on")
    publisher = EventPublisher(bench.bootstrap, topic, validate=False, **{"linger.ms": linger_ms})
    probes: dict[str, tuple[int, bool]] = {}  # probe user -> (send time, a user's first event)
    measuring = threading.Event()

    # The users: a `new_share` of the events is a user's first (state miss, reasons, pseudonym,
    # timer: the costly kind), spread evenly over the load; the others come from a user seen
    # before, picked at random, never a probe already timed. The throughput runs have the same
    # share (--events / --users).
    rng = random.Random(7)
    started = 0
    timed: set[int] = set()

    def pick() -> tuple[int, bool]:
        nonlocal started
        while True:
            if started == 0 or rng.random() < new_share:
                started += 1
                return started - 1, True
            index = rng.randrange(started)
            if index not in timed:
                return index, False

    def send(i: int) -> None:
        t = int(time.time() * 1000)
        index, first = pick()
        user = f"f{index:07d}"
        msg = make_message(
            event_id=f"fresh-{i}",
            user_id=user,
            event_type=EVENT_VIEW,
            event_time_ms=t,
            item_id=f"i{i % 997}",
            category_id=f"c{i % 31}",
        )
        publisher.publish_raw(msg.user_id.encode(), msg.SerializeToString(), t)
        if measuring.is_set() and index % PROBE_EVERY == 0:
            timed.add(index)
            probes[user] = (t, first)

    # Warm up: wait until the job writes rows, so start-up is not measured as latency.
    say("  waiting for the job to start ...")
    deadline = time.monotonic() + 180
    i = 0
    while pg_counts(dsn)[0] == 0:
        if errors or time.monotonic() > deadline:
            raise SystemExit(f"the freshness job did not start: {errors[:1]}")
        send(i)
        i += 1
        publisher._producer.poll(0)
        time.sleep(0.2)
    stop = threading.Event()

    # The broker leg alone: a consumer of one of the topic's partitions with the job's source's
    # fetch wait. The local broker answers a fetch that finds no new data only when that wait
    # runs out, so this leg is a floor under the job's freshness here (docs/performance.md).
    broker_leg: list[float] = []
    fetch_wait_ms = bench.job_settings.get(
        "kafka_fetch_max_wait_ms", JobConfig.kafka_fetch_max_wait_ms
    )

    def consume() -> None:
        from confluent_kafka import OFFSET_END, Consumer, TopicPartition

        consumer = Consumer(
            {
                "bootstrap.servers": bench.bootstrap,
                "group.id": f"{topic}-leg",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": fetch_wait_ms,
            }
        )
        consumer.assign([TopicPartition(topic, 0, OFFSET_END)])
        while not stop.is_set():
            for message in consumer.consume(1000, timeout=0.1):
                if message.error() is None and measuring.is_set():
                    broker_leg.append(time.time() * 1000 - message.timestamp()[1])
        consumer.close()

    leg = threading.Thread(target=consume, daemon=True)
    leg.start()
    say(
        f"  steady load: {rate:,.0f} events/s, {warmup:.0f} s unmeasured (the JVM's JIT warm-up),"
        f" then {seconds:.0f} s measured ..."
    )
    start = time.monotonic()
    sent = 0
    # The local broker's CPU in each 10 s of the measured load, in cores: Tansu's fetches cost
    # more as a partition holds more stored batches (docs/performance.md), and this shows it.
    broker_cores: list[float] = []
    broker_mark = (0.0, process_cpu_seconds(bench.broker_pid))
    while (elapsed := time.monotonic() - start) < warmup + seconds:
        if elapsed >= warmup and not measuring.is_set():
            measuring.set()
            broker_mark = (elapsed, process_cpu_seconds(bench.broker_pid))
        if measuring.is_set() and elapsed - broker_mark[0] >= 10.0:
            cpu = process_cpu_seconds(bench.broker_pid)
            broker_cores.append(round((cpu - broker_mark[1]) / (elapsed - broker_mark[0]), 2))
            broker_mark = (elapsed, cpu)
        due = int(elapsed * rate)
        while sent < due:
            send(i)
            i += 1
            sent += 1
        publisher._producer.poll(0)
        time.sleep(0.005)
    measuring.clear()
    publisher.flush()
    stop.set()
    leg.join()

    # The rows: wait (up to 120 s, while it makes progress) for every probe's event to land —
    # a job that fell behind is still working off its backlog — then read the commit times.
    query = (
        "SELECT user_id, last_event_ms,"
        " extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000,"
        " extract(epoch FROM updated_at) * 1000"
        " FROM user_profiles WHERE user_id = ANY(%s)"
    )
    rows: dict[str, tuple[int, float, float]] = {}
    deadline = time.monotonic() + 120
    with closing(db.connect(dsn)) as conn, conn.cursor() as cur:
        while True:
            cur.execute(query, (list(probes),))
            rows = {u: (int(ms), float(c), float(w)) for u, ms, c, w in cur.fetchall()}
            landed = sum(1 for u, (t, _) in probes.items() if u in rows and rows[u][0] >= t)
            if landed == len(probes) or errors or time.monotonic() > deadline:
                break
            time.sleep(1.0)
    stop_file.touch()
    runner.join(timeout=180)

    latencies: list[float] = []
    first_latencies: list[float] = []
    to_write: list[float] = []  # send -> the transaction that wrote the row began
    timeline: list[tuple[float, float]] = []  # (send time, latency): a backlog shows as a rise
    unseen = 0
    for user, (t, first) in probes.items():
        found = rows.get(user)
        if found is None or found[0] < t:
            unseen += 1
            continue
        latency = found[1] - t
        latencies.append(latency)
        if first:
            first_latencies.append(latency)
        # updated_at is now() of the sink's transaction (the trigger sets it): it splits the
        # path at PostgreSQL.
        to_write.append(found[2] - t)
        timeline.append((t, latency))
    latencies.sort()
    first_latencies.sort()
    to_write.sort()
    broker_leg.sort()
    if not latencies:
        raise SystemExit("freshness: no probe event became visible during the steady load")

    def pct(q: float, values: list[float] = latencies) -> float:
        return values[min(len(values) - 1, int(q * len(values)))]

    return {
        "rate_events_per_s": rate,
        "seconds": seconds,
        "warmup_seconds": warmup,
        "new_user_share": new_share,
        "producer_linger_ms": linger_ms,
        "users": started,
        "events_sent": sent,
        "method": "commit timestamp of the row version - send time",
        "samples": len(latencies),
        "unseen": unseen,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": latencies[-1],
        "first_event_samples": len(first_latencies),
        "first_event_p99_ms": pct(0.99, first_latencies) if first_latencies else None,
        "to_write_p50_ms": pct(0.50, to_write),
        "to_write_p99_ms": pct(0.99, to_write),
        "p50_ms_by_10s": by_window(timeline, 10_000),
        "max_ms_by_10s": by_window(timeline, 10_000, max),
        "broker_leg_p50_ms": pct(0.50, broker_leg) if broker_leg else None,
        "broker_leg_p99_ms": pct(0.99, broker_leg) if broker_leg else None,
        "broker_cores_by_10s": broker_cores if bench.broker_pid else None,
        "job": {
            k: result.get(k)
            for k in (
                "status",
                "checkpoint",
                "events_per_s",
                "cpu_us_per_event",
                "keyed_task_ms_per_s",
                "scoring_us",
            )
        },
    }


def by_window(
    timeline: list[tuple[float, float]],
    window_ms: float,
    stat: Callable[[list[float]], float] = statistics.median,
) -> list[float]:
    """`stat` (the median by default) of the latencies of the events sent in each `window_ms` of
    the steady load, in order: flat when the job keeps up, rising when a backlog builds."""
    if not timeline:
        return []
    first = min(sent for sent, _ in timeline)
    windows: dict[int, list[float]] = {}
    for sent, latency in timeline:
        windows.setdefault(int((sent - first) // window_ms), []).append(latency)
    return [round(stat(windows[w])) for w in sorted(windows)]


# ---------------------------------------------------------------------------------------------
# Scale
# ---------------------------------------------------------------------------------------------
def rocksdb_settings() -> dict[str, str]:
    """The memory settings the local job runs with (Flink defaults unless configured)."""
    return {
        "taskmanager.memory.managed.size": "128 mb (local MiniCluster default)",
        "state.backend.rocksdb.memory.managed": "true (block cache and write buffers share it)",
        "state.backend.rocksdb.memory.write-buffer-ratio": "0.5",
        "state.backend.rocksdb.memory.high-prio-pool-ratio": "0.1",
        "profile_cache_entries": str(ProfileCache().capacity),
    }


def scale_run(bench: Bench, users: int, per_user: int, seed: int) -> dict[str, Any]:
    events = users * per_user
    say(f"scale: {users:,} users, {events:,} events: generating ...")
    raws = [
        m.SerializeToString()
        for m in synthetic_events(SyntheticSpec(events=events, users=users, seed=seed))
    ]
    sizes = _state_sizes(raws)
    topic = f"scale-{users}"
    say(f"  producing {events:,} events ...")
    offsets = bench.produce(topic, raws)
    del raws
    say("  running the job ...")
    result = bench.run("job", topic, events, offsets)
    checkpoint = result.get("checkpoint", {})
    state = checkpoint.get("state_size_bytes")
    return {
        "users": users,
        "events": events,
        "events_per_s": result["events_per_s"],
        "cpu_us_per_event": result.get("cpu_us_per_event"),
        "state_bytes_per_user": sizes["mean"],
        "state_bytes_max": sizes["max"],
        "checkpoint_bytes_per_user": state / users if state else None,
        "checkpoint": checkpoint,
        "pg": result.get("pg"),
    }


def _state_sizes(raws: list[bytes]) -> dict[str, float]:
    """Encoded profile bytes per user after the whole log (the job's ValueState values)."""
    host = MemoryHost(ProfileEngine(ProfileParams(), lambda v: 0.0, "bench", str))
    for raw in raws:
        host.on_event(decode_event(raw, 2**62), "bench", 0)
    sizes = [len(encode_profile(p)) for p in map(host.engine.load, host.states.values()) if p]
    return {"mean": statistics.fmean(sizes), "max": max(sizes)}


# ---------------------------------------------------------------------------------------------
def job_settings(entries: list[str]) -> dict[str, int]:
    """--job-setting NAME=VALUE entries as JobConfig fields (the numeric ones: flush, batch,
    checkpoint and cache sizes); the job validates the values at start-up."""
    numeric = {f.name for f in fields(JobConfig) if f.type in ("int", int)}
    out: dict[str, int] = {}
    for entry in entries:
        name, sep, value = (part.strip() for part in entry.partition("="))
        if not sep or name not in numeric or not value.lstrip("-").isdigit():
            raise SystemExit(
                f"--job-setting {entry!r}: expected NAME=INTEGER with NAME one of"
                f" {', '.join(sorted(numeric))}"
            )
        out[name] = int(value)
    return out


# ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.e2e", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--part", action="append", choices=PARTS, help="repeatable; default all")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--parallelism", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--flink-setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Flink configuration entry for every run (repeatable), e.g. "
        "execution.buffer-timeout=10ms",
    )
    parser.add_argument(
        "--job-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a numeric JobConfig field for the job's runs (repeatable), e.g. "
        "jdbc_flush_interval_ms=50",
    )
    parser.add_argument("--repeat", type=int, default=1, help="floor and job runs, alternated")
    parser.add_argument("--freshness-seconds", type=float, default=60.0)
    parser.add_argument(
        "--freshness-warmup",
        type=float,
        default=30.0,
        help="seconds of the same load before the measured ones (the JVM compiles the job's"
        " hot paths in its first minute)",
    )
    parser.add_argument(
        "--freshness-new-share",
        type=float,
        help="the share of the freshness load's events that are a user's first (default:"
        " --users / --events, the mix whose rate the job part measured)",
    )
    parser.add_argument("--freshness-rate", type=float, help="default: half the job's rate")
    parser.add_argument(
        "--freshness-linger-ms",
        type=int,
        default=DEFAULT_LINGER_MS,
        help="the load's producer linger.ms (default: the project's producer's own)",
    )
    parser.add_argument("--scale-users", type=int, nargs=2, default=[10_000, 1_000_000])
    parser.add_argument("--scale-events-per-user", type=int, default=2)
    parser.add_argument(
        "--keep-work",
        action="store_true",
        help="keep the runs' state, checkpoints, databases and logs (removed by default)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.freshness_linger_ms <= 900_000:  # before the runs, not 10 minutes in
        parser.error(f"--freshness-linger-ms {args.freshness_linger_ms}: expected 0-900000")
    parts = tuple(args.part or DEFAULT_PARTS)
    # `kill` ends the bench as Ctrl-C does: the runner's JVM, the local broker and PostgreSQL
    # stopped, the work directory removed.
    exit_on_sigterm()

    java = install_java()
    install_connector_jars()
    out: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": psutil.cpu_count(),
            "python": platform.python_version(),
            "java": f"{java.major} ({java.origin})",
            "native_udfs": _native_mode(),
        },
        "events": args.events,
        "users": args.users,
        "parallelism": args.parallelism,
        "parts": list(parts),
    }
    say(f"generating {args.events:,} synthetic events for {args.users:,} users ...")
    spec = SyntheticSpec(events=args.events, users=args.users, seed=args.seed)
    raws = [m.SerializeToString() for m in synthetic_events(spec)]
    work = Path(tempfile.mkdtemp(prefix="profilestream-bench-"))
    ensure_key_file(work / "pseudonym.key")  # unless a key is configured
    # Commit times let the freshness part read when each row became visible.
    pg = EmbeddedPostgres(
        work / "pgdata", database="bench", settings={"track_commit_timestamp": "on"}
    )
    broker = LocalBroker(work / "broker.log")
    try:
        pg.start()
        bench = Bench(work, pg, broker.start(), args.parallelism, keep_work=args.keep_work)
        bench.broker_pid = broker.pid
        for entry in args.flink_setting:
            key, sep, value = entry.partition("=")
            if not sep or not key:
                raise SystemExit(f"--flink-setting {entry!r}: expected KEY=VALUE")
            bench.flink_settings[key.strip()] = value.strip()
        out["flink_settings"] = bench.flink_settings
        bench.job_settings = job_settings(args.job_setting)
        out["job_settings"] = bench.job_settings
        offsets = None
        if {"floor", "job", "ablation"} & set(parts):
            say(f"producing {len(raws):,} events ...")
            offsets = bench.produce("bench-events", raws)
        floors: list[dict[str, Any]] = []
        jobs: list[dict[str, Any]] = []
        for i in range(args.repeat):
            if "floor" in parts:
                say(f"floor (run {i + 1}) ...")
                floors.append(bench.run("floor", "bench-events", len(raws), offsets))
                say("  floor   " + _rate(floors[-1]))
            if "job" in parts:
                say(f"job (run {i + 1}) ...")
                jobs.append(bench.run("job", "bench-events", len(raws), offsets))
                say("  job     " + _rate(jobs[-1]))
                pgc = jobs[-1].get("pg", {})
                if pgc.get("events_folded") != len(raws) or pgc.get("profiles") != args.users:
                    raise SystemExit(f"incomplete job run: {pgc}")
        if floors:
            out["floor_runs"] = floors
            out["floor_events_per_s"] = statistics.median(r["events_per_s"] for r in floors)
        if jobs:
            out["job_runs"] = jobs
            out["job_events_per_s"] = statistics.median(r["events_per_s"] for r in jobs)
            scoring = [r["scoring_us"] for r in jobs if r.get("scoring_us")]
            out["scoring_us"] = statistics.median(scoring) if scoring else None
            explain = [r["explain_us"] for r in jobs if r.get("explain_us")]
            out["explain_us"] = statistics.median(explain) if explain else None
            cluster = [r["cluster_us"] for r in jobs if r.get("cluster_us")]
            out["cluster_us"] = statistics.median(cluster) if cluster else None
            vectors = profile_vectors(raws, ProfileParams())
            out["scoring_us_standalone"] = scoring_standalone(DEFAULT_MODEL_DIR, vectors)
            out["cluster_us_standalone"] = cluster_standalone(DEFAULT_SEGMENTS_DIR, vectors)
            del vectors
        if floors and jobs:
            for name, runs in (("floor", floors), ("job", jobs)):
                for k, r in enumerate(runs):
                    if not r["events_per_s"]:
                        raise SystemExit(
                            f"{name} run {k + 1}: no steady rate ({r['samples']} REST samples in "
                            f"{r['wall_s']:.1f} s): rerun with more events (--events)"
                        )
            ratios = [
                j["events_per_s"] / f["events_per_s"] for f, j in zip(floors, jobs, strict=True)
            ]
            out["job_over_floor"] = statistics.median(ratios)
            out["job_over_floor_runs"] = ratios
        if "ablation" in parts:
            out["ablation"] = {}
            for stage in ABLATION:
                say(f"ablation: {stage} ...")
                r = bench.run(stage, "bench-events", len(raws), offsets)
                out["ablation"][stage] = r
                say(f"  {stage:<8}" + _rate(r))
        if "ceiling" in parts:
            say("plain-Python ceiling ...")
            ceiling = plain_python(raws, DEFAULT_MODEL_DIR, ProfileParams())
            out["ceiling"] = ceiling
            out["ceiling_events_per_s"] = ceiling["events_per_s"]
            out["ceiling_us_per_event"] = ceiling["us_per_event"]
            out["state_bytes_per_user"] = ceiling["state_bytes_per_user"]
            out["reasons_share"] = ceiling["rows_with_new_reasons"] / max(1, ceiling["rows"])
            out["reasons_memo_share"] = ceiling["explain_memo_hits"] / max(
                1, ceiling["rows_with_new_reasons"]
            )
            if jobs:
                out["job_over_ceiling"] = out["job_events_per_s"] / ceiling["events_per_s"]
        del raws
        if "freshness" in parts:
            rate = args.freshness_rate or (out.get("job_events_per_s", 0.0) / 2)
            if not rate:
                raise SystemExit("freshness needs --freshness-rate, or the job part in the run")
            share = args.freshness_new_share
            if share is None:
                share = min(1.0, args.users / args.events)
            if not 0.0 < share <= 1.0:
                raise SystemExit(f"--freshness-new-share {share}: expected a share in (0, 1]")
            say(f"freshness at {rate:,.0f} events/s, {share:.0%} of them a user's first ...")
            fresh = freshness(
                bench,
                rate,
                args.freshness_seconds,
                new_share=share,
                warmup=args.freshness_warmup,
                linger_ms=args.freshness_linger_ms,
            )
            out["freshness"] = fresh
            out["freshness_p50_ms"] = fresh["p50_ms"]
            out["freshness_p99_ms"] = fresh["p99_ms"]
            say(
                f"  p50 {fresh['p50_ms']:.0f} ms, p99 {fresh['p99_ms']:.0f} ms"
                f" (send -> the sink's transaction: p50 {fresh['to_write_p50_ms']:.0f} ms,"
                f" p99 {fresh['to_write_p99_ms']:.0f} ms)\n"
                f"  by 10 s of load: p50 {fresh['p50_ms_by_10s']} ms, max {fresh['max_ms_by_10s']}"
                f" ms; {fresh['unseen']} of {fresh['samples'] + fresh['unseen']} probes not seen;"
                " the broker leg alone:"
                f" p50 {_ms(fresh['broker_leg_p50_ms'])}, p99 {_ms(fresh['broker_leg_p99_ms'])};"
                f" the local broker's CPU by 10 s: {fresh['broker_cores_by_10s']} cores"
            )
            say(f"  the job meanwhile, CPU us/event by thread: {thread_summary(fresh['job'])}")
        if "scale" in parts:
            small, large = args.scale_users
            runs = [
                scale_run(bench, small, args.scale_events_per_user, args.seed + 1),
                scale_run(bench, large, args.scale_events_per_user, args.seed + 2),
            ]
            out["scale"] = {"runs": runs, "memory_settings": rocksdb_settings()}
            out["scale_users_small"] = runs[0]["events_per_s"]
            out["scale_users_large"] = runs[1]["events_per_s"]
            out["scale_large_over_small"] = runs[1]["events_per_s"] / runs[0]["events_per_s"]
            for r in runs:
                say(f"  {r['users']:>9,} users  {r['events_per_s']:>9,.0f} events/s   "
                    f"{r['state_bytes_per_user']:.0f} state bytes per user")  # fmt: skip
    finally:
        broker.stop()
        pg.stop()
        if args.keep_work:
            say(f"kept the runs' files in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report(out)


def _native_mode() -> str:
    from udfs.native import status

    return str(status()["mode"])


def report(out: dict[str, Any]) -> None:
    say("")
    say(f"{out['events']:,} events, {out['users']:,} users, parallelism {out['parallelism']}, "
        f"udfs {out['machine']['native_udfs']}")  # fmt: skip
    rows = [
        ("floor (plumbing)", out.get("floor_events_per_s"), "events/s"),
        ("job (end to end)", out.get("job_events_per_s"), "events/s"),
        ("plain-Python ceiling", out.get("ceiling_events_per_s"), "events/s"),
        ("ceiling, per event", out.get("ceiling_us_per_event"), "us"),
        ("job / floor", out.get("job_over_floor"), ""),
        ("job / ceiling", out.get("job_over_ceiling"), ""),
        ("scoring in the job", out.get("scoring_us"), "us per update"),
        ("score reasons, job", out.get("explain_us"), "us per explanation (memo hits included)"),
        ("cluster in the job", out.get("cluster_us"), "us per update"),
        ("cluster, outside", out.get("cluster_us_standalone"), "us per update"),
        ("rows with new reasons", out.get("reasons_share"), "of rows"),
        ("  of them from the memo", out.get("reasons_memo_share"), ""),
        ("state per user", out.get("state_bytes_per_user"), "bytes"),
        ("freshness p50", out.get("freshness_p50_ms"), "ms"),
        ("freshness p99", out.get("freshness_p99_ms"), "ms"),
        ("10k users", out.get("scale_users_small"), "events/s"),
        ("1M users", out.get("scale_users_large"), "events/s"),
        ("1M / 10k users", out.get("scale_large_over_small"), ""),
    ]
    for name, value, unit in rows:
        if value is None:
            continue
        text = f"{value:>12.3f}" if value < 10 else f"{value:>12,.0f}"
        say(f"  {name:<22}{text} {unit}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    say(f"  written to {path}")


def run(argv: list[str] | None = None) -> None:
    """`main` as `python -m bench.e2e` runs it: SIGTERM inside a C extension's call (the Kafka
    client's) comes out as a SystemError caused by it, and still ends the bench with 143, not
    with a traceback (the clean-up has run either way)."""
    try:
        main(argv)
    except SystemError as exc:
        if not raised_by_sigterm(exc):
            raise
        raise SystemExit(TERMINATED) from None


if __name__ == "__main__":
    run()
