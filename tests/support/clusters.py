"""Segmentations and profile feature vectors for the cluster tests: random vectors for
tests/unit/test_cluster_assignment.py (and the child interpreter it runs on the Python sources),
and a segmentation directory written from a Segmentation for jobs run with --segments-dir."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from udfs.clusters import SEGMENTATION_FILE, SEGMENTATION_NAME, Segmentation
from udfs.features import FEATURE_NAMES


def write_segmentation(directory: Path, segmentation: Segmentation, version: str) -> Path:
    """`segmentation` as a segmentation directory of version `version` (what `segments train`
    writes, with made-up training sizes: the job registers them in segment_clusters)."""
    k = segmentation.k
    meta = {
        "name": SEGMENTATION_NAME,
        "version": version,
        "features": [f.to_json() for f in segmentation.features],
        "centroids": [list(c) for c in segmentation.centroids],
        "clusters": [
            {
                "id": c.id,
                "name": c.name,
                "description": c.description or f"test cluster {c.id}",
                "size": 10 * (c.id + 1),
                "share": (c.id + 1) / (k * (k + 1) / 2),
                "centroid": {f.name: float(c.id) for f in segmentation.features},
            }
            for c in segmentation.clusters
        ],
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SEGMENTATION_FILE).write_text(json.dumps(meta, indent=1))
    return directory


def random_profile_vectors(rng: random.Random, n: int) -> list[list[float]]:
    """Raw profile feature vectors (FEATURE_NAMES order) shaped like real ones: counts, amounts,
    ratios and hours, with missing (NaN) and infinite values mixed in."""
    out = []
    for _ in range(n):
        v: list[float] = []
        for name in FEATURE_NAMES:
            r = rng.random()
            if r < 0.04:
                v.append(math.nan)
            elif r < 0.05:
                v.append(rng.choice((math.inf, -math.inf)))
            elif name.startswith("cnt_"):
                v.append(float(int(rng.expovariate(0.2))))
            elif name == "hab_peak_hour":
                v.append(float(rng.randrange(24)))
            elif name.startswith(("fun_", "pref_")):
                v.append(rng.random())
            else:
                v.append(rng.expovariate(0.01))
        out.append(v)
    return out
