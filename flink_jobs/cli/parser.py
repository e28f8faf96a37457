"""The `profilestream` argument parser: the options commands share, and one parser assembled from
the command groups (each group module registers its own subcommands)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flink_jobs.config import (
    DEFAULT_CHECKPOINT_INTERVAL_MS,
    DEFAULT_MODEL_POLL_INTERVAL_MS,
    Environment,
    JobConfig,
    add_tuning_options,
    require,
    tuning_values,
)
from udfs.errors import ConfigError

if TYPE_CHECKING:
    from udfs.sources import SyntheticSpec

Subparsers = Any  # argparse's private _SubParsersAction
LOG_FORMATS = ["taobao", "rees46", "proto", "synthetic"]


def build_parser() -> argparse.ArgumentParser:
    from flink_jobs.cli import data, demo, events, job, model, segments, status

    parser = argparse.ArgumentParser(
        prog="profilestream",
        description="Real-time e-commerce user profiles on Apache Flink.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    env = Environment.read()
    for group in (demo, events, job, model, segments, data, status):
        group.register(sub, env)
    return parser


def add_kafka(p: argparse.ArgumentParser, env: Environment) -> None:
    p.add_argument(
        "--bootstrap",
        default=env.kafka_bootstrap,
        help="Kafka bootstrap servers host:port (env KAFKA_BOOTSTRAP)",
    )
    p.add_argument(
        "--topic",
        default=env.topic,
        help=f"events topic (env PROFILESTREAM_TOPIC, default {Environment.topic})",
    )


def add_pg(p: argparse.ArgumentParser, env: Environment) -> None:
    p.add_argument(
        "--pg-dsn",
        default=env.pg_dsn,
        help="postgresql://user:password@host:port/db (env PG_DSN)",
    )


def add_model_dir(p: argparse.ArgumentParser, env: Environment, flag: str = "--model-dir") -> None:
    p.add_argument(flag, type=Path, default=env.model_dir, help="a model directory")


def add_segments_dir(p: argparse.ArgumentParser, env: Environment) -> None:
    p.add_argument(
        "--segments-dir",
        type=Path,
        default=env.segments_dir,
        help="a segmentation directory, the learned shopper segments every row is assigned to "
        "(env PROFILESTREAM_SEGMENTS_DIR, default models/segments/taobao-s1)",
    )


def add_job(p: argparse.ArgumentParser) -> None:
    """The job options `run` and `submit` share (defaults: JobConfig's)."""
    p.add_argument("--checkpoint-interval-ms", type=int, default=DEFAULT_CHECKPOINT_INTERVAL_MS)
    p.add_argument(
        "--model-poll-interval-ms",
        type=int,
        default=DEFAULT_MODEL_POLL_INTERVAL_MS,
        help="how often the job looks for a newly published model (0: never; default "
        f"{DEFAULT_MODEL_POLL_INTERVAL_MS})",
    )
    add_tuning_options(p)


def job_config(args: argparse.Namespace, **fields: Any) -> JobConfig:
    """The JobConfig of `run` / `submit` arguments (plus `fields`)."""
    return JobConfig(
        kafka_bootstrap=require(args.bootstrap, "KAFKA_BOOTSTRAP", "--bootstrap"),
        pg_dsn=require(args.pg_dsn, "PG_DSN", "--pg-dsn"),
        topic=args.topic,
        model_dir=args.model_dir,
        segments_dir=args.segments_dir,
        checkpoint_interval_ms=args.checkpoint_interval_ms,
        model_poll_interval_ms=args.model_poll_interval_ms,
        **tuning_values(args),
        **fields,
    )


def add_log(p: argparse.ArgumentParser, events: int, users: int) -> None:
    """An event log to read: a file of a format, or a synthetic one."""
    p.add_argument("--events", type=Path, help="the event log (not for synthetic)")
    p.add_argument("--format", dest="fmt", choices=LOG_FORMATS, required=True)
    p.add_argument("--synthetic-events", type=int, default=events)
    p.add_argument("--synthetic-users", type=int, default=users)
    p.add_argument("--seed", type=int, default=42)


def log_args(args: argparse.Namespace) -> tuple[Path | None, SyntheticSpec | None]:
    """(the log file, or the synthetic spec) of `add_log` arguments."""
    if args.fmt == "synthetic":
        return None, synthetic_spec(args.synthetic_events, args.synthetic_users, args.seed)
    if args.events is None:
        raise ConfigError(f"--format {args.fmt} needs --events FILE")
    if not args.events.is_file():
        raise ConfigError(f"--events {args.events}: no such file")
    return args.events, None


def synthetic_spec(events: int, users: int, seed: int) -> SyntheticSpec:
    from udfs.sources import SyntheticSpec

    try:
        return SyntheticSpec(events=events, users=users, seed=seed)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
