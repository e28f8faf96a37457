"""Reading a Prometheus endpoint the way Prometheus does: the text exposition format (version
0.0.4, what Flink's reporter serves), parsed into samples. A small parser (the venv has no
prometheus_client): `# HELP`/`# TYPE` lines, `name{label="value",...} value [timestamp]`, and
label values with the format's escapes (backslash, double quote, newline)."""

from __future__ import annotations

import math
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?\s*$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse(text: str) -> tuple[list[Sample], dict[str, str]]:
    """The samples of an exposition, and each metric's declared type (`# TYPE name type`)."""
    samples: list[Sample] = []
    types: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) == 4 and parts[1] == "TYPE":
                types[parts[2]] = parts[3].strip()
            continue
        found = _SAMPLE.match(line)
        if found is None:
            raise ValueError(f"not a Prometheus sample line: {line!r}")
        name, body, raw = found.groups()
        labels = {}
        rest = body or ""
        while rest.strip():
            label = _LABEL.match(rest)
            if label is None:
                raise ValueError(f"bad labels in {line!r}")
            labels[label[1]] = re.sub(r"\\.", lambda m: _ESCAPES.get(m[0], m[0]), label[2])
            rest = rest[label.end() :]
        value = {"+Inf": math.inf, "-Inf": -math.inf}.get(raw)
        samples.append(Sample(name, labels, float(raw) if value is None else value))
    return samples, types


def scrape(url: str, timeout: float = 5) -> tuple[list[Sample], dict[str, str]]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return parse(response.read().decode("utf-8"))


def total(samples: list[Sample], name: str, **labels: str) -> float | None:
    """The sum of `name`'s samples whose labels include `labels` (None: no such series)."""
    values = [
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return sum(values) if values else None


def read_metric_names(path: Path) -> set[str]:
    """The names in a metric-names file: one per line, `#` comments."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return {line.split()[0] for line in lines if line.strip() and not line.startswith("#")}
