"""Job wiring. `build_pipeline(env, source, sinks, config)` takes its source and sinks as arguments
so tests can inject their own; `create_environment`, `kafka_source` and `JdbcSinks` build the
production pieces.

    Kafka bytes (watermarks per partition from record timestamps = event time)
      -> DecodeAndValidate --(contract violations)--------------> sinks.dead_letters
      -> key_by(user_id) -> UpdateProfile --(late events)-------> sinks.dead_letters
                            (RocksDB ValueState, event-time timers, LightGBM) -> sinks.profiles
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Protocol

from pyflink.common import ByteArraySchema, Configuration, Duration, WatermarkStrategy
from pyflink.common.typeinfo import Types
from pyflink.datastream import DataStream, StreamExecutionEnvironment
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetsInitializer,
    KafkaSource,
)
from pyflink.java_gateway import get_gateway
from pyflink.table import ChangelogMode, Schema, StreamTableEnvironment

from flink_jobs.config import JobConfig
from flink_jobs.functions import (
    DEAD_LETTERS,
    LATE_EVENTS,
    PROFILE_ROW_TYPE,
    DecodeAndValidate,
    UpdateProfile,
    user_key,
)
from flink_jobs.runtime import Java, connector_jars, prepare_process_env
from udfs.rows import DEAD_LETTER_COLUMNS, PROFILE_COLUMNS

log = logging.getLogger(__name__)

# Stable operator uids: savepoints map state to these, so they never change.
UID_SOURCE = "kafka-user-events"
UID_DECODE = "decode-validate"
UID_PROFILE = "profile-update"


class Sinks(Protocol):
    def profiles(self, stream: DataStream) -> None: ...
    def dead_letters(self, stream: DataStream) -> None: ...


def build_pipeline(
    env: StreamExecutionEnvironment, source: DataStream, sinks: Sinks, config: JobConfig
) -> None:
    """Wire decode -> key_by(user) -> profile update -> sinks onto `source`, a stream of raw
    `UserEvent` bytes carrying event-time timestamps and watermarks (see `kafka_source`)."""
    decoded = (
        source.process(DecodeAndValidate(config.topic), output_type=Types.PICKLED_BYTE_ARRAY())
        .name("decode and validate")
        .uid(UID_DECODE)
    )
    profiles = (
        decoded.key_by(user_key, key_type=Types.STRING())
        .process(
            UpdateProfile(
                config.model_dir,
                config.profile,
                config.topic,
                config.max_out_of_orderness_ms,
                config.pseudonym_key_file,
            ),
            output_type=PROFILE_ROW_TYPE,
        )
        .name("update profile and score")
        .uid(UID_PROFILE)
    )
    sinks.profiles(profiles)
    sinks.dead_letters(
        decoded.get_side_output(DEAD_LETTERS).union(profiles.get_side_output(LATE_EVENTS))
    )


def event_time_watermarks(config: JobConfig) -> WatermarkStrategy:
    """Bounded out-of-orderness on the record timestamps, tracked per Kafka partition (the
    contract makes the record timestamp the event time); idle partitions do not hold event time
    back."""
    return WatermarkStrategy.for_bounded_out_of_orderness(
        Duration.of_millis(config.max_out_of_orderness_ms)
    ).with_idleness(Duration.of_millis(config.idleness_ms))


def create_environment(config: JobConfig, java: Java) -> StreamExecutionEnvironment:
    """A StreamExecutionEnvironment in thread mode with RocksDB, incremental checkpoints and the
    connector jars. Local (MiniCluster) unless run through `flink run`."""
    prepare_process_env(java)
    config.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    tmp = config.state_dir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    conf = Configuration()
    settings = {
        "python.execution-mode": "thread",
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
        "state.backend.type": "rocksdb",
        "state.backend.rocksdb.localdir": str(tmp / "rocksdb"),
        # RocksDB's own LOG files (by default in Flink's log dir: site-packages/pyflink/log).
        "state.backend.rocksdb.log.dir": str(tmp / "rocksdb-logs"),
        "execution.checkpointing.interval": f"{config.checkpoint_interval_ms} ms",
        "execution.checkpointing.dir": config.checkpoint_dir.resolve().as_uri(),
        "execution.checkpointing.incremental": "true",
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.num-retained": "3",
        "restart-strategy.type": "fixed-delay",
        "restart-strategy.fixed-delay.attempts": str(config.restart_attempts),
        "restart-strategy.fixed-delay.delay": "2 s",
        "io.tmp.dirs": str(tmp),
        "parallelism.default": str(config.parallelism),
        "pipeline.jars": ";".join(p.resolve().as_uri() for p in connector_jars()),
        "pipeline.name": config.job_name,
        # Table API operators (the JDBC sinks) get deterministic uids too.
        "table.exec.uid.generation": "ALWAYS",
    }
    if config.restore_from:
        settings["execution.state-recovery.path"] = config.restore_from
    if config.rest_port is not None:
        settings.update(
            {
                "rest.port": str(config.rest_port),
                "rest.address": "127.0.0.1",
                "rest.bind-address": "127.0.0.1",
            }
        )
    for key, value in settings.items():
        conf.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(config.parallelism)
    return env


def cluster_environment(config: JobConfig) -> StreamExecutionEnvironment:
    """The environment under `flink run`: the cluster's configuration (state backend, checkpoint
    directory, restart strategy, Python executable) applies; the job adds its own settings."""
    conf = Configuration()
    for key, value in {
        "execution.checkpointing.interval": f"{config.checkpoint_interval_ms} ms",
        "execution.checkpointing.incremental": "true",
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "python.execution-mode": "thread",
        "pipeline.name": config.job_name,
        "table.exec.uid.generation": "ALWAYS",
        # Shipped with the job (flink run's -j takes a single jar).
        "pipeline.jars": ";".join(p.resolve().as_uri() for p in connector_jars()),
    }.items():
        conf.set_string(key, value)
    return StreamExecutionEnvironment.get_execution_environment(conf)


def kafka_source(env: StreamExecutionEnvironment, config: JobConfig) -> DataStream:
    """Raw message bytes from the events topic, from the earliest offset (or the restored
    position), bounded by explicit stopping offsets when the config has them."""
    builder = (
        KafkaSource.builder()
        .set_bootstrap_servers(config.kafka_bootstrap)
        .set_topics(config.topic)
        .set_group_id(config.group_id)
        .set_starting_offsets(KafkaOffsetsInitializer.earliest())
        .set_value_only_deserializer(ByteArraySchema())
        .set_property("client.id.prefix", config.job_name)
    )
    if config.stopping_offsets is not None:
        builder = builder.set_bounded(_explicit_offsets(config.topic, config.stopping_offsets))
    return env.from_source(
        builder.build(),
        event_time_watermarks(config),
        "kafka: " + config.topic,
        type_info=Types.PRIMITIVE_ARRAY(Types.BYTE()),
    ).uid(UID_SOURCE)


def _explicit_offsets(topic: str, offsets: dict[int, int]) -> KafkaOffsetsInitializer:
    # PyFlink's KafkaOffsetsInitializer.offsets() looks for the shaded TopicPartition class, which
    # the plain connector jar does not have; build the Java map ourselves.
    # py4j sends small ints as Integer; PyFlink's HashMapWrapper converts values to Long.
    from pyflink.util.java_utils import get_java_class

    jvm = get_gateway().jvm
    j_map = jvm.org.apache.flink.python.util.HashMapWrapper(None, get_java_class(jvm.Long))
    for partition, offset in offsets.items():
        j_map.put(jvm.org.apache.kafka.common.TopicPartition(topic, partition), offset)
    initializer = jvm.org.apache.flink.connector.kafka.source.enumerator.initializer
    return KafkaOffsetsInitializer(initializer.OffsetsInitializer.offsets(j_map.asMap()))


def _sql_type(kind: str) -> str:
    return {
        "string": "STRING",
        "bigint": "BIGINT",
        "int": "INT",
        "double": "DOUBLE",
        "boolean": "BOOLEAN",
        "json": "STRING",
        "bytes": "BYTES",
    }[kind]


def _escape(value: str) -> str:
    return value.replace("'", "''")


class JdbcSinks:
    """PostgreSQL through Flink's JDBC connector (Table API upsert on the primary key).

    The JDBC sink buffers rows, flushes on a row count, on an interval and on every checkpoint,
    and retries; a restore replays from the last checkpoint and the database's version guard
    (see schemas/sql) drops rows older than what it already has.
    """

    def __init__(self, env: StreamExecutionEnvironment, config: JobConfig) -> None:
        self.config = config
        self.t_env = StreamTableEnvironment.create(env)
        self.t_env.get_config().set("table.exec.uid.generation", "ALWAYS")
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
            builder = builder.column(n, _sql_type(k) + (" NOT NULL" if n == key else ""))
        table = self.t_env.from_changelog_stream(stream, builder.primary_key(key).build(), mode)
        self.statements.add_insert(sink, table)

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
