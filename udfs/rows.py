"""The rows the job writes to PostgreSQL, as plain tuples in column order.

`PROFILE_COLUMNS` is the single list of (name, kind) that the Flink sink schema, the JDBC table
declaration and the consistency checker are built from; the SQL migrations define the same
columns (the end-to-end test reads them back).
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

import orjson

from udfs.features import FEATURE_NAMES, segment
from udfs.profile import Profile

# kind: "string" | "bigint" | "int" | "double" | "boolean" | "bytes" | "json" (a JSON text as
# UTF-8 bytes: the job hands it to Java as a byte array and Flink SQL casts it to STRING in the
# sink, which is far cheaper than a Python str crossing into Java as a UTF-16 string)
PROFILE_COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("user_id", "string"),
    ("user_pseudonym", "string"),  # HMAC-SHA256 of user_id (udfs.pseudonym): what BI sees
    ("profile_epoch_ms", "bigint"),
    ("profile_version", "bigint"),
    ("as_of_ms", "bigint"),
    ("expired", "boolean"),
    ("segment", "string"),  # the rule-based segment (udfs.features.segment)
    # the learned segment: the K-means cluster of the row's features (udfs.clusters) and the
    # segmentation that assigned it; None without a segmentation
    ("cluster_id", "int"),
    ("cluster_version", "string"),
    ("score", "double"),
    ("model_version", "string"),
    # the score's top 3 SHAP contributions (udfs.scoring.explain, udfs.engine); None without a
    # model that explains
    ("score_reasons", "json"),
    ("event_count", "bigint"),
    ("views", "bigint"),
    ("carts", "bigint"),
    ("removes", "bigint"),
    ("favorites", "bigint"),
    ("purchases", "bigint"),
    ("searches", "bigint"),
    ("views_24h", "bigint"),
    ("carts_24h", "bigint"),
    ("purchases_30d", "bigint"),
    ("spend_micros", "bigint"),
    ("spend_30d_micros", "bigint"),
    ("other_purchases", "bigint"),
    ("abandoned_carts", "bigint"),
    ("first_event_ms", "bigint"),
    ("last_event_ms", "bigint"),
    ("last_purchase_ms", "bigint"),
    ("activity_score", "double"),
    ("distinct_categories", "int"),
    ("top_category", "string"),
    ("sessions", "bigint"),
    ("features", "json"),
)
PROFILE_COLUMN_NAMES: Final[tuple[str, ...]] = tuple(name for name, _ in PROFILE_COLUMNS)

DEAD_LETTER_COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("dead_letter_id", "string"),
    ("reason", "string"),
    ("detail", "string"),
    ("raw", "bytes"),
    ("source_topic", "string"),
    ("seen_at_ms", "bigint"),
    ("user_id", "string"),  # the user the message names, when known (erasure finds it by this)
    ("event_time_ms", "bigint"),  # its event_time, when it parsed that far
)

ProfileRow = tuple[Any, ...]


def reasons_json(flat: list[int]) -> bytes:
    """`score_reasons` JSON from the stored form [feature index, contribution in millionths of
    log-odds, ...]: `[{"feature": name, "contribution": log-odds}, ...]`."""
    out: list[Any] = []
    for i in range(0, len(flat), 2):
        out.append({"feature": FEATURE_NAMES[flat[i]], "contribution": flat[i + 1] / 1e6})
    data: bytes = orjson.dumps(out)
    return data


def profile_row(
    user_id: str,
    user_pseudonym: str,
    profile: Profile,
    features: dict[str, Any],
    score: float,
    model_version: str,
    now_ms: int,
    *,
    expired: bool = False,
    reasons: bytes | None = None,
    cluster_id: int | None = None,
    cluster_version: str | None = None,
) -> ProfileRow:
    """The `user_profiles` row for `profile` with features computed as of `now_ms`."""
    views, carts, removes, favorites, purchases, searches = profile.counts
    top = features["pref_top_categories"]
    return (
        user_id,
        user_pseudonym,
        profile.epoch_ms,
        profile.version + (1 if expired else 0),
        now_ms,
        expired,
        segment(profile, features),
        cluster_id,
        cluster_version,
        score,
        model_version,
        reasons,
        views + carts + removes + favorites + purchases + searches,
        views,
        carts,
        removes,
        favorites,
        purchases,
        searches,
        features["cnt_view_24h"],
        features["cnt_cart_24h"],
        features["cnt_purchase_30d"],
        profile.spend_micros,
        features["rfm_spend_30d_micros"],
        profile.other_purchases,
        profile.abandoned_carts,
        profile.first_ms,
        profile.last_ms,
        profile.last_purchase_ms or None,
        features["act_score"],
        profile.distinct_categories,
        top[0][0] if top else None,
        features["ses_count"],
        orjson.dumps(features),  # UTF-8 JSON; NaN and infinities become null
    )


def user_id_field_bytes(user_id: str) -> bytes:
    """How a user_id appears inside an encoded UserEvent (field 2: tag, length, UTF-8); the SQL
    function of the same name (migration 0004) must agree."""
    data = user_id.encode("utf-8")
    n = len(data)
    length = bytes([n]) if n < 128 else bytes([(n & 127) | 128, n >> 7])
    return b"\x12" + length + data


def dead_letter_id(raw: bytes) -> str:
    """Idempotent key of a dead letter: the SHA-256 of its bytes (a replay writes the same key)."""
    return hashlib.sha256(raw).hexdigest()


DeadLetterRow = tuple[str, str, str, bytes, str, int, str | None, int | None]


def dead_letter_row(
    raw: bytes,
    reason: str,
    detail: str,
    topic: str,
    seen_at_ms: int,
    user_id: str | None = None,
    event_time_ms: int | None = None,
) -> DeadLetterRow:
    return (
        dead_letter_id(raw),
        reason,
        detail[:1000],
        raw,
        topic,
        seen_at_ms,
        user_id,
        event_time_ms,
    )
