"""The official-only and grounding example DAGs, run for real with dag.test(): simulator + GCS
emulator + SQLite Airflow. The simulator's ledger proves where every item's requests went."""

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
CHEAP = {"1K": 0.02, "2K": 0.02, "4K": 0.02}


def _load_dag(name: str):
    spec = importlib.util.spec_from_file_location(name, DAGS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def _connections(sim, monkeypatch, *, official: bool = True) -> None:
    # simulator stand-ins for Google direct and Vertex: official by their connection, as in `make demo`
    for conn_id, protocol, key, extra in [
        ("banana_relay", "openai", "relay-key", {"prices": CHEAP}),
        ("banana_gemini", "gemini", "gemini-key", {"official": official}),
        ("banana_vertex", "vertex", "vertex-token", {"official": official}),
    ]:
        monkeypatch.setenv(
            conn_env_var(conn_id), channel_connection(sim.base_url, protocol=protocol, key=key, **extra)
        )
    sim.set_faults("relay-key", FaultProfile(name="relay"))
    sim.set_faults("gemini-key", FaultProfile(name="gemini", overload_rate=0.5))  # a 503 storm
    sim.set_faults("vertex-token", FaultProfile(name="vertex", overload_rate=0.3))


def _write_manifest(storage, uri: str, items: list[dict]) -> None:
    storage.write_text(uri, "".join(json.dumps(i) + "\n" for i in items))


def test_compliance_dag_sends_nothing_to_the_relay_and_says_so(airflow_db, sim, gcs_bucket, monkeypatch):
    _connections(sim, monkeypatch)
    storage = open_storage()
    manifest = f"gs://{gcs_bucket}/manifests/leaflets.jsonl"
    items = [{"id": f"leaflet-{i}", "prompt": f"patient leaflet illustration {i}"} for i in range(6)]
    # an item cannot loosen the run's official_only
    items[0]["data_policy"] = "any"
    _write_manifest(storage, manifest, items)
    prefix = f"gs://{gcs_bucket}/leaflets"

    run = _load_dag("banana_compliance_catalog").test(
        run_conf={"manifest": manifest, "output_prefix": prefix}
    )
    assert run.state == "success"

    relay_calls = [r for r in sim.requests("relay") if r["method"] == "POST"]
    assert relay_calls == []  # not one generation request, not even a failed one, reached the relay
    assert {b["key_id"] for b in sim.billable()} <= {"gemini", "vertex"} and len(sim.billable()) == 6
    (report_uri,) = [u for u in storage.list(f"{prefix}/runs/") if u.endswith("report.json")]
    report = storage.read_json(report_uri)
    assert report["items"]["succeeded"] == 6
    assert report["policies"]["data_policy"]["official_only"] == 6
    assert set(report["policies"]["official_only_channels"]) <= {"banana_gemini", "banana_vertex"}
    assert "sent only to official Google channels" in storage.read_text(report_uri.replace(".json", ".md"))
    assert "official_only" in storage.read_text(report_uri.replace("report.json", "gallery.html"))
    for item in items:
        meta = storage.read_json(f"{prefix}/metadata/{item['id']}.json")
        assert meta["data_policy"] == "official_only" and meta["channel"] in (
            "banana_gemini",
            "banana_vertex",
        )


def test_compliance_dag_without_an_official_channel_fails_before_any_request(
    airflow_db, sim, gcs_bucket, monkeypatch, capfd
):
    _connections(sim, monkeypatch, official=False)  # as a relay on a non-Google host would be
    storage = open_storage()
    manifest = f"gs://{gcs_bucket}/manifests/leaflets-none.jsonl"
    _write_manifest(storage, manifest, [{"id": "leaflet-x", "prompt": "patient leaflet"}])
    prefix = f"gs://{gcs_bucket}/leaflets-none"

    run = _load_dag("banana_compliance_catalog").test(
        run_conf={"manifest": manifest, "output_prefix": prefix}
    )
    assert run.state == "failed"
    assert not [r for r in sim.requests() if r["method"] == "POST"] and not sim.billable()
    out, err = capfd.readouterr()
    assert "item 'leaflet-x' (data_policy official_only)" in out + err
    assert "can go to none of the realtime channels" in out + err


def test_grounded_dag_stores_search_queries_and_sources(airflow_db, sim, gcs_bucket, monkeypatch):
    _connections(sim, monkeypatch)
    storage = open_storage()
    manifest = f"gs://{gcs_bucket}/manifests/infographics.jsonl"
    items = [
        {"id": "rainfall", "prompt": "Infographic of average rainfall by month in Lisbon"},
        {"id": "bridges", "prompt": "Infographic of the longest suspension bridges"},
    ]
    _write_manifest(storage, manifest, items)
    prefix = f"gs://{gcs_bucket}/infographics"

    run = _load_dag("banana_grounded_infographics").test(
        run_conf={"manifest": manifest, "output_prefix": prefix}
    )
    assert run.state == "success"
    posts = [r for r in sim.requests() if r["method"] == "POST"]
    assert posts and all(r["tools"] == ["googleSearch"] for r in posts)
    assert {r["key_id"] for r in posts} <= {"gemini", "vertex"}  # the OpenAI relay cannot carry it
    for item in items:
        meta = storage.read_json(f"{prefix}/metadata/{item['id']}.json")
        assert meta["status"] == "succeeded" and meta["grounding"] == "google_search"
        grounding = meta["grounding_metadata"]
        assert grounding["web_search_queries"] and grounding["sources"]
        assert all(s["uri"] and s["title"] for s in grounding["sources"])
