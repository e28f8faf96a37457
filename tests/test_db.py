"""Migrations and the database-side guarantees, on a real (embedded) PostgreSQL."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg2
import pytest

from flink_jobs import db
from udfs.rows import PROFILE_COLUMN_NAMES, dead_letter_row

pytestmark = pytest.mark.integration

# The statement Flink's Postgres dialect sends for an upsert (no WHERE clause).
UPSERT = (
    f"INSERT INTO user_profiles ({', '.join(PROFILE_COLUMN_NAMES)}) VALUES "
    f"({', '.join(['%s'] * len(PROFILE_COLUMN_NAMES))}) ON CONFLICT (user_id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in PROFILE_COLUMN_NAMES[1:])
)


def row(version: int, score: float = 0.5, epoch: int = 1_735_689_600_000) -> tuple[object, ...]:
    values: dict[str, object] = {name: 0 for name in PROFILE_COLUMN_NAMES}
    values.update(
        user_id="alice",
        profile_epoch_ms=epoch,
        profile_version=version,
        as_of_ms=epoch + version,
        expired=False,
        segment="new",
        score=score,
        model_version="m1",
        spend_micros=1_500_000,
        first_event_ms=epoch,
        last_event_ms=epoch + version,
        last_purchase_ms=None,
        activity_score=1.0,
        top_category="shoes",
        features='{"cnt_view_life": 1}',
    )
    return tuple(values[name] for name in PROFILE_COLUMN_NAMES)


def query(dsn: str, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def test_migrate_is_idempotent_and_recorded(pg_dsn: str) -> None:
    assert db.migrate(pg_dsn) == []  # the fixture already applied everything
    assert db.schema_version(pg_dsn) == len(db.migrations())
    names = query(pg_dsn, "SELECT name FROM schema_migrations ORDER BY version")
    assert [n for (n,) in names] == [m.name for m in db.migrations()]
    db.require_schema(pg_dsn)


def test_refuses_a_newer_database(pg_dsn: str) -> None:
    query(pg_dsn, "INSERT INTO schema_migrations VALUES (999, 'future', 'x')")
    with pytest.raises(db.DatabaseError, match="newer than this code"):
        db.migrate(pg_dsn)


def test_refuses_an_edited_migration(pg_dsn: str, tmp_path: Path) -> None:
    copy = tmp_path / "migrations"
    shutil.copytree(db.MIGRATIONS_DIR, copy)
    first = sorted(copy.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(db.DatabaseError, match="changed after it was applied"):
        db.migrate(pg_dsn, copy)


def test_job_refuses_an_unmigrated_database(pg_server) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(db.DatabaseError, match="db migrate"):
        db.require_schema(pg_server.dsn("postgres"))


def test_upsert_never_moves_a_profile_backwards(pg_dsn: str) -> None:
    query(pg_dsn, UPSERT, row(5, score=0.9))
    query(pg_dsn, UPSERT, row(3, score=0.1))  # a replayed, older version
    query(pg_dsn, UPSERT, row(5, score=0.2))  # the same version again
    assert query(pg_dsn, "SELECT profile_version, score, spend FROM user_profiles") == [
        (5, 0.9, pytest.approx(1.5))
    ]
    query(pg_dsn, UPSERT, row(6, score=0.3))
    assert query(pg_dsn, "SELECT profile_version, score FROM user_profiles") == [(6, 0.3)]
    # A profile that expired and came back starts a new epoch: version 1 of it is newer.
    query(pg_dsn, UPSERT, row(1, score=0.7, epoch=1_800_000_000_000))
    assert query(pg_dsn, "SELECT profile_version, score FROM user_profiles") == [(1, 0.7)]
    query(pg_dsn, UPSERT, row(9, score=0.1))  # the old epoch never comes back
    assert query(pg_dsn, "SELECT profile_version, score FROM user_profiles") == [(1, 0.7)]


def test_generated_columns_are_typed_for_bi(pg_dsn: str) -> None:
    query(pg_dsn, UPSERT, row(1))
    ((first, spend, features),) = query(
        pg_dsn, "SELECT first_event_at::text, spend::text, features FROM user_profiles"
    )
    assert first.startswith("2025-01-01 00:00:00")
    assert spend == "1.500000"
    assert features == {"cnt_view_life": 1}


def test_segments_are_constrained(pg_dsn: str) -> None:
    bad = list(row(1))
    bad[PROFILE_COLUMN_NAMES.index("segment")] = "whale"
    with pytest.raises(psycopg2.errors.CheckViolation):
        query(pg_dsn, UPSERT, tuple(bad))


def test_dead_letters_are_write_once(pg_dsn: str) -> None:
    sql = (
        "INSERT INTO dead_letter_events (dead_letter_id, reason, detail, raw, source_topic, "
        "seen_at_ms) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (dead_letter_id) DO UPDATE "
        "SET reason = EXCLUDED.reason, seen_at_ms = EXCLUDED.seen_at_ms"
    )
    query(pg_dsn, sql, dead_letter_row(b"\xff", "decode_error", "bad", "t", 1000))
    query(pg_dsn, sql, dead_letter_row(b"\xff", "decode_error", "bad", "t", 2000))
    assert query(pg_dsn, "SELECT reason, seen_at_ms, raw::text FROM dead_letter_events") == [
        ("decode_error", 1000, "\\xff")
    ]


def test_bad_dsn_is_one_actionable_line() -> None:
    with pytest.raises(db.DatabaseError) as info:
        db.connect("postgresql://u:hunter2@127.0.0.1:1/db", timeout_s=2)
    message = str(info.value)
    assert "PG_DSN" in message and "hunter2" not in message and "\n" not in message
