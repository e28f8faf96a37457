"""The model registry in PostgreSQL (`model_registry`, migration 0006): publishing and listing
versions (the CLI), and `RegistryPoller`, through which each instance of the running job's
profile operator finds a newer version, checks it and records what happened.

Which version serves and the check a model must pass are pure rules (`udfs.registry`); this
module moves rows. Every write is idempotent and guarded by the row's state, so any number of
parallel subtasks (each polls and switches on its own) may record the same outcome:

    serving   UPDATE ... state = 'serving', serving_since = coalesce(serving_since, now())
              only from pending/serving/retired and only while no newer version serves; then the
              older pending/serving versions are retired
    refused   only from pending (a version some subtask already serves is not refused)

The job's workers connect with the DSN without its password (the job never carries it); the
password comes from the worker's environment: PGPASSWORD (or ~/.pgpass, read by libpq), else
the file named by PROFILESTREAM_PG_PASSWORD_FILE.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2

from flink_jobs.config import redact_dsn
from flink_jobs.io.db import connect, open_connection
from udfs.errors import ModelError
from udfs.registry import (
    ModelState,
    PublishedModel,
    RegistryEntry,
    choose,
    load_checked,
    next_poll_ms,
)
from udfs.scoring import Scorer

log = logging.getLogger(__name__)

ENTRY_COLUMNS = (
    "version, seq, name, sha256, state, refused_reason, published_at, serving_since, retired_at"
)
# A poll must not hold up the job for long when the database is slow or away.
POLL_CONNECT_TIMEOUT_S = 2
POLL_STATEMENT_TIMEOUT_MS = 2_000


def _entry(row: tuple[Any, ...]) -> RegistryEntry:
    version, seq, name, sha256, state, reason, published, serving, retired = row
    return RegistryEntry(
        version, int(seq), name, sha256, ModelState(state), reason, published, serving, retired
    )


def entries(conn: Any) -> list[RegistryEntry]:
    """Every registered version, oldest first."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT {ENTRY_COLUMNS} FROM model_registry ORDER BY seq")
        return [_entry(row) for row in cur.fetchall()]


def fetch(conn: Any, version: str) -> PublishedModel | None:
    """The model files of `version` as published (None: no such version)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT name, version, model_txt, metadata_json, sha256 FROM model_registry "
            "WHERE version = %s",
            (version,),
        )
        row = cur.fetchone()
    if row is None:
        return None
    model = PublishedModel(row[0], row[1], row[2], row[3])
    if model.sha256 != row[4]:
        raise ModelError(
            f"model_registry version {version}: its files do not match its sha256 (the row was "
            "edited after publishing): publish the model again under a new version"
        )
    return model


def insert(conn: Any, model: PublishedModel, state: ModelState = ModelState.PENDING) -> bool:
    """Register `model` (True); False when the version is already there with the same content.
    ModelError when it is there with other content."""
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO model_registry (version, name, model_txt, metadata_json, sha256, state,"
            " serving_since) VALUES (%s, %s, %s, %s, %s, %s,"
            " CASE WHEN %s = 'serving' THEN now() END)"
            " ON CONFLICT (version) DO NOTHING RETURNING seq",
            (
                model.version,
                model.name,
                model.model_txt,
                model.metadata_json,
                model.sha256,
                state.value,
                state.value,
            ),
        )
        if cur.fetchone() is not None:
            return True
        cur.execute("SELECT sha256 FROM model_registry WHERE version = %s", (model.version,))
        row = cur.fetchone()
    if row is not None and row[0] != model.sha256:
        raise ModelError(
            f"model version {model.version} is already published with other content (sha256 "
            f"{row[0][:12]}…, this one {model.sha256[:12]}…)",
            fix='publish it under a new version (the "version" in its metadata.json)',
        )
    return False


def mark_serving(conn: Any, version: str) -> bool:
    """Record that a job scores with `version` (idempotent, see the module docstring); True when
    the row now says serving."""
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE model_registry m SET state = 'serving', retired_at = NULL,"
            " serving_since = coalesce(m.serving_since, now())"
            " WHERE m.version = %s AND m.state <> 'refused' AND NOT EXISTS ("
            "   SELECT 1 FROM model_registry n WHERE n.seq > m.seq AND n.state = 'serving')"
            " RETURNING m.seq",
            (version,),
        )
        row = cur.fetchone()
        if row is None:
            return False
        cur.execute(
            "UPDATE model_registry SET state = 'retired', retired_at = now()"
            " WHERE state IN ('pending', 'serving') AND seq < %s",
            (row[0],),
        )
    return True


def mark_refused(conn: Any, version: str, reason: str) -> bool:
    """Record that a job refused `version` and why (only while it is pending)."""
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE model_registry SET state = 'refused', refused_reason = %s"
            " WHERE version = %s AND state = 'pending' RETURNING seq",
            (reason[:1000], version),
        )
        return cur.fetchone() is not None


def publish(dsn: str, model: PublishedModel) -> tuple[RegistryEntry, bool]:
    """Register `model`; (its entry, whether it is new). See `insert`."""
    conn = connect(dsn)
    try:
        new = insert(conn, model)
        entry = next(e for e in entries(conn) if e.version == model.version)
        return entry, new
    finally:
        conn.close()


def list_entries(dsn: str) -> list[RegistryEntry]:
    conn = connect(dsn)
    try:
        return entries(conn)
    finally:
        conn.close()


def load(model: PublishedModel, check: bool = True) -> Scorer:
    """A Scorer for a registered model, its files materialised in a temporary directory for the
    load only; with `check`, refused (ModelError) unless it passes `udfs.registry.load_checked`."""
    workdir = Path(tempfile.mkdtemp(prefix="profilestream-model-"))
    try:
        directory = workdir / "model"
        return load_checked(model, directory) if check else Scorer(model.write(directory))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def registry_exists(conn: Any) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('model_registry') IS NOT NULL")
        return bool(cur.fetchone()[0])


@dataclass(frozen=True)
class Candidate:
    """A registered model loaded and checked by `RegistryPoller.poll`, ready to switch to."""

    version: str
    sha256: str
    scorer: Scorer


class RegistryPoller:
    """One profile operator instance's view of the registry. `due(now_ms)` says when to poll
    (cheap: called per event); `poll(now_ms)` returns a checked model to switch to, or None.
    The caller switches, then calls `switched(candidate)`. Neither ever raises: the job goes on
    with the model it has.

    The first poll also registers the model the job started with (`start_dir`) if the registry
    is empty, so `model list` shows what serves from the start. A model that fails its check is
    recorded as refused and not tried again by this instance; a poll that fails (the database
    unreachable) leaves the model as it is and backs off (`udfs.registry.next_poll_ms`)."""

    def __init__(self, dsn: str, interval_ms: int, start_dir: Path, start_version: str) -> None:
        self.dsn = dsn
        self.interval_ms = interval_ms
        self.start_dir = start_dir
        self.serving_version = start_version
        self.serving_sha256 = ""  # known after the first poll reads the start directory
        self.recorded = False  # whether this instance recorded what it serves in the registry
        self.refused: set[str] = set()  # sha256 of versions this instance refused
        self.next_ms = 0  # poll on the first event
        self.failures = 0
        self.conn: Any = None

    def due(self, now_ms: int) -> bool:
        return now_ms >= self.next_ms

    def poll(self, now_ms: int) -> Candidate | None:
        try:
            candidate = self._poll()
        except Exception as exc:  # the database, or a bug: never the job's end
            self.failures += 1
            self.next_ms = next_poll_ms(now_ms, self.interval_ms, self.failures)
            if self.failures in (1, 10) or self.failures % 100 == 0:
                text = str(exc).strip()
                log.warning(
                    "model registry poll failed (%d in a row; still serving %s) at %s: %s",
                    self.failures,
                    self.serving_version,
                    redact_dsn(self.dsn),
                    text.splitlines()[0] if text else type(exc).__name__,
                )
            self.close()
            return None
        self.failures = 0
        self.next_ms = next_poll_ms(now_ms, self.interval_ms, 0)
        return candidate

    def _connection(self) -> Any:
        if self.conn is None or self.conn.closed:
            # The password from the worker's environment (PGPASSWORD, ~/.pgpass or
            # PROFILESTREAM_PG_PASSWORD_FILE), as for every connection.
            self.conn = open_connection(
                self.dsn,
                timeout_s=POLL_CONNECT_TIMEOUT_S,
                options=f"-c statement_timeout={POLL_STATEMENT_TIMEOUT_MS}",
                application_name="profilestream-model-poll",
            )
            self.conn.autocommit = True
        return self.conn

    def _poll(self) -> Candidate | None:
        conn = self._connection()
        if not self.serving_sha256:
            self.serving_sha256 = self._register_start(conn)
        found = entries(conn)
        target = choose(found, self.serving_sha256, frozenset(self.refused))
        if target is None:
            if not self.recorded and any(e.sha256 == self.serving_sha256 for e in found):
                mark_serving(conn, self.serving_version)
                self.recorded = True
            return None
        try:
            model = fetch(conn, target.version)
            if model is None:  # deleted by hand in between
                return None
            scorer = load(model)
        except OSError:
            raise  # the temporary directory, not the model: try again at the next poll
        except ModelError as exc:
            self._refuse(conn, target, exc.message)
            return None
        except psycopg2.Error:
            raise  # the database: try again at the next poll
        except Exception as exc:  # anything else a model provokes is the model's fault
            self._refuse(conn, target, f"{type(exc).__name__}: {exc}")
            return None
        return Candidate(model.version, model.sha256, scorer)

    def _register_start(self, conn: Any) -> str:
        """The content id of the model the job started with, registered (as serving) when the
        registry is empty; a placeholder when its directory cannot be read as a model to
        publish (the registry's newest usable version then replaces it)."""
        try:
            start = PublishedModel.from_dir(self.start_dir)
        except ModelError as exc:
            log.warning("the start model is not registered: %s", exc)
            return f"unregistered:{self.serving_version}"
        with conn.cursor() as cur:
            cur.execute("SELECT EXISTS (SELECT 1 FROM model_registry)")
            empty = not cur.fetchone()[0]
        if empty and insert(conn, start, ModelState.SERVING):
            log.info("the model registry was empty: registered %s as serving", start.version)
        return start.sha256

    def _refuse(self, conn: Any, target: RegistryEntry, reason: str) -> None:
        mark_refused(conn, target.version, reason)  # if this raises, the next poll tries again
        self.refused.add(target.sha256)
        log.warning(
            "model %s refused, still serving %s: %s", target.version, self.serving_version, reason
        )

    def switched(self, candidate: Candidate) -> None:
        """The operator now scores with `candidate`: record it (the next poll retries if the
        database does not answer now)."""
        self.serving_version = candidate.version
        self.serving_sha256 = candidate.sha256
        self.recorded = False
        try:
            mark_serving(self._connection(), candidate.version)
            self.recorded = True
        except Exception as exc:
            log.warning("could not record model %s as serving: %s", candidate.version, exc)
            self.close()

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self.conn.close()
            self.conn = None
