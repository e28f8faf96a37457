"""The job's segmentation in PostgreSQL's segment_clusters (flink_jobs.io.segments), on a real
(embedded) PostgreSQL: registered once per version, idempotently, and never with other content."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from flink_jobs.config import DEFAULT_SEGMENTS_DIR
from flink_jobs.io import db
from flink_jobs.io.segments import cluster_rows, register_segmentation, registered
from flink_jobs.ops.services import EmbeddedPostgres
from tests.support.db import query
from udfs.clusters import SEGMENTATION_FILE, Segmentation
from udfs.errors import DatabaseError, ModelError

pytestmark = pytest.mark.integration


def segmentation(change: Any = None, version: str | None = None) -> Segmentation:
    meta = json.loads((DEFAULT_SEGMENTS_DIR / SEGMENTATION_FILE).read_text())
    meta = copy.deepcopy(meta)
    if change is not None:
        change(meta)
    if version is not None:
        meta["version"] = version
    return Segmentation.from_json(meta, DEFAULT_SEGMENTS_DIR)


def test_registering_is_idempotent_per_version(pg_dsn: str) -> None:
    seg = segmentation()
    assert register_segmentation(pg_dsn, seg) is True
    with_db = registered_rows(pg_dsn)
    assert len(with_db) == seg.k
    assert registered_rows_of(pg_dsn, seg.version) == cluster_rows(seg)
    assert register_segmentation(pg_dsn, seg) is False  # the same content: nothing changes
    assert registered_rows(pg_dsn) == with_db  # registered_at included
    # Another version goes beside it.
    assert register_segmentation(pg_dsn, segmentation(version="next-s2")) is True
    assert {v for v, *_ in registered_rows(pg_dsn)} == {seg.version, "next-s2"}


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda m: m["clusters"][1].update(name="bargain hunters"), "cluster 1: name differ"),
        (lambda m: m["clusters"][0]["centroid"].update(views_30d=99.5), "cluster 0: centroid"),
        (lambda m: (m["clusters"].pop(), m["centroids"].pop()), "clusters registered, this one"),
    ],
)
def test_a_version_registered_with_other_content_is_refused(
    pg_dsn: str, change: Any, says: str
) -> None:
    seg = segmentation()
    register_segmentation(pg_dsn, seg)
    before = registered_rows(pg_dsn)
    with pytest.raises(ModelError) as caught:
        register_segmentation(pg_dsn, segmentation(change))
    text = str(caught.value)
    assert "\n" not in text and says in text, text
    assert f"segmentation {seg.version} is already registered" in text
    assert "--version" in text and "--segments-dir" in text
    assert registered_rows(pg_dsn) == before  # nothing written


def test_a_database_without_the_table_says_migrate(pg_server: EmbeddedPostgres) -> None:
    with pytest.raises(DatabaseError, match="db migrate"):
        register_segmentation(pg_server.dsn("postgres"), segmentation())


def registered_rows(dsn: str) -> list[tuple[object, ...]]:
    return query(dsn, "SELECT * FROM segment_clusters ORDER BY cluster_version, cluster_id")


def registered_rows_of(dsn: str, version: str) -> list[Any]:
    conn = db.connect(dsn)
    try:
        return registered(conn, version)
    finally:
        conn.close()
