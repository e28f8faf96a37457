"""The settings of the profile maths (`ProfileParams`) and the time units they are written in.

A plain (interpreted) module on purpose: `ProfileParams` travels inside the pickled job, and the
compiled profile code (udfs/native.py) reads it like any Python object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

MINUTE_MS: Final = 60_000
HOUR_MS: Final = 60 * MINUTE_MS
DAY_MS: Final = 24 * HOUR_MS

# Bucketed ring counters: (bucket width, buckets kept). Windows are bucket-aligned: "1 h" is the
# current 10-minute bucket and the 5 before it (50-60 minutes), "24 h" the current 2-hour bucket
# and the 11 before it (22-24 h), "7 d"/"30 d" the current UTC day and the 6/29 before it.
RING_SHORT: Final = (10 * MINUTE_MS, 6)
RING_MID: Final = (2 * HOUR_MS, 12)
RING_DAY: Final = (DAY_MS, 30)


@dataclass(frozen=True, slots=True)
class ProfileParams:
    """Settings of the profile maths. The job and every offline replay must use the same ones."""

    reporting_currency: str = "USD"  # spend and prices count events priced in this currency
    activity_half_life_ms: int = DAY_MS
    allowed_lateness_ms: int = 10 * MINUTE_MS
    session_gap_ms: int = 30 * MINUTE_MS
    abandonment_window_ms: int = DAY_MS
    at_risk_after_ms: int = 14 * DAY_MS
    dormant_after_ms: int = 30 * DAY_MS
    expire_after_ms: int = 90 * DAY_MS
    dedup_memory: int = 24
    recent_items: int = 20
    preference_slots: int = 16
    top_k: int = 5
    pending_carts: int = 16

    def __post_init__(self) -> None:
        cur = self.reporting_currency
        if not (len(cur) == 3 and cur.isalpha() and cur.isupper()):
            raise ValueError(f"reporting_currency={cur!r}: use an ISO 4217 code like USD")
        if self.activity_half_life_ms < HOUR_MS:
            raise ValueError("activity_half_life_ms must be at least one hour")
        if not 0 <= self.allowed_lateness_ms < min(self.session_gap_ms, HOUR_MS - RING_SHORT[0]):
            raise ValueError(
                "allowed_lateness_ms must be >= 0 and below both session_gap_ms and 50 minutes "
                "(the finest ring keeps one hour)"
            )
        if not 0 < self.at_risk_after_ms < self.dormant_after_ms < self.expire_after_ms:
            raise ValueError("inactivity thresholds must grow: at_risk < dormant < expire")
        for name in ("dedup_memory", "recent_items", "preference_slots", "top_k", "pending_carts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.top_k > self.preference_slots:
            raise ValueError("top_k cannot exceed preference_slots")
