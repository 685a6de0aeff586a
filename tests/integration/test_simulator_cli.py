"""``airflow-banana simulator`` serves in the foreground and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.integration]
ROOT = Path(__file__).parents[2]


def test_cli_serves_peak_profile_until_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "airflow_banana.cli", "simulator", "--port", "0", "--profile", "peak"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        base_url = line.split(" on ")[1].split()[0]
        faults = httpx.get(f"{base_url}/_simulator/faults", timeout=5).json()
        assert faults["default"]["overload_rate"] == 0.40
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_cli_says_so_when_the_port_is_taken(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 15.9: a friendly message and exit 2, not a traceback."""
    from airflow_banana.cli import main
    from airflow_banana.testing.server import Simulator

    with Simulator() as running:
        assert main(["simulator", "--port", str(running.port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{running.port}" in err and "--port 0" in err
    assert "Traceback" not in err


def test_gcs_emulator_helper_stops_its_fake_gcs_server_child_on_sigterm(tmp_path: Path) -> None:
    """Issue 15.9: under a process manager (SIGTERM) the child must not outlive the helper."""
    import psutil

    from airflow_banana.testing.gcs_emulator import _free_port

    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_banana.testing.gcs_emulator",
            "--root",
            str(tmp_path),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("export STORAGE_EMULATOR_HOST=")
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "fake-gcs-server was not started as a child"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0  # generous: the machine is shared
        _gone, alive = psutil.wait_procs(children, timeout=20)
        assert alive == []
    finally:
        if proc.poll() is None:
            proc.kill()
