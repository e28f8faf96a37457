"""The job's entry point under `flink run` (a JobManager given with -m):

    flink run -m host:8081 -d -j <connector jars> -pym flink_jobs.job.entry \
        --bootstrap broker:9092 --pg-dsn postgresql://user@host/db [--topic T] [--model-dir D] ...

`profilestream submit` builds that command. Flink options go before `-pym`, job options after.
Secrets never travel as arguments (Flink logs and shows them): the database password comes from
PGPASSWORD in the client's environment, the pseudonym key from the workers' environment or the
file named by --pseudonym-key-file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from flink_jobs.config import (
    DEFAULT_MODEL_DIR,
    DEFAULT_TOPIC,
    JobConfig,
    add_tuning_options,
    parse_offsets,
    tuning_values,
)


def parse(argv: list[str]) -> JobConfig:
    p = argparse.ArgumentParser(prog="flink_jobs.job.entry")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--pg-dsn", required=True)
    p.add_argument("--topic", default=DEFAULT_TOPIC)
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--job-name", default="profilestream-profiles")
    p.add_argument("--checkpoint-interval-ms", type=int, default=10_000)
    p.add_argument("--stopping-offsets")
    p.add_argument("--pseudonym-key-file", type=Path)
    add_tuning_options(p)
    args = p.parse_args(argv)
    return JobConfig(
        kafka_bootstrap=args.bootstrap,
        pg_dsn=args.pg_dsn,
        topic=args.topic,
        model_dir=args.model_dir.resolve(),
        job_name=args.job_name,
        checkpoint_interval_ms=args.checkpoint_interval_ms,
        stopping_offsets=parse_offsets(args.stopping_offsets) if args.stopping_offsets else None,
        pseudonym_key_file=args.pseudonym_key_file,
        **tuning_values(args),
    )


def main(argv: list[str] | None = None) -> None:
    from flink_jobs.job.pipeline import (
        JdbcSinks,
        build_pipeline,
        cluster_environment,
        kafka_source,
        table_environment,
    )

    logging.basicConfig(level=logging.INFO)
    config = parse(sys.argv[1:] if argv is None else argv)
    env = cluster_environment(config)
    t_env = table_environment(env, config)
    sinks = JdbcSinks(t_env, config)
    build_pipeline(env, kafka_source(t_env, config), sinks, config)
    sinks.attach()
    env.execute(config.job_name)


if __name__ == "__main__":
    main()
