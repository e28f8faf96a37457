"""The learned segment of every profile row (udfs.clusters, udfs.engine): the assignment is
scikit-learn's `KMeans.predict` on the same vectors, the compiled build assigns exactly what the
Python sources do, every row the engine emits (event, inactivity timer, expiry) carries the
cluster of its own features, and a segmentation that cannot be used is one clear ModelError
(JVM-free)."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.cluster import KMeans

from flink_jobs.config import DEFAULT_SEGMENTS_DIR
from tests.support.clusters import random_profile_vectors
from tests.support.golden import SEGMENTATION
from tests.support.models import row_vector
from udfs import _impl, native
from udfs import events as ev
from udfs.clusters import (
    SEGMENTATION_FILE,
    SHORT_K,
    UNROLLED_K,
    ClusterFeature,
    ClusterInfo,
    Segmentation,
    load_segmentation,
    transform_value,
)
from udfs.engine import ProfileEngine, StepOutcome
from udfs.errors import ModelError
from udfs.events import make_message, validate_message
from udfs.features import FEATURE_NAMES
from udfs.host import MemoryHost
from udfs.params import DAY_MS, ProfileParams
from udfs.rows import PROFILE_COLUMN_NAMES

ROOT = Path(__file__).resolve().parents[2]
T = 1_735_689_600_000
COL = {name: i for i, name in enumerate(PROFILE_COLUMN_NAMES)}


def fitted(vectors: list[list[float]], k: int) -> tuple[Segmentation, KMeans]:
    """A segmentation fitted the way the trainer fits one (transform, clip, scale, K-means),
    with the K-means model it was made from."""
    declared = [
        ("views", "cnt_view_30d", "log1p", 0.0),
        ("carts", "cnt_cart_7d", "log1p", 0.0),
        ("purchases", "cnt_purchase_30d", "log1p", 0.0),
        ("spend", "rfm_spend_30d", "log1p", 0.0),
        ("recency", "rfm_hours_since_last_event", "log1p", 1e4),
        ("abandon", "fun_cart_abandonment_rate", "identity", 0.0),
        ("entropy", "pref_category_entropy", "identity", 0.5),
        ("peak_sin", "hab_peak_hour", "sin24", 12.0),
        ("peak_cos", "hab_peak_hour", "cos24", 12.0),
    ]
    features = []
    for name, source, transform, fill in declared:
        col = np.array(
            [transform_value(transform, v[FEATURE_NAMES.index(source)], fill) for v in vectors]
        )
        lo, hi = (float(x) for x in np.quantile(col, [0.01, 0.99]))
        clipped = np.clip(col, lo, hi)
        features.append(
            ClusterFeature(
                name, source, transform, fill, lo, hi, float(clipped.mean()), float(clipped.std())
            )
        )
    scaling = Segmentation("fit", features, [[0.0] * len(features)], [ClusterInfo(0, "x", "")])
    x = np.array([scaling.vector(v) for v in vectors])
    km = KMeans(n_clusters=k, n_init=4, random_state=3).fit(x)
    clusters = [ClusterInfo(i, f"c{i}", "") for i in range(k)]
    return Segmentation("fit", features, km.cluster_centers_.tolist(), clusters), km


@pytest.mark.parametrize("k", [1, 3, SHORT_K, SHORT_K + 1, 7, UNROLLED_K, UNROLLED_K + 3])
def test_assign_is_kmeans_predict_on_many_random_vectors(k: int) -> None:
    """Up to UNROLLED_K centroids `assign` keeps the distances in locals, beyond it goes through
    `vector` and `nearest`: both are KMeans.predict."""
    rng = random.Random(13 + k)
    segmentation, km = fitted(random_profile_vectors(rng, 3000), k=k)
    unseen = random_profile_vectors(rng, 8000)
    predicted = km.predict(np.array([segmentation.vector(v) for v in unseen]))
    assigned = [segmentation.assign(v) for v in unseen]
    assert assigned == predicted.tolist()
    assert assigned == [segmentation.nearest(segmentation.vector(v)) for v in unseen]
    assert len(set(assigned)) == k
    # the profile vector as the engine hands it over: a tuple, counts as ints
    ints = [tuple(int(x) if x.is_integer() else x for x in v) for v in unseen[:2000]]
    assert [segmentation.assign(v) for v in ints] == assigned[:2000]


def test_vector_transforms_fills_clips_and_scales() -> None:
    features = [
        ClusterFeature("a", "cnt_view_30d", "log1p", 0.0, 0.0, 3.0, 1.0, 2.0),
        ClusterFeature("b", "hab_peak_hour", "sin24", 6.0, -1.0, 1.0, 0.0, 1.0),
        ClusterFeature("c", "hab_peak_hour", "cos24", 6.0, -1.0, 1.0, 0.0, 1.0),
        ClusterFeature("d", "fun_view_to_cart", "identity", 0.25, 0.1, 0.5, 0.0, 0.5),
    ]
    seg = Segmentation(
        "t", features, [[0.0] * 4, [1.0] * 4], [ClusterInfo(0, "", ""), ClusterInfo(1, "", "")]
    )
    v = [0.0] * len(FEATURE_NAMES)
    i_view, i_hour, i_ratio = (
        FEATURE_NAMES.index(n) for n in ("cnt_view_30d", "hab_peak_hour", "fun_view_to_cart")
    )
    v[i_view], v[i_hour], v[i_ratio] = 4.0, 18.0, 0.9
    got = seg.vector(v)
    assert got[0] == (math.log1p(4.0) - 1.0) / 2.0
    assert got[1] == math.sin(18 * 2 * math.pi / 24) and got[2] == math.cos(18 * 2 * math.pi / 24)
    assert got[3] == 0.5 / 0.5  # clipped to hi
    v[i_view], v[i_hour], v[i_ratio] = 1e9, math.nan, -math.inf
    got = seg.vector(v)
    assert got[0] == (3.0 - 1.0) / 2.0  # clipped to hi
    assert got[1] == math.sin(6 * 2 * math.pi / 24)  # NaN: the fill, then the transform
    assert got[3] == 0.25 / 0.5  # an infinity: the fill
    v[i_view] = -3.0
    assert seg.vector(v)[0] == -0.5  # log1p of x <= 0 is 0
    # A tie goes to the lowest id, as KMeans.predict does.
    assert seg.nearest([0.5] * 4) == 0 and seg.nearest([0.51] * 4) == 1
    with pytest.raises(ValueError, match="3 values for 4 features"):
        seg.nearest([0.0] * 3)


def test_log1p_is_math_log1p_for_whole_and_other_values() -> None:
    values = [*range(1200), 0.5, 1e-9, 2.5, 1023.0, 1023.5, 1024.0, 1e12]
    for x in values:
        assert transform_value("log1p", float(x), 0.0) == math.log1p(x), x
    assert transform_value("log1p", -0.5, 0.0) == 0.0
    assert transform_value("log1p", math.nan, 3.0) == math.log1p(3.0)


PURE_DIGEST = """
import hashlib, json, random, sys
from pathlib import Path
from udfs import native
from udfs.clusters import load_segmentation
from tests.support.clusters import random_profile_vectors
from tests.support.golden import SEGMENTATION
from tests.support.clusters import random_profile_vectors
h = hashlib.sha256()
vectors = random_profile_vectors(random.Random(5), 5000)
for seg in (SEGMENTATION, load_segmentation(Path(sys.argv[1]))):
    for v in vectors:
        h.update(repr((seg.vector(v), seg.assign(v))).encode())
print(json.dumps({"mode": native.status()["mode"], "digest": h.hexdigest()}))
"""


def test_the_compiled_assignment_equals_the_python_sources() -> None:
    """The Python sources (a child interpreter forced to them) and this interpreter's build
    (compiled where a C compiler is: tests/unit/test_native.py insists) give the same vectors,
    bit for bit, and the same clusters, with the golden and the default segmentation."""

    def run(pure: bool) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != _impl.ENV_PURE}
        if pure:
            env[_impl.ENV_PURE] = "1"
        proc = subprocess.run(
            [sys.executable, "-c", PURE_DIGEST, str(DEFAULT_SEGMENTS_DIR)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        out: dict[str, str] = json.loads(proc.stdout.strip().splitlines()[-1])
        return out

    pure, built = run(True), run(False)
    assert pure["mode"] == "pure"
    if native.compiler_missing() is None and not os.environ.get(_impl.ENV_PURE):
        assert built["mode"] == "native", "udfs runs as pure Python here: run `make setup`"
    assert built["digest"] == pure["digest"], f"{built['mode']} differs from pure"


def test_the_default_segmentation_loads_and_assigns_every_cluster() -> None:
    seg = load_segmentation(DEFAULT_SEGMENTS_DIR)
    assert seg.version == DEFAULT_SEGMENTS_DIR.name and seg.k >= 2
    for c in seg.metadata["clusters"]:
        assert {"id", "name", "description", "size", "share", "centroid"} <= c.keys()
    centroids = seg.centroids
    assert [seg.nearest(c) for c in centroids] == list(range(seg.k))


# ---------------------------------------------------------------------------------------------
# The engine's rows
# ---------------------------------------------------------------------------------------------
def event(user: str, t: int, kind: int = ev.VIEW, n: int = 0) -> ev.Event:
    fields: dict[str, Any] = {"item_id": f"i{n % 3}", "category_id": f"c{n % 4}"}
    if kind == ev.PURCHASE:
        fields.update(price_micros=(n + 1) * 7_000_000, currency="USD")
    msg = make_message(
        event_id=f"{user}-{t}-{n}", user_id=user, event_type=kind, event_time_ms=t, **fields
    )
    return validate_message(msg, 2**62)


def engine(segmentation: Segmentation | None) -> ProfileEngine:
    return ProfileEngine(ProfileParams(), lambda v: 0.5, "m", str, segmentation=segmentation)


def check_cluster(row: tuple[Any, ...], seg: Segmentation) -> int:
    """The row's cluster is its segmentation's cluster of the row's own features."""
    cluster = row[COL["cluster_id"]]
    assert row[COL["cluster_version"]] == seg.version
    assert isinstance(cluster, int) and cluster == seg.assign(row_vector(row[COL["features"]]))
    return cluster


def test_every_row_carries_the_cluster_of_its_features_timers_and_expiry_too() -> None:
    host = MemoryHost(engine(SEGMENTATION))
    kinds = (ev.VIEW, ev.VIEW, ev.ADD_TO_CART, ev.VIEW, ev.PURCHASE, ev.VIEW, ev.ADD_TO_CART)
    clusters = []
    for n in range(60):
        step = host.on_event(event("u", T + n * 3_600_000, kinds[n % len(kinds)], n), "t", 0)
        assert step.row is not None
        clusters.append(check_cluster(step.row, SEGMENTATION))
    assert len(set(clusters)) >= 2, "the user never moved: the test proves little"
    timer_rows = {}
    for _, step in host.fire(T + 200 * DAY_MS):
        if step.row is not None:
            timer_rows[step.outcome] = step.row
            check_cluster(step.row, SEGMENTATION)
    assert set(timer_rows) == {StepOutcome.TRANSITION, StepOutcome.EXPIRED}
    assert timer_rows[StepOutcome.EXPIRED][COL["expired"]] is True


def test_without_a_segmentation_the_cluster_columns_are_null() -> None:
    host = MemoryHost(engine(None))
    step = host.on_event(event("u", T), "t", 0)
    assert step.row is not None
    assert (step.row[COL["cluster_id"]], step.row[COL["cluster_version"]]) == (None, None)
    ((_, timer),) = list(host.fire(T + 20 * DAY_MS))
    assert timer.row is not None and timer.row[COL["cluster_id"]] is None


def test_the_engine_uses_the_assign_it_is_given() -> None:
    calls: list[object] = []

    def assign(vector: Any) -> int:
        calls.append(vector)
        return 3

    e = ProfileEngine(
        ProfileParams(), lambda v: 0.5, "m", str, segmentation=SEGMENTATION, assign=assign
    )
    step = e.on_event(None, event("u", T), "t", 0)
    assert step.row is not None and step.row[COL["cluster_id"]] == 3 and len(calls) == 1


# ---------------------------------------------------------------------------------------------
# Segmentations that cannot be used
# ---------------------------------------------------------------------------------------------
def write(directory: Path, meta: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SEGMENTATION_FILE).write_text(json.dumps(meta))
    return directory


def default_meta() -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((DEFAULT_SEGMENTS_DIR / SEGMENTATION_FILE).read_text())
    return meta


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda m: m["features"][0].update(source="cnt_view_99d"),
            "which this code does not compute",
        ),
        (lambda m: m["features"][1].update(transform="sqrt"), "unknown transform 'sqrt'"),
        (lambda m: m["features"][0].update(scale=0), "needs scale > 0"),
        (lambda m: m["features"][0].update(lo="x"), "lo is 'x', not a finite number"),
        (lambda m: m["centroids"][1].pop(), "centroid 1 has"),
        (lambda m: m["clusters"].pop(), "ids 0..K-1"),
        (lambda m: m.pop("centroids"), "'centroids'"),
    ],
)
def test_a_bad_segmentation_is_one_model_error_naming_the_file(
    tmp_path: Path, change: Any, message: str
) -> None:
    meta = default_meta()
    change(meta)
    directory = write(tmp_path / "s", meta)
    with pytest.raises(ModelError) as caught:
        load_segmentation(directory)
    text = str(caught.value)
    assert "\n" not in text and message in text and str(directory / SEGMENTATION_FILE) in text


def test_a_missing_segmentation_says_which_setting_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as caught:
        load_segmentation(tmp_path / "nothing")
    text = str(caught.value)
    assert "\n" not in text and "--segments-dir" in text and "PROFILESTREAM_SEGMENTS_DIR" in text
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / SEGMENTATION_FILE).write_text("{not json")
    with pytest.raises(ModelError, match="is not a valid segmentation"):
        load_segmentation(tmp_path / "broken")
