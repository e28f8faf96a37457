"""The profile step's hot path compiled to C with mypyc, from the very same typed Python source,
and the hand-written C of `C_EXTENSIONS` (udfs/_treewalk.c: the model's tree walk;
udfs/_statecodec.c: the profile's state encoding).

    python -m udfs.native build     # what `make setup` runs (about a minute, once)
    python -m udfs.native status    # which implementation this interpreter uses, and why

`COMPILED` modules are compiled into extension modules next to their sources (git-ignored), plus
a manifest with each source's SHA-256. On import, `udfs` uses them only while the manifest matches
the sources; otherwise (sources edited since the build, no build, or
PROFILESTREAM_PURE_PYTHON=1) it imports the Python sources, which compute exactly the same
results (tests/unit/test_native.py replays the golden corpus both ways). A machine without a C
compiler or the Python headers gets the pure-Python implementation and a warning at build time.

mypyc semantics to keep in mind when editing these modules: annotations are enforced at run
time, and a value annotated `float` is stored as a C double, so an int held in a `float`
variable becomes a float (write `int | float` or `Any` where an int must stay an int).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import os
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any

from udfs._impl import (
    C_EXTENSIONS,
    COMPILED,
    GROUP,
    MANIFEST,
    PACKAGE_DIR,
    ROOT,
    selected,
    source,
    source_digests,
)

BUILD_DIR = ROOT / ".cache" / "native-build"


def status() -> dict[str, Any]:
    """What this interpreter uses: mode, reason and the file of each hot-path module."""
    files = {m: str(Path(importlib.import_module(m).__file__ or "?").name) for m in COMPILED}
    native = all(not f.endswith(".py") for f in files.values())
    return {"mode": "native" if native else "pure", "reason": selected.get("reason"), **files}


def compiler_missing() -> str | None:
    """Why this machine cannot compile extension modules, or None when it can."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        return f"no C compiler ({cc}) on PATH"
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not include.is_file():
        return f"no Python headers ({include})"
    return None


def built_extensions(directory: Path = PACKAGE_DIR) -> list[Path]:
    """Every extension module in `directory` (udfs/): the build's, including those of modules
    no longer compiled, which Python would still import instead of their sources."""
    return sorted(directory.glob("*" + importlib.machinery.EXTENSION_SUFFIXES[0]))


def build(verbose: bool = False) -> bool:
    """Compile `COMPILED` in place and write the manifest. Returns False (and records why) when
    the machine cannot compile; raises when compiling fails."""
    for path in (*built_extensions(), MANIFEST):
        path.unlink(missing_ok=True)
    abi = importlib.machinery.EXTENSION_SUFFIXES[0]
    missing = compiler_missing()
    if missing:
        MANIFEST.write_text(json.dumps({"native": False, "reason": missing, "abi": abi}) + "\n")
        return False
    digests = source_digests()
    from mypyc.build import mypycify
    from setuptools import Distribution, Extension

    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    cwd = Path.cwd()
    os.chdir(ROOT)  # mypy reads the project's configuration and maps files to modules from here
    try:
        ext_modules = mypycify(
            [str(source(m).relative_to(ROOT)) for m in COMPILED],
            opt_level="3",
            group_name=GROUP,
            target_dir=str(BUILD_DIR / "c"),
            verbose=verbose,
        )
        for name, c_source in C_EXTENSIONS.items():
            ext_modules.append(
                Extension(name, [c_source], extra_compile_args=["-O3", "-ffp-contract=off"])
            )
        dist = Distribution({"name": "profilestream-native", "ext_modules": ext_modules})
        dist.script_args = ["build_ext", "--inplace", "--build-temp", str(BUILD_DIR / "obj")]
        if not verbose:
            dist.script_args.insert(0, "--quiet")
        dist.parse_command_line()
        dist.run_commands()
    finally:
        os.chdir(cwd)
    if source_digests() != digests:
        raise RuntimeError("udfs sources changed during the native build: build again")
    MANIFEST.write_text(
        json.dumps({"native": True, "abi": abi, "sources": digests}, indent=1) + "\n"
    )
    return True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "status"
    if command == "build":
        if build(verbose="-v" in args):
            print(f"udfs: compiled {len(COMPILED)} modules with mypyc ({', '.join(COMPILED)}) "
                  f"and {', '.join(C_EXTENSIONS)}")  # fmt: skip
        else:
            reason = json.loads(MANIFEST.read_text())["reason"]
            print(f"udfs: WARNING: {reason}: the profile step runs as pure Python (several times "
                  "slower, same results); install a C compiler and the Python headers, then "
                  "`make setup`", file=sys.stderr)  # fmt: skip
        return 0
    if command == "status":
        print(json.dumps(status(), indent=1))
        return 0
    print("usage: python -m udfs.native [build [-v] | status]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
