"""`profilestream verify`: recompute every profile from an event log with the `udfs` code (the
job's own engine, no Flink) and compare with what is in PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flink_jobs import db
from udfs.consistency import Expected, Mismatch, compare_profiles, recompute
from udfs.engine import ProfileEngine
from udfs.events import Reason
from udfs.params import ProfileParams
from udfs.rows import PROFILE_COLUMN_NAMES
from udfs.scoring import Scorer
from udfs.sources import message_bytes


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
