"""The whole suite's set-up: the pseudonym key every job, CLI run and cluster uses, put in the
environment before any test runs, the rule that a test's folder and its markers agree, and a
`kill` of the run ending it as Ctrl-C does (the fixtures' PostgreSQL and broker stopped).
Service fixtures (PostgreSQL, the broker) are in tests/integration/conftest.py; helpers that test
modules import are in tests/support."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from tests.support.keys import TEST_PSEUDONYM_KEY
from udfs.pseudonym import ENV_KEY, ENV_KEY_FILE

# The pseudonym key every job, CLI run and cluster in the suite uses (set before any starts).
os.environ[ENV_KEY] = TEST_PSEUDONYM_KEY
os.environ.pop(ENV_KEY_FILE, None)

TESTS = Path(__file__).resolve().parent
SERVICE_MARKERS = frozenset({"integration", "flink"})


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM (`kill`, `timeout`, a CI job cancelled) interrupts the run as Ctrl-C does: pytest
    then tears the fixtures down, so their embedded PostgreSQL and local broker (which run in
    sessions of their own and would outlive the run) are stopped, not left behind."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


@pytest.hookimpl(tryfirst=True)  # before -m/-k deselect anything: every collected test is checked
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse to run when a test's folder and its markers disagree: a test in tests/unit may not be
    marked `integration` or `flink` (the unit run must need no service and no JVM), a test in
    tests/integration must be marked one or both (so marker expressions still select it), and a
    test anywhere else under tests/ belongs in one of the two."""
    problems = []
    for item in items:
        try:
            folder = item.path.resolve().relative_to(TESTS).parts[0]
        except ValueError:  # a test file outside tests/, named on the command line
            continue
        marked = sorted({m.name for m in item.iter_markers()} & SERVICE_MARKERS)
        if folder == "unit" and marked:
            problems.append(
                f"{item.nodeid} is in tests/unit but marked {' and '.join(marked)}: move it to "
                "tests/integration, or drop the marker if it starts no service and no Flink"
            )
        elif folder == "integration" and not marked:
            problems.append(
                f"{item.nodeid} is in tests/integration but marked neither integration nor flink: "
                "mark what it needs, or move it to tests/unit if it needs no service and no Flink"
            )
        elif folder not in ("unit", "integration"):
            problems.append(f"{item.nodeid}: a test belongs in tests/unit or tests/integration")
    if problems:
        raise pytest.UsageError(
            f"{len(problems)} test(s) in the wrong folder for their markers (tests/conftest.py):\n"
            + "\n".join(problems)
        )
