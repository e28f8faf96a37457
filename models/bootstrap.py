"""Train the bootstrap purchase-propensity model on the synthetic shopper generator.

    python -m models.bootstrap [--out models/purchase_propensity/bootstrap-v1]

A stand-in until a model trained on real data replaces it: it exists so the stream job scores
every update from day one. Examples are the profile after each event (features from the same
`udfs` code the job runs); the label is "the user buys within the next 24 h of event time"
(excluding the current event). The split is by time: the last quarter of the window validates.
"""

from __future__ import annotations

import argparse
import bisect
import json
import platform
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from udfs.events import PURCHASE, validate_message
from udfs.features import FEATURE_NAMES, feature_vector
from udfs.profile import DAY_MS, Profile, ProfileParams, apply_event
from udfs.sources import SyntheticSpec, synthetic_events

NAME = "purchase_propensity"
VERSION = "bootstrap-v1"
SPEC = SyntheticSpec(events=80_000, users=6_000, seed=20250101, days=14)
DEFAULT_OUT = Path(__file__).resolve().parent / NAME / VERSION


def _auc(y: np.ndarray[Any, Any], p: np.ndarray[Any, Any]) -> float:
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p))
    ranks[order] = np.arange(1, len(p) + 1)
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


Arrays = tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]


def build_examples(spec: SyntheticSpec, params: ProfileParams) -> Arrays:
    events = [validate_message(m, now_ms=2**62) for m in synthetic_events(spec)]
    purchases: dict[str, list[int]] = defaultdict(list)
    for e in events:
        if e.event_type == PURCHASE:
            purchases[e.user_id].append(e.event_time_ms)
    profiles: dict[str, Profile] = {}
    rows, labels, times = [], [], []
    for e in events:
        profile = profiles.setdefault(e.user_id, Profile())
        apply_event(profile, e, params)
        times_bought = purchases.get(e.user_id, [])
        i = bisect.bisect_right(times_bought, e.event_time_ms)
        label = i < len(times_bought) and times_bought[i] <= e.event_time_ms + DAY_MS
        rows.append(feature_vector(profile))
        labels.append(1.0 if label else 0.0)
        times.append(e.event_time_ms)
    return np.asarray(rows), np.asarray(labels), np.asarray(times)


def train(out: Path) -> dict[str, object]:
    params = ProfileParams()
    x, y, t = build_examples(SPEC, params)
    cut = np.quantile(t, 0.75)
    tr, va = t < cut, t >= cut
    train_set = lgb.Dataset(x[tr], y[tr], feature_name=list(FEATURE_NAMES), free_raw_data=False)
    valid_set = lgb.Dataset(x[va], y[va], reference=train_set)
    lgb_params = {
        "objective": "binary",
        "learning_rate": 0.05,
        "num_leaves": 15,
        "min_data_in_leaf": 50,
        "feature_fraction": 0.9,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "seed": 7,
        "deterministic": True,
        "num_threads": 1,
        "verbose": -1,
    }
    booster = lgb.train(
        lgb_params,
        train_set,
        num_boost_round=400,
        valid_sets=[valid_set],
        callbacks=[lgb.early_stopping(30, verbose=False)],
    )
    p = np.asarray(booster.predict(x[va], num_iteration=booster.best_iteration))
    base_rate = float(y[tr].mean())
    eps = 1e-12
    logloss = float(-np.mean(y[va] * np.log(p + eps) + (1 - y[va]) * np.log(1 - p + eps)))
    base_logloss = float(-np.mean(y[va] * np.log(base_rate) + (1 - y[va]) * np.log(1 - base_rate)))
    out.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(out / "model.txt"), num_iteration=booster.best_iteration)
    meta: dict[str, object] = {
        "name": NAME,
        "version": VERSION,
        "task": "P(purchase within the next 24 h of event time | profile after this event)",
        "feature_names": list(FEATURE_NAMES),
        "feature_types": ["float64"] * len(FEATURE_NAMES),
        "data": {
            "source": "synthetic generator udfs.sources.synthetic_events",
            "spec": {
                "events": SPEC.events,
                "users": SPEC.users,
                "seed": SPEC.seed,
                "days": SPEC.days,
                "start": datetime.fromtimestamp(SPEC.start_ms / 1000, UTC).isoformat(),
            },
            "examples": len(y),
            "positive_rate": float(y.mean()),
        },
        "split": {
            "kind": "time",
            "validation_from_ms": int(cut),
            "train_examples": int(tr.sum()),
            "validation_examples": int(va.sum()),
        },
        "training": {"params": lgb_params, "best_iteration": booster.best_iteration},
        "metrics_validation": {
            "roc_auc": _auc(y[va], p),
            "log_loss": logloss,
            "log_loss_base_rate": base_logloss,
        },
        "versions": {
            "lightgbm": lgb.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "note": "bootstrap model on synthetic data; replace with one trained on real events",
    }
    (out / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    meta = train(args.out)
    print(json.dumps(meta["metrics_validation"], indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
