"""Running `profilestream` as a user does: the venv's console script in a child process, its
output captured, stdin closed (a prompt must not hang a test)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
CLI = str(VENV_BIN / "profilestream")


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`profilestream *args` in this process's environment."""
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


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
    return subprocess.run(
        [CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        stdin=subprocess.DEVNULL,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit code 2 and one line on stderr naming every needle: no traceback, no Java stack."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr and "at org.apache" not in proc.stderr
