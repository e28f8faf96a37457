"""The model: `profilestream train` fits the purchase-propensity model on an event log,
`profilestream evaluate` runs the evaluation protocol (rolling origin, baselines, user-clustered
bootstrap intervals) on one, and `profilestream model publish|list` hand a model to the running
job through the model registry (flink_jobs/io/registry.py). The training code itself is in
models/ (no Flink)."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC
from pathlib import Path
from typing import Any

from flink_jobs.cli.parser import Subparsers, add_log, add_model_dir, add_pg, log_args
from flink_jobs.config import DEFAULT_MODEL_POLL_INTERVAL_MS, Environment, require
from udfs.errors import ConfigError, ModelError
from udfs.params import HOUR_MS, ProfileParams


def register(sub: Subparsers, env: Environment) -> None:
    train = sub.add_parser("train", help="train the purchase-propensity model on an event log")
    add_log(train, 100_000, 5_000)
    add_examples(train, defaults=True)
    train.add_argument("--version", help="model version (default: <format>-<date>)")
    train.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap replicates (default 1000)"
    )
    train.add_argument(
        "--out", type=Path, help="model directory (default: models/purchase_propensity/<version>)"
    )
    train.set_defaults(handler=cmd_train)

    evaluate = sub.add_parser(
        "evaluate",
        help="the evaluation protocol (rolling origin, baselines, bootstrap intervals) on a log",
    )
    add_model_dir(evaluate, env, flag="--model")
    add_log(evaluate, 100_000, 5_000)
    add_examples(evaluate, defaults=False)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap replicates (default 1000)"
    )
    evaluate.set_defaults(handler=cmd_evaluate)

    model = sub.add_parser("model", help="the model registry: publish a model to the running job")
    msub = model.add_subparsers(dest="model_command", required=True)
    publish = msub.add_parser(
        "publish", help="register a model directory; running jobs check it and switch to it"
    )
    publish.add_argument("dir", type=Path, help="a model directory (model.txt, metadata.json)")
    add_pg(publish, env)
    publish.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="S",
        help="wait up to S seconds for a job to serve or refuse it (exit 0 serving, 1 refused, "
        "3 still pending)",
    )
    publish.set_defaults(handler=cmd_model_publish)
    listing = msub.add_parser("list", help="versions, state, and when each started serving")
    add_pg(listing, env)
    listing.set_defaults(handler=cmd_model_list)


# (flag, type, default when training, help): how `train` builds examples; `evaluate` defaults to
# what the model was trained with (its metadata), so there these default to None.
EXAMPLE_OPTIONS: tuple[tuple[str, type, Any, str], ...] = (
    (
        "--mode",
        str,
        "cutoff",
        "one example per user and period at the cut-off (cutoff), or after one random event of "
        "the user in the period (event)",
    ),
    ("--horizon-hours", float, 24.0, "label: a purchase within this many hours"),
    ("--period-hours", float, None, "hours between cut-offs (default: the horizon)"),
    (
        "--tz-offset-hours",
        float,
        8.0,
        "UTC offset of the data's local midnight, the daily cut-off (Taobao: +8)",
    ),
)


def add_examples(p: argparse.ArgumentParser, defaults: bool) -> None:
    for flag, kind, default, help_text in EXAMPLE_OPTIONS:
        p.add_argument(
            flag,
            type=kind,
            default=default if defaults else None,
            choices=["cutoff", "event"] if flag == "--mode" else None,
            help=help_text + ("" if defaults else " (default: the model's)"),
        )


def example_spec(args: argparse.Namespace, model: dict[str, Any] | None = None) -> Any:
    from models.dataset import ExampleSpec

    saved = (model or {}).get("examples", {})

    def pick(name: str, key: str, fallback: Any) -> Any:
        value = getattr(args, name)
        return value if value is not None else saved.get(key, fallback)

    horizon = float(pick("horizon_hours", "horizon_hours", 24.0))
    period = args.period_hours if args.period_hours is not None else saved.get("period_hours")
    try:
        return ExampleSpec(
            horizon_ms=int(horizon * HOUR_MS),
            period_ms=int(float(period if period is not None else horizon) * HOUR_MS),
            tz_offset_hours=float(pick("tz_offset_hours", "tz_offset_hours", 8.0)),
            mode=str(pick("mode", "mode", "cutoff")),
        )
    except ValueError as exc:
        raise ConfigError(f"examples: {exc}") from exc


def cmd_train(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from models.train import MODELS_DIR, run_training

    path, synthetic = log_args(args)
    version = args.version or f"{args.fmt}-{datetime.now(UTC).strftime('%Y%m%d')}"
    out = args.out or MODELS_DIR / version
    meta = run_training(
        args.fmt, path, out, version, ProfileParams(), example_spec(args), synthetic,
        n_boot=args.bootstrap,
    )  # fmt: skip
    print(f"wrote {out}: model.txt, metadata.json, report.md and plots")
    print_evaluation(meta["evaluation"])
    return 0


def print_evaluation(ev: dict[str, Any]) -> None:
    from models.report import LABELS, verdict

    mean = ev["rolling_origin_mean_roc_auc"]
    print(
        f"  {ev['examples']:,} test examples from {ev['users']:,} users over "
        f"{len(ev['per_period'])} rolling-origin periods; 95 % user-clustered bootstrap intervals"
    )
    print(
        f"  {'model':<26} {'mean AUC':>8}  {'pooled ROC-AUC':<24} {'PR-AUC':<24} "
        f"{'log-loss':<24} {'ECE':<24}"
    )

    def ci(m: dict[str, Any], key: str) -> str:
        lo, hi = m[f"{key}_ci"]
        return "n/a" if m[key] is None else f"{m[key]:.4f} [{lo:.4f}, {hi:.4f}]"

    for name, m in ev["pooled"].items():
        print(
            f"  {LABELS[name]:<26} {mean[name]:>8.4f}  {ci(m, 'roc_auc'):<24} "
            f"{ci(m, 'pr_auc'):<24} {ci(m, 'log_loss'):<24} {ci(m, 'ece'):<24}"
        )
    held = ev["held_out_users"]
    print(
        f"  held-out users: ROC-AUC {held['roc_auc_held_out']:.4f} vs "
        f"{held['roc_auc_seen']:.4f} on users fitted on"
    )
    for line in verdict(ev):
        print("  " + line[2:])


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from models.train import evaluate, load_examples, summary_json
    from udfs.scoring import read_metadata

    info = read_metadata(args.model)  # fails early, naming the fix, on a bad directory
    path, synthetic = log_args(args)
    spec = example_spec(args, info.metadata)
    ex, provenance = load_examples(
        args.fmt, path, ProfileParams(), spec, synthetic, show_progress=not args.json
    )
    result = evaluate(args.model, ex, n_boot=args.bootstrap)
    if args.json:
        print(json.dumps(summary_json(result), indent=2))
        return 0
    print(
        f"model {info.name} {info.version} on {provenance['source']}: "
        f"{provenance['events']:,} events, {provenance['time_range'][0]} .. "
        f"{provenance['time_range'][1]}; {len(ex.y):,} examples ({spec.mode}, "
        f"{spec.horizon_ms / HOUR_MS:g} h label)"
    )
    print_evaluation(result)
    shipped = result["shipped_model"]
    print(
        f"  the shipped model itself on every example: ROC-AUC {shipped['roc_auc']:.4f}, "
        f"ECE {shipped['ece']:.4f} (in-sample when this is its training log)"
    )
    return 0


def cmd_model_publish(args: argparse.Namespace) -> int:
    import time

    from flink_jobs.io import db, registry
    from udfs.registry import ModelState, PublishedModel, check_scorer
    from udfs.scoring import Scorer

    dsn = require(args.pg_dsn, "PG_DSN", "--pg-dsn")
    model = PublishedModel.from_dir(args.dir)
    db.require_schema(dsn)
    try:  # the job decides, with its own code; say now if this checkout's code would refuse it
        scorer = Scorer(args.dir)
        check_scorer(scorer)
        scorer.close()
    except ModelError as exc:
        print(
            f"warning: this checkout's code refuses the model ({exc.message}); a job running "
            "the same code will refuse it too",
            file=sys.stderr,
        )
    entry, new = registry.publish(dsn, model)
    what = "published" if new else "already published:"
    print(f"{what} {model.name} {model.version} (sha256 {model.sha256[:12]}…, {entry.state})")
    if entry.state is ModelState.PENDING:
        print(
            "running jobs check it and switch to it at their next registry poll (every "
            f"--model-poll-interval-ms, default {DEFAULT_MODEL_POLL_INTERVAL_MS / 1000:g} s, on "
            "the next event); follow it with `profilestream model list`"
        )
    if args.wait <= 0:
        return 0
    deadline = time.monotonic() + args.wait
    while entry.state is ModelState.PENDING and time.monotonic() < deadline:
        time.sleep(0.5)
        entry = next(e for e in registry.list_entries(dsn) if e.version == model.version)
    if entry.state is ModelState.REFUSED:
        print(f"refused: {entry.refused_reason}")
        return 1
    if entry.state is ModelState.PENDING:
        print(
            f"still pending after {args.wait:g} s: is a job running, reading events, with "
            "--model-poll-interval-ms above 0?"
        )
        return 3
    since = f" since {_when(entry.serving_since)}" if entry.serving_since else ""
    print(f"{entry.state}{since}")
    return 0


def _when(t: Any) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if t is not None else "-"


def cmd_model_list(args: argparse.Namespace) -> int:
    from flink_jobs.io import db, registry

    dsn = require(args.pg_dsn, "PG_DSN", "--pg-dsn")
    db.require_schema(dsn)
    found = registry.list_entries(dsn)
    if not found:
        print(
            "no model registered yet (a running job registers the model it started with on its "
            "first poll; `profilestream model publish DIR` adds one)"
        )
        return 0
    header = ("VERSION", "STATE", "PUBLISHED (UTC)", "SERVING SINCE", "RETIRED", "REASON")
    rows = [
        (
            e.version,
            e.state.value,
            _when(e.published_at),
            _when(e.serving_since),
            _when(e.retired_at),
            e.refused_reason or "",
        )
        for e in reversed(found)  # newest first
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header) - 1)]
    for r in (header, *rows):
        line = "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1]
        print(line.rstrip())
    return 0
