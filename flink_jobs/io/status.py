"""What Kafka and PostgreSQL say about the running job, for `profilestream status`
(`udfs.health.KafkaLag` and `udfs.health.Database`).

Kafka lag, per partition: the partition's end offset minus the offset the job's consumer group
committed. The Flink Kafka source commits when a checkpoint completes, so this is the lag of what
the job has made durable (records read since the last checkpoint still count), and it keeps
growing while the job is down, which is when it matters.

The end offset comes from a Fetch response's high watermark, not from ListOffsets (what
`Consumer.get_watermark_offsets(cached=False)` and `AdminClient.list_offsets` ask): the local
broker, Tansu, answers ListOffsets with a figure that counts batches, not records (201 records
in 3 batches were reported as ending at 135), while its Fetch responses carry the right high
watermark (201), as Kafka's do. So a consumer is assigned each partition at the committed offset
and polls until every partition has answered once (a record, or the end of the partition); the
records it receives are dropped, and it commits nothing.

PostgreSQL (its own clock, `now()`):
- rows updated in the last minute: `user_profiles.updated_at`, set by the database on every
  insert and accepted update;
- freshness: for those rows that an event wrote (`as_of_ms = last_event_ms`; rows from an
  inactivity timer are left out), `updated_at - last_event_ms`, i.e. from the newest event time
  in the row to the row being written, p50/p99/max. Producers stamp event time at send time (the
  event contract), so this is the send -> row latency `make bench` measures as freshness (the
  bench polls for visibility; this reads the write time, a commit earlier). Replayed history has
  old event times, and the figure then says how old the data is;
- dead letters in the last hour by reason: `dead_letter_events.seen_at_ms` (when the job saw
  the message);
- the model serving: `serving_model`.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg2
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from flink_jobs.config import redact_dsn
from flink_jobs.io.db import open_connection, require_schema
from flink_jobs.io.producer import check_broker, client_config
from udfs.errors import ConfigError, DatabaseError, KafkaUnavailable
from udfs.health import Database, Freshness, KafkaLag, PartitionLag

TIMEOUT_S = 5.0


def kafka_lag(bootstrap: str, topic: str, group: str, timeout_s: float = TIMEOUT_S) -> KafkaLag:
    """Lag of consumer group `group` on every partition of `topic`; KafkaUnavailable when the
    broker does not answer in time or the topic does not exist."""
    try:
        partitions = check_broker(bootstrap, timeout_s).get(topic)
    except KafkaUnavailable:
        raise KafkaUnavailable(f"{bootstrap} does not answer (within {timeout_s:.0f} s)") from None
    if not partitions:
        raise KafkaUnavailable(
            f"topic {topic!r} does not exist on {bootstrap} (fix --topic if it is not the "
            "job's topic)"
        )
    try:
        return _lag(bootstrap, topic, group, partitions, timeout_s)
    except KafkaException as exc:
        raise KafkaUnavailable(f"{bootstrap}: {exc.args[0] if exc.args else exc}") from None


def _lag(bootstrap: str, topic: str, group: str, partitions: int, timeout_s: float) -> KafkaLag:
    consumer = Consumer(
        client_config(
            bootstrap,
            **{
                "group.id": group,  # to read its committed offsets; assign() never joins it
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "latest",  # a committed offset the log no longer has
                "fetch.wait.max.ms": 10,
                "max.partition.fetch.bytes": 1,  # one batch per partition is enough
                "socket.connection.setup.timeout.ms": int(timeout_s * 1000),
            },
        )
    )
    try:
        wanted = [TopicPartition(topic, p) for p in range(partitions)]
        committed = {
            tp.partition: tp.offset if tp.offset >= 0 else None
            for tp in consumer.committed(wanted, timeout=timeout_s)
        }
        consumer.assign(
            [
                TopicPartition(topic, p, o if o is not None else OFFSET_BEGINNING)
                for p, o in committed.items()
            ]
        )
        first = _first_offsets(consumer, topic, set(committed), timeout_s)
        rows = []
        for p in sorted(committed):
            _, end = consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
            if end < 0:
                raise KafkaUnavailable(f"{topic}[{p}] did not answer a fetch in {timeout_s:.0f} s")
            offset = committed[p]
            start = offset if offset is not None else first.get(p, end)
            rows.append(PartitionLag(p, offset, end, max(0, end - start)))
        return KafkaLag(topic, group, tuple(rows))
    finally:
        consumer.close()


def _first_offsets(
    consumer: Consumer, topic: str, partitions: set[int], timeout_s: float
) -> dict[int, int]:
    """Poll until every partition has answered a fetch (a record, or its end); return the offset
    of the first record of each partition that had one (where an uncommitted group starts)."""
    pending = set(partitions)
    first: dict[int, int] = {}
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        error = msg.error()
        if error is not None and error.code() != KafkaError._PARTITION_EOF:
            raise KafkaUnavailable(f"fetching {topic}: {error}")
        partition = msg.partition()
        if partition is None or msg.topic() != topic:
            continue
        if error is None and partition in pending:
            first[partition] = msg.offset() or 0
        pending.discard(partition)
    if pending:
        raise KafkaUnavailable(f"{topic} {sorted(pending)} did not answer a fetch in {timeout_s} s")
    return first


def database_figures(dsn: str, timeout_s: float = TIMEOUT_S) -> Database:
    """Rows, freshness, dead letters and the model, as PostgreSQL sees them now. DatabaseError
    when it does not answer; a ConfigError (a mistake, not a health problem) when the database
    is not one the job writes (not migrated, or newer than this code)."""
    try:
        conn = open_connection(dsn, timeout_s=max(1, round(timeout_s)))
    except psycopg2.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DatabaseError(f"{redact_dsn(dsn)} does not answer: {first}") from None
    try:
        try:
            require_schema(dsn)
        except DatabaseError as exc:  # reachable, but not a database the job writes
            raise ConfigError(str(exc), setting="PG_DSN") from None
        with conn.cursor() as cur:
            cur.execute("SET statement_timeout = %s", (round(timeout_s * 1000),))
            return _database_figures(cur)
    except psycopg2.errors.QueryCanceled:
        raise DatabaseError(f"the status queries took over {timeout_s:.0f} s") from None
    except psycopg2.Error as exc:  # e.g. the server went away mid-query
        raise DatabaseError(f"{type(exc).__name__}: {str(exc).strip()[:200]}") from None
    finally:
        conn.close()


def _database_figures(cur: Any) -> Database:
    cur.execute(
        """
        SELECT count(*),
               count(*) FILTER (WHERE from_event),
               percentile_disc(0.5) WITHIN GROUP (ORDER BY ms) FILTER (WHERE from_event),
               percentile_disc(0.99) WITHIN GROUP (ORDER BY ms) FILTER (WHERE from_event),
               max(ms) FILTER (WHERE from_event)
          FROM (SELECT as_of_ms = last_event_ms AS from_event,
                       (extract(epoch FROM updated_at) * 1000)::bigint - last_event_ms AS ms
                  FROM user_profiles
                 WHERE updated_at > now() - interval '1 minute') AS recent
        """
    )
    rows, event_rows, p50, p99, worst = cur.fetchone()
    cur.execute(
        """
        SELECT reason, count(*) FROM dead_letter_events
         WHERE seen_at_ms > (extract(epoch FROM now()) * 1000)::bigint - 3600000
         GROUP BY reason ORDER BY count(*) DESC, reason
        """
    )
    dead = {str(reason): int(n) for reason, n in cur.fetchall()}
    return Database(
        rows_last_minute=int(rows),
        freshness=Freshness(int(event_rows), int(p50), int(p99), int(worst))
        if event_rows
        else None,
        dead_letters_last_hour=dead,
        model_version=serving_model(cur),
    )


def serving_model(cur: Any) -> str | None:
    """The model version serving: the newest the model registry (flink_jobs.io.registry) says
    serves, else (no job has polled it yet) that of the newest row written."""
    cur.execute(
        "SELECT version FROM model_registry WHERE state = 'serving' ORDER BY seq DESC LIMIT 1"
    )
    row = cur.fetchone()
    if row is None:
        cur.execute("SELECT model_version FROM user_profiles ORDER BY updated_at DESC LIMIT 1")
        row = cur.fetchone()
    return str(row[0]) if row else None
