"""End to end on real components: `profilestream produce` -> Tansu (Kafka protocol) -> the job on
a Flink MiniCluster (thread mode, RocksDB, checkpoints, timers) -> JDBC upsert -> embedded
PostgreSQL, checked with `profilestream verify` (an independent offline recomputation by the
same `udfs` code, no Flink) and directly against the dead-letter table.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import psycopg2
import pytest

from flink_jobs.config import DEFAULT_MODEL_DIR, DEFAULT_SEGMENTS_DIR
from flink_jobs.io import segments
from flink_jobs.io.producer import ensure_topic
from tests.support.cli import cli
from tests.support.clusters import write_segmentation
from tests.support.e2e import produce_file, run_bounded
from tests.support.golden import SEGMENTATION
from tests.support.models import row_vector
from tests.support.shared_data import shared_file
from udfs import events as ev
from udfs.clusters import load_segmentation
from udfs.events import Reason, make_message, validate_message
from udfs.rows import dead_letter_id
from udfs.scoring import read_metadata
from udfs.sources import SyntheticSpec, synthetic_events, write_delimited

pytestmark = [pytest.mark.flink, pytest.mark.integration]

T = 1_735_700_000_000


def malformed_messages() -> list[tuple[bytes, Reason | None]]:
    """Bad messages of every kind, each unique; None = random bytes (the decoder decides the
    reason; verify checks it against the offline recomputation)."""

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
            (msg(base + 8, event_time_ms=int(time.time() * 1000) + 7 * 86_400_000),
             Reason.EVENT_TIME_OUT_OF_RANGE),
            (msg(base + 9, event_type=ev.PURCHASE, price_micros=-5, currency="USD"),
             Reason.INVALID_PRICE),
            (msg(base + 10, price_micros=1_000_000), Reason.MISSING_CURRENCY),
            (msg(base + 11, price_micros=1_000_000, currency="dollars"),
             Reason.INVALID_CURRENCY),
            (msg(base + 12, event_type=ev.ADD_TO_CART, quantity=0), Reason.INVALID_QUANTITY),
            (msg(base + 13, item_id=None), Reason.MISSING_ITEM_ID),
            (msg(base + 14, event_type=ev.SEARCH, item_id=None), Reason.MISSING_SEARCH_QUERY),
            (msg(base + 15, channel=42), Reason.UNKNOWN_CHANNEL),
            (b"\x0a" * 20_000, Reason.MESSAGE_TOO_LARGE) if i == 0 else
            (msg(base + 16, brand="b" * 5000), Reason.FIELD_TOO_LONG),
        ]  # fmt: skip
    return out


def build_log(path: Path) -> tuple[list[tuple[bytes, Reason | None]], bytes, bytes]:
    """Synthetic shoppers over 28 days, with malformed messages mixed in, one duplicate
    delivery and one event later than the allowed lateness. Returns (bad, duplicate, late)."""
    good = [
        m.SerializeToString() for m in synthetic_events(SyntheticSpec(4000, 250, seed=11, days=28))
    ]
    bad = malformed_messages()
    messages: list[bytes] = []
    bad_iter = iter(bad)
    for i, raw in enumerate(good):
        messages.append(raw)
        if i % 50 == 25 and (nxt := next(bad_iter, None)) is not None:
            messages.append(nxt[0])
    messages += [raw for raw, _ in bad_iter]
    duplicate = good[1000]
    messages.append(duplicate)  # a producer retry delivered the same event again
    messages.append(bad[1][0])  # the same bad bytes twice: one dead-letter row
    last = validate_message(_parse(good[-1]), 2**62)
    late = make_message(
        event_id="late-1",
        user_id=last.user_id,
        event_type=ev.VIEW,
        event_time_ms=last.event_time_ms - 2 * 3_600_000,
        item_id="late-item",
    ).SerializeToString()
    messages.append(late)
    write_delimited(path, messages)
    return bad, duplicate, late


def _parse(raw: bytes) -> object:
    from schemas.profilestream.events.v1 import user_event_pb2 as pb

    msg = pb.UserEvent()
    msg.ParseFromString(raw)
    return msg


def test_pipeline_matches_offline_recomputation(kafka: str, pg_dsn: str, tmp_path: Path) -> None:
    topic = "e2e-user-events"
    ensure_topic(kafka, topic, partitions=2)
    log = tmp_path / "events.pb"
    bad, duplicate, late = build_log(log)
    offsets = produce_file(kafka, topic, "proto", log)
    assert sum(offsets.values()) == 4000 + len(bad) + 3
    # The learned segments of a segmentation made for these shoppers (tests/support/golden.py),
    # not the trained default, so the moves between clusters asserted below do not depend on a
    # model; the default's rows are checked by the other end-to-end tests.
    segments_dir = write_segmentation(tmp_path / "segments", SEGMENTATION, "e2e-s1")
    run_bounded(kafka, pg_dsn, topic, offsets, tmp_path, segments_dir=segments_dir)

    verify = ("verify", "--events", str(log), "--format", "proto", "--pg-dsn", pg_dsn)
    proc = cli(*verify, "--topic", topic, "--segments-dir", str(segments_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "mismatches: 0 in 0 profiles; dead-letter problems: 0" in proc.stdout
    # 4,000 + the duplicate delivery + the late event
    assert "4,002 valid events" in proc.stdout and "1 duplicates, 1 late events" in proc.stdout
    assert "profiles: 250 expected, 250 in PostgreSQL" in proc.stdout
    segmentation = load_segmentation(segments_dir)
    assert f"clusters: recomputed with segmentation {segmentation.version}" in proc.stdout

    conn = psycopg2.connect(pg_dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT cluster_id, cluster_version, features FROM user_profiles")
        clustered = cur.fetchall()
        cur.execute(
            "SELECT cluster_id, previous_cluster_id, cluster_version, segment, previous_segment"
            " FROM user_profile_history WHERE change = 'cluster'"
        )
        moves = cur.fetchall()
        cur.execute("SELECT count(*) FROM user_profile_history WHERE cluster_id IS NULL")
        (unclustered_history,) = cur.fetchone()
        registered_rows = segments.registered(conn, segmentation.version)
        cur.execute("SELECT dead_letter_id, reason, raw, source_topic FROM dead_letter_events")
        dead = {r[0]: (r[1], bytes(r[2]), r[3]) for r in cur.fetchall()}
        cur.execute("SELECT segment, count(*) FROM user_profiles GROUP BY 1")
        rule_segments = dict(cur.fetchall())
        cur.execute("SELECT count(*) FROM user_profiles WHERE user_id LIKE 'victim%'")
        (victims,) = cur.fetchone()
        cur.execute("SELECT score_reasons FROM user_profiles")
        reasons = [r[0] for r in cur.fetchall()]
        cur.execute("SELECT count(DISTINCT user_pseudonym), count(*) FROM bi_score_reasons")
        (explained_users, reason_rows) = cur.fetchone()
    conn.close()
    # Every row explains its score (verify compared the values with the offline recomputation):
    # three of the model's features, largest contribution first.
    model_features = set(read_metadata(DEFAULT_MODEL_DIR).feature_names)
    for r in reasons:
        assert len(r) == 3 and {x["feature"] for x in r} <= model_features, r
        sizes = [abs(x["contribution"]) for x in r]
        assert sizes == sorted(sizes, reverse=True)
    assert (explained_users, reason_rows) == (len(reasons), 3 * len(reasons))
    # Every malformed message is in the dead-letter table, once, with its reason and bytes.
    assert len(dead) == len(bad) + 1
    for raw, reason in bad:
        got_reason, got_raw, got_topic = dead[dead_letter_id(raw)]
        assert got_raw == raw and got_topic == topic
        if reason is not None:
            assert got_reason == reason.value
    assert dead[dead_letter_id(late)][0] == "late_event"
    assert dead_letter_id(duplicate) not in dead
    assert victims == 0
    # 28 days of shoppers: several segments, including inactivity driven by event-time timers.
    assert rule_segments.get("at_risk", 0) > 0 and len(rule_segments) >= 4, rule_segments
    # The learned segment: every row's cluster is the default segmentation's cluster of the
    # row's own features (verify compared it with the recomputation too), several clusters.
    assert {version for _, version, _ in clustered} == {segmentation.version}
    assert all(c == segmentation.assign(row_vector(f)) for c, _, f in clustered)
    assert len({c for c, _, _ in clustered}) >= 3, clustered
    # A user who moved to another cluster (the rule-based segment unchanged) has a history row
    # saying so, with the cluster they came from.
    assert moves, "no 'cluster' history row: no user changed cluster between two writes"
    for cluster, previous, version, segment, previous_segment in moves:
        assert previous is not None and previous != cluster and version == segmentation.version
        assert segment == previous_segment
    assert unclustered_history == 0
    # The job registered its segmentation for BI when it started.
    assert registered_rows == segments.cluster_rows(segmentation)
    assert [r.name for r in registered_rows] == [c.name for c in segmentation.clusters]

    # A row naming another segmentation: verify says so instead of comparing its cluster.
    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SET profilestream.maintenance = 'on'")  # past the version guard
        cur.execute(
            "UPDATE user_profiles SET cluster_version = 'other-s9', cluster_id = 99"
            " WHERE user_id = (SELECT min(user_id) FROM user_profiles)"
        )
    conn.close()
    proc = cli(*verify, "--topic", topic, "--segments-dir", str(segments_dir))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"1 rows name cluster_version 'other-s9', not '{segmentation.version}'" in proc.stdout, (
        proc.stdout
    )
    assert "mismatches: 0 in 0 profiles; dead-letter problems: 0" in proc.stdout


@pytest.mark.data
def test_real_rees46_sample_through_the_job_verifies(
    kafka: str, pg_dsn: str, tmp_path: Path
) -> None:
    path = shared_file("rees46_2019-Oct_head.csv")
    topic = "e2e-rees46"
    ensure_topic(kafka, topic, partitions=2)
    offsets = produce_file(kafka, topic, "rees46", path)
    run_bounded(kafka, pg_dsn, topic, offsets, tmp_path)
    proc = cli(
        "verify", "--events", str(path), "--format", "rees46", "--pg-dsn", pg_dsn, "--topic", topic
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "profiles: 4,504 expected, 4,504 in PostgreSQL" in proc.stdout
    assert "mismatches: 0 in 0 profiles" in proc.stdout  # the clusters included:
    assert f"clusters: recomputed with segmentation {DEFAULT_SEGMENTS_DIR.name}" in proc.stdout
