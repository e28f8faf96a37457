"""One event whose folding, features or scoring raises is dead-lettered as `processing_error`
(the exception in the detail), the user's state stays what it was, a cached profile that the
fold may have changed half-way is dropped, and the next event of the user goes on from the old
state: a bug or a bad model never makes the job crash-loop on one event."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from udfs import events as ev
from udfs.cache import ProfileCache
from udfs.engine import ProfileEngine, StepOutcome
from udfs.events import Reason, decode_event, make_message
from udfs.host import MemoryHost
from udfs.params import HOUR_MS, ProfileParams
from udfs.rows import DEAD_LETTER_COLUMNS, PROFILE_COLUMN_NAMES

T0 = 1_700_000_000_000


class FlakyScore:
    """A scorer that raises on chosen calls (1-based), otherwise a constant."""

    def __init__(self, fail_on: set[int]) -> None:
        self.fail_on = fail_on
        self.calls = 0

    def __call__(self, vector: Sequence[float]) -> float:
        self.calls += 1
        if self.calls in self.fail_on:
            raise FloatingPointError("model produced NaN")
        return 0.25


def event(n: int, kind: int = ev.ADD_TO_CART, user: str = "u1") -> ev.Event:
    raw = make_message(
        event_id=f"e{n}",
        user_id=user,
        event_type=kind,
        event_time_ms=T0 + n * HOUR_MS,
        item_id=f"i{n}",
        category_id="c",
        price_micros=1_000_000,
        currency="EUR",
    ).SerializeToString()
    return decode_event(raw, T0 + 100 * HOUR_MS)


@pytest.mark.parametrize("cache", [None, 8], ids=["state", "cache"])
def test_a_failing_event_is_a_dead_letter_and_the_state_is_kept(cache: int | None) -> None:
    score = FlakyScore(fail_on={2})
    host = MemoryHost(
        ProfileEngine(ProfileParams(), score, "v", str), ProfileCache(cache) if cache else None
    )
    first = host.on_event(event(1), "t", T0)
    assert first.outcome is StepOutcome.APPLIED and first.row is not None
    before = host.states["u1"]

    failed = host.on_event(event(2), "t", T0)
    assert failed.outcome is StepOutcome.FAILED and failed.row is None
    assert failed.dead_letter is not None
    letter = dict(zip((name for name, _ in DEAD_LETTER_COLUMNS), failed.dead_letter, strict=True))
    assert letter["reason"] == Reason.PROCESSING_ERROR.value == "processing_error"
    assert letter["detail"] == "FloatingPointError: model produced NaN"
    assert letter["user_id"] == "u1" and letter["raw"] == event(2).raw
    assert host.states["u1"] == before  # the state is what it was before the event

    third = host.on_event(event(3), "t", T0)
    assert third.outcome is StepOutcome.APPLIED and third.row is not None
    # The failed event is not in the profile: the next row counts events 1 and 3 only.
    assert third.row[PROFILE_COLUMN_NAMES.index("event_count")] == 2


def test_a_replay_gives_the_same_dead_letter_and_rows() -> None:
    def run() -> list[object]:
        host = MemoryHost(ProfileEngine(ProfileParams(), FlakyScore({2}), "v", str))
        return [host.on_event(event(n), "t", T0).outcome for n in (1, 2, 3)]

    assert run() == run() == [StepOutcome.APPLIED, StepOutcome.FAILED, StepOutcome.APPLIED]
