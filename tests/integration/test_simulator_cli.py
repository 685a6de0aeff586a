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
