"""Run one variant of the job in a fresh process (a fresh JVM, so no run inherits another's JIT
warm-up) and report its throughput as JSON on stdout's last line.

    python -m bench.runner '<json spec>'

Variants: "job" (the production pipeline, `flink_jobs.job.run.run_job`, into PostgreSQL) or a stage
of `bench.stages` ("floor", "state", "update", "features", "scoring": the same source, decode
and key_by, a keyed function doing part of the work, nothing written).

Throughput is taken from Flink's own counter of records into the keyed operator
(`numRecordsIn`, REST API, sampled every `sample_s`): the rate between 10 % and 90 % of the input,
which leaves out start-up and the drain at the end.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.cpu import process_cpu_seconds
from flink_jobs.config import DEFAULT_CHECKPOINT_INTERVAL_MS, JobConfig
from flink_jobs.job.run import run_job
from flink_jobs.ops.runtime import find_java
from udfs.params import ProfileParams

KEYED_OPERATOR = "update profile"  # name prefix of the keyed operator's vertex
# Flink's task time accounting: processing, blocked on full output buffers, waiting for input
TASK_TIMES = ("busyTimeMsPerSecond", "backPressuredTimeMsPerSecond", "idleTimeMsPerSecond")
TASK_IDS = tuple(f"0.{t}" for t in TASK_TIMES)  # subtask 0's


@dataclass
class Sampler:
    """Samples the keyed vertex's numRecordsIn (summed over subtasks) through the REST API."""

    port: int
    samples: list[tuple[float, int]] = field(default_factory=list)
    cpu: list[dict[str, float]] = field(default_factory=list)  # per sample: thread group -> s
    extra: dict[str, float] = field(default_factory=dict)
    # per sample: the keyed task's busy / backPressured / idle time in ms per second (subtask 0)
    task: list[dict[str, float]] = field(default_factory=list)
    _vertex: str | None = None
    _job: str | None = None
    _ids: list[str] | None = None
    checkpoint: dict[str, Any] = field(default_factory=dict)
    _checkpoint_polled: float = 0.0

    def _get(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.loads(response.read())

    def tick(self) -> None:
        now = time.perf_counter()
        try:
            if self._vertex is None:
                jobs = [j for j in self._get("/jobs")["jobs"] if j["status"] == "RUNNING"]
                if not jobs:
                    return
                self._job = jobs[0]["id"]
                for vertex in self._get(f"/jobs/{self._job}")["vertices"]:
                    if vertex["name"].startswith(KEYED_OPERATOR) or (
                        KEYED_OPERATOR in vertex["name"]
                    ):
                        self._vertex = vertex["id"]
                if self._vertex is None:
                    return
            base = f"/jobs/{self._job}/vertices/{self._vertex}/metrics"
            if self._ids is None:
                # Per-subtask operator counters: "<subtask>.update_profile_....numRecordsIn".
                self._ids = [
                    m["id"]
                    for m in self._get(base)
                    if m["id"].endswith(".numRecordsIn")
                    and m["id"].split(".", 1)[1].startswith(KEYED_OPERATOR.replace(" ", "_"))
                ]
                if not self._ids:
                    self._ids = None
                    return
            # One request for the counters and the task times (a metric not yet registered is
            # left out of the answer: that sample then has no task times).
            got = self._get(base + "?get=" + ",".join([*self._ids, *TASK_IDS]))
            counters = set(self._ids)
            records = sum(int(float(m["value"])) for m in got if m["id"] in counters)
            times = {m["id"][2:]: float(m["value"]) for m in got if m["id"] in TASK_IDS}
            self.samples.append((now, records))
            self.cpu.append(thread_cpu())
            self.task.append(times)
        except (OSError, ValueError, KeyError):
            return

    def checkpoint_stats(self) -> None:
        """The newest completed checkpoint's full state size and duration (REST)."""
        if self._job is None or time.perf_counter() - self._checkpoint_polled < 5:
            return
        self._checkpoint_polled = time.perf_counter()
        try:
            latest = self._get(f"/jobs/{self._job}/checkpoints")["latest"]["completed"]
        except (OSError, ValueError, KeyError, TypeError):
            return
        if latest:
            self.checkpoint = {
                "id": latest.get("id"),
                "state_size_bytes": latest.get("state_size"),
                "checkpointed_size_bytes": latest.get("checkpointed_size"),
                "duration_ms": latest.get("end_to_end_duration"),
            }

    def metric_sum(self, names: list[str]) -> dict[str, float]:
        """Operator metrics of the keyed vertex whose ids end with one of `names`, summed."""
        if self._vertex is None:
            return {}
        base = f"/jobs/{self._job}/vertices/{self._vertex}/metrics"
        try:
            ids = [m["id"] for m in self._get(base) if m["id"].rsplit(".", 1)[-1] in names]
            if not ids:
                return {}
            out: dict[str, float] = {}
            for m in self._get(base + "?get=" + ",".join(ids)):
                key = m["id"].rsplit(".", 1)[-1]
                out[key] = out.get(key, 0.0) + float(m["value"])
            return out
        except (OSError, ValueError, KeyError):
            return {}


def steady_rate(samples: list[tuple[float, int]], total: int) -> tuple[float, float]:
    """(events/s between 10 % and 90 % of `total`, seconds that took), interpolated. A run too
    short for the sampling (the first sample after the job was found is already past 10 %, as
    in a floor run of ~3 s on a fast machine) falls back to the first and last samples inside
    the run (0 < count < total); (0.0, 0.0) when there are fewer than two of those."""

    def when(target: float) -> float | None:
        for (t0, n0), (t1, n1) in itertools.pairwise(samples):
            if n0 <= target <= n1 and n1 > n0:
                return t0 + (t1 - t0) * (target - n0) / (n1 - n0)
        return None

    lo, hi = when(0.1 * total), when(0.9 * total)
    if lo is not None and hi is not None and hi > lo:
        return 0.8 * total / (hi - lo), hi - lo
    inside = [(t, n) for t, n in samples if 0 < n < total]
    if len(inside) >= 2:
        (t0, n0), (t1, n1) = inside[0], inside[-1]
        if t1 > t0 and n1 > n0:
            return (n1 - n0) / (t1 - t0), t1 - t0
    return 0.0, 0.0


# Thread name prefixes (Linux keeps 15 characters) -> what runs there.
THREAD_GROUPS = (
    ("update profile", "keyed"),  # the keyed Python operator's task (and what is chained to it)
    ("Source", "source"),  # the Kafka source task (Java only: decoding happens in the keyed task)
    ("DataStreamToTab", "sink"),  # the JDBC sink task
)


def jvm_pids() -> list[int]:
    """This process's JVM children (the MiniCluster)."""
    pids = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "java" in child.name():
                pids.append(child.pid)
        except psutil.Error:
            continue
    return pids


def thread_cpu(pids: list[int] | None = None) -> dict[str, float]:
    """CPU seconds of the threads of `pids` (default: the JVM's) so far, summed by THREAD_GROUPS
    (the rest: "other", and "other/<thread name>" for each kind of thread in it), and as
    "wait/<group>" the seconds the named groups' threads were ready to run but waited for a core
    (the scheduler's run delay, /proc/<pid>/task/<tid>/schedstat): on a 2-core machine, what the
    other threads and PostgreSQL took from the keyed thread."""
    out: dict[str, float] = {}
    hz = os.sysconf("SC_CLK_TCK")
    for pid in jvm_pids() if pids is None else pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                name = (task / "comm").read_text().strip()
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                run_delay_ns = int((task / "schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                continue
            group = next((g for prefix, g in THREAD_GROUPS if name.startswith(prefix)), "other")
            seconds = (int(fields[11]) + int(fields[12])) / hz
            out[group] = out.get(group, 0.0) + seconds
            if group == "other":  # and by thread name, numbers folded ("C2 CompilerThre#")
                kind = "other/" + re.sub(r"\d+", "#", name)
                out[kind] = out.get(kind, 0.0) + seconds
            else:
                out["wait/" + group] = out.get("wait/" + group, 0.0) + run_delay_ns / 1e9
    return out


def steady(samples: list[tuple[float, int]], total: int) -> list[int]:
    """The indices of the samples taken between 10 % and 90 % of the input."""
    return [i for i, (_, n) in enumerate(samples) if 0.1 * total <= n <= 0.9 * total]


def cpu_per_event(
    samples: list[tuple[float, int]], cpu: list[dict[str, float]], total: int
) -> dict[str, float]:
    """Microseconds of CPU per event by thread group, between the samples that bracket 10 % and
    90 % of the input."""
    inside = steady(samples, total)
    if len(inside) < 2:
        return {}
    a, b = inside[0], inside[-1]
    events = samples[b][1] - samples[a][1]
    if events <= 0:
        return {}
    groups = set(cpu[a]) | set(cpu[b])
    return {g: (cpu[b].get(g, 0.0) - cpu[a].get(g, 0.0)) / events * 1e6 for g in sorted(groups)}


def task_times(
    samples: list[tuple[float, int]], task: list[dict[str, float]], total: int
) -> dict[str, float]:
    """The keyed task's mean busy / back-pressured / idle ms per second over the samples taken
    between 10 % and 90 % of the input (Flink's own per-second figures, averaged)."""
    inside = [task[i] for i in steady(samples, total) if i < len(task)]
    out: dict[str, float] = {}
    for name in TASK_TIMES:
        values = [t[name] for t in inside if name in t]
        if values:
            out[name] = sum(values) / len(values)
    return out


def jvm_cpu_seconds() -> float:
    return process_cpu_seconds(*jvm_pids())


def run_variant(spec: dict[str, Any]) -> dict[str, Any]:
    variant = spec["variant"]
    config = JobConfig(
        kafka_bootstrap=spec["bootstrap"],
        pg_dsn=spec["pg_dsn"],
        topic=spec["topic"],
        group_id=f"bench-{variant}-{time.time_ns()}",
        job_name=f"bench-{variant}",
        state_dir=Path(spec["state_dir"]),
        parallelism=spec.get("parallelism", 1),
        stopping_offsets=(
            {int(p): o for p, o in spec["stopping_offsets"].items()}
            if spec.get("stopping_offsets") is not None
            else None
        ),
        rest_port=spec["rest_port"],
        flink_settings=(
            # The REST API caches metrics for 10 s by default: sample them fresh.
            ("metrics.fetcher.update-interval", "250"),
            *((k, str(v)) for k, v in spec.get("flink_settings", {}).items()),
        ),
        **{
            "checkpoint_interval_ms": spec.get(
                "checkpoint_interval_ms", DEFAULT_CHECKPOINT_INTERVAL_MS
            ),
            **spec.get("config", {}),  # --job-setting, the checkpoint interval included
        },
    )
    total = int(spec["events"])
    java = find_java()
    sampler = Sampler(config.rest_port or 0)
    scoring: dict[str, float] = {}

    def tick() -> None:
        sampler.tick()
        got = sampler.metric_sum(
            [
                "scoring_sampled_ns",
                "scoring_samples",
                "explain_sampled_ns",
                "explain_samples",
                "clustering_sampled_ns",
                "clustering_samples",
            ]
        )
        if got.get("scoring_samples"):
            scoring.update(got)
        sampler.checkpoint_stats()

    cpu0 = jvm_cpu_seconds()
    start = time.perf_counter()
    if variant == "job":
        stop_after = spec.get("stop_after_s")
        stop_file = Path(spec["stop_file"]) if spec.get("stop_file") else None
        result = run_job(
            config,
            java,
            on_tick=tick,
            tick_s=spec.get("sample_s", 0.5),
            stop_when=(
                (lambda: stop_file.exists() or time.perf_counter() - start > stop_after)
                if stop_file is not None and stop_after
                else None
            ),
        )
        status = result.status
    else:
        status = _run_stage(variant, config, java, spec, tick)
    wall = time.perf_counter() - start
    cpu = jvm_cpu_seconds() - cpu0
    rate, steady_s = steady_rate(sampler.samples, total)
    out: dict[str, Any] = {
        "variant": variant,
        "status": status,
        "events": total,
        "wall_s": wall,
        "steady_s": steady_s,
        "events_per_s": rate,
        "jvm_cpu_s": cpu,
        "events_per_jvm_cpu_s": total / cpu if cpu else 0.0,
        "samples": len(sampler.samples),
        "cpu_us_per_event": cpu_per_event(sampler.samples, sampler.cpu, total),
        "keyed_task_ms_per_s": task_times(sampler.samples, sampler.task, total),
    }
    if scoring.get("scoring_samples"):
        out["scoring_us"] = scoring["scoring_sampled_ns"] / scoring["scoring_samples"] / 1000
        out["scoring_samples"] = int(scoring["scoring_samples"])
    if scoring.get("explain_samples"):
        # per computed explanation; the engine computes one only when the score moved
        out["explain_us"] = scoring["explain_sampled_ns"] / scoring["explain_samples"] / 1000
    if scoring.get("clustering_samples"):
        # the learned segment: one nearest-centroid assignment per row (udfs.clusters)
        out["cluster_us"] = scoring["clustering_sampled_ns"] / scoring["clustering_samples"] / 1000
        out["cluster_samples"] = int(scoring["clustering_samples"])
    if sampler.checkpoint:
        out["checkpoint"] = sampler.checkpoint
    return out


def _run_stage(variant: str, config: JobConfig, java: Any, spec: dict[str, Any], tick: Any) -> str:
    from pyflink.common.typeinfo import Types
    from pyflink.datastream.connectors.base import Sink
    from pyflink.java_gateway import get_gateway

    from bench.stages import Stage
    from flink_jobs.job.functions import PROFILE_ROW_TYPE
    from flink_jobs.job.pipeline import (
        by_user_key,
        create_environment,
        kafka_source,
        table_environment,
    )

    env = create_environment(config, java)
    source = kafka_source(table_environment(env, config), config)
    keyed = by_user_key(source).process(
        Stage(
            variant,
            config.topic,
            config.model_dir,
            ProfileParams(),
            int(spec.get("blob_bytes", 350)),
            config.profile_cache_entries,
        ),
        # `emit` yields the job's rows; the others nothing
        output_type=PROFILE_ROW_TYPE if variant == "emit" else Types.PICKLED_BYTE_ARRAY(),
    )
    keyed.name(f"{KEYED_OPERATOR} ({variant})").uid("profile-update")
    jvm = get_gateway().jvm
    keyed.sink_to(Sink(jvm.org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink()))
    client = env.execute_async(config.job_name)
    outcome = client.get_job_execution_result()
    while not outcome.done():
        tick()
        time.sleep(spec.get("sample_s", 0.25))  # a floor run can take ~3 s on a fast machine
    outcome.result()
    return "FINISHED"


def main() -> None:
    spec = json.loads(sys.argv[1])
    result = run_variant(spec)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
