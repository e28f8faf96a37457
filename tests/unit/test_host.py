"""Where event time stands when a bounded input ends (udfs.host): one rule for the job's timers
(flink_jobs/job/functions.py) and the offline recomputation (udfs.consistency) (JVM-free)."""

from __future__ import annotations

import gc
import random

from udfs.host import MAX_WATERMARK, beyond_final_watermark, final_watermark

T = 1_735_689_600_000


def test_the_final_watermark_is_the_newest_event_minus_the_out_of_orderness_minus_one() -> None:
    assert final_watermark(T, 5_000) == T - 5_001
    assert final_watermark(T, 0) == T - 1
    assert MAX_WATERMARK == 2**63 - 1  # Flink's Long.MAX_VALUE


def test_only_timers_past_the_final_watermark_are_skipped_at_the_end_of_input() -> None:
    final = final_watermark(T, 5_000)
    assert not beyond_final_watermark(final, MAX_WATERMARK, T, 5_000)  # reached: it fires
    assert beyond_final_watermark(final + 1, MAX_WATERMARK, T, 5_000)  # never reached: skipped
    assert beyond_final_watermark(T + 86_400_000, MAX_WATERMARK, T, 5_000)


def test_no_timer_is_skipped_while_the_watermark_is_event_time() -> None:
    for watermark in (0, T, MAX_WATERMARK - 1):
        assert not beyond_final_watermark(T + 10**12, watermark, T, 5_000)


def test_with_no_event_seen_every_timer_at_the_end_of_input_is_skipped() -> None:
    """A subtask that folded nothing (its timers come from a restored state): event time never
    moved in this run."""
    assert beyond_final_watermark(1, MAX_WATERMARK, 0, 5_000)


def test_the_job_fires_at_the_end_exactly_the_timers_the_recomputation_fires() -> None:
    """The recomputation fires every timer at or before the final watermark; the job, given all
    of them by Flink's MAX_WATERMARK, must skip exactly the others."""
    rng = random.Random(0)
    for _ in range(200):
        newest = T + rng.randrange(10**9)
        ooo = rng.randrange(60_000)
        timers = [newest + rng.randrange(-(10**6), 10**6) for _ in range(50)]
        fired_offline = {t for t in timers if t <= final_watermark(newest, ooo)}
        fired_by_job = {
            t for t in timers if not beyond_final_watermark(t, MAX_WATERMARK, newest, ooo)
        }
        assert fired_by_job == fired_offline


def test_the_profile_step_leaves_no_reference_cycles() -> None:
    """`GC_THRESHOLDS` run the collector's middle generation rarely because the step makes no
    cyclic garbage (only reference counting frees its objects): the golden corpus — new,
    cached, expired, erased and late profiles, dead letters — through the engine and its
    cache leaves nothing for the collector."""
    from tests.support.golden import corpus, engine, replay
    from udfs.cache import ProfileCache
    from udfs.host import MemoryHost

    raws = corpus()[:8_000]
    gc.collect()
    gc.disable()
    try:
        rows = sum(1 for _ in replay(raws, MemoryHost(engine(), ProfileCache(500))))
        found = gc.collect()
    finally:
        gc.enable()
    assert rows > 1_000
    assert found == 0
