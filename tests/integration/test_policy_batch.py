"""The batch lane with official-only and grounded items: BatchImageOperator against the simulator.

Developer Batch and Vertex are Google's own, so official-only items go there; a Gemini-native
relay as the batch channel is refused before anything is submitted. Grounded items carry the
Search tool inside the batch request and their grounding metadata lands in their metadata.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_banana.exceptions import NoEligibleChannelError
from airflow_banana.operators.batch import BatchImageOperator
from airflow_banana.testing.connections import channel_connection, conn_env_var

pytestmark = pytest.mark.integration
ITEMS = [
    {"id": "leaflet", "prompt": "Patient leaflet illustration", "data_policy": "official_only"},
    {"id": "chart", "prompt": "Infographic of rainfall by month", "grounding": "google_search"},
    {"id": "mug", "prompt": "Studio photo of a blue mug"},
]


def _context() -> Any:
    ti = SimpleNamespace(
        dag_id="dag_p", task_id="batch", run_id="manual__1", map_index=-1, xcom_push=lambda key, value: None
    )
    return {"ti": ti, "run_id": "manual__1", "logical_date": datetime(2026, 3, 1, tzinfo=UTC)}


def _operator(tmp_path: Path, channel: str) -> BatchImageOperator:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(i) + "\n" for i in ITEMS))
    return BatchImageOperator(
        task_id="batch",
        manifest=str(manifest),
        output_prefix=str(tmp_path / "out"),
        channel=channel,
        deferrable=False,
        poll_interval_s=0.1,
    )


def _creates(sim: Any) -> list[dict[str, Any]]:
    return [
        r for r in sim.requests() if r["method"] == "POST" and r["path"].endswith(":batchGenerateContent")
    ]


def test_developer_batch_takes_official_only_and_grounded_items(
    sim: Any, monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(
        conn_env_var("p_google"),
        channel_connection(sim.base_url, protocol="gemini", key="pkey", official=True),
    )
    sim.set_faults("pkey", {"name": "p", "batch": {"turnaround_s": 0.3, "pending_s": 0.05}})
    summary = _operator(tmp_path, "p_google").execute(_context())
    assert summary["items"]["succeeded"] == 3

    out = tmp_path / "out"
    meta = {i["id"]: json.loads((out / "metadata" / f"{i['id']}.json").read_text()) for i in ITEMS}
    assert meta["leaflet"]["data_policy"] == "official_only" and meta["mug"]["data_policy"] == "any"
    grounding = meta["chart"]["grounding_metadata"]
    assert meta["chart"]["grounding"] == "google_search"
    assert grounding["web_search_queries"] and grounding["sources"][0]["uri"].startswith("https://")
    assert "grounding_metadata" not in meta["mug"]
    report = json.loads((out / "runs/dag_p__batch__manual__1/report.json").read_text())
    assert report["policies"]["data_policy"] == {"any": 2, "official_only": 1}
    assert report["policies"]["grounded"] == 1
    assert "official_only" in (out / "runs/dag_p__batch__manual__1/report.md").read_text()
    assert "official_only" in (out / "runs/dag_p__batch__manual__1/gallery.html").read_text()


def test_a_relay_as_batch_channel_is_refused_before_anything_is_submitted(
    sim: Any, monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(
        conn_env_var("p_relay"), channel_connection(sim.base_url, protocol="gemini", key="rkey")
    )  # a Gemini-native relay: not official, no Search tool
    with pytest.raises(NoEligibleChannelError) as caught:
        _operator(tmp_path, "p_relay").execute(_context())
    assert caught.value.item_ids == ("leaflet", "chart")
    assert "item 'leaflet' (data_policy official_only)" in str(caught.value)
    assert not _creates(sim) and not sim.billable()


def test_rescue_sends_official_only_items_to_official_channels_only(
    sim: Any, monkeypatch, tmp_path: Path
) -> None:
    # The job fails with none of its lines done: every item is rescued through realtime, where a
    # cheap relay is first in cost order -- and still never gets the official-only item.
    monkeypatch.setenv(
        conn_env_var("p_google"),
        channel_connection(sim.base_url, protocol="gemini", key="pkey", official=True),
    )
    monkeypatch.setenv(
        conn_env_var("p_cheap"),
        channel_connection(
            sim.base_url, protocol="openai", key="ckey", prices={"1K": 0.02, "2K": 0.02, "4K": 0.02}
        ),
    )
    monkeypatch.setenv(
        conn_env_var("p_rescue"),
        channel_connection(sim.base_url, protocol="gemini", key="gkey", official=True),
    )
    sim.set_faults(
        "pkey",
        {
            "name": "p",
            "batch": {
                "turnaround_s": 0.3,
                "pending_s": 0.05,
                "final_state": "FAILED",
                "completed_fraction": 0.0,
            },
        },
    )
    sim.set_faults("ckey", {"name": "cheap"})
    sim.set_faults("gkey", {"name": "rescue"})
    op = _operator(tmp_path, "p_google")
    op.rescue_channels = ["p_cheap", "p_rescue"]
    summary = op.execute(_context())
    assert summary["items"]["succeeded"] == 3

    leaflet = json.loads((tmp_path / "out" / "metadata" / "leaflet.json").read_text())
    assert leaflet["data_policy"] == "official_only" and leaflet["channel"] == "p_rescue"
    chart = json.loads((tmp_path / "out" / "metadata" / "chart.json").read_text())
    assert chart["channel"] == "p_rescue" and chart["grounding_metadata"]["sources"]
    mug = json.loads((tmp_path / "out" / "metadata" / "mug.json").read_text())
    assert mug["channel"] == "p_cheap"  # the unrestricted item took the cheap relay
    on_cheap = {r["fingerprint"] for r in sim.requests("cheap") if r["fingerprint"]}
    assert on_cheap == {mug["request_fingerprint"]}
