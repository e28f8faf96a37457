"""The evaluation protocol (models.evaluation) and the scorer's calibration (udfs.calibration):
metrics, leak-free rolling-origin folds, user hold-out, user-level bootstrap, calibration fitting
and its pure-Python application (JVM-free, small synthetic data)."""

from __future__ import annotations

import json
import math
import zlib
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from models.evaluation import (
    METRICS,
    ScoredSample,
    cluster_bootstrap,
    day_index,
    ece,
    fit_calibration,
    metrics,
    reliability_curve,
    rolling_origin,
    user_holdout,
)
from udfs.calibration import IDENTITY, Calibration

Array = np.ndarray[Any, Any]


def _logit(p: Array) -> Array:
    q = np.clip(p, 1e-7, 1 - 1e-7)
    return np.asarray(np.log(q / (1 - q)))


def _sigmoid(z: Array) -> Array:
    return np.asarray(1 / (1 + np.exp(-z)))


# --- metrics -------------------------------------------------------------------------------------


def test_ece_is_small_when_calibrated_and_large_when_shifted() -> None:
    rng = np.random.default_rng(1)
    p = rng.random(20_000)
    y = (rng.random(p.size) < p).astype(np.int8)
    assert ece(y, p) < 0.02
    assert ece(y, np.clip(p + 0.2, 0, 1)) > 0.15
    assert ece(y, p * 0.5) > 0.2
    # ECE is the count-weighted gap of the reliability curve.
    curve = reliability_curve(y, p * 0.5)
    assert sum(c for _, _, c in curve) == p.size
    assert all(c > 0 for _, _, c in curve)
    weighted = sum(c * abs(mp - rate) for mp, rate, c in curve) / p.size
    assert weighted == pytest.approx(ece(y, p * 0.5), abs=1e-12)


def test_reliability_curve_lists_only_non_empty_bins() -> None:
    y = np.array([0, 1, 1, 0, 1])
    p = np.array([0.05, 0.07, 0.95, 1.0, 0.55])
    assert reliability_curve(y, p) == [
        pytest.approx((0.06, 0.5, 2)),
        pytest.approx((0.55, 1.0, 1)),
        pytest.approx((0.975, 0.5, 2)),
    ]


def test_metrics_match_sklearn_and_single_class_gives_nan_auc() -> None:
    from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

    rng = np.random.default_rng(2)
    y = (rng.random(500) < 0.3).astype(np.int8)
    p = np.clip(0.3 + 0.3 * (y - 0.3) + rng.normal(0, 0.2, y.size), 0, 1)
    m = metrics(y, p)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert m["log_loss"] == pytest.approx(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)), abs=1e-12)
    assert m["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    assert (m["positives"], m["examples"]) == (int(y.sum()), 500)

    for label in (0, 1):
        single = metrics(np.full(10, label), np.linspace(0, 1, 10))
        assert math.isnan(single["roc_auc"])
        assert math.isnan(single["pr_auc"])
        assert math.isfinite(single["log_loss"])
        assert math.isfinite(single["brier"])
        assert single["positives"] == 10 * label


# --- days and folds ------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0.0, 8.0, -5.5])
def test_day_index_is_the_local_calendar_day(offset: float) -> None:
    rng = np.random.default_rng(3)
    t = rng.integers(-(10**11), 2 * 10**12, size=300)
    t[:4] = [0, -1, 86_400_000 - 1, 86_400_000]
    tz = timezone(timedelta(hours=offset))
    epoch = datetime(1970, 1, 1).date()
    expected = [
        (datetime.fromtimestamp(int(v) / 1000, UTC).astimezone(tz).date() - epoch).days for v in t
    ]
    assert day_index(t, offset).tolist() == expected
    assert day_index(t.astype(np.float64), offset).tolist() == expected


def _eligible(day: Array, min_train_days: int, stop_days: int) -> list[int]:
    first, last = int(day.min()), int(day.max())
    out = []
    for d in range(first + min_train_days + stop_days, last + 1):
        has_fit = (day <= d - stop_days - 1).any()
        has_stop = ((day >= d - stop_days) & (day < d)).any()
        if has_fit and has_stop and (day == d).any():
            out.append(d)
    return out


def test_rolling_origin_small_case() -> None:
    day = np.repeat(np.arange(6), 2)
    folds = rolling_origin(day, np.arange(day.size))
    assert [(f.name, f.day) for f in folds] == [("day+4", 4), ("day+5", 5)]
    f = folds[0]
    assert sorted(set(day[f.fit].tolist())) == [0, 1, 2]
    assert sorted(set(day[f.stop].tolist())) == [3]
    assert sorted(set(day[f.test].tolist())) == [4]


@pytest.mark.parametrize(
    ("first", "n_days", "min_train_days", "stop_days", "gaps"),
    [
        (0, 10, 3, 1, ()),
        (17_500, 20, 3, 2, (17_505, 17_510, 17_511)),
        (-4, 12, 1, 1, (0,)),
        (100, 15, 5, 3, (104, 105, 106, 107, 110)),
        (0, 4, 3, 1, ()),
        (0, 3, 3, 1, ()),
    ],
)
def test_rolling_origin_never_lets_a_fit_or_stop_label_reach_past_the_test_cutoff(
    first: int, n_days: int, min_train_days: int, stop_days: int, gaps: tuple[int, ...]
) -> None:
    rng = np.random.default_rng(first + n_days)
    day = rng.integers(first, first + n_days, size=400)
    day[:2] = [first, first + n_days - 1]
    day = day[~np.isin(day, gaps)]
    users = rng.integers(0, 50, size=day.size)
    folds = rolling_origin(day, users, min_train_days=min_train_days, stop_days=stop_days)

    assert [f.day for f in folds] == _eligible(day, min_train_days, stop_days)
    assert len({f.name for f in folds}) == len(folds)
    for f in folds:
        assert f.name == f"day+{f.day - first}"
        assert f.fit.any() and f.stop.any() and f.test.any()
        assert not (f.fit & f.stop).any() and not (f.fit & f.test).any()
        assert not (f.stop & f.test).any()
        assert (day[f.test] == f.day).all() and f.test.sum() == (day == f.day).sum()
        # label window of an example at day d: (cut-off d, cut-off d + 1]
        assert (day[f.stop] + 1 <= f.day).all()
        assert (day[f.fit] + 1 <= f.day).all()
        assert (day[f.fit] + 1 <= day[f.stop].min()).all()
        # and nothing allowed by that rule is left out
        assert (f.fit == (day + 1 <= f.day - stop_days)).all()
        assert (f.stop == ((day >= f.day - stop_days) & (day + 1 <= f.day))).all()
    if folds:  # the first fold's fit period covers at least min_train_days calendar days
        assert folds[0].day - stop_days - first >= min_train_days


def test_rolling_origin_skips_single_class_test_days_when_labels_are_given() -> None:
    day = np.repeat(np.arange(8), 10)
    y = np.tile(np.r_[np.ones(3), np.zeros(7)], 8)
    y[day == 5] = 0
    folds = rolling_origin(day, np.zeros(day.size), y=y)
    assert [f.day for f in folds] == [4, 6, 7]
    with pytest.raises(ValueError, match="lengths differ"):
        rolling_origin(day, np.zeros(3))


# --- user hold-out -------------------------------------------------------------------------------


def test_user_holdout_keeps_users_whole_and_is_stable() -> None:
    rng = np.random.default_rng(4)
    users = np.array([f"u{i}" for i in rng.integers(0, 2_000, size=10_000)], dtype=object)
    held = user_holdout(users, share=0.2)
    assert held.dtype == bool and held.shape == users.shape
    per_user: dict[str, set[bool]] = {}
    for u, h in zip(users, held, strict=True):
        per_user.setdefault(str(u), set()).add(bool(h))
    assert all(len(sides) == 1 for sides in per_user.values())
    share = np.mean([next(iter(s)) for s in per_user.values()])
    assert 0.17 < share < 0.23
    # the same users on the same side whatever the order or the other rows
    perm = rng.permutation(users.size)[:3_000]
    assert (user_holdout(users[perm], share=0.2) == held[perm]).all()
    assert (user_holdout(users, share=0.2) == held).all()
    # the documented rule, and the salt matters
    assert bool(held[0]) == (zlib.crc32(("holdout" + users[0]).encode()) % 1000 < 200)
    assert (user_holdout(users, share=0.2, salt="other") != held).any()
    assert not user_holdout(users, share=0.0).any()
    assert user_holdout(users, share=1.0).all()
    as_int = user_holdout(np.array([7, 7, 8]), 0.5)
    assert (as_int == user_holdout(np.array(["7", "7", "8"]), 0.5)).all()


# --- user-level bootstrap ------------------------------------------------------------------------


def test_replicate_metrics_equal_metrics_on_the_duplicated_rows() -> None:
    rng = np.random.default_rng(5)
    y = (rng.random(300) < 0.3).astype(np.float64)
    p = np.round(np.clip(0.3 + 0.2 * (y - 0.3) + rng.normal(0, 0.2, y.size), 0, 1), 2)  # ties
    w = rng.integers(0, 3, size=(6, y.size)).astype(np.float64)
    pos = w @ y
    out = ScoredSample(y, p).replicate(w, pos, w.sum(axis=1) - pos, METRICS)
    for k in range(w.shape[0]):
        rows = np.repeat(np.arange(y.size), w[k].astype(np.int64))
        expected = metrics(y[rows], p[rows])
        for name in METRICS:
            assert out[name][k] == pytest.approx(expected[name], abs=1e-12), name


def _clustered(n_users: int, rows_per_user: int, seed: int) -> tuple[Array, Array, Array]:
    """Users with their own propensity, each contributing rows_per_user rows."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), rows_per_user)
    propensity = rng.beta(1, 4, size=n_users)[users]
    y = (rng.random(users.size) < propensity).astype(np.float64)
    return y, propensity, users


def test_cluster_bootstrap_intervals_contain_the_point_estimates() -> None:
    y, truth, users = _clustered(300, 5, seed=6)
    rng = np.random.default_rng(6)
    preds = {
        "lightgbm": np.clip(truth + rng.normal(0, 0.05, y.size), 0, 1),
        "noise": rng.random(y.size),
    }
    out = cluster_bootstrap(y, preds, users, n_boot=300)
    assert out["replicates"] == 300 and out["users"] == 300
    for name in preds:
        entry = out["models"][name]
        assert set(entry) == {*METRICS, *(f"{m}_ci" for m in METRICS)}
        for m in ("roc_auc", "pr_auc", "log_loss", "brier"):
            lo, hi = entry[f"{m}_ci"]
            assert lo < entry[m] < hi, (name, m)
            assert entry[m] == pytest.approx(metrics(y, preds[name])[m], abs=1e-12)
    assert out == cluster_bootstrap(y, preds, users, n_boot=300)  # seeded


def test_cluster_bootstrap_paired_difference() -> None:
    y, truth, users = _clustered(400, 4, seed=8)
    rng = np.random.default_rng(8)
    model = np.clip(truth + rng.normal(0, 0.05, y.size), 0, 1)
    preds = {"lightgbm": model, "same": model.copy(), "noise": rng.random(y.size)}
    out = cluster_bootstrap(y, preds, users, n_boot=300, metric_names=("roc_auc",))
    same = out["paired_roc_auc_diff"]["same"]
    assert same["mean"] == pytest.approx(0.0, abs=1e-12)
    assert same["ci"] == [pytest.approx(0.0, abs=1e-12)] * 2
    noise = out["paired_roc_auc_diff"]["noise"]
    assert noise["ci"][0] > 0.1
    assert noise["ci"][0] < noise["mean"] < noise["ci"][1]
    assert set(out["paired_roc_auc_diff"]) == {"same", "noise"}
    assert set(out["models"]["noise"]) == {"roc_auc", "roc_auc_ci"}
    with pytest.raises(ValueError, match="reference"):
        cluster_bootstrap(y, {"other": model}, users, n_boot=10)


def test_cluster_bootstrap_resamples_users_not_rows() -> None:
    """Twenty identical rows per user carry the information of one row: the user-level interval
    is about sqrt(20) times wider than the same data with every row its own user."""
    y, truth, users = _clustered(150, 20, seed=9)
    rng = np.random.default_rng(9)
    p = np.clip(truth + rng.normal(0, 0.1, 150)[users], 0, 1)
    y = y[::20][users]  # every row of a user is the same example
    by_user = cluster_bootstrap(y, {"lightgbm": p}, users, n_boot=200)["models"]["lightgbm"]
    by_row = cluster_bootstrap(y, {"lightgbm": p}, np.arange(y.size), n_boot=200)
    lo_u, hi_u = by_user["brier_ci"]
    lo_r, hi_r = by_row["models"]["lightgbm"]["brier_ci"]
    assert (hi_u - lo_u) > 3 * (hi_r - lo_r)


# --- calibration ---------------------------------------------------------------------------------


def test_isotonic_calibration_applies_exactly_like_sklearn() -> None:
    rng = np.random.default_rng(10)
    p = rng.random(400)
    y = (rng.random(p.size) < p**2).astype(np.float64)
    iso = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(p, y)
    cal = Calibration(
        "isotonic",
        x=tuple(float(v) for v in iso.X_thresholds_),
        y=tuple(float(v) for v in iso.y_thresholds_),
    )
    raw = np.r_[rng.random(2_000), iso.X_thresholds_, -0.5, 0.0, 1.0, 1.5]
    got = np.array([cal.apply(float(r)) for r in raw])
    assert np.abs(got - iso.predict(raw)).max() <= 1e-12
    assert math.isnan(cal.apply(math.nan))
    # repeated x with the same y is allowed; beyond the ends the mapping is constant
    step = Calibration("isotonic", x=(0.2, 0.4, 0.4, 0.8), y=(0.1, 0.3, 0.3, 0.9))
    assert [step.apply(v) for v in (0.0, 0.3, 0.4, 0.6, 1.0)] == pytest.approx(
        [0.1, 0.2, 0.3, 0.6, 0.9], abs=1e-15
    )


def test_platt_calibration_applies_exactly_like_logistic_regression() -> None:
    rng = np.random.default_rng(11)
    p = rng.random(400)
    y = (rng.random(p.size) < _sigmoid(2 * _logit(p) - 1)).astype(np.int64)
    lr = LogisticRegression(C=1e6).fit(_logit(p)[:, None], y)
    cal = Calibration("platt", a=float(lr.coef_[0, 0]), b=float(lr.intercept_[0]))
    raw = np.r_[rng.random(2_000), 0.0, 1e-9, 1 - 1e-9, 1.0]
    got = np.array([cal.apply(float(r)) for r in raw])
    assert np.abs(got - lr.predict_proba(_logit(raw)[:, None])[:, 1]).max() <= 1e-12
    steep = Calibration("platt", a=80.0, b=0.0)  # exp() must not overflow at either end
    assert steep.apply(0.0) == pytest.approx(0.0, abs=1e-300)
    assert steep.apply(1.0) == 1.0
    assert IDENTITY.apply(0.37) == 0.37


@pytest.mark.parametrize(
    "cal",
    [
        IDENTITY,
        Calibration("platt", a=1.7, b=-0.3),
        Calibration("isotonic", x=(0.0, 0.1, 0.5, 0.5, 0.9), y=(0.0, 0.05, 0.4, 0.4, 1.0)),
        Calibration("isotonic", x=(0.3,), y=(0.2,)),
    ],
)
def test_calibration_json_round_trip(cal: Calibration) -> None:
    assert Calibration.from_json(cal.to_json()) == cal
    assert Calibration.from_json(json.loads(json.dumps(cal.to_json()))) == cal


def test_missing_calibration_is_identity() -> None:
    assert Calibration.from_json(None) == IDENTITY


@pytest.mark.parametrize(
    ("doc", "names"),
    [
        ({"kind": "sigmoid"}, "kind"),
        ({}, "kind"),
        ({"kind": "platt", "a": 1.0}, "'b'"),
        ({"kind": "platt", "a": "1", "b": 0.0}, "a must be a number"),
        ({"kind": "platt", "a": True, "b": 0.0}, "a must be a number"),
        ({"kind": "platt", "a": 1.0, "b": float("nan")}, "b must be finite"),
        ({"kind": "platt", "a": 1.0, "b": 0.0, "x": [0.1]}, "'x'"),
        ({"kind": "isotonic", "x": [0.1, 0.2], "y": [0.5]}, "x and y lengths differ"),
        ({"kind": "isotonic", "x": [0.1, 0.3, 0.2], "y": [0.1, 0.2, 0.3]}, "x is not increasing"),
        ({"kind": "isotonic", "x": [0.1, 0.1], "y": [0.1, 0.2]}, "x is not increasing"),
        ({"kind": "isotonic", "x": [0.1, 0.2], "y": [0.1, 1.2]}, r"y\[1\]"),
        ({"kind": "isotonic", "x": [0.1, 0.2], "y": [-0.1, 0.2]}, r"y\[0\]"),
        ({"kind": "isotonic", "x": [], "y": []}, "at least one"),
        ({"kind": "isotonic", "x": "0.1", "y": [0.1]}, "x must be a list"),
        ({"kind": "identity", "a": 2.0}, "'a'"),
    ],
)
def test_invalid_calibration_json_names_the_problem(doc: dict[str, Any], names: str) -> None:
    with pytest.raises(ValueError, match=names) as err:
        Calibration.from_json(doc)
    assert "\n" not in str(err.value)


def test_fit_calibration_fixes_a_miscalibrated_score() -> None:
    rng = np.random.default_rng(12)
    truth = rng.beta(1.5, 6, size=6_000)
    y = (rng.random(truth.size) < truth).astype(np.int8)
    raw = _sigmoid(0.5 * _logit(truth) + 1.2)  # too high and too flat
    val, test = slice(0, 3_000), slice(3_000, None)
    cal, report = fit_calibration(raw[val], y[val])
    assert cal.kind in ("platt", "isotonic") and report["chosen"] == cal.kind
    assert isinstance(report["platt"], float) and isinstance(report["isotonic"], float)
    assert min(report["platt"], report["isotonic"]) < float(report["identity"])
    calibrated = np.array([cal.apply(float(r)) for r in raw[test]])
    before, after = ece(y[test], raw[test]), ece(y[test], calibrated)
    assert before > 0.1
    assert after < 0.03 and after < before
    assert metrics(y[test], calibrated)["log_loss"] < metrics(y[test], raw[test])["log_loss"]
    assert Calibration.from_json(json.loads(json.dumps(cal.to_json()))) == cal


def test_fit_calibration_chooses_the_lower_cross_validated_loss() -> None:
    rng = np.random.default_rng(13)
    raw = rng.random(2_000)
    # a step function of the score: isotonic fits it, a logistic curve cannot
    y = (rng.random(raw.size) < np.where(raw < 0.5, 0.05, 0.6)).astype(np.int8)
    cal, report = fit_calibration(raw, y)
    assert report["chosen"] == "isotonic" == cal.kind
    assert isinstance(report["platt"], float) and isinstance(report["isotonic"], float)
    assert report["isotonic"] < report["platt"]


def test_fit_calibration_needs_enough_validation_rows() -> None:
    rng = np.random.default_rng(14)
    cal, report = fit_calibration(rng.random(40), np.r_[np.ones(10), np.zeros(30)])
    assert cal == IDENTITY and report["chosen"] == "identity"
    assert "40 rows" in str(report["reason"])
    cal, report = fit_calibration(rng.random(500), np.r_[np.ones(4), np.zeros(496)])
    assert cal == IDENTITY and "4 positives" in str(report["reason"])
    assert math.isnan(float(report["platt"]))
