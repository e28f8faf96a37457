"""Service fixtures for the integration tests: the embedded PostgreSQL and the local
Kafka-protocol broker (Tansu), each started once per session, and a fresh migrated database per
test. Only tests under tests/integration can ask for them."""

from __future__ import annotations

import itertools
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from flink_jobs.io import db
from flink_jobs.ops.services import EmbeddedPostgres, LocalBroker

_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    # Not under pytest's basetemp: every pytest run started as root resets /tmp/pytest-of-root to
    # mode 0700, which locks the server (an unprivileged user when we are root) out of its own
    # data directory and PANICs it while another run is still using it.
    home = Path(tempfile.mkdtemp(prefix="profilestream-test-pg-"))
    server = EmbeddedPostgres(home / "data", database="postgres")
    server.start()
    yield server
    server.stop()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def pg_dsn(pg_server: EmbeddedPostgres) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    name = f"t_{next(_counter)}_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(pg_server.dsn("postgres"))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    dsn = pg_server.dsn(name)
    db.migrate(dsn)
    yield dsn
    pg_server.start()  # a test may have stopped it on purpose
    admin = psycopg2.connect(pg_server.dsn("postgres"))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    broker = LocalBroker(tmp_path_factory.mktemp("kafka") / "broker.log")
    yield broker.start()
    broker.stop()
