"""Model hot reload end to end on real components: the job runs unbounded on a Flink MiniCluster
(parallelism 2: each subtask polls the registry and switches on its own) reading the local
broker and writing the embedded PostgreSQL, while `profilestream model publish` hands it a good
second model mid-stream and then two bad ones.

Checked as a user would: rows before the publish name the old version; after it, rows name the
new version and each score equals the new model's score of the row's own features (recomputed
here, independently of the job); the bad models are refused with their reasons in the registry
and the good one keeps serving (event rows and inactivity-timer rows alike); `model list` shows
it all, and `verify` still finds every profile exact.
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from flink_jobs.config import DEFAULT_MODEL_DIR, JobConfig
from flink_jobs.io.producer import EventPublisher, ensure_topic
from flink_jobs.job.run import JobResult, preflight, run_job
from tests.support.cli import CLI, cli
from tests.support.db import query
from tests.support.e2e import job_config
from tests.support.models import (
    not_a_probability_model,
    row_vector,
    tiny_model,
    unknown_feature_model,
)
from udfs import events as ev
from udfs.events import make_message
from udfs.registry import ModelState
from udfs.scoring import Scorer
from udfs.sources import write_delimited

pytestmark = [pytest.mark.flink, pytest.mark.integration]

T0 = 1_735_700_000_000
USERS = [f"ru{i:03d}" for i in range(120)]
POLL_MS = 500
DAY_MS = 86_400_000


class Shoppers:
    """Valid events only (no duplicates, nothing late: each event is one second after the last),
    so the job has folded everything sent when the rows' event counts add up to it."""

    def __init__(self, kafka: str, topic: str) -> None:
        self.publisher = EventPublisher(kafka, topic)
        self.rng = random.Random(7)
        self.sent: list[bytes] = []
        self.t = T0

    def send(self, users: list[str], jump_ms: int = 0) -> None:
        self.t += jump_ms
        for user in users:
            self.t += 1_000
            kind = self.rng.choice([ev.VIEW, ev.VIEW, ev.VIEW, ev.ADD_TO_CART, ev.PURCHASE])
            priced = kind == ev.PURCHASE
            msg = make_message(
                event_id=f"e{len(self.sent)}",
                user_id=user,
                event_type=kind,
                event_time_ms=self.t,
                item_id=f"i{self.rng.randrange(40)}",
                category_id=f"c{self.rng.randrange(8)}",
                price_micros=self.rng.randrange(1, 200) * 1_000_000 if priced else None,
                currency="USD" if priced else None,
                quantity=1 if kind in (ev.ADD_TO_CART, ev.PURCHASE) else None,
            )
            self.publisher.publish(msg)
            self.sent.append(msg.SerializeToString())
        report = self.publisher.flush()
        assert report.failed == 0 and report.refused == 0, report.errors


class BackgroundJob:
    """The production job (`run_job`: Kafka -> profiles -> PostgreSQL) running unbounded in a
    thread until `finish()` cancels it."""

    def __init__(self, config: JobConfig) -> None:
        java = preflight(config)
        self.stop = threading.Event()
        self.result: JobResult | None = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = run_job(config, java, stop_when=self.stop.is_set)
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def wait_for(
        self,
        condition: Callable[[], bool],
        what: str,
        state: Callable[[], object],
        timeout_s: float = 120,
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.thread.is_alive(), f"the job ended while waiting for {what}: {self.error}"
            if condition():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}: {state()}")

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(120)
        assert self.error is None, self.error
        assert self.result is not None and self.result.status == "CANCELED"


def rows(dsn: str) -> dict[str, dict[str, object]]:
    found = query(
        dsn,
        "SELECT user_id, model_version, score, features, segment, event_count, profile_version"
        " FROM user_profiles",
    )
    names = ("model_version", "score", "features", "segment", "event_count", "profile_version")
    return {r[0]: dict(zip(names, r[1:], strict=True)) for r in found}


def folded(dsn: str) -> int:
    return int(query(dsn, "SELECT coalesce(sum(event_count), 0) FROM user_profiles")[0][0])


def registry(dsn: str) -> dict[str, tuple[str, str | None, object]]:
    found = query(dsn, "SELECT version, state, refused_reason, serving_since FROM model_registry")
    return {str(v): (str(s), r, since) for v, s, r, since in found}


def publish(dsn: str, model: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [CLI, "model", "publish", str(model), "--pg-dsn", dsn],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_running_job_switches_to_a_published_model_and_refuses_bad_ones(
    kafka: str, pg_dsn: str, tmp_path: Path
) -> None:
    topic = "reload-events"
    ensure_topic(kafka, topic, partitions=2)
    good = tiny_model(tmp_path / "tiny-v2", "tiny-v2")
    scorers = {"taobao-v2": Scorer(DEFAULT_MODEL_DIR), "tiny-v2": Scorer(good)}

    def scored_by_their_model(found: dict[str, dict[str, object]]) -> None:
        """Every row's score is the score its named model gives the row's features."""
        for user, row in found.items():
            model = scorers[str(row["model_version"])]
            assert row["score"] == model.score(row_vector(row["features"])), user

    shoppers = Shoppers(kafka, topic)

    def state() -> str:
        """What the test saw when a wait timed out."""
        return (
            f"{folded(pg_dsn)} of {len(shoppers.sent)} events folded; registry "
            f"{ {v: (s, r) for v, (s, r, _) in registry(pg_dsn).items()} }"
        )

    config = job_config(
        kafka, pg_dsn, topic, tmp_path, parallelism=2, model_poll_interval_ms=POLL_MS
    )
    job = BackgroundJob(config)
    try:
        # Before: every row scored by the model the job started with, which an empty registry
        # now lists as serving.
        shoppers.send(USERS * 4)
        job.wait_for(lambda: folded(pg_dsn) == len(shoppers.sent), "the first events", state)
        before = rows(pg_dsn)
        assert len(before) == len(USERS)
        assert {r["model_version"] for r in before.values()} == {"taobao-v2"}
        scored_by_their_model(before)
        assert registry(pg_dsn)["taobao-v2"][:2] == ("serving", None)

        # Mid-stream: a second model is published while events keep coming.
        publishing = None
        for chunk in range(8):
            if chunk == 2:
                publishing = publish(pg_dsn, good)
            shoppers.send(random.Random(chunk).sample(USERS, 60))
            time.sleep(0.25)
        assert publishing is not None
        out, err = publishing.communicate(timeout=60)
        assert publishing.returncode == 0 and "published purchase_propensity tiny-v2" in out, err
        job.wait_for(lambda: registry(pg_dsn)["tiny-v2"][0] == "serving", "the switch", state)
        job.wait_for(lambda: folded(pg_dsn) == len(shoppers.sent), "the mid-stream events", state)
        scored_by_their_model(rows(pg_dsn))  # either model, each row by the one it names

        # After: once a poll interval has passed, each subtask's next event polls, switches
        # before scoring it, so every row written from then on names the new model.
        time.sleep(2 * POLL_MS / 1000)
        shoppers.send(USERS)
        job.wait_for(
            lambda: folded(pg_dsn) == len(shoppers.sent), "the events after the switch", state
        )
        after = rows(pg_dsn)
        assert {r["model_version"] for r in after.values()} == {"tiny-v2"}
        assert all(after[u]["profile_version"] > before[u]["profile_version"] for u in USERS)
        scored_by_their_model(after)
        changed = [u for u in USERS if after[u]["score"] != before[u]["score"]]
        assert len(changed) > len(USERS) // 2  # another model: other scores
        found = registry(pg_dsn)
        assert found["taobao-v2"][0] == "retired" and found["tiny-v2"][0] == "serving"

        # Two bad models: one naming a feature the code does not compute, one that does not
        # score a probability. Both are refused with the reason, the good model keeps serving.
        bad = [
            unknown_feature_model(tmp_path / "bad-v3", "bad-v3"),
            not_a_probability_model(tmp_path / "bad-v4", "bad-v4"),
        ]
        for model in bad:
            out, err = publish(pg_dsn, model).communicate(timeout=60)
            assert "published purchase_propensity bad-v" in out, err
        time.sleep(2 * POLL_MS / 1000)
        # Half the shoppers come back 15 days later: their events move event time on, and the
        # other half's inactivity timers fire (at_risk rows, scored on the timer's path).
        returning, silent = USERS[::2], USERS[1::2]
        shoppers.send(returning, jump_ms=15 * DAY_MS)
        for _ in range(6):  # later events keep polling: each bad model gets its turn
            time.sleep(POLL_MS / 1000)
            shoppers.send(returning[:10])
        job.wait_for(
            lambda: (
                folded(pg_dsn) == len(shoppers.sent)
                and all(r[0] != ModelState.PENDING for r in registry(pg_dsn).values())
            ),
            "the bad models' outcome",
            state,
        )
        job.wait_for(
            lambda: all(rows(pg_dsn)[u]["segment"] == "at_risk" for u in silent),
            "the inactivity timers",
            state,
        )
        final = rows(pg_dsn)
        assert {r["model_version"] for r in final.values()} == {"tiny-v2"}
        scored_by_their_model(final)
        assert all(final[u]["event_count"] == after[u]["event_count"] for u in silent)
    finally:
        job.finish()
        for scorer in scorers.values():
            scorer.close()

    found = registry(pg_dsn)
    assert {v: s for v, (s, _, _) in found.items()} == {
        "taobao-v2": "retired",
        "tiny-v2": "serving",
        "bad-v3": "refused",
        "bad-v4": "refused",
    }
    assert found["bad-v3"][1] == (
        "model bad-v3 uses features ['cnt_teleports_1h'] that this code does not compute"
    )
    assert "not a probability in [0, 1]" in str(found["bad-v4"][1])
    assert found["bad-v3"][2] is None and found["bad-v4"][2] is None  # never served

    listing = cli("model", "list", "--pg-dsn", pg_dsn)
    assert listing.returncode == 0, listing.stderr
    table = [line.split()[:2] for line in listing.stdout.splitlines()[1:]]
    assert table == [
        ["bad-v4", "refused"],
        ["bad-v3", "refused"],
        ["tiny-v2", "serving"],
        ["taobao-v2", "retired"],
    ]
    assert "does not compute" in listing.stdout and "not a probability" in listing.stdout

    # The offline recomputation scores each user with the version their row names (loaded from
    # the registry) and still matches exactly; it says why it leaves reasons out.
    log = tmp_path / "sent.pb"
    write_delimited(log, shoppers.sent)
    proc = cli(
        "verify", "--events", str(log), "--format", "proto", "--pg-dsn", pg_dsn, "--topic", topic
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "mismatches: 0 in 0 profiles; dead-letter problems: 0" in proc.stdout
    assert "score_reasons not compared: 2 model versions served (taobao-v2, tiny-v2)" in proc.stdout
