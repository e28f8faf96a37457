"""Errors of the training tools (kept light: the CLI imports this on every command)."""


class TrainingError(RuntimeError):
    """The event log cannot train or evaluate a model; the message says why."""
