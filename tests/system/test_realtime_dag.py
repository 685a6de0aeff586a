"""The example realtime DAG, run for real with dag.test(): simulator + GCS emulator + SQLite Airflow."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from airflow_banana.models import expected_pixels
from airflow_banana.storage.objects import open_storage
from airflow_banana.testing import FaultProfile
from airflow_banana.testing.connections import channel_connection, conn_env_var

pytestmark = pytest.mark.system
DAGS = Path(__file__).resolve().parents[2] / "dags"
ITEMS = [
    {"id": f"item-{i}", "prompt": f"catalog product number {i}", "aspect_ratio": ratio}
    for i, ratio in enumerate(["1:1", "4:3", "9:16", "21:9", "2:3", "16:9"])
]


def _load_dag(name: str):
    spec = importlib.util.spec_from_file_location(name, DAGS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


@pytest.fixture
def channels(sim, monkeypatch):
    sim.set_faults("relay-key", FaultProfile.peak("relay", overload_rate=0.45, rate_limit_rate=0.0))
    sim.set_faults("gemini-key", FaultProfile(name="gemini", overload_rate=0.1))
    sim.set_faults("vertex-token", FaultProfile(name="vertex"))
    for conn_id, protocol, key in [
        ("banana_relay", "openai", "relay-key"),
        ("banana_gemini", "gemini", "gemini-key"),
        ("banana_vertex", "vertex", "vertex-token"),
    ]:
        prices = {"1K": 0.05, "2K": 0.05, "4K": 0.05} if protocol == "openai" else None
        monkeypatch.setenv(
            conn_env_var(conn_id), channel_connection(sim.base_url, protocol=protocol, key=key, prices=prices)
        )
    return sim


KEYS = ("relay-key", "gemini-key", "vertex-token")


def test_example_dag_generates_every_image_once_and_a_rerun_pays_nothing(
    airflow_db, channels, gcs_bucket, capfd
):
    sim = channels
    storage = open_storage()
    manifest = f"gs://{gcs_bucket}/manifests/catalog.jsonl"
    storage.write_text(manifest, "".join(json.dumps(item) + "\n" for item in ITEMS))
    prefix = f"gs://{gcs_bucket}/catalog"
    dag = _load_dag("banana_catalog_realtime")

    run = dag.test(run_conf={"manifest": manifest, "output_prefix": prefix, "budget_usd": 5.0})
    assert run.state == "success"

    reports = [u for u in storage.list(f"{prefix}/runs/") if u.endswith("report.json")]
    assert len(reports) == 1
    report = storage.read_json(reports[0])
    assert report["items"]["succeeded"] == len(ITEMS) and report["items"]["failed"] == 0
    assert storage.exists(reports[0].replace("report.json", "report.md"))
    for item in ITEMS:
        meta = storage.read_json(f"{prefix}/metadata/{item['id']}.json")
        assert meta["status"] == "succeeded"
        with Image.open(io.BytesIO(storage.read_bytes(meta["image"]["uri"]))) as img:
            assert img.size == expected_pixels("1K", item["aspect_ratio"])
    billable = sim.billable()
    assert len(billable) == len(ITEMS)
    assert len({b["fingerprint"] for b in billable}) == len(ITEMS)  # nothing paid twice

    rerun = dag.test(run_conf={"manifest": manifest, "output_prefix": prefix, "budget_usd": 5.0})
    assert rerun.state == "success"
    assert len(sim.billable()) == len(ITEMS)  # the re-run skipped every finished item
    reports = [u for u in storage.list(f"{prefix}/runs/") if u.endswith("report.json")]
    assert len(reports) == 2
    skipped = sorted(storage.read_json(u)["items"]["skipped"] for u in reports)
    assert skipped == [0, len(ITEMS)]

    # FAULTS S8: no key in the task logs, the stored metadata/reports or the XCom summary.
    out, err = capfd.readouterr()
    assert "generate_images" in out + err  # the logs were captured
    for uri in storage.list(f"{prefix}/"):
        if not uri.endswith((".png", ".jpg")):
            text = storage.read_text(uri)
            assert not any(key in text for key in KEYS), uri
    assert not any(key in out + err for key in KEYS)
