"""The container and Kubernetes files in docker/ are checked without a container runtime: what
must equal the code is regenerated and compared (`make deploy-files`), the job's arguments in them
are parsed by the job's own parsers, the Dockerfile's pins are compared with requirements.lock and
the local jar pins, and the compose file is validated against the Compose specification."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
import yaml

from flink_jobs.config import DEFAULT_TOPIC, ClusterSettings, JobConfig
from flink_jobs.ops import deploy
from flink_jobs.ops.cluster import ENTRY_MODULE
from flink_jobs.ops.flink_config import PROMETHEUS_REPORTER, flink_settings
from flink_jobs.ops.runtime import CONNECTOR_JARS, CONNECTORS
from flink_jobs.ops.services import SERVER_SETTINGS
from udfs.pseudonym import MIN_KEY_BYTES

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
IMAGE_PROJECT = PurePosixPath("/opt/profilestream")


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def compose() -> dict[str, Any]:
    return load(DOCKER / "compose.yaml")


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def image_config() -> dict[str, str]:
    return load(DOCKER / "flink" / "config.yaml")


def flink_deployment() -> dict[str, Any]:
    return load(DOCKER / "k8s" / "flinkdeployment.yaml")


def lock() -> dict[str, str]:
    return deploy.pins(ROOT / "requirements.lock")


def dockerfile() -> str:
    return (DOCKER / "Dockerfile").read_text(encoding="utf-8")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    kept = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    joined = re.sub(r"\\\n", " ", kept)
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in (ln.strip() for ln in joined.splitlines())
        if line
    ]


def flink_processes(kind: str) -> list[str]:
    return [name for name, svc in services().items() if svc.get("command") == kind]


def entry_arguments(words: list[str]) -> tuple[list[str], JobConfig]:
    """(the options before the Python entry point, the JobConfig its arguments parse into)."""
    assert "-pym" in words, words
    at = words.index("-pym")
    assert words[at + 1] == ENTRY_MODULE
    return words[:at], JobConfig.from_args(words[at + 2 :])


def option(words: list[str], flag: str) -> str:
    assert flag in words, (flag, words)
    return words[words.index(flag) + 1]


def submit_command() -> list[str]:
    """The `flink run` the compose one-shot executes (its shell script's exec line)."""
    command = services()["submit"]["command"]
    assert command[:2] == ["sh", "-c"]
    script = command[2].replace("$$", "$")  # compose's escape of the shell's `$`
    script = script.replace("\\\n", " ")  # the shell's line continuations
    runs = [line for line in script.splitlines() if line.startswith("exec flink run")]
    assert len(runs) == 1, script
    assert 'then set -- -s "$FROM_SAVEPOINT"; else set --; fi' in script
    words = shlex.split(runs[0])
    assert words[:2] == ["exec", "flink"]
    assert words.index("$@") < words.index("-pym")  # `-s <savepoint>` is a flink run option
    return [word for word in words[2:] if word != "$@"]


# ---------------------------------------------------------------------------------------------
# Drift: the committed files are what the code generates
# ---------------------------------------------------------------------------------------------
def test_committed_deploy_files_match_the_code() -> None:
    stale = deploy.stale()
    assert not stale, f"stale deployment files {stale}: run `make deploy-files` and commit them"


def test_the_drift_check_fails_on_edited_files(tmp_path: Path) -> None:
    shutil.copytree(DOCKER, tmp_path / "docker")
    assert deploy.stale(tmp_path) == []
    config = tmp_path / "docker" / "flink" / "config.yaml"
    config.write_text(config.read_text().replace('"fixed-delay"', '"exponential-delay"'))
    compose_file = tmp_path / "docker" / "compose.yaml"
    compose_file.write_text(compose_file.read_text().replace("--profile-cache 100000", ""))
    assert deploy.stale(tmp_path) == ["docker/flink/config.yaml", "docker/compose.yaml"]
    deploy.write(tmp_path)
    assert deploy.stale(tmp_path) == []
    text = compose_file.read_text()
    compose_file.write_text(text.replace("# <<< generated: values", "# end of values"))
    with pytest.raises(ValueError, match="region"):
        deploy.stale(tmp_path)


# ---------------------------------------------------------------------------------------------
# The Flink configuration in the image and the FlinkDeployment is the cluster's
# ---------------------------------------------------------------------------------------------
# What only a machine-local cluster has, or has differently (its own paths, loopback, a port range).
LOCAL_ONLY = {"taskmanager.host", "blob.server.port", "env.pid.dir"}
PLACE_DEPENDENT = {
    "jobmanager.bind-host",
    "taskmanager.bind-host",
    "rest.address",
    "rest.bind-address",
    "state.backend.rocksdb.localdir",
    "io.tmp.dirs",
    "execution.checkpointing.dir",
    "execution.checkpointing.savepoint-dir",
    "python.executable",
    "python.client.executable",
    "metrics.reporter.prom.port",
}
# Set by the Flink Kubernetes Operator (addresses, ports, memory from the resources) or pointless
# there (fast heartbeats for a laptop cluster).
OPERATOR_OWNED = {
    "jobmanager.bind-host",
    "taskmanager.bind-host",
    "rest.address",
    "rest.bind-address",
    "jobmanager.rpc.address",
    "jobmanager.rpc.port",
    "jobmanager.memory.process.size",
    "taskmanager.memory.process.size",
    "rest.port",
    "heartbeat.interval",
    "heartbeat.timeout",
}


def cluster_settings(tmp_path: Path) -> dict[str, str]:
    return flink_settings("cluster", cluster=ClusterSettings(), cluster_home=tmp_path)


def assert_same_settings(
    container: dict[str, str], cluster: dict[str, str], may_lack: set[str]
) -> None:
    missing = set(cluster) - set(container) - LOCAL_ONLY - may_lack
    assert not missing, f"the containers lack cluster settings {sorted(missing)}"
    differ = {
        k: (container[k], cluster[k])
        for k in set(cluster) & set(container)
        if container[k] != cluster[k] and k not in PLACE_DEPENDENT
    }
    assert not differ, f"settings differ from `cluster start`'s: {differ}"


def test_the_image_runs_the_settings_cluster_start_uses(tmp_path: Path) -> None:
    config = image_config()
    assert_same_settings(config, cluster_settings(tmp_path), may_lack={"jobmanager.rpc.address"})
    assert config["metrics.reporter.prom.factory.class"] == PROMETHEUS_REPORTER
    assert config["python.execution-mode"] == "thread"
    assert config["execution.checkpointing.dir"].startswith("file:///flink-data/")
    assert "--add-opens" in config["env.java.opts.all"]  # Java 17 needs the distribution's


def test_the_flink_deployment_runs_the_settings_cluster_start_uses(tmp_path: Path) -> None:
    config = flink_deployment()["spec"]["flinkConfiguration"]
    assert all(isinstance(v, str) for v in config.values())
    assert_same_settings(config, cluster_settings(tmp_path), may_lack=OPERATOR_OWNED)
    assert config["metrics.reporter.prom.factory.class"] == PROMETHEUS_REPORTER
    assert config["high-availability.type"] == "kubernetes"


# ---------------------------------------------------------------------------------------------
# docker/Dockerfile
# ---------------------------------------------------------------------------------------------
def test_dockerfile_versions_are_the_locked_ones() -> None:
    text = dockerfile()
    steps = instructions(text)
    args = dict(a.split("=", 1) for kind, a in steps if kind == "ARG" and "=" in a)
    flink = lock()["apache-flink"]
    assert args["FLINK_IMAGE"] in (f"flink:{flink}-scala_2.12-java17", f"flink:{flink}-java17")
    froms = [a for kind, a in steps if kind == "FROM"]
    assert froms and all(a.startswith("${FLINK_IMAGE}") for a in froms)
    requires = re.search(r'requires-python = ">=(\d+\.\d+)', (ROOT / "pyproject.toml").read_text())
    assert requires and args["PYTHON_VERSION"].rsplit(".", 1)[0] == requires.group(1)
    assert re.fullmatch(r"[0-9a-f]{64}", args["PYTHON_SHA256"])
    assert "sha256sum -c" in text and "${PYTHON_SHA256}" in text
    # Every pip pin written in the Dockerfile is the lock's, and the lock is what pip installs.
    for name, version in re.findall(r"([A-Za-z0-9_.-]+)==([0-9][^\s\"';]*)", text):
        assert lock()[deploy.normalise(name)] == version, name
    runs = " ".join(a for kind, a in steps if kind == "RUN")
    assert "pip install" in runs and "-r /opt/profilestream/requirements.lock" in runs
    assert any(k == "COPY" and a.startswith("requirements.lock ") for k, a in steps)


def test_dockerfile_connector_jars_are_the_local_ones() -> None:
    text = dockerfile()
    downloads = dict(re.findall(r"wget -nv -O (\S+\.jar) (https://\S+\.jar);", text))
    digests = {name: sha for sha, name in re.findall(r'"([0-9a-f]{64})  (\S+\.jar)"', text)}
    assert downloads == {jar.name: jar.maven_url for jar in CONNECTORS}
    assert all(url.startswith("https://repo1.maven.org/maven2/") for url in downloads.values())
    assert digests == CONNECTOR_JARS  # the digests `profilestream setup` verifies
    env = " ".join(a for kind, a in instructions(text) if kind == "ENV")
    jar_dir = re.search(r"PROFILESTREAM_JAR_DIR=(\S+)", env)
    assert jar_dir and f"mkdir -p {jar_dir.group(1)}; cd {jar_dir.group(1)};" in text


def test_dockerfile_image_runs_as_flink_with_the_flink_entry_point() -> None:
    steps = instructions(dockerfile())
    users = [a for kind, a in steps if kind == "USER"]
    assert users[-1] == "flink"
    assert not [kind for kind, _ in steps if kind in ("ENTRYPOINT", "CMD")]  # the Flink image's
    config = image_config()
    venv = PurePosixPath(config["python.executable"]).parent.parent
    assert any(kind == "RUN" and f"-m venv {venv};" in a for kind, a in steps)
    copies = {a.split()[-1] for kind, a in steps if kind == "COPY"}
    for package in ("udfs", "flink_jobs", "schemas", "models"):
        assert f"{IMAGE_PROJECT}/{package}" in copies
    assert "docker/flink/config.yaml /opt/flink/conf/config.yaml" in " ".join(a for _, a in steps)


def test_no_secret_reaches_flink_logs() -> None:
    quiet = (DOCKER / "flink" / "log4j-quiet-secrets.properties").read_text()
    assert re.search(r"\.name = org\.apache\.flink\.client\.python\.PythonEnvUtils\n", quiet)
    assert re.search(r"\.level = WARN\n", quiet)
    text = dockerfile()
    assert "for f in /opt/flink/conf/log4j*.properties" in text
    assert 'cat /tmp/log4j-quiet-secrets.properties >> "$f"' in text


# ---------------------------------------------------------------------------------------------
# docker/compose.yaml
# ---------------------------------------------------------------------------------------------
def test_compose_file_follows_the_compose_specification() -> None:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendor.joinpath("compose-spec.json").read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    document = compose()
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(document)]
    assert errors == []
    document["services"]["kafka"]["health_check"] = {}  # a typo is caught
    assert list(validator.iter_errors(document))


def test_compose_runs_the_whole_stack() -> None:
    svc = services()
    images = {name: s.get("image", "") for name, s in svc.items()}
    assert images["kafka"].startswith("apache/kafka:")
    kafka_env = svc["kafka"]["environment"]
    assert set(kafka_env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}  # KRaft
    assert not [name for name in svc if "zookeeper" in name]
    assert images["postgres"].startswith("postgres:")
    # The embedded server's settings (flink_jobs.ops.services.SERVER_SETTINGS).
    pg_command = svc["postgres"]["command"]
    assert pg_command[0] == "postgres" and pg_command[1::2] == ["-c"] * len(SERVER_SETTINGS)
    assert dict(a.split("=", 1) for a in pg_command[2::2]) == SERVER_SETTINGS
    assert flink_processes("jobmanager") == ["jobmanager"]
    assert len(flink_processes("taskmanager")) == 2
    assert images["prometheus"].startswith("prom/prometheus:")
    assert images["grafana"].startswith("grafana/grafana:")
    ours = [name for name, s in svc.items() if s.get("image") == deploy.project_image()]
    for name in ours:
        assert svc[name]["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert {"db-migrate", "submit", "jobmanager", *flink_processes("taskmanager")} <= set(ours)
    topic = svc["kafka-init"]["command"]
    assert option(topic, "--topic") == DEFAULT_TOPIC and "--if-not-exists" in topic
    after = svc["submit"]["depends_on"]
    assert after["db-migrate"]["condition"] == "service_completed_successfully"
    assert after["kafka-init"]["condition"] == "service_completed_successfully"
    assert after["jobmanager"]["condition"] == "service_healthy"
    for name in ("db-migrate", "kafka-init", "submit"):
        assert svc[name]["restart"] == "no"


def test_compose_migration_is_a_profilestream_command() -> None:
    from flink_jobs.cli import data
    from flink_jobs.cli.parser import build_parser

    command = services()["db-migrate"]["command"]
    assert command[0] == "profilestream"
    args = build_parser().parse_args(command[1:])
    assert args.handler is data.cmd_db and args.db_command == "migrate"
    _, job = entry_arguments(submit_command())
    assert args.pg_dsn == job.pg_dsn  # the job writes where the schema was migrated


def test_compose_submits_the_job_with_arguments_its_parser_accepts() -> None:
    svc = services()
    flink_options, job = entry_arguments(submit_command())
    assert flink_options[0] == "run" and "-d" in flink_options
    assert option(flink_options, "-m") == "jobmanager:8081"
    slots = int(image_config()["taskmanager.numberOfTaskSlots"])
    assert int(option(flink_options, "-p")) == slots * len(flink_processes("taskmanager"))
    python = image_config()["python.executable"]
    assert option(flink_options, "-pyexec") == option(flink_options, "-pyclientexec") == python
    # Kafka and PostgreSQL are the compose services; no password travels as an argument.
    host, port = job.kafka_bootstrap.split(":")
    assert (
        host == "kafka"
        and f"INTERNAL://kafka:{port}" in svc["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    )
    assert job.jdbc_url.startswith("jdbc:postgresql://postgres:5432/")
    assert ":" not in job.pg_dsn.split("//", 1)[1].split("@", 1)[0]
    # The model and the segmentation are the repository's, at their place in the image.
    model = PurePosixPath(job.model_dir.as_posix()).relative_to(IMAGE_PROJECT)
    assert (ROOT / model / "metadata.json").is_file()
    segments = PurePosixPath(job.segments_dir.as_posix()).relative_to(IMAGE_PROJECT)
    assert (ROOT / segments / "segmentation.json").is_file()
    # Every TaskManager has the pseudonym key at the path the job names.
    key = PurePosixPath(str(job.pseudonym_key_file))
    assert key.parent == PurePosixPath("/run/secrets")
    for name in flink_processes("taskmanager"):
        assert key.name in svc[name]["secrets"]


def test_compose_secrets_are_files() -> None:
    document = compose()
    for name, secret in document["secrets"].items():
        assert set(secret) == {"file"} and secret["file"].startswith("./secrets/"), name
    for name, svc in document["services"].items():
        env = svc.get("environment", {})
        assert "PGPASSWORD" not in env, name
        for var, value in env.items():
            if re.search(r"PASSWORD|KEY", var):
                assert var.endswith("_FILE"), (name, var)
                path = PurePosixPath(value)
                assert path.parent == PurePosixPath("/run/secrets"), (name, var)
                assert path.name in svc["secrets"], (name, var)
    assert services()["submit"]["environment"]["PROFILESTREAM_PG_PASSWORD_FILE"]
    assert "docker/secrets/" in (ROOT / ".gitignore").read_text().splitlines()


def test_prometheus_scrapes_every_flink_process() -> None:
    config = load(DOCKER / "prometheus" / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {t for sc in jobs["flink"]["static_configs"] for t in sc["targets"]}
    port = image_config()["metrics.reporter.prom.port"]
    processes = flink_processes("jobmanager") + flink_processes("taskmanager")
    assert targets == {f"{name}:{port}" for name in processes}
    mounts = services()["prometheus"]["volumes"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_grafana_is_provisioned_with_the_dashboards() -> None:
    mounts = dict(v.split(":")[:2] for v in services()["grafana"]["volumes"] if v.startswith("./"))
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    provisioning = DOCKER / "grafana" / "provisioning"
    datasources = load(provisioning / "datasources" / "prometheus.yaml")["datasources"]
    (source,) = datasources
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = load(provisioning / "dashboards" / "profilestream.yaml")["providers"]
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    dashboards = DOCKER / "grafana" / "dashboards"
    assert dashboards.is_dir()
    for path in dashboards.glob("*.json"):  # the metrics work commits the dashboard here
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        assert "__inputs" not in dashboard, f"{path.name}: provisioning cannot resolve __inputs"
        variables = {
            v["name"]
            for v in dashboard.get("templating", {}).get("list", [])
            if v.get("type") == "datasource"
        }
        for uid in re.findall(r'"datasource":\s*\{[^{}]*"uid":\s*"([^"]+)"', path.read_text()):
            assert uid == source["uid"] or uid.strip("${}") in variables, (path.name, uid)


# ---------------------------------------------------------------------------------------------
# docker/k8s
# ---------------------------------------------------------------------------------------------
def pod(component: str) -> dict[str, Any]:
    return flink_deployment()["spec"][component]["podTemplate"]


def main_container(component: str) -> dict[str, Any]:
    (container,) = [
        c for c in pod(component)["spec"]["containers"] if c["name"] == "flink-main-container"
    ]
    return container


def mounted_volume(component: str, path: PurePosixPath) -> tuple[str, dict[str, Any]]:
    """(the mount path, the volume) of the mount of `component` holding `path`."""
    volumes = {v["name"]: v for v in pod(component)["spec"]["volumes"]}
    for mount in main_container(component)["volumeMounts"]:
        if path.is_relative_to(mount["mountPath"]):
            return mount["mountPath"], volumes[mount["name"]]
    raise AssertionError(f"{component} mounts nothing at {path}")


def test_flink_deployment_runs_the_python_job_with_savepoint_upgrades() -> None:
    document = flink_deployment()
    assert document["apiVersion"] == "flink.apache.org/v1beta1"
    assert document["kind"] == "FlinkDeployment"
    spec = document["spec"]
    flink = lock()["apache-flink"]
    major, minor = (int(x) for x in flink.split(".")[:2])
    declared = re.fullmatch(r"v(\d+)_(\d+)", spec["flinkVersion"])
    assert declared and int(declared.group(1)) == major and int(declared.group(2)) <= minor
    assert spec["image"] == deploy.project_image() == services()["jobmanager"]["image"]
    job = spec["job"]
    assert job["upgradeMode"] == "savepoint" and job["state"] == "running"
    assert job["entryClass"] == "org.apache.flink.client.python.PythonDriver"
    assert job["jarURI"] == f"local:///opt/flink/opt/flink-python-{flink}.jar"
    options, config = entry_arguments(job["args"])
    python = spec["flinkConfiguration"]["python.executable"]
    assert option(options, "-pyexec") == option(options, "-pyclientexec") == python
    assert ":" not in config.pg_dsn.split("//", 1)[1].split("@", 1)[0]
    model = PurePosixPath(config.model_dir.as_posix()).relative_to(IMAGE_PROJECT)
    assert (ROOT / model / "metadata.json").is_file()
    segments = PurePosixPath(config.segments_dir.as_posix()).relative_to(IMAGE_PROJECT)
    assert (ROOT / segments / "segmentation.json").is_file()
    assert job["parallelism"] >= 1


def test_flink_deployment_keeps_its_state_on_the_shared_claim() -> None:
    config = flink_deployment()["spec"]["flinkConfiguration"]
    claim = load(DOCKER / "k8s" / "storage.yaml")
    assert claim["kind"] == "PersistentVolumeClaim"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every Flink pod writes to it
    for key in (
        "execution.checkpointing.dir",
        "execution.checkpointing.savepoint-dir",
        "high-availability.storageDir",
    ):
        uri = config[key]
        assert uri.startswith("file:///"), key
        for component in ("jobManager", "taskManager"):
            _, volume = mounted_volume(component, PurePosixPath(uri.removeprefix("file://")))
            assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


def test_flink_deployment_mounts_its_secrets_as_files() -> None:
    secret = load(DOCKER / "k8s" / "secret.template.yaml")
    _, config = entry_arguments(flink_deployment()["spec"]["job"]["args"])
    env = {e["name"]: e for e in main_container("jobManager").get("env", [])}
    password_file = PurePosixPath(env["PROFILESTREAM_PG_PASSWORD_FILE"]["value"])
    needs = {
        "jobManager": password_file,  # the job's client (PythonDriver) builds the JDBC sink here
        "taskManager": PurePosixPath(str(config.pseudonym_key_file)),  # the workers read the key
    }
    for component, path in needs.items():
        mount, volume = mounted_volume(component, path)
        assert volume["secret"]["secretName"] == secret["metadata"]["name"]
        key = str(path.relative_to(mount))
        assert [item["key"] for item in volume["secret"]["items"]] == [key]
        assert key in secret["stringData"]
        for e in main_container(component).get("env", []):
            assert "valueFrom" not in e, e  # never a secret in the environment
    # The template's placeholder key is refused by the workers (too short to be a key).
    assert len(secret["stringData"]["pseudonym-key"].encode()) < MIN_KEY_BYTES


def test_flink_deployment_reports_to_prometheus_as_non_root() -> None:
    document = flink_deployment()
    config = document["spec"]["flinkConfiguration"]
    assert config["metrics.reporter.prom.factory.class"] == PROMETHEUS_REPORTER
    for component in ("jobManager", "taskManager"):
        ports = {p["name"]: p["containerPort"] for p in main_container(component)["ports"]}
        assert str(ports["metrics"]) == config["metrics.reporter.prom.port"]
        security = pod(component)["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == deploy.FLINK_UID
    monitor = load(DOCKER / "k8s" / "podmonitor.yaml")
    assert monitor["spec"]["selector"]["matchLabels"] == {"app": document["metadata"]["name"]}
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
