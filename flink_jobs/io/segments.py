"""The segmentations jobs have served, in PostgreSQL's `segment_clusters` (migration 0007): one row
per cluster with what BI needs to read a `cluster_id` (name, description, size and share of the
training snapshot, the members' mean raw features), keyed by the segmentation's version.

Where a job is started (`profilestream run`, the demo, the `flink run` entry point), the client
registers the segmentation the job assigns (`register_segmentation`) before the job writes a row
naming it. Registering is idempotent: the same version with the same content changes nothing
(the first `registered_at` stays). A version is never registered with other content: that is one
ModelError, so rows of two different segmentations never share a `cluster_version`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.errors

from flink_jobs.io import db
from udfs.clusters import SEGMENTATION_FILE, Segmentation
from udfs.errors import DatabaseError, ModelError


@dataclass(frozen=True)
class ClusterRow:
    """One row of segment_clusters (without `registered_at`)."""

    cluster_version: str
    cluster_id: int
    name: str
    description: str
    size: int
    share: float
    centroid: dict[str, float]

    def differences(self, other: ClusterRow) -> list[str]:
        out = []
        for name in ("name", "description", "size", "share", "centroid"):
            if getattr(self, name) != getattr(other, name):
                out.append(name)
        return out


def cluster_rows(segmentation: Segmentation) -> list[ClusterRow]:
    """The segment_clusters rows of a segmentation loaded from its `segmentation.json` (its
    `clusters` entries: id, name, description, size, share, centroid)."""
    entries = segmentation.metadata.get("clusters")
    where = f"{segmentation.path / SEGMENTATION_FILE}" if segmentation.path else "segmentation"
    if not isinstance(entries, list) or len(entries) != segmentation.k:
        raise ModelError(f"{where}: needs a `clusters` entry per centroid ({segmentation.k})")
    rows = []
    for info, entry in zip(segmentation.clusters, entries, strict=True):
        try:
            size = entry["size"]
            share = float(entry["share"])
            centroid = {str(k): float(v) for k, v in dict(entry["centroid"]).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(
                f"{where}: cluster {info.id} needs size, share and centroid ({exc!r})"
            ) from None
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ModelError(f"{where}: cluster {info.id} has size {size!r}, not a count")
        if not all(math.isfinite(v) for v in (share, *centroid.values())):
            raise ModelError(f"{where}: cluster {info.id} has a share or centroid not finite")
        rows.append(
            ClusterRow(
                segmentation.version, info.id, info.name, info.description, size, share, centroid
            )
        )
    return rows


def registered(conn: Any, version: str) -> list[ClusterRow]:
    """The rows of `version` in segment_clusters, by cluster_id."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT cluster_version, cluster_id, name, description, size, share, centroid"
            " FROM segment_clusters WHERE cluster_version = %s ORDER BY cluster_id",
            (version,),
        )
        return [
            ClusterRow(v, i, n, d, s, sh, {str(k): float(x) for k, x in c.items()})
            for v, i, n, d, s, sh, c in cur.fetchall()
        ]


def register_segmentation(dsn: str, segmentation: Segmentation) -> bool:
    """Register `segmentation` in segment_clusters: True when it was new, False when the same
    content was there already. ModelError when its version is registered with other content
    (nothing is written then); DatabaseError when the table is missing (an older schema)."""
    ours = cluster_rows(segmentation)
    conn = db.connect(dsn)
    try:
        conn.autocommit = False
        inserted = 0
        theirs = registered(conn, segmentation.version)
        if not theirs:
            # ON CONFLICT: another job may be registering the same version right now
            with conn.cursor() as cur:
                for row in ours:
                    cur.execute(
                        "INSERT INTO segment_clusters (cluster_version, cluster_id, name,"
                        " description, size, share, centroid) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                        " ON CONFLICT (cluster_version, cluster_id) DO NOTHING",
                        (
                            row.cluster_version,
                            row.cluster_id,
                            row.name,
                            row.description,
                            row.size,
                            row.share,
                            json.dumps(row.centroid),
                        ),
                    )
                    inserted += cur.rowcount
            theirs = registered(conn, segmentation.version)
        if theirs != ours:
            conn.rollback()
            raise ModelError(
                f"segmentation {segmentation.version} is already registered in segment_clusters "
                f"with other content ({describe(theirs, ours)})",
                fix="train it under a new version (`profilestream segments train --version V`), "
                f"or point --segments-dir at the segmentation registered as "
                f"{segmentation.version}",
            )
        conn.commit()
        return inserted == len(ours)
    except psycopg2.errors.UndefinedTable:
        conn.rollback()
        raise DatabaseError(
            "the database has no segment_clusters table (schema older than migration 0007): "
            "run `profilestream db migrate`"
        ) from None
    finally:
        conn.close()


def describe(theirs: list[ClusterRow], ours: list[ClusterRow]) -> str:
    """What differs between the registered rows and ours, briefly."""
    if [r.cluster_id for r in theirs] != [r.cluster_id for r in ours]:
        return f"{len(theirs)} clusters registered, this one has {len(ours)}"
    for a, b in zip(theirs, ours, strict=True):
        diff = a.differences(b)
        if diff:
            return f"cluster {a.cluster_id}: {', '.join(diff)} differ"
    return "the rows differ"
