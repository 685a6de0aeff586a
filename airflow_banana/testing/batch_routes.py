"""The Gemini Developer Batch API in the simulator, plus the batch admin endpoint.

``POST /{v}/models/{m}:batchGenerateContent`` takes inline requests (``inputConfig.requests``,
body under 20 MB as on Google's side) or an uploaded JSONL file (``inputConfig.fileName``). The
answer is the long-running operation the SDK parses: ``name`` and ``metadata`` (state, times,
``batchStats``, and once done ``output``); ``done`` turns true at the end. Inline input gives
inline responses; file input gives a GENERATED result file (``output.responsesFile``) with lines
``{"key": …, "response": {…}}`` / ``{"key": …, "error": {…}}``. Per-request errors are
google.rpc.Status without details. The Developer API has no PARTIALLY_SUCCEEDED state: such a
job reports BATCH_STATE_SUCCEEDED with its failed lines. ``done`` jobs also carry the operation
``error`` when FAILED/EXPIRED. The operation's ``response`` field is left out (it would repeat
``metadata.output``; the SDK reads only the latter). List entries leave out ``output`` too.

Get/cancel/delete/list: ``/{v}/batches/{id}[:cancel]``, ``/{v}/batches?pageSize=&pageToken=``;
jobs are private to the key that made them (Google: the project). Cancelling a finished job
answers 400 FAILED_PRECONDITION. A job GET may answer 503 when the job's profile asks for poll
errors. Admin: ``GET /_simulator/batches`` (default profile + every job),
``PUT /_simulator/batches`` with ``{"job": name, "profile": {…}}`` (change one job from now on)
or ``{"default": {…}}`` (jobs created later; ``null`` restores the configured one).
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from pathlib import Path
from typing import IO, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from airflow_banana.exceptions import ConfigurationError
from airflow_banana.testing.app import ActionContext, AppBuilder
from airflow_banana.testing.batch_jobs import (
    LineOutcome,
    SimJob,
    answer,
    fail,
    gate,
    get_any,
    iter_json_lines,
    job_registry,
    new_id,
    page,
    poll_error,
    rfc3339,
)
from airflow_banana.testing.config import BatchProfile
from airflow_banana.testing.errors import model_not_found
from airflow_banana.testing.files_routes import FileStore, file_store
from airflow_banana.testing.generate import strict_for
from airflow_banana.testing.state import SimulatorState
from airflow_banana.testing.wire import caller_for

DEVELOPER_VERSIONS = ("v1", "v1beta")
INLINE_LIMIT_BYTES = 20 * 1024 * 1024
BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"


class InlineSink:
    """Inline input → inline responses, in input order (inline jobs are small by Google's limit)."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def add(self, outcome: LineOutcome) -> None:
        entry: dict[str, Any] = (
            {"response": outcome.response} if outcome.ok else {"error": outcome.rpc_error()}
        )
        metadata = outcome.line.get("metadata")
        if isinstance(metadata, dict):
            entry["metadata"] = {str(k): str(v) for k, v in metadata.items()}
        self.entries.append(entry)

    def close(self, job: SimJob) -> None:
        return None

    def discard(self) -> None:
        self.entries.clear()

    def output(self) -> dict[str, Any]:
        return {"inlinedResponses": {"inlinedResponses": self.entries}}


class ResultFileSink:
    """File input → a result JSONL written line by line to disk, published as a file at the end."""

    def __init__(self, store: FileStore):
        self.store = store
        self.path = store.new_path(".results")
        self._handle: IO[bytes] | None = None
        self.file_name: str | None = None

    def add(self, outcome: LineOutcome) -> None:
        if self._handle is None:
            self._handle = self.path.open("ab")
        line: dict[str, Any] = {}
        if "key" in outcome.line:
            line["key"] = outcome.line["key"]
        if outcome.ok:
            line["response"] = outcome.response
        else:
            line["error"] = outcome.rpc_error()
        self._handle.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")

    def close(self, job: SimJob) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self.path.touch()
        stored = self.store.add_generated(
            owner=job.key_id,
            path=self.path,
            display_name=f"{job.name} results",
            mime_type="application/jsonl",
        )
        self.file_name = f"files/{stored.file_id}"

    def discard(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self.path.unlink(missing_ok=True)

    def output(self) -> dict[str, Any]:
        return {"responsesFile": self.file_name} if self.file_name else {}


def developer_state(canonical: str) -> str:
    return "BATCH_STATE_SUCCEEDED" if canonical == "PARTIALLY_SUCCEEDED" else f"BATCH_STATE_{canonical}"


def developer_job(state: SimulatorState, job: SimJob, *, with_output: bool = True) -> dict[str, Any]:
    """The operation JSON of a job, as Google's batches.get answers it."""
    now = state.clock()
    current = job.state(now)
    finished = job.final_state is not None
    meta: dict[str, Any] = {
        "@type": BATCH_TYPE,
        "name": job.name,
        "model": f"models/{job.model}",
        "displayName": job.display_name,
        "createTime": rfc3339(job.created_wall),
        "updateTime": rfc3339(job.end_wall if job.end_wall is not None else job.wall_at(now)),
        "state": developer_state(current),
        "batchStats": {
            "requestCount": str(job.total),
            "successfulRequestCount": str(job.succeeded),
            "failedRequestCount": str(job.failed),
            "pendingRequestCount": str(job.total - job.done),
        },
    }
    if job.extra.get("file_name"):
        meta["inputConfig"] = {"fileName": job.extra["file_name"]}
    if finished and job.end_wall is not None:
        meta["endTime"] = rfc3339(job.end_wall)
    if finished and with_output:
        sink = job.sink
        if isinstance(sink, (InlineSink, ResultFileSink)):
            meta["output"] = sink.output()
    body: dict[str, Any] = {"name": job.name, "metadata": meta, "done": finished}
    if finished and job.error is not None and job.final_state in ("FAILED", "EXPIRED"):
        body["error"] = dict(job.error)
    return body


def _spool_inline(path: Path, requests: list[Any]) -> str | None:
    """Write inline requests to the job's spool; an error message if one is malformed."""
    with path.open("wb") as fh:
        for i, item in enumerate(requests):
            request = get_any(item, "request")
            if not isinstance(request, dict):
                return f"batch.input_config.requests.requests[{i}].request is required"
            line: dict[str, Any] = {"request": request}
            metadata = get_any(item, "metadata")
            if metadata is not None:
                if not isinstance(metadata, dict):
                    return f"batch.input_config.requests.requests[{i}].metadata must be an object"
                line["metadata"] = metadata
            fh.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
    return None


def _spool_file(source: Path, path: Path) -> tuple[int, str | None]:
    """Copy an uploaded JSONL input to the spool, checking every line; (line count, error)."""
    count = 0
    with path.open("wb") as out:
        for number, value in iter_json_lines(source):
            if isinstance(value, ValueError):
                return count, f"Invalid JSON in input file at line {number}: {value}"
            if not isinstance(value, dict) or not isinstance(get_any(value, "request"), dict):
                return count, f"Input file line {number} must be an object with a 'request' object"
            out.write(json.dumps(value, separators=(",", ":")).encode() + b"\n")
            count += 1
    return count, None


async def batch_generate_content(request: Request, ctx: ActionContext) -> Response:
    state, caller = ctx.state, ctx.caller
    started = time.monotonic()
    denied = gate(request, caller, started)
    if denied is not None:
        return denied
    raw = await request.body()
    if len(raw) > INLINE_LIMIT_BYTES:
        return fail(
            request,
            caller,
            started,
            400,
            f"Request payload size exceeds the limit: {INLINE_LIMIT_BYTES} bytes.",
        )
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        return fail(request, caller, started, 400, "Invalid JSON payload received.")
    model = ctx.model.removeprefix("models/")
    if model not in state.config.models:
        return answer(request, caller, started, 404, model_not_found(model, ctx.version))
    batch = get_any(body, "batch")
    if not isinstance(batch, dict):
        return fail(request, caller, started, 400, "* BatchGenerateContentRequest.batch: batch is required")
    display_name = str(get_any(batch, "displayName", "display_name") or "")
    input_config = get_any(batch, "inputConfig", "input_config")
    inline = get_any(get_any(input_config, "requests"), "requests")
    file_name = get_any(input_config, "fileName", "file_name")
    if (inline is None) == (file_name is None):
        return fail(
            request, caller, started, 400,
            "* batch.input_config: exactly one of file_name or requests must be set",
        )  # fmt: skip
    registry = job_registry(state)
    spool = registry.spool_path(".in.jsonl")
    sink: InlineSink | ResultFileSink
    extra: dict[str, Any] = {}
    if inline is not None:
        if not isinstance(inline, list) or not inline:
            return fail(
                request,
                caller,
                started,
                400,
                "* batch.input_config.requests.requests: at least one request is required",
            )
        problem = await asyncio.to_thread(_spool_inline, spool, inline)
        total, source, sink = len(inline), "inline", InlineSink()
    else:
        store = file_store(state)
        file_id = str(file_name).removeprefix("files/")
        stored = store.get(file_id)
        if stored is None or stored.owner != caller.key_id:
            return fail(
                request,
                caller,
                started,
                403,
                f"You do not have permission to access the File {file_id} or it may not exist.",
            )
        total, problem = await asyncio.to_thread(_spool_file, stored.path, spool)
        if problem is None and total == 0:
            problem = f"Input file files/{file_id} has no requests"
        source, sink = f"files/{file_id}", ResultFileSink(store)
        extra["file_name"] = source
    if problem is not None:
        spool.unlink(missing_ok=True)
        return fail(request, caller, started, 400, problem)
    job = registry.create(
        name=f"batches/{new_id()}",
        surface="developer",
        key=caller.key,
        model=model,
        display_name=display_name,
        labels={},
        total=total,
        spool=spool,
        sink=sink,
        strict=strict_for(state, caller.key, vertex=False),
        source=source,
        extra=extra,
    )
    registry.spawn(job)
    return answer(request, caller, started, 200, developer_job(state, job))


async def batch_resource(request: Request) -> Response:
    """GET/DELETE ``/{v}/batches/{id}``; POST ``/{v}/batches/{id}:cancel``."""
    state: SimulatorState = request.app.state.sim
    version = request.path_params["version"]
    job_id, _, action = request.path_params["job_action"].partition(":")
    caller = caller_for(request, state, "developer", version=version)
    started = time.monotonic()
    allowed = {("GET", ""), ("DELETE", ""), ("POST", "cancel")}
    if version not in DEVELOPER_VERSIONS or (request.method, action) not in allowed:
        return fail(request, caller, started, 404, f"Method not found: {request.method} {request.url.path}")
    denied = gate(request, caller, started)
    if denied is not None:
        return denied
    registry = job_registry(state)
    job = registry.find(f"batches/{job_id}")
    if job is None or job.surface != "developer" or job.key_id != caller.key_id:
        return fail(request, caller, started, 404, f"Batch batches/{job_id} not found.")
    if request.method == "DELETE":
        registry.delete(job)
        return answer(request, caller, started, 200, {})
    if action == "cancel":
        if not await asyncio.to_thread(registry.cancel, job):
            return fail(
                request,
                caller,
                started,
                400,
                f"Batch {job.name} has already finished; it cannot be cancelled.",
            )
        return answer(request, caller, started, 200, {})
    if job.take_poll_error():
        return poll_error(request, caller, started)
    body = await asyncio.to_thread(registry.view, job, functools.partial(developer_job, state))
    return answer(request, caller, started, 200, body)


async def list_batches(request: Request) -> Response:
    state: SimulatorState = request.app.state.sim
    version = request.path_params["version"]
    caller = caller_for(request, state, "developer", version=version)
    started = time.monotonic()
    if version not in DEVELOPER_VERSIONS:
        return fail(request, caller, started, 404, f"Method not found: GET {request.url.path}")
    denied = gate(request, caller, started)
    if denied is not None:
        return denied
    registry = job_registry(state)
    mine = registry.jobs(lambda j: j.surface == "developer" and j.key_id == caller.key_id)
    try:
        chunk, token = page(mine, request)
    except ValueError as err:
        return fail(request, caller, started, 400, str(err))
    build = functools.partial(developer_job, state, with_output=False)
    entries = [await asyncio.to_thread(registry.view, j, build) for j in chunk]
    body: dict[str, Any] = {"operations": entries}
    if token:
        body["nextPageToken"] = token
    return answer(request, caller, started, 200, body)


def _admin_error(err: Exception) -> Response:
    return JSONResponse(
        {"error": {"code": 400, "message": str(err), "status": "INVALID_ARGUMENT"}}, status_code=400
    )


async def admin_batches(request: Request) -> Response:
    state: SimulatorState = request.app.state.sim
    registry = job_registry(state)
    if request.method == "PUT":
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ConfigurationError("PUT /_simulator/batches: body must be a JSON object")
            if "job" in body:
                registry.override(str(body["job"]), body.get("profile") or {})
            elif "default" in body:
                registry.default = (
                    BatchProfile.from_dict(body["default"]) if body["default"] is not None else None
                )
            else:
                raise ConfigurationError(
                    'PUT /_simulator/batches: expected {"job", "profile"} or {"default"}'
                )
        except (ConfigurationError, ValueError) as err:
            return _admin_error(err)
    for job in registry.jobs():
        await asyncio.to_thread(registry.advance, job)
    default = registry.default or state.config.batch
    return JSONResponse(
        {"default": default.to_dict(), "jobs": [registry.describe(j) for j in registry.jobs()]}
    )


def register(builder: AppBuilder) -> None:
    job_registry(builder.state)
    builder.add_model_action("batchGenerateContent", batch_generate_content)
    builder.add_route(Route("/_simulator/batches", admin_batches, methods=["GET", "PUT"]))
    builder.add_route(Route("/{version}/batches", list_batches, methods=["GET"]))
    builder.add_route(
        Route("/{version}/batches/{job_action}", batch_resource, methods=["GET", "POST", "DELETE"])
    )
