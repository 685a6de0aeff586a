"""A real Airflow deployment on loopback, started and stopped by one context manager.

Why: ``dag.test()`` runs mapped task instances one after another in one process, so it cannot
show what users see when shards run at once on several workers sharing one quota (issue 14).
``Deployment`` starts Airflow's own components as subprocesses -- scheduler (LocalExecutor,
``parallelism`` 4), API server, DAG processor, triggerer -- on a throwaway ``AIRFLOW_HOME`` with
a SQLite metadata DB, next to redis-server (shared routing state), fake-gcs-server (storage) and
the Gemini simulator (in this process, so its ledger is read directly). DAG runs are triggered
and watched through the REST API (``/api/v2``, a token from the simple auth manager).

Why LocalExecutor and SQLite (docs/scaling.md): two Celery workers of concurrency 2 next to the
other components do not fit the 2 cores CI has; Airflow 3 accepts the LocalExecutor with SQLite
(task processes reach the DB only through the API server's execution API), so no Postgres.

Everything is stopped on exit, also on an exception, SIGTERM or SIGINT: each component runs in
its own session and its whole process group is terminated (then killed).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import httpx

from airflow_banana.testing import FaultProfile, Simulator, SimulatorConfig
from airflow_banana.testing.connections import channel_connection, conn_env_var
from airflow_banana.testing.gcs_emulator import GcsEmulator
from airflow_banana.testing.redis_fixtures import RedisServer, redis_server_binary

ROOT = Path(__file__).resolve().parent.parent
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
USER = "banana"
BUCKET = "banana-fleet"
PARALLELISM = 4


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DeploymentError(RuntimeError):
    """A component did not start or a run did not finish; the message names which and where its log is."""


class Deployment:
    """``with Deployment(channels) as d: run_id = d.trigger(dag_id, conf); d.wait(dag_id, run_id)``.

    :param channels: connection id -> (protocol, simulator key, connection extra, fault profile).
        Every channel connection gets ``redis_conn_id="banana_redis"`` so the fleet shares state.
    :param airflow_env: extra ``AIRFLOW__*`` settings for every component (e.g. task retries).
    """

    def __init__(
        self,
        channels: Mapping[str, tuple[str, str, Mapping[str, Any], FaultProfile]],
        *,
        work_dir: Path | None = None,
        airflow_env: Mapping[str, str] | None = None,
        simulator: SimulatorConfig | None = None,
    ) -> None:
        self.channels = dict(channels)
        self._own_dir = work_dir is None
        self.work_dir = work_dir or Path(tempfile.mkdtemp(prefix="banana-fleet-"))
        self.home = self.work_dir / "airflow"
        self.logs = self.work_dir / "logs"
        self.extra_env = dict(airflow_env or {})
        self.sim_config = simulator or SimulatorConfig()  # real quota minutes: the shipped defaults
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.api_port = 0
        self.env: dict[str, str] = {}
        self.redis: RedisServer | None = None
        self.gcs: GcsEmulator | None = None
        self.sim: Simulator | None = None
        self._client: httpx.Client | None = None
        self._saved_signals: dict[int, Any] = {}

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> Deployment:
        self._install_signal_handlers()
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _install_signal_handlers(self) -> None:
        def interrupted(signum: int, frame: FrameType | None) -> None:
            # Unwinds through __exit__, which stops every component.
            raise KeyboardInterrupt(f"signal {signum}")

        for signum in (signal.SIGTERM, signal.SIGINT):
            self._saved_signals[signum] = signal.signal(signum, interrupted)

    def start(self) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise DeploymentError("redis-server not found (apt-get install redis-server)")
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(binary, self.work_dir / "redis")
        self.redis.directory.mkdir(exist_ok=True)
        self.redis.start()
        self.gcs = GcsEmulator(backend="memory").start()  # this process writes the shards
        self.gcs.create_bucket(BUCKET)
        self.sim = Simulator(self.sim_config).start()
        for _conn_id, (_protocol, key, _extra, profile) in self.channels.items():
            self.sim.set_faults(key, profile)
        self.api_port = _free_port()
        self.env = self._airflow_env()
        self._migrate()
        for name in COMPONENTS:
            self._spawn(name)
        self._wait_api()

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            self._terminate(name)
        if self._client is not None:
            self._client.close()
            self._client = None
        for part in (self.sim, self.gcs):
            if part is not None:
                part.stop()
        if self.redis is not None:
            self.redis.stop()
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        for signum, handler in self._saved_signals.items():
            signal.signal(signum, handler)
        self._saved_signals.clear()

    # ------------------------------------------------------------ components

    def _airflow_env(self) -> dict[str, str]:
        assert self.redis and self.gcs and self.sim
        passwords = self.home / "passwords.json"
        passwords.write_text(json.dumps({USER: secrets.token_urlsafe(16)}))
        api = f"http://127.0.0.1:{self.api_port}"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(PARALLELISM),
            # only the DAG a run triggers is unpaused: the scheduled example DAGs stay out
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__WORKERS": "1",  # two cores: one API worker process
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.logs / "tasks"),
            "STORAGE_EMULATOR_HOST": self.gcs.endpoint,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            conn_env_var("banana_redis"): json.dumps(
                {"conn_type": "redis", "host": "127.0.0.1", "port": self.redis.port, "extra": {"db": 0}}
            ),
        }
        env.pop("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", None)  # the test suite's, not ours
        for conn_id, (protocol, key, extra, _profile) in self.channels.items():
            env[conn_env_var(conn_id)] = channel_connection(
                self.sim.base_url, protocol=protocol, key=key, redis_conn_id="banana_redis", **extra
            )
        env.update(self.extra_env)
        return env

    def _airflow(self, *args: str, timeout_s: float = 180.0) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if done.returncode != 0:
            raise DeploymentError(f"`airflow {' '.join(args)}` failed: {done.stderr[-2000:]}")
        return done.stdout

    def _migrate(self) -> None:
        self._airflow("db", "migrate")

    def _spawn(self, name: str) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        try:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "airflow", name],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopping it stops its children
            )
        finally:
            log.close()

    def _terminate(self, name: str, grace_s: float = 15.0) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace_s)
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever of the group is left
        process.wait(timeout=10)

    def restart(self, name: str) -> None:
        """Stop one component (SIGTERM, then SIGKILL) and start it again."""
        self._terminate(name)
        self._spawn(name)

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    # ------------------------------------------------------------ REST API

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def _wait_api(self, timeout_s: float = 120.0) -> None:
        limit = time.monotonic() + timeout_s
        while time.monotonic() < limit:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise DeploymentError(f"airflow {name} exited at start: {self.log_tail(name)}")
            try:
                if httpx.get(f"{self.api}/api/v2/monitor/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise DeploymentError(f"API server not up in {timeout_s:g} s: {self.log_tail('api-server')}")
        password = json.loads((self.home / "passwords.json").read_text())[USER]
        token = httpx.post(
            f"{self.api}/auth/token", json={"username": USER, "password": password}, timeout=10
        )
        token.raise_for_status()
        self._client = httpx.Client(
            base_url=f"{self.api}/api/v2",
            headers={"Authorization": f"Bearer {token.json()['access_token']}"},
            timeout=30,
        )

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            raise DeploymentError("the deployment is not started")
        return self._client

    def wait_dag(self, dag_id: str, timeout_s: float = 120.0) -> None:
        """Until the DAG processor has parsed ``dag_id`` (the API knows it)."""
        limit = time.monotonic() + timeout_s
        while time.monotonic() < limit:
            if self.client.get(f"/dags/{dag_id}").status_code == 200:
                return
            time.sleep(1.0)
        raise DeploymentError(f"DAG {dag_id} not parsed in {timeout_s:g} s: {self.log_tail('dag-processor')}")

    def trigger(self, dag_id: str, conf: Mapping[str, Any]) -> str:
        self.wait_dag(dag_id)
        unpaused = self.client.patch(f"/dags/{dag_id}", json={"is_paused": False})
        if unpaused.status_code >= 300:
            raise DeploymentError(f"unpausing {dag_id} failed: HTTP {unpaused.status_code} {unpaused.text}")
        answer = self.client.post(f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": dict(conf)})
        if answer.status_code >= 300:
            raise DeploymentError(f"triggering {dag_id} failed: HTTP {answer.status_code} {answer.text}")
        return str(answer.json()["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        answer = self.client.get(f"/dags/{dag_id}/dagRuns/{run_id}")
        answer.raise_for_status()
        return str(answer.json()["state"])

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        answer = self.client.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
        answer.raise_for_status()
        return list(answer.json()["task_instances"])

    def wait(self, dag_id: str, run_id: str, timeout_s: float = 1800.0, poll_s: float = 2.0) -> str:
        """Poll until the run is finished; its final state."""
        limit = time.monotonic() + timeout_s
        while time.monotonic() < limit:
            state = self.run_state(dag_id, run_id)
            if state in ("success", "failed"):
                return state
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise DeploymentError(f"airflow {name} died during {run_id}: {self.log_tail(name)}")
            time.sleep(poll_s)
        raise DeploymentError(f"{dag_id} run {run_id} not finished in {timeout_s:g} s")

    def task_pid(self, ti_id: str) -> int | None:
        """The pid of the task process running task instance ``ti_id`` (its title names the id)."""
        title = f"airflow worker -- {ti_id}"
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cmdline.strip() == title:
                return int(entry.name)
        return None


@contextmanager
def deployment(
    channels: Mapping[str, tuple[str, str, Mapping[str, Any], FaultProfile]], **options: Any
) -> Iterator[Deployment]:
    with Deployment(channels, **options) as running:
        yield running
