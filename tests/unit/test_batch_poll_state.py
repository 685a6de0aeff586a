"""Pure parts of the batch lane: the poll decision, job identity, the job record, request lines."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from airflow_banana.batch.poll import (
    EndTimeReached,
    JobEnded,
    JobState,
    PollAgain,
    PollPolicy,
    PollsFailed,
    PollTracker,
)
from airflow_banana.batch.requests import fits_inline, inline_request, jsonl_line, wire_request
from airflow_banana.batch.state import (
    HARVESTED,
    INTENT,
    SUBMITTED,
    BatchJobRecord,
    JobStateStore,
    display_name_for,
    display_name_head,
    job_key,
)
from airflow_banana.exceptions import BatchJobError
from airflow_banana.identity import RunIdentity
from airflow_banana.models import ImageRequest, ReferenceImage
from airflow_banana.storage.objects import open_storage


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("JOB_STATE_RUNNING", JobState.RUNNING),
        ("BATCH_STATE_PENDING", JobState.PENDING),
        ("JOB_STATE_PARTIALLY_SUCCEEDED", JobState.PARTIALLY_SUCCEEDED),
        ("BATCH_STATE_EXPIRED", JobState.EXPIRED),
        ("JOB_STATE_QUEUED", JobState.PENDING),
        ("JOB_STATE_UPDATING", JobState.RUNNING),
        ("something new", JobState.UNKNOWN),
        (None, JobState.UNKNOWN),
    ],
)
def test_job_state_parses_every_spelling(raw: object, state: JobState) -> None:
    assert JobState.parse(raw) is state


def test_poll_ends_on_final_state_and_waits_otherwise() -> None:
    tracker = PollTracker(PollPolicy(interval_s=10))
    assert tracker.start(0) == PollAgain(0.0)
    assert tracker.observed(JobState.RUNNING, 1) == PollAgain(10)
    for final in (JobState.SUCCEEDED, JobState.FAILED, JobState.EXPIRED, JobState.CANCELLED):
        assert PollTracker(PollPolicy()).observed(final, 1) == JobEnded(final)
    assert not JobState.CANCELLING.ended


def test_poll_failures_back_off_and_give_up_after_the_bound() -> None:
    """B3: a bounded number of consecutive failures is tolerated; success resets the count."""
    tracker = PollTracker(PollPolicy(interval_s=10, max_poll_failures=3, max_backoff_s=35))
    assert tracker.failed("503", 0) == PollAgain(20)
    assert tracker.failed("503", 0) == PollAgain(35)  # capped
    assert tracker.observed(JobState.RUNNING, 0) == PollAgain(10)  # reset
    assert isinstance(tracker.failed("503", 0), PollAgain)
    assert isinstance(tracker.failed("503", 0), PollAgain)
    decision = tracker.failed("timeout", 0)
    assert decision == PollsFailed(3, "timeout")


def test_poll_never_oversleeps_the_end_time() -> None:
    tracker = PollTracker(PollPolicy(interval_s=60, end_time=100))
    assert tracker.observed(JobState.RUNNING, 90) == PollAgain(10)
    assert tracker.observed(JobState.RUNNING, 100) == EndTimeReached(JobState.RUNNING)
    assert PollTracker(PollPolicy(end_time=5)).start(6) == EndTimeReached(JobState.UNKNOWN)


def test_job_identity_ignores_try_number_and_changes_with_inputs() -> None:
    a = RunIdentity("dag", "task", "run1", -1)
    assert job_key(a, "fp") == job_key(RunIdentity("dag", "task", "run1", -1), "fp")
    assert job_key(a, "fp") != job_key(a, "fp2")
    assert job_key(a, "fp") != job_key(RunIdentity("dag", "task", "run1", 3), "fp")
    name = display_name_for(a, "fp", 2)
    assert display_name_head(name) == f"banana-{job_key(a, 'fp')}-r2"
    assert len(display_name_for(RunIdentity("d" * 200, "t", "r"), "fp", 1)) <= 128


def _record(**kw: object) -> BatchJobRecord:
    base: dict[str, object] = dict(
        run_key="d__t__r",
        identity={"dag_id": "d"},
        fingerprint="fp",
        backend="gemini",
        channel="c",
        display_name="banana-x-r1 d__t__r",
        item_ids=["a", "b"],
    )
    base.update(kw)
    return BatchJobRecord(**base)  # type: ignore[arg-type]


def test_state_record_intent_then_submitted_then_harvested(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path))
    store = JobStateStore(storage, str(tmp_path / "out"), "d__t__r")
    assert store.load() is None
    store.write_intent(_record(), replace_existing=False)
    loaded = JobStateStore(storage, str(tmp_path / "out"), "d__t__r").load()
    assert loaded is not None and loaded.status == INTENT and loaded.job_name is None
    submitted = store.mark_submitted(loaded, "batches/1", input_uri="files/x")
    again = JobStateStore(storage, str(tmp_path / "out"), "d__t__r").load()
    assert again == submitted and again.status == SUBMITTED and again.job_name == "batches/1"
    assert store.mark_harvested(submitted, "SUCCEEDED").status == HARVESTED
    data = json.loads((tmp_path / "out/runs/d__t__r/batch_job.json").read_text())
    assert data["status"] == HARVESTED and data["final_state"] == "SUCCEEDED"


def test_state_record_intent_is_create_only_and_updates_need_the_seen_generation(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path))
    first = JobStateStore(storage, str(tmp_path), "k")
    second = JobStateStore(storage, str(tmp_path), "k")
    assert first.load() is None and second.load() is None
    first.write_intent(_record(), replace_existing=False)
    with pytest.raises(BatchJobError, match="changed by another worker"):
        second.write_intent(_record(), replace_existing=False)
    # both loaded the same generation: only one submitted record can win
    a, b = first.load(), second.load()
    assert a is not None and b is not None
    first.mark_submitted(a, "batches/1")
    with pytest.raises(BatchJobError, match="reattaches"):
        second.mark_submitted(b, "batches/2")
    final = JobStateStore(storage, str(tmp_path), "k").load()
    assert final is not None and final.job_name == "batches/1"


def test_unreadable_record_is_not_guessed(tmp_path: Path) -> None:
    target = tmp_path / "runs/k/batch_job.json"
    target.parent.mkdir(parents=True)
    target.write_text("{not json")
    with pytest.raises(BatchJobError, match="refusing to guess"):
        JobStateStore(open_storage(str(tmp_path)), str(tmp_path), "k").load()


PNG = b"\x89PNG\r\n\x1a\n" + b"0" * 30


def test_request_lines_have_realtime_shape_and_carry_the_item_id() -> None:
    ref = ReferenceImage(PNG, "image/png", "gs://b/r.png")
    request = ImageRequest("item-1", "a cat", "2K", "16:9", reference_images=(ref,))
    line = json.loads(jsonl_line(request))
    assert line["key"] == "item-1"
    parts = line["request"]["contents"][0]["parts"]
    assert parts[0] == {"text": "a cat"}  # prompt first, then the references
    assert base64.b64decode(parts[1]["inlineData"]["data"]) == PNG
    assert line["request"]["generationConfig"]["imageConfig"] == {"aspectRatio": "16:9", "imageSize": "2K"}
    assert wire_request(request)["generationConfig"]["responseModalities"] == ["TEXT", "IMAGE"]
    inline = inline_request(request)
    assert inline["metadata"] == {"key": "item-1"}
    assert inline["contents"][0]["parts"][1]["inline_data"]["data"] == PNG


def test_inline_only_for_small_jobs() -> None:
    small = [ImageRequest(f"i{i}", "p", "1K") for i in range(3)]
    assert fits_inline(small)
    assert not fits_inline([ImageRequest(f"i{i}", "p", "2K") for i in range(50)])  # results too big
    big_ref = ReferenceImage(PNG + b"0" * 7_000_000, "image/png")
    assert not fits_inline([ImageRequest(f"i{i}", "p", "1K", reference_images=(big_ref,)) for i in range(3)])
