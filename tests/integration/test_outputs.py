"""OutputStore commit protocol on local disk and on the GCS emulator: idempotent, race-safe."""

from __future__ import annotations

import hashlib
import io
import threading

import pytest
from PIL import Image

from airflow_banana.imaging import inspect_image
from airflow_banana.models import GenerationResult, ImageRequest
from airflow_banana.storage.objects import open_storage
from airflow_banana.storage.outputs import OutputStore
from airflow_banana.storage.report import (
    ALREADY_DONE,
    FAILED,
    SKIPPED,
    SUCCEEDED,
    Attempt,
    ItemOutcome,
    build_report,
    render_markdown,
    skipped_outcome,
)


def _png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (0, 90, 200)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(params=["local", "gs"])
def store(request, tmp_path):
    if request.param == "local":
        return OutputStore(open_storage(), str(tmp_path / "out"))
    bucket = request.getfixturevalue("gcs_bucket")
    return OutputStore(open_storage(), f"gs://{bucket}/out")


def _result(request: ImageRequest, size: tuple[int, int] = (1024, 1024)) -> GenerationResult:
    return GenerationResult(
        image=_png(size),
        mime_type="image/png",
        declared_mime_type="image/png",
        channel="relay",
        cost_usd=0.05,
    )


def _outcome(request: ImageRequest) -> ItemOutcome:
    return ItemOutcome(
        request.item_id,
        SUCCEEDED,
        request.image_size,
        channel="relay",
        cost_usd=0.05,
        attempts=[Attempt("gemini", "retryable", 0.2), Attempt("relay", "success", 1.0, 0.05, True)],
    )


def test_commit_then_done_record(store: OutputStore) -> None:
    req = ImageRequest("mug", "a mug")
    assert store.done_record("mug", req.fingerprint()) is None
    result = _result(req)
    uri, won = store.commit_success(
        req, result, inspect_image(result.image), _outcome(req), lane="realtime", run_key="r1"
    )
    assert won and uri.endswith("images/mug.png")
    record = store.done_record("mug", req.fingerprint())
    assert record is not None
    assert record["image"]["size_matches"] is True and record["image"]["sha256"] == result.sha256
    assert [a["outcome"] for a in record["attempts"]] == ["retryable", "success"]
    # a changed prompt is a different purchase: not done
    assert store.done_record("mug", ImageRequest("mug", "a blue mug").fingerprint()) is None
    # every lane reports an item a committed success covers the same way
    skipped = skipped_outcome("mug", "1K", record)
    assert (skipped.status, skipped.image_uri, skipped.channel) == (SKIPPED, uri, "relay")
    assert skipped.reason == ALREADY_DONE and skipped.cost_usd == 0.0 and not skipped.attempts


def test_failure_never_overwrites_a_success(store: OutputStore) -> None:
    req = ImageRequest("mug", "a mug")
    result = _result(req)
    store.commit_success(
        req, result, inspect_image(result.image), _outcome(req), lane="realtime", run_key="r1"
    )
    store.commit_failure(
        req, ItemOutcome("mug", FAILED, "1K", reason="deadline"), lane="realtime", run_key="r2"
    )
    assert store.done_record("mug", req.fingerprint()) is not None


def test_failure_is_recorded_then_replaced_by_success(store: OutputStore) -> None:
    req = ImageRequest("mug", "a mug")
    store.commit_failure(
        req, ItemOutcome("mug", FAILED, "1K", reason="item_terminal: blocked"), lane="realtime", run_key="r1"
    )
    meta = store.storage.read_json(store.metadata_uri("mug"))
    assert meta["status"] == FAILED and "blocked" in meta["reason"]
    result = _result(req)
    _, won = store.commit_success(
        req, result, inspect_image(result.image), _outcome(req), lane="realtime", run_key="r2"
    )
    assert won and store.done_record("mug", req.fingerprint()) is not None


def test_size_mismatch_is_recorded(store: OutputStore) -> None:
    req = ImageRequest("wide", "a banner", aspect_ratio="16:9")
    result = _result(req, size=(1000, 500))
    store.commit_success(
        req, result, inspect_image(result.image), _outcome(req), lane="realtime", run_key="r1"
    )
    image = store.storage.read_json(store.metadata_uri("wide"))["image"]
    assert image["size_matches"] is False and (image["expected_width"], image["expected_height"]) == (
        1376,
        768,
    )


def test_two_concurrent_committers_exactly_one_wins(store: OutputStore) -> None:
    req = ImageRequest("race", "contested")
    results: list[bool] = []
    barrier = threading.Barrier(2)

    def commit() -> None:
        result = _result(req)
        info = inspect_image(result.image)
        barrier.wait()
        results.append(
            store.commit_success(req, result, info, _outcome(req), lane="realtime", run_key="r")[1]
        )

    threads = [threading.Thread(target=commit) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, True]
    assert store.done_record("race", req.fingerprint()) is not None


def test_report_json_and_markdown(store: OutputStore) -> None:
    outcomes = [
        ItemOutcome(
            "a",
            SUCCEEDED,
            "1K",
            [Attempt("relay", "retryable", 1.0), Attempt("gemini", "success", 2.0, 0.134, True)],
            channel="gemini",
            cost_usd=0.134,
            latency_s=3.0,
            size_matches=True,
        ),
        ItemOutcome("b", "skipped", "2K"),
        ItemOutcome(
            "c",
            FAILED,
            "4K",
            [Attempt("relay", "item_terminal", 0.5)],
            reason="item_terminal: prompt blocked",
        ),
    ]
    report = build_report(
        outcomes,
        run_key="r",
        lane="realtime",
        started_at="s",
        finished_at="f",
        budget_usd=1.0,
        breaker_openings={"relay": 2},
    )
    assert (
        report["items"]["succeeded"] == 1
        and report["items"]["skipped"] == 1
        and report["items"]["failed"] == 1
    )
    assert report["cost"]["spent_usd"] == 0.134
    assert report["calls"]["failovers"] == 1 and report["calls"]["total"] == 3
    assert report["channels"]["relay"]["breaker_openings"] == 2
    assert report["channels"]["relay"]["errors"] == {"retryable": 1, "item_terminal": 1}
    md = render_markdown(report)
    assert "prompt blocked" in md and "| relay |" in md and "$0.1340" in md
    uri = store.write_report("r", report)
    assert store.storage.read_json(uri)["run_key"] == "r"
    assert "Items without an image" in store.storage.read_text(store.run_uri("r", "report.md"))


def test_a_later_commit_attempt_loses_to_a_committed_success(store: OutputStore) -> None:
    req = ImageRequest("seq", "sequential duplicates")
    first, second = _result(req), _result(req, size=(1024, 1024))
    assert store.commit_success(
        req, first, inspect_image(first.image), _outcome(req), lane="realtime", run_key="a"
    )[1]
    won = store.commit_success(
        req, second, inspect_image(second.image), _outcome(req), lane="realtime", run_key="b"
    )
    assert won[1] is False
    assert store.storage.read_json(store.metadata_uri("seq"))["run_key"] == "a"


def test_metadata_follows_an_image_replaced_by_a_racing_writer(store: OutputStore) -> None:
    req = ImageRequest("swap", "racy")
    result = _result(req)
    uri, _ = store.commit_success(
        req, result, inspect_image(result.image), _outcome(req), lane="realtime", run_key="a"
    )
    record = store.storage.read_json(store.metadata_uri("swap"))
    other = io.BytesIO()
    Image.new("RGB", (1024, 1024), (1, 2, 3)).save(other, format="PNG")
    store.storage.write_bytes(uri, other.getvalue(), content_type="image/png")
    store._describe_stored_image(req, uri, record["image"]["generation"], record)
    after = store.storage.read_json(store.metadata_uri("swap"))["image"]
    assert after["sha256"] == hashlib.sha256(other.getvalue()).hexdigest() != result.sha256
