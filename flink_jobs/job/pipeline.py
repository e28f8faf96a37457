"""Job wiring. `build_pipeline(env, source, sinks, config)` takes its source and sinks as arguments
so tests can inject their own; `create_environment`, `table_environment`, `kafka_source` and
`JdbcSinks` build the production pieces.

    Kafka (key = user_id, value = UserEvent bytes; per-partition watermarks from record timestamps)
      -> keyBy(record key), in Java
      -> UpdateProfile (Python: decode + validate, key check, RocksDB ValueState, event-time timers,
                        LightGBM, K-means cluster) --(rows)--> sinks.profiles
                                 --(contract violations, late events)--> sinks.dead_letters

Only one operator runs Python. In thread mode every Python operator of a TaskManager shares one
interpreter and its GIL; a second one (a Python decoder or PyFlink's Python key selector in the
source task) makes the two task threads hand the GIL back and forth on every record, which cost
more than all of the job's own work (docs/performance.md). So the source, the key extraction
(the Kafka record key, which the contract makes the user_id) and the shuffle stay in Java.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Protocol

from pyflink.common import Configuration
from pyflink.common.typeinfo import Types
from pyflink.datastream import DataStream, KeyedStream, StreamExecutionEnvironment
from pyflink.java_gateway import get_gateway
from pyflink.table import ChangelogMode, DataTypes, Schema, StreamTableEnvironment
from pyflink.table.expressions import col

from flink_jobs.config import JobConfig, split_password
from flink_jobs.job.functions import (
    COLUMN_KINDS,
    DEAD_LETTERS,
    PROFILE_ROW_TYPE,
    SOURCE_ROW_TYPE,
    UpdateProfile,
)
from flink_jobs.ops.flink_config import flink_settings
from flink_jobs.ops.runtime import Java, prepare_process_env
from udfs.rows import DEAD_LETTER_COLUMNS, PROFILE_COLUMNS

log = logging.getLogger(__name__)

# Stable operator uids: savepoints map state to these, so they never change.
UID_SOURCE = "kafka-user-events"  # the Kafka source's offsets (set on the Table API source)
UID_PROFILE = "profile-update"


class Sinks(Protocol):
    def profiles(self, stream: DataStream) -> None: ...
    def dead_letters(self, stream: DataStream) -> None: ...


def build_pipeline(
    env: StreamExecutionEnvironment,
    source: DataStream,
    sinks: Sinks,
    config: JobConfig,
    operator: type[UpdateProfile] = UpdateProfile,
) -> None:
    """Wire key_by(user) -> profile update -> sinks onto `source`, a stream of
    `Row(user_key, value)` (`SOURCE_ROW_TYPE`: the record key as text and the raw `UserEvent`
    bytes) carrying event-time timestamps and watermarks (see `kafka_source`). Tests inject the
    source, the sinks and, to provoke failures, a subclass of the profile `operator`."""
    profiles = (
        by_user_key(source)
        .process(
            operator(
                config.model_dir,
                config.profile,
                config.topic,
                config.max_out_of_orderness_ms,
                config.pseudonym_key_file,
                config.profile_cache_entries,
                registry_dsn=split_password(config.pg_dsn)[0],
                model_poll_interval_ms=config.model_poll_interval_ms,
                segments_dir=config.segments_dir,
            ),
            output_type=PROFILE_ROW_TYPE,
        )
        .name("update profile and score")
        .uid(UID_PROFILE)
    )
    sinks.profiles(profiles)
    sinks.dead_letters(profiles.get_side_output(DEAD_LETTERS))


def by_user_key(source: DataStream) -> KeyedStream:
    """`source` keyed by its first field (the user key) in Java: PyFlink's `key_by` would run a
    Python key selector in the source task. Keys are `Row(user_key)`, as PyFlink's `key_by` with
    a string key makes them, so the keyed state of earlier versions stays readable."""
    jvm = get_gateway().jvm
    j_keyed = source._j_data_stream.keyBy(
        jvm.org.apache.flink.streaming.api.functions.python.KeyByKeySelector(),
        Types.ROW([Types.STRING()]).get_java_type_info(),
    )
    return KeyedStream(j_keyed, SOURCE_ROW_TYPE, source)


def create_environment(config: JobConfig, java: Java) -> StreamExecutionEnvironment:
    """A StreamExecutionEnvironment in thread mode with RocksDB, incremental checkpoints and the
    connector jars, on a local MiniCluster (`flink_settings("local")`)."""
    prepare_process_env(java)
    # The workers of a local run live in this process tree: their libpq (model registry polls)
    # reads the password from PGPASSWORD, as the job never carries it.
    os.environ.update(config.secrets())
    config.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    (config.state_dir / "tmp").mkdir(parents=True, exist_ok=True)
    env = StreamExecutionEnvironment.get_execution_environment(
        _configuration(flink_settings("local", config))
    )
    env.set_parallelism(config.parallelism)
    return env


def cluster_environment(config: JobConfig) -> StreamExecutionEnvironment:
    """The environment under `flink run`: the cluster's configuration (state backend, checkpoint
    directory, restart strategy, Python executable) applies; the job adds its own settings."""
    return StreamExecutionEnvironment.get_execution_environment(
        _configuration(flink_settings("submit", config))
    )


def _configuration(settings: dict[str, str]) -> Configuration:
    conf = Configuration()
    for key, value in settings.items():
        conf.set_string(key, value)
    return conf


def table_environment(env: StreamExecutionEnvironment, config: JobConfig) -> StreamTableEnvironment:
    """The Table API side of the job (the Kafka source and the JDBC sinks)."""
    t_env = StreamTableEnvironment.create(env)
    table_config = t_env.get_config()
    # Table API operators (the source and the JDBC sinks) get deterministic uids too.
    table_config.set("table.exec.uid.generation", "ALWAYS")
    # An idle partition does not hold event time back.
    table_config.set("table.exec.source.idle-timeout", f"{config.idleness_ms} ms")
    return t_env


def kafka_source(t_env: StreamTableEnvironment, config: JobConfig) -> DataStream:
    """`Row(user_key, value)` from the events topic: the record key (the user_id by contract; ''
    when absent) and the value as sent, from the earliest offset (or the restored position),
    bounded by explicit stopping offsets when the config has them.

    Timestamps and watermarks come from the record timestamps (the contract makes them the event
    time), tracked per partition: bounded out-of-orderness `max_out_of_orderness_ms`, i.e. the
    watermark is the newest timestamp minus that minus 1 ms, as Flink's DataStream
    `for_bounded_out_of_orderness` makes it."""
    options = {
        "connector": "kafka",
        "topic": config.topic,
        "properties.bootstrap.servers": config.kafka_bootstrap,
        "properties.group.id": config.group_id,
        "properties.client.id.prefix": config.job_name,
        "properties.fetch.max.wait.ms": str(config.kafka_fetch_max_wait_ms),
        "scan.startup.mode": "earliest-offset",
        "key.format": "raw",
        "key.fields": "record_key",
        "value.format": "raw",
        "value.fields-include": "EXCEPT_KEY",
    }
    if config.stopping_offsets is not None:
        options["scan.bounded.mode"] = "specific-offsets"
        options["scan.bounded.specific-offsets"] = ";".join(
            f"partition:{p},offset:{o}" for p, o in sorted(config.stopping_offsets.items())
        )
    with_clause = ",\n  ".join(f"'{k}' = '{_escape(v)}'" for k, v in options.items())
    delay_ms = config.max_out_of_orderness_ms + 1
    t_env.execute_sql(
        "CREATE TEMPORARY TABLE user_events (\n"
        "  record_key BYTES,\n"
        "  event BYTES,\n"
        "  record_time TIMESTAMP_LTZ(3) METADATA FROM 'timestamp',\n"
        f"  WATERMARK FOR record_time AS record_time - INTERVAL '{delay_ms / 1000:.3f}' SECOND\n"
        f") WITH (\n  {with_clause}\n)"
    )
    table = t_env.sql_query(
        "SELECT CAST(COALESCE(record_key, X'') AS STRING) AS user_key, event FROM user_events"
    )
    stream = t_env.to_append_stream(table, SOURCE_ROW_TYPE)
    _set_source_uid(stream, UID_SOURCE)
    return stream


def _set_source_uid(stream: DataStream, uid: str) -> None:
    """Give the Kafka source under `stream` a fixed uid: its state (the partitions' offsets) is
    then restored by uid like every other operator's, whatever the planner names it (and a
    savepoint of the earlier DataStream source, same uid and split state, is read too)."""
    jvm = get_gateway().jvm
    source_class = jvm.org.apache.flink.streaming.api.transformations.SourceTransformation
    pending = [stream._j_data_stream.getTransformation()]
    found = []
    while pending:
        transformation = pending.pop()
        if source_class._java_lang_class.isInstance(transformation):
            found.append(transformation)
        pending.extend(transformation.getInputs())
    if len(found) != 1:
        raise RuntimeError(f"expected one Kafka source under the events table, found {len(found)}")
    found[0].setUid(uid)


def _sql_type(kind: str, in_stream: bool = False) -> str:
    """The SQL type of a column kind (udfs.rows) in the JDBC table, or, with `in_stream`, as the
    job's rows carry it (`COLUMN_KINDS`)."""
    _, table_type, stream_type = COLUMN_KINDS[kind]
    return stream_type if in_stream else table_type


def _escape(value: str) -> str:
    return value.replace("'", "''")


class JdbcSinks:
    """PostgreSQL through Flink's JDBC connector (Table API upsert on the primary key).

    The JDBC sink buffers rows, flushes on a row count, on an interval and on every checkpoint,
    and retries; a restore replays from the last checkpoint and the database's version guard
    (see schemas/sql) drops rows older than what it already has.
    """

    def __init__(self, t_env: StreamTableEnvironment, config: JobConfig) -> None:
        self.config = config
        self.t_env = t_env
        self.statements = self.t_env.create_statement_set()
        self._declare("profiles_sink", "user_profiles", PROFILE_COLUMNS, "user_id")
        self._declare(
            "dead_letters_sink", "dead_letter_events", DEAD_LETTER_COLUMNS, "dead_letter_id"
        )

    def _declare(
        self, name: str, table: str, columns: tuple[tuple[str, str], ...], key: str
    ) -> None:
        cfg = self.config
        cols = ",\n  ".join(f"`{n}` {_sql_type(k)}" for n, k in columns)
        options = {
            "connector": "jdbc",
            "url": cfg.jdbc_url,
            "table-name": table,
            "username": cfg.pg_user,
            "password": cfg.pg_password,
            "sink.buffer-flush.max-rows": str(cfg.jdbc_flush_rows),
            "sink.buffer-flush.interval": f"{cfg.jdbc_flush_interval_ms} ms",
            "sink.max-retries": "5",
        }
        with_clause = ",\n  ".join(f"'{k}' = '{_escape(v)}'" for k, v in options.items())
        self.t_env.execute_sql(
            f"CREATE TEMPORARY TABLE {name} (\n  {cols},\n  PRIMARY KEY (`{key}`) NOT ENFORCED\n)"
            f" WITH (\n  {with_clause}\n)"
        )

    def _insert(
        self,
        stream: DataStream,
        columns: tuple[tuple[str, str], ...],
        key: str,
        sink: str,
        mode: Any,
    ) -> None:
        builder = Schema.new_builder()
        for n, k in columns:
            builder = builder.column(n, _sql_type(k, True) + (" NOT NULL" if n == key else ""))
        # rescale(): the sink runs in a task of its own (with equal parallelism each profile
        # subtask feeds one sink subtask, so a user's rows keep their order). A JDBC flush then
        # blocks that task, not the Python operator, which goes on with the next events while
        # PostgreSQL works; the sink still flushes on every checkpoint before it completes.
        table = self.t_env.from_changelog_stream(
            stream.rescale(), builder.primary_key(key).build(), mode
        )
        # CAST(BYTES AS STRING) decodes UTF-8 in the sink task.
        projection = [
            col(n).cast(DataTypes.STRING()).alias(n) if k == "json" else col(n) for n, k in columns
        ]
        self.statements.add_insert(sink, table.select(*projection))

    # Changelog mode "all" (rows arrive as INSERT / UPDATE_AFTER): the planner then needs no
    # ChangelogNormalize, which would keep a second copy of every profile in keyed state.
    def profiles(self, stream: DataStream) -> None:
        self._insert(stream, PROFILE_COLUMNS, "user_id", "profiles_sink", ChangelogMode.all())

    def dead_letters(self, stream: DataStream) -> None:
        self._insert(
            stream, DEAD_LETTER_COLUMNS, "dead_letter_id", "dead_letters_sink", ChangelogMode.all()
        )

    def attach(self) -> None:
        """Add the sink pipelines to the DataStream job (so `env.execute` runs everything)."""
        self.statements.attach_as_datastream()
