"""A real Flink standalone cluster on this machine, from the distribution inside the apache-flink
wheel (`pyflink/bin`): a JobManager and N TaskManagers as separate processes, configured by the
project (RocksDB, checkpoints, restart strategy, loopback only), and job submission with
`flink run`.

    profilestream cluster start --taskmanagers 2
    profilestream submit --bootstrap ... --pg-dsn ...        # flink run -pym flink_jobs.job.entry
    profilestream cluster status | stop
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flink_jobs.config import PROJECT_ROOT, ClusterSettings, environment
from flink_jobs.ops.flink_config import flink_settings
from flink_jobs.ops.runtime import Java, connector_jars, find_java, site_packages
from udfs.errors import ClusterError


def flink_home() -> Path:
    import pyflink

    return Path(pyflink.__file__).resolve().parent


@dataclass
class LocalCluster:
    """A standalone cluster laid out under `home` (config, logs, pids, checkpoints, savepoints)."""

    home: Path = field(default_factory=lambda: environment().state_dir / "cluster")
    settings: ClusterSettings = field(default_factory=ClusterSettings)

    @property
    def rest_port(self) -> int:
        return self.settings.rest_port

    conf_dir = property(lambda self: self.home / "conf")
    checkpoint_dir = property(lambda self: self.home / "checkpoints")
    savepoint_dir = property(lambda self: self.home / "savepoints")
    log_dir = property(lambda self: self.home / "log")

    @property
    def url(self) -> str:
        """The JobManager's REST endpoint: this machine's, or `settings.jobmanager`."""
        return f"http://{self.settings.address}"

    def flink_settings(self) -> dict[str, str]:
        return flink_settings("cluster", cluster=self.settings, cluster_home=self.home)

    def environment(self, java: Java) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            FLINK_CONF_DIR=str(self.conf_dir),
            FLINK_LOG_DIR=str(self.log_dir),
            FLINK_PID_DIR=str(self.home / "pids"),
            FLINK_LIB_DIR=str(self.home / "lib"),
            USER=_user(),  # names the pid and log files; unset in some containers
            JAVA_HOME=str(java.home),
            # Thread mode runs Python inside the TaskManager JVM: it needs our packages.
            PYTHONPATH=os.pathsep.join([str(PROJECT_ROOT), site_packages()]),
        )
        return env

    def write_config(self) -> None:
        if self.conf_dir.exists():
            shutil.rmtree(self.conf_dir)
        shutil.copytree(flink_home() / "conf", self.conf_dir)
        for sub in ("log", "pids", "tmp", "checkpoints", "savepoints"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        # The distribution's lib/ plus flink-python from opt/ (the JobManager must know the
        # Python operators), as Flink's docs ask for Python jobs on a cluster.
        lib = self.home / "lib"
        if lib.exists():
            shutil.rmtree(lib)
        lib.mkdir()
        jars = [
            *(flink_home() / "lib").glob("*.jar"),
            *(flink_home() / "opt").glob("flink-python-*.jar"),
        ]
        for jar in jars:
            (lib / jar.name).symlink_to(jar)
        (self.conf_dir / "config.yaml").write_text(
            config_yaml(self.flink_settings()), encoding="utf-8"
        )
        for log_config in self.conf_dir.glob("log4j*.properties"):
            with log_config.open("a", encoding="utf-8") as fh:
                fh.write(QUIET_SECRETS)

    def _script(self, name: str, *args: str, java: Java) -> None:
        proc = subprocess.run(
            [str(flink_home() / "bin" / name), *args],
            env=self.environment(java),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode != 0:
            raise ClusterError(
                f"{name} {' '.join(args)} failed: {(proc.stderr or proc.stdout).strip()[-400:]}"
            )

    def rest(self, path: str, method: str = "GET", body: Any = None, timeout: float = 5) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")

    def running(self) -> bool:
        try:
            self.rest("/overview", timeout=1)
            return True
        except OSError:
            return False

    def start(self, taskmanagers: int = 1, timeout_s: float = 60) -> dict[str, Any]:
        if self.running():
            raise ClusterError(
                f"a Flink cluster already answers on {self.url}: "
                "`profilestream cluster stop` it first, or use --rest-port"
            )
        java = find_java()
        self.write_config()
        self._script("jobmanager.sh", "start", java=java)
        for _ in range(taskmanagers):
            self.add_taskmanager(java)
        return self.wait_for_taskmanagers(taskmanagers, timeout_s)

    def add_taskmanager(self, java: Java | None = None) -> None:
        self._script("taskmanager.sh", "start", java=java or find_java())

    def wait_for_taskmanagers(self, n: int, timeout_s: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        overview: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                overview = self.rest("/overview", timeout=2)
                # A TaskManager is listed before its slots are: wait for both, or a job
                # submitted now may find too few slots.
                slots = n * self.settings.slots_per_taskmanager
                if overview.get("taskmanagers", 0) >= n and overview.get("slots-total", 0) >= slots:
                    return overview
            except OSError:
                pass
            time.sleep(0.5)
        raise ClusterError(
            f"{n} TaskManager(s) did not register within {timeout_s:.0f} s "
            f"(overview: {overview}); see the logs in {self.log_dir}"
        )

    def _daemons(self, daemon: str) -> list[tuple[int, int]]:
        """(index, pid) of each live `daemon` process ("taskexecutor", "standalonesession"):
        flink-daemon.sh numbers a process's log by its line in the pid file."""
        pid_file = self.home / "pids" / f"flink-{_user()}-{daemon}.pid"
        if not pid_file.exists():
            return []
        return [
            (index, int(line))
            for index, line in enumerate(pid_file.read_text().split())
            if line.isdigit() and _alive(int(line))
        ]

    def _logs(self, daemon: str, index: int) -> list[Path]:
        return sorted(self.log_dir.glob(f"flink-*-{daemon}-{index}-*.log"))

    def taskmanager_pids(self) -> list[int]:
        return [pid for _, pid in self._daemons("taskexecutor")]

    def metrics_endpoints(self) -> list[MetricsEndpoint]:
        """Where each live process of this cluster serves its Prometheus metrics: the port it
        took from `settings.metrics_ports`, which Flink's reporter logs at start-up (None when the
        log names none: the range was taken, see the log)."""
        out = []
        for daemon, process in (
            ("standalonesession", "jobmanager"),
            ("taskexecutor", "taskmanager"),
        ):
            for index, pid in self._daemons(daemon):
                port = next(filter(None, map(_reporter_port, self._logs(daemon, index))), None)
                url = f"http://127.0.0.1:{port}/metrics" if port else None
                out.append(MetricsEndpoint(process, pid, url))
        return out

    def kill_taskmanager(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)

    def busy_taskmanager_pid(self, task: str = "update profile and score") -> int | None:
        """The live TaskManager that most recently started `task` (from the TaskManager logs:
        flink-daemon.sh numbers each log by the TaskManager's line in the pid file)."""
        latest: tuple[str, int] | None = None
        for index, pid in self._daemons("taskexecutor"):
            for log in self._logs("taskexecutor", index):
                for entry in log.read_text(errors="replace").splitlines():
                    if task in entry and "switched from DEPLOYING to INITIALIZING" in entry:
                        stamp = entry[:23]
                        if latest is None or stamp > latest[0]:
                            latest = (stamp, pid)
        return latest[1] if latest else None

    def status(self) -> dict[str, Any]:
        overview = self.rest("/overview")
        jobs = self.rest("/jobs/overview").get("jobs", [])
        return {"overview": overview, "jobs": jobs}

    def stop(self) -> None:
        java = find_java()
        if (self.conf_dir / "config.yaml").exists():
            for name in ("taskmanager.sh", "jobmanager.sh"):
                with contextlib.suppress(ClusterError):
                    self._script(
                        name, "stop-all" if name == "taskmanager.sh" else "stop", java=java
                    )

    def submit(
        self,
        job_args: list[str],
        *,
        parallelism: int | None = None,
        from_savepoint: str | None = None,
        detached: bool = True,
        jobmanager: str | None = None,
        secrets: dict[str, str] | None = None,
    ) -> str:
        """`flink run` the profile job; returns the job id. `secrets` go to the client process as
        environment variables, never as arguments (which Flink logs and shows)."""
        java = find_java()
        connector_jars(verify=True)  # shipped by the job itself (pipeline.jars)
        cmd = [
            str(flink_home() / "bin" / "flink"),
            *flink_run_options(
                jobmanager or self.settings.address,
                detached=detached,
                parallelism=parallelism,
                from_savepoint=from_savepoint,
            ),
            *python_entry(sys.executable, job_args),
        ]
        env = {**self.environment(java), **(secrets or {})}
        # The client only builds the job graph; the workers read the key (udfs.pseudonym).
        env.pop("PROFILESTREAM_PSEUDONYM_KEY", None)
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT
        )
        output = proc.stdout + proc.stderr
        (self.log_dir / "last-submit.log").write_text(output, encoding="utf-8")
        for line in output.splitlines():
            if "Job has been submitted with JobID" in line:
                return line.rsplit(" ", 1)[-1].strip()
        raise ClusterError(f"flink run failed (exit {proc.returncode}): {_last_error(output)}")


ENTRY_MODULE = "flink_jobs.job.entry"


def flink_run_options(
    address: str,
    *,
    detached: bool = True,
    parallelism: int | None = None,
    from_savepoint: str | None = None,
) -> list[str]:
    """`flink run` and its own options (they go before the Python entry point's)."""
    options = ["run", "-m", address]
    if detached:
        options.append("-d")
    if parallelism:
        options += ["-p", str(parallelism)]
    if from_savepoint:
        options += ["-s", from_savepoint]
    return options


def python_entry(python: str, job_args: list[str]) -> list[str]:
    """The job's Python entry point and its arguments, as `flink run` and Flink's PythonDriver
    (the Kubernetes operator's entry class for Python jobs) take them."""
    return ["-pyexec", python, "-pyclientexec", python, "-pym", ENTRY_MODULE, *job_args]


@dataclass(frozen=True)
class MetricsEndpoint:
    process: str  # "jobmanager" or "taskmanager"
    pid: int
    url: str | None  # http://127.0.0.1:<port>/metrics; None: the process serves none


# What Flink's PrometheusReporter logs once it listens (on every interface: the reporter takes
# only a port, and binds the wildcard address).
REPORTER_STARTED = re.compile(r"Started PrometheusReporter HTTP server on port (\d+)")


def _reporter_port(log: Path) -> int | None:
    with log.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            found = REPORTER_STARTED.search(line)
            if found:
                return int(found[1])
    return None


# Flink's PythonEnvUtils logs, at INFO, the whole environment of every Python process it starts
# (`flink run`'s Python driver included): PGPASSWORD and the pseudonym key with it.
QUIET_SECRETS = """
# ProfileStream: PythonEnvUtils logs the full environment of the Python processes it starts,
# secrets included; keep it to warnings.
logger.profilestream_python_env.name = org.apache.flink.client.python.PythonEnvUtils
logger.profilestream_python_env.level = WARN
"""


def config_yaml(settings: dict[str, str]) -> str:
    """Flink's config.yaml (flat keys) for `settings`, plus the JVM options the distribution's own
    config.yaml sets."""
    lines = [f"{key}: {json.dumps(value)}" for key, value in settings.items()]
    java_opts = _java_opts(flink_home() / "conf" / "config.yaml")
    if java_opts:
        lines.append(f"env.java.opts.all: {json.dumps(java_opts)}")
    return "\n".join(lines) + "\n"


def _java_opts(config: Path) -> str:
    """The JVM options the distribution's own config.yaml sets (module opens for Java 17+)."""
    text = config.read_text(encoding="utf-8")
    marker = "all: "
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(marker) and "--add-opens" in stripped:
            return stripped[len(marker) :]
    return ""


def _user() -> str:
    import getpass

    return getpass.getuser()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _last_error(output: str) -> str:
    lines = output.splitlines()
    python = [
        line.strip()
        for line in lines
        if line.startswith(("Traceback", "  File"))
        or (line and line[0].isalpha() and ("Error" in line.split(":")[0]))
    ]
    if python:
        return python[-1]
    causes = [line.strip() for line in lines if "Caused by:" in line]
    if causes:
        return causes[-1]
    tail = [line for line in lines if line.strip()]
    return " | ".join(tail[-3:]) if tail else "no output"


def stop_with_savepoint(
    cluster: LocalCluster, job_id: str, target: Path | None = None, timeout_s: float = 120
) -> str:
    """Stop a job with a savepoint through the REST API (PyFlink 2.3's JobClient call is broken);
    returns the savepoint path."""
    body = {
        "drain": False,
        "targetDirectory": str((target or cluster.savepoint_dir).resolve()),
        "formatType": "CANONICAL",
    }
    trigger = cluster.rest(f"/jobs/{job_id}/stop", method="POST", body=body)["request-id"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = cluster.rest(f"/jobs/{job_id}/savepoints/{trigger}")
        if status["status"]["id"] == "COMPLETED":
            operation = status["operation"]
            if "location" in operation:
                return str(operation["location"])
            raise ClusterError(f"savepoint failed: {operation.get('failure-cause', operation)}")
        time.sleep(0.5)
    raise ClusterError(f"the savepoint of job {job_id} did not complete in {timeout_s:.0f} s")


def latest_checkpoint(cluster: LocalCluster, job_id: str) -> str | None:
    """The newest retained checkpoint of a job (to resubmit from after a cancel)."""
    root = cluster.checkpoint_dir / job_id
    done = sorted(
        (p for p in root.glob("chk-*") if (p / "_metadata").exists()),
        key=lambda p: int(p.name.split("-")[1]),
    )
    return str(done[-1]) if done else None
