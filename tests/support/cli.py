"""Running `profilestream` as a user does: the venv's console script in a child process, its
output captured, stdin closed (a prompt must not hang a test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CLI = str(Path(sys.executable).parent / "profilestream")


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`profilestream *args` in this process's environment."""
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
