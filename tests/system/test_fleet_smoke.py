"""The fleet bench's smoke test: the sharded example DAG on a real Airflow deployment.

Same code as ``make fleet`` (``bench/deployment.py``, ``bench/fleet.py``): scheduler with the
LocalExecutor, API server, DAG processor and triggerer as subprocesses, redis-server for the
shared routing state, fake-gcs-server and the simulator; the run triggered and polled through
the REST API. Two shards of a few items: both mapped task instances run at once, every image
is paid for once, no quota 429 of our own, and every component is gone after the block.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from datetime import datetime
from pathlib import Path

import pytest

from airflow_banana.testing.redis_fixtures import redis_server_binary

ROOT = Path(__file__).resolve().parents[2]


def _bench_package() -> None:
    """Import the repository's ``bench`` package: ``tests/bench`` (on sys.path through the
    tests' rootdir) would otherwise shadow it."""
    current = sys.modules.get("bench")
    if current is not None and Path(current.__file__ or "").parent == ROOT / "bench":
        return
    spec = importlib.util.spec_from_file_location(
        "bench", ROOT / "bench" / "__init__.py", submodule_search_locations=[str(ROOT / "bench")]
    )
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = package
    spec.loader.exec_module(package)


_bench_package()
Deployment = importlib.import_module("bench.deployment").Deployment
fleet = importlib.import_module("bench.fleet")

pytestmark = [pytest.mark.system, pytest.mark.timeout(240)]


def test_two_shards_at_once_on_a_real_deployment_pay_each_image_once() -> None:
    if redis_server_binary() is None:
        pytest.skip("redis-server not installed")
    with Deployment(fleet.channels(), airflow_env=fleet.AIRFLOW_ENV) as d:
        processes = list(d.processes.values())
        result = fleet.run_shards(d, items=6, shards=2, label="smoke")
        tis = [
            ti for ti in d.task_instances(fleet.DAG_ID, result.run_id) if ti["task_id"] == "generate_shard"
        ]
    assert result.state == "success", result
    assert (result.succeeded, result.lost, result.paid_twice, result.self_429) == (6, 0, 0, 0)
    assert result.within_caps and result.requests == 6
    assert sorted(ti["map_index"] for ti in tis) == [0, 1]
    spans = [(_at(ti["start_date"]), _at(ti["end_date"])) for ti in tis]
    assert max(s for s, _ in spans) < min(e for _, e in spans)  # the two shards ran at the same time
    assert all(p.poll() is not None for p in processes)  # everything stopped with the block


def _at(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
