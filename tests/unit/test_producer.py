"""The producer API refuses a message over the client's size limit with a typed error naming the
limit, before anything is sent (librdkafka checks the size in produce(); no broker needed)."""

from __future__ import annotations

import pytest

from flink_jobs.io.producer import EventPublisher
from udfs.errors import MessageRefused, ProfileStreamError


def test_an_oversize_message_raises_a_typed_error_naming_the_limit() -> None:
    publisher = EventPublisher("127.0.0.1:1", "t", **{"message.max.bytes": 100_000})
    with pytest.raises(MessageRefused) as caught:
        publisher.publish_raw(b"user", b"x" * 150_000)
    error = caught.value
    assert isinstance(error, ProfileStreamError)
    assert error.reason == "MSG_SIZE_TOO_LARGE" and error.setting == "message.max.bytes"
    assert "150004 bytes" in str(error) and "message.max.bytes=100000" in str(error)
    assert publisher.report.sent == 0
    publisher.publish_raw(b"user", b"x" * 1_000)  # the publisher goes on
    assert publisher.report.sent == 1
