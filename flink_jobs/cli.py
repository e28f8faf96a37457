"""`profilestream` command line: setup, demo, produce, run, db migrate, services stop."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flink_jobs.config import (
    DEFAULT_MODEL_DIR,
    DEFAULT_STATE_DIR,
    DEFAULT_TOPIC,
    ConfigError,
    JobConfig,
    add_tuning_options,
    parse_offsets,
    tuning_args,
    tuning_values,
)


def _add_kafka(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP"),
        help="Kafka bootstrap servers host:port (env KAFKA_BOOTSTRAP)",
    )
    p.add_argument(
        "--topic",
        default=os.environ.get("PROFILESTREAM_TOPIC", DEFAULT_TOPIC),
        help=f"events topic (env PROFILESTREAM_TOPIC, default {DEFAULT_TOPIC})",
    )


def _add_pg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pg-dsn",
        default=os.environ.get("PG_DSN"),
        help="postgresql://user:password@host:port/db (env PG_DSN)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="profilestream",
        description="Real-time e-commerce user profiles on Apache Flink.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("setup", help="install the connector jars and, if the machine has none, Java")

    demo = sub.add_parser("demo", help="run the whole pipeline on the embedded default")
    demo.add_argument("--dataset", type=Path, help="a Taobao or REES46 CSV instead of synthetic")
    demo.add_argument(
        "--format", dest="fmt", choices=["taobao", "rees46"], help="format of --dataset"
    )
    demo.add_argument("--events", type=int, default=50_000, help="synthetic events (50000)")
    demo.add_argument("--users", type=int, default=5_000, help="synthetic users (5000)")
    demo.add_argument("--seed", type=int, default=42)

    produce = sub.add_parser("produce", help="publish UserEvents to Kafka from a CSV or synthetic")
    _add_kafka(produce)
    produce.add_argument(
        "--format",
        dest="fmt",
        choices=["synthetic", "taobao", "rees46", "proto"],
        default="synthetic",
    )
    produce.add_argument(
        "--file", type=Path, help="CSV file (taobao/rees46) or file of encoded messages (proto)"
    )
    produce.add_argument(
        "--save-proto", type=Path, help="also write what was sent to this file (format proto)"
    )
    produce.add_argument("--events", type=int, default=10_000, help="synthetic events")
    produce.add_argument("--users", type=int, default=1_000, help="synthetic users")
    produce.add_argument("--seed", type=int, default=42)
    produce.add_argument(
        "--partitions", type=int, default=2, help="partitions when the topic is created (2)"
    )

    run = sub.add_parser("run", help="run the profile job (local MiniCluster)")
    _add_kafka(run)
    _add_pg(run)
    run.add_argument(
        "--model-dir",
        type=Path,
        default=Path(os.environ.get("PROFILESTREAM_MODEL_DIR", DEFAULT_MODEL_DIR)),
    )
    run.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="checkpoints and RocksDB working files (.profilestream)",
    )
    run.add_argument("--parallelism", type=int, default=1)
    run.add_argument("--checkpoint-interval-ms", type=int, default=10_000)
    add_tuning_options(run)
    run.add_argument(
        "--stopping-offsets",
        help="stop at these offsets, e.g. 0:120,1:98 (default: run until Ctrl-C)",
    )
    run.add_argument("--restore-from", help="a retained checkpoint or savepoint to resume from")

    formats = ["taobao", "rees46", "proto", "synthetic"]
    model_default = Path(os.environ.get("PROFILESTREAM_MODEL_DIR", DEFAULT_MODEL_DIR))

    def add_log(p: argparse.ArgumentParser, events: int, users: int) -> None:
        p.add_argument("--events", type=Path, help="the event log (not for synthetic)")
        p.add_argument("--format", dest="fmt", choices=formats, required=True)
        p.add_argument("--synthetic-events", type=int, default=events)
        p.add_argument("--synthetic-users", type=int, default=users)
        p.add_argument("--seed", type=int, default=42)

    def add_examples(p: argparse.ArgumentParser, defaults: bool) -> None:
        default = (lambda v: v) if defaults else (lambda v: None)
        p.add_argument(
            "--mode",
            choices=["cutoff", "event"],
            default=default("cutoff"),
            help="one example per user and period at the cut-off, or after one random event "
            "of the user in the period" + ("" if defaults else " (default: the model's)"),
        )
        p.add_argument(
            "--horizon-hours",
            type=float,
            default=default(24.0),
            help="label: a purchase within this many hours"
            + ("" if defaults else " (default: the model's)"),
        )
        p.add_argument(
            "--period-hours",
            type=float,
            help="hours between cut-offs (default: the horizon"
            + ("" if defaults else ", or the model's")
            + ")",
        )
        p.add_argument(
            "--tz-offset-hours",
            type=float,
            default=default(8.0),
            help="UTC offset of the data's local midnight, the daily cut-off (Taobao: +8)"
            + ("" if defaults else " (default: the model's)"),
        )

    train = sub.add_parser("train", help="train the purchase-propensity model on an event log")
    add_log(train, 100_000, 5_000)
    add_examples(train, defaults=True)
    train.add_argument("--version", help="model version (default: <format>-<date>)")
    train.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap replicates (default 1000)"
    )
    train.add_argument(
        "--out", type=Path, help="model directory (default: models/purchase_propensity/<version>)"
    )

    evaluate = sub.add_parser(
        "evaluate",
        help="the evaluation protocol (rolling origin, baselines, bootstrap intervals) on a log",
    )
    evaluate.add_argument("--model", type=Path, default=model_default, help="a model directory")
    add_log(evaluate, 100_000, 5_000)
    add_examples(evaluate, defaults=False)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap replicates (default 1000)"
    )

    verify = sub.add_parser("verify", help="compare PostgreSQL with an offline recomputation")
    add_log(verify, 10_000, 1_000)
    _add_pg(verify)
    verify.add_argument("--model-dir", type=Path, default=model_default)
    verify.add_argument(
        "--topic",
        default=os.environ.get("PROFILESTREAM_TOPIC", DEFAULT_TOPIC),
        help="the topic the job read (dead letters record it)",
    )
    verify.add_argument("--examples", type=int, default=5, help="mismatches to print")

    cluster = sub.add_parser("cluster", help="a Flink standalone cluster on this machine")
    csub = cluster.add_subparsers(dest="cluster_command", required=True)
    cstart = csub.add_parser("start", help="start a JobManager and N TaskManagers")
    cstart.add_argument("--taskmanagers", type=int, default=1)
    cstart.add_argument("--rpc-port", type=int, default=6123)
    cstart.add_argument(
        "--retained-checkpoints", type=int, default=3, help="checkpoints kept per job (3)"
    )
    for c in (cstart, csub.add_parser("status"), csub.add_parser("stop")):
        c.add_argument("--rest-port", type=int, default=8081)

    submit = sub.add_parser("submit", help="run the job on a Flink cluster (flink run)")
    _add_kafka(submit)
    _add_pg(submit)
    submit.add_argument("--rest-port", type=int, default=8081, help="the cluster's REST port")
    submit.add_argument(
        "--jobmanager",
        help="host:port of any JobManager's REST endpoint "
        "(default: the local cluster, 127.0.0.1:<rest-port>)",
    )
    submit.add_argument("--model-dir", type=Path, default=model_default)
    submit.add_argument("--parallelism", type=int)
    submit.add_argument("--from-savepoint", help="a savepoint or retained checkpoint path")
    submit.add_argument("--checkpoint-interval-ms", type=int, default=10_000)
    add_tuning_options(submit)

    savepoint = sub.add_parser("savepoint", help="stop a job on the cluster with a savepoint")
    savepoint.add_argument("job_id")
    savepoint.add_argument("--rest-port", type=int, default=8081)

    dbp = sub.add_parser("db", help="database schema")
    dbsub = dbp.add_subparsers(dest="db_command", required=True)
    mig = dbsub.add_parser("migrate", help="apply pending SQL migrations (idempotent)")
    _add_pg(mig)
    rot = dbsub.add_parser(
        "rotate-pseudonyms",
        help="rewrite every pseudonym with the key now in PROFILESTREAM_PSEUDONYM_KEY[_FILE]"
        " (stop the job first)",
    )
    _add_pg(rot)

    erase = sub.add_parser(
        "erase", help="forget a user: their Flink state and every PostgreSQL row about them"
    )
    erase.add_argument("user_id")
    _add_kafka(erase)
    _add_pg(erase)
    erase.add_argument("--group-id", default="profilestream", help="the job's consumer group")
    erase.add_argument(
        "--event-time-ms",
        type=int,
        help="event time of the request (default: now; set it when replaying historic data)",
    )
    erase.add_argument(
        "--wait-s",
        type=float,
        default=120,
        help="wait this long for the job to checkpoint past the request, then purge again "
        "(0: do not wait)",
    )

    services = sub.add_parser("services", help="the embedded services the demo starts")
    ssub = services.add_subparsers(dest="services_command", required=True)
    ssub.add_parser("stop", help="stop the embedded PostgreSQL left running by the demo")
    return parser


if TYPE_CHECKING:
    from udfs.sources import SyntheticSpec


def _synthetic(events: int, users: int, seed: int) -> SyntheticSpec:
    from udfs.sources import SyntheticSpec

    try:
        return SyntheticSpec(events=events, users=users, seed=seed)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _require(value: str | None, setting: str, flag: str) -> str:
    if not value:
        raise ConfigError(f"{setting} is not set: pass {flag} or set {setting}")
    return value


def cmd_setup(args: argparse.Namespace) -> int:
    from flink_jobs.runtime import install_connector_jars, install_java, jar_dir

    java = install_java()
    install_connector_jars()
    print(f"ready: Java {java.major} ({java.origin}), connector jars in {jar_dir()}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from flink_jobs.demo import DemoOptions, run_demo

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


def cmd_produce(args: argparse.Namespace) -> int:
    from flink_jobs.producer import ensure_topic, produce_dataset

    bootstrap = _require(args.bootstrap, "KAFKA_BOOTSTRAP", "--bootstrap")
    if args.fmt != "synthetic" and not args.file:
        raise ConfigError(f"--format {args.fmt} needs --file PATH")
    synthetic = args.fmt == "synthetic"
    spec = _synthetic(args.events if synthetic else 1, args.users if synthetic else 1, args.seed)
    partitions = ensure_topic(bootstrap, args.topic, args.partitions)
    result = produce_dataset(
        bootstrap, args.topic, args.fmt, args.file, spec, save_to=args.save_proto
    )
    report = result.report
    bad_rows = sorted(result.bad_rows)
    for line, msg in bad_rows[:20]:
        print(f"  skipped line {line}: {msg}", file=sys.stderr)
    if len(bad_rows) > 20:
        print(f"  ... and {len(bad_rows) - 20} more skipped lines", file=sys.stderr)
    for error in report.errors[:5]:
        print(f"  not delivered / refused: {error}", file=sys.stderr)
    why = Counter(msg.split(":", 1)[0] for _, msg in bad_rows)
    print(
        f"delivered {report.delivered} events to {args.topic}"
        f" ({report.failed} failed, {report.rejected} invalid refused, {len(bad_rows)} "
        "rows skipped"
        + (": " + ", ".join(f"{n} {w}" for w, n in why.most_common(6)) if why else "")
        + ")"
    )
    offsets = report.stopping_offsets(partitions)
    print("end offsets: " + ", ".join(f"partition {p}: {o}" for p, o in offsets.items()))
    print(
        "to process exactly these: profilestream run --stopping-offsets "
        + ",".join(f"{p}:{o}" for p, o in offsets.items())
    )
    return 0 if report.failed == 0 else 1


def cmd_run(args: argparse.Namespace) -> int:
    from flink_jobs.job import preflight, run_job

    config = JobConfig(
        kafka_bootstrap=_require(args.bootstrap, "KAFKA_BOOTSTRAP", "--bootstrap"),
        pg_dsn=_require(args.pg_dsn, "PG_DSN", "--pg-dsn"),
        topic=args.topic,
        model_dir=args.model_dir,
        state_dir=args.state_dir,
        parallelism=args.parallelism,
        checkpoint_interval_ms=args.checkpoint_interval_ms,
        stopping_offsets=parse_offsets(args.stopping_offsets) if args.stopping_offsets else None,
        restore_from=args.restore_from,
        **tuning_values(args),
    )
    java = preflight(config)
    print(
        f"running {config.job_name}: {config.topic}@{config.kafka_bootstrap} -> "
        f"{config.jdbc_url} (Ctrl-C cancels; checkpoints in {config.checkpoint_dir})"
    )
    result = run_job(config, java)
    print(f"job {result.job_id} {result.status} after {result.wall_s:.1f} s")
    return 0 if result.status in ("FINISHED", "CANCELED") else 1


def _log_args(args: argparse.Namespace) -> tuple[Path | None, object]:

    if args.fmt == "synthetic":
        return None, _synthetic(args.synthetic_events, args.synthetic_users, args.seed)
    if args.events is None:
        raise ConfigError(f"--format {args.fmt} needs --events FILE")
    if not args.events.is_file():
        raise ConfigError(f"--events {args.events}: no such file")
    return args.events, None


def _example_spec(args: argparse.Namespace, model: dict[str, Any] | None = None) -> Any:
    from models.dataset import ExampleSpec

    saved = (model or {}).get("examples", {})

    def pick(name: str, key: str, fallback: Any) -> Any:
        value = getattr(args, name)
        return value if value is not None else saved.get(key, fallback)

    horizon = float(pick("horizon_hours", "horizon_hours", 24.0))
    period = args.period_hours if args.period_hours is not None else saved.get("period_hours")
    try:
        return ExampleSpec(
            horizon_ms=int(horizon * 3_600_000),
            period_ms=int(float(period if period is not None else horizon) * 3_600_000),
            tz_offset_hours=float(pick("tz_offset_hours", "tz_offset_hours", 8.0)),
            mode=str(pick("mode", "mode", "cutoff")),
        )
    except ValueError as exc:
        raise ConfigError(f"examples: {exc}") from exc


def cmd_train(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from models.train import MODELS_DIR, run_training
    from udfs.params import ProfileParams

    path, synthetic = _log_args(args)
    version = args.version or f"{args.fmt}-{datetime.now(UTC).strftime('%Y%m%d')}"
    out = args.out or MODELS_DIR / version
    meta = run_training(
        args.fmt, path, out, version, ProfileParams(), _example_spec(args), synthetic,
        n_boot=args.bootstrap,
    )  # fmt: skip
    print(f"wrote {out}: model.txt, metadata.json, report.md and plots")
    _print_evaluation(meta["evaluation"])
    return 0


def _print_evaluation(ev: dict[str, Any]) -> None:
    from models.report import LABELS, verdict

    mean = ev["rolling_origin_mean_roc_auc"]
    print(
        f"  {ev['examples']:,} test examples from {ev['users']:,} users over "
        f"{len(ev['per_period'])} rolling-origin periods; 95 % user-clustered bootstrap intervals"
    )
    print(
        f"  {'model':<26} {'mean AUC':>8}  {'pooled ROC-AUC':<24} {'PR-AUC':<24} "
        f"{'log-loss':<24} {'ECE':<24}"
    )

    def ci(m: dict[str, Any], key: str) -> str:
        lo, hi = m[f"{key}_ci"]
        return "n/a" if m[key] is None else f"{m[key]:.4f} [{lo:.4f}, {hi:.4f}]"

    for name, m in ev["pooled"].items():
        print(
            f"  {LABELS[name]:<26} {mean[name]:>8.4f}  {ci(m, 'roc_auc'):<24} "
            f"{ci(m, 'pr_auc'):<24} {ci(m, 'log_loss'):<24} {ci(m, 'ece'):<24}"
        )
    held = ev["held_out_users"]
    print(
        f"  held-out users: ROC-AUC {held['roc_auc_held_out']:.4f} vs "
        f"{held['roc_auc_seen']:.4f} on users fitted on"
    )
    for line in verdict(ev):
        print("  " + line[2:])


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from models.train import evaluate, load_examples, summary_json
    from udfs.params import ProfileParams
    from udfs.scoring import read_metadata

    info = read_metadata(args.model)  # fails early, naming the fix, on a bad directory
    path, synthetic = _log_args(args)
    spec = _example_spec(args, info.metadata)
    ex, provenance = load_examples(
        args.fmt, path, ProfileParams(), spec, synthetic, show_progress=not args.json
    )
    result = evaluate(args.model, ex, n_boot=args.bootstrap)
    if args.json:
        print(json.dumps(summary_json(result), indent=2))
        return 0
    print(
        f"model {info.name} {info.version} on {provenance['source']}: "
        f"{provenance['events']:,} events, {provenance['time_range'][0]} .. "
        f"{provenance['time_range'][1]}; {len(ex.y):,} examples ({spec.mode}, "
        f"{spec.horizon_ms / 3_600_000:g} h label)"
    )
    _print_evaluation(result)
    shipped = result["shipped_model"]
    print(
        f"  the shipped model itself on every example: ROC-AUC {shipped['roc_auc']:.4f}, "
        f"ECE {shipped['ece']:.4f} (in-sample when this is its training log)"
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from flink_jobs.verify import print_report, verify
    from udfs.params import ProfileParams
    from udfs.pseudonym import Pseudonymiser, load_key

    dsn = _require(args.pg_dsn, "PG_DSN", "--pg-dsn")
    path, spec = _log_args(args)
    report = verify(
        args.fmt,
        path,
        dsn,
        args.model_dir,
        ProfileParams(),
        Pseudonymiser(load_key()),
        topic=args.topic,
        spec=spec,
    )
    print_report(report, args.examples)
    return 0 if report.ok else 1


def cmd_cluster(args: argparse.Namespace) -> int:
    from flink_jobs.cluster import LocalCluster

    cluster = LocalCluster(
        rest_port=args.rest_port,
        rpc_port=getattr(args, "rpc_port", None) or 6123,
        retained_checkpoints=getattr(args, "retained_checkpoints", None) or 3,
    )
    if args.cluster_command == "start":
        overview = cluster.start(args.taskmanagers)
        print(
            f"Flink {overview['flink-version']} cluster up: {overview['taskmanagers']} "
            f"TaskManager(s), {overview['slots-total']} slots, {cluster.url} "
            f"(config and logs in {cluster.home})"
        )
    elif args.cluster_command == "status":
        if not cluster.running():
            print(f"no cluster answers on {cluster.url}")
            return 1
        status = cluster.status()
        o = status["overview"]
        print(
            f"{o['taskmanagers']} TaskManager(s), {o['slots-available']}/{o['slots-total']} "
            f"slots free, {o['jobs-running']} job(s) running"
        )
        for job in status["jobs"]:
            print(f"  {job['jid']}  {job['state']:<10} {job['name']}")
    else:
        cluster.stop()
        print("cluster stopped")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from flink_jobs.cluster import LocalCluster
    from flink_jobs.config import split_password
    from flink_jobs.db import check_pseudonym_key, require_schema
    from flink_jobs.producer import check_broker
    from udfs.pseudonym import ENV_KEY_FILE, Pseudonymiser, load_key

    config = JobConfig(
        kafka_bootstrap=_require(args.bootstrap, "KAFKA_BOOTSTRAP", "--bootstrap"),
        pg_dsn=_require(args.pg_dsn, "PG_DSN", "--pg-dsn"),
        topic=args.topic,
        model_dir=args.model_dir,
        checkpoint_interval_ms=args.checkpoint_interval_ms,
        **tuning_values(args),
    )
    check_broker(config.kafka_bootstrap)
    require_schema(config.pg_dsn)
    pseudonymiser = Pseudonymiser(load_key())  # the workers read it themselves; checked here
    check_pseudonym_key(config.pg_dsn, pseudonymiser.key_id)
    dsn, password = split_password(config.pg_dsn)
    job_args = [
        "--bootstrap",
        config.kafka_bootstrap,
        "--pg-dsn",
        dsn,
        "--topic",
        config.topic,
        "--model-dir",
        str(config.model_dir),
        "--checkpoint-interval-ms",
        str(config.checkpoint_interval_ms),
        *tuning_args(config),
    ]
    key_file = os.environ.get(ENV_KEY_FILE)
    if key_file:
        job_args += ["--pseudonym-key-file", str(Path(key_file).resolve())]
    job_id = LocalCluster(rest_port=args.rest_port).submit(
        job_args,
        parallelism=args.parallelism,
        from_savepoint=args.from_savepoint,
        jobmanager=args.jobmanager,
        secrets={"PGPASSWORD": password} if password else None,
    )
    print(f"submitted job {job_id}")
    return 0


def cmd_savepoint(args: argparse.Namespace) -> int:
    from flink_jobs.cluster import LocalCluster, stop_with_savepoint

    path = stop_with_savepoint(LocalCluster(rest_port=args.rest_port), args.job_id)
    print(f"job {args.job_id} stopped; savepoint {path}")
    print(f"resume with: profilestream submit --from-savepoint {path} ...")
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from flink_jobs import db

    dsn = _require(args.pg_dsn, "PG_DSN", "--pg-dsn")
    if args.db_command == "rotate-pseudonyms":
        from udfs.pseudonym import Pseudonymiser, load_key

        pseudonymiser = Pseudonymiser(load_key())
        db.require_schema(dsn)
        profiles, history = db.rotate_pseudonyms(dsn, pseudonymiser, pseudonymiser.key_id)
        print(
            f"pseudonyms rewritten with key id {pseudonymiser.key_id}: {profiles} profiles, "
            f"{history} history rows"
        )
        return 0
    applied = db.migrate(dsn)
    version = db.schema_version(dsn)
    print(
        f"schema at version {version}; applied now: "
        + (", ".join(m.path.name for m in applied) or "nothing (up to date)")
    )
    return 0


def cmd_erase(args: argparse.Namespace) -> int:
    from flink_jobs.erase import erase_user

    return erase_user(
        args.user_id,
        bootstrap=_require(args.bootstrap, "KAFKA_BOOTSTRAP", "--bootstrap"),
        topic=args.topic,
        pg_dsn=_require(args.pg_dsn, "PG_DSN", "--pg-dsn"),
        group_id=args.group_id,
        event_time_ms=args.event_time_ms,
        wait_s=args.wait_s,
    )


def cmd_services(args: argparse.Namespace) -> int:
    from flink_jobs.demo import embedded_postgres

    pg = embedded_postgres()
    if pg.running():
        pg.stop()
        print("embedded PostgreSQL stopped")
    else:
        print("embedded PostgreSQL is not running")
    return 0


COMMANDS = {
    "setup": cmd_setup,
    "demo": cmd_demo,
    "produce": cmd_produce,
    "run": cmd_run,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "verify": cmd_verify,
    "cluster": cmd_cluster,
    "submit": cmd_submit,
    "savepoint": cmd_savepoint,
    "db": cmd_db,
    "erase": cmd_erase,
    "services": cmd_services,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    for name in ("flink_jobs", "udfs", "models"):  # dependencies may raise the root level later
        logging.getLogger(name).setLevel(logging.INFO if args.verbose else logging.WARNING)
    from flink_jobs.job import setup_error_types

    try:
        return COMMANDS[args.command](args)
    except setup_error_types() as exc:
        print(f"profilestream {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"profilestream {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
