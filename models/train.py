"""Train and evaluate the purchase-propensity model on an event log.

    profilestream train --events FILE --format taobao|rees46|proto|synthetic [--version V]
    profilestream evaluate --model DIR --events FILE --format ... [--json]

Examples come from `models.dataset`: one per user per period at a fixed cut-off (local
midnight for the daily model), features through the job's own code at the cut-off, label = a
purchase within the horizon. Both commands run the same protocol (`run_protocol`):

- rolling origin over the label periods: for each test period D, LightGBM is fitted on periods
  whose labels end before the early-stopping period, stopped early (and calibrated) on the
  period(s) just before D, and scored on D; the baselines are fitted on exactly the same fitting
  rows. One table row per test period, and the mean.
- held-out users: the same folds with 20 % of the users removed from fitting; the AUC on those
  users against the AUC on the users that were fitted on.
- user-clustered bootstrap (users resampled with all their examples) over the pooled test
  predictions: a 95 % interval for every metric of every model and for the paired difference
  LightGBM − each baseline.

The shipped model is fitted the same way on everything but the last period, stopped early and
calibrated on the last period. Baselines, declared up front: the recency heuristic (hours since
the last event), the user's past buy-day rate, and a logistic regression on the model's features;
each heuristic is mapped to a probability by Platt scaling on the fitting rows.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import sklearn
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from models.dataset import Array, Examples, ExampleSpec
from models.evaluation import (
    cluster_bootstrap,
    fit_calibration,
    metrics,
    reliability_curve,
    rolling_origin,
    user_holdout,
)
from models.jsonable import clean, iso_utc
from udfs.calibration import Calibration
from udfs.errors import TrainingError
from udfs.features import FEATURE_NAMES

MODEL_NAME = "purchase_propensity"
MODELS_DIR = Path(__file__).resolve().parent / MODEL_NAME
LGB_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.02,
    "num_leaves": 7,
    "min_data_in_leaf": 40,
    "feature_fraction": 0.6,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 10.0,
    "seed": 7,
    "deterministic": True,
    "force_row_wise": True,
    "num_threads": 1,
    "verbose": -1,
}
MAX_ROUNDS = 600
EARLY_STOPPING_ROUNDS = 60
MIN_TRAIN_PERIODS = 2
BOOTSTRAP = 1000
HOLDOUT_SHARE = 0.2

# What the model may use: recent windows, decays, rates, ratios and recencies. Each feature left
# out of the model is named below with the reason (the profile still computes it for BI).
_GROWS = "grows with calendar time (a window as long as a short log): trees cannot extrapolate it"
EXCLUDED: dict[str, str] = {
    **{
        f"cnt_{k}_{w}": _GROWS
        for k in ("view", "cart", "remove", "fav", "purchase", "search")
        for w in ("7d", "30d", "life")
    },
    **{f"dcy_{k}_7d": _GROWS + " (7-day half-life)" for k in ("view", "cart", "purchase")},
    "ten_days": _GROWS,
    "ten_active_days": _GROWS,
    "ses_count": _GROWS,
    "fun_abandoned_carts": _GROWS,
    "fun_converted_carts": _GROWS,
    "rfm_spend_30d": _GROWS,
    "rfm_spend_life": _GROWS,
    "pref_distinct_categories": _GROWS,
    "hab_peak_hour": "a UTC hour used as a number (no order: 23 and 0 are neighbours)",
    "rfm_hours_since_last_event": (
        "always 0 in the per-event view the job scores; recency enters through "
        "rec_hours_since_last_cart/fav and rfm_hours_since_last_purchase"
    ),
}
CANDIDATES: tuple[str, ...] = tuple(f for f in FEATURE_NAMES if f not in EXCLUDED)


@dataclass
class Predictions:
    """Pooled test predictions of every model over the rolling-origin folds."""

    y: Array
    users: Array
    p: dict[str, Array]


def _columns(names: list[str] | tuple[str, ...]) -> list[int]:
    index = {n: i for i, n in enumerate(FEATURE_NAMES)}
    return [index[n] for n in names]


def select_features(x: Array) -> tuple[list[str], dict[str, str]]:
    """The model's features: the candidates minus those constant or missing in `x` (training
    rows). Returns them and every excluded feature with its reason."""
    chosen: list[str] = []
    dropped = dict(EXCLUDED)
    for name, col in zip(CANDIDATES, _columns(CANDIDATES), strict=True):
        values = x[:, col]
        present = values[~np.isnan(values)]
        if present.size == 0:
            dropped[name] = "missing in every training example"
        elif np.all(present == present[0]):
            dropped[name] = f"constant ({present[0]:g}) in the training examples"
        else:
            chosen.append(name)
    if not chosen:
        raise TrainingError("every candidate feature is constant or missing in this log")
    return chosen, dropped


def _log_features(x: Array) -> Array:
    """Counts and amounts are heavy-tailed: sign-preserving log1p for the linear model."""
    out: Array = np.sign(x) * np.log1p(np.abs(x))
    return out


def recency(x: Array) -> Array:
    """The recency heuristic: the sooner the last event before the cut-off, the likelier a buy."""
    hours = x[:, FEATURE_NAMES.index("rfm_hours_since_last_event")]
    return np.asarray(-np.log1p(np.nan_to_num(hours, nan=1e6)))


def buy_day_rate(x: Array) -> Array:
    """The user's past buy-day rate (share of active days with a purchase, last 30 days)."""
    rate = x[:, FEATURE_NAMES.index("rfm_buy_day_rate")]
    return np.asarray(np.nan_to_num(rate, nan=0.0))


HEURISTICS = {"recency": recency, "buy_day_rate": buy_day_rate}
BASELINES = ("recency", "buy_day_rate", "logistic_regression")


class Baselines:
    """The declared baselines, fitted on one set of rows."""

    def __init__(self, x: Array, y: Array, features: list[str]) -> None:
        self.cols = _columns(features)
        self.platt = {
            name: LogisticRegression(C=1e6).fit(h(x).reshape(-1, 1), y)
            for name, h in HEURISTICS.items()
        }
        self.logreg = make_pipeline(
            SimpleImputer(strategy="median", keep_empty_features=True),
            StandardScaler(),
            LogisticRegression(max_iter=3000, C=0.1),
        ).fit(_log_features(x[:, self.cols]), y)

    def predict(self, x: Array) -> dict[str, Array]:
        out = {
            name: self.platt[name].predict_proba(h(x).reshape(-1, 1))[:, 1]
            for name, h in HEURISTICS.items()
        }
        out["logistic_regression"] = self.logreg.predict_proba(_log_features(x[:, self.cols]))[:, 1]
        return out


@dataclass
class Fitted:
    booster: lgb.Booster
    best_iteration: int
    calibration: Calibration
    calibration_choice: dict[str, Any]

    def raw(self, x: Array, cols: list[int]) -> Array:
        return np.asarray(self.booster.predict(x[:, cols], num_iteration=self.best_iteration))

    def predict(self, x: Array, cols: list[int]) -> Array:
        raw = self.raw(x, cols)
        return np.fromiter((self.calibration.apply(float(v)) for v in raw), float, len(raw))


def fit_lightgbm(x: Array, y: Array, fit: Array, stop: Array, features: list[str]) -> Fitted:
    """LightGBM on the `fit` rows, early stopping on the later `stop` rows, then a calibration
    chosen and fitted on the `stop` rows' predictions."""
    cols = _columns(features)
    train_set = lgb.Dataset(x[fit][:, cols], y[fit], feature_name=features, free_raw_data=False)
    stop_set = lgb.Dataset(x[stop][:, cols], y[stop], reference=train_set)
    booster = lgb.train(
        LGB_PARAMS,
        train_set,
        num_boost_round=MAX_ROUNDS,
        valid_sets=[stop_set],
        callbacks=[lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)],
    )
    best = booster.best_iteration or MAX_ROUNDS
    p_stop = np.asarray(booster.predict(x[stop][:, cols], num_iteration=best))
    calibration, choice = fit_calibration(p_stop, y[stop])
    return Fitted(booster, best, calibration, dict(choice))


def _check(ex: Examples) -> None:
    if len(ex.y) < 500 or ex.y.sum() < 20:
        raise TrainingError(
            f"too little data: {len(ex.y)} examples with {int(ex.y.sum())} positives; need at "
            "least 500 and 20 (a longer event log, or more users)"
        )
    periods = len(np.unique(ex.period))
    if periods < MIN_TRAIN_PERIODS + 2:
        raise TrainingError(
            f"the log covers {periods} label periods; the rolling-origin protocol needs at least "
            f"{MIN_TRAIN_PERIODS + 2} (a longer log, or a shorter --period)"
        )


def _both_classes(y: Array, least: int) -> bool:
    positives = int(y.sum())
    return positives >= least and len(y) - positives >= least


def run_protocol(ex: Examples, features: list[str], n_boot: int = BOOTSTRAP) -> dict[str, Any]:
    """Rolling origin, held-out users and bootstrap intervals (the module docstring)."""
    folds = [
        f
        for f in rolling_origin(ex.period, ex.users, min_train_days=MIN_TRAIN_PERIODS, y=ex.y)
        if _both_classes(ex.y[f.fit], 20) and _both_classes(ex.y[f.stop], 5)
    ]
    if not folds:
        raise TrainingError("no rolling-origin fold has a test period with both classes")
    cols = _columns(features)
    held = user_holdout(ex.users, HOLDOUT_SHARE)
    per_period: list[dict[str, Any]] = []
    pooled: dict[str, list[Array]] = {"lightgbm": [], "lightgbm_uncalibrated": []}
    for name in BASELINES:
        pooled[name] = []
    test_rows: list[Array] = []
    held_y: list[Array] = []
    held_p: list[Array] = []
    seen_y: list[Array] = []
    seen_p: list[Array] = []
    for fold in folds:
        model = fit_lightgbm(ex.x, ex.y, fold.fit, fold.stop, features)
        x_test = ex.x[fold.test]
        preds = {
            "lightgbm": model.predict(x_test, cols),
            "lightgbm_uncalibrated": model.raw(x_test, cols),
        }
        preds.update(Baselines(ex.x[fold.fit], ex.y[fold.fit], features).predict(x_test))
        for name, p in preds.items():
            pooled[name].append(p)
        test_rows.append(np.flatnonzero(fold.test))
        row: dict[str, Any] = {
            "period": int(fold.day),
            "cutoff": iso_utc(int(ex.t[fold.test][0])),
            "examples": int(fold.test.sum()),
            "positives": int(ex.y[fold.test].sum()),
            "fit_examples": int(fold.fit.sum()),
            "best_iteration": model.best_iteration,
            "calibration": model.calibration.kind,
        }
        for name, p in preds.items():
            row[name] = metrics(ex.y[fold.test], p)["roc_auc"]
        per_period.append(row)
        # the same fold without the held-out users: how the model does on users it never saw
        unseen = fit_lightgbm(ex.x, ex.y, fold.fit & ~held, fold.stop & ~held, features)
        for mask, ys, ps in ((held, held_y, held_p), (~held, seen_y, seen_p)):
            sel = fold.test & mask
            ys.append(ex.y[sel])
            ps.append(unseen.predict(ex.x[sel], cols))
    idx = np.concatenate(test_rows)
    pred = Predictions(
        y=ex.y[idx],
        users=ex.users[idx],
        p={name: np.concatenate(parts) for name, parts in pooled.items()},
    )
    boot = cluster_bootstrap(pred.y, pred.p, pred.users, n_boot=n_boot)
    names = ["lightgbm", *BASELINES]
    mean_auc = {n: float(np.nanmean([r[n] for r in per_period])) for n in pooled}
    best_baseline = max(BASELINES, key=lambda n: boot["models"][n]["roc_auc"])
    y_held, y_seen = np.concatenate(held_y), np.concatenate(seen_y)
    auc_held = metrics(y_held, np.concatenate(held_p))["roc_auc"]
    auc_seen = metrics(y_seen, np.concatenate(seen_p))["roc_auc"]
    return {
        "protocol": {
            "kind": "rolling origin over label periods; user-clustered bootstrap",
            "min_train_periods": MIN_TRAIN_PERIODS,
            "early_stopping_and_calibration": "the period just before each test period",
            "bootstrap_replicates": boot["replicates"],
            "baselines": list(BASELINES),
        },
        "per_period": per_period,
        "rolling_origin_mean_roc_auc": mean_auc,
        "pooled": {n: boot["models"][n] for n in [*names, "lightgbm_uncalibrated"]},
        "paired_roc_auc_diff": {b: boot["paired_roc_auc_diff"][b] for b in BASELINES},
        "best_baseline": best_baseline,
        "lightgbm_minus_best_baseline_roc_auc_ci": boot["paired_roc_auc_diff"][best_baseline]["ci"],
        "held_out_users": {
            "share": HOLDOUT_SHARE,
            "roc_auc_held_out": auc_held,
            "roc_auc_seen": auc_seen,
            "difference": auc_seen - auc_held,
            "examples_held_out": len(y_held),
        },
        "reliability": {
            n: reliability_curve(pred.y, pred.p[n]) for n in ("lightgbm", "lightgbm_uncalibrated")
        },
        "examples": len(pred.y),
        "users": len(np.unique(pred.users)),
        "_predictions": pred,
    }


def train(ex: Examples, n_boot: int = BOOTSTRAP) -> tuple[Fitted, list[str], dict[str, Any]]:
    """The protocol, then the shipped model: fitted on every period but the last, stopped early
    and calibrated on the last."""
    _check(ex)
    last = int(ex.period.max())
    fit, stop = ex.period < last, ex.period == last
    features, dropped = select_features(ex.x[fit])
    evaluation = run_protocol(ex, features, n_boot)
    model = fit_lightgbm(ex.x, ex.y, fit, stop, features)
    info = {
        "model_features": features,
        "excluded_features": dropped,
        "final_fit": {
            "fit_periods": f"until {iso_utc(int(ex.t[stop][0]) - 1)}",
            "fit_examples": int(fit.sum()),
            "stop_and_calibration_examples": int(stop.sum()),
            "best_iteration": model.best_iteration,
            "calibration": model.calibration.to_json(),
            "calibration_choice": model.calibration_choice,
        },
        "evaluation": evaluation,
    }
    return model, features, info


def write_model(
    out: Path,
    model: Fitted,
    features: list[str],
    info: dict[str, Any],
    provenance: dict[str, Any],
    version: str,
    spec: ExampleSpec,
) -> dict[str, Any]:
    """model.txt, metadata.json, report.md and plots. Nothing depends on the clock, so the same
    log and code rebuild the directory bit for bit."""
    from models import report

    out.mkdir(parents=True, exist_ok=True)
    model.booster.save_model(str(out / "model.txt"), num_iteration=model.best_iteration)
    predictions: Predictions = info["evaluation"].pop("_predictions")
    horizon_h = spec.horizon_ms / 3_600_000
    meta: dict[str, Any] = {
        "name": MODEL_NAME,
        "version": version,
        "task": f"P(the user buys within {horizon_h:g} h | the profile as of now)",
        "feature_names": features,
        "feature_types": ["float64"] * len(features),
        "missing_values": "NaN",
        "calibration": model.calibration.to_json(),
        "examples": spec.to_json(),
        "data": provenance,
        **clean(info),
        "training": {
            "library": "lightgbm",
            "params": LGB_PARAMS,
            "max_rounds": MAX_ROUNDS,
            "early_stopping_rounds": EARLY_STOPPING_ROUNDS,
        },
        "versions": {
            "lightgbm": lgb.__version__,
            "numpy": np.__version__,
            "scikit-learn": sklearn.__version__,
            "python": platform.python_version(),
        },
    }
    (out / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    report.write(out, meta, model.booster, predictions)
    return meta


def load_examples(
    fmt: str,
    path: Path | None,
    params: Any,
    spec: ExampleSpec | None = None,
    synthetic: Any = None,
    show_progress: bool = True,
) -> tuple[Examples, dict[str, Any]]:
    """Read a log, replay it through the job's code and build examples; also the provenance."""
    from tqdm import tqdm

    from models.dataset import build_examples, decode_all
    from udfs.digest import sha256_file
    from udfs.sources import message_bytes

    spec = spec or ExampleSpec()
    events, rejected = decode_all(message_bytes(fmt, path, spec=synthetic))
    if not events:
        raise TrainingError(f"no valid events in {path or fmt}")

    def progress(items: list[Any]) -> Any:
        return tqdm(items, unit="ev", desc="replaying", disable=not show_progress, mininterval=0.5)

    ex = build_examples(events, params, spec, progress=progress)
    ex.messages_rejected = rejected
    provenance: dict[str, Any] = {
        "source": Path(path).name if path else f"synthetic {synthetic}",
        "format": fmt,
        "events": len(events) + rejected,
        "rejected": rejected,
        "time_range": [iso_utc(ex.time_range_ms[0]), iso_utc(ex.time_range_ms[1])],
        "examples": len(ex.y),
        "users": len(np.unique(ex.users)),
        "positive_rate": float(ex.y.mean()) if len(ex.y) else 0.0,
    }
    if path is not None:
        provenance["sha256"] = sha256_file(Path(path))
        provenance["file"] = Path(path).name
    return ex, provenance


def run_training(
    fmt: str,
    path: Path | None,
    out: Path,
    version: str,
    params: Any,
    spec: ExampleSpec | None = None,
    synthetic: Any = None,
    show_progress: bool = True,
    n_boot: int = BOOTSTRAP,
) -> dict[str, Any]:
    spec = spec or ExampleSpec()
    ex, provenance = load_examples(fmt, path, params, spec, synthetic, show_progress)
    model, features, info = train(ex, n_boot)
    return write_model(out, model, features, info, provenance, version, spec)


def evaluate(model_dir: Path, ex: Examples, n_boot: int = BOOTSTRAP) -> dict[str, Any]:
    """The protocol on a log with the model directory's features, plus the shipped model's own
    (calibrated) metrics on every example of the log."""
    from udfs.scoring import Scorer

    scorer = Scorer(model_dir)  # the feature contract check, with its actionable message
    try:
        _check(ex)
        features = list(scorer.info.feature_names)
        result = run_protocol(ex, features, n_boot)
        result.pop("_predictions")
        shipped = np.fromiter((scorer.score(tuple(row)) for row in ex.x), float, len(ex.y))
        result["shipped_model"] = {"version": scorer.version, **metrics(ex.y, shipped)}
    finally:
        scorer.close()
    return clean(result)  # type: ignore[no-any-return]


def summary_json(result: dict[str, Any]) -> dict[str, Any]:
    """The `evaluate --json` object."""
    models: dict[str, Any] = {}
    for name in ("lightgbm", *BASELINES):
        m = result["pooled"][name]
        models[name] = {
            "roc_auc": m["roc_auc"],
            "roc_auc_ci": m["roc_auc_ci"],
            "pr_auc": m["pr_auc"],
            "pr_auc_ci": m["pr_auc_ci"],
            "log_loss": m["log_loss"],
            "log_loss_ci": m["log_loss_ci"],
            "ece": m["ece"],
            "ece_ci": m["ece_ci"],
            "rolling_origin_mean_roc_auc": result["rolling_origin_mean_roc_auc"][name],
        }
    return {
        "models": models,
        "best_baseline": result["best_baseline"],
        "lightgbm_minus_best_baseline_roc_auc_ci": result[
            "lightgbm_minus_best_baseline_roc_auc_ci"
        ],
        "paired_roc_auc_diff": result["paired_roc_auc_diff"],
        "held_out_users": result["held_out_users"],
        "shipped_model": result.get("shipped_model"),
        "examples": result["examples"],
        "users": result["users"],
    }
