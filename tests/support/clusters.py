"""Profile feature vectors for the cluster-assignment tests (tests/unit/test_cluster_assignment.py
and the child interpreter it runs on the Python sources)."""

from __future__ import annotations

import math
import random

from udfs.features import FEATURE_NAMES


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
