"""Run the simulator for real: uvicorn on 127.0.0.1 in a background thread, on a free port.

``Simulator`` is what tests, benchmarks and users' DAG tests hold: a context manager exposing
``base_url``, fault control, the ledger and reset, all in-process (no HTTP needed to steer it).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import uvicorn

from airflow_banana.exceptions import ConfigurationError
from airflow_banana.testing.app import build_app
from airflow_banana.testing.config import FaultProfile, SimulatorConfig
from airflow_banana.testing.state import SimulatorState


class Simulator:
    """The Gemini simulator served over HTTP; use as ``with Simulator(config) as sim: ...``."""

    def __init__(
        self, config: SimulatorConfig | Mapping[str, Any] | None = None, *, modules: list[str] | None = None
    ):
        if config is None:
            config = SimulatorConfig()
        elif not isinstance(config, SimulatorConfig):
            config = SimulatorConfig.from_dict(config)
        self.config = config
        self.state = SimulatorState(config)
        self.app = build_app(self.state, modules)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise ConfigurationError(
                "simulator: not started; use 'with Simulator(...) as sim' or call start()"
            )
        return f"http://{self.config.host}:{self.port}"

    def start(self) -> Simulator:
        if self._server is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.config.host, self.config.port))
        except OSError as err:
            sock.close()
            raise ConfigurationError(
                f"simulator: cannot listen on {self.config.host}:{self.config.port} ({err.strerror}); "
                "another simulator may be running there — stop it, or pick a free port (--port 0 = any)"
            ) from err
        self._sock = sock
        self.port = sock.getsockname()[1]
        uv_config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
            timeout_keep_alive=30,
        )
        server = uvicorn.Server(uv_config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="gemini-simulator", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigurationError(
                    f"simulator: uvicorn did not start on {self.config.host}:{self.port}"
                )
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self.state.stopping = True  # releases hanging requests
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()
        self._server = None
        self._thread = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- steering -------------------------------------------------------------------------------
    def set_faults(self, key: str, profile: FaultProfile | Mapping[str, Any]) -> None:
        """Give ``key`` a fault profile from now on (its outage clock, quotas and RNG restart)."""
        self.state.faults.set_profile(key, FaultProfile.from_dict(profile))

    def set_default_faults(self, profile: FaultProfile | Mapping[str, Any]) -> None:
        """The profile of every key without its own."""
        self.state.faults.set_default(FaultProfile.from_dict(profile))

    def faults(self) -> dict[str, Any]:
        return self.state.faults.snapshot()

    def key_id(self, key: str) -> str:
        """The id the ledger uses for ``key``."""
        return self.state.key_id(key)

    def ledger(self) -> dict[str, list[dict[str, Any]]]:
        return self.state.ledger.snapshot()

    def requests(self, key_id: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.ledger()["requests"] if key_id is None or e["key_id"] == key_id]

    def billable(self, key_id: str | None = None) -> list[dict[str, Any]]:
        return self.state.ledger.billable(key_id)

    def reset(self, *, faults: bool = False) -> None:
        """Clear ledger, quotas and outage clocks; ``faults=True`` also restores start-up profiles."""
        self.state.reset(faults=faults)

    def __repr__(self) -> str:
        where = f"{self.config.host}:{self.port}" if self._server is not None else "stopped"
        return f"Simulator({where})"
