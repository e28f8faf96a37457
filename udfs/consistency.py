"""Offline recomputation of what the job should have written, and comparison with what it did.

`recompute` drives the job's own `ProfileEngine` over the raw messages (in the order one Kafka
partition delivers a user's events) in a `MemoryHost` (a dict for state, a table for timers),
then fires the inactivity timers the stream's final watermark would have fired. That watermark
is known only approximately offline (it depends on how partitions interleave), so for a user
whose next transition falls within `watermark_tolerance_ms` below it, both the row before and
the row after that transition are accepted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from udfs.clusters import Segmentation
from udfs.engine import ProfileEngine, PseudonymFn, StepOutcome
from udfs.events import InvalidEvent, decode_event
from udfs.host import MemoryHost, final_watermark
from udfs.params import HOUR_MS, ProfileParams
from udfs.rows import (
    PROFILE_COLUMNS,
    ProfileRow,
    dead_letter_id,
    user_id_field_bytes,
)

if TYPE_CHECKING:
    from udfs.scoring import Scorer


def scored_engine(
    scorer: Scorer,
    pseudonym: PseudonymFn,
    params: ProfileParams,
    segmentation: Segmentation | None,
    version: str | None = None,
) -> ProfileEngine:
    """The engine the job's operator builds, without its metrics' timers: `scorer`'s score and
    explanations, rows naming `version` (default: the scorer's), `pseudonym` for user ids and
    `segmentation`'s clusters. What a recomputation (and the plain-Python benchmark) runs."""
    return ProfileEngine(
        params,
        scorer.score,
        scorer.version if version is None else version,
        pseudonym,
        explain=scorer.explain,
        segmentation=segmentation,
    )


@dataclass
class Expected:
    # user_id -> acceptable final rows (usually one; two when a timer races the watermark)
    profiles: dict[str, list[ProfileRow]] = field(default_factory=dict)
    dead_letters: dict[str, str] = field(default_factory=dict)  # dead_letter_id -> reason
    valid_events: int = 0
    invalid_messages: int = 0
    duplicates: int = 0
    late_events: int = 0
    erasures: int = 0
    final_watermark_ms: int = 0


def recompute(
    raw_messages: Iterable[bytes],
    engine: ProfileEngine,
    *,
    now_ms: int,
    topic: str = "",
    max_out_of_orderness_ms: int = 5_000,
    watermark_tolerance_ms: int = HOUR_MS,
) -> Expected:
    out = Expected()
    host = MemoryHost(engine)
    rows: dict[str, ProfileRow] = {}
    # dead_letter_id -> (user_id, raw): what an erasure deletes
    named: dict[str, tuple[str | None, bytes]] = {}
    max_time = 0
    for raw in raw_messages:
        try:
            event = decode_event(raw, now_ms)
        except InvalidEvent as exc:
            out.invalid_messages += 1
            key = dead_letter_id(raw)
            out.dead_letters.setdefault(key, exc.reason.value)
            named.setdefault(key, (exc.user_id, raw))
            continue
        out.valid_events += 1
        max_time = max(max_time, event.event_time_ms)
        step = host.on_event(event, topic, now_ms)
        if step.outcome is StepOutcome.DUPLICATE:
            out.duplicates += 1
        if step.dead_letter is not None:
            out.late_events += 1
            out.dead_letters.setdefault(step.dead_letter[0], step.dead_letter[1])
            named.setdefault(step.dead_letter[0], (event.user_id, raw))
        if step.erase:
            out.erasures += 1
            _erase(event.user_id, rows, out.dead_letters, named)
            continue
        if step.row is not None:
            rows[event.user_id] = step.row

    # The watermark a bounded run ends with (before Flink's final MAX, which fires nothing here).
    final = final_watermark(max_time, max_out_of_orderness_ms) if max_time else 0
    out.final_watermark_ms = final
    settled = _fire_timers(host.copy(), dict(rows), final - watermark_tolerance_ms)
    racing = _fire_timers(host, rows, final)
    for user_id in rows:
        candidates = [settled[user_id]]
        if racing[user_id] != settled[user_id]:
            candidates.append(racing[user_id])
        out.profiles[user_id] = candidates
    return out


def _erase(
    user_id: str,
    rows: dict[str, ProfileRow],
    dead_letters: dict[str, str],
    named: dict[str, tuple[str | None, bytes]],
) -> None:
    """What an ERASE does beyond the state and timer (the engine clears those): the row goes,
    and so does every dead letter naming the user (by its parsed user_id or the encoded field in
    its bytes, as the database trigger does)."""
    rows.pop(user_id, None)
    needle = user_id_field_bytes(user_id)
    for key, (named_user, raw) in list(named.items()):
        if named_user == user_id or needle in raw:
            dead_letters.pop(key, None)
            del named[key]


def _fire_timers(
    host: MemoryHost, rows: dict[str, ProfileRow], watermark: int
) -> dict[str, ProfileRow]:
    for user_id, step in host.fire(watermark):
        if step.row is not None:
            rows[user_id] = step.row
    return rows


@dataclass(frozen=True)
class Mismatch:
    user_id: str
    column: str
    expected: object
    actual: object


def _same(a: object, b: object) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if (
        isinstance(a, int | float)
        and isinstance(b, int | float)
        and not (isinstance(a, bool) or isinstance(b, bool))
    ):
        a, b = float(a), float(b)
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _json_diff(user_id: str, want: object, have: object, column: str) -> list[Mismatch]:
    w = orjson.loads(want) if isinstance(want, str | bytes) else want
    h = orjson.loads(have) if isinstance(have, str | bytes) else have
    if not isinstance(w, dict) or not isinstance(h, dict):
        return [] if w == h else [Mismatch(user_id, column, w, h)]
    return [
        Mismatch(user_id, f"{column}.{key}", w.get(key), h.get(key))
        for key in sorted(w.keys() | h.keys())
        if not _same(w.get(key), h.get(key))
    ]


def _row_diff(
    user_id: str, want: ProfileRow, have: tuple[object, ...], ignore: frozenset[str] = frozenset()
) -> list[Mismatch]:
    out = []
    for (name, kind), w, h in zip(PROFILE_COLUMNS, want, have, strict=True):
        if name in ignore:
            continue
        if kind == "json":
            out.extend(_json_diff(user_id, w, h, name))
        elif not _same(w, h):
            out.append(Mismatch(user_id, name, w, h))
    return out


def compare_profiles(
    expected: Mapping[str, list[ProfileRow]],
    actual: Mapping[str, tuple[object, ...]],
    ignore: frozenset[str] = frozenset(),
    ignore_for: Mapping[str, frozenset[str]] | None = None,
) -> list[Mismatch]:
    """Every difference between expected and actual rows (keyed by user_id, PROFILE_COLUMNS
    order; columns named in `ignore`, or in `ignore_for` of that user, are not compared). A row
    matches when it equals one of its candidates; otherwise the differences from the first
    candidate are reported. A missing or unexpected row is one mismatch on `<row>`."""
    out: list[Mismatch] = []
    for user_id, candidates in expected.items():
        got = actual.get(user_id)
        if got is None:
            out.append(Mismatch(user_id, "<row>", "present", "missing"))
            continue
        skip = ignore | ignore_for[user_id] if ignore_for and user_id in ignore_for else ignore
        diffs = [_row_diff(user_id, c, got, skip) for c in candidates]
        if all(diffs):
            out.extend(diffs[0])
    out.extend(Mismatch(u, "<row>", "absent", "unexpected") for u in actual if u not in expected)
    return out
