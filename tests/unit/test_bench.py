"""The benchmark's own arithmetic and options (bench/e2e.py, bench/runner.py): what its figures
are computed from must be right before the figures mean anything."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from bench import e2e
from bench.cpu import postgres_cpu_seconds, process_cpu_seconds
from bench.e2e import by_window, job_settings, thread_summary
from bench.pg_upsert import BATCH, batches
from bench.runner import cpu_per_event, steady_rate, task_times, thread_cpu
from flink_jobs.ops.services import TERMINATED, Terminated


def test_job_settings_take_numeric_job_config_fields() -> None:
    assert job_settings(["jdbc_flush_interval_ms=50", " jdbc_flush_rows = 100 "]) == {
        "jdbc_flush_interval_ms": 50,
        "jdbc_flush_rows": 100,
    }
    assert job_settings([]) == {}


@pytest.mark.parametrize("entry", ["jdbc_flush_interval_ms", "nope=1", "jdbc_flush_rows=ten"])
def test_job_settings_reject_what_the_job_config_has_not(entry: str) -> None:
    with pytest.raises(SystemExit, match="expected NAME=INTEGER with NAME one of"):
        job_settings([entry])


def test_by_window_is_the_median_per_window_in_send_order() -> None:
    # Latencies that rise in the third window: a backlog building.
    timeline = [(1000.0 + t, 100.0) for t in range(0, 2000, 100)]
    timeline += [(3000.0 + t, 900.0 + t) for t in range(0, 1000, 100)]
    assert by_window(timeline, 1000) == [100, 100, 1350]
    assert by_window(timeline, 1000, max) == [100, 100, 1800]
    assert by_window([], 1000) == []


def test_steady_rate_reads_between_ten_and_ninety_percent() -> None:
    # 100 events/s after a 5 s start-up: the start-up is not in the rate.
    samples = [(0.0, 0), (5.0, 0)] + [(5.0 + s, 100 * s) for s in range(1, 11)]
    rate, seconds = steady_rate(samples, 1000)
    assert rate == pytest.approx(100.0)
    assert seconds == pytest.approx(8.0)
    assert steady_rate([(0.0, 0), (1.0, 10)], 1000) == (0.0, 0.0)


def test_steady_rate_of_a_run_shorter_than_the_sampling() -> None:
    # The job was found after 1.2 s, with 30 % done; two samples inside the run, then the end.
    samples = [(1.2, 300), (1.7, 800), (2.2, 1000)]
    rate, seconds = steady_rate(samples, 1000)
    assert rate == pytest.approx(1000.0)
    assert seconds == pytest.approx(0.5)
    assert steady_rate([(1.2, 300), (2.2, 1000)], 1000) == (0.0, 0.0)


def test_cpu_per_event_is_by_thread_group_between_the_bracketing_samples() -> None:
    samples = [(0.0, 0), (1.0, 100), (2.0, 500), (3.0, 900), (4.0, 1000)]
    cpu = [
        {"keyed": 0.0, "other": 0.0},
        {"keyed": 0.1, "other": 0.0, "other/C# CompilerThre": 0.0},
        {"keyed": 0.2, "other": 0.01, "other/C# CompilerThre": 0.01},
        {"keyed": 0.5, "other": 0.02, "other/C# CompilerThre": 0.02},
        {"keyed": 9.0, "other": 9.0},
    ]
    got = cpu_per_event(samples, cpu, 1000)  # samples 1 and 3: 800 events
    assert got == pytest.approx({"keyed": 500.0, "other": 25.0, "other/C# CompilerThre": 25.0})


def test_task_times_average_flinks_per_second_figures_inside_the_steady_window() -> None:
    """Busy / back-pressured / idle ms per second of the keyed task: the mean of the samples
    taken between 10 % and 90 % of the input; start-up and the tail are left out."""
    samples = [(0.0, 0), (1.0, 100), (2.0, 500), (3.0, 900), (4.0, 1000)]
    task = [
        {"busyTimeMsPerSecond": 0.0, "backPressuredTimeMsPerSecond": 0.0},
        {"busyTimeMsPerSecond": 900.0, "backPressuredTimeMsPerSecond": 100.0},
        {"busyTimeMsPerSecond": 800.0, "backPressuredTimeMsPerSecond": 200.0},
        {"busyTimeMsPerSecond": 700.0, "backPressuredTimeMsPerSecond": 300.0},
        {"busyTimeMsPerSecond": 0.0, "idleTimeMsPerSecond": 1000.0},
    ]
    got = task_times(samples, task, 1000)
    assert got == pytest.approx(
        {"busyTimeMsPerSecond": 800.0, "backPressuredTimeMsPerSecond": 200.0}
    )
    assert task_times(samples, [], 1000) == {}


def test_the_thread_summary_names_waits_and_task_times_and_tolerates_missing_figures() -> None:
    run = {
        "cpu_us_per_event": {"keyed": 150.0, "sink": 12.0, "wait/keyed": 17.0},
        "postgres_cpu_us_per_event": 80.0,
        "keyed_task_ms_per_s": {"busyTimeMsPerSecond": 950.0, "backPressuredTimeMsPerSecond": 50.0},
    }
    assert thread_summary(run) == (
        "keyed 150, sink 12; postgres 80 (whole run); keyed waited for a core 17;"
        " keyed task ms/s: busy 950, backPressured 50"
    )
    # a freshness run's job that reported nothing (its figures are None)
    assert thread_summary({"cpu_us_per_event": None, "keyed_task_ms_per_s": None}) == ""


def spin(seconds: float, clock: Callable[[], float] = time.process_time) -> None:
    """Burn `seconds` of CPU as `clock` counts it (the process's, or the thread's)."""
    deadline = clock() + seconds
    while clock() < deadline:
        pass


def test_thread_cpu_groups_threads_by_name_with_their_wait_for_a_core() -> None:
    """A thread of this process named like the keyed task (the name Flink gives its thread)
    counts as "keyed" with its CPU and its run delay; unnamed threads are "other" by name."""
    ready = threading.Event()
    done = threading.Event()

    def keyed() -> None:
        Path(f"/proc/self/task/{threading.get_native_id()}/comm").write_text("update profile")
        spin(0.2, time.thread_time)  # some CPU to count, well above /proc's 10 ms tick
        ready.set()
        done.wait(10)

    thread = threading.Thread(target=keyed)
    thread.start()
    try:
        assert ready.wait(10)
        got = thread_cpu([os.getpid()])
    finally:
        done.set()
        thread.join()
    assert got["keyed"] >= 0.1
    assert got["wait/keyed"] >= 0.0
    assert "other" in got and any(k.startswith("other/") for k in got)
    assert "wait/other" not in got


def test_postgres_cpu_is_read_from_the_postmaster_pid_file(tmp_path: Path) -> None:
    """The server's CPU comes from the process named in postmaster.pid (this test's own process
    stands in for it) and its children; without a pid file it is 0, not an error."""
    assert postgres_cpu_seconds(tmp_path) == 0.0
    (tmp_path / "postmaster.pid").write_text(f"{os.getpid()}\n{tmp_path}\n")
    before = postgres_cpu_seconds(tmp_path)
    # /proc counts CPU in clock ticks (10 ms) and this process's children come and go: burn well
    # above both so the check cannot miss by a tick (it did, 0.04 against 0.05 burnt, in CI).
    spin(0.3)
    assert postgres_cpu_seconds(tmp_path) >= before + 0.2


def test_a_process_cpu_is_its_own_and_zero_without_one() -> None:
    """The local broker's CPU in freshness runs: a process's user + system seconds; none (the
    broker not started, or gone) reads 0, not an error."""
    assert process_cpu_seconds(None) == 0.0
    assert process_cpu_seconds(2**22 + 12345) == 0.0  # above Linux's pid_max: no such process
    before = process_cpu_seconds(os.getpid())
    spin(0.3)
    assert process_cpu_seconds(os.getpid()) >= before + 0.2
    # several processes: their sum, the ones gone still counting 0
    assert process_cpu_seconds(os.getpid(), None, 2**22 + 12345) == pytest.approx(
        process_cpu_seconds(os.getpid()), abs=0.05
    )


def test_pg_upsert_batches_keep_the_last_row_per_user_of_each_batch() -> None:
    rows = [(f"u{i % 3}", i) for i in range(BATCH + 4)]
    first, second = batches(rows)
    # The sink's flush keeps each key's last row: three users in the first batch, in the order
    # their first row came, each with its last value before the batch ends.
    assert first == [("u0", BATCH - 1), ("u1", BATCH - 3), ("u2", BATCH - 2)]
    assert second == [("u1", BATCH + 3), ("u2", BATCH + 1), ("u0", BATCH + 2)]
    assert batches([]) == []


class _FakePostgres:
    """What `Bench` asks of the embedded PostgreSQL, recorded."""

    def __init__(self) -> None:
        self.database = ""
        self.calls: list[tuple[str, str]] = []

    def recreate_database(self) -> None:
        self.calls.append(("create", self.database))

    def drop_database(self) -> None:
        self.calls.append(("drop", self.database))

    def dsn(self, name: str) -> str:
        return f"postgresql://bench@127.0.0.1/{name}"


@pytest.mark.parametrize("keep", [False, True])
def test_each_run_leaves_no_state_or_database_behind_unless_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep: bool
) -> None:
    """A full bench writes gigabytes of RocksDB state, checkpoints and rows: a run's are removed
    once its figures are read (the next run's database replaces its database), unless
    --keep-work."""

    def fake_run(cmd: list[str], **_: Any) -> Any:
        spec = json.loads(cmd[-1])
        checkpoint = Path(spec["state_dir"]) / "checkpoints" / "chk-1"
        checkpoint.mkdir(parents=True)
        (checkpoint / "000001.sst").write_bytes(b"x" * 1024)
        return SimpleNamespace(stdout="{}", stderr="", returncode=0)

    monkeypatch.setattr(e2e.subprocess, "run", fake_run)
    monkeypatch.setattr(e2e.db, "migrate", lambda dsn: None)
    pg = _FakePostgres()
    bench = e2e.Bench(tmp_path, cast(Any, pg), "127.0.0.1:9", 1, keep_work=keep)
    for _ in range(3):
        dsn = bench.fresh_database()
        bench.runner("job", dsn, "t", 10, None, f"state-{bench.runs}")
    left = sorted(p.name for p in tmp_path.iterdir())
    if keep:
        assert left == ["state-1", "state-2", "state-3"]
        assert pg.calls == [("create", "bench1"), ("create", "bench2"), ("create", "bench3")]
    else:
        assert left == []
        assert pg.calls == [
            ("create", "bench1"),
            ("drop", "bench1"),
            ("create", "bench2"),
            ("drop", "bench2"),
            ("create", "bench3"),
        ]


def test_sigterm_inside_a_c_extension_still_ends_the_bench_with_143(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def wrapped(argv: object) -> None:
        try:
            raise Terminated(TERMINATED)
        except Terminated as exc:
            raise SystemError("<class 'Producer'> returned a result with an exception set") from exc

    monkeypatch.setattr(e2e, "main", wrapped)
    with pytest.raises(SystemExit) as ended:
        e2e.run([])
    assert ended.value.code == 143

    def other(argv: object) -> None:
        raise SystemError("a real one")

    monkeypatch.setattr(e2e, "main", other)
    with pytest.raises(SystemError, match="a real one"):
        e2e.run([])
