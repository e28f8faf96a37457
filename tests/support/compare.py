"""Comparing a rebuilt artefact with the committed one: JSON values equal, floats to 1e-9.

Statistics that go through BLAS (matrix products in scikit-learn's calibration, K-means and
silhouette) can differ in the last bits between CPU types (seen: Intel vs AMD EPYC), so a
rebuild on another machine is compared to a relative 1e-9 and everything else exactly."""

from __future__ import annotations

import math
from typing import Any


def assert_same_json(built: Any, committed: Any, where: str) -> None:
    """Equal JSON values, floats within a relative 1e-9."""
    if isinstance(committed, float) and isinstance(built, float):
        assert math.isclose(built, committed, rel_tol=1e-9, abs_tol=1e-12), (
            where,
            built,
            committed,
        )
    elif isinstance(committed, dict) and isinstance(built, dict):
        assert built.keys() == committed.keys(), where
        for key in committed:
            assert_same_json(built[key], committed[key], f"{where}.{key}")
    elif isinstance(committed, list) and isinstance(built, list):
        assert len(built) == len(committed), where
        for i, (b, c) in enumerate(zip(built, committed, strict=True)):
            assert_same_json(b, c, f"{where}[{i}]")
    else:
        assert built == committed, (where, built, committed)
