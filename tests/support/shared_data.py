"""The shared data folder (`../shared/data` beside the checkout): real samples of the public
datasets that the tests marked `data` read. It is optional; a test that needs a file from it is
skipped, with the path, when the file is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not present (the shared data folder is optional)")
    return path
