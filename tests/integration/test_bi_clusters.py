"""Learned shopper segments for BI (migration 0008), on a real (embedded) PostgreSQL: profile rows
written with the job's upsert, history written by the database's own trigger, and what every
cluster view shows for them, as `bi_reader` may read it."""

from __future__ import annotations

import json

import pytest

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
