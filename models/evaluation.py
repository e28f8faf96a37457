"""The evaluation protocol shared by training and `profilestream evaluate`.

- `metrics`: ranking (ROC AUC, average precision), probabilistic (log-loss, Brier) and
  calibration (ECE, equal-width bins) quality of one model on one set of examples.
- `rolling_origin`: day-by-day test folds whose training and early-stopping labels all end before
  the test cut-off (see its docstring for the exact rule).
- `user_holdout`: a stable user-grouped sample (all of a user's rows on one side).
- `cluster_bootstrap`: percentile confidence intervals that resample users, not rows (a user's
  snapshots are correlated), with paired ROC AUC differences against a reference model.
- `fit_calibration`: Platt or isotonic, whichever has the lower cross-validated log-loss on the
  validation rows, as a `udfs.calibration.Calibration` for the scorer.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score

from udfs.calibration import IDENTITY, Calibration
from udfs.params import HOUR_MS

Array = np.ndarray[Any, Any]
DAY_MS: Final = 86_400_000
EPS: Final = 1e-7  # probability clip for log-loss (and for Platt's logit)
ISOTONIC_EPS: Final = 1e-4  # isotonic probabilities are clipped to this when scored
METRICS: Final = ("roc_auc", "pr_auc", "log_loss", "brier", "ece")
MIN_CALIBRATION_ROWS: Final = 50
MIN_CALIBRATION_CLASS: Final = 5
PLATT_C: Final = 1e6  # practically unpenalized, but finite when the validation rows separate
_BOOT_CELLS: Final = 1_000_000  # replicate-weight matrix cells per bootstrap chunk (8 MB)


def _labels(y: Array, what: str = "y") -> Array:
    out = np.asarray(y, dtype=np.float64).ravel()
    if not np.isin(out, (0.0, 1.0)).all():
        raise ValueError(f"{what} must hold only 0 and 1")
    return out


def _arrays(y: Array, p: Array) -> tuple[Array, Array]:
    yy = _labels(y)
    pp = np.asarray(p, dtype=np.float64).ravel()
    if yy.shape != pp.shape:
        raise ValueError(f"y and p lengths differ ({len(yy)} != {len(pp)})")
    if not np.isfinite(pp).all():
        raise ValueError("p has NaN or infinite values")
    return yy, pp


def _bin_index(p: Array, bins: int) -> Array:
    """Equal-width bins on [0, 1]: [0, 1/bins), ..., [1 - 1/bins, 1]."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)


def _row_log_loss(y: Array, p: Array) -> Array:
    q = np.clip(p, EPS, 1 - EPS)
    return np.asarray(-(y * np.log(q) + (1 - y) * np.log1p(-q)))


def _log_loss(y: Array, p: Array) -> float:
    return float(_row_log_loss(y, p).mean())


def ece(y: Array, p: Array, bins: int = 10) -> float:
    """Expected calibration error: sum over equal-width bins of (bin share) x |mean p - rate|.
    NaN when there are no examples."""
    yy, pp = _arrays(y, p)
    if not len(yy):
        return math.nan
    gap = np.bincount(_bin_index(pp, bins), weights=pp - yy, minlength=bins)
    return float(np.abs(gap).sum() / len(yy))


def metrics(y: Array, p: Array) -> dict[str, float]:
    """roc_auc, pr_auc (average precision), log_loss (p clipped to [1e-7, 1 - 1e-7]), brier, ece,
    positives, examples. With a single class in y, roc_auc and pr_auc are NaN."""
    yy, pp = _arrays(y, p)
    if not len(yy):
        raise ValueError("metrics: no examples")
    positives = int(yy.sum())
    both = 0 < positives < len(yy)
    return {
        "roc_auc": float(roc_auc_score(yy, pp)) if both else math.nan,
        "pr_auc": float(average_precision_score(yy, pp)) if both else math.nan,
        "log_loss": _log_loss(yy, pp),
        "brier": float(np.mean((pp - yy) ** 2)),
        "ece": ece(yy, pp),
        "positives": positives,
        "examples": len(yy),
    }


def reliability_curve(y: Array, p: Array, bins: int = 10) -> list[tuple[float, float, int]]:
    """(mean predicted, observed rate, count) of each non-empty equal-width bin, in bin order."""
    yy, pp = _arrays(y, p)
    idx = _bin_index(pp, bins)
    count = np.bincount(idx, minlength=bins)
    sum_p = np.bincount(idx, weights=pp, minlength=bins)
    sum_y = np.bincount(idx, weights=yy, minlength=bins)
    return [
        (float(sum_p[b] / count[b]), float(sum_y[b] / count[b]), int(count[b]))
        for b in range(bins)
        if count[b]
    ]


def day_index(t_ms: Array, tz_offset_hours: float) -> Array:
    """The local day number (int64, days since 1970-01-01 local) of each timestamp (ms since the
    epoch) in the fixed-offset time zone UTC+tz_offset_hours."""
    if not -24 < tz_offset_hours < 24:
        raise ValueError(f"tz_offset_hours must be within (-24, 24), got {tz_offset_hours}")
    offset = round(tz_offset_hours * HOUR_MS)
    t = np.asarray(t_ms)
    if np.issubdtype(t.dtype, np.integer):
        return np.asarray((t.astype(np.int64) + offset) // DAY_MS)
    return np.asarray(np.floor((t.astype(np.float64) + offset) / DAY_MS), dtype=np.int64)


@dataclass(frozen=True, eq=False)
class Fold:
    name: str  # "day+K": the test day, K days after the first day
    day: int  # the test day index
    fit: Array  # bool mask: training examples
    stop: Array  # bool mask: early-stopping examples
    test: Array  # bool mask: test examples


def rolling_origin(
    day: Array,
    users: Array,
    min_train_days: int = 3,
    stop_days: int = 1,
    *,
    y: Array | None = None,
) -> list[Fold]:
    """Rolling-origin folds, one per test day, with a one-day label horizon.

    `day[i]` is the day index of example i's cut-off; its label window is (cut-off of day d,
    cut-off of day d + 1]. For each test day D from first + min_train_days + stop_days to the
    last day:

        test = day == D
        stop = D - stop_days <= day <= D - 1    labels end at cut-off d + 1 <= D
        fit  = day <= D - stop_days - 1         labels end at cut-off d + 1 <= D - stop_days

    so every early-stopping label is known at the test cut-off and every fit label is known at
    the first early-stopping cut-off: nothing used to fit or stop looks into the test window.
    The first fold has exactly `min_train_days` fit days. Folds whose fit, stop or test set is
    empty are skipped, and so are folds whose test set has a single class when `y` is given.

    The split is by time only: `users` (one id per example) is checked to align with `day`; a
    user may appear in fit, stop and test, as in production.
    """
    if min_train_days < 1 or stop_days < 1:
        raise ValueError(
            f"min_train_days and stop_days must be >= 1, got {min_train_days}, {stop_days}"
        )
    d = np.asarray(day).ravel()
    if len(d) and not np.issubdtype(d.dtype, np.integer):
        raise ValueError(f"day must hold integer day indexes, got dtype {d.dtype}")
    d = d.astype(np.int64)
    if len(np.asarray(users).ravel()) != len(d):
        raise ValueError(f"day and users lengths differ ({len(d)} != {len(np.asarray(users))})")
    labels = None if y is None else _labels(y)
    if labels is not None and len(labels) != len(d):
        raise ValueError(f"day and y lengths differ ({len(d)} != {len(labels)})")
    if not len(d):
        return []
    first, last = int(d.min()), int(d.max())
    folds: list[Fold] = []
    for test_day in range(first + min_train_days + stop_days, last + 1):
        test = d == test_day
        stop = (d >= test_day - stop_days) & (d <= test_day - 1)
        fit = d <= test_day - stop_days - 1
        if not (fit.any() and stop.any() and test.any()):
            continue
        if labels is not None and np.ptp(labels[test]) == 0:
            continue
        folds.append(Fold(f"day+{test_day - first}", test_day, fit, stop, test))
    return folds


def _user_bytes(user: object) -> bytes:
    return user if isinstance(user, bytes) else str(user).encode()


def user_holdout(users: Array, share: float = 0.2, salt: str = "holdout") -> Array:
    """A stable bool mask: user u is held out when crc32(salt + str(u)) % 1000 < share * 1000,
    so all of a user's rows fall on the same side, the same way on every run."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be within [0, 1], got {share}")
    u = np.asarray(users).ravel()
    if not len(u):
        return np.zeros(0, dtype=bool)
    unique, inverse = np.unique(u, return_inverse=True)
    cut = round(share * 1000)
    prefix = salt.encode()
    held = np.fromiter(
        (zlib.crc32(prefix + _user_bytes(v)) % 1000 < cut for v in unique),
        dtype=bool,
        count=len(unique),
    )
    return np.asarray(held[inverse.ravel()], dtype=bool)


class ScoredSample:
    """One model's predictions, prepared so that a metric under row weights (a bootstrap
    replicate: each row weighted by how many times its user was drawn) costs no sort."""

    def __init__(self, y: Array, p: Array, bins: int = 10) -> None:
        self.order = np.argsort(p, kind="stable")
        ps = p[self.order]
        self.starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])  # tie groups, ascending
        self.y_sorted = y[self.order]
        self.loss = _row_log_loss(y, p)
        self.squared = (p - y) ** 2
        self.gap = np.zeros((len(p), bins))
        self.gap[np.arange(len(p)), _bin_index(p, bins)] = p - y

    def replicate(self, w: Array, pos: Array, neg: Array, names: Sequence[str]) -> dict[str, Array]:
        """Every metric in `names` for each row of the (replicates x rows) weight matrix `w`;
        pos/neg are the weighted class totals (both > 0 on valid replicates)."""
        out: dict[str, Array] = {}
        total = pos + neg
        with np.errstate(divide="ignore", invalid="ignore"):
            if "roc_auc" in names or "pr_auc" in names:
                ws = w[:, self.order]
                pg = np.add.reduceat(ws * self.y_sorted, self.starts, axis=1)
                ng = np.add.reduceat(ws, self.starts, axis=1) - pg
                neg_below = np.cumsum(ng, axis=1) - ng
                if "roc_auc" in names:
                    out["roc_auc"] = (pg * (neg_below + 0.5 * ng)).sum(axis=1) / (pos * neg)
                if "pr_auc" in names:
                    tp = pos[:, None] - (np.cumsum(pg, axis=1) - pg)  # positives scored >= group
                    called = tp + neg[:, None] - neg_below
                    precision = np.divide(tp, called, out=np.zeros_like(tp), where=called > 0)
                    out["pr_auc"] = (pg * precision).sum(axis=1) / pos
            if "log_loss" in names:
                out["log_loss"] = (w @ self.loss) / total
            if "brier" in names:
                out["brier"] = (w @ self.squared) / total
            if "ece" in names:
                out["ece"] = np.abs(w @ self.gap).sum(axis=1) / total
        return out


def _interval(values: Array) -> list[float]:
    if not len(values):
        return [math.nan, math.nan]
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def cluster_bootstrap(
    y: Array,
    preds: dict[str, Array],
    users: Array,
    n_boot: int = 1000,
    seed: int = 7,
    reference: str = "lightgbm",
    metric_names: Sequence[str] = METRICS,
) -> dict[str, Any]:
    """User-level (cluster) bootstrap: each replicate draws as many users as there are, with
    replacement, and takes all rows of each drawn user as many times as it was drawn. Every
    metric of every model is recomputed on each replicate; replicates with a single class are
    skipped. Intervals are 95 % percentile intervals.

    Returns {"models": {name: {metric: point estimate, metric_ci: [lo, hi]}},
             "paired_roc_auc_diff": {baseline: {"mean": reference - baseline on all rows,
                                                "ci": [lo, hi] of the per-replicate difference}},
             "n_boot": n_boot, "replicates": replicates used, "users": distinct users}.
    """
    yy = _labels(y)
    if not preds:
        raise ValueError("cluster_bootstrap: no predictions")
    if reference not in preds:
        raise ValueError(f"cluster_bootstrap: reference model {reference!r} not in {sorted(preds)}")
    names = tuple(metric_names)
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(f"cluster_bootstrap: unknown metric {unknown[0]!r} (known: {METRICS})")
    if n_boot < 1:
        raise ValueError(f"cluster_bootstrap: n_boot must be >= 1, got {n_boot}")
    u = np.asarray(users).ravel()
    if len(u) != len(yy):
        raise ValueError(f"y and users lengths differ ({len(yy)} != {len(u)})")
    if not len(yy):
        raise ValueError("cluster_bootstrap: no examples")
    probabilities = {name: _arrays(yy, p)[1] for name, p in preds.items()}
    points = {name: metrics(yy, p) for name, p in probabilities.items()}
    needed = tuple(dict.fromkeys((*names, "roc_auc")))
    scored = {name: ScoredSample(yy, p) for name, p in probabilities.items()}

    _, inverse = np.unique(u, return_inverse=True)
    inverse = inverse.ravel()
    n_users = int(inverse.max()) + 1
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, _BOOT_CELLS // max(len(yy), n_users)))
    draws: dict[str, dict[str, list[Array]]] = {n: {m: [] for m in needed} for n in preds}
    valid_parts: list[Array] = []
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        picks = rng.integers(0, n_users, size=(k, n_users))
        picks += (np.arange(k) * n_users)[:, None]
        counts = np.bincount(picks.ravel(), minlength=k * n_users).reshape(k, n_users)
        w = counts[:, inverse].astype(np.float64)
        pos = w @ yy
        neg = w.sum(axis=1) - pos
        valid_parts.append((pos > 0) & (neg > 0))
        for name, s in scored.items():
            for metric, values in s.replicate(w, pos, neg, needed).items():
                draws[name][metric].append(values)
    valid = np.concatenate(valid_parts)
    sampled = {
        name: {m: np.concatenate(parts)[valid] for m, parts in per.items()}
        for name, per in draws.items()
    }

    models: dict[str, dict[str, Any]] = {}
    for name in preds:
        entry: dict[str, Any] = {}
        for metric in names:
            entry[metric] = points[name][metric]
            entry[f"{metric}_ci"] = _interval(sampled[name][metric])
        models[name] = entry
    paired: dict[str, dict[str, Any]] = {}
    for base in preds:
        if base == reference:
            continue
        diff = sampled[reference]["roc_auc"] - sampled[base]["roc_auc"]
        paired[base] = {
            "mean": points[reference]["roc_auc"] - points[base]["roc_auc"],
            "ci": _interval(diff),
        }
    return {
        "models": models,
        "paired_roc_auc_diff": paired,
        "n_boot": n_boot,
        "replicates": int(valid.sum()),
        "users": n_users,
    }


def _logit(p: Array) -> Array:
    q = np.clip(p, EPS, 1 - EPS)
    return np.asarray(np.log(q / (1 - q)))


def _fit_platt(p: Array, y: Array) -> Calibration:
    lr = LogisticRegression(C=PLATT_C, tol=1e-10, max_iter=1000)
    lr.fit(_logit(p)[:, None], y.astype(np.int64))
    return Calibration("platt", a=float(lr.coef_[0, 0]), b=float(lr.intercept_[0]))


def _platt(cal: Calibration, p: Array) -> Array:
    z = cal.a * _logit(p) + cal.b
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)))  # the logistic function, overflow-free


def _fit_isotonic(p: Array, y: Array) -> IsotonicRegression:
    return IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(p, y)


def _isotonic_calibration(iso: IsotonicRegression) -> Calibration:
    return Calibration(
        "isotonic",
        x=tuple(float(v) for v in iso.X_thresholds_),
        y=tuple(float(v) for v in iso.y_thresholds_),
    )


def fit_calibration(p_val: Array, y_val: Array) -> tuple[Calibration, dict[str, float | str]]:
    """Platt (logistic regression on logit(p)) or isotonic, whichever has the lower 2-fold
    cross-validated log-loss on the validation rows, refitted on all of them.

    The folds alternate within each class (deterministic, both classes in each fold). Isotonic
    probabilities are clipped to [1e-4, 1 - 1e-4] when scored, Platt's and the raw ones to
    [1e-7, 1 - 1e-7]. The report holds the cross-validated log-losses "platt", "isotonic" and
    "identity" (the raw probabilities), "chosen" and "reason". With fewer than 50 rows or fewer
    than 5 examples of either class the result is the identity (platt/isotonic NaN).
    """
    y, p = _arrays(y_val, p_val)
    n, positives = len(y), int(y.sum())
    negatives = n - positives
    report: dict[str, float | str] = {"identity": _log_loss(y, p) if n else math.nan}
    if (
        n < MIN_CALIBRATION_ROWS
        or positives < MIN_CALIBRATION_CLASS
        or negatives < MIN_CALIBRATION_CLASS
    ):
        report.update(
            platt=math.nan,
            isotonic=math.nan,
            chosen="identity",
            reason=(
                f"validation too small to calibrate: {n} rows, {positives} positives, "
                f"{negatives} negatives (needs >= {MIN_CALIBRATION_ROWS} rows and "
                f">= {MIN_CALIBRATION_CLASS} of each class)"
            ),
        )
        return IDENTITY, report

    fold = np.empty(n, dtype=np.int64)
    for cls in (0.0, 1.0):
        rows = np.flatnonzero(y == cls)
        fold[rows] = np.arange(len(rows)) % 2
    platt_oof = np.empty(n)
    isotonic_oof = np.empty(n)
    for k in (0, 1):
        train, held = fold != k, fold == k
        platt_oof[held] = _platt(_fit_platt(p[train], y[train]), p[held])
        isotonic_oof[held] = _fit_isotonic(p[train], y[train]).predict(p[held])
    platt_loss = _log_loss(y, platt_oof)
    isotonic_loss = _log_loss(y, np.clip(isotonic_oof, ISOTONIC_EPS, 1 - ISOTONIC_EPS))
    chosen = "isotonic" if isotonic_loss < platt_loss else "platt"
    report.update(platt=platt_loss, isotonic=isotonic_loss, chosen=chosen)
    report["reason"] = f"lower 2-fold cross-validated log-loss on {n} validation rows"
    if chosen == "platt":
        return _fit_platt(p, y), report
    return _isotonic_calibration(_fit_isotonic(p, y)), report
