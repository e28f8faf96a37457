"""Shared fixtures: real services (embedded PostgreSQL, the Tansu broker) started once per session,
a fresh migrated database per test; and the suite's pseudonym key, put in the environment before
any test runs. Helpers that test modules import live in tests/support."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator

import psycopg2
import pytest

from flink_jobs import db
from flink_jobs.services import EmbeddedPostgres, LocalBroker
from tests.support.keys import TEST_PSEUDONYM_KEY
from udfs.pseudonym import ENV_KEY, ENV_KEY_FILE

# The pseudonym key every job, CLI run and cluster in the suite uses (set before any starts).
os.environ[ENV_KEY] = TEST_PSEUDONYM_KEY
os.environ.pop(ENV_KEY_FILE, None)

_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data", database="postgres")
    server.start()
    yield server
    server.stop()


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
