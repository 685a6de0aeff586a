"""BatchImageOperator's end time is the planner's rescue point, not a fixed margin; templated values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from airflow_banana.batch.lifecycle import BatchRun
from airflow_banana.batch.rescue import job_end_time
from airflow_banana.batch.state import BatchJobRecord, JobStateStore
from airflow_banana.channels.config import parse_channel
from airflow_banana.exceptions import ConfigurationError
from airflow_banana.identity import RunIdentity
from airflow_banana.manifests.prepare import PreparedManifest
from airflow_banana.models import ImageRequest
from airflow_banana.operators.batch import BatchImageOperator
from airflow_banana.planning.history import batch_backend_for_protocol
from airflow_banana.planning.inputs import realtime_capacities, rescue_point
from airflow_banana.realtime.engine import WorkItem
from airflow_banana.storage.objects import open_storage
from airflow_banana.storage.outputs import OutputStore
from airflow_banana.testing.connections import channel_connection, conn_env_var

NOW = datetime.now(UTC).replace(microsecond=0)
DEADLINE = NOW + timedelta(hours=6)


@pytest.fixture
def connections(monkeypatch):
    for conn_id in ("banana_gemini", "banana_vertex"):
        protocol = "gemini" if conn_id == "banana_gemini" else "vertex"
        monkeypatch.setenv(
            conn_env_var(conn_id),
            channel_connection("http://127.0.0.1:9", protocol=protocol, key="k-12345", rpm=6),
        )


def _job(n: int) -> tuple[BatchJobRecord, PreparedManifest]:
    work = [
        WorkItem(ImageRequest(f"i{k}", f"prompt {k}"), deadline=DEADLINE + timedelta(hours=k))
        for k in range(n)
    ]
    record = BatchJobRecord(
        run_key="r",
        identity={},
        fingerprint="f",
        backend="gemini",
        channel="banana_gemini",
        display_name="d",
        job_name="batches/1",
        item_ids=[w.request.item_id for w in work],
        submitted_at=NOW.isoformat(),
    )
    return record, PreparedManifest(uri="m", work=work, items=[], rejects_jsonl="", rejected=0)


def _operator(**kwargs: Any) -> BatchImageOperator:
    args: dict[str, Any] = {
        "task_id": "batch",
        "manifest": "m.jsonl",
        "channel": "banana_gemini",
        "rescue_channels": ["banana_gemini", "banana_vertex"],
        "rescue_margin": "10m",
        "rescue_latency": "30s",
    }
    args.update(kwargs)
    return BatchImageOperator(**args)


def _end_time(op: BatchImageOperator, record: BatchJobRecord, prepared: PreparedManifest, tmp: Any) -> float:
    """The end time the operator waits until, for this job of its run."""
    storage = open_storage(str(tmp))
    state = JobStateStore(storage, str(tmp), "r")
    run = BatchRun(RunIdentity("d", "t", "r"), OutputStore(storage, str(tmp)), prepared, "f", state)
    return job_end_time(record, run, job_timeout=op.job_timeout, rescue=op._rescue())


def test_end_time_is_the_rescue_point_of_the_earliest_deadline(connections, tmp_path):
    op = _operator(output_prefix=str(tmp_path))
    policy = op._policies()[0]
    assert policy.margin == timedelta(minutes=10) and policy.latency == timedelta(seconds=30)
    record, prepared = _job(300)
    vertex = {"protocol": "vertex", "rpm": 6, "project": "sim-project", "location": "us-central1"}
    configs = [
        parse_channel(
            "banana_gemini",
            host="http://127.0.0.1:9",
            password="k-12345",
            extra={"protocol": "gemini", "rpm": 6},
        ),
        parse_channel("banana_vertex", host="http://127.0.0.1:9", password="k-12345", extra=vertex),
    ]
    caps = realtime_capacities(configs, latency=timedelta(seconds=30))
    expected = rescue_point(DEADLINE, 300, caps, margin=timedelta(minutes=10))
    assert expected is not None
    assert _end_time(op, record, prepared, tmp_path) == pytest.approx(expected.timestamp())
    # 300 images at 12/min need well over a fixed 10-minute margin before the deadline.
    assert expected < DEADLINE - timedelta(minutes=30)
    # A smaller job may wait longer.
    small_record, small_prepared = _job(3)
    assert _end_time(op, small_record, small_prepared, tmp_path) > _end_time(op, record, prepared, tmp_path)


def test_without_rescue_channels_the_deadline_is_the_end_time(connections, tmp_path):
    op = _operator(rescue_channels=None, output_prefix=str(tmp_path))
    record, prepared = _job(5)
    # no margin without rescue
    assert _end_time(op, record, prepared, tmp_path) == pytest.approx(DEADLINE.timestamp())


def test_rescue_channels_without_capacity_wait_until_the_deadline(connections, tmp_path):
    # A channel that never succeeds cannot rescue anything: giving the batch up early would only
    # cost the batch its last chance.
    op = _operator(
        output_prefix=str(tmp_path), rescue_success_rates={"banana_gemini": 0.0, "banana_vertex": 0.0}
    )
    record, prepared = _job(5)
    assert _end_time(op, record, prepared, tmp_path) == pytest.approx(DEADLINE.timestamp())


def test_the_job_timeout_still_bounds_the_end_time(connections, tmp_path):
    op = _operator(output_prefix=str(tmp_path), job_timeout=timedelta(minutes=5))
    record, prepared = _job(3)
    expected = (NOW + timedelta(minutes=5)).timestamp()
    assert _end_time(op, record, prepared, tmp_path) == pytest.approx(expected)


def test_templated_margins_are_checked(tmp_path):
    with pytest.raises(ConfigurationError, match="rescue_margin"):
        _operator(rescue_margin="soon", output_prefix=str(tmp_path))
    with pytest.raises(ConfigurationError, match="rescue_latency"):
        _operator(rescue_latency="0s", output_prefix=str(tmp_path))
    with pytest.raises(ConfigurationError, match="rescue_latency"):
        _operator(rescue_latency="30", output_prefix=str(tmp_path))  # 30 what? a unit is required
    # A template is checked once rendered (execute / execute_complete read the policies).
    op = _operator(rescue_margin="{{ params.margin }}", output_prefix=str(tmp_path))
    op.rescue_margin = "soon"
    with pytest.raises(ConfigurationError, match="rescue_margin"):
        op._policies()
    op.rescue_margin, op.rescue_latency = "PT45S", "2s"
    policy = op._policies()[0]
    assert policy.margin == timedelta(seconds=45) and policy.latency == timedelta(seconds=2)
    # A timedelta literal shows up as str(timedelta) wherever Airflow serialized the field.
    op.rescue_margin, op.rescue_latency = str(timedelta(days=1, minutes=30)), "0:00:01.5"
    policy = op._policies()[0]
    assert policy.margin == timedelta(days=1, minutes=30) and policy.latency == timedelta(seconds=1.5)
    fields = BatchImageOperator.template_fields
    assert {"rescue_margin", "rescue_latency"} <= set(fields) and len(set(fields)) == len(fields)


def test_turnaround_history_is_kept_per_batch_backend():
    assert batch_backend_for_protocol("gemini") == "developer"
    assert batch_backend_for_protocol("vertex") == batch_backend_for_protocol("vertex") == "vertex"
    assert batch_backend_for_protocol("developer") == "developer"
    with pytest.raises(ConfigurationError, match="openai"):
        batch_backend_for_protocol("openai")
