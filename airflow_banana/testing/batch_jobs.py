"""Simulated batch jobs: one engine behind the Developer Batch API and Vertex batch prediction routes.

Both surfaces take a list of GenerateContentRequests, answer within "24 h" (scaled to seconds
here) and may end badly, so they share this engine; the route modules only translate the wire
formats (``batch_routes`` for ``batches/…``, ``vertex_batch`` for ``batchPredictionJobs``).

How a job progresses (``Schedule``, pure, from the elapsed time of an injected clock):
PENDING for ``pending_s``, then RUNNING while its lines complete one by one, evenly spread until
``turnaround_s``, then the final state. A background task on the server's loop advances each
job, and every GET advances it too before answering, so what a client sees never lags the clock.

Billing: a line is generated through ``generate_content_response(..., price_lane="batch")`` at
the moment the job completes it, under the job's lock, so the ledger bills it exactly once
whatever the number of polls. A line that fails (injected error, invalid request) is not billed.

Harvest rule for jobs that do not succeed: a job told to end FAILED, EXPIRED or CANCELLED, or to
be stuck, completes only ``completed_fraction`` of its lines (in input order) before it ends or
stalls. A client cancel completes every line due by then and stops. Either way the completed
lines were billed, and their results are exposed exactly as for a successful job (inline
responses, result file, or ``predictions.jsonl``); the other lines are simply absent.

Per-job settings come from, weakest first: ``SimulatorConfig.batch``, the admin default, the
key's ``FaultProfile.batch``, markers in the display name (``[sim:stuck]``, ``[sim:failed]``,
``[sim:expired]``, ``[sim:cancelled]``, ``[sim:partially_succeeded]``, ``[sim:succeeded]``,
``[sim:line_errors=0.3]``, ``[sim:poll_errors=2]``, ``[sim:poll_error_rate=0.5]``,
``[sim:turnaround=0.5]``, ``[sim:pending=0.1]``, ``[sim:done=0.6]``), and run-time overrides
through ``JobRegistry.override`` or ``PUT /_simulator/batches``. A prompt marker
``[sim:line_error]`` fails that one line.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import random
import re
import secrets
import string
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from airflow_banana.exceptions import ConfigurationError
from airflow_banana.testing.config import BATCH_FINAL_STATES, BatchProfile
from airflow_banana.testing.errors import google_error
from airflow_banana.testing.generate import generate_content_response, last_user_prompt
from airflow_banana.testing.state import SimulatorState
from airflow_banana.testing.wire import Caller, error_response, log_request, transport_fault_response

log = logging.getLogger(__name__)

TERMINAL: frozenset[str] = frozenset(BATCH_FINAL_STATES)
# States a job ends in without doing all its work: only ``completed_fraction`` of lines run.
SHORT_STATES: frozenset[str] = frozenset({"FAILED", "EXPIRED", "CANCELLED"})
BATCH_MARKER_RE = re.compile(r"\[sim:([a-z_]+)(?:=([0-9]*\.?[0-9]+))?\]")
LINE_ERROR_MARKER = "[sim:line_error]"
LINE_ERROR_MESSAGE = "Internal error encountered."
# Per-request errors in batch output are google.rpc.Status: canonical gRPC codes, not HTTP.
GRPC_CODES = {
    400: 3,
    401: 16,
    403: 7,
    404: 5,
    408: 4,
    409: 6,
    412: 9,
    429: 8,
    500: 13,
    501: 12,
    503: 14,
    504: 4,
}
POLL_ERROR_MESSAGE = "The service is currently unavailable."
_TICK_S = 0.25
_ID_ALPHABET = string.ascii_lowercase + string.digits

_STATE_MARKERS: dict[str, dict[str, Any]] = {
    "stuck": {"stuck": True},
    "succeeded": {"final_state": "SUCCEEDED"},
    "failed": {"final_state": "FAILED"},
    "expired": {"final_state": "EXPIRED"},
    "cancelled": {"final_state": "CANCELLED"},
    "partially_succeeded": {"final_state": "PARTIALLY_SUCCEEDED"},
    "partial": {"final_state": "PARTIALLY_SUCCEEDED"},
}
_VALUE_MARKERS = {
    "line_errors": ("line_error_rate", float),
    "poll_errors": ("poll_errors", int),
    "poll_error_rate": ("poll_error_rate", float),
    "turnaround": ("turnaround_s", float),
    "pending": ("pending_s", float),
    "done": ("completed_fraction", float),
}


def rfc3339(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_id(length: int = 24) -> str:
    """Lowercase alphanumerics, as Google's batch and file ids are."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def apply_markers(display_name: str, profile: BatchProfile) -> BatchProfile:
    """``profile`` with the ``[sim:…]`` batch markers of a display name applied (unknown ones ignored)."""
    changes: dict[str, Any] = {}
    for name, value in BATCH_MARKER_RE.findall(display_name or ""):
        if name in _STATE_MARKERS and not value:
            changes.update(_STATE_MARKERS[name])
        elif name in _VALUE_MARKERS and value:
            field_name, kind = _VALUE_MARKERS[name]
            changes[field_name] = kind(float(value)) if kind is int else kind(value)
    if not changes:
        return profile
    return BatchProfile.from_dict({**profile.to_dict(), **changes})


@dataclass(frozen=True)
class Schedule:
    """When each line of a job completes and which state it shows; pure, in elapsed seconds."""

    total: int
    profile: BatchProfile

    @property
    def pending_s(self) -> float:
        return min(self.profile.pending_s, self.profile.turnaround_s)

    @property
    def limit(self) -> int:
        """How many lines the job completes before it ends (or stalls, if stuck)."""
        if self.profile.stuck or self.profile.final_state in SHORT_STATES:
            return math.floor(self.total * self.profile.completed_fraction + 1e-9)
        return self.total

    def due_at(self, index: int) -> float:
        span = self.profile.turnaround_s - self.pending_s
        return self.pending_s + span * (index + 1) / max(self.total, 1)

    def lines_due(self, elapsed: float) -> int:
        if elapsed < self.pending_s:
            return 0
        span = self.profile.turnaround_s - self.pending_s
        if span <= 0:
            return self.limit
        k = math.floor((elapsed - self.pending_s) / span * self.total + 1e-9)
        return max(0, min(self.limit, k))

    def state(self, elapsed: float, done: int) -> str:
        """PENDING, RUNNING or the final state (reached only once ``limit`` lines are done)."""
        if elapsed < self.pending_s and done == 0:
            return "PENDING"
        if self.profile.stuck:
            return "RUNNING"
        if elapsed >= self.profile.turnaround_s and done >= self.limit:
            return self.profile.final_state
        return "RUNNING"

    def next_event_in(self, elapsed: float, done: int) -> float | None:
        """Seconds until something changes (a line is due, or the end); None = nothing scheduled."""
        if elapsed < self.pending_s:
            return self.pending_s - elapsed
        if done < self.limit:
            return max(0.0, self.due_at(done) - elapsed)
        if self.profile.stuck:
            return None
        return max(0.0, self.profile.turnaround_s - elapsed)


def line_fails(seed: int, job_name: str, index: int, profile: BatchProfile) -> bool:
    """Deterministic per (seed, job, line): a re-run of the same job fails the same lines."""
    if profile.line_error_rate > 0:
        digest = hashlib.sha256(f"{seed}:{job_name}:{index}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < profile.line_error_rate
    return profile.final_state == "PARTIALLY_SUCCEEDED" and index % 4 == 1


@dataclass(frozen=True)
class LineOutcome:
    """What happened to one input line. ``status`` is HTTP-like: 200 = a GenerateContentResponse."""

    index: int
    line: Mapping[str, Any]
    status: int
    response: dict[str, Any] | None
    message: str
    processed_at: float

    @property
    def ok(self) -> bool:
        return self.status == 200

    def rpc_error(self) -> dict[str, Any]:
        """google.rpc.Status without details: the SDK crashes on object details (GEMINI_WIRE.md)."""
        return {"code": GRPC_CODES.get(self.status, 2), "message": self.message}


class OutputSink(Protocol):
    """Where one surface puts completed lines; ``close`` runs once, when the job ends."""

    def add(self, outcome: LineOutcome) -> None: ...

    def close(self, job: SimJob) -> None: ...

    def discard(self) -> None: ...


class SimJob:
    """One simulated batch job. The key is kept to bill lines to it and never shown."""

    def __init__(
        self,
        *,
        name: str,
        surface: str,
        key: str,
        key_id: str,
        model: str,
        display_name: str,
        labels: Mapping[str, str],
        total: int,
        spool: Path,
        sink: OutputSink,
        profile: BatchProfile,
        strict: bool,
        created_mono: float,
        extra: Mapping[str, Any] | None = None,
    ):
        self.name = name
        self.surface = surface
        self._key = key
        self.key_id = key_id
        self.model = model
        self.display_name = display_name
        self.labels = dict(labels)
        self.total = total
        self.spool = spool
        self.sink = sink
        self.profile = profile
        self.schedule = Schedule(total, profile)
        self.strict = strict
        self.created_mono = created_mono
        self.created_wall = time.time()
        self.extra: dict[str, Any] = dict(extra or {})
        # RLock: cancel advances the job and then finishes it while holding the lock.
        self.lock = threading.RLock()
        self._meta_lock = threading.Lock()
        self.done = 0
        self.succeeded = 0
        self.failed = 0
        self.final_state: str | None = None
        self.end_wall: float | None = None
        self.start_wall: float | None = None
        self.error: dict[str, Any] | None = None
        self.deleted = False
        self.poll_errors_left = profile.poll_errors
        self._poll_rng = random.Random(hashlib.sha256(name.encode()).digest())
        self._reader: IO[bytes] | None = None

    @property
    def key(self) -> str:
        return self._key

    def __repr__(self) -> str:
        return (
            f"SimJob({self.name!r}, surface={self.surface}, key_id={self.key_id}, state={self.final_state})"
        )

    def state(self, now_mono: float) -> str:
        """The state a client sees now (terminal only once ``advance`` has finished the job)."""
        if self.final_state is not None:
            return self.final_state
        current = self.schedule.state(now_mono - self.created_mono, self.done)
        return "RUNNING" if current in TERMINAL else current

    def wall_at(self, now_mono: float) -> float:
        return self.created_wall + (now_mono - self.created_mono)

    def take_poll_error(self) -> bool:
        """Should this GET of the job fail with 503? (the next N, then a share of all)."""
        with self._meta_lock:
            if self.poll_errors_left > 0:
                self.poll_errors_left -= 1
                return True
            return self.profile.poll_error_rate > 0 and self._poll_rng.random() < self.profile.poll_error_rate

    def wait_s(self, now_mono: float) -> float:
        nxt = self.schedule.next_event_in(now_mono - self.created_mono, self.done)
        return _TICK_S if nxt is None else min(max(nxt, 0.005), _TICK_S)

    def next_line(self) -> tuple[int, Mapping[str, Any] | None, str]:
        """The next input line: (index, parsed object or None, error text if it is not JSON)."""
        if self._reader is None:
            self._reader = self.spool.open("rb")
        index = self.done
        for raw in self._reader:
            text = raw.strip()
            if not text:
                continue
            try:
                obj = json.loads(text)
            except ValueError as err:
                return index, None, f"Invalid JSON in input line {index + 1}: {err}"
            if not isinstance(obj, dict):
                return index, None, f"Input line {index + 1} is not a JSON object"
            return index, obj, ""
        return index, None, f"Input line {index + 1} is missing"

    def close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def iter_json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(1-based line number, parsed value or the ValueError) for each non-blank line, streamed."""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                yield number, json.loads(raw)
            except ValueError as err:
                yield number, err


def model_name(value: str) -> str:
    """``models/x``, ``publishers/google/models/x``, ``projects/…/models/x`` → ``x``."""
    return value.rsplit("models/", 1)[-1] if "models/" in value else value


class JobRegistry:
    """All batch jobs of one simulator, their spool directory, and the tasks that advance them."""

    def __init__(self, state: SimulatorState):
        self.state = state
        self._lock = threading.Lock()
        self._jobs: dict[str, SimJob] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.default: BatchProfile | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="banana-sim-batch-")
        self.root = Path(self._dir.name)

    # --- settings ---------------------------------------------------------------------------------
    def profile_for(self, key: str, display_name: str) -> BatchProfile:
        base = self.state.faults.profile(key).batch or self.default or self.state.config.batch
        return apply_markers(display_name, base)

    def override(self, name: str, changes: Mapping[str, Any]) -> SimJob:
        """Change one job's settings from now on; lines already completed stay completed."""
        job = self.find(name)
        if job is None:
            raise ConfigurationError(f"simulator: no batch job {name!r} to change")
        with job.lock:
            job.profile = BatchProfile.from_dict({**job.profile.to_dict(), **dict(changes)})
            job.schedule = replace(job.schedule, profile=job.profile)
            if "poll_errors" in changes:
                job.poll_errors_left = job.profile.poll_errors
        return job

    # --- lookup -----------------------------------------------------------------------------------
    def spool_path(self, suffix: str) -> Path:
        return self.root / f"{new_id(16)}{suffix}"

    def find(self, name: str) -> SimJob | None:
        """By full name, or by the bare id (``batches/ID`` → ``ID``, Vertex numeric id)."""
        with self._lock:
            job = self._jobs.get(name)
            if job is not None:
                return job
            for candidate in self._jobs.values():
                if candidate.name.rsplit("/", 1)[-1] == name.rsplit("/", 1)[-1]:
                    return candidate
        return None

    def jobs(self, predicate: Callable[[SimJob], bool] | None = None) -> list[SimJob]:
        """Newest first, as Google lists them."""
        with self._lock:
            found = [j for j in self._jobs.values() if predicate is None or predicate(j)]
        return sorted(found, key=lambda j: j.created_mono, reverse=True)

    def describe(self, job: SimJob) -> dict[str, Any]:
        """For the admin endpoint and tests: everything but the key."""
        now = self.state.clock()
        return {
            "name": job.name,
            "surface": job.surface,
            "key_id": job.key_id,
            "model": job.model,
            "display_name": job.display_name,
            "labels": dict(job.labels),
            "state": job.state(now),
            "request_count": job.total,
            "completed": job.done,
            "succeeded": job.succeeded,
            "failed": job.failed,
            "profile": job.profile.to_dict(),
            "error": job.error,
        }

    # --- lifecycle --------------------------------------------------------------------------------
    def create(
        self,
        *,
        name: str,
        surface: str,
        key: str,
        model: str,
        display_name: str,
        labels: Mapping[str, str],
        total: int,
        spool: Path,
        sink: OutputSink,
        strict: bool,
        source: str,
        extra: Mapping[str, Any] | None = None,
    ) -> SimJob:
        """Register a job (its input already spooled to disk) and record the creation in the ledger."""
        job = SimJob(
            name=name,
            surface=surface,
            key=key,
            key_id=self.state.key_id(key),
            model=model,
            display_name=display_name,
            labels=labels,
            total=total,
            spool=spool,
            sink=sink,
            profile=self.profile_for(key, display_name),
            strict=strict,
            created_mono=self.state.clock(),
            extra=extra,
        )
        with self._lock:
            self._jobs[name] = job
        self.state.ledger.record_job(
            key_id=job.key_id,
            surface=surface,
            name=name,
            display_name=display_name,
            labels=job.labels,
            request_count=total,
            model=model,
            source=source,
        )
        return job

    def spawn(self, job: SimJob) -> None:
        """Advance ``job`` in the background on the running (server) loop."""
        task = asyncio.get_running_loop().create_task(self._run(job), name=f"batch:{job.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, job: SimJob) -> None:
        while not job.deleted and job.final_state is None and not self.state.stopping:
            await asyncio.sleep(job.wait_s(self.state.clock()))
            await asyncio.to_thread(self.advance, job)

    def advance(self, job: SimJob) -> None:
        """Complete the lines due by now and, when the schedule says so, end the job. Idempotent."""
        with job.lock:
            if job.deleted or job.final_state is not None:
                return
            elapsed = self.state.clock() - job.created_mono
            self._complete_due(job, elapsed)
            current = job.schedule.state(elapsed, job.done)
            if current in TERMINAL:
                self._finish(job, current)

    def view(self, job: SimJob, build: Callable[[SimJob], Any]) -> Any:
        """Advance ``job`` and render it under its lock, so counts, state and output agree."""
        with job.lock:
            self.advance(job)
            return build(job)

    def cancel(self, job: SimJob) -> bool:
        """Client cancel: lines due by now complete (and are billed), the rest never run.

        False if the job had already ended (the caller answers FAILED_PRECONDITION).
        """
        with job.lock:
            if job.deleted or job.final_state is not None:
                return False
            self._complete_due(job, self.state.clock() - job.created_mono)
            self._finish(job, "CANCELLED", by_client=True)
            return True

    def fail_now(self, job: SimJob, code: int, message: str) -> None:
        """End a job that cannot run at all (e.g. its input could not be read)."""
        with job.lock:
            if job.final_state is None:
                job.error = {"code": code, "message": message}
                self._finish(job, "FAILED", error_set=True)

    def delete(self, job: SimJob) -> None:
        with job.lock:
            job.deleted = True
            job.close_reader()
            job.sink.discard()
            job.spool.unlink(missing_ok=True)
        with self._lock:
            self._jobs.pop(job.name, None)

    def clear(self) -> None:
        """Reset hook: forget every job; a job mid-line finishes that line before it is dropped."""
        for job in self.jobs():
            self.delete(job)
        self.default = None

    # --- the work ---------------------------------------------------------------------------------
    def _complete_due(self, job: SimJob, elapsed: float) -> None:
        due = job.schedule.lines_due(elapsed)
        if due > job.done and job.start_wall is None:
            job.start_wall = job.wall_at(job.created_mono + job.schedule.pending_s)
        while job.done < due and not job.deleted:
            outcome = self._process_next(job)
            job.sink.add(outcome)
            job.done += 1
            if outcome.ok:
                job.succeeded += 1
            else:
                job.failed += 1

    def _process_next(self, job: SimJob) -> LineOutcome:
        index, line, problem = job.next_line()
        now = time.time()
        if line is None:
            return LineOutcome(index, {}, 400, None, problem, now)
        request = line.get("request")
        if not isinstance(request, Mapping):
            return LineOutcome(index, line, 400, None, f"Input line {index + 1} has no 'request' object", now)
        if line_fails(self.state.config.seed, job.name, index, job.profile) or (
            LINE_ERROR_MARKER in last_user_prompt(request)
        ):
            return LineOutcome(index, line, 500, None, LINE_ERROR_MESSAGE, now)
        model = model_name(str(request.get("model") or job.model))
        try:
            status, body = generate_content_response(
                self.state,
                request,
                model=model,
                key=job.key,
                path=job.name,
                price_lane="batch",
                strict=job.strict,
            )
        except Exception as err:  # a simulator bug must not kill the job's task silently
            log.exception("simulator: batch job %s line %d crashed", job.name, index + 1)
            return LineOutcome(index, line, 500, None, f"{LINE_ERROR_MESSAGE} ({type(err).__name__})", now)
        if status != 200:
            message = str((body.get("error") or {}).get("message", "request failed"))
            return LineOutcome(index, line, status, None, message, now)
        return LineOutcome(index, line, 200, body, "", now)

    def _finish(self, job: SimJob, final: str, *, by_client: bool = False, error_set: bool = False) -> None:
        job.close_reader()
        job.end_wall = time.time()
        if not error_set:
            if final == "FAILED":
                job.error = {"code": 13, "message": "Batch job failed: simulated internal failure."}
            elif final == "EXPIRED":
                job.error = {"code": 4, "message": "Batch job expired before all requests were processed."}
            elif final == "CANCELLED" and not by_client:
                job.error = {"code": 1, "message": "Batch job was cancelled by the system."}
        try:
            if error_set:
                job.sink.discard()  # the job never ran: it has no output to publish
            else:
                job.sink.close(job)
        except Exception as err:
            log.warning("simulator: batch job %s could not write its output: %s", job.name, err)
            final = "FAILED"
            job.error = {"code": 13, "message": f"Could not write the job output: {err}"}
        job.final_state = final
        job.spool.unlink(missing_ok=True)


_REGISTRY_KEY = "batch_jobs"
_REGISTRY_LOCK = threading.Lock()


def job_registry(state: SimulatorState) -> JobRegistry:
    """The simulator's job registry (created on first use; cleared by ``state.reset``)."""
    with _REGISTRY_LOCK:
        registry: JobRegistry | None = state.extras.get(_REGISTRY_KEY)
        if registry is None:
            registry = JobRegistry(state)
            state.extras[_REGISTRY_KEY] = registry
            state.reset_hooks.append(registry.clear)
        return registry


# --- HTTP helpers shared by the batch and files routes -----------------------------------------------
def gate(request: Request, caller: Caller, started: float) -> Response | None:
    """No key → 403; a key's fixed status or outage applies (batch/files calls are metadata calls)."""
    state: SimulatorState = request.app.state.sim
    if not caller.key:
        log_request(state, request, caller, started, 403, "no_key")
        return error_response(
            caller,
            403,
            google_error(
                403,
                "Method doesn't allow unregistered callers (callers without established identity). "
                "Please use API Key or other form of API consumer identity to call this API.",
            ),
        )
    decision = state.faults.decide_metadata(caller.key)
    resp = transport_fault_response(caller, decision)
    if resp is not None:
        log_request(state, request, caller, started, resp.status_code, decision.fault)
    return resp


def answer(
    request: Request, caller: Caller, started: float, status: int, body: Any, fault: str | None = None
) -> Response:
    log_request(request.app.state.sim, request, caller, started, status, fault)
    return JSONResponse(body, status_code=status)


def fail(request: Request, caller: Caller, started: float, status: int, message: str) -> Response:
    return answer(request, caller, started, status, google_error(status, message))


def poll_error(request: Request, caller: Caller, started: float) -> Response:
    return answer(request, caller, started, 503, google_error(503, POLL_ERROR_MESSAGE), "poll_error")


def page(items: list[Any], request: Request, *, default_size: int = 50) -> tuple[list[Any], str | None]:
    """``pageSize``/``pageToken`` paging; the token is an opaque offset."""
    try:
        size = int(request.query_params.get("pageSize") or default_size)
        start = int(request.query_params.get("pageToken") or 0)
    except ValueError as err:
        raise ValueError("pageSize and pageToken must be integers") from err
    size = max(1, min(size, 1000))
    chunk = items[start : start + size]
    return chunk, (str(start + size) if start + size < len(items) else None)


def get_any(obj: Any, *names: str) -> Any:
    """The first of ``names`` present in a dict: proto JSON accepts camelCase and snake_case."""
    if not isinstance(obj, Mapping):
        return None
    for name in names:
        if name in obj:
            return obj[name]
    return None
