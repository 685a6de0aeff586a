"""pytest plugin: one Gemini simulator per test session, clean for every test.

List it in ``pytest_plugins``. ``gemini_simulator`` is session-scoped (starting uvicorn once keeps
the suite fast); ``sim`` hands the same server to a test after resetting its ledger, quotas,
outage clocks and run-time fault profiles.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from airflow_banana.testing.config import SimulatorConfig
from airflow_banana.testing.server import Simulator


@pytest.fixture(scope="session")
def gemini_simulator() -> Iterator[Simulator]:
    with Simulator(SimulatorConfig(minute_s=1.0, day_s=10.0)) as simulator:
        yield simulator


@pytest.fixture
def sim(gemini_simulator: Simulator) -> Iterator[Simulator]:
    gemini_simulator.reset(faults=True)
    yield gemini_simulator
    gemini_simulator.reset(faults=True)
