"""Learned shopper segments: a K-means segmentation of profile features, applied per update.

A segmentation directory (`models/segments/<version>/`, written by `profilestream segments
train`, models/segments.py) holds `segmentation.json`:

    {"name": "shopper_segments", "version": "taobao-s1",
     "features": [{"name": "views_30d", "source": "cnt_view_30d", "transform": "log1p",
                   "fill": 0.0, "lo": 0.0, "hi": 5.3, "mean": 1.2, "scale": 0.9}, ...],
     "centroids": [[...], ...],            # K rows in the scaled space, one value per feature
     "clusters": [{"id": 0, "name": "...", "description": "...", ...}, ...],
     ...}                                  # K selection, evaluation, provenance, versions

A profile's feature vector (`udfs.features.FEATURE_NAMES` order, as the scorer takes it) becomes
the clustering vector feature by feature: take `source`, replace NaN or an infinity by `fill`,
apply `transform`, clip to [lo, hi], subtract `mean`, divide by `scale`. The cluster is the
nearest centroid in squared Euclidean distance, the lowest id on a tie: what scikit-learn's
`KMeans.predict` returns for the same vectors (tests/unit/test_segments.py checks it on every
training vector of the committed segmentations, tests/unit/test_cluster_assignment.py on random
ones). The trainer builds its vectors with this very `transform`, so training and the
stream cannot disagree on them.

Pure Python without NumPy: it runs per update inside Flink's embedded interpreter, compiled with
mypyc like the rest of the hot path (udfs/native.py: annotations are enforced at run time, so
pass Python ints and floats). tests/unit/test_cluster_assignment.py checks `assign` against
`KMeans.predict` on random vectors and the compiled build against these sources.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, final

from udfs.errors import ModelError
from udfs.features import FEATURE_NAMES

SEGMENTATION_FILE: Final = "segmentation.json"
SEGMENTATION_NAME: Final = "shopper_segments"
# identity; log1p for counts and amounts (x <= -1 is clipped to 0 first); sin24/cos24 place an
# hour of the day on a circle (23 h is next to 0 h)
TRANSFORMS: Final[tuple[str, ...]] = ("identity", "log1p", "sin24", "cos24")
_TWO_PI_OVER_24: Final = 2.0 * math.pi / 24.0
# `assign` keeps the distances to up to this many centroids in local doubles (no Python objects
# per feature and centroid once compiled); a segmentation with more goes the general way.
UNROLLED_K: Final = 10
SHORT_K: Final = 5


# log1p of the counts 0..1023, computed by math.log1p itself (so exactly its values): a lookup
# where the count is a whole number, as most clustering inputs are (mypyc has no log1p of its own
# and calls it through Python, ~10x the cost of a lookup).
_LOG1P_TABLE: Final[tuple[float, ...]] = tuple(math.log1p(i) for i in range(1024))


def _log1p(value: float) -> float:
    """math.log1p(value) for value > 0, else 0.0 (the `log1p` transform)."""
    if not value > 0.0:  # NaN too
        return 0.0
    if value < 1024.0:
        whole = int(value)
        if whole == value:
            return _LOG1P_TABLE[whole]
    return math.log1p(value)


def _as_tuple(values: Sequence[float]) -> tuple[Any, ...]:
    """`values` as a tuple: the engine's vectors are one, and compiled code reads a tuple's items
    directly (any other sequence through Python's generic indexing)."""
    return values if isinstance(values, tuple) else tuple(values)


def transform_value(transform: str, value: float, fill: float) -> float:
    """One raw feature value through its transform (before clipping and scaling)."""
    if not math.isfinite(value):
        value = fill
    if transform == "log1p":
        return _log1p(value)
    if transform == "sin24":
        return math.sin(value * _TWO_PI_OVER_24)
    if transform == "cos24":
        return math.cos(value * _TWO_PI_OVER_24)
    return value


@dataclass(frozen=True, slots=True)
class ClusterFeature:
    name: str  # the clustering feature's own name (two may share a source: sin24 and cos24)
    source: str  # the profile feature it is computed from (one of FEATURE_NAMES)
    transform: str
    fill: float  # the raw value used when the source is NaN (missing) or infinite
    lo: float  # clip bounds after the transform (fitted on the training snapshots)
    hi: float
    mean: float  # standard scaling fitted on the clipped training values
    scale: float

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "transform": self.transform,
            "fill": self.fill,
            "lo": self.lo,
            "hi": self.hi,
            "mean": self.mean,
            "scale": self.scale,
        }


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    id: int
    name: str
    description: str


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where} is {value!r}, not a finite number")
    return float(value)


@final
class _Step:
    """One clustering feature as the per-update loop reads it, with its value in each of up to
    UNROLLED_K centroids (`c0`..`c9`, zero padded). Compiled, these fields are C doubles and
    ints: the loop reads them without boxed floats or tuple indexing."""

    def __init__(self, source: int, transform: int, f: ClusterFeature, column: list[float]) -> None:
        self.source = source
        self.transform = transform  # TRANSFORMS order
        self.fill = f.fill
        self.lo = f.lo
        self.hi = f.hi
        self.mean = f.mean
        self.scale = f.scale
        c = column + [0.0] * (UNROLLED_K - len(column))
        self.c0: float = c[0]
        self.c1: float = c[1]
        self.c2: float = c[2]
        self.c3: float = c[3]
        self.c4: float = c[4]
        self.c5: float = c[5]
        self.c6: float = c[6]
        self.c7: float = c[7]
        self.c8: float = c[8]
        self.c9: float = c[9]

    def scaled(self, profile_vector: tuple[Any, ...]) -> float:
        """This feature of a profile's feature vector: `transform_value`, clipped and scaled
        (the one place `vector` and `assign` compute it)."""
        v: float = float(profile_vector[self.source])
        if math.isnan(v) or math.isinf(v):  # not math.isfinite: mypyc calls that via Python
            v = self.fill
        t = self.transform
        if t == 1:
            v = _log1p(v)
        elif t == 2:
            v = math.sin(v * _TWO_PI_OVER_24)
        elif t == 3:
            v = math.cos(v * _TWO_PI_OVER_24)
        if v < self.lo:
            v = self.lo
        elif v > self.hi:
            v = self.hi
        return (v - self.mean) / self.scale


class Segmentation:
    """A loaded segmentation: `vector` (the scaled clustering vector) and `assign` (its cluster)."""

    def __init__(
        self,
        version: str,
        features: Sequence[ClusterFeature],
        centroids: Sequence[Sequence[float]],
        clusters: Sequence[ClusterInfo],
        path: Path | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if not features:
            raise ValueError("a segmentation needs at least one feature")
        if not centroids:
            raise ValueError("a segmentation needs at least one centroid")
        for f in features:
            if f.source not in FEATURE_NAMES:
                raise ValueError(
                    f"feature {f.name!r} is computed from {f.source!r}, which this code does "
                    "not compute (udfs.features.FEATURE_NAMES)"
                )
            if f.transform not in TRANSFORMS:
                raise ValueError(f"feature {f.name!r}: unknown transform {f.transform!r}")
            if not f.scale > 0.0 or not f.lo <= f.hi:
                raise ValueError(f"feature {f.name!r}: needs scale > 0 and lo <= hi")
        for i, c in enumerate(centroids):
            if len(c) != len(features):
                raise ValueError(f"centroid {i} has {len(c)} values for {len(features)} features")
        if [c.id for c in clusters] != list(range(len(centroids))):
            raise ValueError("clusters must be listed with ids 0..K-1, one per centroid")
        self.version = version
        self.features = tuple(features)
        self.centroids = tuple(tuple(float(v) for v in c) for c in centroids)
        self.clusters = tuple(clusters)
        self.path = path
        self.metadata = metadata or {}
        self._n = len(self.features)
        k = len(self.centroids)
        # K <= 5 (the default segmentation) adds 5 squares per feature, K <= 10 ten; more
        # centroids take the general `vector`/`nearest` path
        self._stride = SHORT_K if k <= SHORT_K else UNROLLED_K if k <= UNROLLED_K else 0
        self._steps = [
            _Step(
                FEATURE_NAMES.index(f.source),
                TRANSFORMS.index(f.transform),
                f,
                [c[i] for c in self.centroids] if k <= UNROLLED_K else [],
            )
            for i, f in enumerate(self.features)
        ]
        self._flat = tuple(v for c in self.centroids for v in c)  # centroid j at j * _n

    @property
    def k(self) -> int:
        return len(self.centroids)

    def vector(self, profile_vector: Sequence[float]) -> list[float]:
        """The scaled clustering vector of a profile's feature vector (FEATURE_NAMES order)."""
        values = _as_tuple(profile_vector)
        return [step.scaled(values) for step in self._steps]

    def nearest(self, x: Sequence[float]) -> int:
        """The id of the centroid nearest to a scaled vector (lowest id on a tie)."""
        if len(x) != self._n:
            raise ValueError(f"a vector of {len(x)} values for {self._n} features")
        return self._nearest([float(a) for a in x])

    def _nearest(self, x: list[float]) -> int:
        n = self._n
        flat = self._flat
        best = 0
        best_d = math.inf
        base = 0
        for j in range(len(self.centroids)):
            d = 0.0
            for i in range(n):
                diff = x[i] - flat[base + i]
                d += diff * diff
                if d >= best_d:
                    break  # squares only add: this centroid can be neither nearer nor first
            if d < best_d:
                best_d = d
                best = j
            base += n
        return best

    def assign(self, profile_vector: Sequence[float]) -> int:
        """The cluster of a profile's feature vector: `nearest(vector(profile_vector))`."""
        stride = self._stride
        if not stride:
            return self._nearest(self.vector(profile_vector))
        # The same sums as `_nearest` (each centroid's squares added in feature order), kept in
        # ten doubles and computed feature by feature, so no vector is built.
        d0 = d1 = d2 = d3 = d4 = d5 = d6 = d7 = d8 = d9 = 0.0
        values = _as_tuple(profile_vector)
        if stride == SHORT_K:
            for step in self._steps:
                x = step.scaled(values)
                t = x - step.c0
                d0 += t * t
                t = x - step.c1
                d1 += t * t
                t = x - step.c2
                d2 += t * t
                t = x - step.c3
                d3 += t * t
                t = x - step.c4
                d4 += t * t
        else:
            for step in self._steps:
                x = step.scaled(values)
                t = x - step.c0
                d0 += t * t
                t = x - step.c1
                d1 += t * t
                t = x - step.c2
                d2 += t * t
                t = x - step.c3
                d3 += t * t
                t = x - step.c4
                d4 += t * t
                t = x - step.c5
                d5 += t * t
                t = x - step.c6
                d6 += t * t
                t = x - step.c7
                d7 += t * t
                t = x - step.c8
                d8 += t * t
                t = x - step.c9
                d9 += t * t
        # as `_nearest` picks: the lowest id on a tie (only a strictly smaller distance replaces
        # the best), never a NaN distance
        k = len(self.centroids)
        best = 0
        best_d = min(math.inf, d0)
        if k > 1 and d1 < best_d:
            best, best_d = 1, d1
        if k > 2 and d2 < best_d:
            best, best_d = 2, d2
        if k > 3 and d3 < best_d:
            best, best_d = 3, d3
        if k > 4 and d4 < best_d:
            best, best_d = 4, d4
        if k > 5 and d5 < best_d:
            best, best_d = 5, d5
        if k > 6 and d6 < best_d:
            best, best_d = 6, d6
        if k > 7 and d7 < best_d:
            best, best_d = 7, d7
        if k > 8 and d8 < best_d:
            best, best_d = 8, d8
        if k > 9 and d9 < best_d:
            best = 9
        return best

    @classmethod
    def from_json(cls, meta: dict[str, Any], path: Path | None = None) -> Segmentation:
        features = [
            ClusterFeature(
                name=str(f["name"]),
                source=str(f["source"]),
                transform=str(f["transform"]),
                fill=_number(f"{f['name']}.fill", f["fill"]),
                lo=_number(f"{f['name']}.lo", f["lo"]),
                hi=_number(f"{f['name']}.hi", f["hi"]),
                mean=_number(f"{f['name']}.mean", f["mean"]),
                scale=_number(f"{f['name']}.scale", f["scale"]),
            )
            for f in meta["features"]
        ]
        centroids = [
            [_number(f"centroids[{i}][{j}]", v) for j, v in enumerate(row)]
            for i, row in enumerate(meta["centroids"])
        ]
        clusters = [
            ClusterInfo(int(c["id"]), str(c["name"]), str(c.get("description", "")))
            for c in meta["clusters"]
        ]
        return cls(str(meta["version"]), features, centroids, clusters, path, meta)


def load_segmentation(directory: Path) -> Segmentation:
    """Read and check `directory/segmentation.json`; ModelError names what is wrong."""
    path = Path(directory) / SEGMENTATION_FILE
    if not path.is_file():
        raise ModelError(
            f"no segmentation at {directory} (needs {SEGMENTATION_FILE}): set --segments-dir / "
            "PROFILESTREAM_SEGMENTS_DIR to a directory written by `profilestream segments train`, "
            "such as models/segments/taobao-s1"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        return Segmentation.from_json(meta, Path(directory))
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path} is not a valid segmentation: {exc}") from None
