"""The example batch DAGs, run for real with dag.test(): simulator + GCS emulator + SQLite Airflow.

dag.test() runs the trigger inline, so these runs really defer and resume.
"""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from airflow_banana.models import ImageRequest, expected_pixels
from airflow_banana.pricing import LIST_PRICES
from airflow_banana.storage.objects import open_storage
from airflow_banana.testing.connections import channel_connection, conn_env_var

pytestmark = pytest.mark.system
DAGS = Path(__file__).resolve().parents[2] / "dags"
ITEMS = [
    {"id": f"item-{i}", "prompt": f"catalog product number {i}", "aspect_ratio": ratio}
    for i, ratio in enumerate(["1:1", "4:3", "9:16", "16:9", "2:3"])
]


def _load_dag(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, DAGS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


@pytest.fixture
def connections(sim: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    sim.set_faults("batch-key", {"name": "batch", "batch": {"turnaround_s": 1.0, "pending_s": 0.1}})
    sim.set_faults("vertex-token", {"name": "vertex", "batch": {"turnaround_s": 1.0, "pending_s": 0.1}})
    monkeypatch.setenv(
        conn_env_var("banana_gemini_batch"),
        channel_connection(sim.base_url, protocol="gemini", key="batch-key"),
    )
    monkeypatch.setenv(
        conn_env_var("banana_vertex_batch"),
        channel_connection(sim.base_url, protocol="vertex", key="vertex-token"),
    )
    return sim


def _check_outputs(storage: Any, prefix: str, sim: Any) -> None:
    reports = [u for u in storage.list(f"{prefix}/runs/") if u.endswith("report.json")]
    assert len(reports) == 1
    report = storage.read_json(reports[0])
    assert report["lane"] == "batch" and report["items"]["succeeded"] == len(ITEMS)
    assert report["cost"]["spent_usd"] == pytest.approx(LIST_PRICES["batch"]["1K"] * len(ITEMS))
    assert report["batch_job"]["state"] == "SUCCEEDED"
    assert report["batch_job"]["ending"] == "ended SUCCEEDED"
    assert report["batch_job"]["harvested"] == len(ITEMS) and report["batch_job"]["missing_from_job"] == 0
    assert set(report["images"]) == {i["id"] for i in ITEMS}  # what the XCom carries too
    for item in ITEMS:
        meta = storage.read_json(f"{prefix}/metadata/{item['id']}.json")
        assert meta["status"] == "succeeded" and meta["lane"] == "batch"
        # a batch line's attempt started when the job was submitted
        assert meta["attempts"][0]["started_at"] == report["batch_job"]["submitted_at"] != ""
        with Image.open(io.BytesIO(storage.read_bytes(meta["image"]["uri"]))) as img:
            assert img.size == expected_pixels("1K", item["aspect_ratio"])
    billable = sim.billable()
    assert len(billable) == len(ITEMS) and {b["price_lane"] for b in billable} == {"batch"}
    expected = {ImageRequest(i["id"], i["prompt"], "1K", i["aspect_ratio"]).fingerprint() for i in ITEMS}
    assert {b["fingerprint"] for b in billable} == expected  # each image paid exactly once


def _asset_event_extra(prefix: str, run_id: str) -> dict[str, Any]:
    """The extra of the one event this DAG run recorded for the output prefix's Asset."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.uri == prefix, AssetEvent.source_run_id == run_id)
        ).all()
        assert len(events) == 1
        return dict(events[0].extra)


@pytest.mark.parametrize("dag_id", ["banana_batch_developer", "banana_batch_vertex"])
def test_example_batch_dag_defers_harvests_and_a_rerun_pays_nothing(
    airflow_db: Path, connections: Any, gcs_bucket: str, dag_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_banana.triggers.batch import BatchJobTrigger

    sim = connections
    trigger_runs: list[dict[str, Any]] = []
    original_run = BatchJobTrigger.run

    def spy(self: BatchJobTrigger) -> Any:
        trigger_runs.append(self.serialize()[1])
        return original_run(self)

    monkeypatch.setattr(BatchJobTrigger, "run", spy)
    storage = open_storage()
    manifest = f"gs://{gcs_bucket}/manifests/catalog.jsonl"
    storage.write_text(manifest, "".join(json.dumps(item) + "\n" for item in ITEMS))
    prefix = f"gs://{gcs_bucket}/catalog"
    conf = {
        "manifest": manifest,
        "output_prefix": prefix,
        "poll_interval_s": 0.2,
        "staging_prefix": f"gs://{gcs_bucket}/staging",
    }
    dag = _load_dag(dag_id)
    if dag_id == "banana_batch_developer":
        conf.pop("staging_prefix")

    run = dag.test(run_conf=conf)
    assert run.state == "success"
    assert len(trigger_runs) == 1  # the task really deferred, and the trigger got ids only
    assert set(trigger_runs[0]) == {"conn_id", "job_name", "poll_interval_s", "max_poll_failures", "end_time"}
    assert "key" not in json.dumps(trigger_runs[0]) and "token" not in json.dumps(trigger_runs[0])
    _check_outputs(storage, prefix, sim)
    # after the deferral the resumed task writes the gallery and records the prefix's Asset event
    (report_uri,) = [u for u in storage.list(f"{prefix}/runs/") if u.endswith("report.json")]
    assert storage.exists(report_uri.replace("report.json", "gallery.html"))
    extra = _asset_event_extra(prefix, run.run_id)
    assert extra["lane"] == "batch" and extra["report_uri"] == report_uri
    assert extra["items"]["succeeded"] == len(ITEMS)
    record = [u for u in storage.list(f"{prefix}/runs/") if u.endswith("batch_job.json")]
    assert len(record) == 1 and storage.read_json(record[0])["status"] == "harvested"

    rerun = dag.test(run_conf=conf)
    assert rerun.state == "success"
    assert len(sim.billable()) == len(ITEMS)  # every item was done: no job, nothing paid
    reports = [u for u in storage.list(f"{prefix}/runs/") if u.endswith("report.json")]
    assert sorted(storage.read_json(u)["items"]["skipped"] for u in reports) == [0, len(ITEMS)]
