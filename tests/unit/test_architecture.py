"""The import rules of docs/architecture.md, checked on the source (every import, including the
lazy ones inside functions): a layer never reaches up, pyflink stays in the job, and no module
imports another module's private name."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("udfs", "models", "flink_jobs", "bench")

# layer -> project layers it must never import (prefix match on dotted module names).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "udfs": ("flink_jobs", "models", "bench", "tests", "pyflink"),
    "models": ("flink_jobs", "bench", "tests", "pyflink"),
    "flink_jobs.config": ("flink_jobs.io", "flink_jobs.ops", "flink_jobs.job", "flink_jobs.cli"),
    "flink_jobs.io": ("flink_jobs.ops", "flink_jobs.job", "flink_jobs.cli", "pyflink", "models"),
    "flink_jobs.ops": ("flink_jobs.io", "flink_jobs.job", "flink_jobs.cli", "pyflink.", "models"),
    "flink_jobs.job": ("flink_jobs.cli", "models", "bench", "tests"),
    "flink_jobs.cli": ("bench", "tests"),
    "bench": ("tests", "flink_jobs.cli"),
}


def modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join(parts), path


def imports(path: Path) -> Iterator[tuple[str, list[str], int]]:
    """(module, names imported from it, line) for every import statement in the file."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [a.name for a in node.names], node.lineno


def layer(module: str) -> str | None:
    for name in sorted(FORBIDDEN, key=len, reverse=True):
        if module == name or module.startswith(name + "."):
            return name
    return None


def reaches(target: str, forbidden: str) -> bool:
    if forbidden.endswith("."):  # "pyflink." forbids its submodules, not `import pyflink`
        return target.startswith(forbidden)
    return target == forbidden or target.startswith(forbidden + ".")


def test_every_layer_imports_only_what_it_may() -> None:
    found = list(modules())
    assert len(found) > 40, "the walk found too few modules"
    broken = []
    for module, path in found:
        home = layer(module)
        if home is None:
            continue
        for target, _, line in imports(path):
            for forbidden in FORBIDDEN[home]:
                if reaches(target, forbidden):
                    broken.append(f"{path.relative_to(ROOT)}:{line} ({home}) imports {target}")
    assert not broken, "\n".join(broken)


def test_no_module_imports_a_private_name_of_another() -> None:
    ours = {module for module, _ in modules()}
    test_code = [
        (".".join(p.relative_to(ROOT).with_suffix("").parts), p)
        for p in sorted((ROOT / "tests").rglob("*.py"))
    ]
    broken = [
        f"{path.relative_to(ROOT)}:{line} imports {name} from {target}"
        for module, path in [*modules(), *test_code]
        for target, names, line in imports(path)
        if target in ours and target != module
        for name in names
        if name.startswith("_") and not name.startswith("__") and f"{target}.{name}" not in ours
    ]  # a private submodule (`from udfs import _impl`) is a module, not a private name
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize(
    ("module", "target", "allowed"),
    [
        ("udfs.engine", "flink_jobs.config", False),
        ("flink_jobs.io.db", "flink_jobs.job.run", False),
        ("flink_jobs.ops.cluster", "pyflink", True),
        ("flink_jobs.ops.cluster", "pyflink.datastream", False),
        ("flink_jobs.job.pipeline", "pyflink.datastream", True),
        ("flink_jobs.cli.job", "flink_jobs.job.run", True),
    ],
)
def test_the_rules_themselves(module: str, target: str, allowed: bool) -> None:
    home = layer(module)
    assert home is not None
    assert allowed == (not any(reaches(target, f) for f in FORBIDDEN[home]))


def test_no_test_module_imports_another() -> None:
    """Shared test code lives in tests/support; a test module is never a library."""
    broken = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for target, names, line in imports(path):
            if target.split(".")[0] != "tests":
                continue
            modules_named = [
                target.split(".")[-1],
                *(f"{target}.{n}".split(".")[-1] for n in names),
            ]
            if any(m.startswith("test_") for m in modules_named):
                broken.append(f"{path.relative_to(ROOT)}:{line} imports {target} {names}")
    assert not broken, "\n".join(broken)
