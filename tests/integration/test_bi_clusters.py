"""Learned shopper segments for BI (migration 0008), on a real (embedded) PostgreSQL: profile rows
written with the job's upsert, history written by the database's own trigger, and what every
cluster view shows for them, as `bi_reader` may read it."""

from __future__ import annotations

import json
import re
import time
from decimal import Decimal

import psycopg2
import pytest

from flink_jobs.io.db import PROJECT_ROOT
from tests.support.db import UPSERT, query, row_with

pytestmark = pytest.mark.integration

EPOCH = 1_735_689_600_000  # 2025-01-01 00:00 UTC, the rows' profile epoch
HOUR = 3_600_000
CLUSTERS = {  # s1, as the job registers it: id -> (name, description, size, share)
    0: ("frequent viewers", "many views, rare buyers", 50, 0.5),
    1: ("big spenders", "few visits, large baskets", 30, 0.3),
    2: ("lapsed", "quiet for weeks", 20, 0.2),
}
# bi_user_profiles as of migration 0005: the new columns come after these, in this order.
PROFILE_VIEW_0005 = [
    "user_pseudonym",
    "segment",
    "score",
    "model_version",
    "expired",
    "profile_epoch_ms",
    "profile_version",
    "as_of",
    "event_count",
    "views",
    "carts",
    "removes",
    "favorites",
    "purchases",
    "searches",
    "views_24h",
    "carts_24h",
    "purchases_30d",
    "spend_micros",
    "spend",
    "spend_30d_micros",
    "spend_30d",
    "other_purchases",
    "abandoned_carts",
    "first_event_at",
    "last_event_at",
    "last_purchase_at",
    "activity_score",
    "distinct_categories",
    "top_category",
    "sessions",
    "features",
    "updated_at",
    "score_reasons",
]
HISTORY_VIEW_0004 = [
    "history_id",
    "user_pseudonym",
    "recorded_at",
    "as_of",
    "change",
    "profile_epoch_ms",
    "profile_version",
    "segment",
    "previous_segment",
    "score",
    "previous_score",
    "model_version",
    "expired",
]


@pytest.fixture
def dsn(pg_dsn: str) -> str:
    """The test database with s1 registered; sessions in UTC (days are cut in the session's
    time zone, as in bi_segment_trend)."""
    for cluster_id, (name, description, size, share) in CLUSTERS.items():
        register(pg_dsn, "s1", cluster_id, name, description, size, share)
    return pg_dsn + "?options=-c%20TimeZone%3DUTC"


def register(
    dsn: str, version: str, cluster_id: int, name: str, description: str, size: int, share: float
) -> None:
    query(
        dsn,
        "INSERT INTO segment_clusters (cluster_version, cluster_id, name, description, size, "
        "share, centroid) VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (version, cluster_id, name, description, size, share, json.dumps({"views_30d": size})),
    )


def write(dsn: str, user: str, version: int, **changes: object) -> None:
    """The job's upsert of `user`'s row at `version` (event time: noon of 2025-01-01 unless
    `as_of_ms` says otherwise)."""
    changes.setdefault("as_of_ms", EPOCH + 12 * HOUR + version)
    query(dsn, UPSERT, row_with(version, user_id=user, user_pseudonym=f"p-{user}", **changes))


def test_history_records_moves_within_one_segmentation(dsn: str) -> None:
    write(dsn, "alice", 1)  # before the job assigned clusters: 'new' without one
    write(dsn, "alice", 2, cluster_id=0, cluster_version="s1")  # gains one: not a move, no row
    write(dsn, "alice", 3, cluster_id=1, cluster_version="s1")  # a move: 'cluster'
    write(dsn, "alice", 4, cluster_id=1, cluster_version="s1")  # the same cluster: no row
    # a move on a segment change: the trigger records 'segment', with the previous cluster
    write(dsn, "alice", 5, cluster_id=2, cluster_version="s1", segment="loyal_buyer")
    write(dsn, "alice", 4, cluster_id=0, cluster_version="s1")  # a stale replay: nothing
    # the job restarted with segmentation s2: a re-assignment, not a move, no row
    write(dsn, "alice", 6, cluster_id=0, cluster_version="s2", segment="loyal_buyer")
    write(dsn, "alice", 7, cluster_id=1, cluster_version="s2", segment="loyal_buyer")  # a move
    write(dsn, "alice", 8, cluster_id=2, cluster_version="s2", segment="loyal_buyer", score=0.9)
    rows = query(
        dsn,
        "SELECT change, profile_version, segment, cluster_id, cluster_version, "
        "previous_cluster_id, previous_cluster_version FROM bi_user_profile_history "
        "ORDER BY history_id",
    )
    assert rows == [
        ("new", 1, "new", None, None, None, None),
        ("cluster", 3, "new", 1, "s1", 0, "s1"),
        ("segment", 5, "loyal_buyer", 2, "s1", 1, "s1"),
        ("cluster", 7, "loyal_buyer", 1, "s2", 0, "s2"),
        ("cluster", 8, "loyal_buyer", 2, "s2", 1, "s2"),  # a move before a score change
    ]
    assert query(dsn, "SELECT cluster_id, cluster_version FROM bi_user_profiles") == [(2, "s2")]
    # A re-assignment on a segment change: a 'segment' row across versions, not a move.
    write(dsn, "alice", 9, cluster_id=0, cluster_version="s3", segment="high_value")
    # Expiry and a return after it carry the previous cluster but are not moves.
    write(dsn, "alice", 10, cluster_id=1, cluster_version="s3", segment="dormant", expired=True)
    write(
        dsn,
        "alice",
        1,
        profile_epoch_ms=EPOCH + 100 * 24 * HOUR,
        as_of_ms=EPOCH + 100 * 24 * HOUR,
        cluster_id=2,
        cluster_version="s3",
    )
    assert query(
        dsn,
        "SELECT change, cluster_id, cluster_version, previous_cluster_id, "
        "previous_cluster_version FROM bi_user_profile_history WHERE profile_version >= 9 "
        "OR change = 'new_epoch' ORDER BY history_id",
    ) == [
        ("segment", 0, "s3", 2, "s2"),
        ("expired", 1, "s3", 0, "s3"),
        ("new_epoch", 2, "s3", 1, "s3"),
    ]
    # s2 is not registered: its moves count, without names.
    assert query(
        dsn,
        "SELECT cluster_version, from_cluster_id, from_cluster_name, to_cluster_id, "
        "to_cluster_name, moves FROM bi_cluster_flows ORDER BY 1, 2",
    ) == [
        ("s1", 0, "frequent viewers", 1, "big spenders", 1),
        ("s1", 1, "big spenders", 2, "lapsed", 1),
        ("s2", 0, None, 1, None, 1),
        ("s2", 1, None, 2, None, 1),
    ]


def test_flows_per_day_between_named_clusters(dsn: str) -> None:
    day1, day2 = EPOCH + 12 * HOUR, EPOCH + 36 * HOUR
    for user in ("a", "b"):
        write(dsn, user, 1, cluster_id=0, cluster_version="s1", as_of_ms=day1)
        write(dsn, user, 2, cluster_id=1, cluster_version="s1", as_of_ms=day1 + 1)
    write(dsn, "b", 3, cluster_id=2, cluster_version="s1", as_of_ms=day2, segment="at_risk")
    write(dsn, "c", 1, as_of_ms=day1)  # written before clusters
    write(dsn, "c", 2, cluster_id=0, cluster_version="s1", as_of_ms=day2)  # gains one
    write(dsn, "c", 3, cluster_id=0, cluster_version="s1", as_of_ms=day2, score=0.9)  # 'score'
    assert query(
        dsn,
        "SELECT day::text, cluster_version, from_cluster_id, from_cluster_name, to_cluster_id, "
        "to_cluster_name, moves FROM bi_cluster_flows ORDER BY day, from_cluster_id",
    ) == [
        ("2025-01-01 00:00:00+00", "s1", 0, "frequent viewers", 1, "big spenders", 2),
        ("2025-01-02 00:00:00+00", "s1", 1, "big spenders", 2, "lapsed", 1),
    ]
    assert query(
        dsn, "SELECT user_pseudonym, change FROM bi_user_profile_history WHERE change <> 'new'"
    ) == [("p-a", "cluster"), ("p-b", "cluster"), ("p-b", "segment"), ("p-c", "score")]


def test_cluster_sizes_and_segments_now(dsn: str) -> None:
    register(dsn, "s0", 5, "old kind", "from an older segmentation", 10, 1.0)
    live = [  # user, cluster, segment, score, spend_30d in units
        ("u0", 0, "active_browser", 0.2, 0),
        ("u1", 0, "cart_abandoner", 0.4, 10),
        ("u2", 0, "active_browser", 0.6, 0),
        ("u3", 1, "high_value", 0.9, 100),
        ("u4", 1, "active_browser", 0.3, 0),
    ]
    for user, cluster, segment, score, spend in live:
        write(
            dsn,
            user,
            1,
            cluster_id=cluster,
            cluster_version="s1",
            segment=segment,
            score=score,
            spend_30d_micros=spend * 1_000_000,
        )
    write(dsn, "gone", 1, cluster_id=1, cluster_version="s1", expired=True, segment="dormant")
    write(dsn, "unassigned", 1, segment="new")
    # not updated since the job moved to s1; cluster 5 of s0 is registered, cluster 7 is not
    write(dsn, "old", 1, cluster_id=5, cluster_version="s0", score=0.1, segment="new")
    write(dsn, "odd", 1, cluster_id=7, cluster_version="s0", score=0.3, segment="new")
    sizes = query(
        dsn,
        "SELECT cluster_version, cluster_id, cluster_name, description, profiles, share, "
        "avg_score, round(avg_spend_30d, 4), training_size, training_share "
        "FROM bi_cluster_sizes ORDER BY 1, 2",
    )
    assert sizes == [
        (
            "s0",
            5,
            "old kind",
            "from an older segmentation",
            1,
            0.5,
            0.1,
            Decimal("0.0000"),
            10,
            1.0,
        ),
        ("s0", 7, None, None, 1, 0.5, 0.3, Decimal("0.0000"), None, None),
        (
            "s1",
            0,
            "frequent viewers",
            "many views, rare buyers",
            3,
            0.6,
            pytest.approx(0.4),
            Decimal("3.3333"),
            50,
            0.5,
        ),
        (
            "s1",
            1,
            "big spenders",
            "few visits, large baskets",
            2,
            0.4,
            pytest.approx(0.6),
            Decimal("50.0000"),
            30,
            0.3,
        ),
        ("s1", 2, "lapsed", "quiet for weeks", 0, 0.0, None, None, 20, 0.2),
    ]
    segments = query(
        dsn,
        "SELECT cluster_version, cluster_id, cluster_name, segment, profiles, share_of_cluster, "
        "share_of_segment, lift FROM bi_cluster_segments ORDER BY 1, 2, 4",
    )
    approx = pytest.approx
    assert segments == [
        ("s0", 5, "old kind", "new", 1, 1.0, 0.5, 1.0),
        ("s0", 7, None, "new", 1, 1.0, 0.5, 1.0),
        (
            "s1",
            0,
            "frequent viewers",
            "active_browser",
            2,
            approx(2 / 3),
            approx(2 / 3),
            approx(10 / 9),
        ),
        ("s1", 0, "frequent viewers", "cart_abandoner", 1, approx(1 / 3), 1.0, approx(5 / 3)),
        ("s1", 1, "big spenders", "active_browser", 1, 0.5, approx(1 / 3), approx(5 / 6)),
        ("s1", 1, "big spenders", "high_value", 1, 0.5, 1.0, 2.5),
    ]
    # Every live profile with a cluster is counted once in each view.
    assert query(dsn, "SELECT sum(profiles) FROM bi_cluster_sizes") == [(7,)]
    assert query(dsn, "SELECT sum(profiles) FROM bi_cluster_segments") == [(7,)]


def test_segment_clusters_for_bi(dsn: str) -> None:
    rows = query(
        dsn,
        "SELECT cluster_version, cluster_id, name, description, size, share, centroid, "
        "registered_at IS NOT NULL FROM bi_segment_clusters ORDER BY cluster_id",
    )
    assert rows == [
        ("s1", i, name, description, size, share, {"views_30d": size}, True)
        for i, (name, description, size, share) in CLUSTERS.items()
    ]
    assert [
        c
        for (c,) in query(
            dsn,
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
            "ORDER BY ordinal_position",
            ("bi_segment_clusters",),
        )
    ] == [
        c
        for (c,) in query(
            dsn,
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
            "ORDER BY ordinal_position",
            ("segment_clusters",),
        )
    ]


def test_profile_views_keep_their_columns_and_add_clusters_last(dsn: str) -> None:
    def columns(view: str) -> list[str]:
        rows = query(
            dsn,
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
            "ORDER BY ordinal_position",
            (view,),
        )
        return [str(c) for (c,) in rows]

    assert columns("bi_user_profiles") == [*PROFILE_VIEW_0005, "cluster_id", "cluster_version"]
    assert columns("bi_user_profile_history") == [
        *HISTORY_VIEW_0004,
        "cluster_id",
        "cluster_version",
        "previous_cluster_id",
        "previous_cluster_version",
    ]


def test_bi_reader_reads_every_cluster_view_and_no_user_id(dsn: str) -> None:
    write(dsn, "alice", 1, cluster_id=0, cluster_version="s1")
    write(dsn, "alice", 2, cluster_id=1, cluster_version="s1")
    views = (
        "bi_user_profiles",
        "bi_user_profile_history",
        "bi_segment_clusters",
        "bi_cluster_sizes",
        "bi_cluster_flows",
        "bi_cluster_segments",
    )
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SET ROLE bi_reader")
            for view in views:
                cur.execute(f"SELECT * FROM {view}")
                rows = cur.fetchall()
                assert rows, view
                assert "user_id" not in [c.name for c in cur.description], view
                assert "'alice'" not in repr(rows), view
            for table in ("user_profiles", "user_profile_history", "segment_clusters"):
                with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                    cur.execute(f"SELECT count(*) FROM {table}")
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute("DELETE FROM segment_clusters")
    finally:
        conn.close()


def test_flows_read_the_moves_index_alone(dsn: str) -> None:
    """The partial index over moves serves the flows view by itself (it covers the columns the
    view reads), also filtered by segmentation and day: its predicate must survive the planner's
    rewriting of the view's clauses."""
    write(dsn, "alice", 1, cluster_id=0, cluster_version="s1")
    write(dsn, "alice", 2, cluster_id=1, cluster_version="s1")
    query(dsn, "VACUUM ANALYZE user_profile_history")  # marks the pages all-visible
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            # a tiny table: ask whether the index can serve, not whether it is cheapest here
            cur.execute("SET enable_seqscan = off")
            cur.execute("SET enable_bitmapscan = off")
            for where in ("", "WHERE cluster_version = 's1' AND day >= '2025-01-01'"):
                cur.execute(f"EXPLAIN SELECT * FROM bi_cluster_flows {where}")
                plan = "\n".join(r for (r,) in cur.fetchall())
                assert "Index Only Scan using user_profile_history_cluster_moves_idx" in plan, plan
            cur.execute("SELECT from_cluster_id, to_cluster_id, moves FROM bi_cluster_flows")
            assert cur.fetchall() == [(0, 1, 1)]
    finally:
        conn.close()


def test_every_example_query_of_the_bi_guide_runs_as_bi_reader(dsn: str) -> None:
    """docs/bi.md's queries run as written, and those about its example segmentation find rows."""
    for cluster_id, (name, description, size, share) in CLUSTERS.items():
        register(dsn, "taobao-s1", cluster_id, name, description, size, share)
    now_ms = int(time.time() * 1000)  # the guide asks for the last 30 days
    for version, cluster_id in ((1, 0), (2, 1)):
        write(
            dsn,
            "a",
            version,
            cluster_id=cluster_id,
            cluster_version="taobao-s1",
            segment="loyal_buyer",
            as_of_ms=now_ms + version,
        )
    write(dsn, "b", 1, cluster_id=2, cluster_version="taobao-s1", segment="loyal_buyer")
    guide = (PROJECT_ROOT / "docs" / "bi.md").read_text()
    blocks = re.findall(r"```sql\n(.*?)```", guide, flags=re.DOTALL)
    statements = [s.strip() for block in blocks for s in block.split(";\n") if s.strip()]
    assert len(statements) >= 14
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SET ROLE bi_reader")
            for statement in statements:
                cur.execute(statement)
                if "'taobao-s1'" in statement:
                    assert cur.fetchall(), statement
    finally:
        conn.close()
