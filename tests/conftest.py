"""Test-wide setup: an isolated Airflow home (SQLite) and the shipped pytest fixtures.

Airflow reads its configuration on first import, so the environment is set here, before any
test module imports Airflow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="banana-airflow-"))
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
# The example DAGs plus the test-only ones (tests/system/dags): dag.test() syncs DAGs from bundles.
_LOCAL_BUNDLE = "airflow.dag_processing.bundles.local.LocalDagBundle"
os.environ["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"] = json.dumps(
    [
        {"name": "dags-folder", "classpath": _LOCAL_BUNDLE, "kwargs": {}},
        {
            "name": "test-dags",
            "classpath": _LOCAL_BUNDLE,
            "kwargs": {"path": str(ROOT / "tests" / "system" / "dags")},
        },
    ]
)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

pytest_plugins = [
    "airflow_banana.testing.simulator_fixtures",
    "airflow_banana.testing.gcs_fixtures",
    "airflow_banana.testing.redis_fixtures",
]


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata DB for tests that run DAGs (dag.test())."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        capture_output=True,
        env=os.environ.copy(),
    )
    return _AIRFLOW_HOME


@pytest.fixture
def run_together() -> Callable[..., list[Any]]:
    """Run callables in threads released together by a barrier (races on purpose); results in order."""

    def run_all(*calls: Callable[[], Any]) -> list[Any]:
        barrier = threading.Barrier(len(calls))
        results: list[Any] = [_NOT_RUN] * len(calls)

        def run(i: int) -> None:
            barrier.wait()
            results[i] = calls[i]()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert _NOT_RUN not in results, "a racing call raised"
        return results

    return run_all


_NOT_RUN = object()
