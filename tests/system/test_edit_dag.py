"""The example DAG ``banana_edit_sessions`` runs end to end against the real simulator.

Mapped over a few products (the DAG's default is 100): ``photograph`` starts each session,
``edit`` — separate mapped task instances — resumes them from storage and applies three edits,
under the simulator's strict (Developer API) signature validation. Then the same DAG run again
for the same products pays only for the new edits: the start turns are recognised and skipped.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import pendulum
import pytest
from PIL import Image

from airflow_banana.storage.objects import open_storage
from airflow_banana.testing.connections import channel_connection, conn_env_var
from airflow_banana.testing.server import Simulator

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]


def _text_chunks(data: bytes) -> dict[str, Any]:
    with Image.open(io.BytesIO(data)) as img:
        return dict(getattr(img, "text", {}))


@pytest.fixture
def edit_dag(airflow_db: Path, sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv(
        conn_env_var("banana_gemini"), channel_connection(sim.base_url, protocol="gemini", key="k-dag-g")
    )
    monkeypatch.setenv(
        conn_env_var("banana_vertex"), channel_connection(sim.base_url, protocol="vertex", key="k-dag-v")
    )
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(Path(__file__).resolve().parents[2] / "dags"))
    assert not bag.import_errors
    return bag.dags["banana_edit_sessions"]


def _asset_event_extras(uri: str, run_id: str) -> list[dict[str, Any]]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.uri == uri, AssetEvent.source_run_id == run_id)
        ).all()
        return [dict(e.extra) for e in events]


def test_mapped_edit_sessions_dag(edit_dag: Any, sim: Simulator, tmp_path: Path) -> None:
    products = ["red sneaker", "teal mug", "amber lamp"]
    conf = {"products": products, "output_prefix": str(tmp_path), "budget_usd": 1.0}
    run = edit_dag.test(logical_date=pendulum.datetime(2026, 3, 1, tz="UTC"), run_conf=conf)
    assert run.state == "success"

    storage = open_storage(str(tmp_path))
    developer = sim.key_id("k-dag-g")
    billable = sim.billable()
    assert len(billable) == len(products) * 4  # 1 photograph + 3 edits per product
    assert all(b["key_id"] == developer for b in billable)  # the first channel served every turn
    for product in products:
        session_id = product.replace(" ", "-")
        doc = storage.read_json(str(tmp_path / "sessions" / session_id / "session.json"))
        turns = doc["turns"]
        assert [t["index"] for t in turns] == [1, 2, 3, 4]
        assert turns[1]["instruction"] == "Replace the background with a seamless pale-grey studio sweep."
        assert {t["run"]["task_id"] for t in turns} == {"photograph", "edit"}
        previous = None
        for turn in turns:
            image = storage.read_bytes(turn["image"]["uri"])
            assert hashlib.sha256(image).hexdigest() == turn["image"]["sha256"]
            assert _text_chunks(image).get("sim:parent_sha256") == previous  # an edit of the previous image
            previous = turn["image"]["sha256"]
        assert len(list(storage.list(str(tmp_path / "metadata" / session_id) + "/"))) == 4

    # Every mapped task instance recorded an event for the output prefix's Asset (through the
    # default alias: the prefix is templated), with its session's figures.
    extras = _asset_event_extras(tmp_path.resolve().as_uri(), run.run_id)
    assert sorted(e["session_id"] for e in extras) == sorted(p.replace(" ", "-") for p in products * 2)
    assert all(e["lane"] == "edit" and e["spent_usd"] > 0 for e in extras)

    # Another DAG run for the same products: the start turns are already stored (skipped), and
    # only the three new edits per product are paid.
    again = edit_dag.test(logical_date=pendulum.datetime(2026, 3, 2, tz="UTC"), run_conf=conf)
    assert again.state == "success"
    assert len(sim.billable()) == len(products) * 7
