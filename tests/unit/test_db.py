"""The database layer without a database: a DSN that reaches no server gives one actionable line
that hides the password. Migrations and the database-side guarantees, on the embedded
PostgreSQL, are in tests/integration/test_db.py."""

from __future__ import annotations

import pytest

from flink_jobs.io import db


def test_bad_dsn_is_one_actionable_line() -> None:
    with pytest.raises(db.DatabaseError) as info:
        db.connect("postgresql://u:hunter2@127.0.0.1:1/db", timeout_s=2)
    message = str(info.value)
    assert "PG_DSN" in message and "hunter2" not in message and "\n" not in message
