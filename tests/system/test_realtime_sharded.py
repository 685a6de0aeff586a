"""The sharded example DAG under dag.test(): one mapped realtime task per manifest shard.

Real simulator over HTTP, local storage, SQLite Airflow. Proves that dynamic task mapping works
with ``RealtimeImageOperator`` (templated fields rendered per mapped instance, one report per
map index) and that the shards together pay for every image exactly once.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_banana.identity import RunIdentity
from airflow_banana.storage.objects import open_storage
from airflow_banana.testing import FaultProfile
from airflow_banana.testing.config import SimulatorConfig
from airflow_banana.testing.connections import channel_connection, conn_env_var
from airflow_banana.testing.server import Simulator

pytestmark = pytest.mark.system
DAGS = Path(__file__).resolve().parents[2] / "dags"
GENERATION_ROUTES = [
    "airflow_banana.testing.admin",
    "airflow_banana.testing.gemini_routes",
    "airflow_banana.testing.openai_compat",
]
SHARDS = 3
PER_SHARD = 4


def _load_dag(name: str):
    spec = importlib.util.spec_from_file_location(name, DAGS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


@pytest.fixture
def channels(monkeypatch) -> Iterator[Simulator]:
    with Simulator(SimulatorConfig(minute_s=1.0, day_s=10.0), modules=GENERATION_ROUTES) as sim:
        sim.set_faults("relay-key", FaultProfile.peak("relay", overload_rate=0.45, rate_limit_rate=0.0))
        sim.set_faults("gemini-key", FaultProfile(name="gemini"))
        sim.set_faults("vertex-token", FaultProfile(name="vertex"))
        for conn_id, protocol, key in [
            ("banana_relay", "openai", "relay-key"),
            ("banana_gemini", "gemini", "gemini-key"),
            ("banana_vertex", "vertex", "vertex-token"),
        ]:
            prices = {"1K": 0.05, "2K": 0.05, "4K": 0.05} if protocol == "openai" else None
            monkeypatch.setenv(
                conn_env_var(conn_id),
                channel_connection(sim.base_url, protocol=protocol, key=key, prices=prices, timeout=10),
            )
        yield sim


def test_one_mapped_task_per_shard_every_image_once(airflow_db, channels, tmp_path):
    sim = channels
    shards = tmp_path / "shards"
    shards.mkdir()
    ids = []
    for s in range(SHARDS):
        lines = []
        for i in range(PER_SHARD):
            item_id = f"s{s}-item{i}"
            ids.append(item_id)
            lines.append(json.dumps({"id": item_id, "prompt": f"catalog shard {s} product {i}"}) + "\n")
        (shards / f"part-{s:02d}.jsonl").write_text("".join(lines))
    (shards / "README.txt").write_text("not a shard")
    out = tmp_path / "out"
    dag = _load_dag("banana_catalog_sharded")

    conf = {"shards_prefix": str(shards) + "/", "output_prefix": str(out), "budget_usd_per_shard": 2.0}
    run = dag.test(run_conf=conf)
    assert run.state == "success"

    mapped = [ti for ti in run.get_task_instances() if ti.task_id == "generate_shard"]
    assert sorted(ti.map_index for ti in mapped) == list(range(SHARDS))
    assert all(ti.state == "success" for ti in mapped)
    storage = open_storage()
    reports = sorted(u for u in storage.list(str(out / "runs") + "/") if u.endswith("report.json"))
    assert len(reports) == SHARDS
    assert [r.split("/")[-2].rsplit("__", 1)[1] for r in reports] == [f"m{i}" for i in range(SHARDS)]
    for uri in reports:
        report = storage.read_json(uri)
        assert report["items"]["succeeded"] == PER_SHARD and report["items"]["failed"] == 0
    for item_id in ids:
        meta = storage.read_json(str(out / "metadata" / f"{item_id}.json"))
        assert meta["status"] == "succeeded" and storage.exists(meta["image"]["uri"])
    paid = [b["fingerprint"] for b in sim.billable()]
    assert len(paid) == len(set(paid)) == len(ids)  # nothing paid twice across shards


def _write_shards(shards: Path, parts: list[list[dict[str, str]]]) -> None:
    shards.mkdir()
    for s, items in enumerate(parts):
        (shards / f"part-{s:02d}.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))


def test_one_id_two_requests_across_shards_and_runs_fails_before_spend(airflow_db, channels, tmp_path):
    """Issue 15.1: an id under an output prefix names one image; another request for it fails
    that item before any spend (its shard fails after the report), and no rerun pays again."""
    sim = channels
    shards = tmp_path / "shards"
    _write_shards(
        shards,
        [
            [{"id": "sneaker-red", "prompt": "a red sneaker, studio light"}, {"id": "a-1", "prompt": "one"}],
            [{"id": "sneaker-red", "prompt": "a red sneaker on a beach"}, {"id": "b-1", "prompt": "two"}],
        ],
    )
    out = tmp_path / "out"
    dag = _load_dag("banana_catalog_sharded")
    conf = {"shards_prefix": str(shards) + "/", "output_prefix": str(out), "budget_usd_per_shard": 2.0}
    storage = open_storage()
    meta_uri = str(out / "metadata" / "sneaker-red.json")

    prompts = ["a red sneaker, studio light", "a red sneaker on a beach"]
    winner: int | None = None
    for attempt in range(2):
        run = dag.test(run_conf=conf)
        assert run.state == "failed"
        states = {ti.map_index: ti.state for ti in run.get_task_instances() if ti.task_id == "generate_shard"}
        # Airflow may run either shard first: the first to claim the id wins it, in every run
        assert sorted(states.values()) == ["failed", "success"]
        (won,) = (m for m, state in states.items() if state == "success")
        winner = won if winner is None else winner
        assert won == winner
        meta = storage.read_json(meta_uri)
        assert meta["prompt"] == prompts[winner]  # the winning shard's image stays
        if attempt == 0:
            image = storage.read_bytes(meta["image"]["uri"])
        assert storage.read_bytes(meta["image"]["uri"]) == image
        run_key = RunIdentity("banana_catalog_sharded", "generate_shard", run.run_id, 1 - winner).run_key
        loser = storage.read_json(str(out / "runs" / run_key / "report.json"))
        assert loser["items"]["succeeded" if attempt == 0 else "skipped"] == 1
        assert loser["items"]["failed"] == 1
        (failed,) = loser["failed_items"]
        assert failed["item_id"] == "sneaker-red" and "already names a different image" in failed["reason"]
        # three images bought in the first run, none in the second: nothing paid twice
        assert len(sim.billable()) == 3
