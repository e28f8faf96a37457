"""The job's entry point under `flink run` (a JobManager given with -m):

    flink run -m host:8081 -d -j <connector jars> -pym flink_jobs.job.entry \
        --bootstrap broker:9092 --pg-dsn postgresql://user@host/db [--topic T] [--model-dir D] ...

`profilestream submit` builds that command. Flink options go before `-pym`, job options after.
This module runs in the `flink run` client: it registers the job's segmentation (--segments-dir)
in PostgreSQL's segment_clusters before submitting (flink_jobs.job.run.register_job_segmentation).
Secrets never travel as arguments (Flink logs and shows them): the database password comes from
PGPASSWORD in the client's environment, the pseudonym key from the workers' environment or the
file named by --pseudonym-key-file.
"""

from __future__ import annotations

import logging
import sys

from flink_jobs.config import JobConfig


def main(argv: list[str] | None = None) -> None:
    from flink_jobs.job.pipeline import (
        JdbcSinks,
        build_pipeline,
        cluster_environment,
        kafka_source,
        table_environment,
    )
    from flink_jobs.job.run import register_job_segmentation

    logging.basicConfig(level=logging.INFO)
    config = JobConfig.from_args(sys.argv[1:] if argv is None else argv)
    register_job_segmentation(config)
    env = cluster_environment(config)
    t_env = table_environment(env, config)
    sinks = JdbcSinks(t_env, config)
    build_pipeline(env, kafka_source(t_env, config), sinks, config)
    sinks.attach()
    env.execute(config.job_name)


if __name__ == "__main__":
    main()
