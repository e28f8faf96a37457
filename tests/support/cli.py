"""Running `profilestream` as a user does: the venv's console script in a child process, its
output captured, stdin closed (a prompt must not hang a test). A command that outlives its
timeout, or the suite being interrupted (Ctrl-C, or `kill`: tests/conftest.py), ends it as a user
would, with SIGTERM, so it stops what it started (the demo's broker); SIGKILL only if it is still
running 30 s later."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
CLI = str(VENV_BIN / "profilestream")


def _run(
    args: tuple[str, ...], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [CLI, *args]
    with subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:  # over time, or the suite interrupted
            end(proc)
            raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def end(proc: subprocess.Popen[str], grace_s: float = 30) -> None:
    """End `proc` (if it still runs) as a user would: SIGTERM, so it stops what it started;
    SIGKILL if it is still running `grace_s` later."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.communicate(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`profilestream *args` in this process's environment."""
    return _run(args, timeout)


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """`profilestream *args` as an operator would type it: PG_DSN and KAFKA_BOOTSTRAP unset unless
    `env` sets them, `env` on top of this process's environment ("" unsets a variable), and a
    mistake reported within 30 s by default."""
    full_env = {**os.environ, **(env or {})}
    for key in ("PG_DSN", "KAFKA_BOOTSTRAP"):
        if env is None or key not in env:
            full_env.pop(key, None)
    for key, value in (env or {}).items():
        if value == "":  # "" unsets
            full_env.pop(key)
    return _run(args, timeout, full_env)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit code 2 and one line on stderr naming every needle: no traceback, no Java stack."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr and "at org.apache" not in proc.stderr
