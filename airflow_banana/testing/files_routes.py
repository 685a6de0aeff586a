"""The Gemini Files API in the simulator: resumable upload, get, list, delete and download.

The batch lane uploads its JSONL input here when inline requests would pass the 20 MB limit, and
reads result files of batch jobs back through ``:download``. Files live on disk in a temporary
directory, never in memory: a result file of a big batch is many GB on the real service, and
the simulator must let a client prove it streams. Downloads are streamed from disk.

Resumable upload as the SDK does it (GEMINI_WIRE.md): ``POST /upload/{v}/files`` with
``X-Goog-Upload-Command: start`` answers with an absolute ``X-Goog-Upload-URL``; chunks are
POSTed there with ``upload`` / ``upload, finalize`` and ``X-Goog-Upload-Offset``. Every reply
carries ``x-goog-upload-status`` (``active`` until the end; ``final`` on completion or error,
so the SDK stops and raises instead of sending more chunks). The upload id in the URL is the
capability, as on Google's side: chunk requests need no key.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from airflow_banana.testing.app import AppBuilder
from airflow_banana.testing.batch_jobs import answer, fail, gate, get_any, new_id, page, rfc3339
from airflow_banana.testing.errors import google_error
from airflow_banana.testing.state import SimulatorState
from airflow_banana.testing.wire import Caller, caller_for, log_request, read_json

FILE_VERSIONS = ("v1", "v1beta")
MAX_FILE_BYTES = 2 * 1024**3
CHUNK_GRANULARITY = 8 * 1024 * 1024
FILE_TTL_S = 48 * 3600
_FILE_ID_RE = re.compile(r"^[a-z0-9-]{1,40}$")


@dataclass
class StoredFile:
    """A file of the Files API: bytes on disk plus the metadata Google reports."""

    file_id: str
    path: Path
    owner: str  # key id: files are private to the project (here: the key) that made them
    display_name: str
    mime_type: str
    size: int
    sha256: str
    created: float
    source: str  # UPLOADED | GENERATED

    def to_json(self, base_url: str, version: str) -> dict[str, Any]:
        base = base_url.rstrip("/")
        out: dict[str, Any] = {
            "name": f"files/{self.file_id}",
            "mimeType": self.mime_type,
            "sizeBytes": str(self.size),
            "createTime": rfc3339(self.created),
            "updateTime": rfc3339(self.created),
            "expirationTime": rfc3339(self.created + FILE_TTL_S),
            "sha256Hash": base64.b64encode(self.sha256.encode()).decode(),
            "uri": f"{base}/{version}/files/{self.file_id}",
            "state": "ACTIVE",
            "source": self.source,
        }
        if self.display_name:
            out["displayName"] = self.display_name
        if self.source == "GENERATED":
            out["downloadUri"] = f"{base}/download/{version}/files/{self.file_id}:download?alt=media"
        return out


@dataclass
class Upload:
    """A resumable upload in progress."""

    upload_id: str
    file_id: str
    path: Path
    owner: str
    display_name: str
    mime_type: str
    declared: int
    received: int = 0
    hasher: Any = field(default_factory=hashlib.sha256)
    handle: IO[bytes] | None = None


class FileStore:
    """Files and uploads of one simulator, under a temporary directory removed at exit."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="banana-sim-files-")
        self.root = Path(self._dir.name)
        self._lock = threading.Lock()
        self._files: dict[str, StoredFile] = {}
        self._uploads: dict[str, Upload] = {}

    def new_path(self, suffix: str = "") -> Path:
        return self.root / f"{new_id(16)}{suffix}"

    def _free_id(self, wanted: str | None) -> str:
        if wanted:
            if wanted in self._files or any(u.file_id == wanted for u in self._uploads.values()):
                raise FileExistsError(wanted)
            return wanted
        while True:
            candidate = new_id(12)
            if candidate not in self._files:
                return candidate

    def start_upload(
        self, *, owner: str, display_name: str, mime_type: str, size: int, file_id: str | None
    ) -> Upload:
        with self._lock:
            upload = Upload(
                upload_id=new_id(32),
                file_id=self._free_id(file_id),
                path=self.new_path(".upload"),
                owner=owner,
                display_name=display_name,
                mime_type=mime_type,
                declared=size,
            )
            upload.handle = upload.path.open("wb")
            self._uploads[upload.upload_id] = upload
            return upload

    def upload(self, upload_id: str) -> Upload | None:
        with self._lock:
            return self._uploads.get(upload_id)

    def finalize(self, upload: Upload) -> StoredFile:
        with self._lock:
            self._uploads.pop(upload.upload_id, None)
            if upload.handle is not None:
                upload.handle.close()
            stored = StoredFile(
                file_id=upload.file_id,
                path=upload.path,
                owner=upload.owner,
                display_name=upload.display_name,
                mime_type=upload.mime_type,
                size=upload.received,
                sha256=upload.hasher.hexdigest(),
                created=time.time(),
                source="UPLOADED",
            )
            self._files[stored.file_id] = stored
            return stored

    def abandon(self, upload: Upload) -> None:
        with self._lock:
            self._uploads.pop(upload.upload_id, None)
            if upload.handle is not None:
                upload.handle.close()
            upload.path.unlink(missing_ok=True)

    def add_generated(self, *, owner: str, path: Path, display_name: str, mime_type: str) -> StoredFile:
        """Adopt a file written by the simulator (a batch result) as a downloadable GENERATED file."""
        hasher = hashlib.sha256()
        size = 0
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1024 * 1024), b""):
                hasher.update(chunk)
                size += len(chunk)
        with self._lock:
            file_id = "batch" + self._free_id(None)
            target = self.root / f"{file_id}.generated"
            shutil.move(str(path), target)
            stored = StoredFile(
                file_id=file_id,
                path=target,
                owner=owner,
                display_name=display_name,
                mime_type=mime_type,
                size=size,
                sha256=hasher.hexdigest(),
                created=time.time(),
                source="GENERATED",
            )
            self._files[file_id] = stored
            return stored

    def get(self, file_id: str) -> StoredFile | None:
        with self._lock:
            return self._files.get(file_id)

    def delete(self, file_id: str) -> None:
        with self._lock:
            stored = self._files.pop(file_id, None)
        if stored is not None:
            stored.path.unlink(missing_ok=True)

    def files(self, owner: str) -> list[StoredFile]:
        with self._lock:
            found = [f for f in self._files.values() if f.owner == owner]
        return sorted(found, key=lambda f: f.created, reverse=True)

    def clear(self) -> None:
        with self._lock:
            uploads, self._uploads = list(self._uploads.values()), {}
            files, self._files = list(self._files.values()), {}
        for upload in uploads:
            if upload.handle is not None:
                upload.handle.close()
            upload.path.unlink(missing_ok=True)
        for stored in files:
            stored.path.unlink(missing_ok=True)


_STORE_KEY = "files"
_STORE_LOCK = threading.Lock()


def file_store(state: SimulatorState) -> FileStore:
    """The simulator's file store (created on first use; emptied by ``state.reset``)."""
    with _STORE_LOCK:
        store: FileStore | None = state.extras.get(_STORE_KEY)
        if store is None:
            store = FileStore()
            state.extras[_STORE_KEY] = store
            state.reset_hooks.append(store.clear)
        return store


def _upload_reply(
    status: str, *, code: int = 200, body: Any = None, headers: dict[str, str] | None = None
) -> Response:
    all_headers = {"x-goog-upload-status": status, **(headers or {})}
    if body is None:
        return Response(b"", status_code=code, headers=all_headers)
    return JSONResponse(body, status_code=code, headers=all_headers)


async def upload_files(request: Request) -> Response:
    """POST ``/upload/{v}/files``: start a resumable upload, or carry one of its chunks."""
    state: SimulatorState = request.app.state.sim
    version = request.path_params["version"]
    started = time.monotonic()
    upload_id = request.query_params.get("upload_id")
    if upload_id is not None:
        return await _upload_chunk(request, state, upload_id, started)
    caller = caller_for(request, state, "developer", version=version)
    if version not in FILE_VERSIONS:
        return fail(request, caller, started, 404, f"Method not found: POST {request.url.path}")
    denied = gate(request, caller, started)
    if denied is not None:
        return denied
    protocol = request.headers.get("x-goog-upload-protocol", "").lower()
    command = request.headers.get("x-goog-upload-command", "").lower()
    if protocol != "resumable" or command != "start":
        return fail(
            request,
            caller,
            started,
            400,
            "Only resumable uploads are supported: start with X-Goog-Upload-Command: start",
        )
    body = await read_json(request)
    meta = get_any(body, "file") or {}
    mime = str(
        get_any(meta, "mimeType", "mime_type") or request.headers.get("x-goog-upload-header-content-type", "")
    )
    size_text = request.headers.get("x-goog-upload-header-content-length") or get_any(
        meta, "sizeBytes", "size_bytes"
    )
    try:
        size = int(size_text) if size_text is not None else -1
    except ValueError:
        size = -1
    if not mime:
        return fail(
            request, caller, started, 400, "File mime type is required (X-Goog-Upload-Header-Content-Type)."
        )
    if size < 0:
        return fail(
            request, caller, started, 400, "File size is required (X-Goog-Upload-Header-Content-Length)."
        )
    if size > MAX_FILE_BYTES:
        return fail(
            request, caller, started, 400, f"File size {size} exceeds the limit of {MAX_FILE_BYTES} bytes."
        )
    wanted = get_any(meta, "name")
    file_id = str(wanted).removeprefix("files/") if wanted else None
    if file_id is not None and not _FILE_ID_RE.match(file_id):
        return fail(
            request,
            caller,
            started,
            400,
            f"Invalid file name {wanted!r}: use lowercase letters, digits and dashes.",
        )
    try:
        upload = file_store(state).start_upload(
            owner=caller.key_id,
            display_name=str(get_any(meta, "displayName", "display_name") or ""),
            mime_type=mime,
            size=size,
            file_id=file_id,
        )
    except FileExistsError:
        return fail(request, caller, started, 409, f"File files/{file_id} already exists.")
    base = str(request.base_url).rstrip("/")
    url = f"{base}/upload/{version}/files?upload_id={upload.upload_id}&upload_protocol=resumable"
    log_request(state, request, caller, started, 200, None)
    return _upload_reply(
        "active",
        headers={"X-Goog-Upload-URL": url, "X-Goog-Upload-Chunk-Granularity": str(CHUNK_GRANULARITY)},
    )


async def _upload_chunk(request: Request, state: SimulatorState, upload_id: str, started: float) -> Response:
    store = file_store(state)
    upload = store.upload(upload_id)
    version = request.path_params["version"]
    caller = Caller(
        key="", key_id=upload.owner if upload else "anonymous", surface="developer", version=version
    )
    if upload is None:
        log_request(state, request, caller, started, 404, None)
        return _upload_reply(
            "final", code=404, body=google_error(404, "Upload session not found or already finished.")
        )
    command = {c.strip() for c in request.headers.get("x-goog-upload-command", "").lower().split(",")}
    if "query" in command:
        log_request(state, request, caller, started, 200, None)
        return _upload_reply("active", headers={"X-Goog-Upload-Size-Received": str(upload.received)})
    if "cancel" in command:
        store.abandon(upload)
        log_request(state, request, caller, started, 200, None)
        return _upload_reply("cancelled")
    if not command & {"upload", "finalize"}:
        log_request(state, request, caller, started, 400, None)
        return _upload_reply("final", code=400, body=google_error(400, "Unknown X-Goog-Upload-Command."))
    try:
        offset = int(request.headers.get("x-goog-upload-offset", "-1"))
    except ValueError:
        offset = -1
    if offset != upload.received:
        store.abandon(upload)
        log_request(state, request, caller, started, 400, None)
        return _upload_reply(
            "final",
            code=400,
            body=google_error(
                400, f"Invalid X-Goog-Upload-Offset {offset}: {upload.received} bytes received so far."
            ),
        )
    assert upload.handle is not None
    async for piece in request.stream():
        if not piece:
            continue
        upload.received += len(piece)
        if upload.received > upload.declared:
            store.abandon(upload)
            log_request(state, request, caller, started, 400, None)
            return _upload_reply(
                "final",
                code=400,
                body=google_error(400, f"Upload exceeds the declared size of {upload.declared} bytes."),
            )
        upload.hasher.update(piece)
        upload.handle.write(piece)
    if "finalize" not in command:
        log_request(state, request, caller, started, 200, None)
        return _upload_reply("active", headers={"X-Goog-Upload-Size-Received": str(upload.received)})
    if upload.received != upload.declared:
        store.abandon(upload)
        log_request(state, request, caller, started, 400, None)
        return _upload_reply(
            "final",
            code=400,
            body=google_error(
                400, f"Upload finalized at {upload.received} bytes; {upload.declared} were declared."
            ),
        )
    stored = store.finalize(upload)
    log_request(state, request, caller, started, 200, None)
    return _upload_reply(
        "final",
        body={"file": stored.to_json(str(request.base_url), version)},
        headers={"X-Goog-Upload-Size-Received": str(upload.received)},
    )


def _owned(
    request: Request, caller: Caller, started: float, file_id: str
) -> tuple[StoredFile | None, Response | None]:
    stored = file_store(request.app.state.sim).get(file_id)
    if stored is None or stored.owner != caller.key_id:
        # Google answers 403 both for "not yours" and "does not exist".
        message = f"You do not have permission to access the File {file_id} or it may not exist."
        return None, fail(request, caller, started, 403, message)
    return stored, None


async def file_resource(request: Request) -> Response:
    """GET/DELETE ``/{v}/files/{id}`` and GET ``/{v}/files/{id}:download?alt=media``."""
    state: SimulatorState = request.app.state.sim
    version = request.path_params["version"]
    file_id, _, action = request.path_params["file_action"].partition(":")
    caller = caller_for(request, state, "developer", version=version)
    started = time.monotonic()
    if version not in FILE_VERSIONS or action not in ("", "download"):
        return fail(request, caller, started, 404, f"Method not found: {request.method} {request.url.path}")
    denied = gate(request, caller, started)
    if denied is not None:
        return denied
    stored, refused = _owned(request, caller, started, file_id)
    if refused is not None or stored is None:
        return refused or fail(request, caller, started, 404, "File not found.")
    if action == "download":
        if request.method != "GET":
            return fail(
                request, caller, started, 404, f"Method not found: {request.method} {request.url.path}"
            )
        return _download(request, caller, started, stored)
    if request.method == "DELETE":
        file_store(state).delete(file_id)
        return answer(request, caller, started, 200, {})
    return answer(request, caller, started, 200, stored.to_json(str(request.base_url), version))


def _download(request: Request, caller: Caller, started: float, stored: StoredFile) -> Response:
    log_request(request.app.state.sim, request, caller, started, 200, None)
    return FileResponse(stored.path, media_type=stored.mime_type)


async def download_file(request: Request) -> Response:
    """GET ``/download/{v}/files/{id}:download?alt=media`` (the form Google's docs use)."""
    return await file_resource(request)


async def list_files(request: Request) -> Response:
    state: SimulatorState = request.app.state.sim
    version = request.path_params["version"]
    caller = caller_for(request, state, "developer", version=version)
    started = time.monotonic()
    if version not in FILE_VERSIONS:
        return fail(request, caller, started, 404, f"Method not found: GET {request.url.path}")
    denied = gate(request, caller, started)
    if denied is not None:
        return denied
    try:
        chunk, token = page(file_store(state).files(caller.key_id), request, default_size=10)
    except ValueError as err:
        return fail(request, caller, started, 400, str(err))
    body: dict[str, Any] = {"files": [f.to_json(str(request.base_url), version) for f in chunk]}
    if token:
        body["nextPageToken"] = token
    return answer(request, caller, started, 200, body)


def register(builder: AppBuilder) -> None:
    file_store(builder.state)
    builder.add_route(Route("/upload/{version}/files", upload_files, methods=["POST"]))
    builder.add_route(Route("/download/{version}/files/{file_action}", download_file, methods=["GET"]))
    builder.add_route(Route("/{version}/files", list_files, methods=["GET"]))
    builder.add_route(Route("/{version}/files/{file_action}", file_resource, methods=["GET", "DELETE"]))
