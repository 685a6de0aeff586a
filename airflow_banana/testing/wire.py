"""HTTP plumbing shared by every route module: who is calling, and carrying out transport faults.

Keys come from ``x-goog-api-key`` / ``?key=`` (Developer) or ``Authorization: Bearer`` (Vertex,
OpenAI-compatible). Faults that happen "on the wire" live here: latency (async sleep), error
statuses, hanging until the client gives up, a TCP reset, and broken 200 bodies. A connection
reset needs uvicorn's raw ``send`` (Starlette wraps it), so ``RawSendMiddleware`` keeps it in scope.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from airflow_banana.models import model_id
from airflow_banana.testing.config import MODEL_LATENCY_FACTORS
from airflow_banana.testing.errors import (
    OVERLOADED,
    fixed_status_error,
    google_error,
    openai_error,
    quota_error,
)
from airflow_banana.testing.faults import Decision
from airflow_banana.testing.state import SimulatorState

RAW_SEND = "airflow_banana.raw_send"
MALFORMED_BODY = (
    b"<html><head><title>502 Bad Gateway</title></head><body>upstream sent an invalid response</body></html>"
)


class RawSendMiddleware:
    """Outermost ASGI layer: remember the server's own ``send`` so a fault can abort the socket."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[RAW_SEND] = send
        await self.app(scope, receive, send)


@dataclass(frozen=True)
class Caller:
    """One request's identity: the key (never logged), its key id, and which API surface it hit."""

    key: str
    key_id: str
    surface: str  # "developer" | "vertex" | "openai"
    version: str = "v1beta"
    model: str = ""

    @property
    def vertex(self) -> bool:
        return self.surface == "vertex"


def request_key(request: Request) -> str:
    key = request.headers.get("x-goog-api-key") or request.query_params.get("key") or ""
    if not key:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            key = auth[7:].strip()
    return key


def caller_for(
    request: Request, state: SimulatorState, surface: str, *, version: str = "", model: str = ""
) -> Caller:
    key = request_key(request)
    return Caller(
        key=key,
        key_id=state.key_id(key) if key else "anonymous",
        surface=surface,
        version=version,
        model=model,
    )


async def read_json(request: Request) -> Any:
    """The parsed body, or None when it is not JSON (the caller answers 400 after fault checks)."""
    raw = await request.body()
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        return None


def error_response(
    caller: Caller, code: int, body: dict[str, Any], *, retry_after: float | None = None
) -> Response:
    """Google's envelope, or the OpenRouter-style one on the OpenAI-compatible surface."""
    if caller.surface == "openai":
        headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else None
        return JSONResponse(openai_error(body, retry_after=retry_after), status_code=code, headers=headers)
    return JSONResponse(body, status_code=code)


def unauthenticated(caller: Caller) -> Response:
    return error_response(
        caller,
        403,
        google_error(
            403,
            "Method doesn't allow unregistered callers (callers without established identity). "
            "Please use API Key or other form of API consumer identity to call this API.",
        ),
    )


class ResetResponse(Response):
    """Not a response: abort the TCP connection with RST (SO_LINGER 0), as a dying proxy does."""

    def __init__(self) -> None:
        super().__init__(status_code=0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get(RAW_SEND)
        transport = getattr(getattr(raw, "__self__", None), "transport", None)
        if transport is None:  # not under uvicorn: the best we can do is a 502 with no body
            await Response(status_code=502)(scope, receive, send)
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        # Let uvicorn see the connection is gone before we return, so it does not try to answer.
        await asyncio.sleep(0.01)


async def hang(request: Request, state: SimulatorState) -> Response:
    """Accept and never answer: wait until the client leaves (other requests are unaffected)."""
    deadline = time.monotonic() + state.config.hang_max_s
    while not state.stopping and time.monotonic() < deadline:
        if await request.is_disconnected():
            break
        await asyncio.sleep(0.05)
    return Response(status_code=504)


def transport_fault_response(caller: Caller, decision: Decision) -> Response | None:
    """The error response for a decided status fault, or None (hang/reset are handled by callers)."""
    model = caller.model or "gemini-3-pro-image-preview"
    if decision.fault == "fixed_status" and decision.status is not None:
        return error_response(
            caller, decision.status, fixed_status_error(decision.status, model=model, version=caller.version)
        )
    if decision.fault in ("overload", "outage"):
        return error_response(caller, 503, google_error(503, OVERLOADED))
    if decision.fault in ("rate_limit", "quota"):
        delay = decision.retry_delay_s if decision.retry_delay_s is not None else 26.0
        body = quota_error(
            retry_delay_s=delay,
            quota_id=decision.quota_id or "GenerateRequestsPerMinutePerProjectPerModel",
            quota_metric=decision.quota_metric
            or "generativelanguage.googleapis.com/generate_requests_per_model",
            quota_value=decision.quota_value,
            model=model,
            vertex=caller.vertex,
        )
        return error_response(caller, 429, body, retry_after=delay)
    if decision.fault == "400":
        return error_response(caller, 400, google_error(400, "Request contains an invalid argument."))
    if decision.fault == "500":
        return error_response(caller, 500, fixed_status_error(500, model=model, version=caller.version))
    return None


async def apply_transport_faults(
    state: SimulatorState, request: Request, caller: Caller, started: float, prompt: str, *, model: str = ""
) -> tuple[Decision, Response | None]:
    """Decide this request's fault, wait its latency, and answer at once if the fault is on the
    transport (hang, reset, a status error); else return the decision for the content stage.

    The key's latency is Pro's; a faster model tier (Flash Image, 3-4x) takes a fraction of it.
    """
    decision = state.faults.decide(caller.key, prompt)
    latency = decision.latency_s * MODEL_LATENCY_FACTORS.get(model_id(model or caller.model), 1.0)
    if latency > 0:
        await asyncio.sleep(latency)
    if decision.fault == "hang":
        log_request(state, request, caller, started, 0, "hang")
        return decision, await hang(request, state)
    if decision.fault == "reset":
        log_request(state, request, caller, started, 0, "reset")
        return decision, ResetResponse()
    response = transport_fault_response(caller, decision)
    if response is not None:
        log_request(state, request, caller, started, response.status_code, decision.fault)
    return decision, response


def broken_body(kind: str, good: Mapping[str, Any] | bytes) -> Response:
    """A 200 whose body is cut in the middle ("truncated") or not JSON at all ("malformed")."""
    if kind == "malformed":
        return Response(MALFORMED_BODY, status_code=200, media_type="text/html")
    raw = good if isinstance(good, bytes) else json.dumps(good).encode()
    return Response(raw[: max(1, len(raw) // 2)], status_code=200, media_type="application/json")


def note_request(request: Request, parsed: Any) -> None:
    """Remember what a generation request asked for (fingerprint, tools), for its ledger entry.

    Noted before any fault is decided, so even a request answered 503 says which item it was and
    whether it carried the Search tool: tests prove from the ledger that an official-only item
    never reached a relay's key, not even as a failed call.
    """
    request.state.sim_fingerprint = parsed.fingerprint()
    request.state.sim_tools = list(parsed.tools)


def log_request(
    state: SimulatorState, request: Request, caller: Caller, started: float, status: int, fault: str | None
) -> None:
    state.ledger.record_request(
        key_id=caller.key_id,
        method=request.method,
        path=request.url.path,
        status=status,
        latency_ms=(time.monotonic() - started) * 1000.0,
        fault=fault,
        fingerprint=getattr(request.state, "sim_fingerprint", None),
        tools=getattr(request.state, "sim_tools", None) or [],
    )
