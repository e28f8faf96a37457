"""The rows the job writes to PostgreSQL, as plain tuples in column order.

`PROFILE_COLUMNS` is the single list of (name, kind) that the Flink sink schema, the JDBC table
declaration and the consistency checker are built from; the SQL migration must define the same
columns (the end-to-end test reads them back).
"""

from __future__ import annotations

import hashlib
from typing import Final

from udfs.profile import Profile

# kind: "string" | "bigint" | "int" | "double" | "bytes"
PROFILE_COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("user_id", "string"),
    ("profile_version", "bigint"),
    ("event_count", "bigint"),
    ("views", "bigint"),
    ("carts", "bigint"),
    ("removes", "bigint"),
    ("favorites", "bigint"),
    ("purchases", "bigint"),
    ("searches", "bigint"),
    ("spend_micros", "bigint"),
    ("other_purchases", "bigint"),
    ("first_event_ms", "bigint"),
    ("last_event_ms", "bigint"),
    ("activity_score", "double"),
    ("distinct_categories", "int"),
    ("score", "double"),
    ("model_version", "string"),
)
PROFILE_COLUMN_NAMES: Final[tuple[str, ...]] = tuple(name for name, _ in PROFILE_COLUMNS)

DEAD_LETTER_COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("dead_letter_id", "string"),
    ("reason", "string"),
    ("detail", "string"),
    ("raw", "bytes"),
    ("source_topic", "string"),
    ("seen_at_ms", "bigint"),
)

ProfileRow = tuple[
    str, int, int, int, int, int, int, int, int, int, int, int, int, float, int, float, str
]


def profile_row(user_id: str, profile: Profile, score: float, model_version: str) -> ProfileRow:
    views, carts, removes, favorites, purchases, searches = profile.counts
    return (
        user_id,
        profile.version,
        views + carts + removes + favorites + purchases + searches,
        views,
        carts,
        removes,
        favorites,
        purchases,
        searches,
        profile.spend_micros,
        profile.other_purchases,
        profile.first_event_ms,
        profile.last_event_ms,
        profile.activity,
        len(profile.category_hashes),
        score,
        model_version,
    )


def dead_letter_id(raw: bytes) -> str:
    """Idempotent key of a dead letter: the SHA-256 of its bytes (a replay writes the same key)."""
    return hashlib.sha256(raw).hexdigest()


def dead_letter_row(
    raw: bytes, reason: str, detail: str, topic: str, seen_at_ms: int
) -> tuple[str, str, str, bytes, str, int]:
    return (dead_letter_id(raw), reason, detail[:1000], raw, topic, seen_at_ms)
