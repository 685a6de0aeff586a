"""The model-tier example DAG, run for real with dag.test(): simulator + GCS emulator + SQLite
Airflow. The simulator's ledger says which model drew each image."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from airflow_banana.storage.objects import open_storage
from airflow_banana.testing import FaultProfile
from airflow_banana.testing.connections import channel_connection, conn_env_var

pytestmark = pytest.mark.system
DAGS = Path(__file__).resolve().parents[2] / "dags"
FLASH = "gemini-2.5-flash-image"
PRO = "gemini-3-pro-image-preview"


def _load_dag(name: str):
    spec = importlib.util.spec_from_file_location(name, DAGS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def test_tiered_dag_sends_1k_items_to_flash_and_keeps_2k_and_exact_text_on_pro(
    airflow_db, sim, gcs_bucket, monkeypatch
):
    monkeypatch.setenv(
        conn_env_var("banana_gemini"),
        channel_connection(sim.base_url, protocol="gemini", key="gemini-key", models={FLASH: {}}),
    )
    sim.set_faults("gemini-key", FaultProfile(name="gemini"))
    storage = open_storage()
    manifest = f"gs://{gcs_bucket}/manifests/tiered.jsonl"
    items = [{"id": f"thumb-{i}", "prompt": f"thumbnail of product {i}"} for i in range(4)]
    items += [
        {"id": "hero", "prompt": "hero shot of product 0", "image_size": "2K"},
        {"id": "label", "prompt": "a label reading 'No. 5'", "fallback_models": []},
    ]
    storage.write_text(manifest, "".join(json.dumps(i) + "\n" for i in items))
    prefix = f"gs://{gcs_bucket}/tiered"

    run = _load_dag("banana_tiered_catalog").test(run_conf={"manifest": manifest, "output_prefix": prefix})
    assert run.state == "success"

    billed = sorted((b["model"], b["image_size"]) for b in sim.billable())
    assert billed == sorted([(FLASH, "1K")] * 4 + [(PRO, "2K"), (PRO, "1K")])
    assert not [r for r in sim.requests() if FLASH in r["path"] and r["status"] != 200]  # no 2K 400s
    models = {i["id"]: storage.read_json(f"{prefix}/metadata/{i['id']}.json")["model"] for i in items}
    assert models == {**{f"thumb-{i}": FLASH for i in range(4)}, "hero": PRO, "label": PRO}
    (report_uri,) = [u for u in storage.list(f"{prefix}/runs/") if u.endswith("report.json")]
    report = storage.read_json(report_uri)
    assert report["models"] == {FLASH: 4, PRO: 2}
    assert report["cost"]["spent_usd"] == pytest.approx(4 * 0.039 + 2 * 0.134)
    assert "banana_gemini/gemini-2.5-flash-image" in report["channels"]
