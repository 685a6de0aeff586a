"""The session document: exact round trips, objects for big images, preconditions, tamper checks."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from airflow_banana.editing.session import (
    EditSession,
    GenerationSettings,
    SessionStore,
    TurnRecord,
    externalize,
    history_sha256,
    image_part,
    materialize,
    session_uri_for,
)
from airflow_banana.exceptions import ConfigurationError, PreconditionFailedError, StorageError
from airflow_banana.storage.objects import open_storage

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40  # ~10 KB, not necessarily decodable


def _history(encodings: list[str]) -> list[dict[str, Any]]:
    """One model part per encoding spelling, as different producers write base64."""

    def enc(data: bytes, how: str) -> str:
        if how == "std":
            return base64.b64encode(data).decode()
        if how == "url-unpadded":
            return base64.urlsafe_b64encode(data).decode().rstrip("=")
        return base64.urlsafe_b64encode(data).decode()

    parts = [{"text": "ok", "thought_signature": "c2ln"}]
    for i, how in enumerate(encodings):
        data = PNG + bytes([i, 0xFB, 0xFF])  # bytes whose base64 differs between alphabets
        parts.append(
            {"inline_data": {"data": enc(data, how), "mime_type": "image/png"}, "thought_signature": "c2ln"}
        )
    return [{"parts": [{"text": "go"}], "role": "user"}, {"parts": parts, "role": "model"}]


def test_externalize_then_materialize_is_byte_identical_for_every_base64_spelling() -> None:
    history = _history(["url", "std", "url-unpadded"])
    objects: dict[str, bytes] = {}

    def place(data: bytes, mime: str) -> str:
        uri = f"mem://{len(objects)}"
        objects[uri] = data
        return uri

    stored = externalize(history, inline_max_bytes=1024, place=place)
    assert len(objects) == 3
    assert all("data" not in p["inline_data"] for p in stored[1]["parts"][1:])
    assert stored[1]["parts"][0] == history[1]["parts"][0]  # text and signatures untouched
    restored, blobs = materialize(stored, fetch=objects.__getitem__, session="s")
    assert json.dumps(restored) == json.dumps(history)  # same bytes, same key order
    assert history_sha256(restored) == history_sha256(history)
    assert set(blobs.values()) == set(objects)


def test_small_images_stay_inline() -> None:
    history = [{"parts": [image_part(b"tiny", "image/png")], "role": "user"}]
    assert externalize(history, inline_max_bytes=1024, place=lambda d, m: pytest.fail("placed")) == history


def _session(uri: str, **kw: Any) -> EditSession:
    return EditSession(
        session_id="s1",
        uri=uri,
        model="gemini-3-pro-image-preview",
        settings=GenerationSettings(),
        start_fingerprint="fp",
        **kw,
    )


def _turn(index: int) -> TurnRecord:
    return TurnRecord(
        index=index,
        key=f"k{index}",
        instruction="i",
        channel="c",
        model="m",
        image={"uri": "x", "sha256": "y"},
        contents=(0, 1),
        cost_usd=0.135,
    )


def test_save_and_load_with_preconditions(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path))
    store = SessionStore(storage, inline_max_bytes=1024)
    uri = session_uri_for(str(tmp_path), "s1")
    assert store.load(uri) is None

    session = _session(uri, history=_history(["url"]), turns=[_turn(1)])
    saved = store.save(session)
    assert saved.generation is not None
    blobs = list((tmp_path / "sessions" / "s1" / "blobs").iterdir())
    assert len(blobs) == 1 and blobs[0].read_bytes().startswith(PNG)

    loaded = store.load(uri)
    assert loaded is not None and loaded.history == session.history and loaded.turns == session.turns
    store.verify(loaded)

    # Two writers loaded the same generation: only the first save wins.
    loaded.turns.append(_turn(2))
    store.save(loaded)
    stale = store.load(uri)
    assert stale is not None
    stale.generation = saved.generation
    with pytest.raises(PreconditionFailedError, match="changed by another writer"):
        store.save(stale)
    # A second brand-new session at the same URI cannot overwrite the first.
    with pytest.raises(PreconditionFailedError):
        store.save(_session(uri))
    assert len(blobs) == len(list((tmp_path / "sessions" / "s1" / "blobs").iterdir()))  # no duplicate blob


def test_restore_refuses_tampered_documents_and_objects(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path))
    store = SessionStore(storage, inline_max_bytes=1024)
    uri = session_uri_for(str(tmp_path), "s1")
    store.save(_session(uri, history=_history(["url"])))

    doc = json.loads(Path(uri).read_text())
    doc["history"][0]["parts"][0]["text"] = "edited by hand"
    Path(uri).write_text(json.dumps(doc))
    loaded = store.load(uri)
    assert loaded is not None
    with pytest.raises(StorageError, match="history_sha256 mismatch"):
        store.verify(loaded)

    blob = next((tmp_path / "sessions" / "s1" / "blobs").iterdir())
    blob.write_bytes(b"other bytes")
    with pytest.raises(StorageError, match="no longer holds the image"):
        store.load(uri)

    Path(uri).write_text('{"format": "something-else"}')
    with pytest.raises(ConfigurationError, match="not an airflow-banana edit session"):
        store.load(uri)
    Path(uri).write_text("{not json")
    with pytest.raises(StorageError, match="not valid JSON"):
        store.load(uri)


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigurationError):
        GenerationSettings(image_size="1k")
    with pytest.raises(ConfigurationError):
        GenerationSettings(aspect_ratio="7:3")
    assert GenerationSettings.from_dict(
        GenerationSettings("2K", "16:9", True).as_dict()
    ) == GenerationSettings("2K", "16:9", True)
