"""Where PostgreSQL's CPU per profile row goes: the job's own rows upserted into a fresh
embedded PostgreSQL under variants of the schema, alternated, backend CPU per row.

    .venv/bin/python -m bench.pg_upsert                  # 100,000 events, two rounds
    .venv/bin/python -m bench.pg_upsert --events 20000 --rounds 1

The rows are what the job writes for the bench's synthetic events (the plain-Python engine, as
the ceiling runs it), batched 250 at a time with the last row per user of each batch (what
Flink's JDBC sink keeps per flush) and sent as one multi-row `INSERT ... ON CONFLICT DO UPDATE`
with the values as text, so the statement costs more than the sink's prepared JDBC batches:
compare the variants with each other, not with the job. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from psycopg2.extras import execute_values

from bench.cpu import postgres_cpu_seconds
from bench.e2e import plain_host
from flink_jobs.config import DEFAULT_MODEL_DIR
from flink_jobs.io import db
from flink_jobs.ops.services import EmbeddedPostgres
from udfs.events import decode_event
from udfs.params import ProfileParams
from udfs.pseudonym import ensure_key_file
from udfs.rows import PROFILE_COLUMN_NAMES, PROFILE_COLUMNS
from udfs.sources import SyntheticSpec, synthetic_events

BATCH = 250
SECONDARY_INDEXES = (
    "user_profiles_updated_idx",
    "user_profiles_last_event_idx",
    "user_profiles_score_idx",
    "user_profiles_segment_idx",
    "user_profiles_expired_idx",
    "user_profiles_pseudonym_idx",
)
VARIANTS: dict[str, list[str]] = {
    "as migrated": [],
    "no user triggers (no history rows)": ["ALTER TABLE user_profiles DISABLE TRIGGER USER"],
    "no secondary indexes": [f"DROP INDEX {name}" for name in SECONDARY_INDEXES],
    "no updated_at / last_event_at indexes": [
        f"DROP INDEX {name}" for name in SECONDARY_INDEXES[:2]
    ],
    "features uncompressed (STORAGE EXTERNAL)": [
        "ALTER TABLE user_profiles ALTER COLUMN features SET STORAGE EXTERNAL"
    ],
}


def job_rows(events: int, users: int) -> list[tuple[Any, ...]]:
    """The rows the job writes for the bench's synthetic events, JSON columns as text."""
    scorer, host = plain_host(DEFAULT_MODEL_DIR, ProfileParams())
    json_columns = [i for i, (_, kind) in enumerate(PROFILE_COLUMNS) if kind == "json"]
    now_ms = int(time.time() * 1000)
    rows: list[tuple[Any, ...]] = []
    for message in synthetic_events(SyntheticSpec(events=events, users=users, seed=42)):
        row = host.on_event(decode_event(message.SerializeToString(), now_ms), "bench", now_ms).row
        if row is not None:
            values = list(row)
            for i in json_columns:
                if isinstance(values[i], bytes):
                    values[i] = values[i].decode("utf-8")
            rows.append(tuple(values))
    scorer.close()
    return rows


def batches(rows: list[tuple[Any, ...]]) -> list[list[tuple[Any, ...]]]:
    """BATCH rows at a time, the last row per user of each (user_id is the first column)."""
    return [
        list({r[0]: r for r in rows[i : i + BATCH]}.values()) for i in range(0, len(rows), BATCH)
    ]


def run_variant(
    pg: EmbeddedPostgres, statements: list[str], work: list[list[tuple[Any, ...]]]
) -> dict[str, float]:
    pg.recreate_database()
    dsn = pg.dsn()
    db.migrate(dsn)
    casts = ", ".join("%s::jsonb" if kind == "json" else "%s" for _, kind in PROFILE_COLUMNS)
    upsert = (
        f"INSERT INTO user_profiles ({', '.join(PROFILE_COLUMN_NAMES)}) VALUES %s"
        " ON CONFLICT (user_id) DO UPDATE SET "
        + ", ".join(f"{c} = EXCLUDED.{c}" for c in PROFILE_COLUMN_NAMES[1:])
    )
    rows = sum(len(b) for b in work)
    with closing(db.connect(dsn)) as conn, conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)
        cpu, wall = postgres_cpu_seconds(pg.data_dir), time.perf_counter()
        for batch in work:
            execute_values(cur, upsert, batch, template=f"({casts})", page_size=len(batch))
        cpu, wall = postgres_cpu_seconds(pg.data_dir) - cpu, time.perf_counter() - wall
        cur.execute(
            "SELECT pg_total_relation_size('user_profiles'),"
            " (SELECT count(*) FROM user_profile_history)"
        )
        table_bytes, history_rows = cur.fetchone()
    return {
        "cpu_us_per_row": cpu / rows * 1e6,
        "wall_us_per_row": wall / rows * 1e6,
        "table_mb": table_bytes / 1e6,
        "history_rows": history_rows,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--users", type=int, help="default: a quarter of --events")
    parser.add_argument("--rounds", type=int, default=2, help="every variant once per round")
    args = parser.parse_args(argv)
    work_dir = Path(tempfile.mkdtemp(prefix="profilestream-pg-upsert-"))
    ensure_key_file(work_dir / "pseudonym.key")  # unless a key is configured
    print(f"the job's rows for {args.events:,} synthetic events ...", flush=True)
    work = batches(job_rows(args.events, args.users or max(1, args.events // 4)))
    print(f"{sum(len(b) for b in work):,} rows in {len(work):,} batches", flush=True)
    pg = EmbeddedPostgres(work_dir / "pgdata", database="pg_upsert")
    try:
        pg.start()
        for round_ in range(args.rounds):
            for name, statements in VARIANTS.items():
                r = run_variant(pg, statements, work)
                print(
                    f"round {round_ + 1}  {name:42s} PostgreSQL {r['cpu_us_per_row']:6.1f} µs CPU"
                    f" per row (wall {r['wall_us_per_row']:6.1f} µs), table {r['table_mb']:.0f} MB,"
                    f" {r['history_rows']:,} history rows",
                    flush=True,
                )
    finally:
        pg.stop()
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
