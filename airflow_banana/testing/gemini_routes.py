"""Gemini API routes: Developer (``/v1``, ``/v1beta``) and Vertex (``/v1``, ``/v1beta1``) paths.

``generateContent`` and ``streamGenerateContent?alt=sse`` go through one pipeline: identify the
key, decide its fault, sleep its latency, then validate, render, answer and bill. Model info
routes are metadata only: never billable, and only a key's fixed status or outage applies.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from airflow_banana.testing.app import ActionContext, AppBuilder
from airflow_banana.testing.errors import RequestError, google_error, model_not_found
from airflow_banana.testing.generate import (
    Generated,
    ParsedRequest,
    gemini_response,
    generate,
    last_user_prompt,
    parse_generate_request,
    record_billable,
    strict_for,
)
from airflow_banana.testing.wire import (
    Caller,
    apply_transport_faults,
    broken_body,
    caller_for,
    error_response,
    log_request,
    note_request,
    read_json,
    transport_fault_response,
    unauthenticated,
)

DEVELOPER_VERSIONS = ("v1", "v1beta")
VERTEX_VERSIONS = ("v1", "v1beta1")


def model_info(model: str) -> dict[str, Any]:
    return {
        "name": f"models/{model}",
        "baseModelId": model,
        "version": "3.0",
        "displayName": "Nano Banana Pro" if "pro" in model else model,
        "description": "Gemini image generation model (simulated by airflow-banana).",
        "inputTokenLimit": 65536,
        "outputTokenLimit": 32768,
        "supportedGenerationMethods": ["generateContent", "countTokens", "batchGenerateContent"],
        "temperature": 1.0,
        "topP": 0.95,
        "maxTemperature": 2.0,
        "thinking": True,
    }


def vertex_model_info(model: str) -> dict[str, Any]:
    return {
        "name": f"publishers/google/models/{model}",
        "versionId": "001",
        "openSourceCategory": "PROPRIETARY",
        "launchStage": "PUBLIC_PREVIEW",
        "publisherModelTemplate": (
            f"projects/{{project}}/locations/{{location}}/publishers/google/models/{model}"
        ),
    }


def sse(events: list[dict[str, Any]] | list[bytes]) -> StreamingResponse:
    async def stream() -> AsyncIterator[bytes]:
        for event in events:
            payload = event if isinstance(event, bytes) else json.dumps(event).encode()
            yield b"data: " + payload + b"\r\n\r\n"
            await asyncio.sleep(0)

    return StreamingResponse(stream(), media_type="text/event-stream")


def stream_events(full: dict[str, Any]) -> list[dict[str, Any]]:
    """Split one response into SSE chunks, one part each; usage and finishReason on the last."""
    candidates = full.get("candidates") or []
    parts = (candidates[0].get("content") or {}).get("parts") or [] if candidates else []
    if len(parts) <= 1:
        return [full]
    events: list[dict[str, Any]] = []
    for part in parts[:-1]:
        events.append(
            {
                "candidates": [{"content": {"role": "model", "parts": [part]}, "index": 0}],
                "modelVersion": full["modelVersion"],
                "responseId": full["responseId"],
            }
        )
    last = dict(full)
    last["candidates"] = [{**candidates[0], "content": {"role": "model", "parts": [parts[-1]]}}]
    events.append(last)
    return events


def _parse_or_none(state: Any, body: dict[str, Any], ctx: ActionContext) -> ParsedRequest | None:
    """The request parsed once (for the ledger and for generating), or None when it is invalid:
    ``generate`` then parses it again and answers the error as the API would."""
    try:
        return parse_generate_request(body, ctx.model, known_models=state.config.models, version=ctx.version)
    except (RequestError, AttributeError, TypeError, ValueError):
        return None


async def run_generation(request: Request, ctx: ActionContext, *, stream: bool) -> Response:
    """The generateContent pipeline shared by Developer and Vertex, unary and streaming."""
    state, caller = ctx.state, ctx.caller
    started = time.monotonic()
    if not caller.key:
        log_request(state, request, caller, started, 403, "no_key")
        return unauthenticated(caller)
    body = await read_json(request)
    prompt = last_user_prompt(body) if isinstance(body, dict) else ""
    parsed = await asyncio.to_thread(_parse_or_none, state, body, ctx) if isinstance(body, dict) else None
    if parsed is not None:
        note_request(request, parsed)
    decision, fault_resp = await apply_transport_faults(state, request, caller, started, prompt)
    if fault_resp is not None:
        return fault_resp
    if not isinstance(body, dict):
        log_request(state, request, caller, started, 400, None)
        return error_response(
            caller, 400, google_error(400, "Invalid JSON payload received. Unexpected token.")
        )
    try:
        gen: Generated = await asyncio.to_thread(
            generate,
            state,
            body,
            model=ctx.model,
            strict=strict_for(state, caller.key, vertex=caller.vertex),
            content_fault=decision.content,
            version=ctx.version,
            parsed=parsed,
        )
    except RequestError as err:
        log_request(state, request, caller, started, err.code, None)
        return error_response(caller, err.code, err.body())
    full = gemini_response(state, gen)
    fault = decision.fault or (gen.finish_reason if gen.finish_reason not in ("STOP", "") else None)
    if gen.block_reason:
        fault = "blocked"
    if decision.body is not None:
        # The client never gets the image, so nothing is billed: a retry is not "paid twice".
        log_request(state, request, caller, started, 200, decision.body)
        if stream:
            cut = json.dumps(full).encode()
            return (
                sse([cut[: len(cut) // 2]])
                if decision.body == "truncated"
                else broken_body("malformed", full)
            )
        return broken_body(decision.body, full)
    record_billable(state, gen, key_id=caller.key_id, path=request.url.path, price_lane="realtime")
    log_request(state, request, caller, started, 200, fault)
    if stream:
        return sse(stream_events(full))
    return JSONResponse(full)


async def generate_content(request: Request, ctx: ActionContext) -> Response:
    return await run_generation(request, ctx, stream=False)


async def stream_generate_content(request: Request, ctx: ActionContext) -> Response:
    return await run_generation(request, ctx, stream=True)


def _metadata_gate(request: Request, caller: Caller, started: float) -> Response | None:
    state = request.app.state.sim
    if not caller.key:
        log_request(state, request, caller, started, 403, "no_key")
        return unauthenticated(caller)
    decision = state.faults.decide_metadata(caller.key)
    resp = transport_fault_response(caller, decision)
    if resp is not None:
        log_request(state, request, caller, started, resp.status_code, decision.fault)
    return resp


async def developer_model(request: Request) -> Response:
    """POST ``/{v}/models/{model}:{action}`` and GET ``/{v}/models/{model}``."""
    state = request.app.state.sim
    builder: AppBuilder = request.app.state.builder
    version = request.path_params["version"]
    model, _, action = request.path_params["model_action"].partition(":")
    caller = caller_for(request, state, "developer", version=version, model=model)
    started = time.monotonic()
    if version not in DEVELOPER_VERSIONS:
        return _not_found(request, caller, started)
    if request.method == "GET" and not action:
        return _model_get(request, caller, started, model, vertex=False)
    handler = builder.model_actions.get(action)
    if request.method != "POST" or handler is None:
        return _not_found(request, caller, started)
    return await handler(request, ActionContext(state, caller, model, version, "developer"))


async def developer_models(request: Request) -> Response:
    """GET ``/{v}/models``: Google's list, or the OpenAI list when called the OpenAI way."""
    state = request.app.state.sim
    version = request.path_params["version"]
    goog = request.headers.get("x-goog-api-key") or request.query_params.get("key")
    if version not in DEVELOPER_VERSIONS or not goog:
        from airflow_banana.testing.openai_compat import list_models  # same path, other protocol

        return await list_models(request)
    caller = caller_for(request, state, "developer", version=version)
    started = time.monotonic()
    gate = _metadata_gate(request, caller, started)
    if gate is not None:
        return gate
    log_request(state, request, caller, started, 200, None)
    return JSONResponse({"models": [model_info(m) for m in state.config.models]})


def _model_get(request: Request, caller: Caller, started: float, model: str, *, vertex: bool) -> Response:
    state = request.app.state.sim
    gate = _metadata_gate(request, caller, started)
    if gate is not None:
        return gate
    if model not in state.config.models:
        log_request(state, request, caller, started, 404, None)
        return error_response(caller, 404, model_not_found(model, caller.version))
    log_request(state, request, caller, started, 200, None)
    return JSONResponse(vertex_model_info(model) if vertex else model_info(model))


def _not_found(request: Request, caller: Caller, started: float) -> Response:
    log_request(request.app.state.sim, request, caller, started, 404, None)
    return error_response(
        caller, 404, google_error(404, f"Method not found: {request.method} {request.url.path}")
    )


async def vertex_model(request: Request) -> Response:
    state = request.app.state.sim
    builder: AppBuilder = request.app.state.builder
    p = request.path_params
    version = p["version"]
    model, _, action = p["model_action"].partition(":")
    caller = caller_for(request, state, "vertex", version=version, model=model)
    started = time.monotonic()
    if version not in VERTEX_VERSIONS:
        return _not_found(request, caller, started)
    if request.method == "GET" and not action:
        return _model_get(request, caller, started, model, vertex=True)
    handler = builder.vertex_actions.get(action)
    if request.method != "POST" or handler is None:
        return _not_found(request, caller, started)
    ctx = ActionContext(
        state, caller, model, version, "vertex", project=p.get("project", ""), location=p.get("location", "")
    )
    return await handler(request, ctx)


def register(builder: AppBuilder) -> None:
    builder.add_model_action("generateContent", generate_content, vertex=True)
    builder.add_model_action("streamGenerateContent", stream_generate_content, vertex=True)
    builder.add_core_route(Route("/{version}/models", developer_models, methods=["GET"]))
    builder.add_core_route(
        Route("/{version}/models/{model_action}", developer_model, methods=["GET", "POST"])
    )
    builder.add_core_route(
        Route(
            "/{version}/projects/{project}/locations/{location}/publishers/google/models/{model_action}",
            vertex_model,
            methods=["GET", "POST"],
        )
    )
    # The SDK gets Vertex model info without the project prefix.
    builder.add_core_route(
        Route("/{version}/publishers/google/models/{model_action}", vertex_model, methods=["GET", "POST"])
    )
