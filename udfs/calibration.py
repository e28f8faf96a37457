"""Probability calibration applied to the model's raw purchase propensity, once per event.

Pure Python (no numpy, scikit-learn or pyflink): it runs inside the Flink-embedded interpreter.
The mapping is fitted by `models.evaluation.fit_calibration` and stored in the model metadata as
`Calibration.to_json()`:

    {"kind": "identity"}
    {"kind": "platt", "a": A, "b": B}        p = 1 / (1 + exp(-(A * logit(raw) + B)))
    {"kind": "isotonic", "x": [...], "y": [...]}

Platt clips `raw` to [1e-7, 1 - 1e-7] before the logit. Isotonic interpolates linearly between
the points (x[i], y[i]) and is constant beyond the first and last point; x is non-decreasing and
a repeated x must repeat its y. `from_json` rejects anything else with a one-line `ValueError`.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any, Final

KINDS: Final = ("identity", "platt", "isotonic")
RAW_EPS: Final = 1e-7
_FIELDS: Final[dict[str, frozenset[str]]] = {
    "identity": frozenset({"kind"}),
    "platt": frozenset({"kind", "a", "b"}),
    "isotonic": frozenset({"kind", "x", "y"}),
}


def _number(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"calibration: {field} must be a number, got {type(value).__name__}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"calibration: {field} must be finite, got {out!r}")
    return out


def _numbers(value: object, field: str) -> tuple[float, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"calibration: {field} must be a list of numbers")
    return tuple(_number(v, f"{field}[{i}]") for i, v in enumerate(value))


@dataclass(frozen=True)
class Calibration:
    kind: str  # "identity" | "platt" | "isotonic"
    a: float = 1.0  # Platt slope on logit(raw)
    b: float = 0.0  # Platt intercept
    x: tuple[float, ...] = ()  # isotonic: raw probabilities, non-decreasing
    y: tuple[float, ...] = ()  # isotonic: calibrated probabilities in [0, 1]

    def __post_init__(self) -> None:
        kind = self.kind
        if kind not in KINDS:
            raise ValueError(f"calibration: unknown kind {kind!r} (expected one of {KINDS})")
        if kind == "platt":
            _number(self.a, "a")
            _number(self.b, "b")
        elif (self.a, self.b) != (1.0, 0.0):
            raise ValueError(f"calibration: a/b are only for kind 'platt', not {kind!r}")
        if kind != "isotonic":
            if self.x or self.y:
                raise ValueError(f"calibration: x/y are only for kind 'isotonic', not {kind!r}")
            return
        x, y = self.x, self.y
        if len(x) != len(y):
            raise ValueError(f"calibration: x and y lengths differ ({len(x)} != {len(y)})")
        if not x:
            raise ValueError("calibration: isotonic needs at least one (x, y) point")
        for i in range(len(x)):
            _number(x[i], f"x[{i}]")
            if not 0.0 <= _number(y[i], f"y[{i}]") <= 1.0:
                raise ValueError(f"calibration: y[{i}] = {y[i]!r} is outside [0, 1]")
            if i and (x[i] < x[i - 1] or (x[i] == x[i - 1] and y[i] != y[i - 1])):
                raise ValueError(
                    f"calibration: x is not increasing at index {i} "
                    f"(x[{i - 1}] = {x[i - 1]!r}, x[{i}] = {x[i]!r})"
                )

    def apply(self, raw: float) -> float:
        """The calibrated probability of one raw model probability (NaN stays NaN)."""
        if math.isnan(raw):
            return raw
        kind = self.kind
        if kind == "platt":
            r = RAW_EPS if raw < RAW_EPS else (1.0 - RAW_EPS if raw > 1.0 - RAW_EPS else raw)
            z = self.a * math.log(r / (1.0 - r)) + self.b
            if z >= 0.0:
                return 1.0 / (1.0 + math.exp(-z))
            e = math.exp(z)
            return e / (1.0 + e)
        if kind == "isotonic":
            x = self.x
            if raw <= x[0]:
                return self.y[0]
            if raw >= x[-1]:
                return self.y[-1]
            i = bisect_right(x, raw)  # x[i - 1] <= raw < x[i]
            x0 = x[i - 1]
            y0 = self.y[i - 1]
            return y0 + (self.y[i] - y0) * (raw - x0) / (x[i] - x0)
        return raw

    def to_json(self) -> dict[str, Any]:
        if self.kind == "platt":
            return {"kind": "platt", "a": self.a, "b": self.b}
        if self.kind == "isotonic":
            return {"kind": "isotonic", "x": list(self.x), "y": list(self.y)}
        return {"kind": self.kind}

    @staticmethod
    def from_json(d: dict[str, Any] | None) -> Calibration:
        """None means identity (model directories written before calibration existed)."""
        if d is None:
            return IDENTITY
        if not isinstance(d, dict):
            raise ValueError(f"calibration: expected an object, got {type(d).__name__}")
        kind = d.get("kind")
        if not isinstance(kind, str) or kind not in _FIELDS:
            raise ValueError(f"calibration: unknown kind {kind!r} (expected one of {KINDS})")
        unexpected = sorted(str(k) for k in d if k not in _FIELDS[kind])
        if unexpected:
            raise ValueError(f"calibration: unexpected field {unexpected[0]!r} for kind {kind!r}")
        missing = sorted(_FIELDS[kind] - d.keys())
        if missing:
            raise ValueError(f"calibration: missing field {missing[0]!r} for kind {kind!r}")
        if kind == "platt":
            return Calibration("platt", a=_number(d["a"], "a"), b=_number(d["b"], "b"))
        if kind == "isotonic":
            return Calibration("isotonic", x=_numbers(d["x"], "x"), y=_numbers(d["y"], "y"))
        return IDENTITY


IDENTITY: Final = Calibration("identity")
