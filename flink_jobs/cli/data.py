"""The data in PostgreSQL: `profilestream db migrate|rotate-pseudonyms` (the schema and the
pseudonyms in it) and `profilestream verify` (recompute every profile from an event log with the
`udfs` code, the job's own engine without Flink, and compare with what is in PostgreSQL)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flink_jobs.cli.parser import (
    Subparsers,
    add_log,
    add_model_dir,
    add_pg,
    add_segments_dir,
    log_args,
)
from flink_jobs.config import Environment, environment, require
from flink_jobs.io import db, registry
from udfs.clusters import load_segmentation
from udfs.consistency import Expected, Mismatch, compare_profiles, recompute, scored_engine
from udfs.errors import ModelError
from udfs.events import Reason
from udfs.params import ProfileParams
from udfs.pseudonym import Pseudonymiser, load_key
from udfs.rows import PROFILE_COLUMN_NAMES
from udfs.scoring import Scorer
from udfs.sources import message_bytes


def register(sub: Subparsers, env: Environment) -> None:
    verify_p = sub.add_parser("verify", help="compare PostgreSQL with an offline recomputation")
    add_log(verify_p, 10_000, 1_000)
    add_pg(verify_p, env)
    add_model_dir(verify_p, env)
    add_segments_dir(verify_p, env)
    verify_p.add_argument(
        "--topic", default=env.topic, help="the topic the job read (dead letters record it)"
    )
    verify_p.add_argument("--examples", type=int, default=5, help="mismatches to print")
    verify_p.set_defaults(handler=cmd_verify)

    dbp = sub.add_parser("db", help="database schema")
    dbsub = dbp.add_subparsers(dest="db_command", required=True)
    mig = dbsub.add_parser("migrate", help="apply pending SQL migrations (idempotent)")
    add_pg(mig, env)
    rot = dbsub.add_parser(
        "rotate-pseudonyms",
        help="rewrite every pseudonym with the key now in PROFILESTREAM_PSEUDONYM_KEY[_FILE]"
        " (stop the job first)",
    )
    add_pg(rot, env)
    dbp.set_defaults(handler=cmd_db)


def cmd_verify(args: argparse.Namespace) -> int:
    dsn = require(args.pg_dsn, "PG_DSN", "--pg-dsn")
    path, spec = log_args(args)
    report = verify(
        args.fmt,
        path,
        dsn,
        args.model_dir,
        ProfileParams(),
        Pseudonymiser(load_key()),
        topic=args.topic,
        spec=spec,
        segments_dir=args.segments_dir,
    )
    print_report(report, args.examples)
    return 0 if report.ok else 1


def cmd_db(args: argparse.Namespace) -> int:
    dsn = require(args.pg_dsn, "PG_DSN", "--pg-dsn")
    if args.db_command == "rotate-pseudonyms":
        pseudonymiser = Pseudonymiser(load_key())
        db.require_schema(dsn)
        profiles, history = db.rotate_pseudonyms(dsn, pseudonymiser, pseudonymiser.key_id)
        print(
            f"pseudonyms rewritten with key id {pseudonymiser.key_id}: {profiles} profiles, "
            f"{history} history rows"
        )
        return 0
    applied = db.migrate(dsn)
    version = db.schema_version(dsn)
    print(
        f"schema at version {version}; applied now: "
        + (", ".join(m.path.name for m in applied) or "nothing (up to date)")
    )
    return 0


@dataclass
class VerifyReport:
    expected: Expected
    profiles_in_db: int
    mismatches: list[Mismatch] = field(default_factory=list)
    dead_letter_problems: list[str] = field(default_factory=list)
    # Records whose Kafka key was not their user_id: a log file carries no keys (replays are keyed
    # by user_id), so these are counted, not compared.
    key_mismatches: int = 0
    # The model versions rows name or the registry says served; reasons are compared only when
    # there is one (see `verify`).
    model_versions: list[str] = field(default_factory=list)
    reasons_compared: bool = True
    # The segmentation the clusters were recomputed with, and rows naming another one
    # (cluster_version -> rows): their clusters cannot be compared.
    cluster_version: str | None = None
    other_cluster_versions: dict[str, int] = field(default_factory=dict)

    @property
    def users_mismatched(self) -> int:
        return len({m.user_id for m in self.mismatches})

    @property
    def cluster_problems(self) -> list[str]:
        return [
            f"{n:,} rows name cluster_version {version!r}, not {self.cluster_version!r} (the "
            "segmentation of --segments-dir): their clusters were not compared; pass "
            "--segments-dir with that segmentation"
            for version, n in sorted(self.other_cluster_versions.items())
        ]

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.dead_letter_problems and not self.cluster_problems


def fetch_profiles(dsn: str) -> dict[str, tuple[Any, ...]]:
    conn = db.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT {', '.join(PROFILE_COLUMN_NAMES)} FROM user_profiles")
            return {row[0]: tuple(row) for row in cur.fetchall()}
    finally:
        conn.close()


def fetch_dead_letters(dsn: str) -> dict[str, str]:
    conn = db.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT dead_letter_id, reason FROM dead_letter_events")
            return dict(cur.fetchall())
    finally:
        conn.close()


MODEL_VERSION = PROFILE_COLUMN_NAMES.index("model_version")
CLUSTER_VERSION = PROFILE_COLUMN_NAMES.index("cluster_version")
CLUSTER_COLUMNS = frozenset({"cluster_id", "cluster_version"})


def verify(
    fmt: str,
    path: Path | None,
    pg_dsn: str,
    model_dir: Path,
    params: ProfileParams,
    pseudonym: Callable[[str], str],
    *,
    topic: str = "",
    max_out_of_orderness_ms: int = 5_000,
    spec: Any = None,
    segments_dir: Path | None = None,
) -> VerifyReport:
    """Recompute every profile from the log and compare with PostgreSQL. Each user is scored
    with the model version their row names (from the model registry; `model_dir` when the
    registry does not have it), so scores match exactly after a model switch too. Reasons are
    compared only when a single version ever served: after a switch, a row's reasons come from
    whichever model last explained it, which depends on when the switch happened.

    Clusters are recomputed with the segmentation of `segments_dir` (None: the default one) and
    compared like every column; a row naming another cluster_version is reported as such
    (`VerifyReport.cluster_problems`) instead of as a cluster mismatch."""
    segmentation = load_segmentation(segments_dir or environment().segments_dir)
    actual = fetch_profiles(pg_dsn)
    named = sorted({str(row[MODEL_VERSION]) for row in actual.values()})
    served = served_versions(pg_dsn)
    scorers = model_scorers(named, model_dir, pg_dsn)
    now_ms = int(time.time() * 1000)
    recomputed: dict[str, Expected] = {}
    try:
        for version, scorer in scorers.items():
            engine = scored_engine(scorer, pseudonym, params, segmentation, version)
            recomputed[version] = recompute(
                message_bytes(fmt, path, spec=spec),
                engine,
                now_ms=now_ms,
                topic=topic,
                max_out_of_orderness_ms=max_out_of_orderness_ms,
            )
    finally:
        for scorer in scorers.values():
            scorer.close()
    expected = next(iter(recomputed.values()))
    profiles = dict(expected.profiles)
    for user_id, row in actual.items():
        by_model = recomputed[str(row[MODEL_VERSION])].profiles
        if user_id in by_model:
            profiles[user_id] = by_model[user_id]
    expected.profiles = profiles
    versions = sorted(set(named) | served)
    ignore = frozenset({"score_reasons"}) if len(versions) > 1 else frozenset()
    other: dict[str, int] = {}
    ignore_for: dict[str, frozenset[str]] = {}
    for user_id, row in actual.items():
        named_version = row[CLUSTER_VERSION]
        if named_version is not None and named_version != segmentation.version:
            other[str(named_version)] = other.get(str(named_version), 0) + 1
            ignore_for[user_id] = CLUSTER_COLUMNS
    report = VerifyReport(
        expected, len(actual), compare_profiles(expected.profiles, actual, ignore, ignore_for)
    )
    report.model_versions = versions
    report.reasons_compared = not ignore
    report.cluster_version = segmentation.version
    report.other_cluster_versions = other
    stored = fetch_dead_letters(pg_dsn)
    for key, reason in expected.dead_letters.items():
        if key not in stored:
            report.dead_letter_problems.append(f"missing dead letter {key[:12]}… ({reason})")
        elif stored[key] != reason:
            report.dead_letter_problems.append(
                f"dead letter {key[:12]}… has reason {stored[key]!r}, expected {reason!r}"
            )
    for key in stored.keys() - expected.dead_letters.keys():
        if stored[key] == Reason.KEY_MISMATCH.value:
            report.key_mismatches += 1
            continue
        report.dead_letter_problems.append(
            f"dead letter {key[:12]}… ({stored[key]}) is not in this log"
        )
    return report


def served_versions(dsn: str) -> set[str]:
    """The versions the model registry says have served (none without a registry)."""
    conn = db.connect(dsn)
    try:
        if not registry.registry_exists(conn):
            return set()
        return {e.version for e in registry.entries(conn) if e.serving_since is not None}
    finally:
        conn.close()


def model_scorers(versions: list[str], model_dir: Path, dsn: str) -> dict[str, Scorer]:
    """A Scorer per model version (`model_dir`'s alone when `versions` is empty): the registry's
    copy, else `model_dir` when it is that version. ModelError naming the fix otherwise."""
    default = Scorer(model_dir)
    out: dict[str, Scorer] = {}
    conn = db.connect(dsn)
    try:
        has_registry = registry.registry_exists(conn)
        for version in versions:
            model = registry.fetch(conn, version) if has_registry else None
            if model is not None:
                out[version] = registry.load(model, check=False)
            elif version == default.version:
                out[version] = default
            else:
                raise ModelError(
                    f"rows in PostgreSQL name model version {version!r}, which is neither in the "
                    f"model registry nor --model-dir ({default.version})",
                    fix="pass --model-dir with that model",
                )
    except BaseException:
        for scorer in (default, *out.values()):
            scorer.close()
        raise
    finally:
        conn.close()
    if not out:
        out[default.version] = default
    elif default not in out.values():
        default.close()
    return out


def print_report(report: VerifyReport, examples: int = 5) -> None:
    e = report.expected
    print(
        f"log: {e.valid_events:,} valid events, {e.invalid_messages:,} invalid messages, "
        f"{e.duplicates:,} duplicates, {e.late_events:,} late events"
    )
    print(f"profiles: {len(e.profiles):,} expected, {report.profiles_in_db:,} in PostgreSQL")
    if not report.reasons_compared:
        print(
            f"score_reasons not compared: {len(report.model_versions)} model versions served "
            f"({', '.join(report.model_versions)}); a row's reasons come from whichever model "
            "last explained it (scores are compared, each with the version its row names)"
        )
    if report.key_mismatches:
        print(
            f"{report.key_mismatches:,} dead letters with reason key_mismatch (records whose "
            "Kafka key was not their user_id; a log file has no keys: not compared)"
        )
    print(f"clusters: recomputed with segmentation {report.cluster_version}")
    for problem in report.cluster_problems:
        print(f"  {problem}")
    print(
        f"mismatches: {len(report.mismatches)} in {report.users_mismatched} profiles; "
        f"dead-letter problems: {len(report.dead_letter_problems)}"
    )
    for m in report.mismatches[:examples]:
        print(f"  {m.user_id}: {m.column}: expected {m.expected!r}, found {m.actual!r}")
    for problem in report.dead_letter_problems[:examples]:
        print(f"  {problem}")
    print(
        "OK: PostgreSQL matches the offline recomputation"
        if report.ok
        else "MISMATCH: PostgreSQL differs from the offline recomputation"
    )
