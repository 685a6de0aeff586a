"""Manifests and reference images read from gs:// on the real emulator, and the storage hook."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from airflow_banana.exceptions import ConfigurationError, ManifestError, ReferenceImageError
from airflow_banana.hooks.storage import credentials_from_extras, storage_for
from airflow_banana.manifests import load_reference_images, read_manifest, write_manifest
from airflow_banana.storage.objects import open_storage

pytestmark = pytest.mark.integration


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


def test_manifest_from_gs_with_relative_reference_images(gcs_bucket: str) -> None:
    storage = open_storage(f"gs://{gcs_bucket}")
    rows = [
        {"manifest_version": 1, "defaults": {"image_size": "2K"}},
        {"id": "cat", "prompt": "a cat", "reference_images": ["refs/cat.png"]},
        {"id": "bad", "prompt": "p", "image_size": "1k"},
        {"id": "dog", "prompt": "a dog", "reference_images": ["refs/missing.png"]},
    ]
    manifest = f"gs://{gcs_bucket}/in/manifest.jsonl"
    storage.write_text(manifest, "\n".join(json.dumps(r) for r in rows) + "\n")
    storage.write_bytes(f"gs://{gcs_bucket}/in/refs/cat.png", _png(), content_type="image/png")

    with pytest.raises(ManifestError) as info:
        read_manifest(manifest, storage)
    assert (info.value.manifest, info.value.line, info.value.field) == (manifest, 3, "image_size")

    result = read_manifest(manifest, storage, on_invalid="quarantine")
    cat, dog = result.items
    assert cat.reference_images == (f"gs://{gcs_bucket}/in/refs/cat.png",)
    assert cat.image_size == "2K"
    (ref,) = load_reference_images(cat, storage)
    assert ref.mime_type == "image/png" and ref.data == _png()
    with pytest.raises(ReferenceImageError, match="does not exist") as err:
        load_reference_images(dog, storage)
    assert err.value.uri == f"gs://{gcs_bucket}/in/refs/missing.png"

    rejects_uri = f"gs://{gcs_bucket}/runs/r1/rejects.jsonl"
    storage.write_text(rejects_uri, result.rejects_jsonl(), if_absent=True)
    assert json.loads(next(storage.iter_lines(rejects_uri)))["line"] == 3

    sub = f"gs://{gcs_bucket}/runs/r1/realtime.jsonl"
    write_manifest(sub, [cat], storage)
    assert read_manifest(sub, storage).items[0].to_dict() == cat.to_dict()


def test_missing_gs_manifest(gcs_bucket: str) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(f"gs://{gcs_bucket}/nope.jsonl", open_storage())


def test_storage_for_resolves_an_env_connection(gcs_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = {"conn_type": "google_cloud_platform", "extra": {"project": "banana-project"}}
    monkeypatch.setenv("AIRFLOW_CONN_BANANA_GCS", json.dumps(conn))
    storage = storage_for(f"gs://{gcs_bucket}/x", "banana_gcs")
    storage.write_text(f"gs://{gcs_bucket}/x/hello.txt", "hi")
    assert storage_for(f"gs://{gcs_bucket}/x").read_text(f"gs://{gcs_bucket}/x/hello.txt") == "hi"


def test_storage_for_unknown_connection() -> None:
    with pytest.raises(ConfigurationError, match="AIRFLOW_CONN_NO_SUCH_CONN"):
        storage_for("gs://b/x", "no_such_conn")


def test_credentials_from_extras_without_leaking_the_key(tmp_path: Path) -> None:
    info = {"type": "service_account", "project_id": "from-key", "private_key": "SECRET-KEY-MATERIAL"}
    assert credentials_from_extras({"keyfile_dict": info}, conn_id="c") == (info, "from-key")
    assert credentials_from_extras({"credentials": json.dumps(info), "project": "p"}, conn_id="c") == (
        info,
        "p",
    )
    assert (
        credentials_from_extras({"extra__google_cloud_platform__keyfile_dict": info}, conn_id="c")[0] == info
    )
    assert credentials_from_extras({}, conn_id="c") == (None, None)
    with pytest.raises(ConfigurationError) as err:
        credentials_from_extras({"keyfile_dict": '{"private_key": "SECRET-KEY-MATERIAL"'}, conn_id="c")
    assert "SECRET-KEY-MATERIAL" not in str(err.value) and "not valid JSON" in str(err.value)
    (tmp_path / "key.json").write_text(json.dumps(info))
    assert credentials_from_extras({"key_path": str(tmp_path / "key.json")}, conn_id="c") == (
        info,
        "from-key",
    )
    with pytest.raises(ConfigurationError, match="key_path"):
        credentials_from_extras({"key_path": "/nonexistent/key.json"}, conn_id="c")


def test_bad_service_account_fails_up_front_without_leaking(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    info = {
        "type": "service_account",
        "project_id": "p",
        "private_key": "-----BEGIN PRIVATE KEY-----\nSECRET-KEY-MATERIAL\n-----END PRIVATE KEY-----\n",
        "client_email": "sa@p.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    storage = open_storage("gs://b/x", credentials_info=info)
    assert "SECRET" not in repr(storage)
    with pytest.raises(ConfigurationError, match="cannot create a GCS client") as err:
        storage.exists("gs://b/x")
    assert "SECRET-KEY-MATERIAL" not in str(err.value)
