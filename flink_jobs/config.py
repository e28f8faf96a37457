"""The job's one typed configuration object, validated at start-up.

Values come from CLI flags, then environment variables (`PROFILESTREAM_*`, plus the conventional
`KAFKA_BOOTSTRAP` and `PG_DSN`), then defaults. Every validation error names the setting and the
fix. No pyflink import here: the CLI validates before a JVM starts.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from flink_jobs.runtime import PROJECT_ROOT
from udfs.cache import DEFAULT_CAPACITY as DEFAULT_CACHE_ENTRIES
from udfs.params import ProfileParams

DEFAULT_TOPIC = "user-events"
DEFAULT_MODEL_DIR = PROJECT_ROOT / "models" / "purchase_propensity" / "taobao-v2"
DEFAULT_STATE_DIR = Path(os.environ.get("PROFILESTREAM_STATE_DIR", PROJECT_ROOT / ".profilestream"))


class ConfigError(ValueError):
    """An invalid setting. str() is one line naming the setting and the fix."""


@dataclass(frozen=True)
class JobConfig:
    kafka_bootstrap: str
    pg_dsn: str
    topic: str = DEFAULT_TOPIC
    group_id: str = "profilestream"
    model_dir: Path = DEFAULT_MODEL_DIR
    state_dir: Path = DEFAULT_STATE_DIR
    job_name: str = "profilestream-profiles"
    parallelism: int = 1
    checkpoint_interval_ms: int = 10_000
    max_out_of_orderness_ms: int = 5_000
    idleness_ms: int = 30_000
    # Explicit end of a bounded run: partition -> offset to stop before. None = run forever.
    stopping_offsets: dict[int, int] | None = None
    restore_from: str | None = None  # a retained checkpoint or savepoint path
    jdbc_flush_rows: int = 500
    jdbc_flush_interval_ms: int = 200
    # Decoded profiles kept per operator instance (udfs.cache); 0 turns the cache off.
    profile_cache_entries: int = DEFAULT_CACHE_ENTRIES
    restart_attempts: int = 3
    rest_port: int | None = None  # serve Flink's REST API (metrics) on 127.0.0.1:<port>
    # A file holding the pseudonym key; None: the workers read PROFILESTREAM_PSEUDONYM_KEY[_FILE]
    # from their environment. Never the key itself (udfs.pseudonym).
    pseudonym_key_file: Path | None = None
    profile: ProfileParams = field(default_factory=ProfileParams)
    # Extra Flink settings applied last (key, value), e.g. for benchmarks and tuning.
    flink_settings: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[^,\s]+:\d+(,[^,\s]+:\d+)*", self.kafka_bootstrap or ""):
            raise ConfigError(
                f"KAFKA_BOOTSTRAP={self.kafka_bootstrap!r} is not host:port[,host:port]: set "
                "--bootstrap or KAFKA_BOOTSTRAP, e.g. 127.0.0.1:9092"
            )
        parts = urlsplit(self.pg_dsn or "")
        if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
            raise ConfigError(
                f"PG_DSN={redact_dsn(self.pg_dsn)!r} is not a postgresql://user@host:port/db URL"
                " with a host (the JDBC sink needs TCP): set --pg-dsn or PG_DSN"
            )
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", self.topic):
            raise ConfigError(f"topic={self.topic!r} is not a valid Kafka topic name: set --topic")
        checks = (
            ("parallelism", self.parallelism, 1),
            ("checkpoint_interval_ms", self.checkpoint_interval_ms, 100),
            ("max_out_of_orderness_ms", self.max_out_of_orderness_ms, 0),
            ("idleness_ms", self.idleness_ms, 1),
            ("jdbc_flush_rows", self.jdbc_flush_rows, 1),
            ("jdbc_flush_interval_ms", self.jdbc_flush_interval_ms, 1),
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
        # libpq's convention (psycopg2 follows it too): PGPASSWORD when the DSN has none.
        password = urlsplit(self.pg_dsn).password
        return unquote(password) if password else os.environ.get("PGPASSWORD", "")


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
        "--profile-cache",
        "profile_cache_entries",
        "decoded profiles kept in memory per operator instance (0: off)",
    ),
)


def add_tuning_options(parser: Any) -> None:
    """Add the tuning flags to an argparse parser (defaults: JobConfig's)."""
    defaults = {f.name: f.default for f in fields(JobConfig)}
    for flag, name, help_text in TUNING_OPTIONS:
        parser.add_argument(flag, dest=name, type=int, default=defaults[name], help=help_text)


def tuning_values(args: Any) -> dict[str, Any]:
    """The tuning fields of JobConfig from parsed arguments (keyword arguments for JobConfig)."""
    return {name: getattr(args, name) for _, name, _ in TUNING_OPTIONS}


def tuning_args(config: JobConfig) -> list[str]:
    """The tuning flags that reproduce `config` (for `flink run` job arguments)."""
    return [x for flag, name, _ in TUNING_OPTIONS for x in (flag, str(getattr(config, name)))]


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


def parse_offsets(text: str) -> dict[int, int]:
    """`0:120,1:98` -> {0: 120, 1: 98}."""
    try:
        pairs = (item.split(":") for item in text.split(",") if item.strip())
        return {int(p): int(o) for p, o in pairs}
    except ValueError:
        raise ConfigError(
            f"stopping offsets {text!r}: use partition:offset[,partition:offset], e.g. 0:120,1:98"
        ) from None
