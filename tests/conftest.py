"""The whole suite's set-up: the pseudonym key every job, CLI run and cluster uses, put in the
environment before any test runs. Service fixtures (PostgreSQL, the broker) are in
tests/integration/conftest.py; helpers that test modules import are in tests/support."""

from __future__ import annotations

import os

from tests.support.keys import TEST_PSEUDONYM_KEY
from udfs.pseudonym import ENV_KEY, ENV_KEY_FILE

# The pseudonym key every job, CLI run and cluster in the suite uses (set before any starts).
os.environ[ENV_KEY] = TEST_PSEUDONYM_KEY
os.environ.pop(ENV_KEY_FILE, None)
