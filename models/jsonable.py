"""What the trainers write into their metadata: UTC timestamps and JSON-safe values."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import numpy as np


def iso_utc(ms: int) -> str:
    """An epoch-milliseconds time as ISO 8601 in UTC, to the second."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def clean(value: Any) -> Any:
    """JSON without NaN (null instead) and with plain Python numbers and booleans."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, float | np.floating):
        f = float(value)
        return None if math.isnan(f) else f
    if isinstance(value, np.integer | np.bool_):
        return value.item()
    return value
