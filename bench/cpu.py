"""CPU seconds of whole processes, for the bench's per-event figures: the MiniCluster's JVM
(bench.runner), the local broker and the embedded PostgreSQL (bench.e2e, bench.pg_upsert).
Per-thread figures are bench.runner.thread_cpu's. psutil reads /proc, which counts in clock
ticks (10 ms): compare readings over seconds, not milliseconds."""

from __future__ import annotations

from pathlib import Path

import psutil


def process_cpu_seconds(*pids: int | None) -> float:
    """User + system CPU seconds so far of the processes `pids`, summed; a None or a process that
    is gone counts 0 (the broker not started, a JVM that exited), not an error."""
    total = 0.0
    for pid in pids:
        if pid is None:
            continue
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def postgres_cpu_seconds(data_dir: Path) -> float:
    """CPU seconds so far of the PostgreSQL server whose data directory is `data_dir`: the
    postmaster named in its postmaster.pid and its live backends, plus what the backends that
    exited used (reaped by the postmaster: its children's times). No server: 0."""
    try:
        root = psutil.Process(int((data_dir / "postmaster.pid").read_text().split()[0]))
        procs = [root, *root.children(recursive=True)]
    except (OSError, ValueError, IndexError, psutil.Error):
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total
