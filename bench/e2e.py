"""End-to-end throughput of the job against the plain-Python ceiling, measured in one run.

    make bench                          # 200,000 events, 50,000 users
    python -m bench.e2e --events N --users N --parallelism P

1. Produces N synthetic events to the local Tansu broker and runs the real job (MiniCluster,
   thread mode, RocksDB, checkpoints, JDBC upsert into embedded PostgreSQL) until it has consumed
   exactly them. Reports events/s over the job's wall time (including the ~10 s start-up), over
   the steady part (first row in PostgreSQL to the end), and per CPU-second of the JVM.
2. Runs the same `udfs` decode + state round trip + update + scoring code over the same bytes in
   a plain Python loop (dict state, no Flink, no I/O): the ceiling.

Prints both and their ratio and writes them to bench/results/e2e-<timestamp>.json. A benchmark,
not a test: the machine is shared and noisy, so compare ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from flink_jobs import db
from flink_jobs.config import JobConfig
from flink_jobs.demo import pg_counts
from flink_jobs.job import preflight, run_job
from flink_jobs.producer import EventPublisher, ensure_topic
from flink_jobs.runtime import install_connector_jars, install_java
from flink_jobs.services import EmbeddedPostgres, LocalBroker, free_port
from udfs.engine import ProfileEngine
from udfs.events import decode_event
from udfs.profile import ProfileParams
from udfs.pseudonym import Pseudonymiser, ensure_key_file, load_key
from udfs.scoring import Scorer
from udfs.sources import SyntheticSpec, synthetic_events

RESULTS = Path(__file__).resolve().parent / "results"


def plain_python(raws: list[bytes], model_dir: Path, params: ProfileParams) -> dict[str, float]:
    """The job's per-event work without Flink: decode, then the job's own engine step (state
    bytes in, state bytes and output row out) with a dict as the state backend."""
    scorer = Scorer(model_dir)
    engine = ProfileEngine(params, scorer.score, scorer.version, Pseudonymiser(load_key()))
    state: dict[str, bytes] = {}
    now_ms = int(time.time() * 1000)
    start_cpu, start = time.process_time(), time.perf_counter()
    for raw in raws:
        event = decode_event(raw, now_ms)
        step = engine.on_event(state.get(event.user_id), event, "bench", now_ms)
        if step.state is not None:
            state[event.user_id] = step.state
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "events_per_s": len(raws) / wall,
        "events_per_cpu_s": len(raws) / cpu,
    }


def jvm_cpu_seconds() -> float:
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            if "java" in child.name():
                t = child.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            continue
    return total


def scoring_metrics(port: int) -> tuple[int, int] | None:
    """(sampled nanoseconds, samples) of in-job scoring, from Flink's REST API, or None."""

    def get(path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return json.loads(response.read())

    try:
        jobs = [j for j in get("/jobs")["jobs"] if j["status"] == "RUNNING"]
        if not jobs:
            return None
        job_id = jobs[0]["id"]
        for vertex in get(f"/jobs/{job_id}")["vertices"]:
            if "update profile" not in vertex["name"]:
                continue
            base = f"/jobs/{job_id}/vertices/{vertex['id']}/metrics"
            names = [
                m["id"]
                for m in get(base)
                if m["id"].endswith(("scoring_sampled_ns", "scoring_samples"))
            ]
            if len(names) < 2:
                return None
            values = {
                m["id"].rsplit(".", 1)[1]: int(m["value"])
                for m in get(base + "?get=" + ",".join(names))
            }
            return values["scoring_sampled_ns"], values["scoring_samples"]
    except (OSError, ValueError, KeyError):
        return None
    return None


def run(events: int, users: int, parallelism: int, seed: int) -> dict[str, Any]:
    java = install_java()
    install_connector_jars()
    msgs = synthetic_events(SyntheticSpec(events=events, users=users, seed=seed))
    raws = [m.SerializeToString() for m in msgs]
    work = Path(tempfile.mkdtemp(prefix="profilestream-bench-"))
    ensure_key_file(work / "pseudonym.key")
    pg = EmbeddedPostgres(work / "pgdata", database="bench")
    broker = LocalBroker(work / "broker.log")
    try:
        pg_dsn = pg.start()
        db.migrate(pg_dsn)
        bootstrap = broker.start()
        partitions = ensure_topic(bootstrap, "bench-events", partitions=2)
        print(f"producing {events:,} events for {users:,} users ...", flush=True)
        t0 = time.perf_counter()
        publisher = EventPublisher(bootstrap, "bench-events")
        for m in msgs:
            publisher.publish(m)
        report = publisher.flush()
        produce_s = time.perf_counter() - t0
        config = JobConfig(
            kafka_bootstrap=bootstrap,
            pg_dsn=pg_dsn,
            topic="bench-events",
            job_name="bench",
            state_dir=work,
            parallelism=parallelism,
            checkpoint_interval_ms=10_000,
            stopping_offsets=report.stopping_offsets(partitions),
            rest_port=free_port(),
        )
        preflight(config)
        first_row: list[float] = []
        scoring: list[tuple[int, int]] = []

        def tick() -> None:
            if not first_row and pg_counts(pg_dsn)[0] > 0:
                first_row.append(time.perf_counter())
            assert config.rest_port is not None
            if (sample := scoring_metrics(config.rest_port)) is not None:
                scoring.append(sample)

        print("running the job ...", flush=True)
        cpu0 = jvm_cpu_seconds()
        t1 = time.perf_counter()
        result = run_job(config, java, on_tick=tick, tick_s=0.2)
        job_s = time.perf_counter() - t1
        jvm_cpu = jvm_cpu_seconds() - cpu0
        profiles, folded, dead = pg_counts(pg_dsn)
        if folded != events or profiles != users or dead:
            raise SystemExit(f"incomplete run: {folded} events in {profiles} profiles, {dead} dead")
        steady_s = time.perf_counter() - first_row[0] if first_row else job_s
        print("running the plain-Python ceiling ...", flush=True)
        ceiling = plain_python(raws, config.model_dir, config.profile)
    finally:
        broker.stop()
        pg.stop()
    job: dict[str, Any] = {
        "status": result.status,
        "wall_s": job_s,
        "steady_s": steady_s,
        "jvm_cpu_s": jvm_cpu,
        "events_per_s": events / job_s,
        "events_per_s_steady": events / steady_s,
        "events_per_jvm_cpu_s": events / jvm_cpu if jvm_cpu else 0.0,
        "scoring_us_in_job": scoring[-1][0] / scoring[-1][1] / 1000 if scoring else None,
        "scoring_samples": scoring[-1][1] if scoring else 0,
    }
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": psutil.cpu_count(), "python": platform.python_version()},
        "events": events,
        "users": users,
        "parallelism": parallelism,
        "produce_s": produce_s,
        "job": job,
        "plain_python": ceiling,
        "ratio_steady_to_ceiling": job["events_per_s_steady"] / ceiling["events_per_s"],
        "ratio_wall_to_ceiling": job["events_per_s"] / ceiling["events_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="end-to-end events/s vs the plain-Python ceiling")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--parallelism", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    r = run(args.events, args.users, args.parallelism, args.seed)
    job, ceil = r["job"], r["plain_python"]
    print()
    print(f"{r['events']:,} events, {r['users']:,} users, parallelism {r['parallelism']}")
    print(
        f"  job, whole wall time    {job['events_per_s']:>10,.0f} events/s  "
        f"({job['wall_s']:.1f} s incl. start-up)"
    )
    print(
        f"  job, steady state       {job['events_per_s_steady']:>10,.0f} events/s  "
        f"({job['steady_s']:.1f} s from the first row in PostgreSQL)"
    )
    print(
        f"  job, per JVM CPU-second {job['events_per_jvm_cpu_s']:>10,.0f} events/s  "
        f"({job['jvm_cpu_s']:.1f} CPU-s)"
    )
    if job["scoring_us_in_job"] is not None:
        print(
            f"  scoring inside the job  {job['scoring_us_in_job']:>10.1f} us per update  "
            f"({job['scoring_samples']:,} sampled calls)"
        )
    print(
        f"  plain-Python ceiling    {ceil['events_per_s']:>10,.0f} events/s  "
        f"({ceil['wall_s']:.1f} s, one core)"
    )
    print(f"  ratio steady/ceiling    {r['ratio_steady_to_ceiling']:>10.3f}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"e2e-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(r, indent=2) + "\n")
    print(f"  written to {out}")


if __name__ == "__main__":
    main()
