"""The job as Flink's REST API shows it, for `profilestream status`: its state and uptime, its
tasks, restarts and checkpoints (`udfs.health.Job`).

    cluster = LocalCluster(settings=ClusterSettings(jobmanager="jm:8081"))
    job_figures(cluster, "profilestream-profiles")

Any JobManager works (`ClusterSettings.address`), not only the local cluster. Ages are taken on
the JobManager's clock (`now` of `/jobs/<id>`), so a skewed clock here does not age them.
"""

from __future__ import annotations

from typing import Any

from flink_jobs.ops.cluster import LocalCluster
from udfs.errors import ClusterError
from udfs.health import Checkpoints, Job

# Job states after which a job never runs again: another job of the same name is preferred.
TERMINAL = frozenset({"FINISHED", "CANCELED", "FAILED"})
# Flink reports a disabled checkpoint interval as Long.MAX_VALUE.
NO_INTERVAL = 2**62
TIMEOUT_S = 3.0


def job_figures(cluster: LocalCluster, name: str) -> Job:
    """The job called `name` (a running one, else the newest); a ClusterError when the JobManager
    does not answer."""
    jobs = [j for j in _get(cluster, "/jobs/overview").get("jobs", []) if j.get("name") == name]
    if not jobs:
        return Job(name=name)
    chosen = max(jobs, key=lambda j: (j.get("state") not in TERMINAL, j.get("start-time", 0)))
    job_id = str(chosen["jid"])
    details = _get(cluster, f"/jobs/{job_id}")
    now = int(details["now"])
    state = str(details["state"])
    since_running = int(details.get("timestamps", {}).get("RUNNING", 0))
    return Job(
        name=name,
        job_id=job_id,
        state=state,
        running_ms=now - since_running if state == "RUNNING" and since_running > 0 else None,
        submitted_ms=now - int(details["start-time"]),
        ended_ms=now - ended if (ended := int(details.get("end-time", -1))) > 0 else None,
        restarts=_restarts(cluster, job_id),
        tasks={s: int(n) for s, n in details.get("status-counts", {}).items() if int(n)},
        checkpoints=_checkpoints(cluster, job_id, now),
    )


def _restarts(cluster: LocalCluster, job_id: str) -> int:
    try:
        metrics = _get(cluster, f"/jobs/{job_id}/metrics?get=numRestarts")
    except ClusterError:  # a job that ended has no metrics
        return 0
    return next((int(float(m["value"])) for m in metrics if m.get("id") == "numRestarts"), 0)


def _checkpoints(cluster: LocalCluster, job_id: str, now: int) -> Checkpoints | None:
    try:
        stats = _get(cluster, f"/jobs/{job_id}/checkpoints")
        config = _get(cluster, f"/jobs/{job_id}/checkpoints/config")
    except ClusterError:  # checkpointing off, or a job that never ran
        return None
    interval = int(config.get("interval", 0))
    counts = stats.get("counts", {})
    last = (stats.get("latest") or {}).get("completed")
    figures = Checkpoints(
        interval_ms=interval if 0 < interval < NO_INTERVAL else 0,
        completed=int(counts.get("completed", 0)),
        failed=int(counts.get("failed", 0)),
    )
    if not last:
        return figures
    return Checkpoints(
        interval_ms=figures.interval_ms,
        completed=figures.completed,
        failed=figures.failed,
        last_id=int(last["id"]),
        age_ms=max(0, now - int(last["latest_ack_timestamp"])),
        state_bytes=int(last.get("state_size", 0)),
        written_bytes=int(last.get("checkpointed_size", 0)),
        duration_ms=int(last.get("end_to_end_duration", 0)),
    )


def _get(cluster: LocalCluster, path: str) -> Any:
    try:
        return cluster.rest(path, timeout=TIMEOUT_S)
    except (OSError, ValueError) as exc:  # URLError, HTTPError, timeouts, a non-JSON answer
        why = getattr(exc, "reason", None) or exc
        raise ClusterError(f"{cluster.settings.address} does not answer ({path}: {why})") from None
