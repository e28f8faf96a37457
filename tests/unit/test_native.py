"""The compiled hot path (udfs/native.py): used wherever it can be built, and the pure-Python
fallback computes exactly the same rows, dead letters, states and decoder verdicts (JVM-free).

The golden corpus (tests/support/golden.py) runs in this process with whatever `udfs` selected
(compiled on machines with a C compiler) and, here, in a child interpreter forced to the Python
sources."""

from __future__ import annotations

import dataclasses
import importlib.machinery
import json
import os
import subprocess
import sys
from dataclasses import MISSING
from pathlib import Path

import pytest

from tests.support.fingerprints import states_digest, verdicts
from tests.support.golden import GOLDEN, corpus, digests, engine, replay
from udfs import _impl, native
from udfs.engine import Step, StepOutcome
from udfs.host import MemoryHost
from udfs.profile import Profile
from udfs.sketches import Preferences

ROOT = Path(__file__).resolve().parents[2]


def _child(code: str) -> dict[str, str]:
    env = {**os.environ, _impl.ENV_PURE: "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_the_compiled_modules_are_used_where_they_can_be_built() -> None:
    why = native.compiler_missing()
    if why:
        pytest.skip(f"this machine cannot compile extension modules ({why})")
    if os.environ.get(_impl.ENV_PURE):
        pytest.skip(f"{_impl.ENV_PURE} is set")
    status = native.status()
    assert status["mode"] == "native", (
        f"udfs runs as pure Python here ({status['reason']}): run `make setup` (it builds the "
        "compiled modules)"
    )


@pytest.mark.slow
def test_the_pure_python_fallback_computes_exactly_the_same() -> None:
    child = _child(
        "import json\n"
        "from udfs import native\n"
        "from tests.support.golden import corpus, digests, engine, replay\n"
        "from udfs.host import MemoryHost\n"
        "from tests.support.fingerprints import states_digest, verdicts\n"
        "print(json.dumps({'mode': native.status()['mode'],\n"
        "  'rows': json.dumps(digests(replay(corpus(), MemoryHost(engine())))),\n"
        "  'states': states_digest(), 'verdicts': verdicts()}))\n"
    )
    assert child["mode"] == "pure"
    golden = json.loads(GOLDEN.read_text())["users"]
    assert json.loads(child["rows"]) == golden
    assert digests(replay(corpus(), MemoryHost(engine()))) == golden  # this interpreter's build
    assert child["states"] == states_digest()
    assert child["verdicts"] == verdicts()


def test_a_build_of_other_sources_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = tmp_path / "_native.json"
    digests_now = _impl.source_digests()
    stale = {**digests_now, "udfs.profile": "0" * 64}
    abi = __import__("importlib.machinery").machinery.EXTENSION_SUFFIXES[0]
    manifest.write_text(json.dumps({"native": True, "abi": abi, "sources": stale}))
    monkeypatch.setattr(_impl, "MANIFEST", manifest)
    assert "sources changed" in str(_impl.why_not_native())
    manifest.write_text(json.dumps({"native": False, "reason": "no C compiler (cc) on PATH"}))
    assert _impl.why_not_native() == "no C compiler (cc) on PATH"
    monkeypatch.setenv(_impl.ENV_PURE, "1")
    assert _impl.why_not_native() == f"{_impl.ENV_PURE} is set"


def test_the_makefile_rebuilds_when_any_native_source_changes() -> None:
    """`make` rebuilds the native modules from NATIVE_SRC: it must name every source the build
    is made from, or an edit would leave a stale build (then silently the pure fallback)."""
    text = (_impl.ROOT / "Makefile").read_text().replace("\\\n", " ")
    line = next(x for x in text.splitlines() if x.startswith("NATIVE_SRC :="))
    named = set(line.split(":=", 1)[1].split())
    needed = {
        str(_impl.source(m).relative_to(_impl.ROOT)) for m in (*_impl.COMPILED, *_impl.DEPENDS)
    }
    needed |= {*_impl.C_EXTENSIONS.values(), *_impl.C_HEADERS}
    assert needed <= named, sorted(needed - named)


@pytest.mark.parametrize("cls", [Profile, Step, Preferences])
def test_written_out_initialisers_match_the_dataclass_fields(cls: type) -> None:
    """`Profile`, `Step` and `Preferences` write their __init__ out (a generated one would be
    interpreted Python in the compiled modules): the fields as parameters, in order, with the
    fields' defaults, each setting its own field."""
    fields = dataclasses.fields(cls)
    required = {f.name for f in fields if f.default is f.default_factory is MISSING}
    assert required == ({"outcome"} if cls is Step else set())
    made = cls(**({"outcome": StepOutcome.LATE} if cls is Step else {}))
    for f in fields:
        if f.name in required:
            assert getattr(made, f.name) is StepOutcome.LATE
        elif f.default_factory is not MISSING:
            assert getattr(made, f.name) == f.default_factory(), f.name
        else:
            assert getattr(made, f.name) == f.default, f.name
    # Factories give each instance its own containers.
    other = cls(**({"outcome": StepOutcome.LATE} if cls is Step else {}))
    for f in fields:
        if f.default_factory is not MISSING:
            assert getattr(made, f.name) is not getattr(other, f.name), f.name
    # Every parameter lands in its own field (a value of the field's type, unique to it: the
    # compiled class checks types).
    if cls is Step:  # its None defaults, by type
        given = {f.name: _another_value(getattr(made, f.name), i) for i, f in enumerate(fields[1:])}
        given.update(
            outcome=StepOutcome.DUPLICATE,
            state=b"state",
            profile=Profile(),
            row=("row",),
            dead_letter=("id", "reason", "detail", b"raw", "topic", 1, "user", 2),
        )
    else:
        given = {f.name: _another_value(getattr(made, f.name), i) for i, f in enumerate(fields)}
    by_name = cls(**given)
    in_order = cls(*(given[f.name] for f in fields))  # the parameters are in field order
    for made in (by_name, in_order):
        for f in fields:
            value = given[f.name]
            if isinstance(value, (bool, int, float, bytes)):
                assert getattr(made, f.name) == value, f.name
            else:
                assert getattr(made, f.name) is value, f.name


def _another_value(value: object, unique: int) -> object:
    """A value of `value`'s type, different from it and from any other field's."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1000 + unique
    if isinstance(value, float):
        return value + 1000.5 + unique
    if isinstance(value, bytes):
        return value + bytes([unique])
    return type(value)()  # a fresh container (list, dict, Preferences, the enum...)


def test_a_build_first_removes_every_extension_module_of_the_package(tmp_path: Path) -> None:
    """Also those of a module no longer compiled (Python would import a stale one instead of
    its source)."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    for name in ("engine", "dropped_module", "_native__mypyc"):
        (tmp_path / (name + suffix)).write_bytes(b"")
    (tmp_path / "engine.py").write_text("")
    assert [p.name for p in native.built_extensions(tmp_path)] == sorted(
        n + suffix for n in ("_native__mypyc", "dropped_module", "engine")
    )
