"""One error base for every failure an operator can fix.

`ProfileStreamError` is what the command line catches: it prints `str(exc)`, one line that names
what is wrong, the setting to change (`setting`) and how (`fix`). Its subclasses say which part of
the system refused; callers catch the base unless they handle one kind.

Bad *input* is not an error here: a message that breaks the event contract is an
`udfs.events.InvalidEvent` and becomes a dead letter, never a stopped job.
"""

from __future__ import annotations


class ProfileStreamError(Exception):
    """A failure an operator can fix. str() is one line: the message, then the fix if given."""

    def __init__(self, message: str, *, setting: str | None = None, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.setting = setting  # the setting (flag or environment variable) to change, if one
        self.fix = fix  # what to do, when the message does not say it already

    def __str__(self) -> str:
        return f"{self.message}: {self.fix}" if self.fix else self.message


class ConfigError(ProfileStreamError, ValueError):
    """An invalid or missing setting."""


class SetupError(ProfileStreamError):
    """Something the machine lacks (Java, the connector jars)."""


class ServiceError(ProfileStreamError):
    """An embedded service (PostgreSQL, the local broker) would not start or stop."""


class DatabaseError(ProfileStreamError):
    """PostgreSQL unreachable, or its schema not what this code needs."""


class KafkaUnavailable(ProfileStreamError):
    """The Kafka bootstrap servers do not answer, or the topic is missing."""


class MessageRefused(ProfileStreamError):
    """The Kafka client or broker refused one message (e.g. over the size limit); the message
    names the limit. Other messages can still be sent."""

    def __init__(self, message: str, *, reason: str, **kw: str | None) -> None:
        super().__init__(message, **kw)
        self.reason = reason  # the Kafka error name, e.g. MSG_SIZE_TOO_LARGE


class ClusterError(ProfileStreamError):
    """The Flink standalone cluster refused a start, a submission or a savepoint."""


class JobFailed(ProfileStreamError):
    """The Flink job failed; the message is its root cause, not a Java stack trace."""


class ModelError(ProfileStreamError):
    """A model directory that is missing, malformed or does not match the features."""


class TrainingError(ProfileStreamError):
    """Training or evaluation cannot go on with this data or these settings."""


class PseudonymKeyError(ProfileStreamError, ValueError):
    """The pseudonym key is missing, malformed, or not the one the database was written with."""
