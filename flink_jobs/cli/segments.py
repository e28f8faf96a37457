"""Learned shopper segments: `profilestream segments train` fits the K-means segmentation the job
assigns on every update (udfs/clusters.py) on an event log and writes its directory. The
procedure itself is in models/segments.py (no Flink); docs/segments.md describes it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from flink_jobs.cli.parser import Subparsers, add_log, log_args
from flink_jobs.config import Environment
from udfs.params import ProfileParams

DEFAULT_SUFFIX = "s1"


def register(sub: Subparsers, env: Environment) -> None:
    segments = sub.add_parser("segments", help="learned shopper segments (K-means clusters)")
    ssub = segments.add_subparsers(dest="segments_command", required=True)
    train = ssub.add_parser(
        "train",
        help="fit the segmentation on an event log: K chosen by silhouette and bootstrap "
        "stability, evaluated on later purchases",
    )
    add_log(train, 100_000, 5_000)
    train.add_argument(
        "--version", help=f"segmentation version (default: <format>-{DEFAULT_SUFFIX})"
    )
    train.add_argument(
        "--out", type=Path, help="output directory (default: models/segments/<version>)"
    )
    train.add_argument(
        "--snapshots",
        choices=["end", "daily"],
        default="end",
        help="training rows: every user's row at the end of the log (end), or the rows written "
        "each local day (daily)",
    )
    train.add_argument("--k-min", type=int, default=3, help="smallest K tried (default 3)")
    train.add_argument("--k-max", type=int, default=10, help="largest K tried (default 10)")
    train.add_argument(
        "--bootstrap", type=int, default=50, help="bootstrap refits per K for stability (50)"
    )
    train.add_argument(
        "--tz-offset-hours",
        type=float,
        default=8.0,
        help="UTC offset of the data's local time: daily cut-offs, hour names (Taobao: +8)",
    )
    train.add_argument(
        "--horizon-minutes",
        type=int,
        default=24 * 60,
        help="evaluation label: a purchase within this many minutes of a cut-off (1440)",
    )
    train.add_argument(
        "--period-minutes",
        type=int,
        help="minutes between evaluation cut-offs (default: the horizon)",
    )
    train.add_argument(
        "--eval-periods",
        type=int,
        default=3,
        help="label periods held out at the end of the log for the evaluation (3)",
    )
    train.set_defaults(handler=cmd_segments_train)


def segment_spec(args: argparse.Namespace) -> Any:
    from models.segments import MINUTE_MS, SegmentSpec

    period = args.period_minutes if args.period_minutes is not None else args.horizon_minutes
    return SegmentSpec(
        snapshots=args.snapshots,
        tz_offset_hours=args.tz_offset_hours,
        k_min=args.k_min,
        k_max=args.k_max,
        bootstrap=args.bootstrap,
        horizon_ms=args.horizon_minutes * MINUTE_MS,
        period_ms=period * MINUTE_MS,
        eval_periods=args.eval_periods,
    )


def cmd_segments_train(args: argparse.Namespace) -> int:
    from models.segments import SEGMENTS_DIR, run

    spec = segment_spec(args)  # bad settings fail before the log is read
    path, synthetic = log_args(args)
    version = args.version or f"{args.fmt}-{DEFAULT_SUFFIX}"
    out = args.out or SEGMENTS_DIR / version
    result = run(args.fmt, path, out, version, spec, ProfileParams(), synthetic)
    print(f"wrote {out}: segmentation.json, report.md and plots")
    print_summary(result.meta)
    return 0


def print_summary(meta: dict[str, Any]) -> None:
    sel = meta["k_selection"]
    ev = meta["evaluation"]
    stab = ev["stability_ari"]
    snaps = meta["snapshots"]
    print(
        f"  {snaps['rows']:,} snapshots ({snaps['mode']}) of {snaps['users']:,} users; K = "
        f"{sel['chosen_k']} ({'stable' if sel['chosen_is_stable'] else 'not stable by the rule'})"
        f", silhouette {ev['silhouette']:.3f}, bootstrap ARI {stab['mean']:.3f} ± "
        f"{stab['sd']:.3f} (min {stab['min']:.3f})"
    )
    for note in sel["notes"]:
        print(f"  note: {note}")
    for c in meta["clusters"]:
        print(f"  {c['id']:>2} {c['share']:>6.1%}  {c['name']}")
    later = ev["later_periods"]
    print(
        f"  later purchases ({later['examples']:,} examples after {later['train_cutoff']}, "
        f"label {later['horizon']}; refit K = {later['k']}): overall "
        f"{later['overall_rate']:.2%}"
    )
    for r in later["clusters"]:
        lo, hi = r["rate_ci"]
        rate = "n/a" if r["rate"] is None else f"{r['rate']:.2%} [{lo:.2%}, {hi:.2%}]"
        lift = "n/a" if r["lift"] is None else f"{r['lift']:.2f}"
        print(f"  {r['cluster']:>2} {r['examples']:>7,} {rate:<26} lift {lift:<5} {r['name']}")
    print(f"  {later['verdict']}")
