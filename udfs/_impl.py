"""Which implementation of the hot-path modules this interpreter imports (see udfs/native.py):
the mypyc-compiled extension modules when they were built from exactly these sources, else the
Python sources. Runs from udfs/__init__.py before any of those modules is imported."""

from __future__ import annotations

import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
ROOT = PACKAGE_DIR.parent
COMPILED: tuple[str, ...] = (
    "udfs.events",
    "udfs.sketches",
    "udfs.profile",
    "udfs.fold",
    "udfs.codec",
    "udfs.features",
    "udfs.clusters",
    "udfs.rows",
    "udfs.engine",
    "udfs.cache",
    "udfs.trees",
    "udfs.pseudonym",  # every row asks for its user's pseudonym
    "udfs.metrics",  # its SampledTimer wraps the score, the reasons and the cluster of every row
)
# Hand-written C extension modules built with them (module -> source, relative to ROOT).
C_EXTENSIONS: dict[str, str] = {
    "udfs._treewalk": "udfs/_treewalk.c",
    "udfs._statecodec": "udfs/_statecodec.c",
    "udfs._eventdecode": "udfs/_eventdecode.c",
    "udfs._features": "udfs/_features.c",
}
# Headers those C sources include (a change to one must rebuild them).
C_HEADERS: tuple[str, ...] = ("udfs/_attrcache.h",)
# Modules the compiled code depends on without being compiled (mypyc inlines their Final constants).
DEPENDS: tuple[str, ...] = ("udfs.params",)
GROUP = "udfs._native"  # the shared library: udfs/_native__mypyc.<abi>.so
MANIFEST = PACKAGE_DIR / "_native.json"
ENV_PURE = "PROFILESTREAM_PURE_PYTHON"

selected: dict[str, str] = {}  # "mode": "native" | "pure", "reason": why


def source(module: str) -> Path:
    return ROOT / (module.replace(".", "/") + ".py")


def source_digests() -> dict[str, str]:
    """SHA-256 of every source the compiled build is made from."""
    digests = {m: _sha256(source(m)) for m in (*COMPILED, *DEPENDS)}
    digests.update({path: _sha256(ROOT / path) for path in (*C_EXTENSIONS.values(), *C_HEADERS)})
    return digests


def native_module(name: str) -> ModuleType | None:
    """The hand-written C module `name` (one of `C_EXTENSIONS`) when the native build is
    selected and has it, else None: the caller then takes its Python path."""
    if selected.get("mode") != "native":
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def extensions() -> list[Path]:
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    names = [m.rsplit(".", 1)[1] for m in (*COMPILED, *C_EXTENSIONS)]
    names.append(GROUP.rsplit(".", 1)[1] + "__mypyc")
    return [PACKAGE_DIR / (name + suffix) for name in names]


def why_not_native() -> str | None:
    """None when the compiled modules are present and built from these sources."""
    if os.environ.get(ENV_PURE, "") not in ("", "0"):
        return f"{ENV_PURE} is set"
    try:
        manifest = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return "not built (run `make setup` or `python -m udfs.native build`)"
    if not manifest.get("native"):
        return str(manifest.get("reason", "the build made no compiled modules"))
    if manifest.get("sources") != source_digests():
        return "the sources changed since the build (run `make setup` to rebuild)"
    if manifest.get("abi") != importlib.machinery.EXTENSION_SUFFIXES[0]:
        return f"built for {manifest.get('abi')}, this interpreter is another"
    missing = [p.name for p in extensions() if not p.is_file()]
    if missing:
        return f"missing {missing}"
    return None


class _SourceOnly(importlib.abc.MetaPathFinder):
    """Imports the `COMPILED` modules from their .py files, never their extension modules."""

    def find_spec(
        self, fullname: str, path: Any = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in COMPILED:
            return None
        return importlib.util.spec_from_file_location(fullname, source(fullname))


def select() -> None:
    """Choose the implementation for this interpreter, once."""
    if selected:
        return
    reason = why_not_native()
    if reason is None:
        selected.update(mode="native", reason="compiled with mypyc from these sources")
        return
    selected.update(mode="pure", reason=reason)
    if not any(m in sys.modules for m in COMPILED):
        sys.meta_path.insert(0, _SourceOnly())
