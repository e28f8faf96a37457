"""The steps of an end-to-end run on real components: publish a file with `profilestream
produce` (which prints the stopping offsets) and run the job on a Flink MiniCluster until it has
read up to them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from flink_jobs.config import JobConfig, parse_offsets
from flink_jobs.job.run import preflight, run_job
from tests.support.cli import cli


def produce_file(kafka: str, topic: str, fmt: str, path: Path) -> dict[int, int]:
    proc = cli(
        "produce", "--bootstrap", kafka, "--topic", topic, "--format", fmt, "--file", str(path)
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = re.search(r"--stopping-offsets (\S+)", proc.stdout)
    assert match, proc.stdout
    return parse_offsets(match.group(1))


def job_config(kafka: str, pg_dsn: str, topic: str, state_dir: Path, **fields: Any) -> JobConfig:
    """A test job: named after its topic, state under `state_dir`, checkpoints every second."""
    return JobConfig(
        kafka_bootstrap=kafka,
        pg_dsn=pg_dsn,
        topic=topic,
        job_name=topic,
        state_dir=state_dir,
        checkpoint_interval_ms=1000,
        **fields,
    )


def run_bounded(
    kafka: str,
    pg_dsn: str,
    topic: str,
    offsets: dict[int, int],
    tmp_path: Path,
    restart_attempts: int = 3,
    **fields: Any,
) -> None:
    config = job_config(
        kafka,
        pg_dsn,
        topic,
        tmp_path,
        stopping_offsets=offsets,
        restart_attempts=restart_attempts,
        **fields,
    )
    result = run_job(config, preflight(config))
    assert result.status == "FINISHED"
