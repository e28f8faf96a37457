"""A command stopped with `kill` (SIGTERM) cleans up as it does after Ctrl-C
(`flink_jobs.ops.services.exit_on_sigterm`): `make bench` stops its embedded PostgreSQL and local
broker and removes its work directory (state, databases, the pseudonym key); `profilestream demo`
stops its local broker (its PostgreSQL stays up for psql, by design, until `services stop`), and
cancels its job if one runs; a killed test run stops its fixtures' services; and a broker
interrupted while it starts stops itself."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg2
import pytest

from flink_jobs.ops import services
from flink_jobs.ops.services import LocalBroker, Terminated
from tests.support.cli import CLI, end, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _brokers(pid: int) -> list[int]:
    """The local brokers among `pid`'s descendants (short-lived ones, pg_ctl or initdb, may be
    gone before their name is read)."""
    brokers: list[int] = []
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:  # it ended: the caller's poll() says how
        return brokers
    for child in children:
        try:
            if "tansu" in child.name():
                brokers.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return brokers


def _postmasters(under: Path) -> list[int]:
    """The PostgreSQL servers whose data directories are under `under` (pid files complete)."""
    pids = []
    for pid_file in under.rglob("postmaster.pid"):
        try:
            pids.append(int(pid_file.read_text().split()[0]))
        except (OSError, ValueError, IndexError):  # being written
            continue
    return pids


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
            postmasters = _postmasters(tmp_path)
            brokers = _brokers(proc.pid)
            if postmasters and brokers:
                services = [*postmasters, *brokers]
                break
            time.sleep(0.2)
        assert services, f"the bench's services did not start: {proc.poll()}"
        assert all(_alive(pid) for pid in services)

        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        end(proc, 60)  # a test that failed before its signal: what it started stops too
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert not [pid for pid in services if _alive(pid)], out
    assert not list(tmp_path.glob("profilestream-bench-*")), out


def _demo(tmp_path: Path, events: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PROFILESTREAM_STATE_DIR": str(tmp_path)}
    for key in ("PG_DSN", "KAFKA_BOOTSTRAP", "PROFILESTREAM_PSEUDONYM_KEY"):
        env.pop(key, None)
    return subprocess.Popen(
        [CLI, "demo", "--events", str(events), "--users", "200"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@dataclass
class Killed:
    """A demo after its SIGTERM: its output, what `services stop` said after it, and which of
    its processes outlived it (killed by the test)."""

    out: str
    err: str
    stopped: str
    left: list[int]


def _kill_demo(proc: subprocess.Popen[str], tmp_path: Path, ready: Callable[[], None]) -> Killed:
    """Wait for `ready()` (it asserts what it waits for), note the demo's processes, SIGTERM it
    and read its output; whatever happened, end it, stop its PostgreSQL and kill what is left."""
    children: list[int] = []
    out = err = ""
    try:
        ready()
        children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        end(proc, 60)
        stop = run_cli("services", "stop", env={"PROFILESTREAM_STATE_DIR": str(tmp_path)})
        left = _kill_left(children)
    return Killed(out, err, stop.stdout + stop.stderr, left)


def _kill_left(pids: list[int]) -> list[int]:
    """The processes of `pids` still running, killed: a failing run leaves nothing behind."""
    left = [pid for pid in pids if _alive(pid)]
    for pid in left:
        with contextlib.suppress(psutil.NoSuchProcess):  # it may end meanwhile
            psutil.Process(pid).kill()
    return left


def test_a_killed_demo_stops_its_broker(tmp_path: Path) -> None:
    proc = _demo(tmp_path, 2000)

    def broker_up() -> None:  # the broker starts after PostgreSQL, seconds before the job would
        deadline = time.monotonic() + 180
        brokers: list[int] = []
        while time.monotonic() < deadline and proc.poll() is None and not brokers:
            brokers = _brokers(proc.pid)
            time.sleep(0.1)
        assert brokers, f"the demo's broker did not start: {proc.poll()}"

    killed = _kill_demo(proc, tmp_path, broker_up)
    assert proc.returncode == 128 + signal.SIGTERM, killed.out + killed.err
    assert killed.err.strip().splitlines()[-1] == "terminated", killed.err
    assert not killed.left, killed.out + killed.err
    assert "embedded PostgreSQL stopped" in killed.stopped


@pytest.mark.flink
def test_a_demo_killed_while_its_job_runs_cancels_the_job(tmp_path: Path) -> None:
    proc = _demo(tmp_path, 200_000)  # ~25 s of job: the signal comes well before its end

    def rows_written() -> None:
        assert proc.stdout is not None
        dsn = ""
        for line in proc.stdout:  # the lines before the job's progress bar
            if "PostgreSQL: embedded, " in line:
                dsn = line.split("PostgreSQL: embedded, ")[1].split()[0]
                break
        assert dsn, f"the demo did not start PostgreSQL: {proc.poll()}"
        deadline = time.monotonic() + 300
        written = 0
        while time.monotonic() < deadline and proc.poll() is None and not written:
            time.sleep(0.5)
            try:
                with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
                    cur.execute("SELECT count(*) FROM user_profiles")
                    written = cur.fetchone()[0]
            except psycopg2.Error:  # the schema is being applied
                pass
        assert written, f"the demo's job wrote no row: {proc.poll()}"

    killed = _kill_demo(proc, tmp_path, rows_written)
    out = killed.out
    assert "cancelled (Ctrl-C or kill)" in out, out + killed.err
    read = int(out.split("events read")[1].split()[0].replace(",", ""))
    assert 0 < read < 200_000, out
    assert proc.returncode == 0, out + killed.err  # a summary of what the job wrote
    assert not killed.left, out + killed.err
    assert "embedded PostgreSQL stopped" in killed.stopped


def test_a_killed_test_run_stops_the_services_it_started(tmp_path: Path) -> None:
    """`kill` of `make test` (a CI job cancelled, `timeout`) stops the session's PostgreSQL and
    broker and a running demo's (tests/conftest.py, tests/support/cli.py): nothing outlives it."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/integration/test_cli.py",
            "-k",
            "wrong_topic or demo_prints",  # the session's services, then a demo's own
        ],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    services: list[int] = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            postmasters = _postmasters(tmp_path)
            brokers = _brokers(proc.pid)
            if len(postmasters) == 2 and len(brokers) == 2:
                services = [*postmasters, *brokers]
                break
            time.sleep(0.2)
        assert services, f"the run's services did not start: {proc.poll()}"

        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        end(proc, 60)
        left = _kill_left(services)
    assert "KeyboardInterrupt: signal 15" in out, out
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert not left, out


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, Terminated])
def test_a_broker_interrupted_while_starting_is_not_left_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interruption: type[BaseException]
) -> None:
    """Ctrl-C or kill while the local broker starts (its process up, its port not yet open):
    the caller has no broker to stop yet, so start() stops it."""
    running = set(_brokers(os.getpid()))  # e.g. the session's `kafka` fixture's
    started: list[int] = []

    def interrupted(port: int) -> bool:
        started.extend(pid for pid in _brokers(os.getpid()) if pid not in running)
        raise interruption(143)

    monkeypatch.setattr(services, "port_open", interrupted)
    broker = LocalBroker(tmp_path / "broker.log")
    with pytest.raises(interruption):
        broker.start()
    assert started, "the broker's process was not running when start() was interrupted"
    assert broker.pid is None
    assert not [pid for pid in started if _alive(pid)]
