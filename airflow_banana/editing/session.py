"""The edit-session document: a multi-turn conversation that survives processes, tasks and days.

Continuing an edit means sending the whole conversation back exactly as it was exchanged,
thought parts and signatures included (GEMINI_WIRE.md "Multi-turn editing"). So the session
keeps the history as the SDK dumps it (``Content.model_dump(mode="json", exclude_none=True)``:
snake_case, URL-safe base64) and never re-encodes it. Restoring it in another process yields
the same bytes, and ``history_sha256`` proves it on every load.

Storage shape (one JSON document per session, written with generation preconditions)::

    {"format": "airflow-banana/edit-session", "version": 1, "session_id", "model",
     "settings": {image_size, aspect_ratio, include_thoughts}, "channel" (last used),
     "start_fingerprint", "history": [Content dicts], "history_sha256",
     "turns": [per-turn record: key, instruction, channel, cost, latency, image, attempts]}

Inline image bytes above ``inline_max_bytes`` are moved out of the document into objects and the
part keeps a ``data_ref`` (uri, sha256, size, base64 alphabet and padding) in place of ``data``.
Each image is stored once (content-addressed; a turn's result image points at the turn's output
image), so a session of N turns costs about N images of storage, not N^2, even though every
request resends the whole history. A ``data_ref`` whose object changed fails the restore.

The document is the commit record of a turn: a turn counts as done only once the session that
lists it is saved. Saving uses ``if_absent`` for a new session and ``if_generation_match`` for
an existing one, so two workers can never both append a turn.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from airflow_banana.exceptions import (
    ConfigurationError,
    ObjectNotFoundError,
    PreconditionFailedError,
    StorageError,
)
from airflow_banana.imaging import EXTENSIONS, sniff_mime
from airflow_banana.models import ASPECT_RATIOS, DATA_POLICIES, DEFAULT_DATA_POLICY, IMAGE_SIZES
from airflow_banana.storage.objects import Storage, join_uri, parent_uri, utcnow_iso

SESSION_FORMAT = "airflow-banana/edit-session"
SESSION_VERSION = 1
# Images up to this size stay inline: an object per thumbnail would cost more requests than bytes.
DEFAULT_INLINE_MAX_BYTES = 32 * 1024

__all__ = [
    "DEFAULT_INLINE_MAX_BYTES",
    "EditSession",
    "GenerationSettings",
    "SessionStore",
    "TurnRecord",
    "canonical_json",
    "history_sha256",
    "image_part",
    "session_uri_for",
    "text_part",
]


def canonical_json(value: Any) -> str:
    """The one serialisation hashes are taken over (sorted keys, no spaces)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def history_sha256(history: Sequence[Mapping[str, Any]]) -> str:
    return hashlib.sha256(canonical_json(list(history)).encode("utf-8")).hexdigest()


def session_uri_for(output_prefix: str, session_id: str) -> str:
    """Where a session lives under an output prefix: ``sessions/{id}/session.json``."""
    return join_uri(output_prefix, "sessions", session_id, "session.json")


# ------------------------------------------------------------------------------ content parts


def _b64(data: bytes) -> str:
    # The SDK's JSON dump spelling (pydantic ser_json_bytes="base64": URL-safe, padded), so a
    # turn we build ourselves looks exactly like one the SDK would have dumped.
    return base64.urlsafe_b64encode(data).decode("ascii")


def text_part(text: str) -> dict[str, Any]:
    return {"text": text}


def image_part(data: bytes, mime_type: str) -> dict[str, Any]:
    return {"inline_data": {"data": _b64(data), "mime_type": mime_type}}


def _decode(text: str) -> bytes:
    body = text.strip().replace("-", "+").replace("_", "/")
    body += "=" * (-len(body) % 4)
    return base64.b64decode(body, validate=True)


def _encode(data: bytes, alphabet: str, padded: bool) -> str:
    text = (base64.urlsafe_b64encode if alphabet == "base64url" else base64.b64encode)(data).decode("ascii")
    return text if padded else text.rstrip("=")


def _encoding_of(text: str, data: bytes) -> tuple[str, bool] | None:
    """The (alphabet, padded) that re-encodes ``data`` to exactly ``text``; None if none does."""
    for alphabet in ("base64url", "base64"):
        for padded in (True, False):
            if _encode(data, alphabet, padded) == text:
                return alphabet, padded
    return None


def _inline_key(part: Mapping[str, Any]) -> str | None:
    for key in ("inline_data", "inlineData"):
        if isinstance(part.get(key), Mapping):
            return key
    return None


# ------------------------------------------------------------------------------ the document


@dataclass(frozen=True)
class GenerationSettings:
    """The generation config every turn of a session is sent with."""

    image_size: str = "1K"
    aspect_ratio: str = "1:1"
    include_thoughts: bool = False
    # "official_only": every turn of the session goes to official Google channels only, in every
    # later run too (the policy is part of the session, so a continuation cannot loosen it).
    data_policy: str = DEFAULT_DATA_POLICY

    def __post_init__(self) -> None:
        if self.data_policy not in DATA_POLICIES:
            raise ConfigurationError(f"data_policy must be one of {DATA_POLICIES}, got {self.data_policy!r}")
        if self.image_size not in IMAGE_SIZES:
            raise ConfigurationError(f"image_size must be one of {IMAGE_SIZES}, got {self.image_size!r}")
        if self.aspect_ratio not in ASPECT_RATIOS:
            raise ConfigurationError(
                f"aspect_ratio must be one of {ASPECT_RATIOS}, got {self.aspect_ratio!r}"
            )

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "image_size": self.image_size,
            "aspect_ratio": self.aspect_ratio,
            "include_thoughts": self.include_thoughts,
        }
        if self.data_policy != DEFAULT_DATA_POLICY:
            # only when set: sessions started before the field keep their start fingerprints
            out["data_policy"] = self.data_policy
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerationSettings:
        return cls(
            image_size=str(data.get("image_size", "1K")),
            aspect_ratio=str(data.get("aspect_ratio", "1:1")),
            include_thoughts=bool(data.get("include_thoughts", False)),
            data_policy=str(data.get("data_policy", DEFAULT_DATA_POLICY)),
        )


@dataclass(frozen=True)
class TurnRecord:
    """One committed turn: what was asked, where it ran, what it cost, what it produced.

    ``contents`` are the 0-based positions of this turn's user and model contents in the history.
    ``key`` is the idempotency key: a turn whose key is already recorded is never paid again.
    """

    index: int
    key: str
    instruction: str
    channel: str
    model: str
    image: dict[str, Any]
    contents: tuple[int, int]
    reference_images: tuple[str, ...] = ()
    parent_sha256: str | None = None
    cost_usd: float = 0.0
    image_usd: float = 0.0
    input_usd: float = 0.0
    latency_s: float = 0.0
    tokens: dict[str, int] = field(default_factory=dict)
    attempts: tuple[dict[str, Any], ...] = ()
    run: dict[str, str] = field(default_factory=dict)
    finished_at: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "key": self.key,
            "instruction": self.instruction,
            "reference_images": list(self.reference_images),
            "channel": self.channel,
            "model": self.model,
            "image": dict(self.image),
            "parent_sha256": self.parent_sha256,
            "contents": list(self.contents),
            "cost_usd": self.cost_usd,
            "image_usd": self.image_usd,
            "input_usd": self.input_usd,
            "latency_s": self.latency_s,
            "tokens": dict(self.tokens),
            "attempts": [dict(a) for a in self.attempts],
            "run": dict(self.run),
            "finished_at": self.finished_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TurnRecord:
        user_pos, model_pos = data["contents"]
        return cls(
            index=int(data["index"]),
            key=str(data["key"]),
            instruction=str(data.get("instruction", "")),
            reference_images=tuple(data.get("reference_images") or ()),
            channel=str(data["channel"]),
            model=str(data["model"]),
            image=dict(data["image"]),
            parent_sha256=data.get("parent_sha256"),
            contents=(int(user_pos), int(model_pos)),
            cost_usd=float(data.get("cost_usd", 0.0)),
            image_usd=float(data.get("image_usd", 0.0)),
            input_usd=float(data.get("input_usd", 0.0)),
            latency_s=float(data.get("latency_s", 0.0)),
            tokens={str(k): int(v) for k, v in (data.get("tokens") or {}).items()},
            attempts=tuple(dict(a) for a in data.get("attempts") or ()),
            run={str(k): str(v) for k, v in (data.get("run") or {}).items()},
            finished_at=str(data.get("finished_at", "")),
        )


@dataclass
class EditSession:
    """A session in memory: ``history`` is fully materialised (inline bytes, exact strings).

    ``generation`` is the storage generation it was loaded at (None = not saved yet); ``uri`` is
    where it is saved. ``blob_uris`` maps sha256 -> object already holding those bytes, so a
    re-save never rewrites an image.
    """

    session_id: str
    uri: str
    model: str
    settings: GenerationSettings
    start_fingerprint: str
    history: list[dict[str, Any]] = field(default_factory=list)
    turns: list[TurnRecord] = field(default_factory=list)
    channel: str | None = None
    created_at: str = field(default_factory=utcnow_iso)
    updated_at: str = ""
    generation: int | None = None
    blob_uris: dict[str, str] = field(default_factory=dict, repr=False)
    saved_history_sha256: str | None = None

    def __repr__(self) -> str:
        return (
            f"EditSession(id={self.session_id!r}, uri={self.uri!r}, model={self.model!r}, "
            f"turns={len(self.turns)}, contents={len(self.history)}, generation={self.generation})"
        )

    def turn_by_key(self, key: str) -> TurnRecord | None:
        return next((t for t in self.turns if t.key == key), None)

    @property
    def last_image_sha256(self) -> str | None:
        return self.turns[-1].image.get("sha256") if self.turns else None

    @property
    def spent_usd(self) -> float:
        return round(sum(t.cost_usd for t in self.turns), 6)

    def history_copy(self) -> list[dict[str, Any]]:
        """A deep copy for sending: the channel may not mutate what we will save."""
        copied: list[dict[str, Any]] = json.loads(json.dumps(self.history))
        return copied


BlobPlacer = Callable[[bytes, str], str]
BlobFetcher = Callable[[str], bytes]


def externalize(
    history: Sequence[Mapping[str, Any]],
    *,
    inline_max_bytes: int,
    place: BlobPlacer,
) -> list[dict[str, Any]]:
    """The history with big inline data replaced by ``data_ref`` objects (``place`` stores bytes)."""
    out: list[dict[str, Any]] = []
    for content in history:
        new_content = dict(content)
        new_parts: list[Any] = []
        for part in content.get("parts") or []:
            key = _inline_key(part) if isinstance(part, Mapping) else None
            inline = part.get(key) if key else None
            data = inline.get("data") if isinstance(inline, Mapping) else None
            if key is None or not isinstance(inline, Mapping) or not isinstance(data, str):
                new_parts.append(part)
                continue
            try:
                raw = _decode(data)
            except (binascii.Error, ValueError):
                new_parts.append(part)
                continue
            encoding = _encoding_of(data, raw)
            if len(raw) <= inline_max_bytes or encoding is None:
                # Kept inline when small, or when only the exact original string can restore it.
                new_parts.append(part)
                continue
            mime = str(inline.get("mime_type") or inline.get("mimeType") or "application/octet-stream")
            ref = {
                "uri": place(raw, mime),
                "sha256": hashlib.sha256(raw).hexdigest(),
                "size": len(raw),
                "encoding": encoding[0],
                "padded": encoding[1],
            }
            new_inline = {k: v for k, v in inline.items() if k != "data"}
            new_inline["data_ref"] = ref
            new_parts.append({**part, key: new_inline})
        new_content["parts"] = new_parts
        out.append(new_content)
    return out


def materialize(
    stored: Sequence[Mapping[str, Any]], *, fetch: BlobFetcher, session: str
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The exact history back from its stored form, plus the sha256 -> URI map of its objects."""
    history: list[dict[str, Any]] = []
    blobs: dict[str, str] = {}
    for ci, content in enumerate(stored):
        new_content = dict(content)
        new_parts: list[Any] = []
        for pi, part in enumerate(content.get("parts") or []):
            key = _inline_key(part) if isinstance(part, Mapping) else None
            inline = part.get(key) if key else None
            ref = inline.get("data_ref") if isinstance(inline, Mapping) else None
            if key is None or not isinstance(ref, Mapping):
                new_parts.append(part)
                continue
            uri = str(ref["uri"])
            raw = fetch(uri)
            if hashlib.sha256(raw).hexdigest() != ref.get("sha256"):
                raise StorageError(
                    f"edit session '{session}': {uri} (content {ci + 1}, part {pi + 1}) no longer "
                    "holds the image the history was exchanged with (sha256 differs); the history "
                    "cannot be restored byte-identical. Restore that object; nothing was sent"
                )
            assert isinstance(inline, Mapping)
            new_inline = {k: v for k, v in inline.items() if k != "data_ref"}
            new_inline["data"] = _encode(
                raw, str(ref.get("encoding", "base64url")), bool(ref.get("padded", True))
            )
            # Key order as the SDK dumps it (data, mime_type) so the copy reads like the original.
            ordered = {"data": new_inline.pop("data"), **new_inline}
            new_parts.append({**part, key: ordered})
            blobs[str(ref["sha256"])] = uri
        new_content["parts"] = new_parts
        history.append(new_content)
    return history, blobs


def to_document(session: EditSession, stored_history: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "format": SESSION_FORMAT,
        "version": SESSION_VERSION,
        "session_id": session.session_id,
        "model": session.model,
        "settings": session.settings.as_dict(),
        "channel": session.channel,
        "start_fingerprint": session.start_fingerprint,
        "created_at": session.created_at,
        "updated_at": session.updated_at,
        "history": stored_history,
        "history_sha256": history_sha256(session.history),
        "turns": [t.as_dict() for t in session.turns],
        "spent_usd": session.spent_usd,
    }


class SessionStore:
    """Load and save session documents through ``Storage``; blobs go next to the document."""

    def __init__(self, storage: Storage, *, inline_max_bytes: int = DEFAULT_INLINE_MAX_BYTES):
        if inline_max_bytes < 0:
            raise ConfigurationError(f"inline_max_bytes must not be negative, got {inline_max_bytes}")
        self.storage = storage
        self.inline_max_bytes = inline_max_bytes

    def blob_uri(self, session: EditSession, data: bytes, mime_type: str) -> str:
        ext = EXTENSIONS.get(sniff_mime(data) or mime_type, "bin")
        return join_uri(parent_uri(session.uri), "blobs", f"{hashlib.sha256(data).hexdigest()}.{ext}")

    def load(self, uri: str) -> EditSession | None:
        """The session at ``uri``, history verified byte-identical; None when there is none."""
        try:
            raw, generation = self.storage.read_with_generation(uri)
        except ObjectNotFoundError:
            return None
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise StorageError(
                f"edit session {uri}: the document is not valid JSON; nothing was sent"
            ) from err
        if not isinstance(doc, Mapping) or doc.get("format") != SESSION_FORMAT:
            raise ConfigurationError(f"{uri} is not an airflow-banana edit session document")
        if int(doc.get("version", 0)) > SESSION_VERSION:
            raise ConfigurationError(
                f"edit session {uri}: document version {doc.get('version')} is newer than this "
                f"airflow-banana understands ({SESSION_VERSION}); upgrade the package"
            )
        session_id = str(doc["session_id"])
        try:
            history, blobs = materialize(
                doc.get("history") or [], fetch=self.storage.read_bytes, session=session_id
            )
            session = EditSession(
                session_id=session_id,
                uri=uri,
                model=str(doc["model"]),
                settings=GenerationSettings.from_dict(doc.get("settings") or {}),
                start_fingerprint=str(doc.get("start_fingerprint", "")),
                history=history,
                turns=[TurnRecord.from_dict(t) for t in doc.get("turns") or []],
                channel=doc.get("channel"),
                created_at=str(doc.get("created_at", "")),
                updated_at=str(doc.get("updated_at", "")),
                generation=generation,
                blob_uris=blobs,
                saved_history_sha256=doc.get("history_sha256"),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise StorageError(
                f"edit session {uri}: the document is malformed ({type(err).__name__}: {err}); "
                "nothing was sent"
            ) from err
        return session

    @staticmethod
    def verify(session: EditSession) -> None:
        """Raise when the materialised history is not byte-identical to the one that was saved."""
        expected = session.saved_history_sha256
        if expected and history_sha256(session.history) != expected:
            raise StorageError(
                f"edit session '{session.session_id}' ({session.uri}): the history differs from "
                "the one saved (history_sha256 mismatch): the document was edited outside "
                "airflow-banana. Restore it from a good copy; nothing was sent"
            )

    def save(self, session: EditSession, *, known_objects: Mapping[str, str] | None = None) -> EditSession:
        """Write the session with a generation precondition; returns it with the new generation.

        ``known_objects`` (sha256 -> URI) are objects already holding some history bytes (a
        turn's output image): the history points at them instead of storing a second copy.
        Raises ``PreconditionFailedError`` when another writer saved the session in between.
        """
        blobs = dict(session.blob_uris)
        blobs.update(known_objects or {})

        def place(data: bytes, mime_type: str) -> str:
            digest = hashlib.sha256(data).hexdigest()
            if digest in blobs:
                return blobs[digest]
            uri = self.blob_uri(session, data, mime_type)
            # Content-addressed: an existing object of this name already holds these bytes.
            with contextlib.suppress(PreconditionFailedError):
                self.storage.write_bytes(uri, data, content_type=mime_type, if_absent=True)
            blobs[digest] = uri
            return uri

        stored = externalize(session.history, inline_max_bytes=self.inline_max_bytes, place=place)
        updated = replace(session, updated_at=utcnow_iso())
        document = to_document(updated, stored)
        try:
            if session.generation is None:
                generation = self.storage.write_json(session.uri, document, if_absent=True)
            else:
                generation = self.storage.write_json(
                    session.uri, document, if_generation_match=session.generation
                )
        except PreconditionFailedError as err:
            raise PreconditionFailedError(
                f"edit session '{session.session_id}': {session.uri} was changed by another writer "
                "since it was loaded; this turn is not committed. A retry reloads the session and "
                "skips every turn already stored"
            ) from err
        updated.generation = generation
        updated.blob_uris = blobs
        updated.saved_history_sha256 = document["history_sha256"]
        return updated
