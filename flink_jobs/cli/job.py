"""Running the job: `profilestream run` (a local MiniCluster), and on a Flink standalone cluster
`cluster start|status|stop`, `submit` (flink run) and `savepoint` (stop with a savepoint)."""

from __future__ import annotations

import argparse
from pathlib import Path

from flink_jobs.cli.parser import (
    Subparsers,
    add_job,
    add_kafka,
    add_model_dir,
    add_pg,
    add_segments_dir,
    job_config,
)
from flink_jobs.config import ClusterSettings, Environment, parse_offsets
from flink_jobs.job.run import preflight, run_job
from flink_jobs.ops.cluster import LocalCluster, stop_with_savepoint

CLUSTER_DEFAULTS = ClusterSettings()


def register(sub: Subparsers, env: Environment) -> None:
    run = sub.add_parser("run", help="run the profile job (local MiniCluster)")
    add_kafka(run, env)
    add_pg(run, env)
    add_model_dir(run, env)
    add_segments_dir(run, env)
    run.add_argument(
        "--state-dir",
        type=Path,
        default=env.state_dir,
        help="checkpoints and RocksDB working files (.profilestream)",
    )
    run.add_argument("--parallelism", type=int, default=1)
    add_job(run)
    run.add_argument(
        "--stopping-offsets",
        help="stop at these offsets, e.g. 0:120,1:98 (default: run until Ctrl-C)",
    )
    run.add_argument("--restore-from", help="a retained checkpoint or savepoint to resume from")
    run.set_defaults(handler=cmd_run)

    cluster = sub.add_parser("cluster", help="a Flink standalone cluster on this machine")
    csub = cluster.add_subparsers(dest="cluster_command", required=True)
    cstart = csub.add_parser("start", help="start a JobManager and N TaskManagers")
    cstart.add_argument("--taskmanagers", type=int, default=1)
    cstart.add_argument("--rpc-port", type=int, default=CLUSTER_DEFAULTS.rpc_port)
    cstart.add_argument(
        "--retained-checkpoints",
        type=int,
        default=CLUSTER_DEFAULTS.retained_checkpoints,
        help=f"checkpoints kept per job ({CLUSTER_DEFAULTS.retained_checkpoints})",
    )
    cstart.add_argument(
        "--metrics-ports",
        default=CLUSTER_DEFAULTS.metrics_ports,
        help="Prometheus endpoints: each JobManager/TaskManager takes a free port of this range "
        f"({CLUSTER_DEFAULTS.metrics_ports}; Flink's reporter listens on all interfaces)",
    )
    for c in (cstart, csub.add_parser("status"), csub.add_parser("stop")):
        add_rest_port(c)
    cluster.set_defaults(handler=cmd_cluster)

    submit = sub.add_parser("submit", help="run the job on a Flink cluster (flink run)")
    add_kafka(submit, env)
    add_pg(submit, env)
    add_rest_port(submit, help_text="the cluster's REST port")
    submit.add_argument(
        "--jobmanager",
        help="host:port of any JobManager's REST endpoint "
        "(default: the local cluster, 127.0.0.1:<rest-port>)",
    )
    add_model_dir(submit, env)
    add_segments_dir(submit, env)
    submit.add_argument("--parallelism", type=int)
    submit.add_argument("--from-savepoint", help="a savepoint or retained checkpoint path")
    add_job(submit)
    submit.set_defaults(handler=cmd_submit)

    savepoint = sub.add_parser("savepoint", help="stop a job on the cluster with a savepoint")
    savepoint.add_argument("job_id")
    add_rest_port(savepoint)
    savepoint.set_defaults(handler=cmd_savepoint)


def add_rest_port(p: argparse.ArgumentParser, help_text: str | None = None) -> None:
    p.add_argument("--rest-port", type=int, default=CLUSTER_DEFAULTS.rest_port, help=help_text)


def cmd_run(args: argparse.Namespace) -> int:
    config = job_config(
        args,
        state_dir=args.state_dir,
        parallelism=args.parallelism,
        stopping_offsets=parse_offsets(args.stopping_offsets) if args.stopping_offsets else None,
        restore_from=args.restore_from,
    )
    java = preflight(config)
    print(
        f"running {config.job_name}: {config.topic}@{config.kafka_bootstrap} -> "
        f"{config.jdbc_url} (Ctrl-C cancels; checkpoints in {config.checkpoint_dir})"
    )
    result = run_job(config, java)
    print(f"job {result.job_id} {result.status} after {result.wall_s:.1f} s")
    return 0 if result.status in ("FINISHED", "CANCELED") else 1


def cmd_cluster(args: argparse.Namespace) -> int:
    cluster = LocalCluster(
        settings=ClusterSettings(
            rest_port=args.rest_port,
            rpc_port=getattr(args, "rpc_port", None) or CLUSTER_DEFAULTS.rpc_port,
            retained_checkpoints=getattr(args, "retained_checkpoints", None)
            or CLUSTER_DEFAULTS.retained_checkpoints,
            metrics_ports=getattr(args, "metrics_ports", None) or CLUSTER_DEFAULTS.metrics_ports,
        )
    )
    if args.cluster_command == "start":
        overview = cluster.start(args.taskmanagers)
        print(
            f"Flink {overview['flink-version']} cluster up: {overview['taskmanagers']} "
            f"TaskManager(s), {overview['slots-total']} slots, {cluster.url} "
            f"(config and logs in {cluster.home})"
        )
        print_metrics_endpoints(cluster)
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
        print_metrics_endpoints(cluster)
    else:
        cluster.stop()
        print("cluster stopped")
    return 0


def print_metrics_endpoints(cluster: LocalCluster) -> None:
    endpoints = cluster.metrics_endpoints()
    if not endpoints:
        return
    print("Prometheus metrics (Flink's reporter listens on all interfaces):")
    for e in endpoints:
        where = e.url or f"none (no free port in {cluster.settings.metrics_ports}, see the log)"
        print(f"  {e.process:<12} pid {e.pid:<8} {where}")


def cmd_submit(args: argparse.Namespace) -> int:
    env = Environment.read()
    config = job_config(
        args,
        pseudonym_key_file=env.pseudonym_key_file.resolve() if env.pseudonym_key_file else None,
        cluster=ClusterSettings(rest_port=args.rest_port, jobmanager=args.jobmanager),
    )
    preflight(config, target="cluster")
    job_id = LocalCluster(settings=config.cluster).submit(
        config.to_args(),
        parallelism=args.parallelism,
        from_savepoint=args.from_savepoint,
        secrets=config.secrets(),
    )
    print(f"submitted job {job_id}")
    return 0


def cmd_savepoint(args: argparse.Namespace) -> int:
    cluster = LocalCluster(settings=ClusterSettings(rest_port=args.rest_port))
    path = stop_with_savepoint(cluster, args.job_id)
    print(f"job {args.job_id} stopped; savepoint {path}")
    print(f"resume with: profilestream submit --from-savepoint {path} ...")
    return 0
