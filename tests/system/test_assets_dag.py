"""Assets in a real Airflow run: the realtime example DAG's event lands in the metadata DB and
the scheduler creates the asset-triggered run of ``banana_catalog_published``.

``dag.test()`` runs the producer through Airflow's real task runner and execution API, which
record the outlet events (AssetEvent) and queue consumers (AssetDagRunQueue), but it starts no
scheduler, so it never creates the consumer's run. The test then runs the scheduler's own
run-creation step (``SchedulerJobRunner._create_dagruns_for_dags``, one pass of its loop) on
the same DB and checks the DagRun it created and the event it consumed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from airflow_banana.storage.objects import open_storage
from airflow_banana.testing.connections import channel_connection, conn_env_var

pytestmark = pytest.mark.system
DAGS = Path(__file__).resolve().parents[2] / "dags"
BUCKET = "banana-demo"  # the prefix banana_catalog_published is scheduled on
PREFIX = f"gs://{BUCKET}/catalog"
PRODUCER, CONSUMER = "banana_catalog_realtime", "banana_catalog_published"
ITEMS = [{"id": f"asset-{i}", "prompt": f"catalog product {i}"} for i in range(3)]


def _load_dag(name: str):
    spec = importlib.util.spec_from_file_location(name, DAGS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def _sync_and_unpause(dag_id: str) -> None:
    """What the DAG processor and ``airflow dags unpause`` do: DAGs into the DB, one unpaused."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import update

    manager = DagBundlesManager()
    manager.sync_bundles_to_db()
    for bundle in manager.get_all_dag_bundles():
        if not bundle.is_initialized:
            bundle.initialize()
        bag = BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name)
        sync_bag_to_db(bag, bundle.name, bundle.version)
    with create_session() as session:
        done = session.execute(update(DagModel).where(DagModel.dag_id == dag_id).values(is_paused=False))
        assert done.rowcount == 1, f"{dag_id} is not in the metadata DB"


def test_realtime_run_emits_its_output_asset_and_the_scheduler_triggers_the_consumer(
    airflow_db, sim, gcs_emulator, gcs_bucket, monkeypatch
):
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.asset import AssetDagRunQueue, AssetEvent, AssetModel
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from airflow.utils.sqlalchemy import prohibit_commit
    from airflow.utils.types import DagRunType
    from sqlalchemy import select

    for conn_id, protocol, key in [
        ("banana_relay", "openai", "relay-key"),
        ("banana_gemini", "gemini", "gemini-key"),
        ("banana_vertex", "vertex", "vertex-token"),
    ]:
        prices = {"1K": 0.05, "2K": 0.05, "4K": 0.05} if protocol == "openai" else None
        monkeypatch.setenv(
            conn_env_var(conn_id), channel_connection(sim.base_url, protocol=protocol, key=key, prices=prices)
        )
    gcs_emulator.create_bucket(BUCKET)
    storage = open_storage()
    manifest = f"gs://{gcs_bucket}/manifests/catalog.jsonl"
    storage.write_text(manifest, "".join(json.dumps(item) + "\n" for item in ITEMS))
    _sync_and_unpause(CONSUMER)
    with create_session() as session:
        before = {e.id for e in session.scalars(select(AssetEvent))}

    run = _load_dag(PRODUCER).test(
        run_conf={"manifest": manifest, "output_prefix": PREFIX, "budget_usd": 5.0}
    )
    assert run.state == "success"

    with create_session() as session:
        asset = session.scalar(select(AssetModel).where(AssetModel.uri == PREFIX))
        assert asset is not None and asset.name == PREFIX
        events = [
            e
            for e in session.scalars(select(AssetEvent).where(AssetEvent.asset_id == asset.id))
            if e.id not in before
        ]
        assert len(events) == 1, "one event per successful run"
        event = events[0]
        assert (event.source_dag_id, event.source_task_id, event.source_run_id) == (
            PRODUCER,
            "generate_images",
            run.run_id,
        )
        extra = event.extra
        assert extra["lane"] == "realtime" and extra["output_prefix"] == PREFIX
        assert extra["items"]["succeeded"] == len(ITEMS) and extra["items"]["failed"] == 0
        assert extra["spent_usd"] == pytest.approx(len(sim.billable()) * 0.05) and extra["spent_usd"] > 0
        assert storage.read_json(extra["report_uri"])["run_key"] == extra["run_key"]
        assert extra["gallery_uri"].endswith(f"/runs/{extra['run_key']}/gallery.html")
        assert storage.exists(extra["gallery_uri"])
        assert not any(k in json.dumps(extra) for k in ("relay-key", "gemini-key", "vertex-token"))
        queued = session.scalars(select(AssetDagRunQueue).where(AssetDagRunQueue.asset_id == asset.id)).all()
        assert [q.target_dag_id for q in queued] == [CONSUMER]
        link = session.scalar(
            select(XComModel.value).where(
                XComModel.dag_id == PRODUCER,
                XComModel.run_id == run.run_id,
                XComModel.key == "_link_GalleryLink",
            )
        )
        assert (
            link == f"https://storage.cloud.google.com/{BUCKET}/catalog/runs/{extra['run_key']}/gallery.html"
        )

    # One pass of the scheduler's run creation, as its loop does it.
    runner = SchedulerJobRunner(job=Job())
    with create_session() as session, prohibit_commit(session) as guard:
        runner._create_dagruns_for_dags(guard, session)
    with create_session() as session:
        created = session.scalars(
            select(DagRun).where(DagRun.dag_id == CONSUMER, DagRun.run_type == DagRunType.ASSET_TRIGGERED)
        ).all()
        assert len(created) == 1
        assert [e.id for e in created[0].consumed_asset_events] == [event.id]
        assert not session.scalars(
            select(AssetDagRunQueue).where(AssetDagRunQueue.asset_id == asset.id)
        ).all()
