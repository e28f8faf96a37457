"""The job's per-key logic as pure functions of (profile, input): what to store, which row and
dead letter to emit, which timer to register. The Flink adapter (flink_jobs/job/functions.py) only
moves these between Flink's state, timers and outputs; the consistency checker, the benchmark and
the tests drive the very same engine with a dict for state and a table for timers.

State is the encoded profile (`udfs.codec.encode_profile`); `load` decodes it. A caller may keep
the decoded profile of a step (`Step.profile`) and pass it to the next step of that key instead of
decoding the stored bytes again (a write-through cache, `udfs.cache.ProfileCache`): a step never
changes the profile it is given unless it returns new state for it.

Inactivity timers are lazy: a key has at most one event-time timer, registered when it has none
or when the next transition moved earlier. Activity only moves transitions later, so most events
touch no timer; a timer that fires before the transition now due is moved to it (`deferred`),
writing no row.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from udfs.clusters import Segmentation
from udfs.codec import decode_profile, encode_profile
from udfs.events import ERASE, Event, Reason
from udfs.features import features_and_vector
from udfs.fold import Outcome, catch_up, fold, next_timer_ms, settle_order
from udfs.params import ProfileParams
from udfs.profile import Profile
from udfs.rows import DeadLetterRow, ProfileRow, dead_letter_row, profile_row, reasons_json

ScoreFn = Callable[[Sequence[float]], float]
AssignFn = Callable[[Sequence[float]], int]
ExplainFn = Callable[[Sequence[float]], list[int]]
# Score reasons (SHAP values) cost tens of microseconds, more than the rest of the row: they are
# recomputed only when the score moved by at least this much since they were computed (and on a
# profile's first row); in between a row carries the stored ones, which still explain a score
# within this step of the current one. They live in the state, so crashes and replays give the
# same rows.
DEFAULT_EXPLAIN_STEP = 0.02
# Rendered `score_reasons` JSON by stored reasons: every row carries its profile's reasons, which
# change only when recomputed, and profiles share them (udfs.scoring memoises the explanations).
REASONS_JSON_MEMO = 4_096
PseudonymFn = Callable[[str], str]
DeadLetter = DeadLetterRow


class StepOutcome(enum.Enum):
    APPLIED = "applied"  # the event was folded: store, emit the row
    DUPLICATE = "duplicate"  # nothing changes
    LATE = "late"  # nothing changes; a dead letter
    ERASED = "erased"  # the user asked to be forgotten: clear state, delete the row
    TRANSITION = "transition"  # the timer moved the profile to at_risk / dormant: store, emit
    EXPIRED = "expired"  # the timer expired the profile: clear state, emit the final row
    DEFERRED = "deferred"  # the timer fired before the transition now due: moved, no row
    STALE_TIMER = "stale_timer"  # a timer the state no longer knows: nothing
    # Folding, featurising or scoring the event raised: a dead letter; the state keeps what it
    # had, and a cached profile (possibly half-updated) must be dropped (`discard`).
    FAILED = "failed"


def _event_dead_letter(
    event: Event, reason: Reason, detail: str, topic: str, now_ms: int
) -> DeadLetterRow:
    """The dead letter of a valid event the step did not fold (late, or failed)."""
    return dead_letter_row(
        event.raw, reason.value, detail, topic, now_ms, event.user_id, event.event_time_ms
    )


@dataclass(slots=True)
class Step:
    outcome: StepOutcome
    state: bytes | None = None  # store this (None: leave the state as it is)
    profile: Profile | None = None  # the decoded form of `state`, for a write-through cache
    clear: bool = False  # delete the state
    discard: bool = False  # drop the cached profile (the state, unchanged, is the truth)
    erase: bool = False  # the user asked to be forgotten: delete their row (and what it carries)
    row: ProfileRow | None = None
    dead_letter: DeadLetter | None = None
    timer_delete: int = 0  # event-time timer to delete (0: none)
    timer_register: int = 0  # event-time timer to register (0: none)

    # Written out, not generated: the dataclass's generated __init__ is interpreted Python even
    # in the compiled module, and a Step is made for every event (tests/unit/test_native.py
    # checks it matches the fields above).
    def __init__(
        self,
        outcome: StepOutcome,
        state: bytes | None = None,
        profile: Profile | None = None,
        clear: bool = False,
        discard: bool = False,
        erase: bool = False,
        row: ProfileRow | None = None,
        dead_letter: DeadLetter | None = None,
        timer_delete: int = 0,
        timer_register: int = 0,
    ) -> None:
        self.outcome = outcome
        self.state = state
        self.profile = profile
        self.clear = clear
        self.discard = discard
        self.erase = erase
        self.row = row
        self.dead_letter = dead_letter
        self.timer_delete = timer_delete
        self.timer_register = timer_register


class ProfileEngine:
    def __init__(
        self,
        params: ProfileParams,
        score: ScoreFn,
        model_version: str,
        pseudonym: PseudonymFn,
        explain: ExplainFn | None = None,
        explain_step: float = DEFAULT_EXPLAIN_STEP,
        segmentation: Segmentation | None = None,
        assign: AssignFn | None = None,
        reasons_memo: int = REASONS_JSON_MEMO,
    ) -> None:
        """`score` maps the feature vector (FEATURE_NAMES order) to the row's score; `explain`
        to its reasons (`udfs.scoring.Scorer.explain`; None: rows carry no reasons), recomputed
        when the score moves by `explain_step` (0: on every row). Every row carries the
        `segmentation`'s cluster of that vector and its version (None: both NULL); `assign`
        replaces `segmentation.assign` (the job times it: udfs.metrics). The JSON of up to
        `reasons_memo` distinct reasons is kept for the rows that carry them again."""
        if not 0 <= explain_step < 1:
            raise ValueError(f"explain_step {explain_step} must be in [0, 1)")
        self.params = params
        self.score = score
        self.explain = explain
        self.explain_step_micros = round(explain_step * 1e6)
        self.reasons_memo = reasons_memo  # entries (0: render every row's)
        self._reasons_json: dict[tuple[int, ...], bytes] = {}
        self.model_version = model_version
        self.pseudonym = pseudonym
        self.assign: AssignFn | None = None
        self.cluster_version: str | None = None
        if segmentation is not None:
            self.assign = assign if assign is not None else segmentation.assign
            self.cluster_version = segmentation.version

    def use_model(self, score: ScoreFn, model_version: str, explain: ExplainFn | None) -> None:
        """Score (and explain) the next rows with another model; rows name `model_version`.
        Reasons in the state stay until the score moves by the step from the score they
        explained (as after any score change)."""
        self.score = score
        self.explain = explain
        self.model_version = model_version

    @staticmethod
    def load(stored: bytes | None) -> Profile | None:
        """The profile held by a key's stored state (None: the key has no state)."""
        return decode_profile(stored) if stored is not None else None

    def _row(
        self, user_id: str, profile: Profile, now_ms: int, expired: bool, refresh: bool = True
    ) -> ProfileRow:
        """The profile's row. Reasons are refreshed (when the score moved by the step) on event
        rows only: a timer row carries the stored ones, so the state after an event does not
        depend on which timer rows the job happened to emit before it (the offline
        recomputation catches inactivity up lazily and emits none)."""
        features, vector = features_and_vector(profile, now_ms, self.params)
        score = self.score(vector)
        reasons: bytes | None = None
        explain = self.explain
        if explain is not None:
            micros = round(score * 1e6)
            last = profile.explained_micros
            if refresh and (last < 0 or abs(micros - last) >= self.explain_step_micros):
                profile.reasons = explain(vector)
                profile.explained_micros = micros
            reasons = self._render_reasons(profile.reasons)
        cluster_id: int | None = None
        assign = self.assign
        if assign is not None:
            cluster_id = assign(vector)
        return profile_row(
            user_id,
            self.pseudonym(user_id),
            profile,
            features,
            score,
            self.model_version,
            now_ms,
            expired=expired,
            reasons=reasons,
            cluster_id=cluster_id,
            cluster_version=self.cluster_version,
        )

    def _render_reasons(self, flat: list[int]) -> bytes:
        """`reasons_json(flat)`, memoised (bytes: every row may share them)."""
        key = tuple(flat)
        memo = self._reasons_json
        rendered = memo.get(key)
        if rendered is None:
            rendered = reasons_json(flat)
            if self.reasons_memo > 0:
                if len(memo) >= self.reasons_memo:
                    memo.clear()
                memo[key] = rendered
        return rendered

    def store(self, step: Step, profile: Profile) -> None:
        """Encode `profile` as the step's state (after its row: see `settle_order`)."""
        step.state = encode_profile(profile)
        settle_order(profile)  # as if read back from `state`: a cache may keep it
        step.profile = profile

    def on_event(self, old: Profile | None, event: Event, topic: str, now_ms: int) -> Step:
        """One valid event for its user, whose profile is `old`. `now_ms` is the wall clock
        (dead-letter timestamps)."""
        try:
            step, profile = self.fold_event(old, event, topic, now_ms)
            if profile is not None:
                step.row = self._row(event.user_id, profile, profile.last_ms, expired=False)
                self.store(step, profile)
            return step
        except Exception as exc:  # one event must never stop the job (crash loop on replay)
            detail = f"{type(exc).__name__}: {exc}"[:500]
            dead_letter = _event_dead_letter(event, Reason.PROCESSING_ERROR, detail, topic, now_ms)
            return Step(StepOutcome.FAILED, discard=True, dead_letter=dead_letter)

    def fold_event(
        self, old: Profile | None, event: Event, topic: str, now_ms: int
    ) -> tuple[Step, Profile | None]:
        """`on_event` up to its row: the step (timers set; done unless a profile comes back)
        and the updated profile when the event was applied (then the row and the state are
        still to be made)."""
        registered = old.timer_ms if old is not None else 0
        if event.event_type == ERASE:
            # Never late, never a duplicate: forget everything; the next event starts afresh.
            return Step(StepOutcome.ERASED, clear=True, erase=True, timer_delete=registered), None
        profile, outcome = fold(old, event, self.params)
        if outcome is Outcome.DUPLICATE:
            return Step(StepOutcome.DUPLICATE), None
        if outcome is Outcome.LATE:
            assert old is not None
            detail = (
                f"event_time is {old.last_ms - event.event_time_ms} ms behind the user's newest "
                f"event; allowed lateness is {self.params.allowed_lateness_ms} ms"
            )
            dead_letter = _event_dead_letter(event, Reason.LATE_EVENT, detail, topic, now_ms)
            return Step(StepOutcome.LATE, dead_letter=dead_letter), None
        step = Step(StepOutcome.APPLIED)
        profile.timer_ms = registered  # a new profile (after expiry) keeps the key's timer
        self._schedule(profile, step)
        return step, profile

    def on_timer(self, profile: Profile | None, user_id: str, timer_ms: int) -> Step:
        """The inactivity timer at event time `timer_ms` fired for `user_id`."""
        if profile is None or profile.timer_ms != timer_ms:
            return Step(StepOutcome.STALE_TIMER)
        due = next_timer_ms(profile, self.params)
        if timer_ms < due:
            # Registered before later activity moved the transition on: follow it.
            step = Step(StepOutcome.DEFERRED, timer_register=due)
            profile.timer_ms = due
            self.store(step, profile)
            return step
        if catch_up(profile, timer_ms, self.params):
            return Step(
                StepOutcome.EXPIRED,
                clear=True,
                row=self._row(user_id, profile, timer_ms, expired=True, refresh=False),
            )
        step = Step(StepOutcome.TRANSITION)
        profile.timer_ms = 0  # the firing timer is gone
        self._schedule(profile, step)
        step.row = self._row(user_id, profile, timer_ms, expired=False, refresh=False)
        self.store(step, profile)
        return step

    def _schedule(self, profile: Profile, step: Step) -> None:
        """Keep one timer at or before the next transition: register one when the key has
        none, or when the transition moved before the registered one."""
        due = next_timer_ms(profile, self.params)
        registered = profile.timer_ms
        if registered == 0 or registered > due:
            step.timer_delete = registered
            step.timer_register = due
            profile.timer_ms = due
