"""Learned shopper segments: K-means over the job's own profile features (issue 13).

    profilestream segments train --events FILE --format taobao|rees46|proto|synthetic [--version V]

writes `models/segments/<version>/`: `segmentation.json` (the `udfs.clusters` format the job
loads, plus the K-selection table, the evaluation, data provenance and library versions),
`report.md` and PNG plots (`models/segments_report.py`). The procedure:

1. **Replay** the log through the job's code (`udfs.events` decoding, `udfs.fold.fold`,
   `udfs.features.features_and_vector`), in log order as `models.dataset` does. A user's
   **snapshot** at a cut-off is the profile row the job last wrote for that user before it: the
   features as of the user's newest event (`now` = `profile.last_ms`, as `udfs.engine` computes
   the row on each update, which is where the job assigns the cluster). `--snapshots end` (the
   default) takes every user's row at the end of the log; `--snapshots daily` takes, at every
   local midnight (UTC offset `--tz-offset-hours`) and at the end of the log, the rows written
   since the previous one (a user silent that day would only repeat the same row).
2. **Vectors**: the declared `FEATURES` through `udfs.clusters.transform_value` (NaN and
   infinities replaced by the feature's fill; log1p for counts and amounts; sin/cos of the hour),
   clipped to the 0.5th and 99.5th percentiles of the training snapshots and standardised (mean,
   population standard deviation). A constant feature gets scale 1 (it then adds nothing to any
   distance). The two hour-of-day coordinates are not clipped and get the fixed scale 1/sqrt(2),
   the standard deviation of sin and cos over a uniform day: a log covering a few hours of one
   day (REES46's sample) must not have its few peak hours blown up into the strongest feature.
   The vectors are computed by `udfs.clusters.Segmentation.vector` itself, the code the job runs.
3. **K** over `--k-min`..`--k-max`: for each K, K-means on all snapshots (the full fit), its
   silhouette on a fixed-seed sample of at most 10,000 snapshots, and its stability: the adjusted
   Rand index between the full fit's labels and those of a K-means refit on each of
   `--bootstrap` resamples of the users (with replacement, a drawn user with all of their
   snapshots; the refit labels every snapshot by its nearest refit centroid). The rule
   (`choose_k`, `K_RULE`): among the stable K (mean ARI >= 0.80) the one with the highest
   silhouette, the smaller K on a tie; when no K is stable, the K with the highest mean ARI,
   which the report says.
4. **The segmentation**: the full fit at that K, clusters renumbered by size (0 the largest),
   each with a generated name and description (`name_clusters`), the members' mean raw values
   (`centroid`; for the hour, the circular mean hour of day, UTC) and the centroid in scaled
   units (`z`).
5. **Evaluation on later periods**: the same procedure (vectors, scaling, K rule, fit) refitted
   on the snapshots before an earlier cut-off T0, holding out the last `--eval-periods` label
   periods (`--period-minutes` apart, starting at local midnight by default); every user seen
   before each later cut-off t >= T0 is assigned by that refit from the row as of t, and
   labelled 1 when the user buys in (t, t + `--horizon-minutes`]. Per cluster: examples, users,
   purchase rate with a 95 % Wilson interval, lift against the overall rate; chi-square tests of
   independence of cluster and label, pooled and per cut-off. Cut-offs whose label window runs
   past the end of the log are not used.

K-means is scikit-learn's (`KMEANS`: Lloyd, fixed n_init and random_state) inside
`threadpoolctl.threadpool_limits(1)`, so one thread sums in one order; nothing reads the clock,
so the same command on the same log rebuilds the directory bit for bit (on one CPU type: BLAS
kernels differ in the last bits between CPU types, see tests/unit/test_segments.py).
"""

from __future__ import annotations

import bisect
import json
import math
import platform
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from models.dataset import Array, ExampleSpec, decode_all, first_dense_period
from models.jsonable import clean, iso_utc
from udfs.clusters import (
    SEGMENTATION_FILE,
    SEGMENTATION_NAME,
    ClusterFeature,
    ClusterInfo,
    Segmentation,
    transform_value,
)
from udfs.errors import ConfigError, TrainingError
from udfs.events import PURCHASE, Event
from udfs.features import FEATURE_NAMES, features_and_vector
from udfs.fold import Outcome, fold
from udfs.params import DAY_MS, HOUR_MS, ProfileParams
from udfs.profile import Profile

SEGMENTS_DIR: Final = Path(__file__).resolve().parent / "segments"
MINUTE_MS: Final = 60_000
SNAPSHOT_MODES: Final = ("end", "daily")
CLIP_PERCENTILES: Final = (0.5, 99.5)
CYCLIC_TRANSFORMS: Final = ("sin24", "cos24")
CYCLIC_SCALE: Final = math.sqrt(0.5)  # sd of sin and cos of an angle uniform over the day
STABLE_ARI: Final = 0.80
BOOTSTRAP: Final = 50
SILHOUETTE_SAMPLE: Final = 10_000
DISTINCT_Z: Final = 0.5  # |z| from which a feature counts as distinctive of a cluster
NAME_PHRASES: Final = 2
DESCRIPTION_PHRASES: Final = 4
SEED: Final = 7
KMEANS: Final[dict[str, Any]] = {
    "algorithm": "lloyd",
    "n_init": 10,
    "max_iter": 300,
    "tol": 1e-4,
    "random_state": SEED,
}


@dataclass(frozen=True)
class SegmentFeature:
    """A declared clustering feature and the words used for it in names and descriptions."""

    name: str
    source: str  # one of udfs.features.FEATURE_NAMES
    transform: str  # one of udfs.clusters.TRANSFORMS
    fill: float  # the raw value when the source is NaN (undefined)
    label: str  # what it measures, in descriptions: "views in 30 days"
    high: str  # the phrase for a cluster well above the population ("" for the hour)
    low: str  # ... well below it


# Declared up front, chosen from FEATURE_NAMES: what a shopper does (30-day activity, funnel,
# breadth of interest, habits), in forms that do not need a long history. Left out on purpose:
# rfm_hours_since_last_event (0 in every row the job writes at an update, where the cluster is
# assigned), lifetime counts and tenure (they grow with calendar time), prices (missing in the
# Taobao data), the 1 h / 24 h windows (they describe the current session, not the shopper).
FEATURES: Final[tuple[SegmentFeature, ...]] = (
    SegmentFeature("views_30d", "cnt_view_30d", "log1p", 0.0, "views in 30 days",
                   "heavy viewers", "light viewers"),
    SegmentFeature("carts_30d", "cnt_cart_30d", "log1p", 0.0, "add-to-carts in 30 days",
                   "frequent carters", "rare carters"),
    SegmentFeature("favs_30d", "cnt_fav_30d", "log1p", 0.0, "favourites in 30 days",
                   "favourite savers", "few favourites"),
    SegmentFeature("purchases_30d", "cnt_purchase_30d", "log1p", 0.0, "purchases in 30 days",
                   "frequent buyers", "rare buyers"),
    SegmentFeature("spend_30d", "rfm_spend_30d", "log1p", 0.0, "spend in 30 days",
                   "big spenders", "small spenders"),
    SegmentFeature("active_days", "ten_active_days", "log1p", 0.0, "active days",
                   "regulars", "occasional visitors"),
    SegmentFeature("events_per_session", "ses_mean_events", "log1p", 0.0, "events per session",
                   "long sessions", "short sessions"),
    SegmentFeature("distinct_categories", "pref_distinct_categories", "log1p", 0.0,
                   "distinct categories", "wide-ranging", "narrow range"),
    SegmentFeature("category_entropy", "pref_category_entropy", "identity", 0.0,
                   "category entropy (bits)", "interest spread over categories",
                   "focused on one category"),
    SegmentFeature("view_to_cart", "fun_view_to_cart", "identity", 0.0,
                   "add-to-carts per view", "quick to cart", "view without carting"),
    SegmentFeature("peak_hour_sin", "hab_peak_hour", "sin24", 0.0, "peak hour", "", ""),
    SegmentFeature("peak_hour_cos", "hab_peak_hour", "cos24", 0.0, "peak hour", "", ""),
)  # fmt: skip
HOUR_PHRASES: Final = (  # local hour of day [from, to) -> phrase
    (5, 11, "morning shoppers"),
    (11, 17, "afternoon shoppers"),
    (17, 23, "evening shoppers"),
    (23, 29, "night owls"),
)


@dataclass(frozen=True)
class SegmentSpec:
    """How snapshots are taken, K chosen and the segmentation evaluated."""

    snapshots: str = "end"
    tz_offset_hours: float = 8.0  # the data's local midnight (Taobao: Beijing time)
    k_min: int = 3
    k_max: int = 10
    bootstrap: int = BOOTSTRAP
    horizon_ms: int = DAY_MS  # evaluation label: a purchase within this long after a cut-off
    period_ms: int = DAY_MS  # evaluation cut-offs this far apart (local midnight for a day)
    eval_periods: int = 3
    seed: int = SEED
    silhouette_sample: int = SILHOUETTE_SAMPLE

    def __post_init__(self) -> None:
        if self.snapshots not in SNAPSHOT_MODES:
            raise ConfigError(f"--snapshots {self.snapshots}: use one of {SNAPSHOT_MODES}")
        if not 2 <= self.k_min <= self.k_max:
            raise ConfigError(
                f"--k-min {self.k_min} --k-max {self.k_max}: need 2 <= k-min <= k-max"
            )
        if self.bootstrap < 2:
            raise ConfigError(f"--bootstrap {self.bootstrap}: need at least 2 resamples")
        if self.horizon_ms <= 0 or self.period_ms <= 0:
            raise ConfigError("--horizon-minutes and --period-minutes must be positive")
        if self.eval_periods < 1:
            raise ConfigError(f"--eval-periods {self.eval_periods}: need at least 1")
        if not -14 <= self.tz_offset_hours <= 14:
            raise ConfigError(f"--tz-offset-hours {self.tz_offset_hours} is not a UTC offset")
        if self.silhouette_sample < 100:
            raise ConfigError("the silhouette sample needs at least 100 snapshots")

    @property
    def day_spec(self) -> ExampleSpec:
        return ExampleSpec(period_ms=DAY_MS, tz_offset_hours=self.tz_offset_hours)

    @property
    def eval_spec(self) -> ExampleSpec:
        return ExampleSpec(
            horizon_ms=self.horizon_ms,
            period_ms=self.period_ms,
            tz_offset_hours=self.tz_offset_hours,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshots": self.snapshots,
            "tz_offset_hours": self.tz_offset_hours,
            "k_range": [self.k_min, self.k_max],
            "bootstrap": self.bootstrap,
            "horizon_minutes": self.horizon_ms / MINUTE_MS,
            "period_minutes": self.period_ms / MINUTE_MS,
            "eval_periods": self.eval_periods,
            "seed": self.seed,
            "silhouette_sample": self.silhouette_sample,
        }


# ---------------------------------------------------------------------------------------------
# Replay: the rows the job would have written, as of each cut-off
# ---------------------------------------------------------------------------------------------
@dataclass
class Snapshot:
    """Every user's latest row as of a cut-off."""

    cutoff_ms: int
    users: list[str]
    rows: Array  # (n, len(FEATURE_NAMES)) float64, NaN = missing: the profile vector
    written: Array  # (n,) int64: replay position of the event that last changed the user's row
    position: int  # events replayed when the snapshot was taken

    def since(self, position: int) -> Array:
        """Rows written after replay position `position` (a mask)."""
        mask: Array = self.written >= position
        return mask


def replay(
    events: Sequence[Event],
    params: ProfileParams,
    cutoffs: Iterable[int],
    progress: Callable[[Sequence[Event]], Iterable[Event]] | None = None,
) -> tuple[dict[int, Snapshot], Snapshot]:
    """Fold the log in order; a snapshot at each cut-off (taken when the replay's event time first
    reaches it, as models.dataset does) and one at the end of the log."""
    wanted = sorted(set(cutoffs))
    profiles: dict[str, Profile] = {}
    written: dict[str, int] = {}
    cached: dict[str, tuple[Any, ...]] = {}

    def take(cutoff: int, position: int) -> Snapshot:
        users = list(profiles)
        rows = []
        for user in users:
            row = cached.get(user)
            if row is None:
                profile = profiles[user]
                row = features_and_vector(profile, profile.last_ms, params)[1]
                cached[user] = row
            rows.append(row)
        return Snapshot(
            cutoff,
            users,
            np.asarray(rows, dtype=np.float64).reshape(len(users), len(FEATURE_NAMES)),
            np.fromiter((written.get(u, -1) for u in users), np.int64, len(users)),
            position,
        )

    taken: dict[int, Snapshot] = {}
    i = 0
    position = 0
    end = 0
    for position, e in enumerate(progress(events) if progress else events):
        while i < len(wanted) and e.event_time_ms >= wanted[i]:
            taken[wanted[i]] = take(wanted[i], position)
            i += 1
        profile, outcome = fold(profiles.get(e.user_id), e, params)
        profiles[e.user_id] = profile
        if outcome is Outcome.APPLIED:
            written[e.user_id] = position
            cached.pop(e.user_id, None)
        end = max(end, e.event_time_ms)
    final = take(end + 1, len(events))
    for cutoff in wanted[i:]:
        taken[cutoff] = final
    return taken, final


class Purchases:
    """Each user's purchase times: the evaluation label."""

    def __init__(self, events: Iterable[Event]) -> None:
        self.times: dict[str, list[int]] = {}
        for e in events:
            if e.event_type == PURCHASE:
                self.times.setdefault(e.user_id, []).append(e.event_time_ms)
        for times in self.times.values():
            times.sort()

    def label(self, user: str, t: int, horizon_ms: int) -> int:
        bought = self.times.get(user, [])
        i = bisect.bisect_right(bought, t)
        return 1 if i < len(bought) and bought[i] <= t + horizon_ms else 0


@dataclass(frozen=True)
class Plan:
    """The cut-offs of one training run: daily snapshots, the evaluation's T0 and later ones."""

    end_ms: int
    daily: tuple[int, ...]  # local midnights after the first dense day, before the end
    eval_cutoffs: tuple[int, ...]  # T0 first

    @property
    def train_cutoff(self) -> int:
        return self.eval_cutoffs[0]


def plan(events: Sequence[Event], spec: SegmentSpec) -> Plan:
    end = max(e.event_time_ms for e in events)
    day = spec.day_spec
    first_day = first_dense_period(list(events), day)
    daily = tuple(
        day.cutoff(p) for p in range(first_day + 1, day.period_of(end) + 1) if day.cutoff(p) <= end
    )
    ev = spec.eval_spec
    last = ev.period_of(end - spec.horizon_ms)  # the last cut-off whose label window is observed
    while ev.cutoff(last) + spec.horizon_ms > end:
        last -= 1
    cuts = tuple(ev.cutoff(p) for p in range(last - spec.eval_periods + 1, last + 1))
    start = ev.cutoff(first_dense_period(list(events), ev) + 1)
    if cuts[0] <= start:
        raise TrainingError(
            f"the log (dense data {iso_utc(start)} .. {iso_utc(end)}) is too short to hold out "
            f"{spec.eval_periods} label period(s) of {spec.horizon_ms / MINUTE_MS:g} minutes "
            f"({spec.period_ms / MINUTE_MS:g} minutes apart) and still train before them",
            fix="lower --eval-periods, --horizon-minutes or --period-minutes (the REES46 sample "
            "needs --horizon-minutes 10 --eval-periods 2, docs/segments.md)",
        )
    return Plan(end, daily, cuts)


def training_rows(
    snaps: dict[int, Snapshot], final: Snapshot, daily: Sequence[int], mode: str
) -> tuple[Array, list[str], list[int]]:
    """The training snapshots of a mode ending with `final`: its rows (end), or the rows written
    between consecutive local midnights and then up to `final` (daily). Rows, users, cut-offs."""
    if mode == "end":
        return final.rows, final.users, [final.cutoff_ms] * len(final.users)
    parts: list[Array] = []
    users: list[str] = []
    cuts: list[int] = []
    previous = 0
    for snap in [*(snaps[c] for c in daily if c < final.cutoff_ms), final]:
        mask = snap.since(previous)
        parts.append(snap.rows[mask])
        users += [u for u, m in zip(snap.users, mask, strict=True) if m]
        cuts += [snap.cutoff_ms] * int(mask.sum())
        previous = snap.position
    return np.concatenate(parts), users, cuts


# ---------------------------------------------------------------------------------------------
# Vectors, scaling, K selection, K-means
# ---------------------------------------------------------------------------------------------
def raw_values(rows: Array, features: Sequence[SegmentFeature] = FEATURES) -> Array:
    """(n, len(features)): each feature's source value with NaN and infinities filled."""
    out = np.empty((len(rows), len(features)))
    for j, f in enumerate(features):
        col = rows[:, FEATURE_NAMES.index(f.source)]
        out[:, j] = np.where(np.isfinite(col), col, f.fill)
    return out


def transformed(rows: Array, features: Sequence[SegmentFeature] = FEATURES) -> Array:
    """(n, len(features)): `udfs.clusters.transform_value` of every source value."""
    out = np.empty((len(rows), len(features)))
    for j, f in enumerate(features):
        col = rows[:, FEATURE_NAMES.index(f.source)]
        out[:, j] = [transform_value(f.transform, float(v), f.fill) for v in col]
    return out


def fit_scaling(
    rows: Array, features: Sequence[SegmentFeature] = FEATURES
) -> tuple[list[ClusterFeature], list[str]]:
    """Clip bounds and standard scaling fitted on the training rows; notes on special cases."""
    values = transformed(rows, features)
    out: list[ClusterFeature] = []
    notes: list[str] = []
    for j, f in enumerate(features):
        col = values[:, j]
        if f.transform in CYCLIC_TRANSFORMS:
            lo, hi = -1.0, 1.0
        else:
            lo, hi = (float(v) for v in np.percentile(col, CLIP_PERCENTILES))
        clipped = np.clip(col, lo, hi)
        lo, hi = lo + 0.0, hi + 0.0  # no -0.0 in the JSON
        mean = float(clipped.mean()) + 0.0
        sd = float(clipped.std())
        if f.transform in CYCLIC_TRANSFORMS:
            scale = CYCLIC_SCALE
        elif sd > 0.0 and hi > lo:
            scale = sd
        else:
            scale = 1.0
            notes.append(
                f"{f.name} ({f.source}) is constant ({mean:g}) in the training snapshots: "
                "scale 1, so it adds nothing to any distance"
            )
        out.append(ClusterFeature(f.name, f.source, f.transform, f.fill, lo, hi, mean, scale))
    return out, notes


def vectors(segmentation: Segmentation, rows: Array) -> Array:
    """The scaled clustering vectors, by the job's own code (`Segmentation.vector`)."""
    return np.asarray(
        [segmentation.vector(row) for row in rows.tolist()], dtype=np.float64
    ).reshape(len(rows), len(segmentation.features))


def scaler_only(features: Sequence[ClusterFeature], version: str = "fit") -> Segmentation:
    """A segmentation with one placeholder centroid: its `vector` is all the trainer needs."""
    return Segmentation(
        version, features, [[0.0] * len(features)], [ClusterInfo(0, "placeholder", "")]
    )


def kmeans(k: int, seed: int) -> Any:
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, **{**KMEANS, "random_state": seed})


def silhouette_sample(n: int, size: int, seed: int) -> Array:
    """Fixed-seed sample (sorted indices) for the silhouette; every row when n <= size."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 1]).choice(n, size, replace=False))


def resamples(n: int, b: int, seed: int) -> Array:
    """(b, n) bootstrap draws of n users (indices), the same for every K."""
    return np.random.default_rng([seed, 2]).integers(0, n, size=(b, n))


def user_index(users: Sequence[str]) -> Array:
    """Each snapshot's user as 0..U-1, in order of first appearance."""
    index: dict[str, int] = {}
    return np.fromiter((index.setdefault(u, len(index)) for u in users), np.int64, len(users))


class Weighted:
    """The distinct training vectors and how often each occurs. K-means on them with the counts
    as sample weights minimises the same objective as on every vector (fast when many shoppers
    share a vector: REES46's 4,504 users have 969 distinct ones); a bootstrap resample is the
    same distinct vectors with the resample's counts as weights. Users are resampled, not
    snapshots: with daily snapshots a drawn user brings all of their rows."""

    def __init__(self, x: Array, groups: Array) -> None:
        self.unique, self.inverse, counts = np.unique(
            x, axis=0, return_inverse=True, return_counts=True
        )
        self.inverse = self.inverse.reshape(-1)
        self.counts = counts.astype(np.float64)
        self.groups = groups
        self.n_groups = int(groups.max()) + 1 if len(groups) else 0

    def fit(self, k: int, seed: int, weights: Array | None = None) -> Any:
        w = self.counts if weights is None else weights
        keep = w > 0
        return kmeans(k, seed).fit(self.unique[keep], sample_weight=w[keep])

    def resample_weights(self, drawn: Array) -> Array:
        """Weights of the distinct vectors for one resample (`drawn`: user indices)."""
        per_user = np.bincount(drawn, minlength=self.n_groups).astype(np.float64)
        weights: Array = np.bincount(
            self.inverse, weights=per_user[self.groups], minlength=len(self.unique)
        )
        return weights


def k_table(
    x: Array,
    groups: Array,
    spec: SegmentSpec,
    progress: Callable[[int], Any] | None = None,
) -> tuple[list[dict[str, Any]], dict[int, Any]]:
    """Silhouette, inertia and bootstrap ARI for each K (users resampled: `groups` is each
    snapshot's user index); the full fits by K."""
    from sklearn.metrics import adjusted_rand_score, silhouette_score

    n = len(x)
    sample = silhouette_sample(n, spec.silhouette_sample, spec.seed)
    data = Weighted(x, groups)
    boot = resamples(data.n_groups, spec.bootstrap, spec.seed)
    distinct = len(data.unique)
    ks = [k for k in range(spec.k_min, spec.k_max + 1) if k < distinct]
    if not ks:
        raise TrainingError(
            f"the training snapshots have {distinct} distinct vectors: too few for K >= "
            f"{spec.k_min} (a longer log, or more users)"
        )
    bar = progress(len(ks) * (1 + spec.bootstrap)) if progress else None
    table: list[dict[str, Any]] = []
    fits: dict[int, Any] = {}
    for k in ks:
        full = data.fit(k, spec.seed)
        fits[k] = full
        labels = np.asarray(full.labels_)[data.inverse]  # every snapshot's cluster
        if bar is not None:
            bar.update(1)
        aris = []
        for idx in boot:
            refit = data.fit(k, spec.seed, data.resample_weights(idx))
            relabelled = np.asarray(refit.predict(data.unique))[data.inverse]
            aris.append(float(adjusted_rand_score(labels, relabelled)))
            if bar is not None:
                bar.update(1)
        sampled = labels[sample]
        sil = float(silhouette_score(x[sample], sampled)) if len(set(sampled)) > 1 else math.nan
        ari = np.asarray(aris)
        table.append(
            {
                "k": k,
                "silhouette": sil,
                "inertia": float(full.inertia_),
                "ari_mean": float(ari.mean()),
                "ari_sd": float(ari.std(ddof=1)),
                "ari_min": float(ari.min()),
                "ari_p05": float(np.percentile(ari, 5)),
                "smallest_cluster_share": float(np.bincount(labels).min() / n),
            }
        )
    if bar is not None:
        bar.close()
    return table, fits


K_RULE: Final = (
    f"among the stable K (mean bootstrap ARI >= {STABLE_ARI:.2f}) the highest silhouette, the "
    "smaller K on a tie; when no K is stable, the K with the highest mean ARI"
)


def choose_k(table: Sequence[dict[str, Any]]) -> tuple[int, bool]:
    """(K, whether it is stable) by `K_RULE`."""
    stable = [r for r in table if r["ari_mean"] >= STABLE_ARI and not math.isnan(r["silhouette"])]
    if stable:
        best = max(stable, key=lambda r: (r["silhouette"], -r["k"]))
        return int(best["k"]), True
    best = max(table, key=lambda r: (r["ari_mean"], -r["k"]))
    return int(best["k"]), False


@dataclass
class Fit:
    """One run of the procedure on one set of training rows."""

    segmentation: Segmentation
    x: Array  # the scaled training vectors
    labels: Array  # cluster ids (renumbered: 0 the largest)
    order: Array  # order[new id] = K-means' own label
    estimator: Any  # the fitted sklearn KMeans (its own label numbering)
    table: list[dict[str, Any]]
    k: int
    stable: bool
    notes: list[str]
    clusters: list[dict[str, Any]]
    population: dict[str, float]
    mismatches: int = 0  # snapshots where Segmentation.nearest differs from KMeans' labels


def fit_segmentation(
    rows: Array,
    users: Sequence[str],
    spec: SegmentSpec,
    version: str,
    progress: Callable[[int], Any] | None = None,
) -> Fit:
    """The whole procedure (module docstring, steps 2-4) on training rows (and their users)."""
    # scikit-learn's OpenMP runtime must be loaded before threadpool_limits, which only limits
    # the libraries loaded when it is entered (otherwise K-means runs on every core: not
    # deterministic, and ~50x slower on a busy machine while its threads spin)
    import sklearn.cluster
    import sklearn.metrics  # noqa: F401
    from threadpoolctl import threadpool_limits

    if len(rows) < max(50, 5 * spec.k_max):
        raise TrainingError(
            f"{len(rows)} training snapshots are too few for K up to {spec.k_max} (need at least "
            f"{max(50, 5 * spec.k_max)}): a longer log, more users, or a lower --k-max"
        )
    features, notes = fit_scaling(rows)
    x = vectors(scaler_only(features, version), rows)
    with threadpool_limits(1):
        table, fits = k_table(x, user_index(users), spec, progress)
    k, stable = choose_k(table)
    estimator = fits[k]
    own = np.asarray(estimator.predict(x))
    sizes = np.bincount(own, minlength=k)
    # renumber by size, largest first (ties: K-means' own order), so ids read the same way in
    # every version: 0 is the biggest group
    order = np.asarray(sorted(range(k), key=lambda j: (-int(sizes[j]), j)))
    rank = np.empty(k, dtype=np.int64)
    rank[order] = np.arange(k)
    labels = rank[own]
    centroids = np.asarray(estimator.cluster_centers_)[order]
    raw = raw_values(rows)
    population = summary(raw, np.ones(len(rows), dtype=bool))
    clusters: list[dict[str, Any]] = []
    for c in range(k):
        members = labels == c
        clusters.append(
            {
                "id": c,
                "size": int(members.sum()),
                "share": float(members.mean()),
                "centroid": summary(raw, members),
                "z": {f.name: float(v) for f, v in zip(FEATURES, centroids[c], strict=True)},
            }
        )
    names = name_clusters(clusters, population, spec.tz_offset_hours)
    for entry, (name, description) in zip(clusters, names, strict=True):
        entry["name"], entry["description"] = name, description
    infos = [ClusterInfo(e["id"], e["name"], e["description"]) for e in clusters]
    seg = Segmentation(version, features, centroids.tolist(), infos)
    mismatches = sum(seg.nearest(v) != int(lab) for v, lab in zip(x.tolist(), labels, strict=True))
    return Fit(seg, x, labels, order, estimator, table, k, stable, notes,
               [_ordered(c) for c in clusters], population, mismatches)  # fmt: skip


def _ordered(c: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "name", "description", "size", "share", "centroid", "z")
    return {key: c[key] for key in keys}


def circular_mean_hour(hours: Array) -> float:
    """The mean hour of day on the 24-hour circle, in [0, 24)."""
    angle = hours * (2 * math.pi / 24)
    h = math.atan2(float(np.sin(angle).mean()), float(np.cos(angle).mean())) * 24 / (2 * math.pi)
    h %= 24.0
    return h if h < 24.0 else 0.0  # a tiny negative angle rounds to 24.0


def summary(raw: Array, members: Array) -> dict[str, float]:
    """Members' mean raw value per feature; for the hour features the circular mean hour (UTC)."""
    out: dict[str, float] = {}
    for j, f in enumerate(FEATURES):
        values = raw[members, j]
        if f.transform in CYCLIC_TRANSFORMS:
            out[f.name] = circular_mean_hour(values)
        else:
            out[f.name] = float(values.mean())
    return out


# ---------------------------------------------------------------------------------------------
# Names a person can read
# ---------------------------------------------------------------------------------------------
def hour_phrase(utc_hour: float, tz_offset_hours: float) -> str:
    local = (utc_hour + tz_offset_hours) % 24.0
    for start, stop, phrase in HOUR_PHRASES:
        if start <= local < stop or start <= local + 24.0 < stop:
            return phrase
    raise AssertionError(local)  # the bins cover the day


def _number(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}" if abs(v) >= 0.01 else f"{v:.2g}"


def phrases(
    z: dict[str, float],
    centroid: dict[str, float],
    population: dict[str, float],
    tz_offset_hours: float,
) -> list[tuple[float, str, str]]:
    """(strength, phrase, evidence) for every feature, strongest first: a feature's strength is
    |z| (the centroid's distance from the population mean in standard deviations); the hour's is
    the length of its (sin, cos) offset, and its phrase comes from the members' mean local hour."""
    out: list[tuple[float, str, str]] = []
    hour_done = False
    for f in FEATURES:
        if f.transform in CYCLIC_TRANSFORMS:
            if hour_done:
                continue
            hour_done = True
            pair = [g.name for g in FEATURES if g.source == f.source]
            strength = math.sqrt(sum(z[n] ** 2 for n in pair))
            local = (centroid[f.name] + tz_offset_hours) % 24.0
            pop = (population[f.name] + tz_offset_hours) % 24.0
            out.append(
                (
                    strength,
                    hour_phrase(centroid[f.name], tz_offset_hours),
                    f"peak hour around {local:.0f} h local vs {pop:.0f} h overall",
                )
            )
            continue
        value = z[f.name]
        evidence = f"{f.label} {_number(centroid[f.name])} vs {_number(population[f.name])} overall"
        out.append((abs(value), f.high if value > 0 else f.low, evidence))
    out.sort(key=lambda t: -t[0])  # stable: declaration order on ties
    return out


def name_clusters(
    clusters: Sequence[dict[str, Any]], population: dict[str, float], tz_offset_hours: float
) -> list[tuple[str, str]]:
    """(name, description) per cluster from its most distinctive features; names are distinct.

    The name joins the (at most NAME_PHRASES) phrases whose strength is at least DISTINCT_Z
    ("average shoppers" when none is); while two names hold the same phrases (in any order),
    each of those clusters takes its next phrase; a number is the last resort. The description
    gives up to DESCRIPTION_PHRASES distinctive phrases with their evidence."""
    ranked = [
        [t for t in phrases(c["z"], c["centroid"], population, tz_offset_hours) if t[0] > 1e-9]
        for c in clusters
    ]
    used = [min(NAME_PHRASES, sum(1 for s, _, _ in r if s >= DISTINCT_Z)) for r in ranked]

    def words(i: int) -> list[str]:
        return [p for _, p, _ in ranked[i][: used[i]]] or ["average shoppers"]

    while True:
        keys = [frozenset(words(i)) for i in range(len(clusters))]
        clashes = [i for i, key in enumerate(keys) if keys.count(key) > 1]
        growable = [i for i in clashes if used[i] < len(ranked[i])]
        if not growable:
            break
        for i in growable:
            used[i] += 1
    names = [", ".join(words(i)) for i in range(len(clusters))]
    final = []
    for i, n in enumerate(names):
        same = [j for j, key in enumerate(keys) if key == keys[i]]
        final.append(n if len(same) == 1 else f"{n} ({same.index(i) + 1})")
    out = []
    for i, r in enumerate(ranked):
        distinct = [(p, ev) for s, p, ev in r if s >= DISTINCT_Z][:DESCRIPTION_PHRASES]
        if distinct:
            text = "; ".join(f"{p} ({ev})" for p, ev in distinct)
        elif r:
            _, p, ev = r[0]
            text = f"close to the population on every feature (strongest: {p}, {ev})"
        else:
            text = "the population's centroid"
        out.append((final[i], f"{text}; {clusters[i]['share']:.0%} of shoppers"))
    return out


# ---------------------------------------------------------------------------------------------
# Evaluation on later periods
# ---------------------------------------------------------------------------------------------
def wilson(k: int, n: int, z: float = 1.959963984540054) -> list[float]:
    """95 % Wilson score interval of a proportion."""
    if n == 0:
        return [math.nan, math.nan]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def purchase_rates(
    labels: Array, y: Array, users: Sequence[str], k: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per cluster: examples, users, purchases, rate [95 % CI], lift; the chi-square test."""
    from scipy.stats import chi2_contingency

    overall = float(y.mean()) if len(y) else math.nan
    rows: list[dict[str, Any]] = []
    user_arr = np.asarray(users, dtype=object)
    for c in range(k):
        m = labels == c
        n, pos = int(m.sum()), int(y[m].sum())
        rate = pos / n if n else math.nan
        rows.append(
            {
                "cluster": c,
                "examples": n,
                "users": len(set(user_arr[m].tolist())),
                "purchases": pos,
                "rate": rate,
                "rate_ci": wilson(pos, n),
                "lift": rate / overall if n and overall > 0 else math.nan,
            }
        )
    table = np.asarray([[r["purchases"], r["examples"] - r["purchases"]] for r in rows])
    table = table[table.sum(axis=1) > 0]
    test: dict[str, Any] = {"test": "chi-square test of independence (cluster x label)"}
    if len(table) >= 2 and (table.sum(axis=0) > 0).all():
        chi2, p, dof, expected = chi2_contingency(table, correction=False)
        small = int((expected < 5).sum())
        test.update(
            {
                "chi2": float(chi2),
                "dof": int(dof),
                "p_value": float(p),
                "min_expected": float(expected.min()),
                "cells_expected_below_5": small,
                "significant": bool(p < 0.05),
            }
        )
        if small:
            test["note"] = (
                f"{small} of {expected.size} cells expect fewer than 5 examples: the chi-square "
                "approximation is rough there"
            )
    else:
        test.update({"chi2": None, "dof": None, "p_value": None, "significant": False})
    return rows, test


def evaluate_later(
    events: Sequence[Event],
    snaps: dict[int, Snapshot],
    cuts: Plan,
    spec: SegmentSpec,
    params: ProfileParams,
    progress: Callable[[int], Any] | None = None,
) -> tuple[Fit, dict[str, Any]]:
    """Step 5 of the module docstring: refit before T0, assign at later cut-offs, compare rates."""
    t0 = cuts.train_cutoff
    rows, train_users, _ = training_rows(snaps, snaps[t0], cuts.daily, spec.snapshots)
    fit = fit_segmentation(rows, train_users, spec, "holdout", progress)
    buys = Purchases(events)
    labels: list[int] = []
    ys: list[int] = []
    users: list[str] = []
    per_cutoff = []
    for t in cuts.eval_cutoffs:
        snap = snaps[t]
        assigned = [fit.segmentation.nearest(v) for v in vectors(fit.segmentation, snap.rows)]
        y = [buys.label(u, t, spec.horizon_ms) for u in snap.users]
        labels += assigned
        ys += y
        users += snap.users
        # one cut-off alone: each user once, so its test has independent examples
        alone = purchase_rates(np.asarray(assigned), np.asarray(y), snap.users, fit.k)[1]
        per_cutoff.append(
            {
                "cutoff": iso_utc(t),
                "users": len(y),
                "purchases": int(sum(y)),
                "purchase_rate": float(np.mean(y)),
                "chi2_p_value": alone["p_value"],
            }
        )
    lab = np.asarray(labels)
    yy = np.asarray(ys)
    rates, test = purchase_rates(lab, yy, users, fit.k)
    for r in rates:
        r["name"] = fit.clusters[r["cluster"]]["name"]
    alone_p = [c["chi2_p_value"] for c in per_cutoff]
    return fit, {
        "protocol": (
            "the same procedure refitted on the snapshots before the training cut-off; every "
            "user seen before each later cut-off t assigned from the row as of t; label = a "
            f"purchase in (t, t + {duration(spec.horizon_ms)}]"
        ),
        "horizon": duration(spec.horizon_ms),
        "train_cutoff": iso_utc(t0),
        "train_snapshots": len(rows),
        "k": fit.k,
        "k_stable": fit.stable,
        "silhouette": _row(fit.table, fit.k)["silhouette"],
        "ari_mean": _row(fit.table, fit.k)["ari_mean"],
        "cutoffs": per_cutoff,
        "examples": len(yy),
        "users": len(set(users)),
        "purchases": int(yy.sum()),
        "overall_rate": float(yy.mean()),
        "overall_rate_ci": wilson(int(yy.sum()), len(yy)),
        "clusters": rates,
        "independence": test,
        "caveat": (
            "a user appears once per cut-off, so the pooled examples are not independent and "
            "the pooled p-value is optimistic; each cut-off's own test (one example per user) "
            "is not"
        ),
        "verdict": verdict(rates, test, alone_p),
    }


def verdict(
    rates: Sequence[dict[str, Any]], test: dict[str, Any], alone: Sequence[float | None] = ()
) -> str:
    """One plain sentence: do the clusters differ in later purchase rate? Pooled over the
    cut-offs, and how many cut-offs show it on their own."""
    shown = [r for r in rates if r["examples"] > 0]
    if not shown or test.get("p_value") is None:
        return "not testable: no purchases (or only one cluster) in the evaluation periods"
    hi = max(shown, key=lambda r: r["rate"])
    lo = min(shown, key=lambda r: r["rate"])
    spread = (
        f"from {lo['rate']:.1%} ({lo['name']}) to {hi['rate']:.1%} ({hi['name']}), lift "
        f"{lo['lift']:.2f} to {hi['lift']:.2f}"
    )
    tested = [p for p in alone if p is not None]
    each = ""
    if tested:
        each = (
            f"; significant at {sum(p < 0.05 for p in tested)} of {len(tested)} cut-offs "
            f"alone, p = {', '.join(f'{p:.2g}' for p in tested)}"
        )
    head = (
        "the clusters differ in later purchase rate"
        if test["significant"]
        else "no significant difference in later purchase rate"
    )
    return f"{head} (pooled chi-square p = {test['p_value']:.2g}{each}): {spread}"


def k_notes(fit: Fit, spec: SegmentSpec) -> list[str]:
    notes = []
    if not fit.stable:
        best = max(r["ari_mean"] for r in fit.table)
        notes.append(
            f"no K in {spec.k_min}..{spec.k_max} reaches a mean ARI of {STABLE_ARI:.2f} (the "
            f"best is {best:.3f}): K is the most stable one, and the clusters move noticeably "
            "when the users are resampled"
        )
    if fit.k == max(r["k"] for r in fit.table):
        notes.append(
            f"K = {fit.k} is the top of the range searched: a higher --k-max might choose more "
            "clusters"
        )
    return notes


def rebuild_command(provenance: dict[str, Any], version: str, spec: SegmentSpec) -> str:
    """The command line that rebuilds a segmentation (flags that differ from the defaults)."""
    default = SegmentSpec()
    parts = ["profilestream segments train"]
    if provenance.get("file"):
        parts.append(f"--events {provenance['file']}")
    parts += [f"--format {provenance['format']}"]
    if "synthetic" in provenance:
        syn = provenance["synthetic"]
        parts.append(
            f"--synthetic-events {syn['events']} --synthetic-users {syn['users']} "
            f"--seed {syn['seed']}"
        )
    parts.append(f"--version {version}")
    if spec.snapshots != default.snapshots:
        parts.append(f"--snapshots {spec.snapshots}")
    if spec.tz_offset_hours != default.tz_offset_hours:
        parts.append(f"--tz-offset-hours {spec.tz_offset_hours:g}")
    if (spec.k_min, spec.k_max) != (default.k_min, default.k_max):
        parts.append(f"--k-min {spec.k_min} --k-max {spec.k_max}")
    if spec.bootstrap != default.bootstrap:
        parts.append(f"--bootstrap {spec.bootstrap}")
    if spec.horizon_ms != default.horizon_ms:
        parts.append(f"--horizon-minutes {spec.horizon_ms / MINUTE_MS:g}")
    if spec.period_ms != spec.horizon_ms:
        parts.append(f"--period-minutes {spec.period_ms / MINUTE_MS:g}")
    if spec.eval_periods != default.eval_periods:
        parts.append(f"--eval-periods {spec.eval_periods}")
    return " ".join(parts)


def _row(table: Sequence[dict[str, Any]], k: int) -> dict[str, Any]:
    return next(r for r in table if r["k"] == k)


# ---------------------------------------------------------------------------------------------
# The whole run and the directory
# ---------------------------------------------------------------------------------------------
@dataclass
class Result:
    fit: Fit
    holdout: Fit
    meta: dict[str, Any]
    rows: Array = field(repr=False)  # the training rows (profile vectors)


def duration(ms: int) -> str:
    """24 h, 10 min."""
    if ms % HOUR_MS == 0:
        return f"{ms // HOUR_MS} h"
    return f"{ms / MINUTE_MS:g} min"


def versions() -> dict[str, str]:
    import matplotlib
    import scipy
    import sklearn
    import threadpoolctl

    return {
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "threadpoolctl": threadpoolctl.__version__,
        "matplotlib": matplotlib.__version__,
        "python": platform.python_version(),
    }


def train(
    events: Sequence[Event],
    params: ProfileParams,
    spec: SegmentSpec,
    version: str,
    provenance: dict[str, Any],
    show_progress: bool = True,
) -> Result:
    """Replay, fit, evaluate; the metadata of `segmentation.json`."""
    from tqdm import tqdm

    if not events:
        raise TrainingError("no valid events in the log")
    cuts = plan(events, spec)

    def bar(desc: str) -> Callable[[int], Any]:
        return lambda total: tqdm(
            total=total, desc=desc, unit="fit", disable=not show_progress, mininterval=0.5
        )

    snaps, final = replay(
        events,
        params,
        [*cuts.daily, *cuts.eval_cutoffs],
        lambda items: tqdm(
            items, desc="replaying", unit="ev", disable=not show_progress, mininterval=0.5
        ),
    )
    rows, users, _ = training_rows(snaps, final, cuts.daily, spec.snapshots)
    fit = fit_segmentation(rows, users, spec, version, bar("choosing K"))
    holdout, evaluation = evaluate_later(events, snaps, cuts, spec, params, bar("evaluation fit"))
    from sklearn.metrics import adjusted_rand_score

    later = [holdout.segmentation.nearest(v) for v in vectors(holdout.segmentation, rows)]
    evaluation["agreement_with_shipped_ari"] = float(adjusted_rand_score(fit.labels, later))
    chosen = _row(fit.table, fit.k)
    meta: dict[str, Any] = {
        "name": SEGMENTATION_NAME,
        "version": version,
        "features": [f.to_json() for f in fit.segmentation.features],
        "centroids": [list(c) for c in fit.segmentation.centroids],
        "clusters": fit.clusters,
        "population": fit.population,
        "centroid_note": (
            "centroid: the members' mean raw value of each feature's source (NaN filled); for "
            "the peak-hour features, the circular mean UTC hour of hab_peak_hour. z: the "
            "centroid in scaled units (0 = the training population's mean)"
        ),
        "feature_list": [
            {
                "name": f.name,
                "source": f.source,
                "transform": f.transform,
                "fill": f.fill,
                "label": f.label,
            }
            for f in FEATURES
        ],
        "scaling": {
            "clip_percentiles": list(CLIP_PERCENTILES),
            "standardisation": "mean and population standard deviation of the clipped values",
            "cyclic_scale": CYCLIC_SCALE,
            "notes": fit.notes,
        },
        "snapshots": {
            "mode": spec.snapshots,
            "rows": len(rows),
            "users": len(set(users)),
            "cutoff": iso_utc(final.cutoff_ms),
            "definition": (
                "a user's snapshot is the row the job last wrote for the user: features as of "
                "the user's newest event"
            ),
        },
        "k_selection": {
            "rule": K_RULE,
            "notes": k_notes(fit, spec),
            "stable_ari": STABLE_ARI,
            "table": fit.table,
            "chosen_k": fit.k,
            "chosen_is_stable": fit.stable,
        },
        "evaluation": {
            "silhouette": chosen["silhouette"],
            "silhouette_sample": min(len(rows), spec.silhouette_sample),
            "stability_ari": {
                "mean": chosen["ari_mean"],
                "sd": chosen["ari_sd"],
                "min": chosen["ari_min"],
                "p05": chosen["ari_p05"],
                "resamples": spec.bootstrap,
            },
            "assign_vs_kmeans_mismatches": fit.mismatches,
            "later_periods": evaluation,
        },
        "spec": spec.to_json(),
        "rebuild": rebuild_command(provenance, version, spec),
        "training": {
            "library": "scikit-learn KMeans",
            "params": KMEANS,
            "threads": 1,
            "names": {
                "distinct_z": DISTINCT_Z,
                "name_phrases": NAME_PHRASES,
                "hour_phrases_local": [list(h) for h in HOUR_PHRASES],
            },
        },
        "data": provenance,
        "versions": versions(),
    }
    return Result(fit, holdout, clean(meta), rows)


def write(out: Path, result: Result) -> None:
    """segmentation.json, report.md and the plots; nothing depends on the clock."""
    from models import segments_report

    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result.meta, indent=2, allow_nan=False) + "\n"
    (out / SEGMENTATION_FILE).write_text(text, encoding="utf-8")
    segments_report.write(out, result)


def load_events(
    fmt: str, path: Path | None, synthetic: Any = None
) -> tuple[list[Event], dict[str, Any]]:
    """Decode a log as the job would; the provenance (with the file's sha256)."""
    from udfs.digest import sha256_file
    from udfs.sources import message_bytes

    events, rejected = decode_all(message_bytes(fmt, path, spec=synthetic))
    if not events:
        raise TrainingError(f"no valid events in {path or fmt}")
    times = [e.event_time_ms for e in events]
    provenance: dict[str, Any] = {
        "source": Path(path).name if path else f"synthetic {synthetic}",
        "format": fmt,
        "events": len(events) + rejected,
        "rejected": rejected,
        "users": len({e.user_id for e in events}),
        "time_range": [iso_utc(min(times)), iso_utc(max(times))],
    }
    if path is not None:
        provenance["file"] = Path(path).name
        provenance["sha256"] = sha256_file(Path(path))
    if synthetic is not None:
        provenance["synthetic"] = {
            "events": synthetic.events,
            "users": synthetic.users,
            "seed": synthetic.seed,
        }
    return events, provenance


def run(
    fmt: str,
    path: Path | None,
    out: Path,
    version: str,
    spec: SegmentSpec,
    params: ProfileParams | None = None,
    synthetic: Any = None,
    show_progress: bool = True,
) -> Result:
    events, provenance = load_events(fmt, path, synthetic)
    result = train(events, params or ProfileParams(), spec, version, provenance, show_progress)
    write(out, result)
    return result
