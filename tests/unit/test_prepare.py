"""prepare_manifest: every check before spend; quarantine counts schema and reference-image rejects."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PIL import Image

from airflow_banana.exceptions import ManifestError
from airflow_banana.manifests.prepare import prepare_manifest
from airflow_banana.storage.objects import open_storage

NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)


def _manifest(tmp_path: Path) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (9, 9, 9)).save(buf, format="PNG")
    (tmp_path / "ref.png").write_bytes(buf.getvalue())
    (tmp_path / "notimage.png").write_bytes(b"hello, not an image")
    lines = [
        {"id": "good", "prompt": "a mug", "reference_images": ["ref.png"], "deadline": "+1h"},
        {"id": "bad-ref", "prompt": "a lamp", "reference_images": ["notimage.png"]},
        {"id": "bad-size", "prompt": "a chair", "image_size": "1k"},
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def test_quarantine_counts_every_reject_and_keeps_the_good_item(tmp_path: Path) -> None:
    prepared = prepare_manifest(
        _manifest(tmp_path), open_storage(), on_invalid="quarantine", logical_date=NOW
    )
    assert [w.request.item_id for w in prepared.work] == ["good"]
    assert prepared.work[0].deadline == datetime(2026, 11, 27, 13, tzinfo=UTC)
    assert len(prepared.work[0].request.reference_images) == 1
    assert prepared.rejected == 2
    reasons = [json.loads(line) for line in prepared.rejects_jsonl.splitlines()]
    assert {r.get("item_id") for r in reasons} >= {"bad-ref"}
    assert len(reasons) == 2


def test_reject_policy_fails_before_anything_is_spent(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="image_size"):
        prepare_manifest(_manifest(tmp_path), open_storage(), on_invalid="reject", logical_date=NOW)
