"""Output Assets: one spelling per prefix, default outlets per operator, events as the SDK sends them."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Asset, AssetAlias
from airflow.sdk.execution_time.context import OutletEventAccessors
from airflow.sdk.execution_time.task_runner import _serialize_outlet_events

from airflow_banana.operators.assets import default_outlets, output_asset, record_run_event, scalar_fields


def _dag(dag_id: str = "d") -> DAG:
    return DAG(dag_id=dag_id, schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"))


def test_one_asset_per_prefix_whatever_the_spelling(tmp_path):
    assert output_asset("gs://b/catalog/") == output_asset(" gs://b/catalog")
    assert output_asset("gs://b/catalog").name == output_asset("gs://b/catalog").uri == "gs://b/catalog"
    local = output_asset(str(tmp_path / "out") + "/")
    assert local.uri == (tmp_path / "out").resolve().as_uri() and local.name == local.uri


def test_static_prefix_gets_its_asset_templated_prefix_an_alias():
    assert default_outlets("gs://b/c", dag_id="d", task_id="t") == [output_asset("gs://b/c")]
    assert default_outlets("{{ params.p }}", dag_id="d", task_id="t") == [AssetAlias("banana-output:d.t")]


def test_events_as_the_task_runner_serializes_them():
    events = OutletEventAccessors()
    user, alias = Asset(uri="s3://user/asset", name="user"), AssetAlias("banana-output:d.t")
    extra = {"run_key": "k", "items": {"succeeded": 2}, "spent_usd": 0.1}
    record_run_event(
        {"outlet_events": events}, [user, alias, "not an asset"], output_prefix="gs://b/c/", extra=extra
    )
    sent = list(_serialize_outlet_events(events))
    assert {"dest_asset_key": {"name": "user", "uri": "s3://user/asset"}, "extra": extra} in sent
    (via_alias,) = [e for e in sent if e.get("source_alias_name") == "banana-output:d.t"]
    assert via_alias["dest_asset_key"] == {"name": "gs://b/c", "uri": "gs://b/c"}
    assert via_alias["extra"] == extra
    record_run_event({}, [user], output_prefix="gs://b/c", extra=extra)  # no accessor: nothing to do


def test_operators_add_their_output_asset_unless_told_not_to():
    from airflow_banana.operators import PlanImagesOperator, RealtimeImageOperator, SignatureEditOperator

    other = Asset(uri="s3://x/y", name="y")
    with _dag():
        rt = RealtimeImageOperator(task_id="rt", manifest="m", output_prefix="gs://b/c", channels=["a"])
        tpl = RealtimeImageOperator(
            task_id="tpl", manifest="m", output_prefix="{{ params.p }}", channels=["a"], outlets=[other]
        )
        off = RealtimeImageOperator(
            task_id="off", manifest="m", output_prefix="gs://b/c", channels=["a"], emit_output_asset=False
        )
        edit = SignatureEditOperator(task_id="edit", channels=["a"], output_prefix="gs://b/e", session_id="s")
        plan = PlanImagesOperator(task_id="plan", manifest="m", output_prefix="gs://b/c", channels=["a"])
    assert rt.outlets == [output_asset("gs://b/c")]
    assert tpl.outlets == [other, AssetAlias("banana-output:d.tpl")]
    assert off.outlets == [] and plan.outlets == []  # a plan lands no images
    assert edit.outlets == [output_asset("gs://b/e")]


def test_scalar_fields_keep_an_extra_small():
    assert scalar_fields({"a": 1, "b": "x", "c": None, "d": [1], "e": {"f": 1}, "g": 0.5, "h": True}) == {
        "a": 1,
        "b": "x",
        "c": None,
        "g": 0.5,
        "h": True,
    }
