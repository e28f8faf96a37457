"""`profilestream erase USER_ID`: the right to erasure, end to end.

1. Publish an ERASE event for the user to the events topic (keyed like their other events, so
   the job sees it after everything they did before): the job deletes their Flink state and
   their profile row, and a database trigger deletes the row's history and dead letters.
2. Delete every PostgreSQL row about the user now (profile, history, dead letters naming them),
   so the erasure holds even while the job is stopped or behind.
3. Wait until the job has checkpointed past the request (its committed Kafka offset passes the
   ERASE event: everything the job wrote before it is flushed by then), and delete again, which
   catches rows the job was still writing in step 2.

Both deletions are bounded by the request's event time: a profile the user started after it
(and its history) is kept, so running this again later is always safe.

A later event for the user starts a new profile. A restore from a checkpoint older than the
request replays it, so the state is erased again, and an erased dead letter is never re-written
(migration 0004's `dead_letter_seen`).
"""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, TopicPartition

from flink_jobs.config import ConfigError
from flink_jobs.io.db import Erased
from flink_jobs.io.db import erase_user as erase_rows
from flink_jobs.io.producer import EventPublisher, _client_config
from udfs.events import ERASE, InvalidEvent, make_message, validate_message


def _describe(erased: Erased) -> str:
    return (
        f"{erased.profiles} profile, {erased.history} history rows, "
        f"{erased.dead_letters} dead letters"
    )


def erase_user(
    user_id: str,
    *,
    bootstrap: str,
    topic: str,
    pg_dsn: str,
    group_id: str = "profilestream",
    event_time_ms: int | None = None,
    wait_s: float = 120,
) -> int:
    now_ms = int(time.time() * 1000)
    erase_ms = event_time_ms if event_time_ms is not None else now_ms
    msg = make_message(
        event_id=f"erase-{uuid.uuid4()}",
        user_id=user_id,
        event_type=ERASE,
        event_time_ms=erase_ms,
    )
    try:
        validate_message(msg, now_ms)
    except InvalidEvent as exc:
        raise ConfigError(f"USER_ID is not a valid user_id ({exc})") from None
    with EventPublisher(bootstrap, topic) as publisher:
        publisher.publish(msg)
    report = publisher.report
    if report.failed or not report.end_offsets:
        raise ConfigError(f"the ERASE event was not delivered to {topic}: {report.errors[:1]}")
    ((partition, end),) = report.end_offsets.items()
    print(f"erase request published to {topic}[{partition}] at offset {end - 1}", flush=True)
    print(f"deleted from PostgreSQL: {_describe(erase_rows(pg_dsn, user_id, erase_ms))}")
    if wait_s <= 0:
        return 0
    if not _wait_for_commit(bootstrap, topic, partition, end, group_id, wait_s):
        print(
            f"the job (consumer group {group_id!r}) has not checkpointed past the request within "
            f"{wait_s:.0f} s: its state is erased when it gets there; run this command again "
            "afterwards to delete what it writes until then"
        )
        return 3
    again = _describe(erase_rows(pg_dsn, user_id, erase_ms))
    print(f"job checkpointed past the request; deleted again: {again}")
    return 0


def _wait_for_commit(
    bootstrap: str, topic: str, partition: int, end: int, group_id: str, wait_s: float
) -> bool:
    consumer = Consumer(
        _client_config(bootstrap, **{"group.id": group_id, "enable.auto.commit": False})
    )
    try:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            (committed,) = consumer.committed([TopicPartition(topic, partition)], timeout=10)
            if committed.offset >= end:
                return True
            time.sleep(1.0)
        return False
    finally:
        consumer.close()
