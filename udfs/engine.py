"""The job's per-key logic as pure functions of (stored bytes, input): what to store, which row
and dead letter to emit, which timer to register. The Flink adapter (flink_jobs/functions.py)
only moves these between Flink's state, timers and outputs; the consistency checker and the
tests drive the very same engine with a dict for state and a table for timers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from udfs.events import ERASE, Event, Reason
from udfs.features import compute_features, feature_vector
from udfs.profile import (
    Outcome,
    Profile,
    ProfileParams,
    catch_up,
    decode_profile,
    encode_profile,
    fold,
    next_timer_ms,
)
from udfs.rows import DeadLetterRow, ProfileRow, dead_letter_row, profile_row

ScoreFn = Callable[[Sequence[float]], float]
PseudonymFn = Callable[[str], str]
DeadLetter = DeadLetterRow


@dataclass(slots=True)
class Step:
    # "applied" | "duplicate" | "late" | "erased" | "transition" | "expired" | "stale_timer"
    outcome: str
    state: bytes | None = None  # store this (None: leave the state as it is)
    clear: bool = False  # delete the state
    erase: bool = False  # the user asked to be forgotten: delete their row (and what it carries)
    row: ProfileRow | None = None
    dead_letter: DeadLetter | None = None
    timer_delete: int = 0  # event-time timer to delete (0: none)
    timer_register: int = 0  # event-time timer to register (0: none)


class ProfileEngine:
    def __init__(
        self, params: ProfileParams, score: ScoreFn, model_version: str, pseudonym: PseudonymFn
    ) -> None:
        self.params = params
        self.score = score
        self.model_version = model_version
        self.pseudonym = pseudonym

    def _row(self, user_id: str, profile: Profile, now_ms: int, expired: bool) -> ProfileRow:
        features = compute_features(profile, now_ms, self.params)
        score = self.score(feature_vector(features))
        return profile_row(
            user_id,
            self.pseudonym(user_id),
            profile,
            features,
            score,
            self.model_version,
            now_ms,
            expired=expired,
        )

    def on_event(self, stored: bytes | None, event: Event, topic: str, now_ms: int) -> Step:
        """One valid event for its user. `now_ms` is the wall clock (dead-letter timestamps)."""
        old = decode_profile(stored) if stored is not None else None
        old_timer = old.timer_ms if old is not None else 0
        if event.event_type == ERASE:
            # Never late, never a duplicate: forget everything; the next event starts afresh.
            return Step(outcome="erased", clear=True, erase=True, timer_delete=old_timer)
        old_last = old.last_ms if old is not None else 0
        profile, outcome = fold(old, event, self.params)
        if outcome is Outcome.DUPLICATE:
            return Step(outcome="duplicate")
        if outcome is Outcome.LATE:
            detail = (
                f"event_time is {old_last - event.event_time_ms} ms behind the user's newest "
                f"event; allowed lateness is {self.params.allowed_lateness_ms} ms"
            )
            return Step(
                outcome="late",
                dead_letter=dead_letter_row(
                    event.raw,
                    Reason.LATE_EVENT.value,
                    detail,
                    topic,
                    now_ms,
                    event.user_id,
                    event.event_time_ms,
                ),
            )
        step = Step(outcome="applied")
        self._schedule(profile, old_timer, step)
        step.state = encode_profile(profile)
        step.row = self._row(event.user_id, profile, profile.last_ms, expired=False)
        return step

    def on_timer(self, stored: bytes | None, user_id: str, timer_ms: int) -> Step:
        """The inactivity timer at event time `timer_ms` fired for `user_id`."""
        if stored is None:
            return Step(outcome="stale_timer")
        profile = decode_profile(stored)
        if profile.timer_ms != timer_ms:
            return Step(outcome="stale_timer")
        if catch_up(profile, timer_ms, self.params):
            return Step(
                outcome="expired",
                clear=True,
                row=self._row(user_id, profile, timer_ms, expired=True),
            )
        step = Step(outcome="transition")
        self._schedule(profile, timer_ms, step)
        step.timer_delete = 0  # the firing timer is gone already
        step.state = encode_profile(profile)
        step.row = self._row(user_id, profile, timer_ms, expired=False)
        return step

    def _schedule(self, profile: Profile, registered: int, step: Step) -> None:
        due = next_timer_ms(profile, self.params)
        if due != registered:
            step.timer_delete = registered
            step.timer_register = due
        profile.timer_ms = due
