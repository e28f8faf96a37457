"""The producer API for teams that publish `UserEvent`s, built on confluent-kafka (librdkafka).

    with EventPublisher("broker:9092", "user-events") as pub:
        pub.publish(event)              # validated against the contract, keyed by user_id
    print(pub.report.end_offsets)      # {partition: next offset} from delivery reports

Messages are keyed by user_id with the Java client's murmur2 partitioner, so one user's events
stay in order in one partition, and carry event_time as the Kafka record timestamp.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from schemas.profilestream.events.v1 import user_event_pb2 as pb
from udfs.errors import KafkaUnavailable, MessageRefused
from udfs.events import validate_message
from udfs.sources import SyntheticSpec

log = logging.getLogger(__name__)
_QUIET = logging.getLogger("profilestream.librdkafka")
_QUIET.setLevel(logging.CRITICAL)  # librdkafka's connection chatter; errors surface as exceptions


def client_config(bootstrap: str, **extra: Any) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "logger": _QUIET, **extra}


def check_broker(bootstrap: str, timeout_s: float = 8.0) -> dict[str, int]:
    """Fail fast when the broker is unreachable; return {topic: partition count}."""
    admin = AdminClient(client_config(bootstrap, **{"socket.connection.setup.timeout.ms": 5000}))
    try:
        meta = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise KafkaUnavailable(
            f"cannot reach Kafka at KAFKA_BOOTSTRAP={bootstrap} within {timeout_s:.0f} s "
            f"({exc.args[0].str() if exc.args else exc}): start the broker or fix --bootstrap / "
            "KAFKA_BOOTSTRAP (leave it unset for the embedded broker)"
        ) from None
    return {name: len(t.partitions) for name, t in meta.topics.items()}


def ensure_topic(bootstrap: str, topic: str, partitions: int = 2) -> int:
    """Create `topic` if needed; return its partition count."""
    existing = check_broker(bootstrap)
    if topic in existing:
        return existing[topic]
    admin = AdminClient(client_config(bootstrap))
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1)]
    )
    try:
        futures[topic].result(timeout=15)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise KafkaUnavailable(f"cannot create topic {topic!r}: {exc}") from None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        found = check_broker(bootstrap).get(topic)
        if found:
            return found
        time.sleep(0.1)
    raise KafkaUnavailable(f"topic {topic!r} did not appear after creation")


# Delivery errors that mean the broker will never take the message (not a timeout, not a retry).
BROKER_REFUSALS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_RECORD,
        KafkaError.RECORD_LIST_TOO_LARGE,
    }
)


MAX_ERRORS = 20


@dataclass
class PublishReport:
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    rejected: int = 0  # invalid events refused before sending
    refused: int = 0  # messages the client or the broker would not take (e.g. too large)
    refused_reasons: dict[str, int] = field(default_factory=dict)  # Kafka error name -> count
    end_offsets: dict[int, int] = field(default_factory=dict)  # partition -> next offset
    errors: list[str] = field(default_factory=list)

    def note_error(self, detail: str) -> None:
        """Keep the first MAX_ERRORS error messages (the CLI prints some)."""
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(detail)

    def stopping_offsets(self, partitions: int) -> dict[int, int]:
        """Offsets to stop a bounded consumer at: every partition, 0 where nothing was written."""
        return {p: self.end_offsets.get(p, 0) for p in range(partitions)}


# How long the producer gathers a partition's messages into one batch: a few ms of latency for far
# fewer requests (and, on the local broker, far fewer stored batches: docs/performance.md).
DEFAULT_LINGER_MS = 20


class EventPublisher:
    def __init__(
        self, bootstrap: str, topic: str, *, validate: bool = True, **producer_config: Any
    ) -> None:
        self.topic = topic
        self.validate = validate
        self.report = PublishReport()
        config = client_config(
            bootstrap,
            **{
                "partitioner": "murmur2_random",
                "linger.ms": DEFAULT_LINGER_MS,
                "batch.num.messages": 10_000,
                "queue.buffering.max.messages": 200_000,
                "enable.idempotence": True,  # retries neither reorder nor duplicate
                "acks": "all",
                "message.timeout.ms": 60_000,
            },
        )
        config.update(producer_config)
        self.max_message_bytes = int(config.get("message.max.bytes", 1_000_000))
        self._producer = Producer(config)

    def refuse(self, reason: str, detail: str) -> None:
        """Count a message the client or the broker would not take."""
        self.report.refused += 1
        self.report.refused_reasons[reason] = self.report.refused_reasons.get(reason, 0) + 1
        self.report.note_error(detail)

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None and err.code() in BROKER_REFUSALS:
            self.refuse(err.name(), str(err))
            return
        if err is not None:
            self.report.failed += 1
            self.report.note_error(str(err))
            return
        self.report.delivered += 1
        p, o = msg.partition(), msg.offset()
        if o + 1 > self.report.end_offsets.get(p, 0):
            self.report.end_offsets[p] = o + 1

    def publish(self, event: pb.UserEvent) -> None:
        """Validate (unless disabled) and send one event, keyed by its user_id."""
        if self.validate:
            validate_message(event, int(time.time() * 1000))
        timestamp = event.event_time.seconds * 1000 + event.event_time.nanos // 1_000_000
        self.publish_raw(event.user_id.encode("utf-8"), event.SerializeToString(), timestamp)

    def publish_raw(self, key: bytes | None, value: bytes, timestamp_ms: int = 0) -> None:
        """Send bytes as they are (for replays and tests); no validation."""
        kwargs: dict[str, Any] = {"on_delivery": self._on_delivery}
        if timestamp_ms > 0:
            kwargs["timestamp"] = timestamp_ms
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=key, **kwargs)
                break
            except BufferError:
                self._producer.poll(0.05)
            except KafkaException as exc:
                error = exc.args[0]
                if error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    raise MessageRefused(
                        f"a message of {len(value) + len(key or b'')} bytes (value and key) is "
                        f"over the producer's limit message.max.bytes={self.max_message_bytes}",
                        reason=error.name(),
                        setting="message.max.bytes",
                        fix="split or shrink the event; raise the limit only together with the "
                        "broker's and the topic's max.message.bytes",
                    ) from None
                raise MessageRefused(
                    f"the Kafka client refused a message: {error}", reason=error.name()
                ) from None
        self.report.sent += 1
        self._producer.poll(0)

    def flush(self, timeout_s: float = 60) -> PublishReport:
        remaining = self._producer.flush(timeout_s)
        if remaining:
            raise KafkaUnavailable(f"{remaining} messages still undelivered after {timeout_s} s")
        return self.report

    def __enter__(self) -> EventPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()


@dataclass
class ProduceResult:
    report: PublishReport
    bad_rows: list[tuple[int, str]]  # (line number, why) of source rows that were skipped
    seconds: float


def produce_dataset(
    bootstrap: str,
    topic: str,
    fmt: str,
    path: Path | None,
    spec: SyntheticSpec,
    *,
    desc: str = "producing",
    out: IO[str] | None = None,
    save_to: Path | None = None,
) -> ProduceResult:
    """Publish a CSV file, a file of encoded messages ("proto") or synthetic shoppers to `topic`
    with a progress bar. CSV rows that cannot be read and events that break the contract are
    counted and skipped; a "proto" file is replayed byte for byte, invalid messages included
    (the job dead-letters them). `save_to` writes what was sent as a "proto" file."""
    from tqdm import tqdm

    from udfs.events import InvalidEvent
    from udfs.sources import read_delimited, read_events, write_delimited

    bad_rows: list[tuple[int, str]] = []
    publisher = EventPublisher(bootstrap, topic)
    sent: list[bytes] = []
    start = time.monotonic()
    total = spec.events if fmt == "synthetic" else None
    if fmt == "proto":
        if path is None:
            raise ValueError("format 'proto' needs a file")
        last_ts = 0
        for raw in tqdm(read_delimited(path), unit="msg", desc=desc, file=out, mininterval=0.5):
            key, timestamp = _key_and_time(raw)
            # Watermarks follow record timestamps: an invalid message keeps the last valid time
            # rather than the broker's wall clock, which would drag event time forward.
            last_ts = timestamp or last_ts
            try:
                publisher.publish_raw(key, raw, last_ts)
            except MessageRefused as exc:
                publisher.refuse(exc.reason, str(exc))
                continue
            sent.append(raw)
    else:
        source = read_events(
            fmt, path, spec=spec, on_error=lambda n, why: bad_rows.append((n, why))
        )
        for event in tqdm(source, total=total, unit="ev", desc=desc, file=out, mininterval=0.5):
            try:
                publisher.publish(event)
            except MessageRefused as exc:
                publisher.refuse(exc.reason, str(exc))
                continue
            except InvalidEvent as exc:
                publisher.report.rejected += 1
                line = _line_of(event.event_id)
                if line is not None:  # a CSV row that converted but breaks the contract
                    bad_rows.append((line, str(exc)))
                else:
                    publisher.report.note_error(f"{event.event_id}: {exc}")
                continue
            if save_to is not None:
                sent.append(event.SerializeToString())
    report = publisher.flush()
    if save_to is not None:
        write_delimited(save_to, sent)
    return ProduceResult(report, bad_rows, time.monotonic() - start)


def _line_of(event_id: str) -> int | None:
    """CSV readers name events `<format>-<line number>`."""
    prefix, _, number = event_id.rpartition("-")
    return int(number) if prefix in ("taobao", "rees46") and number.isdigit() else None


def _key_and_time(raw: bytes) -> tuple[bytes | None, int]:
    """Kafka key and record timestamp of a message replayed as is: (user_id, event_time) when it
    is valid; a parseable user_id and no timestamp when it is not."""
    from udfs.events import InvalidEvent, decode_event

    try:
        event = decode_event(raw, int(time.time() * 1000))
    except InvalidEvent:
        msg = pb.UserEvent()
        try:
            msg.ParseFromString(raw)
        except Exception:
            return None, 0
        return (msg.user_id.encode("utf-8", "replace") or None), 0
    return event.user_id.encode("utf-8"), event.event_time_ms


def read_topic(
    bootstrap: str, topic: str, end_offsets: dict[int, int], timeout_s: float = 60
) -> Iterator[tuple[int, int, bytes]]:
    """(partition, offset, value) for every message before `end_offsets`, partition by
    partition in offset order. Uses assign() (no consumer group), which is instant on Tansu."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        client_config(
            bootstrap,
            **{
                "group.id": "profilestream-reader",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
            },
        )
    )
    try:
        for partition, end in sorted(end_offsets.items()):
            if end <= 0:
                continue
            consumer.assign([TopicPartition(topic, partition, 0)])
            next_offset = 0
            deadline = time.monotonic() + timeout_s
            while next_offset < end:
                if time.monotonic() > deadline:
                    raise KafkaUnavailable(
                        f"reading {topic}[{partition}] stalled at offset {next_offset} of {end}"
                    )
                msg = consumer.poll(1.0)
                if msg is None:
                    continue
                if msg.error():
                    raise KafkaUnavailable(f"reading {topic}[{partition}]: {msg.error()}")
                offset = msg.offset()
                if offset is None or offset >= end:
                    break
                next_offset = offset + 1
                yield partition, offset, msg.value() or b""
    finally:
        consumer.close()
