"""The Flink configuration, built in one place for the three ways the job runs:

- "local":   `profilestream run`, the demo and the tests: a MiniCluster in this process, with its
             own RocksDB directories, checkpoints and restart strategy;
- "submit":  the job under `flink run` (flink_jobs.job.entry): the cluster's configuration
             applies, the job adds only what is its own (checkpoint interval, jars, uids);
- "cluster": `profilestream cluster start`: the JobManager's and TaskManagers' config.yaml.

and for the two container deployments in docker/ (`deployment_settings`, written into those files
by flink_jobs.ops.deploy): "compose" (the image's config.yaml) and "kubernetes" (the
FlinkDeployment's flinkConfiguration).

The settings every mode shares (thread mode, RocksDB with incremental retained checkpoints, a
fixed-delay restart strategy, the Prometheus reporter on clusters) are written once below.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from flink_jobs.config import DEFAULT_METRICS_PORTS, ClusterSettings, JobConfig
from flink_jobs.ops.runtime import connector_jars

Mode = Literal["local", "submit", "cluster"]
Deployment = Literal["compose", "kubernetes"]

# Process sizes of the standalone cluster's and the containers' JobManager and TaskManagers.
JOBMANAGER_MEMORY = "1024m"
TASKMANAGER_MEMORY = "1536m"


def _python(executable: str = sys.executable) -> dict[str, str]:
    return {
        "python.execution-mode": "thread",
        "python.executable": executable,
        "python.client.executable": executable,
    }


def _checkpointing(retained: int) -> dict[str, str]:
    return {
        "execution.checkpointing.incremental": "true",
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.num-retained": str(retained),
    }


def _state(tmp: PurePosixPath | Path, checkpoints: str, restart_attempts: int) -> dict[str, str]:
    """RocksDB working files under `tmp`, checkpoints at the URI `checkpoints`."""
    return {
        "state.backend.type": "rocksdb",
        "state.backend.rocksdb.localdir": str(tmp / "rocksdb"),
        # A user's first event (and every read after the profile cache evicted it) asks RocksDB
        # for its state; without a filter a key that is not there is searched for in every
        # file's index and data blocks (docs/performance.md, "Bloom filters").
        "state.backend.rocksdb.use-bloom-filter": "true",
        "io.tmp.dirs": str(tmp),
        "execution.checkpointing.dir": checkpoints,
        "restart-strategy.type": "fixed-delay",
        "restart-strategy.fixed-delay.attempts": str(restart_attempts),
        "restart-strategy.fixed-delay.delay": "2 s",
    }


def _savepoints(uri: str) -> dict[str, str]:
    return {"execution.checkpointing.savepoint-dir": uri}


def _heartbeats() -> dict[str, str]:
    # A killed TaskManager is noticed in seconds, not after the 50 s default.
    return {"heartbeat.interval": "1000", "heartbeat.timeout": "5000"}


def _job(config: JobConfig) -> dict[str, str]:
    return {
        "execution.checkpointing.interval": f"{config.checkpoint_interval_ms} ms",
        "execution.buffer-timeout.interval": f"{config.buffer_timeout_ms} ms",
        "pipeline.name": config.job_name,
        # Shipped with the job (flink run's -j takes a single jar).
        "pipeline.jars": ";".join(p.resolve().as_uri() for p in connector_jars()),
        # Table API operators (the source and the JDBC sinks) get deterministic uids too.
        "table.exec.uid.generation": "ALWAYS",
    }


PROMETHEUS_REPORTER = "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"


def prometheus_reporter(ports: str) -> dict[str, str]:
    """Flink's Prometheus reporter (the `metrics-prometheus` plugin in the wheel's plugins/):
    every JobManager and TaskManager process serves /metrics on a free port of `ports`.

    The reporter takes a port and nothing else about where to listen: it binds the wildcard
    address (all interfaces), unlike the REST and RPC endpoints, which the cluster keeps on
    loopback. Label values are kept as they are (by default the reporter turns every character
    outside [a-zA-Z0-9:_] into "_": model version "taobao-v2" would read "taobao_v2")."""
    return {
        "metrics.reporter.prom.factory.class": PROMETHEUS_REPORTER,
        "metrics.reporter.prom.port": ports,
        "metrics.reporter.prom.filterLabelValueCharacters": "false",
    }


def _loopback_rest(port: int) -> dict[str, str]:
    return {"rest.port": str(port), "rest.address": "127.0.0.1", "rest.bind-address": "127.0.0.1"}


def flink_settings(
    mode: Mode,
    config: JobConfig | None = None,
    *,
    cluster: ClusterSettings | None = None,
    cluster_home: Path | None = None,
) -> dict[str, str]:
    """Flink's settings (key -> value) for `mode`: "local" and "submit" need the job's `config`;
    "cluster" the cluster's `cluster` settings and its `cluster_home` directory."""
    if mode == "cluster":
        if cluster is None or cluster_home is None:
            raise ValueError("flink_settings('cluster') needs cluster= and cluster_home=")
        tmp = cluster_home / "tmp"
        return {
            "jobmanager.bind-host": "localhost",
            "jobmanager.rpc.address": "localhost",
            "jobmanager.rpc.port": str(cluster.rpc_port),
            "jobmanager.memory.process.size": JOBMANAGER_MEMORY,
            "taskmanager.bind-host": "localhost",
            "taskmanager.host": "localhost",
            "taskmanager.memory.process.size": TASKMANAGER_MEMORY,
            "taskmanager.numberOfTaskSlots": str(cluster.slots_per_taskmanager),
            **_loopback_rest(cluster.rest_port),
            "blob.server.port": "0",
            "parallelism.default": "1",
            **_state(
                tmp, (cluster_home / "checkpoints").resolve().as_uri(), cluster.restart_attempts
            ),
            **_savepoints((cluster_home / "savepoints").resolve().as_uri()),
            **_checkpointing(cluster.retained_checkpoints),
            **_heartbeats(),
            **_python(),
            **prometheus_reporter(cluster.metrics_ports),
            "env.pid.dir": str(cluster_home / "pids"),
        }
    if config is None:
        raise ValueError(f"flink_settings({mode!r}) needs the job's config")
    if mode == "submit":
        # Everything else (state backend, directories, restart strategy, Python) is the cluster's.
        return {
            "python.execution-mode": "thread",
            "execution.checkpointing.incremental": "true",
            "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
            **_job(config),
        }
    tmp = config.state_dir / "tmp"
    settings = {
        **_python(),
        **_state(tmp, config.checkpoint_dir.resolve().as_uri(), config.restart_attempts),
        # RocksDB's own LOG files (by default in Flink's log dir: site-packages/pyflink/log).
        "state.backend.rocksdb.log.dir": str(tmp / "rocksdb-logs"),
        **_checkpointing(3),
        "parallelism.default": str(config.parallelism),
        **_job(config),
    }
    if config.restore_from:
        settings["execution.state-recovery.path"] = config.restore_from
    settings.update(config.flink_settings)
    if config.rest_port is not None:
        settings.update(_loopback_rest(config.rest_port))
    return settings


@dataclass(frozen=True)
class ContainerLayout:
    """The paths inside the project's image (docker/Dockerfile) that Flink settings name."""

    python: str = "/opt/venv/bin/python"
    # Checkpoints, savepoints and HA metadata: a volume every Flink process of a deployment shares
    # (a named volume in compose, a ReadWriteMany PersistentVolumeClaim on Kubernetes).
    data: str = "/flink-data"
    tmp: str = "/tmp/flink"  # RocksDB working files and Flink's temporary files, per container
    # One Flink process per container: the reporter always gets the first port of the range.
    metrics_port: str = DEFAULT_METRICS_PORTS.split("-")[0]

    def data_uri(self, name: str) -> str:
        return PurePosixPath(self.data, name).as_uri()


def deployment_settings(
    target: Deployment,
    layout: ContainerLayout | None = None,
    cluster: ClusterSettings | None = None,
) -> dict[str, str]:
    """Flink's settings for the containers in docker/: "compose" (a session cluster of the
    project's image: its config.yaml) or "kubernetes" (the Flink Kubernetes Operator's
    FlinkDeployment, whose operator sets addresses, ports and memory itself). Paths are the
    image's (`layout`); retention, restarts, slots and ports are the standalone cluster's."""
    layout = layout or ContainerLayout()
    cluster = cluster or ClusterSettings()
    shared = {
        "taskmanager.numberOfTaskSlots": str(cluster.slots_per_taskmanager),
        "parallelism.default": "1",
        **_state(
            PurePosixPath(layout.tmp), layout.data_uri("checkpoints"), cluster.restart_attempts
        ),
        **_savepoints(layout.data_uri("savepoints")),
        **_checkpointing(cluster.retained_checkpoints),
        **_python(layout.python),
        **prometheus_reporter(layout.metrics_port),
    }
    if target == "kubernetes":
        return {
            **shared,
            # The JobManager's failover and the operator's savepoint upgrades keep their
            # bookkeeping next to the checkpoints.
            "high-availability.type": "kubernetes",
            "high-availability.storageDir": layout.data_uri("ha"),
        }
    return {
        "jobmanager.bind-host": "0.0.0.0",
        "jobmanager.rpc.port": str(cluster.rpc_port),
        "jobmanager.memory.process.size": JOBMANAGER_MEMORY,
        "taskmanager.bind-host": "0.0.0.0",
        "taskmanager.memory.process.size": TASKMANAGER_MEMORY,
        "rest.port": str(cluster.rest_port),
        "rest.address": "0.0.0.0",
        "rest.bind-address": "0.0.0.0",
        **shared,
        **_heartbeats(),
    }
