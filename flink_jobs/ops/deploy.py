"""The deployment files in docker/, generated from the code the local cluster runs on.

    python -m flink_jobs.ops.deploy --write     # `make deploy-files`: rewrite what is generated
    python -m flink_jobs.ops.deploy --check     # exit 1 naming every stale file

No container runtime is needed: what must equal the code is written by this module and
tests/unit/test_deploy_files.py fails when a committed file differs. Generated are

- whole files: docker/flink/config.yaml (the image's Flink configuration:
  `deployment_settings("compose")`), docker/flink/log4j-quiet-secrets.properties (the log quieting
  `cluster start` applies) and docker/k8s/flinkdeployment.yaml (the FlinkDeployment, with
  `deployment_settings("kubernetes")`);
- regions of hand-written files, between `# >>> generated ...: NAME` and `# <<< generated: NAME`
  lines: the versions, connector jars and environment of docker/Dockerfile (from
  requirements.lock and flink_jobs.ops.runtime.CONNECTORS), the values docker/compose.yaml
  takes (images, the job's `flink run` command from JobConfig.to_args, the migration) and the
  Prometheus targets in docker/prometheus/prometheus.yml.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from flink_jobs.config import (
    DEFAULT_JOB_NAME,
    DEFAULT_MODEL_DIR,
    DEFAULT_SEGMENTS_DIR,
    DEFAULT_TOPIC,
    PROJECT_ROOT,
    ClusterSettings,
    JobConfig,
)
from flink_jobs.ops.cluster import (
    QUIET_SECRETS,
    config_yaml,
    flink_run_options,
    python_entry,
)
from flink_jobs.ops.flink_config import (
    JOBMANAGER_MEMORY,
    TASKMANAGER_MEMORY,
    ContainerLayout,
    deployment_settings,
)
from flink_jobs.ops.runtime import CONNECTORS
from flink_jobs.ops.services import SERVER_SETTINGS

DOCKER = "docker"
JAVA = 17  # the official image's default Java (flink:<version>-java17); 21 works too
# Python from python.org's source (the same version and digest as the official python image's).
PYTHON_VERSION = "3.11.15"
PYTHON_SHA256 = "272179ddd9a2e41a0fc8e42e33dfbdca0b3711aa5abf372d3f2d51543d09b625"

# Inside the image (docker/Dockerfile).
IMAGE_PROJECT = PurePosixPath("/opt/profilestream")
IMAGE_VENV = PurePosixPath("/opt/venv")
IMAGE_JARS = IMAGE_PROJECT / "jars"
LAYOUT = ContainerLayout(python=str(IMAGE_VENV / "bin" / "python"))
IMAGE_MODEL_DIR = IMAGE_PROJECT / DEFAULT_MODEL_DIR.relative_to(PROJECT_ROOT).as_posix()
IMAGE_SEGMENTS_DIR = IMAGE_PROJECT / DEFAULT_SEGMENTS_DIR.relative_to(PROJECT_ROOT).as_posix()


@dataclass(frozen=True)
class Target:
    """Where one deployment finds Kafka, PostgreSQL and its secret files."""

    kafka: str
    pg_dsn: str
    pseudonym_key_file: str
    pg_password_file: str
    parallelism: int = 2  # two TaskManagers with one slot each

    def job_args(self) -> list[str]:
        """The `flink_jobs.job.entry` arguments (JobConfig.to_args: what `submit` passes)."""
        config = JobConfig(
            kafka_bootstrap=self.kafka,
            pg_dsn=self.pg_dsn,
            model_dir=Path(str(IMAGE_MODEL_DIR)),
            segments_dir=Path(str(IMAGE_SEGMENTS_DIR)),
            pseudonym_key_file=Path(self.pseudonym_key_file),
        )
        args = config.to_args()
        for path in (str(IMAGE_MODEL_DIR), str(IMAGE_SEGMENTS_DIR), self.pseudonym_key_file):
            if path not in args:  # to_args resolves paths: this machine must not change them
                raise RuntimeError(f"{path} changed while resolving the job arguments: {args}")
        return args


# docker/compose.yaml: its services' names and the secrets compose mounts in /run/secrets.
COMPOSE = Target(
    kafka="kafka:9092",
    pg_dsn="postgresql://profilestream@postgres:5432/profilestream",
    pseudonym_key_file="/run/secrets/pseudonym_key",
    pg_password_file="/run/secrets/pg_password",
)
COMPOSE_JOBMANAGER = "jobmanager"
COMPOSE_TASKMANAGERS = ("taskmanager-1", "taskmanager-2")
TOPIC_PARTITIONS = 4
# docker/k8s: Services named kafka and postgres in the deployment's namespace (edit here and run
# `make deploy-files` for others), the Secret's keys mounted as files.
K8S_SECRET = "profilestream-secrets"
K8S_SECRET_DIR = PurePosixPath("/etc/profilestream/secrets")
K8S_DATA_CLAIM = "profilestream-flink-data"
KUBERNETES = Target(
    kafka="kafka:9092",
    pg_dsn="postgresql://profilestream@postgres:5432/profilestream",
    pseudonym_key_file=str(K8S_SECRET_DIR / "pseudonym-key"),
    pg_password_file=str(K8S_SECRET_DIR / "pg-password"),
)
# Flink Kubernetes Operator 1.15.0 (the newest release) knows Flink 2.3 in its code, but the CRD it
# ships lists `flinkVersion` values up to v2_2 only, so the API server refuses v2_3. Its code treats
# every 2.x version alike (only >= v2_0 and >= v1_20 change what it does), so a 2.3 image runs as
# v2_2. Raise this to (2, 3) with an operator whose CRD lists v2_3 (the operator's main branch).
OPERATOR_NEWEST_FLINK = (2, 2)
FLINK_UID = 9999  # the official image's `flink` user and group


def pins(lock: Path | None = None) -> dict[str, str]:
    """requirements.lock as {normalised name: version}."""
    text = (lock or PROJECT_ROOT / "requirements.lock").read_text(encoding="utf-8")
    found = {}
    for line in text.splitlines():
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s;#]+)", line.strip())
        if match:
            found[normalise(match.group(1))] = match.group(2)
    return found


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def flink_version() -> str:
    return pins()["apache-flink"]


def flink_image() -> str:
    return f"flink:{flink_version()}-scala_2.12-java{JAVA}"


def operator_flink_version() -> str:
    """The FlinkDeployment's `flinkVersion`: the image's Flink (v2_3 for 2.3.x), capped at the
    newest value the released operator's CRD accepts (OPERATOR_NEWEST_FLINK)."""
    major, minor = (int(part) for part in flink_version().split(".")[:2])
    major, minor = min((major, minor), OPERATOR_NEWEST_FLINK)
    return f"v{major}_{minor}"


def project_image() -> str:
    pyproject = (PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    version = re.search(r'^version = "([^"]+)"', pyproject, re.M)
    return f"profilestream:{version.group(1) if version else 'latest'}"


def kafka_image() -> str:
    """The broker: the same Kafka release as the connector's kafka-clients."""
    clients = next(jar for jar in CONNECTORS if jar.artifact == "kafka-clients")
    return f"apache/kafka:{clients.version}"


# ---------------------------------------------------------------------------------------------
# docker/Dockerfile
# ---------------------------------------------------------------------------------------------
def dockerfile_versions() -> str:
    return (
        f"ARG FLINK_IMAGE={flink_image()}\n"
        f"ARG PYTHON_VERSION={PYTHON_VERSION}\n"
        f"ARG PYTHON_SHA256={PYTHON_SHA256}\n"
    )


def dockerfile_jars() -> str:
    lines = [f"RUN set -eux; mkdir -p {IMAGE_JARS}; cd {IMAGE_JARS}; \\"]
    for jar in CONNECTORS:
        lines.append(f"    wget -nv -O {jar.name} {jar.maven_url}; \\")
        lines.append(f'    echo "{jar.sha256}  {jar.name}" | sha256sum -c -; \\')
    lines.append("    chmod 0444 *.jar")
    return "\n".join(lines) + "\n"


def dockerfile_environment() -> str:
    python = PYTHON_VERSION.rsplit(".", 1)[0]
    site_packages = IMAGE_VENV / "lib" / f"python{python}" / "site-packages"
    # As `cluster start` gives its TaskManagers (thread mode runs Python inside their JVMs).
    return (
        f"ENV PATH={IMAGE_VENV}/bin:$PATH \\\n"
        f"    PYTHONPATH={IMAGE_PROJECT}:{site_packages} \\\n"
        f"    PROFILESTREAM_JAR_DIR={IMAGE_JARS}\n"
    )


# ---------------------------------------------------------------------------------------------
# docker/compose.yaml and docker/prometheus/prometheus.yml
# ---------------------------------------------------------------------------------------------
SAVEPOINT_OPTIONS = '"$@"'  # the shell's positional parameters: `-s <path>` or nothing


def submit_script(target: Target = COMPOSE) -> str:
    """The one-shot submit (a shell script, `$` escaped for compose as `$$`): `flink run` of the
    job with the same options and entry point as `profilestream submit`, from the savepoint in
    FROM_SAVEPOINT when it is set, and skipped when the job already runs."""
    address = f"{COMPOSE_JOBMANAGER}:{ClusterSettings().rest_port}"
    run = [
        "flink",
        *flink_run_options(address, parallelism=target.parallelism),
        SAVEPOINT_OPTIONS,
        *python_entry(LAYOUT.python, target.job_args()),
    ]
    lines = []
    line = "exec"
    for word in run:  # one option and its value per line, as a reader would write it
        if word.startswith(("-", SAVEPOINT_OPTIONS)) and line.strip() != "exec":
            lines.append(line + " \\")
            line = " "
        line += " " + (word if word == SAVEPOINT_OPTIONS else shlex.quote(word))
    lines.append(line)
    check = shlex.quote(f" : {DEFAULT_JOB_NAME} (")
    script = (
        f"if flink list -r -m {address} 2>/dev/null | grep -qF {check}; then\n"
        f'  echo "{DEFAULT_JOB_NAME} already runs on {address}: not submitting it again"\n'
        "  exit 0\n"
        "fi\n"
        'if [ -n "$FROM_SAVEPOINT" ]; then set -- -s "$FROM_SAVEPOINT"; else set --; fi\n'
        + "\n".join(lines)
        + "\n"
    )
    return script.replace("$", "$$")


def compose_values() -> str:
    create_topic = [
        "/opt/kafka/bin/kafka-topics.sh",
        *("--bootstrap-server", COMPOSE.kafka, "--create", "--if-not-exists"),
        *("--topic", DEFAULT_TOPIC, "--partitions", str(TOPIC_PARTITIONS)),
        *("--replication-factor", "1"),
    ]
    migrate = ["profilestream", "db", "migrate", "--pg-dsn", COMPOSE.pg_dsn]
    # The compose PostgreSQL shares the machine with the job as the embedded one does: the same
    # server settings (the profile table in memory, checkpoints every few minutes).
    postgres = ["postgres", *(a for k, v in SERVER_SETTINGS.items() for a in ("-c", f"{k}={v}"))]
    script = "".join(f"    {line}\n" for line in submit_script().splitlines())
    return (
        f"x-profilestream-image: &profilestream-image {project_image()}\n"
        f"x-kafka-image: &kafka-image {kafka_image()}\n"
        f"x-kafka-bootstrap: &kafka-bootstrap {COMPOSE.kafka}\n"
        f"x-pg-dsn: &pg-dsn {COMPOSE.pg_dsn}\n"
        f"x-pg-password-file: &pg-password-file {COMPOSE.pg_password_file}\n"
        f"x-pseudonym-key-file: &pseudonym-key-file {COMPOSE.pseudonym_key_file}\n"
        f"x-create-topic: &create-topic {json.dumps(create_topic)}\n"
        f"x-db-migrate: &db-migrate {json.dumps(migrate)}\n"
        f"x-postgres-command: &postgres-command {json.dumps(postgres)}\n"
        "x-submit: &submit\n"
        "  - sh\n"
        "  - -c\n"
        "  - |\n" + script
    )


def prometheus_targets() -> str:
    processes = (COMPOSE_JOBMANAGER, *COMPOSE_TASKMANAGERS)
    targets = [f"{name}:{LAYOUT.metrics_port}" for name in processes]
    return f"- job_name: flink\n  static_configs:\n    - targets: {json.dumps(targets)}\n"


# ---------------------------------------------------------------------------------------------
# docker/k8s/flinkdeployment.yaml
# ---------------------------------------------------------------------------------------------
def _pod_template(secret_key: str, env: Mapping[str, str]) -> dict[str, Any]:
    """One component's pod: the shared data volume, its own secret file (the Secret's one key, in
    K8S_SECRET_DIR), the metrics port."""
    container: dict[str, Any] = {
        "name": "flink-main-container",
        "ports": [{"name": "metrics", "containerPort": int(LAYOUT.metrics_port)}],
    }
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    container["volumeMounts"] = [
        {"name": "flink-data", "mountPath": LAYOUT.data},
        {"name": "secrets", "mountPath": str(K8S_SECRET_DIR), "readOnly": True},
    ]
    return {
        "metadata": {
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": LAYOUT.metrics_port,
            }
        },
        "spec": {
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": FLINK_UID,
                "runAsGroup": FLINK_UID,
                "fsGroup": FLINK_UID,
            },
            "containers": [container],
            "volumes": [
                {"name": "flink-data", "persistentVolumeClaim": {"claimName": K8S_DATA_CLAIM}},
                {
                    "name": "secrets",
                    "secret": {
                        "secretName": K8S_SECRET,
                        "items": [{"key": secret_key, "path": secret_key}],
                        "defaultMode": 0o440,
                    },
                },
            ],
        },
    }


def flink_deployment() -> dict[str, Any]:
    target = KUBERNETES
    password_key = PurePosixPath(target.pg_password_file).name
    key_key = PurePosixPath(target.pseudonym_key_file).name
    settings = deployment_settings("kubernetes", LAYOUT)
    return {
        "apiVersion": "flink.apache.org/v1beta1",
        "kind": "FlinkDeployment",
        "metadata": {"name": "profilestream"},
        "spec": {
            "image": project_image(),
            "imagePullPolicy": "IfNotPresent",
            "flinkVersion": operator_flink_version(),
            "serviceAccount": "flink",
            "flinkConfiguration": settings,
            "jobManager": {
                "resource": {"memory": JOBMANAGER_MEMORY, "cpu": 1},
                # The job's client (PythonDriver) runs here: it reads the database password.
                "podTemplate": _pod_template(
                    password_key, {"PROFILESTREAM_PG_PASSWORD_FILE": target.pg_password_file}
                ),
            },
            "taskManager": {
                "resource": {"memory": TASKMANAGER_MEMORY, "cpu": 1},
                # The workers read the pseudonym key (--pseudonym-key-file).
                "podTemplate": _pod_template(key_key, {}),
            },
            "job": {
                "jarURI": f"local:///opt/flink/opt/flink-python-{flink_version()}.jar",
                "entryClass": "org.apache.flink.client.python.PythonDriver",
                "args": python_entry(LAYOUT.python, target.job_args()),
                "parallelism": target.parallelism,
                "upgradeMode": "savepoint",
                "state": "running",
            },
        },
    }


# ---------------------------------------------------------------------------------------------
# Files and regions
# ---------------------------------------------------------------------------------------------
HEADER = (
    "# Generated by `make deploy-files` (flink_jobs/ops/deploy.py) from\n"
    "#   {source}\n"
    "# Do not edit: tests/unit/test_deploy_files.py fails when it differs from the code's output.\n"
)
REGION = re.compile(
    r"^(?P<indent>[ \t]*)(?P<begin># >>> generated[^\n]*: (?P<name>[\w-]+)\n)"
    r".*?"
    r"^(?P=indent)(?P<end># <<< generated: (?P=name)\n)",
    re.M | re.S,
)


def _yaml(data: Any) -> str:
    return str(yaml.safe_dump(data, sort_keys=False, width=100, default_flow_style=False))


@dataclass(frozen=True)
class Generated:
    """A whole generated file (`render`) or the generated regions of a hand-written one."""

    path: str  # relative to the project root
    render: Callable[[], str] | None = None
    regions: Mapping[str, Callable[[], str]] = field(default_factory=dict)

    def content(self, root: Path = PROJECT_ROOT) -> str:
        if self.render is not None:
            return self.render()
        return fill((root / self.path).read_text(encoding="utf-8"), self.regions, self.path)


def fill(text: str, regions: Mapping[str, Callable[[], str]], where: str) -> str:
    """`text` with every generated region's lines replaced by what its function returns now."""
    seen: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in regions:
            raise ValueError(f"{where}: unknown generated region {name!r}")
        seen.add(name)
        indent = match["indent"]
        body = "".join(
            f"{indent}{line}\n" if line else "\n" for line in regions[name]().splitlines()
        )
        return f"{indent}{match['begin']}{body}{indent}{match['end']}"

    result = REGION.sub(replace, text)
    if missing := sorted(set(regions) - seen):
        raise ValueError(f"{where}: generated region(s) {missing} not found (markers removed?)")
    return result


def _flink_config() -> str:
    source = 'deployment_settings("compose") in flink_jobs/ops/flink_config.py'
    return HEADER.format(source=source) + config_yaml(deployment_settings("compose", LAYOUT))


def _quiet_secrets() -> str:
    return HEADER.format(source="QUIET_SECRETS in flink_jobs/ops/cluster.py") + QUIET_SECRETS


def _flink_deployment() -> str:
    source = 'flink_deployment() and deployment_settings("kubernetes")'
    return HEADER.format(source=source) + _yaml(flink_deployment())


FILES: tuple[Generated, ...] = (
    Generated(
        f"{DOCKER}/Dockerfile",
        regions={
            "versions": dockerfile_versions,
            "connector-jars": dockerfile_jars,
            "environment": dockerfile_environment,
        },
    ),
    Generated(f"{DOCKER}/flink/config.yaml", render=_flink_config),
    Generated(f"{DOCKER}/flink/log4j-quiet-secrets.properties", render=_quiet_secrets),
    Generated(f"{DOCKER}/compose.yaml", regions={"values": compose_values}),
    Generated(f"{DOCKER}/prometheus/prometheus.yml", regions={"flink-targets": prometheus_targets}),
    Generated(f"{DOCKER}/k8s/flinkdeployment.yaml", render=_flink_deployment),
)


def stale(root: Path = PROJECT_ROOT) -> list[str]:
    """The generated files whose committed content differs from what the code generates now."""
    found = []
    for spec in FILES:
        path = root / spec.path
        if not path.is_file() or path.read_text(encoding="utf-8") != spec.content(root):
            found.append(spec.path)
    return found


def write(root: Path = PROJECT_ROOT) -> list[str]:
    """Rewrite every stale generated file; returns their paths."""
    changed = stale(root)
    for spec in FILES:
        if spec.path in changed:
            path = root / spec.path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(spec.content(root), encoding="utf-8")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flink_jobs.ops.deploy", description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite the stale generated files")
    mode.add_argument("--check", action="store_true", help="exit 1 if a generated file is stale")
    args = parser.parse_args(argv)
    if args.write:
        changed = write()
        print("\n".join(f"wrote {p}" for p in changed) if changed else "deploy files up to date")
        return 0
    old = stale()
    for path in old:
        print(f"{path} is stale: run `make deploy-files` and commit the result")
    return 1 if old else 0


if __name__ == "__main__":
    raise SystemExit(main())
