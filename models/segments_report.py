"""The segmentation report: `report.md` with every number of `segmentation.json` a reader needs
(snapshots, features and scaling, the K-selection table and rule, the clusters with their names,
silhouette, stability, later purchase rates and the chi-square test) and the PNG plots: cluster
sizes, the centroid profile heat map, a 2-D PCA projection of the snapshots by cluster, the
K-selection curves, and the later purchase rate per cluster. Nothing depends on the clock
(matplotlib writes no Software or date metadata here), so the same run gives the same bytes."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

if TYPE_CHECKING:
    from models.segments import Result

PLOTS = ("sizes.png", "profile.png", "pca.png", "k_selection.png", "purchase_rate.png")
PCA_POINTS = 5_000  # at most this many snapshots in the scatter (a fixed-seed sample)
DPI = 110


def _save(path: Path) -> None:
    plt.tight_layout()
    plt.savefig(path, dpi=DPI, metadata={"Software": None}, bbox_inches="tight")
    plt.close()


def _label(c: dict[str, Any], width: int = 38) -> str:
    return f"{c['id']}: " + "\n".join(textwrap.wrap(c["name"], width, break_on_hyphens=False))


def _colour(i: int) -> Any:
    return plt.get_cmap("tab10")(i % 10)


def write(out: Path, result: Result) -> None:
    meta = result.meta
    clusters = meta["clusters"]
    k = len(clusters)
    names = [f["name"] for f in meta["features"]]

    # cluster sizes
    plt.figure(figsize=(7, 1.0 + 0.55 * k))
    shares = [c["share"] for c in clusters]
    ys = np.arange(k)[::-1]
    plt.barh(ys, shares, color=[_colour(c["id"]) for c in clusters])
    for y, c in zip(ys, clusters, strict=True):
        plt.text(c["share"], y, f" {c['size']:,}", va="center", fontsize=8)
    plt.yticks(ys, [_label(c) for c in clusters], fontsize=7)
    plt.xlabel("share of training snapshots")
    plt.xlim(0, max(shares) * 1.25)
    plt.title(f"Cluster sizes ({meta['version']}, K = {k})")
    _save(out / "sizes.png")

    # centroid profile heat map (scaled units; colour clipped at +-2.5)
    z = np.asarray([[c["z"][n] for n in names] for c in clusters])
    plt.figure(figsize=(1.8 + 0.62 * len(names), 1.6 + 0.5 * k))
    plt.imshow(np.clip(z, -2.5, 2.5), cmap="RdBu_r", vmin=-2.5, vmax=2.5, aspect="auto")
    for i in range(k):
        for j in range(len(names)):
            text = f"{z[i, j]:.1f}"
            plt.text(j, i, "0.0" if text == "-0.0" else text, ha="center", va="center", fontsize=7)
    plt.xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    plt.yticks(range(k), [_label(c, 30) for c in clusters], fontsize=7)
    plt.colorbar(label="z: sd from the population mean", shrink=0.8)
    plt.title("Centroid profile (scaled units)")
    _save(out / "profile.png")

    # 2-D PCA of the snapshots
    from sklearn.decomposition import PCA

    x = result.fit.x
    labels = result.fit.labels
    pca = PCA(n_components=2, svd_solver="full").fit(x)
    shown = np.arange(len(x))
    if len(x) > PCA_POINTS:
        shown = np.sort(np.random.default_rng([7, 3]).choice(len(x), PCA_POINTS, replace=False))
    xy = pca.transform(x[shown])
    centres = pca.transform(np.asarray(meta["centroids"]))
    plt.figure(figsize=(7, 5.5))
    for c in clusters:
        m = labels[shown] == c["id"]
        plt.scatter(xy[m, 0], xy[m, 1], s=6, alpha=0.5, color=_colour(c["id"]),
                    label=_label(c, 44).replace("\n", " "))  # fmt: skip
    plt.scatter(centres[:, 0], centres[:, 1], marker="X", s=90, c="k")
    for c, (cx, cy) in zip(clusters, centres, strict=True):
        plt.annotate(str(c["id"]), (cx, cy), xytext=(4, 4), textcoords="offset points")
    ratio = pca.explained_variance_ratio_
    plt.xlabel(f"PC 1 ({ratio[0]:.0%} of variance)")
    plt.ylabel(f"PC 2 ({ratio[1]:.0%} of variance)")
    plt.legend(fontsize=6, loc="best", markerscale=2)
    plt.title("Snapshots by cluster, 2-D PCA of the scaled vectors")
    plt.grid(alpha=0.3)
    _save(out / "pca.png")

    # K selection
    sel = meta["k_selection"]
    table = sel["table"]
    ks = [r["k"] for r in table]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.8))
    sil = [np.nan if r["silhouette"] is None else r["silhouette"] for r in table]
    a1.plot(ks, sil, marker="o")
    a1.set_xlabel("K")
    a1.set_ylabel("silhouette")
    a1.set_title("Silhouette")
    a2.errorbar(ks, [r["ari_mean"] for r in table], yerr=[r["ari_sd"] for r in table],
                marker="o", capsize=3, label="mean ± sd")  # fmt: skip
    a2.plot(ks, [r["ari_min"] for r in table], "v", color="grey", label="min")
    a2.axhline(sel["stable_ari"], color="k", ls="--", lw=0.8, label="stable")
    a2.set_xlabel("K")
    a2.set_ylabel("adjusted Rand index")
    a2.set_title(f"Stability ({meta['spec']['bootstrap']} bootstrap refits)")
    a2.legend(fontsize=7, loc="lower left")
    for a in (a1, a2):
        a.axvline(sel["chosen_k"], color="tab:red", lw=0.8)
        a.grid(alpha=0.3)
        a.set_xticks(ks)
    fig.suptitle(f"Choosing K: K = {sel['chosen_k']} (red)")
    _save(out / "k_selection.png")

    # later purchase rate per cluster of the evaluation refit
    later = meta["evaluation"]["later_periods"]
    rows = later["clusters"]
    plt.figure(figsize=(7, 1.2 + 0.55 * len(rows)))
    ys = np.arange(len(rows))[::-1]
    rates = np.asarray([r["rate"] if r["rate"] is not None else np.nan for r in rows])
    lo = np.asarray([r["rate_ci"][0] if r["rate_ci"][0] is not None else np.nan for r in rows])
    hi = np.asarray([r["rate_ci"][1] if r["rate_ci"][1] is not None else np.nan for r in rows])
    plt.barh(ys, rates, xerr=[rates - lo, hi - rates], capsize=3,
             color=[_colour(r["cluster"]) for r in rows])  # fmt: skip
    plt.axvline(later["overall_rate"], color="k", ls="--", lw=0.8, label="overall")
    plt.yticks(ys, [_label({"id": r["cluster"], "name": r["name"]}) for r in rows], fontsize=7)
    plt.xlabel(f"share buying within {later['horizon']} of a later cut-off (95 % interval)")
    plt.legend(fontsize=7)
    plt.title("Later purchase rate by cluster (evaluation refit)")
    _save(out / "purchase_rate.png")

    (out / "report.md").write_text(markdown(meta), encoding="utf-8")


def _f(v: Any, fmt: str = ".3f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def markdown(meta: dict[str, Any]) -> str:
    data = meta["data"]
    snaps = meta["snapshots"]
    spec = meta["spec"]
    sel = meta["k_selection"]
    ev = meta["evaluation"]
    later = ev["later_periods"]
    stab = ev["stability_ari"]
    clusters = meta["clusters"]
    scaling = meta["scaling"]
    names = [f["name"] for f in meta["features"]]
    listed = {f["name"]: f for f in meta["feature_list"]}

    feature_rows = "\n".join(
        f"| {f['name']} | `{f['source']}` | {f['transform']} | {f['fill']:g} | "
        f"{f['lo']:.4g} .. {f['hi']:.4g} | {f['mean']:.4g} | {f['scale']:.4g} | "
        f"{listed[f['name']]['label']} |"
        for f in meta["features"]
    )
    notes = "\n".join(f"- {n}" for n in scaling["notes"]) or "- none"
    k_rows = "\n".join(
        ("| **{k}** |" if r["k"] == sel["chosen_k"] else "| {k} |").format(k=r["k"])
        + f" {_f(r['silhouette'])} | {r['ari_mean']:.3f} | {r['ari_sd']:.3f} | "
        f"{r['ari_min']:.3f} | {r['smallest_cluster_share']:.1%} | {r['inertia']:,.0f} |"
        for r in sel["table"]
    )
    k_notes = "".join(f"\n- {n}" for n in sel["notes"])
    cluster_rows = "\n".join(
        f"| {c['id']} | {c['name']} | {c['size']:,} | {c['share']:.1%} | {c['description']} |"
        for c in clusters
    )
    # the two peak-hour coordinates share one raw value (the circular mean hour): one column
    shown = [n for n in names if n != "peak_hour_cos"]
    header = [("peak hour (UTC)" if n == "peak_hour_sin" else n) for n in shown]

    def cell(name: str, v: float) -> str:
        return f"{v:.1f}" if name == "peak_hour_sin" else f"{v:.3g}"

    centroid_rows = "\n".join(
        f"| {c['id']} | " + " | ".join(cell(n, c["centroid"][n]) for n in shown) + " |"
        for c in clusters
    )
    population = " | ".join(cell(n, meta["population"][n]) for n in shown)
    rate_rows = "\n".join(
        f"| {r['cluster']} | {r['name']} | {r['examples']:,} | {r['users']:,} | "
        f"{r['purchases']:,} | {_pct(r['rate'])} [{_pct(r['rate_ci'][0])}, "
        f"{_pct(r['rate_ci'][1])}] | {_f(r['lift'], '.2f')} |"
        for r in later["clusters"]
    )
    cutoff_rows = "\n".join(
        f"| {c['cutoff']} | {c['users']:,} | {c['purchases']:,} | {_pct(c['purchase_rate'])} | "
        f"{_f(c['chi2_p_value'], '.3g')} |"
        for c in later["cutoffs"]
    )
    test = later["independence"]
    test_line = (
        f"chi-square = {test['chi2']:.2f} with {test['dof']} degrees of freedom, "
        f"p = {test['p_value']:.3g}"
        if test["chi2"] is not None
        else "not computable (no purchases, or a single cluster)"
    )
    test_note = f" {test['note']}." if test.get("note") else ""
    stable_word = "stable" if sel["chosen_is_stable"] else "not stable by the rule"
    holdout_stable = "stable" if later["k_stable"] else "not stable by the rule"
    params = ", ".join(f"{k} {v}" for k, v in meta["training"]["params"].items())
    lo_pct, hi_pct = scaling["clip_percentiles"]
    return f"""# {meta["name"]} {meta["version"]}

K-means segmentation of shoppers by the job's own profile features (`models/segments.py`).

- K = {sel["chosen_k"]} ({stable_word}), silhouette {_f(ev["silhouette"])}
- bootstrap stability (adjusted Rand index): mean {stab["mean"]:.3f}, sd {stab["sd"]:.3f},
  min {stab["min"]:.3f}
- later purchases: {later["verdict"]}

## Data and snapshots
- source: `{data["source"]}` ({data["format"]}), sha256 `{data.get("sha256", "-")}`
- events read: {data["events"]:,} (rejected by the contract: {data["rejected"]:,}) from
  {data["users"]:,} users; event time {data["time_range"][0]} .. {data["time_range"][1]}
- snapshots (`{snaps["mode"]}`): {snaps["rows"]:,} rows of {snaps["users"]:,} users, the last
  at {snaps["cutoff"]}. {snaps["definition"][0].upper() + snaps["definition"][1:]}, the row
  on which the job assigns the cluster.

## Features and scaling
Declared in `models/segments.py` (`FEATURES`). Each source value (NaN replaced by the fill) goes
through its transform, is clipped to the {lo_pct:g}th .. {hi_pct:g}th percentile of the
training snapshots and standardised; the peak-hour coordinates are not clipped and have the
fixed scale {scaling["cyclic_scale"]:.4f} (1/√2, their standard deviation over a uniform day).

| feature | source | transform | fill | clip | mean | scale | measures |
|---|---|---|---|---|---|---|---|
{feature_rows}

Special cases:
{notes}

## Choosing K
Rule, declared before fitting: {sel["rule"]}.

For each K: K-means on all snapshots; its silhouette on {ev["silhouette_sample"]:,} snapshots
(a fixed-seed sample when there are more); its stability, the adjusted Rand index (ARI)
between the full fit's clusters and those of a refit on each of {spec["bootstrap"]} bootstrap
resamples of the users (a drawn user brings all of their snapshots; every snapshot is labelled
by the refit's nearest centroid).

| K | silhouette | ARI mean | ARI sd | ARI min | smallest cluster | inertia |
|---|---|---|---|---|---|---|
{k_rows}

Chosen: K = {sel["chosen_k"]}.{k_notes}

![K selection](k_selection.png)

## Clusters
Ids by size (0 the largest). Names and descriptions are generated from each cluster's most
distinctive features: a feature is distinctive when the centroid lies at least
{meta["training"]["names"]["distinct_z"]} standard deviations from the population mean; the
hour phrase comes from the members' mean peak hour in local time (UTC{spec["tz_offset_hours"]:+g}).

| id | name | snapshots | share | description |
|---|---|---|---|---|
{cluster_rows}

Members' mean raw values (the peak hour: circular mean):

| id | {" | ".join(header)} |
|---|{"---|" * len(shown)}
{centroid_rows}
| all | {population} |

![Cluster sizes](sizes.png)
![Centroid profile](profile.png)
![PCA](pca.png)

## Evaluation
- Silhouette of the chosen K: {_f(ev["silhouette"])} (-1 to 1; near 0 means clusters that
  touch, as groups of shoppers usually do).
- Stability over {stab["resamples"]} bootstrap refits: ARI mean {stab["mean"]:.3f}, sd
  {stab["sd"]:.3f}, min {stab["min"]:.3f}, 5th percentile {stab["p05"]:.3f}.
- `Segmentation.assign` (the job's pure-Python nearest centroid) and scikit-learn's `predict`
  disagree on {ev["assign_vs_kmeans_mismatches"]} training snapshots.

### Purchases in later periods
{later["protocol"][0].upper() + later["protocol"][1:]}. Training cut-off
{later["train_cutoff"]}: {later["train_snapshots"]:,} training snapshots; the refit chose
K = {later["k"]} ({holdout_stable}; silhouette {_f(later["silhouette"])}, mean ARI
{_f(later["ari_mean"])}).

| later cut-off | users | purchases | rate | chi-square p, this cut-off alone |
|---|---|---|---|---|
{cutoff_rows}

Pooled: {later["examples"]:,} examples of {later["users"]:,} users, {later["purchases"]:,}
with a purchase: overall rate {_pct(later["overall_rate"])} [{_pct(later["overall_rate_ci"][0])},
{_pct(later["overall_rate_ci"][1])}].

| cluster (refit) | name | examples | users | purchases | rate [95 % Wilson] | lift |
|---|---|---|---|---|---|---|
{rate_rows}

Independence of cluster and label, pooled: {test_line}.{test_note} Caveat: {later["caveat"]}.

**Verdict**: {later["verdict"]}.

The refit's clusters are not the shipped ones (they saw fewer days): on the shipped training
snapshots the two segmentations agree with an ARI of {later["agreement_with_shipped_ari"]:.3f}.

![Later purchase rate](purchase_rate.png)

## Rebuild
```
{meta["rebuild"]}
```
(`--events` the file whose sha256 is above). scikit-learn {meta["versions"]["scikit-learn"]},
numpy {meta["versions"]["numpy"]}, Python {meta["versions"]["python"]}; K-means: {params};
one thread.
"""
