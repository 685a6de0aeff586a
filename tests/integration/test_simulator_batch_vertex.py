"""Vertex batch prediction through the unmodified google-genai SDK (``vertexai=True``), with the
simulator reading its input from, and writing ``predictions.jsonl`` to, the GCS emulator.

The SDK talks to the simulator; the test talks to the emulator with google-cloud-storage, as the
batch lane will. Each final state is checked for what a harvester sees: state, completion stats,
the output directory and the lines in it, and the ledger (batch lane, once per finished line).
"""

from __future__ import annotations

import json
import time
from typing import Any

import google.oauth2.credentials
import httpx
import pytest
from google import genai
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.genai import errors, types

from airflow_banana.models import ImageRequest
from airflow_banana.testing import BatchProfile, FaultProfile, Simulator

pytestmark = [pytest.mark.integration, pytest.mark.genai2, pytest.mark.timeout(60)]

MODEL = "gemini-3-pro-image-preview"
ACTIVE = ("JOB_STATE_PENDING", "JOB_STATE_RUNNING")
_CLIENTS: dict[tuple[str, str], Any] = {}


def vertex(sim: Simulator, token: str, profile: BatchProfile | None = None) -> Any:
    sim.set_faults(
        token, FaultProfile(name=token, batch=profile or BatchProfile(turnaround_s=0.5, pending_s=0.1))
    )
    if (sim.base_url, token) not in _CLIENTS:
        _CLIENTS[(sim.base_url, token)] = genai.Client(
            vertexai=True,
            project="sim-project",
            location="us-central1",
            credentials=google.oauth2.credentials.Credentials(token=token),
            http_options=types.HttpOptions(base_url=sim.base_url),
        )
    return _CLIENTS[(sim.base_url, token)]


def gcs() -> storage.Client:
    return storage.Client(credentials=AnonymousCredentials(), project="test")


def put_input(bucket: str, prompts: list[str], name: str = "in.jsonl") -> str:
    lines = [
        json.dumps(
            {
                "key": f"item-{i}",
                "request": {
                    "contents": [{"role": "user", "parts": [{"text": p}]}],
                    "generationConfig": {
                        "responseModalities": ["TEXT", "IMAGE"],
                        "imageConfig": {"imageSize": "1K"},
                    },
                },
            }
        )
        for i, p in enumerate(prompts)
    ]
    gcs().bucket(bucket).blob(name).upload_from_string("\n".join(lines) + "\n")
    return f"gs://{bucket}/{name}"


def wait_done(c: Any, name: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        job = c.batches.get(name=name)
        if job.state.name not in ACTIVE:
            return job
        assert time.monotonic() < deadline, f"{name} still {job.state.name}"
        time.sleep(0.05)


def predictions(directory: str) -> list[dict[str, Any]]:
    bucket, _, prefix = directory[len("gs://") :].partition("/")
    data = gcs().bucket(bucket).blob(f"{prefix}/predictions.jsonl").download_as_bytes()
    return [json.loads(line) for line in data.splitlines()]


def bills(sim: Simulator, job_name: str) -> list[dict[str, Any]]:
    return [b for b in sim.billable() if b["path"] == job_name]


def test_vertex_job_reads_gcs_and_writes_predictions(sim: Simulator, gcs_bucket: str) -> None:
    c = vertex(sim, "vx-a")
    prompts = ["a lantern", "a violin", "a comet"]
    src = put_input(gcs_bucket, prompts)
    job = c.batches.create(
        model=MODEL, src=src, config={"dest": f"gs://{gcs_bucket}/out/", "display_name": "vx run"}
    )
    prefix, _, job_id = job.name.rpartition("/")
    assert prefix.endswith("/locations/us-central1/batchPredictionJobs") and job_id.isdigit()
    assert job.state.name == "JOB_STATE_PENDING" and job.display_name == "vx run"
    done = wait_done(c, job.name)
    assert done.state.name == "JOB_STATE_SUCCEEDED"
    assert (done.completion_stats.successful_count, done.completion_stats.failed_count) == (3, 0)
    assert done.dest.gcs_uri == f"gs://{gcs_bucket}/out/" and done.src.gcs_uri == [src]
    directory = done.output_info.gcs_output_directory
    assert directory.startswith(f"gs://{gcs_bucket}/out/prediction-model-")
    lines = predictions(directory)
    assert [line["key"] for line in lines] == ["item-0", "item-1", "item-2"]
    for line in lines:
        assert line["status"] == "" and line["processed_time"] and line["request"]["contents"]
        response: Any = types.GenerateContentResponse.model_validate(line["response"])
        assert response.candidates[0].content.parts[-1].inline_data.data.startswith(b"\x89PNG")
    assert sorted(b["fingerprint"] for b in bills(sim, job.name)) == sorted(
        ImageRequest(item_id="", prompt=p, model=MODEL).fingerprint() for p in prompts
    )
    assert {b["price_lane"] for b in bills(sim, job.name)} == {"batch"}
    [created] = sim.ledger()["jobs"]
    assert (created["surface"], created["request_count"], created["source"]) == ("vertex", 3, src)
    # Get by bare numeric id works too, as the SDK allows.
    assert c.batches.get(name=job_id).name == job.name


@pytest.mark.parametrize(
    ("final", "state"),
    [
        ("FAILED", "JOB_STATE_FAILED"),
        ("EXPIRED", "JOB_STATE_EXPIRED"),
        ("CANCELLED", "JOB_STATE_CANCELLED"),
        ("PARTIALLY_SUCCEEDED", "JOB_STATE_PARTIALLY_SUCCEEDED"),
    ],
)
def test_vertex_final_states_keep_what_finished(
    sim: Simulator, gcs_bucket: str, final: str, state: str
) -> None:
    c = vertex(sim, f"vx-{final.lower()}", BatchProfile(turnaround_s=0.5, pending_s=0.0, final_state=final))
    job = c.batches.create(
        model=MODEL,
        src=put_input(gcs_bucket, [f"p{i}" for i in range(4)]),
        config={"dest": f"gs://{gcs_bucket}/out"},
    )
    done = wait_done(c, job.name)
    assert done.state.name == state
    lines = predictions(done.output_info.gcs_output_directory)
    stats = done.completion_stats
    if final == "PARTIALLY_SUCCEEDED":
        assert [line["status"] for line in lines] == ["", "Internal error encountered.", "", ""]
        assert "response" not in lines[1]
        assert (stats.successful_count, stats.failed_count, stats.incomplete_count) == (3, 1, 0)
    else:
        assert [line["key"] for line in lines] == ["item-0", "item-1"]
        assert (stats.successful_count, stats.failed_count, stats.incomplete_count) == (2, 0, 2)
    assert len(bills(sim, job.name)) == stats.successful_count
    if final == "FAILED":
        assert done.error.code == 13 and done.error.message


def test_vertex_cancel_mid_run(sim: Simulator, gcs_bucket: str) -> None:
    c = vertex(sim, "vx-cancel", BatchProfile(turnaround_s=2.0, pending_s=0.0))
    job = c.batches.create(
        model=MODEL,
        src=put_input(gcs_bucket, [f"c{i}" for i in range(10)]),
        config={"dest": f"gs://{gcs_bucket}/out"},
    )
    deadline = time.monotonic() + 5
    while (c.batches.get(name=job.name).completion_stats or types.CompletionStats()).successful_count in (
        None,
        0,
        1,
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    c.batches.cancel(name=job.name)
    done = c.batches.get(name=job.name)
    assert done.state.name == "JOB_STATE_CANCELLED"
    kept = predictions(done.output_info.gcs_output_directory)
    assert 2 <= len(kept) < 10 and done.completion_stats.incomplete_count == 10 - len(kept)
    assert len(bills(sim, job.name)) == len(kept)
    with pytest.raises(errors.ClientError) as err:
        c.batches.cancel(name=job.name)
    assert err.value.code == 400


def test_vertex_missing_input_fails_the_job(sim: Simulator, gcs_bucket: str) -> None:
    c = vertex(sim, "vx-missing")
    job = c.batches.create(
        model=MODEL, src=f"gs://{gcs_bucket}/nope.jsonl", config={"dest": f"gs://{gcs_bucket}/out"}
    )
    assert job.state.name == "JOB_STATE_FAILED"
    assert "nope.jsonl" in job.error.message and job.output_info is None
    assert bills(sim, job.name) == []


def test_vertex_stuck_and_poll_errors(sim: Simulator, gcs_bucket: str) -> None:
    c = vertex(sim, "vx-stuck", BatchProfile(turnaround_s=0.3, pending_s=0.0, stuck=True, poll_errors=1))
    job = c.batches.create(
        model=MODEL, src=put_input(gcs_bucket, ["a", "b"]), config={"dest": f"gs://{gcs_bucket}/out"}
    )
    with pytest.raises(errors.ServerError) as err:
        c.batches.get(name=job.name)
    assert err.value.code == 503
    time.sleep(0.5)
    running = c.batches.get(name=job.name)
    assert running.state.name == "JOB_STATE_RUNNING" and running.completion_stats.successful_count == 1
    assert len(bills(sim, job.name)) == 1


def test_vertex_list_filters_by_display_name_and_labels_and_delete(sim: Simulator, gcs_bucket: str) -> None:
    c = vertex(sim, "vx-list", BatchProfile(stuck=True))
    src = put_input(gcs_bucket, ["a"])
    first = c.batches.create(
        model=MODEL, src=src, config={"dest": f"gs://{gcs_bucket}/o1", "display_name": "banana-one"}
    )
    # Labels are not in the SDK's create config; the lane may send them on the raw API.
    raw = httpx.post(
        f"{sim.base_url}/v1beta1/projects/sim-project/locations/us-central1/batchPredictionJobs",
        headers={"Authorization": "Bearer vx-list"},
        json={
            "displayName": "banana-two",
            "model": f"publishers/google/models/{MODEL}",
            "labels": {"banana_run": "abc123"},
            "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": [src]}},
            "outputConfig": {
                "predictionsFormat": "jsonl",
                "gcsDestination": {"outputUriPrefix": f"gs://{gcs_bucket}/o2"},
            },
        },
    )
    assert raw.status_code == 200 and raw.json()["labels"] == {"banana_run": "abc123"}
    assert [j.display_name for j in c.batches.list()] == ["banana-two", "banana-one"]
    assert [j.name for j in c.batches.list(config={"filter": 'display_name="banana-one"'})] == [first.name]
    assert [j.display_name for j in c.batches.list(config={"filter": 'labels.banana_run="abc123"'})] == [
        "banana-two"
    ]
    assert [j["labels"] for j in sim.ledger()["jobs"]] == [{}, {"banana_run": "abc123"}]
    deleted = c.batches.delete(name=first.name)
    assert deleted.done is True
    with pytest.raises(errors.ClientError) as err:
        c.batches.get(name=first.name)
    assert err.value.code == 404
    other = genai.Client(
        vertexai=True,
        project="sim-project",
        location="europe-west4",
        credentials=google.oauth2.credentials.Credentials(token="vx-list"),
        http_options=types.HttpOptions(base_url=sim.base_url),
    )
    assert list(other.batches.list()) == []


def test_vertex_refuses_non_gcs_destination(sim: Simulator) -> None:
    reply = httpx.post(
        f"{sim.base_url}/v1/projects/p/locations/us-central1/batchPredictionJobs",
        headers={"Authorization": "Bearer vx-bad"},
        json={
            "displayName": "x",
            "model": MODEL,
            "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": ["gs://b/in.jsonl"]}},
            "outputConfig": {"predictionsFormat": "jsonl", "gcsDestination": {"outputUriPrefix": "/tmp/out"}},
        },
    )
    assert reply.status_code == 400
    assert sim.ledger()["jobs"] == []
