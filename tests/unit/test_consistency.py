"""The offline recomputation (the job's engine without Flink) and the comparison (JVM-free)."""

from __future__ import annotations

from flink_jobs.config import DEFAULT_MODEL_DIR, DEFAULT_SEGMENTS_DIR
from udfs import events as ev
from udfs.clusters import load_segmentation
from udfs.consistency import Mismatch, compare_profiles, recompute, scored_engine
from udfs.engine import ProfileEngine
from udfs.events import make_message
from udfs.params import DAY_MS, ProfileParams
from udfs.pseudonym import Pseudonymiser
from udfs.rows import PROFILE_COLUMN_NAMES, dead_letter_id
from udfs.scoring import Scorer

T = 1_735_689_600_000
NOW = T + 10**10


def raw(user: str, kind: int = ev.VIEW, t: int = T, eid: str | None = None) -> bytes:
    return make_message(
        event_id=eid or f"{user}{t}{kind}",
        user_id=user,
        event_type=kind,
        event_time_ms=t,
        item_id="i",
    ).SerializeToString()


def engine() -> ProfileEngine:
    return scored_engine(
        Scorer(DEFAULT_MODEL_DIR),
        Pseudonymiser(b"k" * 32),
        ProfileParams(),
        load_segmentation(DEFAULT_SEGMENTS_DIR),
    )


def test_recompute_folds_valid_and_keeps_invalid_late_and_duplicate() -> None:
    late = raw("a", t=T - 3_600_000)
    msgs = [
        raw("a"),
        raw("b"),
        b"\xff",
        raw("a", ev.PURCHASE, T + 5),
        raw(""),
        late,
        raw("b"),
    ]  # the last is a duplicate delivery
    out = recompute(msgs, engine(), now_ms=NOW)
    assert (out.valid_events, out.invalid_messages, out.duplicates, out.late_events) == (5, 2, 1, 1)
    assert out.dead_letters == {
        dead_letter_id(b"\xff"): "decode_error",
        dead_letter_id(raw("")): "missing_user_id",
        dead_letter_id(late): "late_event",
    }
    (a,) = out.profiles["a"]
    col = dict(zip(PROFILE_COLUMN_NAMES, a, strict=True))
    assert (col["profile_version"], col["event_count"], col["purchases"], col["model_version"]) == (
        2,
        2,
        1,
        "taobao-v2",
    )


def test_final_watermark_fires_inactivity_and_racing_timers_accept_both_rows() -> None:
    # "old" is silent for 20 days before the end of the log: at risk for certain. "edge" turns
    # at risk at a midnight 20 minutes before the final watermark, within the tolerance: the
    # job may or may not have fired that timer, so either row is accepted.
    midnight = T + 30 * DAY_MS
    end = midnight + 20 * 60_000
    msgs = [
        raw("old", t=end - 20 * DAY_MS),
        raw("edge", t=midnight - 14 * DAY_MS - 5 * 3_600_000),
        raw("x", t=end),
    ]
    out = recompute(msgs, engine(), now_ms=NOW, max_out_of_orderness_ms=0)
    seg = PROFILE_COLUMN_NAMES.index("segment")
    assert [r[seg] for r in out.profiles["old"]] == ["at_risk"]
    assert [r[seg] for r in out.profiles["edge"]] == ["new", "at_risk"]
    assert len(out.profiles["x"]) == 1


def test_compare_finds_every_kind_of_difference() -> None:
    expected = recompute([raw("a"), raw("b")], engine(), now_ms=NOW).profiles
    actual: dict[str, tuple[object, ...]] = {"a": expected["a"][0], "c": expected["b"][0]}
    assert compare_profiles(expected, actual) == [
        Mismatch("b", "<row>", "present", "missing"),
        Mismatch("c", "<row>", "absent", "unexpected"),
    ]
    changed = list(expected["a"][0])
    i = PROFILE_COLUMN_NAMES.index("activity_score")
    changed[i] = float(changed[i]) * (1 + 1e-6)
    assert [m.column for m in compare_profiles({"a": expected["a"]}, {"a": tuple(changed)})] == [
        "activity_score"
    ]
    assert compare_profiles(expected, {u: rows[0] for u, rows in expected.items()}) == []


def test_compare_checks_the_cluster_and_can_leave_it_out_for_some_users() -> None:
    expected = recompute([raw("a"), raw("b")], engine(), now_ms=NOW).profiles
    i_id, i_version = (PROFILE_COLUMN_NAMES.index(c) for c in ("cluster_id", "cluster_version"))
    assert expected["a"][0][i_version] == DEFAULT_SEGMENTS_DIR.name
    assert isinstance(expected["a"][0][i_id], int)
    rows = {u: list(r[0]) for u, r in expected.items()}
    rows["a"][i_id] = (rows["a"][i_id] + 1) % 3
    rows["b"][i_version] = "other-s9"
    actual = {u: tuple(r) for u, r in rows.items()}
    assert [(m.user_id, m.column) for m in compare_profiles(expected, actual)] == [
        ("a", "cluster_id"),
        ("b", "cluster_version"),
    ]
    ignore_b = {"b": frozenset({"cluster_id", "cluster_version"})}
    assert [m.user_id for m in compare_profiles(expected, actual, ignore_for=ignore_b)] == ["a"]


def test_compare_can_leave_reasons_out() -> None:
    expected = recompute([raw("a")], engine(), now_ms=NOW).profiles
    row = list(expected["a"][0])
    row[PROFILE_COLUMN_NAMES.index("score_reasons")] = b'[{"feature": "x", "contribution": 1}]'
    assert [m.column for m in compare_profiles(expected, {"a": tuple(row)})] == ["score_reasons"]
    assert compare_profiles(expected, {"a": tuple(row)}, frozenset({"score_reasons"})) == []


def test_compare_reads_the_features_json_like_postgresql_returns_it() -> None:
    import orjson

    expected = recompute([raw("a")], engine(), now_ms=NOW).profiles
    row = list(expected["a"][0])
    i = PROFILE_COLUMN_NAMES.index("features")
    as_dict = orjson.loads(row[i])
    row[i] = as_dict  # psycopg2 returns jsonb as a dict
    assert compare_profiles(expected, {"a": tuple(row)}) == []
    as_dict["cnt_view_life"] = 2
    assert [m.column for m in compare_profiles(expected, {"a": tuple(row)})] == [
        "features.cnt_view_life"
    ]


def test_score_reasons_follow_the_score_in_steps() -> None:
    """The engine computes reasons on a profile's first row and again whenever the score moved
    by the step since; rows in between carry the stored ones. With or without the cache (state
    decoded from bytes) the rows are the same."""
    import orjson

    from udfs.cache import ProfileCache
    from udfs.engine import DEFAULT_EXPLAIN_STEP
    from udfs.events import decode_event
    from udfs.host import MemoryHost

    kinds = [ev.VIEW] * 6 + [ev.ADD_TO_CART, ev.VIEW, ev.FAVORITE, ev.PURCHASE] + [ev.VIEW] * 10
    msgs = [raw("a", k, T + i * 600_000) for i, k in enumerate(kinds)]
    hosts = [MemoryHost(engine()), MemoryHost(engine(), ProfileCache(8))]
    rows = [[host.on_event(decode_event(m, NOW), "", NOW).row for m in msgs] for host in hosts]
    assert rows[0] == rows[1]
    i_score = PROFILE_COLUMN_NAMES.index("score")
    i_reasons = PROFILE_COLUMN_NAMES.index("score_reasons")
    explained_at = None
    previous = None
    changes = 0
    for row in rows[0]:
        assert row is not None
        score, reasons = row[i_score], row[i_reasons]
        assert reasons is not None and len(orjson.loads(reasons)) == 3
        moved = explained_at is None or abs(score - explained_at) >= DEFAULT_EXPLAIN_STEP + 1e-6
        if moved:
            explained_at = score
        elif abs(score - explained_at) < DEFAULT_EXPLAIN_STEP - 1e-6:
            assert reasons == previous  # within the step: the stored reasons
        if reasons != previous:
            changes += 1
        previous = reasons
    assert 1 < changes < len(rows[0])  # refreshed sometimes, not on every row
