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
`KMeans.predict` returns for the same vectors (tests/unit/test_clusters.py checks it on the
training vectors). The trainer builds its vectors with this very `transform`, so training and the
stream cannot disagree on them.

Pure Python without NumPy: it runs per update inside Flink's embedded interpreter.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from udfs.errors import ModelError
from udfs.features import FEATURE_NAMES

SEGMENTATION_FILE: Final = "segmentation.json"
SEGMENTATION_NAME: Final = "shopper_segments"
# identity; log1p for counts and amounts (x <= -1 is clipped to 0 first); sin24/cos24 place an
# hour of the day on a circle (23 h is next to 0 h)
TRANSFORMS: Final[tuple[str, ...]] = ("identity", "log1p", "sin24", "cos24")
_TWO_PI_OVER_24: Final = 2.0 * math.pi / 24.0


def transform_value(transform: str, value: float, fill: float) -> float:
    """One raw feature value through its transform (before clipping and scaling)."""
    if not math.isfinite(value):
        value = fill
    if transform == "log1p":
        return math.log1p(value) if value > 0.0 else 0.0
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
        self._index = tuple(FEATURE_NAMES.index(f.source) for f in self.features)
        self._plan = tuple(
            (FEATURE_NAMES.index(f.source), f.transform, f.fill, f.lo, f.hi, f.mean, f.scale)
            for f in self.features
        )

    @property
    def k(self) -> int:
        return len(self.centroids)

    def vector(self, profile_vector: Sequence[float]) -> list[float]:
        """The scaled clustering vector of a profile's feature vector (FEATURE_NAMES order)."""
        out: list[float] = []
        for index, transform, fill, lo, hi, mean, scale in self._plan:
            v = transform_value(transform, float(profile_vector[index]), fill)
            if v < lo:
                v = lo
            elif v > hi:
                v = hi
            out.append((v - mean) / scale)
        return out

    def nearest(self, x: Sequence[float]) -> int:
        """The id of the centroid nearest to a scaled vector (lowest id on a tie)."""
        best = 0
        best_d = math.inf
        for j, c in enumerate(self.centroids):
            d = 0.0
            for a, b in zip(x, c, strict=True):
                diff = a - b
                d += diff * diff
            if d < best_d:
                best_d = d
                best = j
        return best

    def assign(self, profile_vector: Sequence[float]) -> int:
        """The cluster of a profile's feature vector."""
        return self.nearest(self.vector(profile_vector))

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
