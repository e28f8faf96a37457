"""The adversarial stream (issue 5): 10,000 malformed messages of every kind mixed into a valid
stream, plus valid events whose every string is an injection attempt or odd Unicode, through the
real broker, the job on a Flink MiniCluster and PostgreSQL.

The job may not fail or restart once (it runs with no restart attempts); every malformed message
must be in `dead_letter_events` with the reason it was built with; the good users' profiles must
equal an offline recomputation over the valid messages alone (a run without the bad ones); and
the hostile strings must be stored verbatim.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import psycopg2
import pytest

from flink_jobs.cli.data import fetch_profiles
from flink_jobs.config import DEFAULT_MODEL_DIR, DEFAULT_SEGMENTS_DIR
from flink_jobs.io.producer import EventPublisher, ensure_topic
from tests.support import hostile
from tests.support.cli import cli
from tests.support.e2e import produce_file, run_bounded
from udfs import events as ev
from udfs.clusters import load_segmentation
from udfs.consistency import compare_profiles, recompute, scored_engine
from udfs.events import decode_event, make_message
from udfs.params import ProfileParams
from udfs.pseudonym import Pseudonymiser, load_key
from udfs.rows import dead_letter_id
from udfs.scoring import Scorer
from udfs.sources import SyntheticSpec, synthetic_events, write_delimited

pytestmark = [pytest.mark.flink, pytest.mark.integration]
N_BAD = 10_000


def hostile_valid_events_keyed_wrong(users: list[str], t0: int) -> list[tuple[bytes | None, bytes]]:
    """Valid events of existing users published under the wrong record key."""
    out: list[tuple[bytes | None, bytes]] = []
    for i, key in enumerate((users[1].encode(), None, b"\xff\xfe", b"", users[0].upper().encode())):
        raw = make_message(
            event_id=f"mis-keyed-{i}",
            user_id=users[0],
            event_type=ev.PURCHASE,
            event_time_ms=t0 + i,
            item_id="i-stolen",
            price_micros=10**9,
            currency="USD",
        ).SerializeToString()
        out.append((key, raw))
    return out


def test_hostile_stream(kafka: str, pg_dsn: str, tmp_path: Path) -> None:
    now_ms = int(time.time() * 1000)
    good = [m.SerializeToString() for m in synthetic_events(SyntheticSpec(6000, 300, seed=21))]
    decoded = [decode_event(raw, now_ms) for raw in good]
    t0 = min(e.event_time_ms for e in decoded)
    users = sorted({e.user_id for e in decoded})
    hostile_users = list(hostile.HOSTILE_USER_IDS)
    valid = good + hostile.hostile_valid_events(hostile_users, t0)
    valid.sort(key=lambda raw: decode_event(raw, now_ms).event_time_ms)  # stable: users' order
    bad = list(hostile.malformed(N_BAD, users=users + hostile_users, t0=t0, now_ms=now_ms))

    rng = random.Random(9)
    mixed: list[bytes] = list(valid)
    for raw, _ in bad:
        mixed.insert(rng.randrange(len(mixed) + 1), raw)
    log = tmp_path / "hostile.pb"
    write_delimited(log, mixed)

    topic = "hostile-events"
    ensure_topic(kafka, topic, partitions=2)
    offsets = produce_file(kafka, topic, "proto", log)
    assert sum(offsets.values()) == len(mixed)
    # Valid events whose Kafka key is not their user_id (another user's, none, garbage): the job is
    # keyed by the record key, so it must keep them as key_mismatch and touch no profile.
    mis_keyed = hostile_valid_events_keyed_wrong(users, t0)
    with EventPublisher(kafka, topic, validate=False) as publisher:
        for key, raw in mis_keyed:
            publisher.publish_raw(key, raw, decode_event(raw, now_ms).event_time_ms)
    for p, end in publisher.report.end_offsets.items():
        offsets[p] = max(offsets.get(p, 0), end)
    assert sum(offsets.values()) == len(mixed) + len(mis_keyed)
    # No restart allowed: any failure fails the job ("zero failures or restarts").
    run_bounded(kafka, pg_dsn, topic, offsets, tmp_path, restart_attempts=0)

    conn = psycopg2.connect(pg_dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT dead_letter_id, reason, raw FROM dead_letter_events")
        dead = {r[0]: (r[1], bytes(r[2])) for r in cur.fetchall()}
    # Every malformed message is kept once, with the reason it was built with.
    assert len(dead) == N_BAD + len(mis_keyed)
    assert {dead[dead_letter_id(raw)][0] for _, raw in mis_keyed} == {"key_mismatch"}
    wrong = [
        (reason.value, dead[dead_letter_id(raw)][0])
        for raw, reason in bad
        if reason is not None and dead[dead_letter_id(raw)][0] != reason.value
    ]
    assert wrong == []
    assert all(dead[dead_letter_id(raw)][1] == raw for raw, _ in bad)

    # The good users' profiles equal a run without the bad messages.
    engine = scored_engine(
        Scorer(DEFAULT_MODEL_DIR),
        Pseudonymiser(load_key()),
        ProfileParams(),
        load_segmentation(DEFAULT_SEGMENTS_DIR),
    )
    expected = recompute(valid, engine, now_ms=now_ms, topic=topic)
    assert expected.invalid_messages == 0
    actual = fetch_profiles(pg_dsn)
    assert len(actual) == len(users) + len(hostile_users)
    assert compare_profiles(expected.profiles, actual) == []

    # `verify` over the whole mixed log agrees (profiles and dead letters).
    proc = cli(
        "verify", "--events", str(log), "--format", "proto", "--pg-dsn", pg_dsn, "--topic", topic
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "mismatches: 0 in 0 profiles; dead-letter problems: 0" in proc.stdout
    assert f"{len(mis_keyed)} dead letters with reason key_mismatch" in proc.stdout

    # Hostile strings are data, stored verbatim; nothing was executed.
    with conn.cursor() as cur:
        for k, user in enumerate(hostile_users):
            cur.execute(
                "SELECT top_category, features FROM user_profiles WHERE user_id = %s", (user,)
            )
            (top, features) = cur.fetchone()
            # Names in profile lists are cut to 64 characters (docs/features.md), else verbatim.
            assert top == hostile.HOSTILE_STRINGS[k % len(hostile.HOSTILE_STRINGS)][:64]
            brands = [
                b
                for b, _ in (features if isinstance(features, dict) else json.loads(features))[
                    "pref_top_brands"
                ]
            ]
            assert brands and set(brands) <= {s[:64] for s in hostile.HOSTILE_STRINGS}
        cur.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' "
            "AND table_name IN ('user_profiles', 'dead_letter_events', 'user_profile_history')"
        )
        assert cur.fetchone() == (3,)
    conn.close()
