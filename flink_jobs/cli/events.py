"""Events in Kafka: `profilestream produce` publishes them, `profilestream erase` asks the job to
forget a user.

`profilestream erase USER_ID`: the right to erasure, end to end.

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

import argparse
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from flink_jobs.cli.parser import Subparsers, add_kafka, add_pg, synthetic_spec
from flink_jobs.config import DEFAULT_GROUP_ID, Environment, format_offsets, require
from flink_jobs.io.db import Erased
from flink_jobs.io.db import erase_user as erase_rows
from flink_jobs.io.producer import EventPublisher, client_config, ensure_topic, produce_dataset
from udfs.errors import ConfigError
from udfs.events import ERASE, InvalidEvent, make_message, validate_message


def register(sub: Subparsers, env: Environment) -> None:
    produce = sub.add_parser("produce", help="publish UserEvents to Kafka from a CSV or synthetic")
    add_kafka(produce, env)
    produce.add_argument(
        "--format",
        dest="fmt",
        choices=["synthetic", "taobao", "rees46", "proto"],
        default="synthetic",
    )
    produce.add_argument(
        "--file", type=Path, help="CSV file (taobao/rees46) or file of encoded messages (proto)"
    )
    produce.add_argument(
        "--save-proto", type=Path, help="also write what was sent to this file (format proto)"
    )
    produce.add_argument("--events", type=int, default=10_000, help="synthetic events")
    produce.add_argument("--users", type=int, default=1_000, help="synthetic users")
    produce.add_argument("--seed", type=int, default=42)
    produce.add_argument(
        "--partitions", type=int, default=2, help="partitions when the topic is created (2)"
    )
    produce.set_defaults(handler=cmd_produce)

    erase = sub.add_parser(
        "erase", help="forget a user: their Flink state and every PostgreSQL row about them"
    )
    erase.add_argument("user_id")
    add_kafka(erase, env)
    add_pg(erase, env)
    erase.add_argument("--group-id", default=DEFAULT_GROUP_ID, help="the job's consumer group")
    erase.add_argument(
        "--event-time-ms",
        type=int,
        help="event time of the request (default: now; set it when replaying historic data)",
    )
    erase.add_argument(
        "--wait-s",
        type=float,
        default=120,
        help="wait this long for the job to checkpoint past the request, then purge again "
        "(0: do not wait)",
    )
    erase.set_defaults(handler=cmd_erase)


def cmd_produce(args: argparse.Namespace) -> int:
    bootstrap = require(args.bootstrap, "KAFKA_BOOTSTRAP", "--bootstrap")
    if args.fmt != "synthetic" and not args.file:
        raise ConfigError(f"--format {args.fmt} needs --file PATH")
    generate = args.fmt == "synthetic"
    spec = synthetic_spec(args.events if generate else 1, args.users if generate else 1, args.seed)
    partitions = ensure_topic(bootstrap, args.topic, args.partitions)
    result = produce_dataset(
        bootstrap, args.topic, args.fmt, args.file, spec, save_to=args.save_proto
    )
    report = result.report
    bad_rows = sorted(result.bad_rows)
    for line, msg in bad_rows[:20]:
        print(f"  skipped line {line}: {msg}", file=sys.stderr)
    if len(bad_rows) > 20:
        print(f"  ... and {len(bad_rows) - 20} more skipped lines", file=sys.stderr)
    for error in report.errors[:5]:
        print(f"  not delivered / refused: {error}", file=sys.stderr)
    why = Counter(msg.split(":", 1)[0] for _, msg in bad_rows)
    print(
        f"delivered {report.delivered} events to {args.topic}"
        f" ({report.failed} failed, {report.rejected} invalid refused, {len(bad_rows)} "
        "rows skipped"
        + (": " + ", ".join(f"{n} {w}" for w, n in why.most_common(6)) if why else "")
        + (
            f"; {report.refused} refused by Kafka: "
            + ", ".join(f"{n} {r}" for r, n in sorted(report.refused_reasons.items()))
            if report.refused
            else ""
        )
        + ")"
    )
    offsets = report.stopping_offsets(partitions)
    print("end offsets: " + ", ".join(f"partition {p}: {o}" for p, o in offsets.items()))
    print(
        "to process exactly these: profilestream run --stopping-offsets " + format_offsets(offsets)
    )
    return 0 if report.failed == 0 else 1


def cmd_erase(args: argparse.Namespace) -> int:
    return erase_user(
        args.user_id,
        bootstrap=require(args.bootstrap, "KAFKA_BOOTSTRAP", "--bootstrap"),
        topic=args.topic,
        pg_dsn=require(args.pg_dsn, "PG_DSN", "--pg-dsn"),
        group_id=args.group_id,
        event_time_ms=args.event_time_ms,
        wait_s=args.wait_s,
    )


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
        client_config(bootstrap, **{"group.id": group_id, "enable.auto.commit": False})
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
