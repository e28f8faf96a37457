"""File digests shared by the offline trainer and the job: the SHA-256 of a training log in a
model's provenance (models/train.py), of the downloaded connector jars and wheel
(flink_jobs/ops/runtime.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
