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

from flink_jobs.cli.parser import Subparsers, add_log, add_model_dir, add_pg, log_args
from flink_jobs.config import Environment, require
from flink_jobs.io import db
from udfs.consistency import Expected, Mismatch, compare_profiles, recompute
from udfs.engine import ProfileEngine
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

    @property
    def users_mismatched(self) -> int:
        return len({m.user_id for m in self.mismatches})

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.dead_letter_problems


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
) -> VerifyReport:
    scorer = Scorer(model_dir)
    engine = ProfileEngine(params, scorer.score, scorer.version, pseudonym, explain=scorer.explain)
    expected = recompute(
        message_bytes(fmt, path, spec=spec),
        engine,
        now_ms=int(time.time() * 1000),
        topic=topic,
        max_out_of_orderness_ms=max_out_of_orderness_ms,
    )
    scorer.close()
    actual = fetch_profiles(pg_dsn)
    report = VerifyReport(expected, len(actual), compare_profiles(expected.profiles, actual))
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


def print_report(report: VerifyReport, examples: int = 5) -> None:
    e = report.expected
    print(
        f"log: {e.valid_events:,} valid events, {e.invalid_messages:,} invalid messages, "
        f"{e.duplicates:,} duplicates, {e.late_events:,} late events"
    )
    print(f"profiles: {len(e.profiles):,} expected, {report.profiles_in_db:,} in PostgreSQL")
    if report.key_mismatches:
        print(
            f"{report.key_mismatches:,} dead letters with reason key_mismatch (records whose "
            "Kafka key was not their user_id; a log file has no keys: not compared)"
        )
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
