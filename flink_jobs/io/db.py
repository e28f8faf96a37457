"""PostgreSQL access for the CLI: connecting with actionable errors, and schema migrations.

Migrations are numbered plain-SQL files in schemas/sql/migrations (`NNNN_name.sql`), applied in
order, each in its own transaction, and recorded in `schema_migrations` with a checksum. Applying
is idempotent; a database that has a migration this code does not know is refused.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from flink_jobs.config import PROJECT_ROOT, environment, redact_dsn
from udfs.errors import DatabaseError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = PROJECT_ROOT / "schemas" / "sql" / "migrations"


def open_connection(dsn: str, *, timeout_s: int, **options: Any) -> Any:
    """A psycopg2 connection to `dsn` (psycopg2's errors as they come), with the password of
    PROFILESTREAM_PG_PASSWORD_FILE when neither the DSN nor PGPASSWORD has one; `options` are
    further libpq parameters. `connect`, `profilestream status` and the job's model-registry
    poll open theirs here (the embedded server's admin connections need no password)."""
    if (password := environment().password_for(dsn)) is not None:
        options["password"] = password
    return psycopg2.connect(dsn, connect_timeout=timeout_s, **options)


def connect(dsn: str, *, timeout_s: int = 5) -> Any:
    """An autocommit connection; a DatabaseError naming PG_DSN when there is none."""
    try:
        conn = open_connection(dsn, timeout_s=timeout_s)
    except psycopg2.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseError(
            f"cannot connect to PostgreSQL at PG_DSN={redact_dsn(dsn)}: {first} -- fix --pg-dsn /"
            " PG_DSN, or leave it unset for the embedded PostgreSQL"
        ) from None
    except psycopg2.ProgrammingError as exc:
        raise DatabaseError(f"PG_DSN={redact_dsn(dsn)} is not a valid DSN: {exc}") from None
    conn.autocommit = True
    return conn


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = re.fullmatch(r"(\d{4})_([a-z0-9_]+)\.sql", path.name)
        if not match:
            raise DatabaseError(f"{path.name}: migration files are named NNNN_name.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise DatabaseError(f"migrations in {directory} must be numbered 1..n without gaps")
    return found


def migrate(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Apply pending migrations; return the ones applied (empty when up to date)."""
    known = migrations(directory)
    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur.execute("SELECT version, checksum FROM schema_migrations ORDER BY version")
            applied = dict(cur.fetchall())
        newest_known = known[-1].version if known else 0
        if applied and max(applied) > newest_known:
            raise DatabaseError(
                f"the database is at schema version {max(applied)}, newer than this code knows "
                f"({newest_known}): upgrade ProfileStream before migrating or running the job"
            )
        for m in known:
            if m.version in applied and applied[m.version] != m.checksum:
                raise DatabaseError(
                    f"migration {m.path.name} changed after it was applied (checksum differs): "
                    "add a new migration instead of editing an applied one"
                )
        done = []
        for m in known:
            if m.version in applied:
                continue
            conn.autocommit = False
            with conn.cursor() as cur:
                cur.execute(m.sql)
                cur.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (m.version, m.name, m.checksum),
                )
            conn.commit()
            conn.autocommit = True
            log.info("applied migration %s", m.path.name)
            done.append(m)
        return done
    finally:
        conn.close()


def schema_version(dsn: str) -> int:
    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
            if not cur.fetchone()[0]:
                return 0
            cur.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def require_schema(dsn: str) -> None:
    """The job only runs against a migrated database; say how to migrate otherwise."""
    have = schema_version(dsn)
    want = len(migrations())
    if have < want:
        raise DatabaseError(
            f"the database at PG_DSN={redact_dsn(dsn)} is at schema version {have}, the job needs"
            f" {want}: run `profilestream db migrate --pg-dsn ...` first"
        )
    if have > want:
        raise DatabaseError(
            f"the database is at schema version {have}, newer than this code ({want}): upgrade"
        )


def check_pseudonym_key(dsn: str, key_id: str) -> None:
    """Record the pseudonym key's fingerprint on first use; refuse a different key afterwards
    (BI would see two pseudonyms for one user)."""
    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "UPDATE profilestream_settings SET value = %s "
                "WHERE key = 'pseudonym.key_id' AND value = '' RETURNING value",
                (key_id,),
            )
            if cur.fetchone() is not None:
                return
            cur.execute("SELECT value FROM profilestream_settings WHERE key = 'pseudonym.key_id'")
            stored = cur.fetchone()[0]
    finally:
        conn.close()
    if stored != key_id:
        raise DatabaseError(
            f"the pseudonym key (PROFILESTREAM_PSEUDONYM_KEY[_FILE], key id {key_id}) is not the "
            f"one the database's pseudonyms were made with (key id {stored}): use that key, or "
            "rotate to this one with `profilestream db rotate-pseudonyms` (job stopped)"
        )


def rotate_pseudonyms(
    dsn: str, pseudonym: Callable[[str], str], key_id: str, batch: int = 5_000
) -> tuple[int, int]:
    """Rewrite every pseudonym with `pseudonym` (the new key) and record its fingerprint, in one
    transaction (BI never sees a mix). Stop the job first. Returns (profiles, history rows)."""
    conn = connect(dsn)
    try:
        conn.autocommit = False
        with conn.cursor() as cur:
            cur.execute("SET LOCAL profilestream.maintenance = 'on'")
            cur.execute(
                "CREATE TEMP TABLE new_pseudonyms (user_id text PRIMARY KEY, p text) ON COMMIT DROP"
            )
            cur.execute(
                "SELECT user_id FROM user_profiles UNION SELECT user_id FROM user_profile_history"
            )
            users = [row[0] for row in cur.fetchall()]
            for start in range(0, len(users), batch):
                chunk = users[start : start + batch]
                psycopg2.extras.execute_values(
                    cur,
                    "INSERT INTO new_pseudonyms VALUES %s",
                    [(u, pseudonym(u)) for u in chunk],
                )
            cur.execute(
                "UPDATE user_profiles t SET user_pseudonym = n.p FROM new_pseudonyms n "
                "WHERE t.user_id = n.user_id"
            )
            profiles = cur.rowcount
            cur.execute(
                "UPDATE user_profile_history t SET user_pseudonym = n.p "
                "FROM new_pseudonyms n WHERE t.user_id = n.user_id"
            )
            history = cur.rowcount
            cur.execute(
                "UPDATE profilestream_settings SET value = %s WHERE key = 'pseudonym.key_id'",
                (key_id,),
            )
        conn.commit()
        return profiles, history
    finally:
        conn.close()


@dataclass(frozen=True)
class Erased:
    profiles: int
    history: int
    dead_letters: int


def erase_user(dsn: str, user_id: str, up_to_ms: int | None = None) -> Erased:
    """Delete every row that carries `user_id` or its pseudonym (migration 0004's function);
    with `up_to_ms`, only what dates from before that event time (see the SQL)."""
    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT * FROM erase_user_data(%s, %s)", (user_id, up_to_ms))
            profiles, history, dead_letters = cur.fetchone()
        return Erased(profiles, history, dead_letters)
    finally:
        conn.close()


def pg_counts(dsn: str) -> tuple[int, int, int]:
    """(profiles, events folded into them, dead letters) as PostgreSQL sees them now."""
    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*), coalesce(sum(event_count), 0) FROM user_profiles")
            profiles, events = cur.fetchone()
            cur.execute("SELECT count(*) FROM dead_letter_events")
            (dead,) = cur.fetchone()
        return int(profiles), int(events), int(dead)
    finally:
        conn.close()
