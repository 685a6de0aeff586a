"""Issue 11's incidents, for real: `airflow dags test` of a shipped-defaults DAG over HTTP to the simulator.

The CI-sized part of ``bench/incidents.py`` (same code: ``run_ours``): 60 items, three channels
($0.05 Gemini-native relay with the incident, Google direct at $0.134 with 45 % 503, an
OpenAI-compatible relay at $0.20), calls of ~10 ms. Cost, images, paid twice and on time come
from the simulator's ledger and the written metadata, the ideal from the ledger's ground truth.
Checked to fail with ``objective="fastest"`` in the DAG (the cheap relay's four slots are busy,
so every other item goes to a dearer channel at once).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.incidents import LIMIT, Cell, airflow_home, run_ours

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    with airflow_home() as path:
        yield path


@pytest.mark.parametrize(
    "cell",
    [
        Cell("503_10pct", "fast", "90s"),  # (a) 10 % of the relay's calls 503, every item due in 90 s
        Cell("down_3s", "fast", "none"),  # (b) the relay down for its first 3 s, no deadline at all
    ],
    ids=lambda c: c.name,
)
def test_incident_costs_at_most_1_1x_its_ideal_with_every_image_once_and_on_time(
    cell: Cell, home: Path, tmp_path: Path
) -> None:
    row = run_ours(cell, home, tmp_path / "run")
    explain = f"{row['cell']}: {row['timeline']} events {row['events'][:10]} log {row['log']}"
    assert row["airflow_exit"] == 0, explain
    assert row["made"] == row["items"] == 60, explain
    assert row["on_time"] == row["items"], explain
    assert row["paid_twice"] == 0, explain
    assert row["ideal_plan"] == {"cheap": 60}  # the relay alone could make every image in time
    assert row["vs_ideal"] <= LIMIT, explain
    assert row["report_spent_usd"] == pytest.approx(row["spent_usd"])  # our report agrees with the ledger
