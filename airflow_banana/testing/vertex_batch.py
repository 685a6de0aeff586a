"""Vertex AI batch prediction (``batchPredictionJobs``) in the simulator, reading and writing GCS.

What google-genai sends with ``vertexai=True`` and ``batches.create(src="gs://…", config={"dest":
"gs://…"})``: POST ``/{v}/projects/{p}/locations/{l}/batchPredictionJobs`` (v1beta1 and v1) with
``inputConfig.gcsSource.uris`` and ``outputConfig.gcsDestination.outputUriPrefix``. The answer is
the job itself (not an operation): ``projects/{number}/locations/{l}/batchPredictionJobs/{id}``
with a numeric id, ``state`` ``JOB_STATE_*``, ``completionStats`` and, once running,
``outputInfo.gcsOutputDirectory`` = ``{prefix}/prediction-model-{create time}``.

The input JSONL is copied from GCS to local disk when the job is created (a job whose input
cannot be read is created FAILED, as Vertex fails it after accepting it). Completed lines go to
a local spool; when the job ends, whatever state it ends in, the spool is uploaded as
``{output directory}/predictions.jsonl`` with lines ``{…input fields…, "status": "",
"processed_time": …, "request": {…}, "response": {…}}`` (``status`` = the error text and no
``response`` for a failed line). GCS traffic goes only to a loopback emulator
(``STORAGE_EMULATOR_HOST``, which the test fixtures set): the simulator never reaches real GCS.

List supports ``filter`` terms joined by AND: ``display_name="…"``, ``labels.k="v"``,
``state=JOB_STATE_…``. Cancelling a finished job answers 400 FAILED_PRECONDITION; delete answers
a done operation.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import re
import shlex
import threading
import time
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from airflow_banana.exceptions import ConfigurationError
from airflow_banana.testing.app import AppBuilder
from airflow_banana.testing.batch_jobs import (
    JobRegistry,
    LineOutcome,
    SimJob,
    answer,
    fail,
    gate,
    get_any,
    job_registry,
    model_name,
    page,
    poll_error,
    rfc3339,
)
from airflow_banana.testing.errors import model_not_found
from airflow_banana.testing.generate import strict_for
from airflow_banana.testing.state import SimulatorState
from airflow_banana.testing.wire import Caller, caller_for

VERTEX_VERSIONS = ("v1", "v1beta1")
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_FILTER_TERM = re.compile(r"^\s*([A-Za-z_.]+)\s*=\s*(.+?)\s*$")
_CLIENTS: dict[str, Any] = {}
_CLIENTS_LOCK = threading.Lock()


def project_number(project: str) -> str:
    """Vertex names jobs by project NUMBER; a stable 12-digit stand-in for a project id."""
    if project.isdigit():
        return project
    return str(100000000000 + int(hashlib.sha256(project.encode()).hexdigest()[:12], 16) % 900000000000)


def _gcs_client() -> Any:
    """A google-cloud-storage client bound to the loopback emulator; anything else is refused."""
    endpoint = os.environ.get(EMULATOR_ENV, "")
    host = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}").hostname or ""
    if not endpoint or host not in _LOOPBACK:
        raise ConfigurationError(
            f"the simulator reads and writes gs:// only through a GCS emulator on loopback; "
            f"set {EMULATOR_ENV} (now {endpoint or 'unset'!r})"
        )
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(endpoint)
        if client is None:
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import storage

            client = storage.Client(credentials=AnonymousCredentials(), project="sim-project")
            _CLIENTS[endpoint] = client
        return client


def _split_gs(uri: str) -> tuple[str, str]:
    if not uri.startswith("gs://"):
        raise ConfigurationError(f"{uri!r} is not a gs:// URI")
    bucket, _, name = uri[5:].partition("/")
    if not bucket:
        raise ConfigurationError(f"{uri!r} names no bucket")
    return bucket, name


def _read_inputs(uris: list[str], spool: Path) -> int:
    """Download every input object to the spool (streamed to disk); the number of non-blank lines."""
    client = _gcs_client()
    with spool.open("wb") as out:
        for uri in uris:
            bucket, name = _split_gs(uri)
            part = spool.with_suffix(".part")
            try:
                client.bucket(bucket).blob(name).download_to_filename(str(part))
            except Exception as err:
                part.unlink(missing_ok=True)
                raise ConfigurationError(
                    f"cannot read batch input {uri}: {type(err).__name__} {getattr(err, 'code', '')}".rstrip()
                ) from err
            with part.open("rb") as src:
                for raw in src:
                    out.write(raw if raw.endswith(b"\n") else raw + b"\n")
            part.unlink(missing_ok=True)
    count = 0
    with spool.open("rb") as fh:
        for raw in fh:
            if raw.strip():
                count += 1
    return count


class PredictionsSink:
    """Completed lines to a local spool; ``predictions.jsonl`` uploaded to GCS when the job ends."""

    def __init__(self, registry: JobRegistry, output_dir: str):
        self.path = registry.spool_path(".predictions.jsonl")
        self.output_dir = output_dir
        self._handle: IO[bytes] | None = None
        self.written = False

    def add(self, outcome: LineOutcome) -> None:
        if self._handle is None:
            self._handle = self.path.open("ab")
        line: dict[str, Any] = {k: v for k, v in outcome.line.items() if k not in ("request", "response")}
        line["status"] = "" if outcome.ok else outcome.message
        line["processed_time"] = rfc3339(outcome.processed_at)
        line["request"] = outcome.line.get("request", {})
        if outcome.ok:
            line["response"] = outcome.response
        self._handle.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")

    def close(self, job: SimJob) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self.path.touch()
        bucket, name = _split_gs(f"{self.output_dir}/predictions.jsonl")
        blob = _gcs_client().bucket(bucket).blob(name)
        blob.upload_from_filename(str(self.path), content_type="application/jsonl")
        self.written = True
        self.path.unlink(missing_ok=True)

    def discard(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self.path.unlink(missing_ok=True)


def vertex_job(state: SimulatorState, job: SimJob) -> dict[str, Any]:
    """The BatchPredictionJob JSON, as Vertex answers create/get/list."""
    now = state.clock()
    current = job.state(now)
    body: dict[str, Any] = {
        "name": job.name,
        "displayName": job.display_name,
        "model": f"publishers/google/models/{job.model}",
        "inputConfig": job.extra["input_config"],
        "outputConfig": job.extra["output_config"],
        "state": f"JOB_STATE_{current}",
        "createTime": rfc3339(job.created_wall),
        "updateTime": rfc3339(job.end_wall if job.end_wall is not None else job.wall_at(now)),
    }
    if job.labels:
        body["labels"] = dict(job.labels)
    if current != "PENDING":
        if job.start_wall is not None:
            body["startTime"] = rfc3339(job.start_wall)
        body["completionStats"] = {
            "successfulCount": str(job.succeeded),
            "failedCount": str(job.failed),
            "incompleteCount": str(job.total - job.done),
        }
        sink = job.sink
        if isinstance(sink, PredictionsSink) and (job.final_state is None or sink.written):
            body["outputInfo"] = {"gcsOutputDirectory": sink.output_dir}
    if job.end_wall is not None and job.final_state is not None:
        body["endTime"] = rfc3339(job.end_wall)
    if job.error is not None and job.final_state in ("FAILED", "EXPIRED"):
        body["error"] = dict(job.error)
    return body


def _vertex_caller(request: Request) -> tuple[Caller, str, str, str]:
    p = request.path_params
    state: SimulatorState = request.app.state.sim
    caller = caller_for(request, state, "vertex", version=p["version"])
    return caller, p["version"], p["project"], p["location"]


def _same_place(job: SimJob, project: str, location: str) -> bool:
    return job.extra.get("location") == location and project in (
        job.extra.get("project"),
        job.extra.get("number"),
    )


async def jobs_collection(request: Request) -> Response:
    """POST creates a job; GET lists the project's jobs in that location."""
    state: SimulatorState = request.app.state.sim
    caller, version, project, location = _vertex_caller(request)
    started = time.monotonic()
    if version not in VERTEX_VERSIONS:
        return fail(request, caller, started, 404, f"Method not found: {request.method} {request.url.path}")
    denied = gate(request, caller, started)
    if denied is not None:
        return denied
    if request.method == "GET":
        return await _list(request, caller, started, project, location)
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        return fail(request, caller, started, 400, "Invalid JSON payload received.")
    if not isinstance(body, dict):
        return fail(request, caller, started, 400, "Invalid JSON payload received. Expected an object.")
    model = model_name(str(get_any(body, "model") or ""))
    if model not in state.config.models:
        return answer(request, caller, started, 404, model_not_found(model or "(none)", version))
    display_name = str(get_any(body, "displayName", "display_name") or "")
    if not display_name:
        return fail(request, caller, started, 400, "BatchPredictionJob.display_name is required.")
    input_config = get_any(body, "inputConfig", "input_config") or {}
    output_config = get_any(body, "outputConfig", "output_config") or {}
    uris = get_any(get_any(input_config, "gcsSource", "gcs_source"), "uris") or []
    prefix = get_any(
        get_any(output_config, "gcsDestination", "gcs_destination"), "outputUriPrefix", "output_uri_prefix"
    )
    in_format = get_any(input_config, "instancesFormat", "instances_format") or "jsonl"
    out_format = get_any(output_config, "predictionsFormat", "predictions_format") or "jsonl"
    if isinstance(uris, str):
        uris = [uris]
    if not uris or not all(isinstance(u, str) and u.startswith("gs://") for u in uris):
        return fail(request, caller, started, 400, "input_config.gcs_source.uris must name gs:// objects.")
    if not isinstance(prefix, str) or not prefix.startswith("gs://"):
        return fail(
            request,
            caller,
            started,
            400,
            "output_config.gcs_destination.output_uri_prefix must be a gs:// prefix.",
        )
    if in_format != "jsonl" or out_format != "jsonl":
        return fail(
            request, caller, started, 400, "Only the jsonl instances and predictions formats are simulated."
        )
    labels = get_any(body, "labels") or {}
    if not isinstance(labels, dict):
        return fail(request, caller, started, 400, "BatchPredictionJob.labels must be a map of strings.")

    registry = job_registry(state)
    number = project_number(project)
    job_id = str(10**18 + int.from_bytes(os.urandom(8), "big") % (9 * 10**18))
    name = f"projects/{number}/locations/{location}/batchPredictionJobs/{job_id}"
    created = time.time()
    output_dir = f"{prefix.rstrip('/')}/prediction-model-{rfc3339(created)}"
    spool = registry.spool_path(".in.jsonl")
    read_error: str | None = None
    total = 0
    try:
        total = await asyncio.to_thread(_read_inputs, list(uris), spool)
    except ConfigurationError as err:
        read_error = str(err)
    job = registry.create(
        name=name,
        surface="vertex",
        key=caller.key,
        model=model,
        display_name=display_name,
        labels={str(k): str(v) for k, v in labels.items()},
        total=total,
        spool=spool,
        sink=PredictionsSink(registry, output_dir),
        strict=strict_for(state, caller.key, vertex=True),
        source=",".join(uris),
        extra={
            "project": project,
            "number": number,
            "location": location,
            "input_config": {"instancesFormat": "jsonl", "gcsSource": {"uris": list(uris)}},
            "output_config": {"predictionsFormat": "jsonl", "gcsDestination": {"outputUriPrefix": prefix}},
        },
    )
    if read_error is not None:
        await asyncio.to_thread(registry.fail_now, job, 5, read_error)
    else:
        registry.spawn(job)
    return answer(request, caller, started, 200, vertex_job(state, job))


def _filter(text: str) -> list[tuple[str, str]]:
    terms = []
    for part in re.split(r"\s+AND\s+", text.strip()) if text.strip() else []:
        match = _FILTER_TERM.match(part)
        if match is None:
            raise ValueError(f"Unsupported filter term {part!r}")
        field, value = match.group(1), match.group(2)
        if value.startswith('"'):
            value = shlex.split(value)[0]
        if field not in ("display_name", "displayName", "state") and not field.startswith("labels."):
            raise ValueError(f"Unsupported filter field {field!r}")
        terms.append((field, value))
    return terms


def _matches(job: SimJob, state_name: str, terms: list[tuple[str, str]]) -> bool:
    for field, value in terms:
        if field in ("display_name", "displayName") and job.display_name != value:
            return False
        if field == "state" and state_name != value:
            return False
        if field.startswith("labels.") and job.labels.get(field[len("labels.") :]) != value:
            return False
    return True


async def _list(request: Request, caller: Caller, started: float, project: str, location: str) -> Response:
    state: SimulatorState = request.app.state.sim
    registry = job_registry(state)
    try:
        terms = _filter(request.query_params.get("filter", ""))
    except ValueError as err:
        return fail(request, caller, started, 400, str(err))
    build = functools.partial(vertex_job, state)
    selected = []
    for job in registry.jobs(lambda j: j.surface == "vertex" and _same_place(j, project, location)):
        view = await asyncio.to_thread(registry.view, job, build)
        if _matches(job, view["state"], terms):
            selected.append(view)
    try:
        chunk, token = page(selected, request)
    except ValueError as err:
        return fail(request, caller, started, 400, str(err))
    body: dict[str, Any] = {"batchPredictionJobs": chunk}
    if token:
        body["nextPageToken"] = token
    return answer(request, caller, started, 200, body)


async def job_resource(request: Request) -> Response:
    """GET/DELETE ``…/batchPredictionJobs/{id}``; POST ``…/batchPredictionJobs/{id}:cancel``."""
    state: SimulatorState = request.app.state.sim
    caller, version, project, location = _vertex_caller(request)
    started = time.monotonic()
    job_id, _, action = request.path_params["job_action"].partition(":")
    allowed = {("GET", ""), ("DELETE", ""), ("POST", "cancel")}
    if version not in VERTEX_VERSIONS or (request.method, action) not in allowed:
        return fail(request, caller, started, 404, f"Method not found: {request.method} {request.url.path}")
    denied = gate(request, caller, started)
    if denied is not None:
        return denied
    registry = job_registry(state)
    job = registry.find(job_id) if job_id.isdigit() else None
    if job is None or job.surface != "vertex" or not _same_place(job, project, location):
        return fail(request, caller, started, 404, f"BatchPredictionJob {job_id} does not exist.")
    if request.method == "DELETE":
        registry.delete(job)
        operation = {
            "name": f"projects/{job.extra['number']}/locations/{location}/operations/{job_id}",
            "metadata": {
                "@type": "type.googleapis.com/google.cloud.aiplatform.v1.DeleteOperationMetadata",
                "genericMetadata": {"createTime": rfc3339(time.time()), "updateTime": rfc3339(time.time())},
            },
            "done": True,
            "response": {"@type": "type.googleapis.com/google.protobuf.Empty"},
        }
        return answer(request, caller, started, 200, operation)
    if action == "cancel":
        if not await asyncio.to_thread(registry.cancel, job):
            return fail(
                request, caller, started, 400,
                f"Cannot cancel BatchPredictionJob {job.name}: it has already finished.",
            )  # fmt: skip
        return answer(request, caller, started, 200, {})
    if job.take_poll_error():
        return poll_error(request, caller, started)
    body = await asyncio.to_thread(registry.view, job, functools.partial(vertex_job, state))
    return answer(request, caller, started, 200, body)


def register(builder: AppBuilder) -> None:
    base = "/{version}/projects/{project}/locations/{location}/batchPredictionJobs"
    builder.add_route(Route(base, jobs_collection, methods=["GET", "POST"]))
    builder.add_route(Route(base + "/{job_action}", job_resource, methods=["GET", "POST", "DELETE"]))
