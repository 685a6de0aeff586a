"""The streaming harvester against a local output prefix: per-line errors, prices, idempotency."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from airflow_banana.batch.results import Harvester, decode_line, iter_stream_lines
from airflow_banana.channels.config import parse_channel
from airflow_banana.models import ImageRequest
from airflow_banana.pricing import LIST_PRICES
from airflow_banana.storage.objects import open_storage
from airflow_banana.storage.outputs import OutputStore


def _png(size: tuple[int, int] = (1024, 1024)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 180, 0)).save(out, format="PNG")
    return out.getvalue()


def _response(image: bytes, *, mime: str = "image/png") -> dict[str, object]:
    return {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"text": "here"},
                        {"inlineData": {"mimeType": mime, "data": base64.b64encode(image).decode()}},
                    ],
                },
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 1120, "totalTokenCount": 1125},
    }


@pytest.fixture
def harvester(tmp_path: Path) -> Harvester:
    config = parse_channel(
        "gem", host="http://127.0.0.1:1", password="k-secret", extra={"protocol": "gemini"}
    )
    requests = {i: ImageRequest(i, f"prompt {i}", "1K", "1:1") for i in ("a", "b", "c", "d", "e")}
    store = OutputStore(open_storage(str(tmp_path)), str(tmp_path / "out"))
    return Harvester(store=store, run_key="rk", requests=requests, config=config)


def test_decode_line_understands_the_three_shapes() -> None:
    assert decode_line({"key": "a", "response": {"x": 1}}).response == {"x": 1}
    assert (
        decode_line({"metadata": {"key": "b"}, "error": {"code": 13, "message": "boom"}}).error == "13: boom"
    )
    vertex_bad = decode_line({"key": "c", "status": "Bad request: image size", "request": {}})
    assert (vertex_bad.key, vertex_bad.error) == ("c", "Bad request: image size")
    vertex_ok = decode_line({"key": "c", "status": "", "response": {"candidates": []}})
    assert vertex_ok.error is None and vertex_ok.response == {"candidates": []}


def test_harvest_stores_successes_at_batch_price_and_records_line_errors(
    harvester: Harvester, tmp_path: Path
) -> None:
    """B6: per-line errors are recorded per item; the other lines are stored."""
    image = _png()
    lines = [
        json.dumps({"key": "a", "response": _response(image)}),
        json.dumps({"key": "b", "error": {"code": 500, "message": "internal"}}),
        "{not json",
        json.dumps({"key": "zzz", "response": _response(image)}),
        json.dumps({"key": "c", "response": {"promptFeedback": {"blockReason": "SAFETY"}}}),
        json.dumps({"key": "d", "response": _response(b"\x89PNG\r\n\x1a\nbroken")}),
        json.dumps({"key": "e", "response": _response(_png((10, 10)), mime="image/jpeg")}),
        "",
    ]
    result = harvester.consume_text_lines(lines)
    assert set(result.outcomes) == {"a", "e"}
    assert result.outcomes["a"].cost_usd == LIST_PRICES["batch"]["1K"]
    assert result.outcomes["e"].size_matches is False
    assert set(result.failed) == {"b", "c", "d"}
    assert "internal" in result.failed["b"] and "SAFETY" in result.failed["c"]
    assert result.unreadable_lines == 1 and result.unknown_keys == 1
    assert result.missing(["a", "b", "c", "d", "e", "f"]) == ["f"]
    meta = json.loads((tmp_path / "out/metadata/a.json").read_text())
    assert meta["lane"] == "batch" and meta["status"] == "succeeded"
    assert meta["cost_usd"] == LIST_PRICES["batch"]["1K"]
    assert (tmp_path / "out/images/a.png").read_bytes() == image
    e_meta = json.loads((tmp_path / "out/metadata/e.json").read_text())
    assert (
        e_meta["image"]["declared_mime_type"] == "image/jpeg" and e_meta["image"]["mime_type"] == "image/png"
    )
    assert "k-secret" not in json.dumps(meta)


def test_harvesting_again_writes_nothing_new(harvester: Harvester, tmp_path: Path) -> None:
    line = json.dumps({"key": "a", "response": _response(_png())})
    harvester.consume_text_lines([line])
    before = (tmp_path / "out/metadata/a.json").stat().st_mtime_ns
    again = Harvester(
        store=harvester.store, run_key="rk", requests=harvester.requests, config=harvester.config
    )
    result = again.consume_text_lines([line])
    assert result.outcomes["a"].reason.startswith("harvested by an earlier try")
    assert (tmp_path / "out/metadata/a.json").stat().st_mtime_ns == before


def test_inline_objects_and_duplicate_lines(harvester: Harvester) -> None:
    obj = {"response": _response(_png()), "metadata": {"key": "a"}}
    result = harvester.consume_objects([obj, obj])
    assert list(result.outcomes) == ["a"] and result.lines == 2


def test_stream_lines_split_across_chunks() -> None:
    chunks = [b'{"a"', b':1}\n{"b":2', b"}\r\n", b'{"c":3}']
    assert list(iter_stream_lines(chunks)) == [b'{"a":1}', b'{"b":2}', b'{"c":3}']
