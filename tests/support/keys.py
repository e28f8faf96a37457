"""The pseudonym key every job, CLI run and cluster in the suite uses. tests/conftest.py puts it
in the environment before any test starts one; tests that search output for secrets, or compute
the pseudonyms the suite's runs write, read it from here."""

from __future__ import annotations

TEST_PSEUDONYM_KEY = "test-pseudonym-key-" + "5" * 24
