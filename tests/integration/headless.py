"""Debian's headless Chromium, driven through its command line, for the gallery page tests.

``--dump-dom`` prints the DOM after the page's script ran, ``--screenshot`` keeps an image, and
``--enable-logging=stderr`` prints every console message (errors, CSP violations, uncaught
exceptions) as a ``CONSOLE`` line. Every network path is closed: the host resolver maps every
name to NOTFOUND and Chromium's background services are off, so nothing leaves the machine.
Imported by the test modules next to it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Screenshots a person can look at after a run; .gitignored.
ARTIFACTS = Path(os.environ.get("BANANA_TEST_ARTIFACTS", ROOT / ".test-artifacts"))
_CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\]? ?(.*)$")
_FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root in a container
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-features=OptimizationHints,MediaRouter,Translate",
    "--no-pings",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--enable-logging=stderr",
    "--v=0",
)


@dataclass(frozen=True)
class Page:
    dom: str
    console: list[str]  # every console message the page produced


def chromium() -> str:
    path = shutil.which("chromium")
    assert path, "Debian's chromium is not installed: apt-get install -y chromium (.ci/run does it)"
    return path


def _run(url: str, *extra: str, window: str = "1280,1000") -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="banana-chromium-") as profile:
        return subprocess.run(
            [chromium(), *_FLAGS, f"--user-data-dir={profile}", f"--window-size={window}", *extra, url],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )


def load(url: str) -> Page:
    """The DOM after the page's script ran, and the console messages it logged."""
    run = _run(url, "--dump-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    console = [m.group(1) for line in run.stderr.splitlines() if (m := _CONSOLE.search(line))]
    return Page(dom=run.stdout, console=console)


def screenshot(url: str, name: str, *, window: str = "1280,1000") -> Path:
    """A PNG of the page under ``ARTIFACTS`` (kept after the test for a person to look at)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    target = ARTIFACTS / name
    run = _run(url, f"--screenshot={target}", window=window)
    assert run.returncode == 0 and target.exists() and target.stat().st_size > 0, run.stderr[-2000:]
    return target
