"""Migrations and the database-side guarantees, on a real (embedded) PostgreSQL."""

from __future__ import annotations

import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

import psycopg2
import pytest

from flink_jobs.io import db
from flink_jobs.ops.services import SERVER_SETTINGS, EmbeddedPostgres
from tests.support.db import UPSERT, profile_row, query, row_with
from udfs.rows import PROFILE_COLUMN_NAMES, dead_letter_row

pytestmark = pytest.mark.integration


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
    query(pg_dsn, UPSERT, profile_row(5, score=0.9))
    query(pg_dsn, UPSERT, profile_row(3, score=0.1))  # a replayed, older version
    query(pg_dsn, UPSERT, profile_row(5, score=0.2))  # the same version again
    assert query(pg_dsn, "SELECT profile_version, score, spend FROM user_profiles") == [
        (5, 0.9, pytest.approx(1.5))
    ]
    query(pg_dsn, UPSERT, profile_row(6, score=0.3))
    assert query(pg_dsn, "SELECT profile_version, score FROM user_profiles") == [(6, 0.3)]
    # A profile that expired and came back starts a new epoch: version 1 of it is newer.
    query(pg_dsn, UPSERT, profile_row(1, score=0.7, epoch=1_800_000_000_000))
    assert query(pg_dsn, "SELECT profile_version, score FROM user_profiles") == [(1, 0.7)]
    query(pg_dsn, UPSERT, profile_row(9, score=0.1))  # the old epoch never comes back
    assert query(pg_dsn, "SELECT profile_version, score FROM user_profiles") == [(1, 0.7)]


def test_generated_columns_are_typed_for_bi(pg_dsn: str) -> None:
    query(pg_dsn, UPSERT, profile_row(1))
    ((first, spend, features),) = query(
        pg_dsn, "SELECT first_event_at::text, spend::text, features FROM user_profiles"
    )
    assert first.startswith("2025-01-01 00:00:00")
    assert spend == "1.500000"
    assert features == {"cnt_view_life": 1}


def test_segments_are_constrained(pg_dsn: str) -> None:
    bad = list(profile_row(1))
    bad[PROFILE_COLUMN_NAMES.index("segment")] = "whale"
    with pytest.raises(psycopg2.errors.CheckViolation):
        query(pg_dsn, UPSERT, tuple(bad))


def test_dead_letters_are_write_once(pg_dsn: str) -> None:
    sql = (
        "INSERT INTO dead_letter_events (dead_letter_id, reason, detail, raw, source_topic, "
        "seen_at_ms, user_id, event_time_ms) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (dead_letter_id) "
        "DO UPDATE "
        "SET reason = EXCLUDED.reason, seen_at_ms = EXCLUDED.seen_at_ms"
    )
    query(pg_dsn, sql, dead_letter_row(b"\xff", "decode_error", "bad", "t", 1000))
    query(pg_dsn, sql, dead_letter_row(b"\xff", "decode_error", "bad", "t", 2000))
    assert query(pg_dsn, "SELECT reason, seen_at_ms, raw::text FROM dead_letter_events") == [
        ("decode_error", 1000, "\\xff")
    ]


def test_history_records_changes_not_every_update(pg_dsn: str) -> None:
    query(pg_dsn, UPSERT, row_with(1, score=0.30))  # new
    query(pg_dsn, UPSERT, row_with(2, score=0.32))  # small move: no row
    query(pg_dsn, UPSERT, row_with(3, score=0.34))  # 0.04 since the last history row: no row
    query(pg_dsn, UPSERT, row_with(4, score=0.36))  # 0.06: a 'score' row
    query(pg_dsn, UPSERT, row_with(5, score=0.36, segment="loyal_buyer"))  # segment change
    query(pg_dsn, UPSERT, row_with(4, score=0.99, segment="high_value"))  # stale replay: nothing
    query(pg_dsn, UPSERT, row_with(6, score=0.36, segment="dormant", expired=True))
    rows = query(
        pg_dsn,
        "SELECT change, profile_version, segment, previous_segment, "
        "round(score::numeric, 2)::text FROM user_profile_history ORDER BY history_id",
    )
    assert rows == [
        ("new", 1, "new", None, "0.30"),
        ("score", 4, "new", "new", "0.36"),
        ("segment", 5, "loyal_buyer", "new", "0.36"),
        ("expired", 6, "dormant", "loyal_buyer", "0.36"),
    ]


def test_history_step_is_configurable(pg_dsn: str) -> None:
    query(
        pg_dsn, "UPDATE profilestream_settings SET value = '0.5' WHERE key = 'history.score_step'"
    )
    query(pg_dsn, UPSERT, row_with(1, score=0.1))
    query(pg_dsn, UPSERT, row_with(2, score=0.4))
    query(pg_dsn, UPSERT, row_with(3, score=0.7))
    assert query(
        pg_dsn, "SELECT change, profile_version FROM user_profile_history ORDER BY history_id"
    ) == [("new", 1), ("score", 3)]


def test_bi_views(pg_dsn: str) -> None:
    for i, (segment, score, views, carts) in enumerate(
        [("new", 0.05, 10, 1), ("new", 0.15, 20, 2), ("loyal_buyer", 0.95, 30, 3)]
    ):
        query(
            pg_dsn,
            UPSERT,
            row_with(
                1,
                user_id=f"u{i}",
                segment=segment,
                score=score,
                views=views,
                carts=carts,
                purchases=1,
            ),
        )
    query(pg_dsn, UPSERT, row_with(1, user_id="gone", expired=True, segment="dormant"))
    assert query(pg_dsn, "SELECT segment, profiles FROM bi_segment_sizes ORDER BY 1") == [
        ("loyal_buyer", 1),
        ("new", 2),
    ]
    assert query(pg_dsn, "SELECT bucket, profiles FROM bi_score_distribution ORDER BY 1") == [
        (1, 1),
        (2, 1),
        (10, 1),
    ]
    ((views, carts, purchases, v2c, c2p, _, profiles),) = query(
        pg_dsn, "SELECT * FROM bi_funnel_totals"
    )
    assert (views, carts, purchases, profiles) == (60, 6, 3, 3)
    assert (v2c, c2p) == (pytest.approx(0.1), pytest.approx(0.5))


def test_bi_score_reasons_has_one_row_per_reason(pg_dsn: str) -> None:
    reasons = (
        '[{"feature": "cnt_cart_24h", "contribution": 0.41},'
        ' {"feature": "rec_hours_since_last_cart", "contribution": -0.2}]'
    )
    query(pg_dsn, UPSERT, row_with(1, user_id="u1", user_pseudonym="p1", score_reasons=reasons))
    assert query(
        pg_dsn, "SELECT user_pseudonym, rank, feature, contribution FROM bi_score_reasons"
    ) == [("p1", 1, "cnt_cart_24h", 0.41), ("p1", 2, "rec_hours_since_last_cart", -0.2)]
    ((listed,),) = query(pg_dsn, "SELECT score_reasons FROM bi_user_profiles")
    assert listed[0]["feature"] == "cnt_cart_24h"


def test_bi_reader_reads_and_writes_nothing(pg_dsn: str) -> None:
    query(pg_dsn, UPSERT, profile_row(1))
    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SET ROLE bi_reader")
        for table in (
            "bi_user_profiles",
            "bi_user_profile_history",
            "bi_segment_sizes",
            "bi_score_distribution",
            "bi_funnel_totals",
            "bi_score_reasons",
            "bi_segment_trend",
        ):
            cur.execute(f"SELECT count(*) FROM {table}")
        for statement in (
            "DELETE FROM user_profiles",
            "UPDATE user_profiles SET score = 1",
            "INSERT INTO user_profile_history (user_id) VALUES ('x')",
            "SELECT * FROM dead_letter_events",
            "SELECT user_id FROM user_profiles",
            "CREATE TABLE mine (x int)",
        ):
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute(statement)
    conn.close()


def test_an_embedded_server_takes_server_settings() -> None:
    """The bench's freshness part reads when rows became visible from commit timestamps, which
    need `track_commit_timestamp` from the server's start."""
    home = Path(tempfile.mkdtemp(prefix="profilestream-test-pg-"))
    server = EmbeddedPostgres(
        home / "data", settings={"track_commit_timestamp": "on", "max_wal_size": "2GB"}
    )
    try:
        conn = db.connect(server.start())
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW track_commit_timestamp")
                assert cur.fetchone() == ("on",)
                # The embedded defaults (SERVER_SETTINGS) under the caller's own.
                cur.execute("SHOW shared_buffers")
                assert cur.fetchone() == (SERVER_SETTINGS["shared_buffers"],) == ("512MB",)
                cur.execute("SHOW max_wal_size")
                assert cur.fetchone() == ("2GB",)
                cur.execute("CREATE TABLE t (x int)")
                cur.execute("INSERT INTO t VALUES (1)")
                cur.execute("SELECT clock_timestamp() - pg_xact_commit_timestamp(xmin) FROM t")
                (age,) = cur.fetchone()
                assert timedelta(0) <= age < timedelta(minutes=1)
        finally:
            conn.close()
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
