"""Learned shopper segments (models/segments.py, `profilestream segments train`): the committed
segmentations, their rebuild, the job's assignment against scikit-learn's, the K rule, the
scaling, the generated names and the command line's errors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models import segments as seg
from tests.support.cli import assert_one_line_error, cli, run_cli
from tests.support.compare import assert_same_json
from tests.support.shared_data import shared_file
from udfs.clusters import SEGMENTATION_FILE, load_segmentation
from udfs.events import PURCHASE, VIEW, Event
from udfs.features import FEATURE_NAMES
from udfs.params import DAY_MS, HOUR_MS, ProfileParams

TAOBAO_DIR = seg.SEGMENTS_DIR / "taobao-s1"
REES46_DIR = seg.SEGMENTS_DIR / "rees46-s1"
PNG = b"\x89PNG\r\n\x1a\n"


def artefacts() -> tuple[str, ...]:
    from models.segments_report import PLOTS

    return (SEGMENTATION_FILE, "report.md", *PLOTS)


# ---------------------------------------------------------------------------------------------
# The committed segmentations
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("directory", [TAOBAO_DIR, REES46_DIR], ids=["taobao-s1", "rees46-s1"])
def test_committed_segmentation_is_complete(directory: Path) -> None:
    for name in artefacts():
        assert (directory / name).is_file(), name
        if name.endswith(".png"):
            assert (directory / name).read_bytes()[:8] == PNG
    loaded = load_segmentation(directory)  # what the job loads
    meta = loaded.metadata
    assert meta["version"] == directory.name and loaded.version == directory.name
    assert [f["name"] for f in meta["features"]] == [f.name for f in seg.FEATURES]
    k = meta["k_selection"]["chosen_k"]
    assert loaded.k == k == len(meta["clusters"])
    names = [c["name"] for c in meta["clusters"]]
    assert len(set(names)) == k and all(names)
    sizes = [c["size"] for c in meta["clusters"]]
    assert sizes == sorted(sizes, reverse=True)  # ids by size
    assert sum(sizes) == meta["snapshots"]["rows"]
    assert math.isclose(sum(c["share"] for c in meta["clusters"]), 1.0)
    for c in meta["clusters"]:
        assert list(c) == ["id", "name", "description", "size", "share", "centroid", "z"]
        assert set(c["centroid"]) == set(c["z"]) == {f.name for f in seg.FEATURES}
        assert [c["z"][f.name] for f in seg.FEATURES] == list(loaded.centroids[c["id"]])
    ev = meta["evaluation"]
    assert -1 <= ev["silhouette"] <= 1
    ari = ev["stability_ari"]
    assert ari["min"] <= ari["mean"] <= 1 and ari["sd"] >= 0
    assert ev["assign_vs_kmeans_mismatches"] == 0
    later = ev["later_periods"]
    assert later["examples"] > 0 and later["independence"]["p_value"] is not None
    for r in later["clusters"]:
        lo, hi = r["rate_ci"]
        assert r["rate"] is None or lo <= r["rate"] <= hi
    assert len(meta["data"]["sha256"]) == 64
    assert meta["versions"]["scikit-learn"] == "1.9.1"
    report = (directory / "report.md").read_text(encoding="utf-8")
    for heading in ("## Choosing K", "## Clusters", "### Purchases in later periods", "Verdict"):
        assert heading in report
    assert meta["rebuild"] in report


def test_committed_default_is_the_documented_taobao_run() -> None:
    meta = json.loads((TAOBAO_DIR / SEGMENTATION_FILE).read_text(encoding="utf-8"))
    assert meta["data"]["file"] == "taobao_userbehavior_head.csv"
    assert meta["rebuild"] == (
        "profilestream segments train --events taobao_userbehavior_head.csv --format taobao "
        "--version taobao-s1"
    )
    assert meta["spec"] == seg.SegmentSpec().to_json()  # every default


def rebuild_and_compare(tmp_path: Path, committed: Path, extra: tuple[str, ...]) -> None:
    meta = json.loads((committed / SEGMENTATION_FILE).read_text(encoding="utf-8"))
    path = shared_file(meta["data"]["file"])
    out = tmp_path / committed.name
    proc = cli(
        "segments", "train", "--events", str(path), "--format", meta["data"]["format"],
        "--version", committed.name, "--out", str(out), *extra, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # K-means, the silhouette and the PCA of the plot go through BLAS, whose kernels differ in
    # the last bits between CPU types: the JSON's numbers are compared to 1e-9 (and the report
    # and plots, made from them, byte for byte: on another CPU type they may need regenerating,
    # which the JSON comparison shows is harmless). On one machine every byte is the same.
    built = json.loads((out / SEGMENTATION_FILE).read_text(encoding="utf-8"))
    assert_same_json(built, meta, SEGMENTATION_FILE)
    for name in artefacts():
        if name != SEGMENTATION_FILE:
            assert (out / name).read_bytes() == (committed / name).read_bytes(), name


@pytest.mark.slow
@pytest.mark.data
def test_rebuilding_taobao_s1_from_the_shared_sample_gives_the_committed_directory(
    tmp_path: Path,
) -> None:
    rebuild_and_compare(tmp_path, TAOBAO_DIR, ())


@pytest.mark.slow
@pytest.mark.data
def test_rebuilding_rees46_s1_gives_the_committed_directory(tmp_path: Path) -> None:
    rebuild_and_compare(
        tmp_path,
        REES46_DIR,
        ("--tz-offset-hours", "0", "--horizon-minutes", "10", "--eval-periods", "2"),
    )


@pytest.mark.data
@pytest.mark.parametrize("directory", [TAOBAO_DIR, REES46_DIR], ids=["taobao-s1", "rees46-s1"])
def test_assign_equals_scikit_learn_predict_on_every_training_vector(directory: Path) -> None:
    """The job's nearest centroid (pure Python, udfs.clusters) against KMeans.predict with the
    committed centroids, on the training snapshots rebuilt from the sample."""
    from sklearn.cluster import KMeans

    loaded = load_segmentation(directory)
    meta = loaded.metadata
    events, _ = seg.load_events(meta["data"]["format"], shared_file(meta["data"]["file"]))
    _, final = seg.replay(events, ProfileParams(), [])
    assert meta["snapshots"]["mode"] == "end" and len(final.users) == meta["snapshots"]["rows"]
    x = seg.vectors(loaded, final.rows)
    centroids = np.asarray(loaded.centroids)
    # a fitted KMeans (on the centroids themselves) whose centres are then set to exactly the
    # committed ones (the fit moves them in the last bits: it centres the data first)
    km = KMeans(n_clusters=loaded.k, init=centroids, n_init=1).fit(centroids)
    np.testing.assert_allclose(km.cluster_centers_, centroids, rtol=0, atol=1e-12)
    km.cluster_centers_ = centroids.copy()
    ours = np.asarray([loaded.assign(row) for row in final.rows.tolist()])
    assert np.array_equal(ours, km.predict(x))
    # and the training sizes are what the job's assignment gives
    assert np.bincount(ours, minlength=loaded.k).tolist() == [c["size"] for c in meta["clusters"]]


# ---------------------------------------------------------------------------------------------
# Procedure pieces
# ---------------------------------------------------------------------------------------------
def table(*rows: tuple[int, float, float]) -> list[dict[str, Any]]:
    return [{"k": k, "silhouette": s, "ari_mean": a} for k, s, a in rows]


def test_k_rule_takes_the_best_silhouette_among_stable_k() -> None:
    rows = table((3, 0.30, 0.95), (4, 0.40, 0.70), (5, 0.35, 0.85), (6, 0.35, 0.90))
    assert seg.choose_k(rows) == (5, True)  # 4 is better but unstable; 5 and 6 tie: smaller


def test_k_rule_falls_back_to_the_most_stable_k() -> None:
    rows = table((3, 0.30, 0.60), (4, 0.40, 0.70), (5, 0.35, 0.70))
    assert seg.choose_k(rows) == (4, False)


def profile_rows(values: dict[str, list[float]]) -> np.ndarray[Any, Any]:
    n = len(next(iter(values.values())))
    rows = np.zeros((n, len(FEATURE_NAMES)))
    for name, column in values.items():
        rows[:, FEATURE_NAMES.index(name)] = column
    return rows


def test_scaling_clips_standardises_and_notes_constant_features() -> None:
    views = [float(v) for v in range(1000)]
    rows = profile_rows(
        {
            "cnt_view_30d": views,
            "rfm_spend_30d": [0.0] * 1000,
            "hab_peak_hour": [2.0] * 1000,
            "pref_category_entropy": [math.nan] * 999 + [1.0],
        }
    )
    features, notes = seg.fit_scaling(rows)
    by = {f.name: f for f in features}
    logs = np.log1p(np.asarray(views))
    assert by["views_30d"].lo == float(np.percentile(logs, 0.5))
    assert by["views_30d"].hi == float(np.percentile(logs, 99.5))
    clipped = np.clip(logs, by["views_30d"].lo, by["views_30d"].hi)
    assert by["views_30d"].mean == pytest.approx(clipped.mean())
    assert by["views_30d"].scale == pytest.approx(clipped.std())
    assert by["spend_30d"].scale == 1.0 and any("spend_30d" in n for n in notes)
    # hours: never clipped, fixed scale even when (as here) every user has the same peak hour
    assert (by["peak_hour_sin"].lo, by["peak_hour_sin"].hi) == (-1.0, 1.0)
    assert by["peak_hour_sin"].scale == by["peak_hour_cos"].scale == pytest.approx(0.5**0.5)
    # NaN entropy takes the fill (0), so 999 zeros and a one: clipped at the 99.5th percentile
    assert by["category_entropy"].hi == 0.0 and by["category_entropy"].scale == 1.0
    # the training vectors are the job's: Segmentation.vector
    x = seg.vectors(seg.scaler_only(features), rows)
    assert x[:, 0].mean() == pytest.approx(0.0, abs=1e-12)


def test_bootstrap_resamples_users_with_all_their_snapshots() -> None:
    x = np.asarray([[0.0], [1.0], [1.0], [5.0]])
    users = ["a", "a", "b", "c"]  # a has two snapshots; b and c share nothing
    data = seg.Weighted(x, seg.user_index(users))
    assert data.unique.ravel().tolist() == [0.0, 1.0, 5.0]
    assert data.counts.tolist() == [1.0, 2.0, 1.0]
    assert data.resample_weights(np.asarray([0, 1, 2])).tolist() == [1.0, 2.0, 1.0]
    # user a twice, user c once: a's two rows twice each, b's none
    assert data.resample_weights(np.asarray([0, 0, 2])).tolist() == [2.0, 2.0, 1.0]


def test_circular_mean_hour_wraps_midnight() -> None:
    assert seg.circular_mean_hour(np.asarray([23.0, 1.0])) == pytest.approx(0.0, abs=1e-9)
    assert seg.circular_mean_hour(np.asarray([22.0, 23.0])) == pytest.approx(22.5)
    assert seg.hour_phrase(12.0, 8.0) == "evening shoppers"  # 12 UTC is 20 h in Beijing
    assert seg.hour_phrase(12.0, 0.0) == "afternoon shoppers"
    assert seg.hour_phrase(0.0, 8.0) == "morning shoppers"  # 8 h local
    assert seg.hour_phrase(20.0, 8.0) == "night owls"  # 4 h local, past midnight
    assert seg.hour_phrase(15.0, 8.0) == "night owls"  # 23 h local


def test_wilson_interval() -> None:
    lo, hi = seg.wilson(10, 100)
    assert lo == pytest.approx(0.0552, abs=1e-4) and hi == pytest.approx(0.1744, abs=1e-4)
    assert seg.wilson(0, 10)[0] == 0.0
    assert all(math.isnan(v) for v in seg.wilson(0, 0))


def test_purchase_rates_and_verdict() -> None:
    labels = np.asarray([0] * 200 + [1] * 200)
    y = np.asarray([1] * 20 + [0] * 180 + [1] * 60 + [0] * 140)
    users = [f"u{i}" for i in range(400)]
    rows, test = seg.purchase_rates(labels, y, users, 2)
    assert [r["rate"] for r in rows] == [0.1, 0.3]
    assert rows[1]["lift"] == pytest.approx(0.3 / 0.2)
    assert test["significant"] and test["dof"] == 1
    for r, name in zip(rows, ("low", "high"), strict=True):
        r["name"] = name
    text = seg.verdict(rows, test)
    assert text.startswith("the clusters differ") and "10.0% (low) to 30.0% (high)" in text
    same = np.asarray(([1] * 20 + [0] * 180) * 2)
    rows, test = seg.purchase_rates(labels, same, users, 2)
    for r in rows:
        r["name"] = "x"
    assert not test["significant"]
    assert seg.verdict(rows, test, [0.5, 0.9]).startswith("no significant difference")


# ---------------------------------------------------------------------------------------------
# Names and descriptions
# ---------------------------------------------------------------------------------------------
ZERO = {f.name: 0.0 for f in seg.FEATURES}
POPULATION = {
    **{f.name: 10.0 for f in seg.FEATURES},
    "peak_hour_sin": 12.0,
    "peak_hour_cos": 12.0,
}


def cluster(share: float, z: dict[str, float], centroid: dict[str, float]) -> dict[str, Any]:
    return {
        "share": share,
        "z": {**ZERO, **z},
        "centroid": {**POPULATION, **centroid},
    }


def test_names_come_from_the_most_distinctive_features() -> None:
    clusters = [
        cluster(0.5, {"views_30d": 1.5, "purchases_30d": -0.9, "carts_30d": 0.2},
                {"views_30d": 150.0, "purchases_30d": 0.4}),
        cluster(0.3, {"purchases_30d": 2.0, "spend_30d": 1.0}, {"purchases_30d": 5.0}),
        cluster(0.2, {"views_30d": 0.1}, {}),
    ]  # fmt: skip
    (n0, d0), (n1, _), (n2, d2) = seg.name_clusters(clusters, POPULATION, 8.0)
    assert n0 == "heavy viewers, rare buyers"
    assert d0.startswith("heavy viewers (views in 30 days 150 vs 10 overall); rare buyers")
    assert "carts" not in d0  # 0.2 sd is not distinctive
    assert d0.endswith("50% of shoppers")
    assert n1 == "frequent buyers, big spenders"
    assert n2 == "average shoppers" and d2.startswith("close to the population")


def test_hour_phrase_uses_local_time_and_the_pair_strength() -> None:
    clusters = [
        cluster(0.6, {"peak_hour_sin": -0.6, "peak_hour_cos": 0.6}, {"peak_hour_sin": 13.0}),
        cluster(0.4, {"peak_hour_sin": 0.3, "peak_hour_cos": 0.3}, {"peak_hour_sin": 2.0}),
    ]
    (n0, d0), (n1, _) = seg.name_clusters(clusters, POPULATION, 8.0)
    assert n0 == "evening shoppers"  # 13 UTC = 21 h in Beijing; strength sqrt(0.72) > 0.5
    assert "peak hour around 21 h local vs 20 h overall" in d0
    assert n1 == "average shoppers"  # sqrt(0.18) < 0.5


def test_names_are_distinct_even_when_the_phrases_are_only_reordered() -> None:
    clusters = [
        cluster(0.4, {"views_30d": 2.0, "carts_30d": 1.5, "favs_30d": 0.8}, {}),
        cluster(0.3, {"carts_30d": 2.0, "views_30d": 1.5, "favs_30d": -0.3}, {}),
        cluster(0.2, {"purchases_30d": 0.1}, {}),
        cluster(0.1, {"purchases_30d": 0.2}, {}),
    ]
    names = [n for n, _ in seg.name_clusters(clusters, POPULATION, 0.0)]
    assert names[0] == "heavy viewers, frequent carters, favourite savers"
    assert names[1] == "frequent carters, heavy viewers, few favourites"
    # two near-average clusters are told apart by their (weak) strongest feature
    assert names[2] != names[3] and len(set(names)) == 4


def test_identical_clusters_get_numbered_names() -> None:
    same = cluster(0.5, {"views_30d": 1.0}, {})
    names = [n for n, _ in seg.name_clusters([same, same], POPULATION, 0.0)]
    assert names[0] != names[1] and names[0].endswith("(1)") and names[1].endswith("(2)")


# ---------------------------------------------------------------------------------------------
# Replay and snapshots
# ---------------------------------------------------------------------------------------------
def event(user: str, t: int, kind: int = VIEW) -> Event:
    return Event(f"{user}-{t}", user, kind, t, "i1", "c1", None, None, None, 1, None, None, 0)


def test_snapshots_are_the_rows_the_job_last_wrote() -> None:
    day0 = 20 * DAY_MS
    events = [
        event("a", day0 + HOUR_MS),
        event("b", day0 + 2 * HOUR_MS),
        event("a", day0 + DAY_MS + HOUR_MS),
        event("a", day0 + DAY_MS + 2 * HOUR_MS, PURCHASE),
    ]
    snaps, final = seg.replay(events, ProfileParams(), [day0 + DAY_MS])
    at_midnight = snaps[day0 + DAY_MS]
    assert at_midnight.users == ["a", "b"]
    # the row as of the user's newest event: hours since the last event is 0, as in the job
    hours = FEATURE_NAMES.index("rfm_hours_since_last_event")
    assert (at_midnight.rows[:, hours] == 0).all() and (final.rows[:, hours] == 0).all()
    views = FEATURE_NAMES.index("cnt_view_life")
    assert at_midnight.rows[:, views].tolist() == [1, 1]
    assert final.rows[:, views].tolist() == [2, 1]
    # daily: each day's written rows; b wrote nothing on day 2, so it is not repeated
    _, users, cuts = seg.training_rows(snaps, final, [day0 + DAY_MS], "daily")
    assert users == ["a", "b", "a"] and cuts == [day0 + DAY_MS] * 2 + [final.cutoff_ms]
    _, users, _ = seg.training_rows(snaps, final, [day0 + DAY_MS], "end")
    assert users == ["a", "b"]
    buys = seg.Purchases(events)
    assert buys.label("a", day0 + DAY_MS, DAY_MS) == 1
    assert buys.label("a", day0 + DAY_MS + 2 * HOUR_MS, DAY_MS) == 0  # (t, t + h]
    assert buys.label("b", day0 + DAY_MS, DAY_MS) == 0


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_train_on_a_synthetic_log_with_daily_snapshots(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    proc = cli(
        "segments", "train", "--format", "synthetic", "--synthetic-events", "20000",
        "--synthetic-users", "800", "--tz-offset-hours", "0", "--snapshots", "daily",
        "--k-min", "3", "--k-max", "5", "--bootstrap", "5", "--version", "syn-1",
        "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "later purchases" in proc.stdout and "bootstrap ARI" in proc.stdout
    loaded = load_segmentation(out)
    meta = loaded.metadata
    assert meta["snapshots"]["mode"] == "daily"
    assert meta["snapshots"]["rows"] > meta["snapshots"]["users"]
    assert 3 <= loaded.k <= 5 and [r["k"] for r in meta["k_selection"]["table"]] == [3, 4, 5]
    assert meta["rebuild"].startswith(
        "profilestream segments train --format synthetic --synthetic-events 20000 "
        "--synthetic-users 800 --seed 42 --version syn-1 --snapshots daily"
    )
    for name in artefacts():
        assert (out / name).is_file()


def test_bad_k_range_is_one_line() -> None:
    proc = run_cli("segments", "train", "--format", "synthetic", "--k-min", "1")
    assert_one_line_error(proc, "--k-min 1", "2 <= k-min <= k-max")
    proc = run_cli("segments", "train", "--format", "synthetic", "--k-min", "6", "--k-max", "4")
    assert_one_line_error(proc, "--k-min 6 --k-max 4")
    proc = run_cli("segments", "train", "--format", "synthetic", "--bootstrap", "1")
    assert_one_line_error(proc, "--bootstrap 1")


def test_missing_events_file_is_one_line(tmp_path: Path) -> None:
    assert_one_line_error(
        run_cli("segments", "train", "--format", "taobao"), "--format taobao needs --events"
    )
    assert_one_line_error(
        run_cli("segments", "train", "--format", "rees46", "--events", str(tmp_path / "no.csv")),
        "no such file",
    )


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_a_log_too_short_to_hold_out_periods_names_the_flags(tmp_path: Path) -> None:
    proc = run_cli(
        "segments", "train", "--format", "synthetic", "--synthetic-events", "3000",
        "--synthetic-users", "300", "--tz-offset-hours", "0", "--eval-periods", "30",
        "--out", str(tmp_path / "x"),
    )  # fmt: skip
    assert proc.returncode == 2
    line = last_line(proc.stderr)
    assert "too short to hold out 30 label period(s)" in line and "--eval-periods" in line
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


def test_too_few_users_is_a_training_error(tmp_path: Path) -> None:
    proc = run_cli(
        "segments", "train", "--format", "synthetic", "--synthetic-events", "600",
        "--synthetic-users", "30", "--tz-offset-hours", "0", "--eval-periods", "1",
        "--out", str(tmp_path / "x"),
    )  # fmt: skip
    assert proc.returncode == 2
    assert "training snapshots are too few" in last_line(proc.stderr)
    assert "Traceback" not in proc.stderr
