"""Pseudonymisation and erasure in the database, on a real (embedded) PostgreSQL: what
`bi_reader` can see when it logs in, key rotation, and what an erasure deletes."""

from __future__ import annotations

import psycopg2
import pytest

from flink_jobs.io import db
from tests.support.db import UPSERT, query, row_with
from udfs.pseudonym import Pseudonymiser
from udfs.rows import dead_letter_row, user_id_field_bytes

pytestmark = pytest.mark.integration

OLD = Pseudonymiser(b"old-key-" + b"1" * 24)
NEW = Pseudonymiser(b"new-key-" + b"2" * 24)
DEAD_LETTER = (
    "INSERT INTO dead_letter_events (dead_letter_id, reason, detail, raw, source_topic, "
    "seen_at_ms, user_id, event_time_ms) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (dead_letter_id) DO UPDATE SET reason = EXCLUDED.reason"
)


def profile(user: str, version: int, **changes: object) -> tuple[object, ...]:
    return row_with(version, user_id=user, user_pseudonym=OLD(user), **changes)


def test_bi_reader_logs_in_and_sees_pseudonyms_only(pg_dsn: str) -> None:
    query(pg_dsn, UPSERT, profile("alice@example.com", 1))
    query(pg_dsn, "ALTER ROLE bi_reader WITH LOGIN")
    dsn = pg_dsn.replace("postgresql://postgres@", "postgresql://bi_reader@")
    assert "bi_reader@" in dsn
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user, user_pseudonym, segment FROM bi_user_profiles")
            assert cur.fetchall() == [("bi_reader", OLD("alice@example.com"), "new")]
            cur.execute("SELECT user_pseudonym FROM bi_user_profile_history")
            assert cur.fetchall() == [(OLD("alice@example.com"),)]
            # No relation bi_reader can read exposes a user_id column.
            cur.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
            relations = [r[0] for r in cur.fetchall()]
            readable = []
            for rel in relations:
                try:
                    cur.execute(f'SELECT * FROM "{rel}" LIMIT 1')
                except psycopg2.errors.InsufficientPrivilege:
                    continue
                readable.append(rel)
                columns = [c.name for c in cur.description]
                assert "user_id" not in columns, rel
                for value in cur.fetchall():
                    assert "alice@example.com" not in repr(value), rel
            assert {"bi_user_profiles", "bi_segment_sizes"} <= set(readable)
            for table in ("user_profiles", "user_profile_history", "dead_letter_events"):
                with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                    cur.execute(f"SELECT count(*) FROM {table}")
    finally:
        conn.close()
        query(pg_dsn, "ALTER ROLE bi_reader WITH NOLOGIN")


def test_the_first_key_is_recorded_and_another_refused(pg_dsn: str) -> None:
    db.check_pseudonym_key(pg_dsn, OLD.key_id)
    db.check_pseudonym_key(pg_dsn, OLD.key_id)  # the same key: fine
    with pytest.raises(db.DatabaseError) as info:
        db.check_pseudonym_key(pg_dsn, NEW.key_id)
    message = str(info.value)
    assert "rotate-pseudonyms" in message and OLD.key_id in message and "\n" not in message


def test_rotation_rewrites_every_pseudonym_without_moving_versions(pg_dsn: str) -> None:
    db.check_pseudonym_key(pg_dsn, OLD.key_id)
    for user in ("alice", "bob"):
        query(pg_dsn, UPSERT, profile(user, 1))
        query(pg_dsn, UPSERT, profile(user, 2, segment="loyal_buyer"))
    assert db.rotate_pseudonyms(pg_dsn, NEW, NEW.key_id) == (2, 4)
    assert query(
        pg_dsn, "SELECT user_id, user_pseudonym, profile_version FROM user_profiles ORDER BY 1"
    ) == [("alice", NEW("alice"), 2), ("bob", NEW("bob"), 2)]
    assert query(
        pg_dsn, "SELECT DISTINCT user_id, user_pseudonym FROM user_profile_history ORDER BY 1"
    ) == [("alice", NEW("alice")), ("bob", NEW("bob"))]
    db.check_pseudonym_key(pg_dsn, NEW.key_id)  # the new key is now the recorded one
    # The version guard still holds outside the rotation.
    query(pg_dsn, UPSERT, profile("alice", 1, segment="dormant"))
    assert query(pg_dsn, "SELECT segment FROM user_profiles WHERE user_id = 'alice'") == [
        ("loyal_buyer",)
    ]


def _dead_letter(dsn: str, raw: bytes, user: str | None, event_time_ms: int | None = None) -> None:
    row = dead_letter_row(raw, "invalid_quantity", "x", "t", 1, user, event_time_ms)
    query(dsn, DEAD_LETTER, row)


def test_erasure_deletes_everything_naming_the_user_and_nothing_else(pg_dsn: str) -> None:
    for user in ("carol", "dave"):
        query(pg_dsn, UPSERT, profile(user, 1))
        query(pg_dsn, UPSERT, profile(user, 2, segment="loyal_buyer"))
        _dead_letter(pg_dsn, b"parsed " + user.encode(), user)
        # Unparseable, but the encoded user_id field is in the bytes.
        _dead_letter(pg_dsn, b"\xff\xff" + user_id_field_bytes(user) + b"\x00truncated", None)
    _dead_letter(pg_dsn, b"random bytes naming nobody", None)
    erased = db.erase_user(pg_dsn, "carol")
    assert (erased.profiles, erased.history, erased.dead_letters) == (1, 2, 2)
    assert query(pg_dsn, "SELECT user_id FROM user_profiles") == [("dave",)]
    assert query(pg_dsn, "SELECT DISTINCT user_id FROM user_profile_history") == [("dave",)]
    assert query(pg_dsn, "SELECT count(*) FROM dead_letter_events") == [(3,)]
    for table in ("user_profiles", "user_profile_history"):
        assert query(
            pg_dsn, f"SELECT count(*) FROM {table} WHERE user_pseudonym = %s", (OLD("carol"),)
        ) == [(0,)]
    # A replay from before the erasure writes the same dead letter again: it stays erased.
    _dead_letter(pg_dsn, b"parsed carol", "carol")
    assert query(pg_dsn, "SELECT count(*) FROM dead_letter_events WHERE user_id = 'carol'") == [
        (0,)
    ]


def test_deleting_the_profile_row_takes_its_history_and_dead_letters(pg_dsn: str) -> None:
    """The job erases by deleting the row (an ERASE event); the trigger does the rest."""
    query(pg_dsn, UPSERT, profile("erin", 1))
    query(pg_dsn, UPSERT, profile("erin", 2, segment="loyal_buyer"))
    _dead_letter(pg_dsn, b"bad erin", "erin")
    query(pg_dsn, "DELETE FROM user_profiles WHERE user_id = %s", ("erin",))
    for table in ("user_profiles", "user_profile_history", "dead_letter_events"):
        assert query(pg_dsn, f"SELECT count(*) FROM {table}") == [(0,)], table


@pytest.mark.parametrize("user", ["a", "x" * 127, "y" * 128, "ü" * 100, "z" * 256])
def test_sql_and_python_agree_on_the_encoded_user_id(pg_dsn: str, user: str) -> None:
    ((sql,),) = query(pg_dsn, "SELECT user_id_field_bytes(%s)", (user,))
    assert bytes(sql) == user_id_field_bytes(user)


def test_an_erasure_bounded_by_its_time_keeps_what_came_after(pg_dsn: str) -> None:
    """`profilestream erase` deletes up to the request's event time, so it never deletes the
    profile a user starts after coming back, and running it again later is safe."""
    epoch = 1_735_689_600_000
    erase_at = epoch + 10_000
    query(pg_dsn, UPSERT, profile("fay", 1))
    query(pg_dsn, UPSERT, profile("fay", 2, segment="loyal_buyer"))
    _dead_letter(pg_dsn, b"fay before", "fay", erase_at - 1)
    _dead_letter(pg_dsn, b"fay no time", "fay", None)
    _dead_letter(pg_dsn, b"fay after", "fay", erase_at + 1)
    assert db.erase_user(pg_dsn, "fay", erase_at) == db.Erased(1, 2, 2)
    # She comes back after the request: a new profile (a new epoch).
    query(pg_dsn, UPSERT, profile("fay", 1, profile_epoch_ms=erase_at + 5))
    assert db.erase_user(pg_dsn, "fay", erase_at) == db.Erased(0, 0, 0)  # again: a no-op
    assert query(pg_dsn, "SELECT profile_epoch_ms FROM user_profiles") == [(erase_at + 5,)]
    assert query(pg_dsn, "SELECT change FROM user_profile_history") == [("new",)]
    assert query(pg_dsn, "SELECT raw::text FROM dead_letter_events") == [
        ("\\x" + b"fay after".hex(),)
    ]


def test_rotate_pseudonyms_command(pg_dsn: str) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.support.keys import TEST_PSEUDONYM_KEY

    current = Pseudonymiser(TEST_PSEUDONYM_KEY.encode())
    db.check_pseudonym_key(pg_dsn, current.key_id)
    query(pg_dsn, UPSERT, row_with(1, user_id="gus", user_pseudonym=current("gus")))
    new_key = "rotated-key-" + "9" * 20
    env = {**os.environ, "PROFILESTREAM_PSEUDONYM_KEY": new_key, "PG_DSN": pg_dsn}
    cli = str(Path(sys.executable).parent / "profilestream")
    proc = subprocess.run(
        [cli, "db", "rotate-pseudonyms"], capture_output=True, text=True, env=env, timeout=60
    )
    rotated = Pseudonymiser(new_key.encode())
    assert proc.returncode == 0, proc.stderr
    assert f"key id {rotated.key_id}: 1 profiles, 1 history rows" in proc.stdout
    assert new_key not in proc.stdout + proc.stderr
    assert query(pg_dsn, "SELECT user_pseudonym FROM bi_user_profiles") == [(rotated("gus"),)]
    db.check_pseudonym_key(pg_dsn, rotated.key_id)
