"""Running the profile job: pre-flight checks with one-line errors, submission, progress, and the
root cause (not a Java stack trace) when it fails."""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from flink_jobs.config import JobConfig
from flink_jobs.io.db import check_pseudonym_key, require_schema
from flink_jobs.io.producer import check_broker
from flink_jobs.io.segments import register_segmentation
from flink_jobs.ops.runtime import Java, connector_jars, find_java
from udfs.clusters import load_segmentation
from udfs.errors import ConfigError, JobFailed, KafkaUnavailable
from udfs.pseudonym import Pseudonymiser, load_key
from udfs.scoring import Scorer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobResult:
    job_id: str
    status: str
    wall_s: float


def preflight(config: JobConfig, target: Literal["local", "cluster"] = "local") -> Java:
    """Everything that can be checked before a job starts; each failure is one actionable line.

    "local" (`run`, the demo): Java, the connector jars, the model, the segmentation, the
    pseudonym key, a writable checkpoint directory, the broker and the topic, the database schema
    and the key it was written with. "cluster" (`submit`): what the submitting machine can check
    (the model and the checkpoint directory are the cluster's; the topic may be created after the
    job starts), the segmentation included: the `flink run` client registers it from this
    machine (flink_jobs.job.entry)."""
    java = find_java()
    connector_jars(verify=True)
    pseudonymiser = Pseudonymiser(load_key(config.pseudonym_key_file))
    load_segmentation(config.segments_dir)  # ModelError on a missing or malformed segmentation
    if target == "local":
        Scorer(config.model_dir).close()  # raises ModelError on a missing or mismatched model
        check_writable(
            config.checkpoint_dir, "checkpoint directory", "--state-dir or PROFILESTREAM_STATE_DIR"
        )
    topics = check_broker(config.kafka_bootstrap)
    if target == "local" and config.topic not in topics:
        raise KafkaUnavailable(
            f"topic {config.topic!r} does not exist on {config.kafka_bootstrap} (topics: "
            f"{sorted(topics)[:10]}): create it (`profilestream produce` does) or fix --topic"
        )
    require_schema(config.pg_dsn)
    check_pseudonym_key(config.pg_dsn, pseudonymiser.key_id)
    return java


def register_job_segmentation(config: JobConfig) -> None:
    """Register the segmentation the job assigns in segment_clusters (idempotent; a ModelError
    when its version is registered with other content): done by whoever starts the job, before
    any row names it."""
    segmentation = load_segmentation(config.segments_dir)
    if register_segmentation(config.pg_dsn, segmentation):
        log.info("segmentation %s registered in segment_clusters", segmentation.version)


def check_writable(directory: Path, what: str, setting: str) -> None:
    """Create `directory` if needed and prove a file can be written there."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"the {what} {directory} is not writable ({exc.strerror}): set {setting} to a "
            "writable directory, or fix its permissions"
        ) from None


def root_cause(exc: BaseException) -> str:
    """The innermost 'Caused by' line of a Java exception, else the exception's first line."""
    text = str(exc)
    causes = re.findall(r"Caused by: ([^\n]+)", text)
    if causes:
        return str(causes[-1]).strip()
    first = text.strip().splitlines()
    return first[0] if first else type(exc).__name__


def run_job(
    config: JobConfig,
    java: Java | None = None,
    on_tick: Callable[[], None] | None = None,
    tick_s: float = 0.5,
    stop_when: Callable[[], bool] | None = None,
) -> JobResult:
    """Build the production pipeline (Kafka -> profiles -> PostgreSQL) and run it until it ends
    (bounded by stopping offsets) or is interrupted (Ctrl-C cancels the job; the last
    checkpoint is retained for a restore)."""
    from flink_jobs.job.pipeline import (
        JdbcSinks,
        build_pipeline,
        create_environment,
        kafka_source,
        table_environment,
    )

    java = java or find_java()
    start = time.monotonic()
    register_job_segmentation(config)
    env = create_environment(config, java)
    t_env = table_environment(env, config)
    sinks = JdbcSinks(t_env, config)
    build_pipeline(env, kafka_source(t_env, config), sinks, config)
    sinks.attach()
    client = env.execute_async(config.job_name)
    job_id = str(client.get_job_id())
    log.info("submitted job %s", job_id)
    # The local MiniCluster shuts down once the job ends, so wait on the result future (taken
    # now) instead of polling the job status.
    outcome = client.get_job_execution_result()
    # Ctrl-C / SIGTERM must not interrupt a py4j call half-way (that corrupts the gateway
    # connection): note the signal, leave the loop, then cancel the job cleanly.
    stop_requested: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    if threading.current_thread() is threading.main_thread():
        for sig in previous:
            signal.signal(sig, lambda signum, frame: stop_requested.append(signum))
    try:
        while not stop_requested and not outcome.done():
            if on_tick:
                on_tick()
            if stop_when is not None and stop_when():
                stop_requested.append(0)
                break
            time.sleep(tick_s)
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if stop_requested:
        if stop_requested[0]:  # a signal, not stop_when
            log.warning("stop requested: cancelling job %s (checkpoints are retained)", job_id)
        client.cancel().result()
        status = "CANCELED"
    else:
        try:
            outcome.result()
        except Exception as exc:  # py4j wraps the Java failure; keep only its root cause
            raise JobFailed(f"job {job_id} failed: {root_cause(exc)}") from None
        status = "FINISHED"
    if on_tick:
        on_tick()
    return JobResult(job_id=job_id, status=status, wall_s=time.monotonic() - start)
