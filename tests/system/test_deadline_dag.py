"""The deadline-routing example DAG, run for real with dag.test(): plan, realtime + batch, rescue.

Simulator + GCS emulator + SQLite Airflow. The batch job is stuck (RUNNING forever after half its
lines), so the batch task must cancel it at its rescue point, keep what finished and generate
the rest through realtime — in time for the deadline, and without paying for any image twice.
dag.test() runs tasks one at a time in no fixed order, so the deadlines leave room for either
lane to go first.
"""

from __future__ import annotations

import importlib.util
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from airflow_banana.storage.objects import open_storage
from airflow_banana.testing import FaultProfile
from airflow_banana.testing.config import BatchProfile
from airflow_banana.testing.connections import channel_connection, conn_env_var

pytestmark = pytest.mark.system
DAGS = Path(__file__).resolve().parents[2] / "dags"
HEROES = [{"id": f"hero-{i}", "prompt": f"hero product {i}", "deadline": "+20s"} for i in range(2)]
BULK = [{"id": f"bulk-{i}", "prompt": f"catalog product {i}", "deadline": "+60s"} for i in range(4)]


def _load_dag(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, DAGS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


@pytest.fixture
def channels(sim: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    stuck = BatchProfile(stuck=True, completed_fraction=0.5, turnaround_s=0.4, pending_s=0.05)
    sim.set_faults("gemini-key", FaultProfile(name="gemini", batch=stuck))
    sim.set_faults("vertex-token", FaultProfile(name="vertex"))
    monkeypatch.setenv(
        conn_env_var("banana_gemini"), channel_connection(sim.base_url, protocol="gemini", key="gemini-key")
    )
    monkeypatch.setenv(
        conn_env_var("banana_vertex"), channel_connection(sim.base_url, protocol="vertex", key="vertex-token")
    )
    return sim


def test_mixed_manifest_is_routed_and_a_stuck_batch_is_rescued_in_time(
    airflow_db: Path, channels: Any, gcs_bucket: str
) -> None:
    sim = channels
    storage = open_storage()
    manifest = f"gs://{gcs_bucket}/manifests/mixed.jsonl"
    storage.write_text(manifest, "".join(json.dumps(item) + "\n" for item in HEROES + BULK))
    prefix = f"gs://{gcs_bucket}/catalog"
    logical_date = datetime.now(UTC)
    conf = {
        "manifest": manifest,
        "output_prefix": prefix,
        # Planned as of the logical date, batch "takes" 21 s: heroes (due +20 s) only fit
        # realtime, bulk (due +60 s) fits batch. The rescue point is then about +14 s
        # (60 s - ~1 s realtime needs - 45 s margin): whichever lane dag.test() runs first,
        # the other still makes its deadline.
        "plan_now": logical_date.isoformat(),
        "batch_turnaround": "21s",
        "realtime_latency": "1s",
        "rescue_margin": "45s",
        "poll_interval_s": 0.2,
    }
    run = _load_dag("banana_deadline_routing").test(logical_date=logical_date, run_conf=conf)
    assert run.state == "success"

    plans = [u for u in storage.list(f"{prefix}/runs/") if u.endswith("/plan/plan.json")]
    assert len(plans) == 1
    plan = storage.read_json(plans[0])
    lanes = {row["item_id"]: row["kind"] for row in plan["assignments"]}
    assert lanes == {**{h["id"]: "realtime" for h in HEROES}, **{b["id"]: "batch" for b in BULK}}
    assert plan["infeasible"] == []

    bulk_deadline = logical_date + timedelta(seconds=60)
    hero_deadline = logical_date + timedelta(seconds=20)
    rescue_point = bulk_deadline - timedelta(seconds=45)
    metas = {i["id"]: storage.read_json(f"{prefix}/metadata/{i['id']}.json") for i in HEROES + BULK}
    assert all(m["status"] == "succeeded" for m in metas.values())
    by_lane: dict[str, list[str]] = {}
    for item_id, meta in metas.items():
        by_lane.setdefault(meta["lane"], []).append(item_id)
        finished = datetime.fromisoformat(meta["written_at"])
        assert finished <= (hero_deadline if item_id.startswith("hero") else bulk_deadline), item_id
    # Half the stuck job's lines were harvested from the batch, the rest rescued through realtime.
    assert len(by_lane["batch"]) == 2 and all(i.startswith("bulk") for i in by_lane["batch"])
    rescued = sorted(set(metas) - set(by_lane["batch"]) - {h["id"] for h in HEROES})
    assert sorted(by_lane["batch-rescue"]) == rescued
    # Cancelled at its rescue point (plus the rescue itself), not left waiting for a stuck job.
    assert all(
        datetime.fromisoformat(metas[i]["written_at"]) <= rescue_point + timedelta(seconds=8) for i in rescued
    )

    batch_report = next(
        storage.read_json(u)
        for u in storage.list(f"{prefix}/runs/")
        if u.endswith("report.json") and "generate_batch" in u
    )
    assert batch_report["batch_job"]["state"] == "CANCELLED"
    assert batch_report["items"]["succeeded"] == len(BULK)
    # Issue 15.12: the report says what happened to the job, not only its final state.
    job = batch_report["batch_job"]
    assert "at its end time" in job["ending"] and "(its rescue point): cancelled" in job["ending"]
    assert (job["harvested"], job["missing_from_job"], job["rescued"]) == (2, 2, 2)
    md = storage.read_text(
        next(u for u in storage.list(f"{prefix}/runs/") if u.endswith("report.md") and "generate_batch" in u)
    )
    assert "## Batch job" in md and "2 image(s) harvested from the job ($0.1340)" in md
    assert "2 of them rescued through realtime ($0.2680)" in md

    billable = sim.billable()
    fingerprints = [b["fingerprint"] for b in billable]
    assert len(fingerprints) == len(HEROES) + len(BULK)
    assert len(set(fingerprints)) == len(fingerprints)  # nothing paid twice
    assert sorted(b["price_lane"] for b in billable).count("batch") == 2
    assert len(sim.ledger()["jobs"]) == 1

    history = storage.read_text(f"{prefix}/_banana/turnaround/developer.jsonl").splitlines()
    assert len(history) == 1 and json.loads(history[0])["censored"] is True


def _manifest_text(items: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(item) + "\n" for item in items)


def test_nightly_dag_routes_heroes_realtime_and_a_backfill_pays_only_for_what_is_missing(
    airflow_db: Path, sim: Any, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim.set_faults(
        "gemini-key", FaultProfile(name="gemini", batch=BatchProfile(turnaround_s=0.4, pending_s=0.05))
    )
    sim.set_faults("vertex-token", FaultProfile(name="vertex"))
    monkeypatch.setenv(
        conn_env_var("banana_gemini"), channel_connection(sim.base_url, protocol="gemini", key="gemini-key")
    )
    monkeypatch.setenv(
        conn_env_var("banana_vertex"), channel_connection(sim.base_url, protocol="vertex", key="vertex-token")
    )
    storage = open_storage()
    prefix = f"gs://{gcs_bucket}/catalog"
    manifests = f"gs://{gcs_bucket}/manifests"
    today = datetime.now(UTC).replace(microsecond=0)
    yesterday = today - timedelta(days=1)
    hero = {"id": "hero-a", "prompt": "hero product a", "deadline": "+7h"}
    shared = {"id": "item-b", "prompt": "catalog item b"}
    storage.write_text(
        f"{manifests}/{today.date().isoformat()}.jsonl",
        _manifest_text([hero, shared, {"id": "item-c", "prompt": "catalog item c"}]),
    )
    storage.write_text(
        f"{manifests}/{yesterday.date().isoformat()}.jsonl",
        _manifest_text([hero, shared, {"id": "item-d", "prompt": "catalog item d"}]),
    )
    conf = {"manifest_prefix": manifests, "output_prefix": prefix, "poll_interval_s": 0.2}
    dag = _load_dag("banana_nightly_catalog")

    assert dag.test(logical_date=today, run_conf=conf).state == "success"
    lanes = {
        i: storage.read_json(f"{prefix}/metadata/{i}.json")["lane"] for i in ("hero-a", "item-b", "item-c")
    }
    assert lanes == {"hero-a": "realtime", "item-b": "batch", "item-c": "batch"}
    assert len(sim.billable()) == 3

    # Backfill the day before: hero-a and item-b are done already; only item-d is generated.
    assert dag.test(logical_date=yesterday, run_conf=conf).state == "success"
    billable = sim.billable()
    assert len(billable) == 4
    assert len({b["fingerprint"] for b in billable}) == 4  # nothing paid twice
    assert storage.read_json(f"{prefix}/metadata/item-d.json")["status"] == "succeeded"
    plans = [storage.read_json(u) for u in storage.list(f"{prefix}/runs/") if u.endswith("/plan/plan.json")]
    assert sorted(p["summary"]["items"] for p in plans) == [1, 3]
    assert sorted(len(p["skipped_done"]) for p in plans) == [0, 2]
