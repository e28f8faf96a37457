"""`make bench` stopped with `kill` cleans up as it does after Ctrl-C: its embedded PostgreSQL and
local broker stop and its work directory (state, databases, the pseudonym key) is removed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_killed_bench_stops_its_services_and_removes_its_files(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.e2e",
            "--part",
            "floor",
            "--events",
            "2000",
            "--users",
            "500",
        ],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # Both services up: PostgreSQL's pid file written and the broker running.
        deadline = time.monotonic() + 180
        services: list[int] = []
        while time.monotonic() < deadline and proc.poll() is None:
            pid_files = list(tmp_path.glob("profilestream-bench-*/pgdata/postmaster.pid"))
            brokers = [
                c.pid
                for c in psutil.Process(proc.pid).children(recursive=True)
                if "tansu" in c.name()
            ]
            if pid_files and brokers:
                try:
                    postmaster = int(pid_files[0].read_text().split()[0])
                except (OSError, ValueError, IndexError):  # being written
                    postmaster = 0
                if postmaster:
                    services = [postmaster, *brokers]
                    break
            time.sleep(0.2)
        assert services, f"the bench's services did not start: {proc.poll()}"
        assert all(_alive(pid) for pid in services)

        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert not [pid for pid in services if _alive(pid)], out
    assert not list(tmp_path.glob("profilestream-bench-*")), out
