"""The profile operator's metrics without Flink (udfs.metrics): what it counts per event, what it
hands Flink's counters at each flush, and the names Flink's Prometheus reporter gives them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udfs.events import Reason
from udfs.metrics import (
    BY_NAME,
    COUNTERS,
    EXPORTED_NAMES,
    FLUSH_INTERVAL_MS,
    METRICS,
    SAMPLE_EVERY,
    Increment,
    OperatorMetrics,
)


def apply(flink: dict[tuple[str, str], int], increments: list[Increment]) -> None:
    """What the Flink adapter does with increments: add them to counters."""
    for name, label, amount in increments:
        assert amount != 0  # nothing is sent for what did not change
        flink[(name, label)] = flink.get((name, label), 0) + amount


def test_prometheus_names_are_the_operator_scope_group_label_key_and_name() -> None:
    assert len(set(EXPORTED_NAMES)) == len(METRICS)
    assert all(
        n.startswith("flink_taskmanager_job_task_operator_profilestream_") for n in EXPORTED_NAMES
    )
    assert BY_NAME["events_folded"].prometheus_name.endswith("profilestream_events_folded")
    # A key-value group's key is part of the name (Flink's logical scope) and the label.
    assert BY_NAME["dead_letters"].prometheus_name.endswith("profilestream_reason_dead_letters")
    assert BY_NAME["serving"].prometheus_name.endswith("profilestream_model_version_serving")
    metrics = OperatorMetrics()  # every plain counter is an int attribute, at 0
    assert all(getattr(metrics, name) == 0 for name in COUNTERS)


def test_every_series_known_in_advance_is_registered_at_start() -> None:
    series = OperatorMetrics.series()
    assert {("dead_letters", r.value) for r in Reason} <= set(series)
    assert {(m.name, "") for m in METRICS if m.label is None} <= set(series)
    assert not any(name == "serving" for name, _ in series)  # a version appears when served


def test_a_flush_hands_over_what_changed_since_the_last() -> None:
    m = OperatorMetrics()
    assert m.next_flush_ms == 0  # the first element flushes (nothing) and sets the first timer
    assert (
        m.flush(1_000) == [] and m.schedule(1_000) == m.next_flush_ms == 1_000 + FLUSH_INTERVAL_MS
    )
    m.events_folded += 3
    m.profile_rows_sent += 4
    m.dead_letter("late_event")
    m.dead_letter("decode_error")
    m.dead_letter("late_event")
    got = m.flush(2_000, newest_event_ms=1_500)
    assert sorted(got) == [
        ("dead_letters", "decode_error", 1),
        ("dead_letters", "late_event", 2),
        ("event_time_lag_ms", "", 500),
        ("events_folded", "", 3),
        ("profile_rows_sent", "", 4),
    ]
    # Nothing new: nothing to send, not even the lag (unchanged).
    assert m.flush(2_000, newest_event_ms=1_500) == []
    assert m.events_folded == 0 and m.dead_letters == {}


def test_the_lag_is_a_counter_moved_by_differences_so_it_reads_the_last_value() -> None:
    m = OperatorMetrics()
    flink: dict[tuple[str, str], int] = {}
    assert m.flush(10_000, newest_event_ms=0) == []  # no event folded yet: no lag
    for now, newest in ((10_000, 4_000), (11_000, 10_900), (12_000, 10_900), (20_000, 19_999)):
        apply(flink, m.flush(now, newest))
        assert flink[("event_time_lag_ms", "")] == now - newest


def test_serving_moves_the_one_from_the_old_version_to_the_new() -> None:
    m = OperatorMetrics()
    flink: dict[tuple[str, str], int] = {}
    apply(flink, m.serve("taobao-v2"))
    assert flink == {("serving", "taobao-v2"): 1}
    assert m.serve("taobao-v2") == []  # the same version again: nothing moves
    apply(flink, m.serve("taobao-v3"))
    assert flink == {("serving", "taobao-v2"): 0, ("serving", "taobao-v3"): 1}
    apply(flink, m.serve("taobao-v2"))  # back to an earlier one
    assert flink == {("serving", "taobao-v2"): 1, ("serving", "taobao-v3"): 0}


def test_a_timed_call_samples_one_in_n_and_returns_what_the_function_returns() -> None:
    m = OperatorMetrics()
    score = m.timed("scoring", lambda x: x * 2)
    assert [score(i) for i in range(SAMPLE_EVERY * 3)] == [i * 2 for i in range(SAMPLE_EVERY * 3)]
    got = dict(((name, label), amount) for name, label, amount in m.flush(0))
    assert got[("scoring_samples", "")] == 3 and got[("scoring_sampled_ns", "")] > 0
    assert m.flush(0) == []


def test_only_a_metric_of_the_list_can_be_timed() -> None:
    with pytest.raises(ValueError, match="no metric nonsense_samples"):
        OperatorMetrics().timed("nonsense", lambda x: x)


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("count"), st.sampled_from(COUNTERS), st.integers(1, 5)),
        st.tuples(st.just("dead"), st.sampled_from([r.value for r in Reason]), st.just(1)),
        st.tuples(st.just("event"), st.just(""), st.integers(0, 10_000)),
        st.tuples(st.just("serve"), st.sampled_from(["a", "b", "c"]), st.just(0)),
        st.tuples(st.just("flush"), st.just(""), st.integers(0, 5_000)),
    ),
    max_size=60,
)


@given(OPERATIONS)
def test_flink_counters_end_equal_to_what_the_operator_counted(
    ops: list[tuple[str, str, int]],
) -> None:
    """Whatever the order of counting, serving and flushing, the Flink counters after a last flush
    read the totals, the current lag and a 1 on the version serving."""
    m = OperatorMetrics()
    flink: dict[tuple[str, str], int] = {}
    truth: dict[tuple[str, str], int] = {}
    now, newest, serving = 100_000, 0, None
    for kind, what, n in ops:
        if kind == "count":
            setattr(m, what, getattr(m, what) + n)
            truth[(what, "")] = truth.get((what, ""), 0) + n
        elif kind == "dead":
            m.dead_letter(what)
            truth[("dead_letters", what)] = truth.get(("dead_letters", what), 0) + 1
        elif kind == "event":
            newest = max(newest, now - n)
        elif kind == "serve":
            apply(flink, m.serve(what))
            serving = what
        else:
            now += n
            apply(flink, m.flush(now, newest))
    apply(flink, m.flush(now, newest))
    for key, value in truth.items():
        assert flink[key] == value
    assert flink.get(("event_time_lag_ms", ""), 0) == (now - newest if newest else 0)
    served = {label: v for (name, label), v in flink.items() if name == "serving"}
    assert served == ({} if serving is None else {**dict.fromkeys(served, 0), serving: 1})


@given(st.lists(st.integers(0, 2_500), max_size=80))
def test_nothing_counted_waits_for_more_input(gaps: list[int]) -> None:
    """The operator's protocol (flink_jobs.job.functions): an element finding a flush due flushes
    and sets a processing-time timer at `schedule(now)`; a timer flushes. However the elements
    are spaced, once the last timer has fired Flink has every count."""
    m = OperatorMetrics()
    flink: dict[tuple[str, str], int] = {}
    timers: list[int] = []
    now = 1_000_000
    for gap in gaps:
        now += gap
        for t in sorted(t for t in timers if t <= now):  # timers due before this element
            timers.remove(t)
            apply(flink, m.flush(t))
        if now >= m.next_flush_ms:
            apply(flink, m.flush(now))
            timers.append(m.schedule(now))
        m.events_folded += 1
    for t in sorted(timers):  # the input went quiet
        apply(flink, m.flush(t))
    assert flink.get(("events_folded", ""), 0) == len(gaps)
