"""The model registry on a real PostgreSQL, without Flink: `profilestream model publish|list` as an
operator types them, and `RegistryPoller` (what each instance of the job's profile operator runs)
driven as two parallel subtasks would drive it. The job itself switching models mid-stream is
tests/integration/test_model_reload.py."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from flink_jobs.config import DEFAULT_MODEL_DIR
from flink_jobs.io.registry import Candidate, RegistryPoller, list_entries
from tests.support.cli import CLI, assert_one_line_error, run_cli
from tests.support.db import query
from tests.support.models import (
    copy_default,
    not_a_probability_model,
    recalibrated_model,
    unknown_feature_model,
)
from udfs.registry import ModelState

pytestmark = pytest.mark.integration


def publish(dsn: str, model: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("model", "publish", str(model), "--pg-dsn", dsn, *extra)


def states(dsn: str) -> dict[str, tuple[str, str | None]]:
    return {e.version: (e.state.value, e.refused_reason) for e in list_entries(dsn)}


def poller(dsn: str) -> RegistryPoller:
    """A profile operator instance's poller, started with the shipped model."""
    return RegistryPoller(dsn, 5_000, DEFAULT_MODEL_DIR, "taobao-v2")


class Subtask:
    """What UpdateProfile does with its poller: poll when due, switch, record."""

    def __init__(self, dsn: str) -> None:
        self.poller = poller(dsn)
        self.version = "taobao-v2"
        self.now = 0

    def step(self) -> Candidate | None:
        self.now += 10_000  # always due
        candidate = self.poller.poll(self.now)
        if candidate is not None:
            self.version = candidate.version
            candidate.scorer.close()
            self.poller.switched(candidate)
        return candidate


def test_publish_and_list_name_every_mistake(pg_dsn: str, tmp_path: Path) -> None:
    proc = run_cli("model", "list", "--pg-dsn", pg_dsn)
    assert proc.returncode == 0 and "no model registered yet" in proc.stdout
    assert_one_line_error(publish(pg_dsn, tmp_path / "nope"), "is not a directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(publish(pg_dsn, empty), "has no model.txt")
    assert_one_line_error(run_cli("model", "publish", str(empty)), "PG_DSN is not set")

    good = recalibrated_model(tmp_path / "good", "v2")
    proc = publish(pg_dsn, good)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "published purchase_propensity v2" in proc.stdout and "model list" in proc.stdout
    assert proc.stderr == ""
    again = publish(pg_dsn, good)  # the same content again: nothing changes
    assert again.returncode == 0 and "already published: purchase_propensity v2" in again.stdout
    other = recalibrated_model(tmp_path / "other", "v2", a=2.0)
    assert_one_line_error(
        publish(pg_dsn, other), "v2 is already published with other content", "new version"
    )
    # A model this checkout's code refuses can still be published (the job decides, with its
    # own code), with a warning.
    bad = publish(pg_dsn, unknown_feature_model(tmp_path / "bad", "v3"))
    assert bad.returncode == 0 and "warning: this checkout's code refuses" in bad.stderr
    assert states(pg_dsn) == {"v2": ("pending", None), "v3": ("pending", None)}

    listing = run_cli("model", "list", "--pg-dsn", pg_dsn)
    lines = listing.stdout.splitlines()
    assert lines[0].split()[:3] == ["VERSION", "STATE", "PUBLISHED"]
    assert [line.split()[:2] for line in lines[1:]] == [["v3", "pending"], ["v2", "pending"]]
    # What BI and status views read (the model file stays in the base table).
    rows = query(pg_dsn, "SELECT version, state, metadata->>'name' FROM bi_model_versions")
    assert sorted(rows) == [
        ("v2", "pending", "purchase_propensity"),
        ("v3", "pending", "purchase_propensity"),
    ]
    grants = query(
        pg_dsn,
        "SELECT has_table_privilege('bi_reader', 'bi_model_versions', 'SELECT'),"
        " has_table_privilege('bi_reader', 'model_registry', 'SELECT')",
    )
    assert grants == [(True, False)]


def test_parallel_subtasks_switch_refuse_and_record_once(pg_dsn: str, tmp_path: Path) -> None:
    a, b = Subtask(pg_dsn), Subtask(pg_dsn)
    # The first polls find an empty registry: the model the job started with is registered once.
    assert a.step() is None and b.step() is None
    assert states(pg_dsn) == {"taobao-v2": ("serving", None)}
    (first_since,) = query(pg_dsn, "SELECT serving_since FROM model_registry")[0]

    assert publish(pg_dsn, recalibrated_model(tmp_path / "v2", "v2")).returncode == 0
    switched = a.step()
    assert switched is not None and switched.version == "v2" and a.version == "v2"
    assert states(pg_dsn) == {"taobao-v2": ("retired", None), "v2": ("serving", None)}
    (since,) = query(pg_dsn, "SELECT serving_since FROM model_registry WHERE version = 'v2'")[0]
    assert b.version == "taobao-v2"  # b has not polled yet: it still serves the old model
    assert b.step() is not None and b.version == "v2"
    # b's record changed nothing: serving since a switched; the first stays retired.
    assert query(pg_dsn, "SELECT serving_since FROM model_registry WHERE version = 'v2'") == [
        (since,)
    ]
    assert query(
        pg_dsn, "SELECT serving_since FROM model_registry WHERE version = 'taobao-v2'"
    ) == [(first_since,)]

    # Two bad models: the newest is tried and refused first, then the other; v2 keeps serving.
    assert publish(pg_dsn, unknown_feature_model(tmp_path / "v3", "v3")).returncode == 0
    assert publish(pg_dsn, not_a_probability_model(tmp_path / "v4", "v4")).returncode == 0
    for subtask in (a, b, a, b, a, b):
        assert subtask.step() is None and subtask.version == "v2"
    found = states(pg_dsn)
    assert found["v2"] == ("serving", None)
    assert found["v3"] == (
        "refused",
        "model v3 uses features ['cnt_teleports_1h'] that this code does not compute",
    )
    assert found["v4"][0] == "refused" and "not a probability in [0, 1]" in str(found["v4"][1])

    # A job (re)started with the shipped model switches to the registry's choice at once.
    restarted = Subtask(pg_dsn)
    candidate = restarted.step()
    assert candidate is not None and candidate.version == "v2"
    assert states(pg_dsn)["taobao-v2"] == ("retired", None)

    listing = run_cli("model", "list", "--pg-dsn", pg_dsn).stdout.splitlines()
    assert [line.split()[:2] for line in listing[1:]] == [
        ["v4", "refused"],
        ["v3", "refused"],
        ["v2", "serving"],
        ["taobao-v2", "retired"],
    ]
    assert "does not compute" in listing[2]


def test_a_publisher_can_wait_for_the_outcome(pg_dsn: str, tmp_path: Path) -> None:
    job = Subtask(pg_dsn)
    job.step()
    timeout = publish(pg_dsn, recalibrated_model(tmp_path / "v2", "v2"), "--wait", "1")
    assert timeout.returncode == 3 and "still pending after 1 s" in timeout.stdout

    def wait_for(model: Path) -> subprocess.CompletedProcess[str]:
        proc = subprocess.Popen(
            [CLI, "model", "publish", str(model), "--pg-dsn", pg_dsn, "--wait", "60"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        while proc.poll() is None:  # the job polls until the publisher sees an outcome
            time.sleep(0.3)
            job.step()
        out, err = proc.communicate()
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    served = wait_for(tmp_path / "v2")
    assert served.returncode == 0 and served.stdout.splitlines()[-1].startswith("serving since")
    refused = wait_for(not_a_probability_model(tmp_path / "v3", "v3"))
    assert refused.returncode == 1
    assert refused.stdout.splitlines()[-1].startswith("refused: model v3 scores a probe row")
    assert job.version == "v2"


def test_a_row_edited_after_publishing_is_refused(pg_dsn: str, tmp_path: Path) -> None:
    job = Subtask(pg_dsn)
    job.step()
    assert publish(pg_dsn, recalibrated_model(tmp_path / "v2", "v2")).returncode == 0
    query(pg_dsn, "UPDATE model_registry SET model_txt = model_txt || ' ' WHERE version = 'v2'")
    assert job.step() is None and job.version == "taobao-v2"
    state, reason = states(pg_dsn)["v2"]
    assert state == "refused" and "do not match its sha256" in str(reason)


def test_an_unreachable_registry_leaves_the_model_and_backs_off(tmp_path: Path) -> None:
    start = copy_default(tmp_path / "start")
    lost = RegistryPoller("postgresql://nobody@127.0.0.1:1/none", 1_000, start, "taobao-v2")
    assert lost.due(0)
    assert lost.poll(0) is None and lost.poll(2_000) is None
    assert lost.failures == 2 and lost.next_ms == 2_000 + 4_000
    assert lost.serving_version == "taobao-v2" and lost.conn is None
    assert not lost.due(5_999) and lost.due(6_000)


def test_the_registry_rejects_impossible_rows(pg_dsn: str) -> None:
    import psycopg2

    with pytest.raises(psycopg2.errors.CheckViolation):
        query(
            pg_dsn,
            "INSERT INTO model_registry (version, name, model_txt, metadata_json, sha256, state)"
            " VALUES ('x', 'm', 'tree', '{}', 's', 'refused')",  # refused without a reason
        )
    assert ModelState("retired") is ModelState.RETIRED
