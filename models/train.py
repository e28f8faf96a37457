"""Train and evaluate the purchase-propensity model on an event log.

    profilestream train --events FILE --format taobao|rees46|proto|synthetic [--version V]
    profilestream evaluate --model DIR --events FILE --format ...

Examples come from `models.dataset` (point-in-time snapshots through the job's own code). The
split is by time, with a gap of one label horizon between parts so no label window crosses into
the next part: train | early stopping | test. LightGBM is compared on the test part with two
baselines fitted on the same training part: a recency/frequency heuristic (Platt-scaled) and a
logistic regression on the same features.
"""

from __future__ import annotations

import json
import platform
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import sklearn
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from models.dataset import Array, Examples
from models.errors import TrainingError
from udfs.features import FEATURE_NAMES
from udfs.profile import DAY_MS

MODEL_NAME = "purchase_propensity"
MODELS_DIR = Path(__file__).resolve().parent / MODEL_NAME
LGB_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.03,
    "num_leaves": 15,
    "min_data_in_leaf": 300,
    "feature_fraction": 0.7,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 5.0,
    "seed": 7,
    "deterministic": True,
    "force_row_wise": True,
    "num_threads": 1,
    "verbose": -1,
}


@dataclass(frozen=True)
class Split:
    train_end_ms: int  # training period: t < train_end (one label horizon before the test)
    test_start_ms: int  # test period: t >= test_start
    holdout_share: float  # users of the training period held out for early stopping


def time_split(
    t: Array, horizon_ms: int = DAY_MS, test_share: float = 0.25, holdout_share: float = 0.2
) -> Split:
    """The test period is the last `test_share` of snapshots by time (a quantile, robust to a
    few stray timestamps); training ends one label horizon before it, so no training label
    looks into the test period."""
    test_start = int(np.quantile(t, 1 - test_share))
    return Split(
        train_end_ms=test_start - horizon_ms, test_start_ms=test_start, holdout_share=holdout_share
    )


def _holdout(users: Array, share: float) -> Array:
    """A stable, user-grouped sample: all of a user's snapshots fall on the same side."""
    cut = int(share * 1000)
    return np.fromiter(
        (zlib.crc32(str(u).encode()) % 1000 < cut for u in users), dtype=bool, count=len(users)
    )


def masks(ex: Examples, split: Split) -> tuple[Array, Array, Array]:
    """(fit, early stopping, test): early stopping uses held-out users of the training period."""
    period = ex.t < split.train_end_ms
    held = _holdout(ex.users, split.holdout_share)
    return period & ~held, period & held, ex.t >= split.test_start_ms


def _ece(y: Array, p: Array, bins: int = 10) -> float:
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            total += sel.mean() * abs(float(p[sel].mean()) - float(y[sel].mean()))
    return total


def metrics(y: Array, p: Array) -> dict[str, float]:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "ece": _ece(y, p),
        "positives": int(y.sum()),
        "examples": len(y),
    }


def rf_heuristic(x: Array) -> Array:
    """Recency/frequency rule of thumb: recent carts and purchases, then recent views."""
    col = {name: i for i, name in enumerate(FEATURE_NAMES)}
    filled = np.nan_to_num(x, nan=0.0)
    score: Array = (
        filled[:, col["cnt_cart_24h"]]
        + filled[:, col["cnt_purchase_7d"]]
        + 0.1 * filled[:, col["cnt_view_24h"]]
        + 0.5 * filled[:, col["cnt_view_1h"]] / (1 + filled[:, col["cnt_view_1h"]])
    )
    return score


class Baselines:
    def __init__(self, x: Array, y: Array) -> None:
        raw = rf_heuristic(x).reshape(-1, 1)
        self.platt = LogisticRegression().fit(np.log1p(raw), y)
        self.logreg = make_pipeline(
            SimpleImputer(strategy="median", keep_empty_features=True),
            StandardScaler(),
            LogisticRegression(max_iter=3000, C=1.0),
        ).fit(_log_features(x), y)

    def predict(self, x: Array) -> dict[str, Array]:
        raw = rf_heuristic(x).reshape(-1, 1)
        return {
            "rf_heuristic": self.platt.predict_proba(np.log1p(raw))[:, 1],
            "logistic_regression": self.logreg.predict_proba(_log_features(x))[:, 1],
        }


def _log_features(x: Array) -> Array:
    """Counts and amounts are heavy-tailed: log1p of the non-negative features for the linear
    model (trees do not care)."""
    out: Array = np.sign(x) * np.log1p(np.abs(x))
    return out


def train(ex: Examples, horizon_ms: int = DAY_MS) -> tuple[lgb.Booster, dict[str, Any]]:
    if len(ex.y) < 1000 or ex.y.sum() < 20:
        raise TrainingError(
            f"too little data: {len(ex.y)} snapshots with {int(ex.y.sum())} positives; need at "
            "least 1000 and 20 (a longer event log, or a longer time range)"
        )
    split = time_split(ex.t, horizon_ms)
    tr, st, te = masks(ex, split)
    period = tr | st
    for name, m in (("train", tr), ("early-stopping", st), ("test", te)):
        if m.sum() < 100 or ex.y[m].sum() < 5:
            raise TrainingError(
                f"the {name} part has {int(m.sum())} snapshots and "
                f"{int(ex.y[m].sum())} positives: the log spans too little time"
            )
    names = list(FEATURE_NAMES)
    train_set = lgb.Dataset(ex.x[tr], ex.y[tr], feature_name=names, free_raw_data=False)
    stop_set = lgb.Dataset(ex.x[st], ex.y[st], reference=train_set)
    booster = lgb.train(
        LGB_PARAMS,
        train_set,
        num_boost_round=1000,
        valid_sets=[stop_set],
        callbacks=[lgb.early_stopping(100, verbose=False)],
    )
    baselines = Baselines(ex.x[period], ex.y[period])
    p_test = {
        "lightgbm": np.asarray(booster.predict(ex.x[te], num_iteration=booster.best_iteration))
    }
    p_test.update(baselines.predict(ex.x[te]))
    results = {name: metrics(ex.y[te], p) for name, p in p_test.items()}
    info = {
        "split": {
            "kind": "by time; early stopping on 20% of users held out of the training period",
            "train": {
                "until": _iso(split.train_end_ms),
                "examples": int(tr.sum()),
                "positives": int(ex.y[tr].sum()),
            },
            "early_stopping": {
                "until": _iso(split.train_end_ms),
                "examples": int(st.sum()),
                "positives": int(ex.y[st].sum()),
            },
            "test": {
                "from": _iso(split.test_start_ms),
                "examples": int(te.sum()),
                "positives": int(ex.y[te].sum()),
            },
        },
        "metrics_test": results,
        "best_iteration": booster.best_iteration,
        "_predictions": (ex.y[te], p_test),
    }
    return booster, info


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def write_model(
    out: Path,
    booster: lgb.Booster,
    info: dict[str, Any],
    provenance: dict[str, Any],
    version: str,
    horizon_ms: int,
) -> dict[str, Any]:
    from models import report

    out.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(out / "model.txt"), num_iteration=booster.best_iteration)
    y_test, predictions = info.pop("_predictions")
    meta: dict[str, Any] = {
        "name": MODEL_NAME,
        "version": version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "task": f"P(the user buys within {horizon_ms // 3_600_000} h of event time | the "
        "profile right after this event)",
        "feature_names": list(FEATURE_NAMES),
        "feature_types": ["float64"] * len(FEATURE_NAMES),
        "missing_values": "NaN",
        "data": provenance,
        **info,
        "training": {"library": "lightgbm", "params": LGB_PARAMS},
        "versions": {
            "lightgbm": lgb.__version__,
            "numpy": np.__version__,
            "scikit-learn": sklearn.__version__,
            "python": platform.python_version(),
        },
    }
    (out / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    report.write(out, meta, booster, y_test, predictions)
    return meta


def evaluate(model_dir: Path, ex: Examples) -> dict[str, float]:
    from udfs.scoring import Scorer

    Scorer(model_dir).close()  # the feature contract check, with its actionable message
    p = np.asarray(lgb.Booster(model_file=str(model_dir / "model.txt")).predict(ex.x))
    if len(np.unique(ex.y)) < 2:
        raise TrainingError("the log has no positive (or no negative) examples to evaluate on")
    return metrics(ex.y, p)


def load_examples(
    fmt: str,
    path: Path | None,
    params: Any,
    horizon_ms: int = DAY_MS,
    spec: Any = None,
    show_progress: bool = True,
) -> tuple[Examples, dict[str, Any]]:
    """Read a log, replay it through the job's code and build snapshots; also the provenance."""
    from tqdm import tqdm

    from flink_jobs.runtime import sha256_file
    from models.dataset import build_examples, decode_all
    from udfs.sources import message_bytes

    events, rejected = decode_all(message_bytes(fmt, path, spec=spec))
    if not events:
        raise TrainingError(f"no valid events in {path or fmt}")

    def progress(items: list[Any]) -> Any:
        return tqdm(items, unit="ev", desc="replaying", disable=not show_progress, mininterval=0.5)

    ex = build_examples(events, params, horizon_ms, progress=progress)
    ex.messages_rejected = rejected
    provenance: dict[str, Any] = {
        "source": str(path) if path else f"synthetic {spec}",
        "format": fmt,
        "events": len(events) + rejected,
        "rejected": rejected,
        "time_range": [_iso(ex.time_range_ms[0]), _iso(ex.time_range_ms[1])],
        "examples": len(ex.y),
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
    spec: Any = None,
    horizon_ms: int = DAY_MS,
    show_progress: bool = True,
) -> dict[str, Any]:
    ex, provenance = load_examples(fmt, path, params, horizon_ms, spec, show_progress)
    booster, info = train(ex, horizon_ms)
    return write_model(out, booster, info, provenance, version, horizon_ms)
