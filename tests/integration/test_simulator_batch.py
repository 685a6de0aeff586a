"""The unmodified google-genai SDK (3.x, and 2.x on the genai2 leg) against the simulator's
Developer Batch API and Files API, over real HTTP.

Each test drives the SDK's sync client the way the batch lane does (create, poll, harvest,
cancel, list, delete; upload, get, download) and checks the billing ledger: batch lines are
billed at the batch price lane, once each, only when the job completes them.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import errors, types
from PIL import Image

from airflow_banana.models import ImageRequest, expected_pixels
from airflow_banana.testing import BatchProfile, FaultProfile, Simulator
from airflow_banana.testing.batch_jobs import job_registry

pytestmark = [pytest.mark.integration, pytest.mark.genai2, pytest.mark.timeout(60)]

MODEL = "gemini-3-pro-image-preview"
ACTIVE = ("JOB_STATE_PENDING", "JOB_STATE_RUNNING")
FAST = BatchProfile(turnaround_s=0.5, pending_s=0.1)
# Clients are kept for the session: the SDK closes a client that is garbage collected.
_CLIENTS: dict[tuple[str, str], Any] = {}


def client(sim: Simulator, key: str) -> Any:
    if (sim.base_url, key) not in _CLIENTS:
        _CLIENTS[(sim.base_url, key)] = genai.Client(
            api_key=key, http_options=types.HttpOptions(base_url=sim.base_url)
        )
    return _CLIENTS[(sim.base_url, key)]


def batch_key(sim: Simulator, key: str, profile: BatchProfile = FAST) -> Any:
    sim.set_faults(key, FaultProfile(name=key, batch=profile))
    return client(sim, key)


def inline(prompt: str, key: str, size: str = "1K", ratio: str = "1:1") -> dict[str, Any]:
    return {
        "contents": [{"role": "user", "parts": [{"text": prompt}]}],
        "config": {
            "response_modalities": ["TEXT", "IMAGE"],
            "image_config": {"image_size": size, "aspect_ratio": ratio},
        },
        "metadata": {"key": key},
    }


def jsonl_line(prompt: str, key: str) -> str:
    request = {
        "contents": [{"role": "user", "parts": [{"text": prompt}]}],
        "generationConfig": {"responseModalities": ["TEXT", "IMAGE"], "imageConfig": {"imageSize": "1K"}},
    }
    return json.dumps({"key": key, "request": request})


def wait_done(c: Any, name: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        job = c.batches.get(name=name)
        if job.state.name not in ACTIVE:
            return job
        assert time.monotonic() < deadline, f"{name} still {job.state.name}"
        time.sleep(0.05)


def fingerprint(prompt: str, size: str = "1K", ratio: str = "1:1") -> str:
    return ImageRequest(
        item_id="", prompt=prompt, image_size=size, aspect_ratio=ratio, model=MODEL
    ).fingerprint()


def final_image(response: Any) -> bytes:
    parts = [p for p in response.candidates[0].content.parts if p.inline_data is not None and not p.thought]
    return bytes(parts[-1].inline_data.data)


def batch_bills(sim: Simulator, job_name: str) -> list[dict[str, Any]]:
    return [b for b in sim.billable() if b["path"] == job_name]


# --- inline input -----------------------------------------------------------------------------------


def test_inline_batch_runs_pending_running_succeeded_and_bills_each_line_once(sim: Simulator) -> None:
    c = batch_key(sim, "inline-a", BatchProfile(turnaround_s=0.8, pending_s=0.2))
    prompts = ["a red fox", "a blue whale", "a green frog"]
    job = c.batches.create(
        model=MODEL,
        src=[inline(p, f"id-{i}", ratio="16:9") for i, p in enumerate(prompts)],
        config={"display_name": "catalog run-1"},
    )
    assert job.name.startswith("batches/") and job.state.name == "JOB_STATE_PENDING"
    assert job.display_name == "catalog run-1" and job.dest is None
    seen = {job.state.name}
    while (current := c.batches.get(name=job.name)).state.name in ACTIVE:
        seen.add(current.state.name)
        assert current.dest is None  # no output until the job is done
        time.sleep(0.05)
    assert seen == {"JOB_STATE_PENDING", "JOB_STATE_RUNNING"}
    assert current.state.name == "JOB_STATE_SUCCEEDED" and current.end_time is not None
    responses = current.dest.inlined_responses
    assert [r.metadata for r in responses] == [{"key": f"id-{i}"} for i in range(3)]
    for r in responses:
        data = final_image(r.response)
        with Image.open(io.BytesIO(data)) as img:
            assert img.size == expected_pixels("1K", "16:9")
    for _ in range(5):  # polling a finished job bills nothing more
        c.batches.get(name=job.name)
    bills = batch_bills(sim, job.name)
    assert sorted(b["fingerprint"] for b in bills) == sorted(fingerprint(p, ratio="16:9") for p in prompts)
    assert {(b["price_lane"], b["key_id"]) for b in bills} == {("batch", "inline-a")}
    [created] = sim.ledger()["jobs"]
    assert (created["name"], created["display_name"], created["request_count"], created["source"]) == (
        job.name,
        "catalog run-1",
        3,
        "inline",
    )
    assert created["surface"] == "developer" and created["key_id"] == "inline-a"


def test_sdk_inlined_request_objects_are_accepted(sim: Simulator) -> None:
    c = batch_key(sim, "inline-b")
    src = [
        types.InlinedRequest(
            model=MODEL,
            contents="a teapot",
            metadata={"key": "tea"},
            config=types.GenerateContentConfig(
                response_modalities=["TEXT", "IMAGE"], image_config=types.ImageConfig(image_size="1K")
            ),
        )
    ]
    job = wait_done(c, c.batches.create(model=MODEL, src=src).name)
    [resp] = job.dest.inlined_responses
    assert resp.metadata == {"key": "tea"} and final_image(resp.response).startswith(b"\x89PNG")


def test_per_line_errors_are_status_objects_and_not_billed(sim: Simulator) -> None:
    c = batch_key(sim, "lines-a")
    src = [
        inline("fine one", "ok-1"),
        inline("broken [sim:line_error]", "err-1"),
        inline("bad size", "err-2", size="1k"),
        inline("fine two", "ok-2"),
    ]
    job = wait_done(c, c.batches.create(model=MODEL, src=src).name)
    assert job.state.name == "JOB_STATE_SUCCEEDED"
    by_key = {r.metadata["key"]: r for r in job.dest.inlined_responses}
    assert by_key["err-1"].error.code == 13 and by_key["err-1"].response is None
    assert by_key["err-2"].error.code == 3 and "image_size" in by_key["err-2"].error.message
    assert not by_key["err-1"].error.details and not by_key["err-2"].error.details
    assert {b["fingerprint"] for b in batch_bills(sim, job.name)} == {
        fingerprint("fine one"),
        fingerprint("fine two"),
    }


def test_line_error_rate_from_the_key_profile(sim: Simulator) -> None:
    c = batch_key(sim, "lines-b", BatchProfile(turnaround_s=0.5, pending_s=0.0, line_error_rate=0.5))
    job = wait_done(c, c.batches.create(model=MODEL, src=[inline(f"p{i}", f"k{i}") for i in range(12)]).name)
    failed = [r for r in job.dest.inlined_responses if r.error is not None]
    assert 0 < len(failed) < 12
    assert len(batch_bills(sim, job.name)) == 12 - len(failed)


# --- final states, stuck, cancel ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("marker", "state"),
    [("failed", "JOB_STATE_FAILED"), ("expired", "JOB_STATE_EXPIRED"), ("cancelled", "JOB_STATE_CANCELLED")],
)
def test_unsuccessful_jobs_expose_the_lines_they_finished(sim: Simulator, marker: str, state: str) -> None:
    c = batch_key(sim, f"final-{marker}")
    job = c.batches.create(
        model=MODEL,
        src=[inline(f"{marker} {i}", f"k{i}") for i in range(6)],
        config={"display_name": f"x [sim:{marker}]"},
    )
    done = wait_done(c, job.name)
    assert done.state.name == state
    finished = done.dest.inlined_responses
    assert [r.metadata["key"] for r in finished] == ["k0", "k1", "k2"]  # half, in input order
    assert len(batch_bills(sim, job.name)) == 3


def test_partially_succeeded_reports_succeeded_on_the_developer_api(sim: Simulator) -> None:
    c = batch_key(sim, "partial-dev")
    job = c.batches.create(
        model=MODEL,
        src=[inline(f"p {i}", f"k{i}") for i in range(4)],
        config={"display_name": "[sim:partial]"},
    )
    done = wait_done(c, job.name)
    assert done.state.name == "JOB_STATE_SUCCEEDED"
    assert [r.error is not None for r in done.dest.inlined_responses] == [False, True, False, False]
    assert len(batch_bills(sim, job.name)) == 3


def test_stuck_job_stays_running_until_the_admin_unsticks_it(sim: Simulator) -> None:
    c = batch_key(sim, "stuck-a", BatchProfile(turnaround_s=0.3, pending_s=0.0))
    job = c.batches.create(
        model=MODEL, src=[inline(f"s{i}", f"k{i}") for i in range(4)], config={"display_name": "[sim:stuck]"}
    )
    time.sleep(0.6)
    assert c.batches.get(name=job.name).state.name == "JOB_STATE_RUNNING"
    assert job_registry(sim.state).find(job.name).done == 2  # type: ignore[union-attr]
    reply = httpx.put(
        f"{sim.base_url}/_simulator/batches", json={"job": job.name, "profile": {"stuck": False}}
    )
    assert reply.status_code == 200
    assert [j["profile"]["stuck"] for j in reply.json()["jobs"] if j["name"] == job.name] == [False]
    done = wait_done(c, job.name)
    assert done.state.name == "JOB_STATE_SUCCEEDED" and len(done.dest.inlined_responses) == 4
    assert len(batch_bills(sim, job.name)) == 4


def test_cancel_mid_run_keeps_and_bills_only_finished_lines(sim: Simulator) -> None:
    c = batch_key(sim, "cancel-a", BatchProfile(turnaround_s=2.0, pending_s=0.0))
    job = c.batches.create(model=MODEL, src=[inline(f"c{i}", f"k{i}") for i in range(10)])
    sim_job = job_registry(sim.state).find(job.name)
    assert sim_job is not None
    deadline = time.monotonic() + 5
    while sim_job.done < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    c.batches.cancel(name=job.name)
    cancelled = c.batches.get(name=job.name)
    assert cancelled.state.name == "JOB_STATE_CANCELLED"
    kept = cancelled.dest.inlined_responses
    assert 3 <= len(kept) < 10
    time.sleep(2.2)  # past the original turnaround: nothing else runs or is billed
    assert len(c.batches.get(name=job.name).dest.inlined_responses) == len(kept)
    assert sorted(b["fingerprint"] for b in batch_bills(sim, job.name)) == sorted(
        fingerprint(f"c{i}") for i in range(len(kept))
    )
    with pytest.raises(errors.ClientError) as err:
        c.batches.cancel(name=job.name)
    assert err.value.code == 400


# --- polling, listing, deleting ----------------------------------------------------------------------


def test_poll_errors_hit_the_next_gets_of_one_job(sim: Simulator) -> None:
    c = batch_key(sim, "poll-a")
    flaky = c.batches.create(
        model=MODEL, src=[inline("a", "k")], config={"display_name": "[sim:poll_errors=2]"}
    )
    calm = c.batches.create(model=MODEL, src=[inline("b", "k")])
    for _ in range(2):
        with pytest.raises(errors.ServerError) as err:
            c.batches.get(name=flaky.name)
        assert err.value.code == 503
    assert c.batches.get(name=calm.name).name == calm.name
    assert wait_done(c, flaky.name).state.name == "JOB_STATE_SUCCEEDED"
    faults = [r["fault"] for r in sim.requests("poll-a") if r["path"].endswith(flaky.name)]
    assert faults.count("poll_error") == 2
    reply = httpx.put(
        f"{sim.base_url}/_simulator/batches", json={"job": flaky.name, "profile": {"poll_error_rate": 1.0}}
    )
    assert reply.status_code == 200
    with pytest.raises(errors.ServerError):
        c.batches.get(name=flaky.name)


def test_list_shows_display_names_pages_and_only_the_callers_jobs(sim: Simulator) -> None:
    c = batch_key(sim, "list-a", BatchProfile(stuck=True, turnaround_s=60))
    names = [
        c.batches.create(
            model=MODEL, src=[inline("x", "k")], config={"display_name": f"banana:dag.task:{i}"}
        ).name
        for i in range(3)
    ]
    listed = list(c.batches.list(config={"page_size": 2}))
    assert [j.name for j in listed] == names[::-1]  # newest first, across pages
    assert [j.display_name for j in listed] == [f"banana:dag.task:{i}" for i in (2, 1, 0)]
    assert all(j.state.name in ACTIVE and j.dest is None for j in listed)
    assert list(batch_key(sim, "list-b").batches.list()) == []
    with pytest.raises(errors.ClientError) as err:
        client(sim, "list-b").batches.get(name=names[0])
    assert err.value.code == 404


def test_delete_forgets_the_job(sim: Simulator) -> None:
    c = batch_key(sim, "delete-a")
    job = c.batches.create(model=MODEL, src=[inline("x", "k")])
    c.batches.delete(name=job.name)
    with pytest.raises(errors.ClientError) as err:
        c.batches.get(name=job.name)
    assert err.value.code == 404


def test_create_refuses_bad_input_before_any_job(sim: Simulator) -> None:
    c = batch_key(sim, "refuse-a")
    with pytest.raises(errors.ClientError) as err:
        c.batches.create(model="no-such-model", src=[inline("x", "k")])
    assert err.value.code == 404
    with pytest.raises(errors.ClientError) as err:
        c.batches.create(model=MODEL, src="files/doesnotexist")
    assert err.value.code == 403
    url = f"{sim.base_url}/v1beta/models/{MODEL}:batchGenerateContent"
    huge = {
        "batch": {
            "inputConfig": {
                "requests": {
                    "requests": [{"request": {"contents": [{"parts": [{"text": "x" * (21 * 1024 * 1024)}]}]}}]
                }
            }
        }
    }
    reply = httpx.post(url, json=huge, headers={"x-goog-api-key": "refuse-a"}, timeout=30)
    assert reply.status_code == 400 and "20971520" in reply.json()["error"]["message"]
    assert httpx.post(url, json={"batch": {}}, headers={"x-goog-api-key": "refuse-a"}).status_code == 400
    assert (
        httpx.post(url, json={"batch": {"inputConfig": {"requests": {"requests": [{}]}}}}).status_code == 403
    )
    assert sim.ledger()["jobs"] == []


def test_reset_drops_jobs_and_files(sim: Simulator, tmp_path: Path) -> None:
    c = batch_key(sim, "reset-a", BatchProfile(stuck=True))
    job = c.batches.create(model=MODEL, src=[inline("x", "k")])
    src = tmp_path / "in.jsonl"
    src.write_text(jsonl_line("x", "k") + "\n")
    uploaded = c.files.upload(file=src, config={"mime_type": "application/jsonl"})
    sim.reset()
    with pytest.raises(errors.ClientError):
        c.batches.get(name=job.name)
    with pytest.raises(errors.ClientError):
        c.files.get(name=uploaded.name)


# --- Files API and file input ------------------------------------------------------------------------


def test_file_input_gives_a_downloadable_result_file(sim: Simulator, tmp_path: Path) -> None:
    c = batch_key(sim, "file-a")
    src = tmp_path / "requests.jsonl"
    src.write_text(
        "\n".join([jsonl_line("a kite", "kite"), jsonl_line("bad [sim:line_error]", "bad")]) + "\n"
    )
    uploaded = c.files.upload(file=src, config={"mime_type": "application/jsonl", "display_name": "reqs"})
    assert uploaded.name.startswith("files/") and uploaded.state.name == "ACTIVE"
    assert uploaded.size_bytes == src.stat().st_size and uploaded.mime_type == "application/jsonl"
    assert c.files.get(name=uploaded.name).display_name == "reqs"

    job = c.batches.create(model=MODEL, src=uploaded.name, config={"display_name": "from file"})
    done = wait_done(c, job.name)
    assert done.state.name == "JOB_STATE_SUCCEEDED" and done.dest.inlined_responses is None
    result_name = done.dest.file_name
    meta = c.files.get(name=result_name)
    assert meta.source.name == "GENERATED" and meta.download_uri
    data = c.files.download(file=meta)  # File object: the SDK insists on download_uri
    assert data == c.files.download(file=result_name)
    lines = [json.loads(line) for line in data.splitlines()]
    assert [line["key"] for line in lines] == ["kite", "bad"]
    assert final_image(types.GenerateContentResponse.model_validate(lines[0]["response"])).startswith(
        b"\x89PNG"
    )
    assert lines[1]["error"] == {"code": 13, "message": "Internal error encountered."}
    alt = httpx.get(meta.download_uri, headers={"x-goog-api-key": "file-a"})
    assert alt.status_code == 200 and alt.content == data
    assert len(batch_bills(sim, job.name)) == 1
    assert sim.ledger()["jobs"][0]["source"] == uploaded.name

    c.files.delete(name=uploaded.name)
    with pytest.raises(errors.ClientError) as err:
        c.files.get(name=uploaded.name)
    assert err.value.code == 403
    with pytest.raises(errors.ClientError):
        client(sim, "someone-else").files.get(name=result_name)


def test_resumable_upload_in_several_chunks_round_trips(sim: Simulator) -> None:
    c = batch_key(sim, "upload-a")
    payload = bytes(range(256)) * (9 * 1024 * 1024 // 256 + 3)  # > one 8 MiB SDK chunk
    uploaded = c.files.upload(file=io.BytesIO(payload), config={"mime_type": "application/octet-stream"})
    assert uploaded.size_bytes == len(payload)
    chunks = [r for r in sim.requests("upload-a") if r["path"].startswith("/upload/")]
    assert len(chunks) == 3  # start + two chunks
    assert c.files.download(file=uploaded.name) == payload
    assert [f.name for f in c.files.list()] == [uploaded.name]


def test_upload_protocol_errors_end_the_session(sim: Simulator) -> None:
    start = httpx.post(
        f"{sim.base_url}/upload/v1beta/files",
        json={"file": {"display_name": "x", "mime_type": "application/jsonl"}},
        headers={
            "x-goog-api-key": "upload-b",
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": "10",
            "X-Goog-Upload-Header-Content-Type": "application/jsonl",
        },
    )
    assert start.status_code == 200 and start.headers["x-goog-upload-status"] == "active"
    url = start.headers["x-goog-upload-url"]
    assert url.startswith(sim.base_url + "/upload/v1beta/files?upload_id=")
    first = httpx.post(
        url, content=b"12345", headers={"X-Goog-Upload-Command": "upload", "X-Goog-Upload-Offset": "0"}
    )
    assert first.status_code == 200 and first.headers["x-goog-upload-status"] == "active"
    wrong = httpx.post(
        url,
        content=b"67890",
        headers={"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "3"},
    )
    assert wrong.status_code == 400 and wrong.headers["x-goog-upload-status"] == "final"
    gone = httpx.post(
        url,
        content=b"67890",
        headers={"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "5"},
    )
    assert gone.status_code == 404 and gone.headers["x-goog-upload-status"] == "final"


def test_file_input_with_a_broken_line_is_refused(sim: Simulator, tmp_path: Path) -> None:
    c = batch_key(sim, "file-b")
    src = tmp_path / "broken.jsonl"
    src.write_text(jsonl_line("ok", "k") + "\n{not json\n")
    uploaded = c.files.upload(file=src, config={"mime_type": "application/jsonl"})
    with pytest.raises(errors.ClientError) as err:
        c.batches.create(model=MODEL, src=uploaded.name)
    assert err.value.code == 400 and "line 2" in str(err.value.message)
