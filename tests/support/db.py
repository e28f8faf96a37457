"""SQL helpers for the tests on a real PostgreSQL: the upsert Flink's JDBC sink sends, a profile
row to send with it, and a one-statement query."""

from __future__ import annotations

import psycopg2

from udfs.rows import PROFILE_COLUMN_NAMES

# The columns the sink writes: the job's row (udfs.rows.PROFILE_COLUMNS).
SINK_COLUMN_NAMES = PROFILE_COLUMN_NAMES

# The statement Flink's Postgres dialect sends for an upsert (no WHERE clause).
UPSERT = (
    f"INSERT INTO user_profiles ({', '.join(SINK_COLUMN_NAMES)}) VALUES "
    f"({', '.join(['%s'] * len(SINK_COLUMN_NAMES))}) ON CONFLICT (user_id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in SINK_COLUMN_NAMES[1:])
)


def profile_row(
    version: int, score: float = 0.5, epoch: int = 1_735_689_600_000
) -> tuple[object, ...]:
    """Alice's profile row at `version` (of the profile started at `epoch`), in UPSERT's order;
    without a cluster (as written before the job assigned them)."""
    values: dict[str, object] = {name: 0 for name in SINK_COLUMN_NAMES}
    values.update(
        user_id="alice",
        profile_epoch_ms=epoch,
        profile_version=version,
        as_of_ms=epoch + version,
        expired=False,
        segment="new",
        score=score,
        model_version="m1",
        spend_micros=1_500_000,
        first_event_ms=epoch,
        last_event_ms=epoch + version,
        last_purchase_ms=None,
        activity_score=1.0,
        top_category="shoes",
        features='{"cnt_view_life": 1}',
        score_reasons='[{"feature": "cnt_cart_24h", "contribution": 0.25}]',
        cluster_id=None,
        cluster_version=None,
    )
    return tuple(values[name] for name in SINK_COLUMN_NAMES)


def row_with(version: int, **changes: object) -> tuple[object, ...]:
    """`profile_row(version)` with some columns changed (by name)."""
    values = dict(zip(SINK_COLUMN_NAMES, profile_row(version), strict=True))
    unknown = set(changes) - set(values)
    if unknown:
        raise KeyError(f"not a sink column: {sorted(unknown)}")
    values.update(changes)
    return tuple(values[name] for name in SINK_COLUMN_NAMES)


def query(dsn: str, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()
