"""The file digest the trainer and the job share (udfs.digest)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from udfs.digest import sha256_file


def test_sha256_of_a_file_read_in_blocks(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # 1.2 MiB: more than one block
    path = tmp_path / "log.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()
