"""The offline recomputation and comparison used by the end-to-end test (JVM-free)."""

from __future__ import annotations

from flink_jobs.config import DEFAULT_MODEL_DIR
from udfs import events as ev
from udfs.consistency import Mismatch, compare_profiles, recompute
from udfs.events import make_message
from udfs.profile import ProfileParams
from udfs.rows import dead_letter_id
from udfs.scoring import Scorer

T = 1_735_689_600_000


def raw(user: str, kind: int = ev.VIEW, t: int = T) -> bytes:
    return make_message(
        event_id=f"{user}{t}", user_id=user, event_type=kind, event_time_ms=t, item_id="i"
    ).SerializeToString()


def test_recompute_folds_valid_and_keeps_invalid() -> None:
    scorer = Scorer(DEFAULT_MODEL_DIR)
    msgs = [raw("a"), raw("b"), b"\xff", raw("a", ev.PURCHASE, T + 5), raw("")]
    out = recompute(msgs, ProfileParams(), scorer, T + 10**9)
    assert (out.valid_events, out.invalid_messages) == (3, 2)
    assert out.dead_letters == {
        dead_letter_id(b"\xff"): "decode_error",
        dead_letter_id(raw("")): "missing_user_id",
    }
    a = out.profiles["a"]
    assert a[0:4] == ("a", 2, 2, 1) and a[-1] == "bootstrap-v1"


def test_compare_finds_every_kind_of_difference() -> None:
    scorer = Scorer(DEFAULT_MODEL_DIR)
    expected = recompute([raw("a"), raw("b")], ProfileParams(), scorer, T + 10**9).profiles
    actual: dict[str, tuple[object, ...]] = {"a": expected["a"], "c": expected["b"]}
    assert compare_profiles(expected, actual) == [
        Mismatch("b", "<row>", "present", "missing"),
        Mismatch("c", "<row>", "absent", "unexpected"),
    ]
    changed = list(expected["a"])
    changed[13] = float(changed[13]) * (1 + 1e-9)  # activity_score off in the 9th digit
    assert [m.column for m in compare_profiles({"a": expected["a"]}, {"a": tuple(changed)})] == [
        "activity_score"
    ]
    assert compare_profiles(expected, dict(expected)) == []
