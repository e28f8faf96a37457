"""The training report: markdown with every number, and ROC, precision-recall, calibration and
feature-importance plots (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightgbm as lgb
import matplotlib
import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import precision_recall_curve, roc_curve

matplotlib.use("Agg")
import matplotlib.pyplot as plt

Array = np.ndarray[Any, Any]
LABELS = {
    "lightgbm": "LightGBM",
    "logistic_regression": "logistic regression",
    "rf_heuristic": "recency/frequency heuristic",
}


def _plot(path: Path, title: str, xlabel: str, ylabel: str) -> None:
    plt.title(title)
    plt.xlabel(xlabel)
    plt.ylabel(ylabel)
    plt.legend(loc="best", fontsize=8)
    plt.grid(alpha=0.3)
    plt.tight_layout()
    plt.savefig(path, dpi=110)
    plt.close()


def write(
    out: Path, meta: dict[str, Any], booster: lgb.Booster, y: Array, predictions: dict[str, Array]
) -> None:
    m = meta["metrics_test"]
    plt.figure(figsize=(5.5, 4.5))
    for name, p in predictions.items():
        fpr, tpr, _ = roc_curve(y, p)
        plt.plot(fpr, tpr, label=f"{LABELS[name]} (AUC {m[name]['roc_auc']:.3f})")
    plt.plot([0, 1], [0, 1], "k--", lw=0.8)
    _plot(out / "roc.png", "ROC, test period", "false positive rate", "true positive rate")

    plt.figure(figsize=(5.5, 4.5))
    for name, p in predictions.items():
        precision, recall, _ = precision_recall_curve(y, p)
        plt.plot(recall, precision, label=f"{LABELS[name]} (AP {m[name]['pr_auc']:.3f})")
    plt.axhline(float(y.mean()), color="k", ls="--", lw=0.8, label="base rate")
    _plot(out / "precision_recall.png", "Precision-recall, test period", "recall", "precision")

    plt.figure(figsize=(5.5, 4.5))
    for name, p in predictions.items():
        frac, mean_pred = calibration_curve(y, p, n_bins=10, strategy="quantile")
        plt.plot(
            mean_pred, frac, marker="o", ms=3, label=f"{LABELS[name]} (ECE {m[name]['ece']:.3f})"
        )
    plt.plot([0, 1], [0, 1], "k--", lw=0.8)
    _plot(
        out / "calibration.png",
        "Calibration, test period",
        "mean predicted probability",
        "observed frequency",
    )

    gain = booster.feature_importance(importance_type="gain")
    order = np.argsort(gain)[::-1][:25][::-1]
    names = booster.feature_name()
    plt.figure(figsize=(6, 6.5))
    plt.barh([names[i] for i in order], gain[order] / gain.sum())
    plt.title("LightGBM feature importance (share of gain, top 25)")
    plt.xlabel("share of total gain")
    plt.tight_layout()
    plt.savefig(out / "feature_importance.png", dpi=110)
    plt.close()

    (out / "report.md").write_text(_markdown(meta, names, gain), encoding="utf-8")


def _part(name: str, period: str, part: dict[str, Any]) -> str:
    return f"| {name} | {period} | {part['examples']:,} | {part['positives']:,} |"


def _markdown(meta: dict[str, Any], names: list[str], gain: Array) -> str:
    m = meta["metrics_test"]
    split = meta["split"]
    data = meta["data"]
    rows = "\n".join(
        f"| {LABELS[name]} | {r['roc_auc']:.4f} | {r['pr_auc']:.4f} | {r['log_loss']:.4f} | "
        f"{r['brier']:.4f} | {r['ece']:.4f} |"
        for name, r in m.items()
    )
    best: dict[str, str] = {}
    for k in ("roc_auc", "pr_auc", "log_loss", "brier", "ece"):
        ranked = sorted(m, key=lambda name: float(m[name][k]))
        best[k] = ranked[-1] if k in ("roc_auc", "pr_auc") else ranked[0]
    verdict = "\n".join(
        f"- best {k.replace('_', '-')}: {LABELS[n]}"
        + ("" if n == "lightgbm" else " (LightGBM does **not** win this metric)")
        for k, n in best.items()
    )
    top = np.argsort(gain)[::-1][:10]
    importance = "\n".join(f"| {names[i]} | {gain[i] / gain.sum():.3f} |" for i in top)
    test = split["test"]
    parts = "\n".join(
        [
            _part("train", "until " + split["train"]["until"], split["train"]),
            _part(
                "early stopping (held-out users)",
                "until " + split["early_stopping"]["until"],
                split["early_stopping"],
            ),
            _part("test", "from " + test["from"], test),
        ]
    )
    return f"""# {meta["name"]} {meta["version"]}

{meta["task"]}.

## Data
- source: `{data["source"]}` ({data.get("format")}), sha256 `{data.get("sha256", "-")}`
- events read: {data["events"]:,}; rejected by the contract: {data["rejected"]:,}
- event time range: {data["time_range"][0]} .. {data["time_range"][1]}
- snapshots (one after each folded event whose label window is observable): {data["examples"]:,},
  positive rate {data["positive_rate"]:.4f}

## Split
By time: the test period is the last quarter of snapshots; training ends one label horizon
before it, so no training label looks into the test period. Early stopping uses 20 % of the
training period's users, held out whole.

| part | period | examples | positives |
|---|---|---|---|
{parts}

LightGBM stopped at iteration {meta["best_iteration"]}.

## Test metrics
| model | ROC-AUC | PR-AUC | log-loss | Brier | ECE (10 bins) |
|---|---|---|---|---|---|
{rows}

Base rate on the test period: {test["positives"] / max(1, test["examples"]):.4f}.

{verdict}

Baselines, fitted on the same training part: the recency/frequency heuristic scores
`carts_24h + purchases_7d + 0.1 * views_24h + 0.5 * views_1h / (1 + views_1h)` and is mapped to
a probability by Platt scaling; the logistic regression uses the same features as LightGBM
(sign-preserving log1p, median imputation, standardisation).

## Plots
![ROC](roc.png) ![Precision-recall](precision_recall.png)
![Calibration](calibration.png) ![Feature importance](feature_importance.png)

## Most important features (share of LightGBM gain)
| feature | share |
|---|---|
{importance}
"""
