"""pytest plugin: a throwaway ``redis-server`` for tests of the shared routing state.

List it in ``pytest_plugins`` (or pass ``-p airflow_banana.testing.redis_fixtures``). The server
runs on a free loopback port with its data directory under a temporary path and no persistence.
Without the ``redis-server`` binary the tests that need it are skipped with the reason, except
when ``CI=true``: there a missing server is a broken CI image, so the tests fail instead of
silently shrinking the suite.

Fixtures:

* ``redis_server`` (session): one ``RedisServer`` shared by the session.
* ``redis_url``: that server's URL after ``FLUSHALL`` (each test starts from no state).
* ``redis_server_factory``: starts extra servers the test owns (e.g. to kill one mid-run);
  all are stopped at the end of the test.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from airflow_banana.exceptions import ConfigurationError


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1; ``with RedisServer() as server: server.url``."""

    def __init__(self, binary: str = "redis-server", directory: Path | None = None) -> None:
        self.binary = binary
        self._own_dir = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="banana-redis-"))
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        import redis

        fixed = self.port  # a restart comes back on the port the clients know
        for _ in range(1 if fixed else 5):  # a free port can be taken between probing and binding
            self.port = fixed or _free_port()
            log_path = self.directory / f"redis-{self.port}.log"
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(self.directory),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--logfile",
                    str(log_path),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + timeout_s
            client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    if client.ping():
                        client.close()
                        return self
                except redis.RedisError:
                    time.sleep(0.02)
            client.close()
            self.stop()
        raise ConfigurationError(
            f"redis-server ({self.binary}) did not start on a free port; see {self.directory}"
        )

    def stop(self) -> None:
        """Kill the server now (SIGKILL: a mid-run crash, no graceful shutdown)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self, down_s: float = 0.0) -> RedisServer:
        """Kill the server, stay down ``down_s``, start an empty one on the same port."""
        self.stop()
        time.sleep(down_s)
        return self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def redis_server_binary() -> str | None:
    return os.environ.get("REDIS_SERVER_BIN") or shutil.which("redis-server")


def _require_binary() -> str:
    binary = redis_server_binary()
    if binary is None:
        reason = (
            "redis-server not found on PATH (install the Debian package redis-server, or set "
            "REDIS_SERVER_BIN); the shared routing-state tests need a real Redis"
        )
        if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason)
    return binary


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    binary = _require_binary()
    server = RedisServer(binary, tmp_path_factory.mktemp("redis"))
    with server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def redis_server_factory(tmp_path: Path) -> Iterator[Callable[[], RedisServer]]:
    binary = _require_binary()
    servers: list[RedisServer] = []

    def start() -> RedisServer:
        server = RedisServer(binary, tmp_path / f"redis{len(servers)}")
        server.directory.mkdir(parents=True, exist_ok=True)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.close()
