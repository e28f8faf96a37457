"""Offline recomputation of what the job should have written, and comparison with what it did.

Given the raw messages of the events topic in partition order, `recompute` applies the same
decode/validate, profile update and scoring code as the stream job and returns the expected
profile rows and dead letters. `compare_profiles` lists the differences.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from udfs.events import InvalidEvent, decode_event
from udfs.features import feature_vector
from udfs.profile import Profile, ProfileParams, apply_event
from udfs.rows import PROFILE_COLUMN_NAMES, ProfileRow, dead_letter_id, profile_row
from udfs.scoring import Scorer


@dataclass
class Expected:
    profiles: dict[str, ProfileRow] = field(default_factory=dict)
    dead_letters: dict[str, str] = field(default_factory=dict)  # dead_letter_id -> reason
    valid_events: int = 0
    invalid_messages: int = 0


def recompute(
    raw_messages: Iterable[bytes], params: ProfileParams, scorer: Scorer, now_ms: int
) -> Expected:
    """Fold messages (in the order one partition delivers them) into expected rows."""
    out = Expected()
    profiles: dict[str, Profile] = {}
    for raw in raw_messages:
        try:
            event = decode_event(raw, now_ms)
        except InvalidEvent as exc:
            out.invalid_messages += 1
            out.dead_letters.setdefault(dead_letter_id(raw), exc.reason.value)
            continue
        out.valid_events += 1
        profile = profiles.get(event.user_id)
        if profile is None:
            profile = profiles[event.user_id] = Profile()
        apply_event(profile, event, params)
    for user_id, profile in profiles.items():
        score = scorer.score(feature_vector(profile))
        out.profiles[user_id] = profile_row(user_id, profile, score, scorer.version)
    return out


@dataclass(frozen=True)
class Mismatch:
    user_id: str
    column: str
    expected: object
    actual: object


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)
    return a == b


def compare_profiles(
    expected: Mapping[str, ProfileRow], actual: Mapping[str, tuple[object, ...]]
) -> list[Mismatch]:
    """Every difference between expected and actual rows (keyed by user_id, PROFILE_COLUMNS
    order); a missing or unexpected row is one mismatch on the column `<row>`."""
    out: list[Mismatch] = []
    for user_id, row in expected.items():
        got = actual.get(user_id)
        if got is None:
            out.append(Mismatch(user_id, "<row>", "present", "missing"))
            continue
        for name, want, have in zip(PROFILE_COLUMN_NAMES, row, got, strict=True):
            if not _same(want, have):
                out.append(Mismatch(user_id, name, want, have))
    out.extend(Mismatch(u, "<row>", "absent", "unexpected") for u in actual if u not in expected)
    return out
