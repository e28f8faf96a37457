"""End to end on real components: producer -> Tansu (Kafka protocol) -> the job on a Flink
MiniCluster (thread mode, RocksDB, checkpoints) -> JDBC upsert -> embedded PostgreSQL.

The expected result is an independent offline recomputation: the topic is read back with a
plain Kafka consumer and folded with the same `udfs` code, without Flink.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import psycopg2
import pytest

from flink_jobs.config import JobConfig
from flink_jobs.job import preflight, run_job
from flink_jobs.producer import EventPublisher, ensure_topic, read_topic
from schemas.profilestream.events.v1 import user_event_pb2 as pb
from udfs import events as ev
from udfs.consistency import compare_profiles, recompute
from udfs.events import Reason, make_message
from udfs.rows import PROFILE_COLUMN_NAMES, dead_letter_id
from udfs.scoring import Scorer
from udfs.sources import SyntheticSpec, synthetic_events

pytestmark = [pytest.mark.flink, pytest.mark.integration]

T = 1_735_700_000_000


def malformed_messages() -> list[tuple[bytes, Reason | None]]:
    """Bad messages of every kind, each unique; None = random bytes (reason decided by the
    decoder, checked against the offline recomputation)."""

    def msg(i: int, **kw: object) -> bytes:
        fields: dict[str, object] = dict(
            event_id=f"bad-{i}",
            user_id=f"victim{i % 7}",
            event_type=ev.VIEW,
            event_time_ms=T + i,
            item_id="x",
        )
        fields.update(kw)
        return make_message(**fields).SerializeToString()  # type: ignore[arg-type]

    out: list[tuple[bytes, Reason | None]] = []
    rng = random.Random(5)
    for i in range(4):
        base = 100 * i
        good = msg(base)
        out += [
            (bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60))), None),
            (good[: len(good) // 2] + b"\xff\xff\xff\xff\x0f", Reason.DECODE_ERROR),
            (msg(base + 1, user_id=""), Reason.MISSING_USER_ID),
            (msg(base + 2, user_id="evil\x00user"), Reason.USER_ID_INVALID_CHARS),
            (msg(base + 3, user_id="u" * 300), Reason.USER_ID_TOO_LONG),
            (msg(base + 4, event_id=""), Reason.MISSING_EVENT_ID),
            (msg(base + 5, event_type=0), Reason.MISSING_EVENT_TYPE),
            (msg(base + 6, event_type=99), Reason.UNKNOWN_EVENT_TYPE),
            (msg(base + 7, event_time_ms=631_152_000_000), Reason.EVENT_TIME_OUT_OF_RANGE),
            (
                msg(base + 8, event_time_ms=int(time.time() * 1000) + 7 * 86_400_000),
                Reason.EVENT_TIME_OUT_OF_RANGE,
            ),
            (
                msg(base + 9, event_type=ev.PURCHASE, price_micros=-5, currency="USD"),
                Reason.INVALID_PRICE,
            ),
            (msg(base + 10, price_micros=1_000_000), Reason.MISSING_CURRENCY),
            (msg(base + 11, price_micros=1_000_000, currency="dollars"), Reason.INVALID_CURRENCY),
            (msg(base + 12, event_type=ev.ADD_TO_CART, quantity=0), Reason.INVALID_QUANTITY),
            (msg(base + 13, item_id=None), Reason.MISSING_ITEM_ID),
            (msg(base + 14, event_type=ev.SEARCH, item_id=None), Reason.MISSING_SEARCH_QUERY),
            (msg(base + 15, channel=42), Reason.UNKNOWN_CHANNEL),
            (b"\x0a" * 20_000, Reason.MESSAGE_TOO_LARGE)
            if i == 0
            else (msg(base + 16, brand="b" * 5000), Reason.FIELD_TOO_LONG),
        ]
    return out


def test_pipeline_matches_offline_recomputation(kafka: str, pg_dsn: str, tmp_path: Path) -> None:
    topic = "e2e-user-events"
    partitions = ensure_topic(kafka, topic, partitions=2)
    good = synthetic_events(SyntheticSpec(events=4000, users=250, seed=11))
    bad = malformed_messages()
    publisher = EventPublisher(kafka, topic)
    bad_iter = iter(bad)
    for i, m in enumerate(good):
        publisher.publish(m)
        if i % 50 == 25:
            raw, _ = next(bad_iter, (b"", None))
            if raw:
                publisher.publish_raw(f"k{i}".encode(), raw)
    for raw, _ in bad_iter:
        publisher.publish_raw(b"tail", raw)
    publisher.publish_raw(b"dup", bad[1][0])  # the same bad bytes delivered twice: one row
    report = publisher.flush()
    assert report.delivered == len(good) + len(bad) + 1

    config = JobConfig(
        kafka_bootstrap=kafka,
        pg_dsn=pg_dsn,
        topic=topic,
        job_name="e2e",
        state_dir=tmp_path,
        checkpoint_interval_ms=1000,
        stopping_offsets=report.stopping_offsets(partitions),
    )
    java = preflight(config)
    result = run_job(config, java)
    assert result.status == "FINISHED"

    # Independent recomputation from what the topic really holds, in partition order.
    raws = [value for _, _, value in read_topic(kafka, topic, report.end_offsets)]
    assert len(raws) == report.delivered
    scorer = Scorer(config.model_dir)
    expected = recompute(raws, config.profile, scorer, int(time.time() * 1000))
    assert expected.valid_events == len(good)
    assert len(expected.profiles) == 250

    conn = psycopg2.connect(pg_dsn)
    with conn.cursor() as cur:
        cur.execute(f"SELECT {', '.join(PROFILE_COLUMN_NAMES)} FROM user_profiles")
        actual = {r[0]: tuple(r) for r in cur.fetchall()}
        cur.execute("SELECT dead_letter_id, reason, raw, source_topic FROM dead_letter_events")
        dead = {r[0]: (r[1], bytes(r[2]), r[3]) for r in cur.fetchall()}
    conn.close()

    mismatches = compare_profiles(expected.profiles, actual)
    assert mismatches == [], f"{len(mismatches)} mismatches, e.g. {mismatches[:5]}"
    assert {r[PROFILE_COLUMN_NAMES.index("model_version")] for r in actual.values()} == {
        "bootstrap-v1"
    }

    # Every malformed message is in the dead-letter table, once, with its reason and bytes.
    assert {k: v[0] for k, v in dead.items()} == expected.dead_letters
    assert len(dead) == len(bad)
    for raw, reason in bad:
        got_reason, got_raw, got_topic = dead[dead_letter_id(raw)]
        assert got_raw == raw and got_topic == topic
        if reason is not None:
            assert got_reason == reason.value
    # None of the victims' bad events leaked into a profile.
    assert not any(u.startswith("victim") for u in actual)
    assert pb.UserEvent  # the contract module is the one the job used
