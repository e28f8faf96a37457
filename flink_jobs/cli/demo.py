"""Trying it on one machine: `profilestream setup`, `demo` and `services stop`.

`demo` runs the whole pipeline on the embedded default, with progress and a summary.

Starts an embedded PostgreSQL (left running afterwards so you can open it with psql; `make stop`
stops it) and a local Kafka-protocol broker (stopped at the end), applies the schema, produces a
sample, runs the job on a local MiniCluster until it has consumed exactly what was produced, and
prints what landed in PostgreSQL. PG_DSN / KAFKA_BOOTSTRAP switch to external services.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from flink_jobs.cli.parser import Subparsers
from flink_jobs.config import Environment, JobConfig, environment, redact_dsn
from flink_jobs.io import db
from flink_jobs.io.db import pg_counts
from flink_jobs.io.producer import ensure_topic, produce_dataset
from flink_jobs.job.run import preflight, run_job
from flink_jobs.ops.runtime import install_connector_jars, install_java, jar_dir
from flink_jobs.ops.services import EmbeddedPostgres, LocalBroker, which_psql
from udfs.errors import ConfigError
from udfs.pseudonym import ensure_key_file
from udfs.sources import SyntheticSpec


def demo_dir() -> Path:
    return environment().state_dir / "demo"


def embedded_postgres() -> EmbeddedPostgres:
    return EmbeddedPostgres(demo_dir() / "pgdata")


def register(sub: Subparsers, env: Environment) -> None:
    setup = sub.add_parser(
        "setup", help="install the connector jars and, if the machine has none, Java"
    )
    setup.set_defaults(handler=cmd_setup)

    demo = sub.add_parser("demo", help="run the whole pipeline on the embedded default")
    demo.add_argument("--dataset", type=Path, help="a Taobao or REES46 CSV instead of synthetic")
    demo.add_argument(
        "--format", dest="fmt", choices=["taobao", "rees46"], help="format of --dataset"
    )
    demo.add_argument("--events", type=int, default=50_000, help="synthetic events (50000)")
    demo.add_argument("--users", type=int, default=5_000, help="synthetic users (5000)")
    demo.add_argument("--seed", type=int, default=42)
    demo.set_defaults(handler=cmd_demo)

    services = sub.add_parser("services", help="the embedded services the demo starts")
    ssub = services.add_subparsers(dest="services_command", required=True)
    stop = ssub.add_parser("stop", help="stop the embedded PostgreSQL left running by the demo")
    stop.set_defaults(handler=cmd_services)


def cmd_setup(args: argparse.Namespace) -> int:
    java = install_java()
    install_connector_jars()
    print(f"ready: Java {java.major} ({java.origin}), connector jars in {jar_dir()}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.dataset and not args.fmt:
        raise ConfigError("--dataset needs --format taobao|rees46 (make demo: FORMAT=...)")
    opts = DemoOptions(
        dataset=args.dataset,
        fmt=args.fmt or "synthetic",
        events=args.events,
        users=args.users,
        seed=args.seed,
    )
    summary = run_demo(opts)
    return 0 if summary["profiles"] > 0 else 1


def cmd_services(args: argparse.Namespace) -> int:
    pg = embedded_postgres()
    if pg.running():
        pg.stop()
        print("embedded PostgreSQL stopped")
    else:
        print("embedded PostgreSQL is not running")
    return 0


@dataclass(frozen=True)
class DemoOptions:
    dataset: Path | None = None
    fmt: str = "synthetic"
    events: int = 50_000
    users: int = 5_000
    seed: int = 42
    partitions: int = 2
    checkpoint_interval_ms: int = 5_000


def run_demo(opts: DemoOptions, out: Any = sys.stdout) -> dict[str, Any]:
    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    t0 = time.monotonic()
    say(
        "ProfileStream demo: Protobuf events -> Kafka -> PyFlink (RocksDB, thread mode) -> "
        "LightGBM -> PostgreSQL"
    )
    java = install_java()
    install_connector_jars()
    say(f"  Java {java.major} ({java.origin}: {java.home}); connector jars verified")

    env = environment()
    with contextlib.ExitStack() as stack:
        pg_dsn = env.pg_dsn
        pg: EmbeddedPostgres | None = None
        if pg_dsn:
            say(f"  PostgreSQL: external, PG_DSN={redact_dsn(pg_dsn)}")
        else:
            pg = embedded_postgres()
            pg_dsn = pg.start()
            pg.recreate_database()
            say(f"  PostgreSQL: embedded, {pg_dsn} (fresh database)")
        applied = db.migrate(pg_dsn)
        say(f"  schema: {len(applied)} migration(s) applied")

        bootstrap = env.kafka_bootstrap
        if bootstrap:
            topic = f"profilestream-demo-{int(time.time())}"
            say(f"  Kafka: external, KAFKA_BOOTSTRAP={bootstrap}, fresh topic {topic}")
        else:
            broker = LocalBroker(demo_dir() / "broker.log")
            stack.callback(broker.stop)
            bootstrap = broker.start()
            topic = "user-events"
            say(f"  Kafka: embedded Tansu broker on {bootstrap} (in memory)")
        partitions = ensure_topic(bootstrap, topic, opts.partitions)

        # Produce the sample.
        label = opts.fmt if opts.dataset is None else f"{opts.fmt} {opts.dataset}"
        spec = SyntheticSpec(events=opts.events, users=opts.users, seed=opts.seed)
        produced = produce_dataset(
            bootstrap, topic, opts.fmt, opts.dataset, spec, desc=f"  producing ({label})", out=out
        )
        report = produced.report
        say(
            f"  produced {report.delivered} events in {produced.seconds:.1f} s; end offsets "
            + ", ".join(f"p{p}={o}" for p, o in sorted(report.end_offsets.items()))
            + (f"; {len(produced.bad_rows)} unreadable rows skipped" if produced.bad_rows else "")
            + (f"; {report.rejected} invalid events refused" if report.rejected else "")
            + (f"; {report.refused} refused by Kafka" if report.refused else "")
        )

        key_file = ensure_key_file(demo_dir() / "pseudonym.key")
        if key_file is not None:
            say(f"  pseudonym key: {key_file} (generated for the demo; BI sees HMAC pseudonyms)")
        config = JobConfig(
            kafka_bootstrap=bootstrap,
            pg_dsn=pg_dsn,
            topic=topic,
            job_name="profilestream-demo",
            state_dir=demo_dir(),
            checkpoint_interval_ms=opts.checkpoint_interval_ms,
            stopping_offsets=report.stopping_offsets(partitions),
        )
        preflight(config)
        say("  starting the job on a local Flink MiniCluster (about 10 s to the first event) ...")
        bar = tqdm(
            total=report.delivered,
            unit="ev",
            desc="  events in PostgreSQL",
            file=out,
            mininterval=0.5,
        )
        first_row_at: list[float] = []

        def tick() -> None:
            _, folded, dead = pg_counts(pg_dsn)
            done = folded + dead
            if done and not first_row_at:
                first_row_at.append(time.monotonic())
            bar.update(done - bar.n)

        t_job = time.monotonic()
        result = run_job(config, on_tick=tick)
        bar.close()
        job_s = time.monotonic() - t_job
        summary = summarize(
            pg_dsn,
            report.delivered,
            job_s,
            (time.monotonic() - first_row_at[0]) if first_row_at else None,
        )
        summary.update(
            job_id=result.job_id,
            status=result.status,
            produced=report.delivered,
            total_s=time.monotonic() - t0,
        )
        print_summary(summary, pg, pg_dsn, say)
        return summary


def summarize(dsn: str, produced: int, job_s: float, steady_s: float | None) -> dict[str, Any]:
    profiles, folded, dead = pg_counts(dsn)
    conn = db.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT user_id, round(score::numeric, 4), event_count, purchases, spend, "
                "segment, model_version FROM user_profiles WHERE NOT expired "
                "ORDER BY score DESC, user_id LIMIT 10"
            )
            top = cur.fetchall()
            cur.execute(
                "SELECT reason, count(*) FROM dead_letter_events GROUP BY 1 ORDER BY 2 DESC"
            )
            reasons = cur.fetchall()
            cur.execute(
                "SELECT segment, count(*) FROM user_profiles WHERE NOT expired "
                "GROUP BY 1 ORDER BY 2 DESC"
            )
            segments = cur.fetchall()
            cur.execute(
                "SELECT cluster_id, cluster_name, profiles FROM bi_cluster_sizes "
                "WHERE profiles > 0 ORDER BY profiles DESC, cluster_id"
            )
            clusters = cur.fetchall()
    finally:
        conn.close()
    return {
        "events_read": folded + dead,
        "events_folded": folded,
        "dead_letters": dead,
        "dead_letter_reasons": reasons,
        "profiles": profiles,
        "segments": segments,
        "clusters": clusters,
        "top": top,
        "job_s": job_s,
        "events_per_s": (folded + dead) / job_s if job_s else 0.0,
        "steady_s": steady_s,
    }


def print_summary(s: dict[str, Any], pg: EmbeddedPostgres | None, dsn: str, say: Any) -> None:
    say("")
    say("Summary")
    say(f"  events read          {s['events_read']:>10,} (of {s['produced']:,} produced)")
    say(
        f"  dead letters         {s['dead_letters']:>10,}"
        + (
            "  " + ", ".join(f"{r}: {n}" for r, n in s["dead_letter_reasons"])
            if s["dead_letter_reasons"]
            else ""
        )
    )
    say(
        f"  profiles written     {s['profiles']:>10,}  "
        + ", ".join(f"{name}: {n:,}" for name, n in s["segments"])
    )
    if s.get("clusters"):
        say(
            "  learned segments     "
            + "; ".join(f"{cid} {name or '?'}: {n:,}" for cid, name, n in s["clusters"])
        )
    say(
        f"  job wall time        {s['job_s']:>10.1f} s  ({s['events_per_s']:,.0f} events/s "
        "including MiniCluster start-up)"
    )
    if s["steady_s"]:
        say(
            f"  after the first row  {s['steady_s']:>10.1f} s  "
            f"({s['events_read'] / s['steady_s']:,.0f} events/s)"
        )
    if s.get("status") == "CANCELED":
        say("  job                   cancelled (Ctrl-C or kill): the figures are what it wrote")
    say("")
    say("  ten highest-scoring users (purchase propensity):")
    say(
        f"    {'user_id':<16} {'score':>7} {'events':>7} {'buys':>5} {'spend':>12}  "
        f"{'segment':<15} model"
    )
    for user, score, events, buys, spend, segment, model in s["top"]:
        say(f"    {user:<16} {score:>7} {events:>7} {buys:>5} {spend:>12}  {segment:<15} {model}")
    say("")
    if pg is not None:
        say("  Open the database (the embedded server keeps running; `make stop` stops it):")
        say(f"    {which_psql(pg)} {dsn}")
    else:
        say(f"  Open the database:  psql '{redact_dsn(dsn)}'")
    say("    e.g.  SELECT * FROM user_profiles ORDER BY score DESC LIMIT 20;")
