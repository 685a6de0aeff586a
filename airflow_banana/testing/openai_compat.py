"""An OpenAI-compatible relay in front of the same simulated model (OpenRouter's shape).

``POST {prefix}/chat/completions`` (only under ``RELAY_PREFIXES``, as real relays) with
``modalities`` and ``image_config`` answers ``choices[0].message.images[]`` data URLs and
``usage.cost``; a per-key ``openai_markdown`` switch answers with a markdown data URL in
``content`` instead, as some relays do. Relays drop thought signatures, so there is no
multi-turn editing here: only the last user message is generated.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from airflow_banana.models import (
    ASPECT_RATIOS,
    IMAGE_SIZES,
    INPUT_IMAGE_TOKENS,
    MAX_REFERENCE_IMAGES,
    ReferenceImage,
)
from airflow_banana.pricing import price_table
from airflow_banana.testing.app import AppBuilder
from airflow_banana.testing.errors import RequestError, google_error
from airflow_banana.testing.generate import (
    Generated,
    ParsedRequest,
    _tokens,
    check_model_size,
    content_fault_of,
    produce,
    record_billable,
)
from airflow_banana.testing.state import SimulatorState
from airflow_banana.testing.wire import (
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


def _bare_model(model: str) -> str:
    return model.split("/", 1)[1] if "/" in model else model


def _data_url(url: str, where: str) -> ReferenceImage:
    if not url.startswith("data:") or ";base64," not in url:
        raise RequestError(400, f"{where}: only data: URLs with base64 are supported by this relay")
    head, _, data = url.partition(";base64,")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as err:
        raise RequestError(400, f"{where}: invalid base64 image data") from err
    return ReferenceImage(data=raw, mime_type=head[len("data:") :] or "application/octet-stream")


def parse_chat_request(body: Mapping[str, Any], state: SimulatorState) -> ParsedRequest:
    """The image request carried by a chat completion (last user message only)."""
    model = _bare_model(str(body.get("model") or ""))
    if model not in state.config.models:
        raise RequestError(404, f"No endpoints found for {body.get('model')!r}.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages: expected a non-empty array")
    users = [i for i, m in enumerate(messages) if isinstance(m, Mapping) and m.get("role") == "user"]
    if not users:
        raise RequestError(400, "messages: no user message")
    content = messages[users[-1]].get("content")
    texts: list[str] = []
    refs: list[ReferenceImage] = []
    items = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
    for j, item in enumerate(items):
        if item.get("type") == "text":
            texts.append(str(item.get("text", "")))
        elif item.get("type") == "image_url":
            url = item.get("image_url")
            url = url.get("url", "") if isinstance(url, Mapping) else str(url or "")
            refs.append(_data_url(url, f"messages[{users[-1]}].content[{j}]"))
    if len(refs) > MAX_REFERENCE_IMAGES:
        raise RequestError(400, f"too many images: {len(refs)} > {MAX_REFERENCE_IMAGES}")
    cfg = body.get("image_config") or {}
    size = cfg.get("image_size", "1K")
    ratio = cfg.get("aspect_ratio", "1:1")
    if size not in IMAGE_SIZES or ratio not in ASPECT_RATIOS:
        raise RequestError(400, f"image_config: unsupported image_size {size!r} or aspect_ratio {ratio!r}")
    check_model_size(model, str(size))
    modalities = [str(m).lower() for m in body.get("modalities") or ["image", "text"]]
    prompt = "\n".join(texts)
    return ParsedRequest(
        model=model,
        prompt=prompt,
        references=tuple(refs),
        image_size=str(size),
        aspect_ratio=str(ratio),
        want_image="image" in modalities,
        turns=len(users),
        prompt_tokens=max(1, _tokens(prompt) + INPUT_IMAGE_TOKENS * len(refs)),
    )


def chat_response(state: SimulatorState, gen: Generated, *, markdown: bool, cost: float) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": gen.text or ""}
    finish = "stop"
    if gen.block_reason is not None or gen.finish_reason == "IMAGE_SAFETY":
        message["content"] = ""
        message["refusal"] = f"blocked: {gen.block_reason or gen.finish_reason}"
        finish = "content_filter"
    elif gen.image is not None:
        url = f"data:{gen.image_mime};base64,{base64.b64encode(gen.image).decode()}"
        if markdown:
            message["content"] = f"{gen.text}\n\n![image]({url})"
        else:
            message["images"] = [{"type": "image_url", "image_url": {"url": url}, "index": 0}]
    completion = gen.image_tokens + gen.text_tokens
    return {
        "id": f"gen-{gen.response_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": f"google/{gen.request.model}",
        "provider": "Google",
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": finish,
                "native_finish_reason": gen.finish_reason or "SAFETY",
            }
        ],
        "usage": {
            "prompt_tokens": gen.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": gen.prompt_tokens + completion + gen.thoughts_tokens,
            "completion_tokens_details": {
                "reasoning_tokens": gen.thoughts_tokens,
                "image_tokens": gen.image_tokens,
            },
            "cost": cost if gen.image is not None else 0.0,
        },
    }


async def chat_completions(request: Request) -> Response:
    state: SimulatorState = request.app.state.sim
    caller = caller_for(request, state, "openai")
    started = time.monotonic()
    if not caller.key:
        log_request(state, request, caller, started, 401, "no_key")
        return JSONResponse({"error": {"code": 401, "message": "No auth credentials found"}}, status_code=401)
    body = await read_json(request)
    prompt = ""
    if isinstance(body, dict):
        try:
            seen = parse_chat_request(body, state)
            prompt = seen.prompt
            note_request(request, seen)
        except (RequestError, AttributeError, TypeError):
            prompt = ""
    model = str(body.get("model", "")) if isinstance(body, dict) else ""
    decision, fault_resp = await apply_transport_faults(state, request, caller, started, prompt, model=model)
    if fault_resp is not None:
        return fault_resp
    if not isinstance(body, dict):
        log_request(state, request, caller, started, 400, None)
        return error_response(caller, 400, google_error(400, "Invalid JSON body"))
    try:
        parsed = parse_chat_request(body, state)
        gen = await asyncio.to_thread(
            produce, parsed, content_fault=content_fault_of(parsed, decision.content)
        )
    except (RequestError, AttributeError, TypeError) as err:
        code = err.code if isinstance(err, RequestError) else 400
        log_request(state, request, caller, started, code, None)
        return error_response(caller, code, google_error(code, str(err)))
    prof = state.faults.profile(caller.key)
    cost = (
        prof.openai_cost_usd
        if prof.openai_cost_usd is not None
        else price_table("openai", model=parsed.model)[parsed.image_size]
    )
    out = chat_response(state, gen, markdown=prof.openai_markdown, cost=cost)
    if decision.body is not None:
        log_request(state, request, caller, started, 200, decision.body)
        return broken_body(decision.body, out)
    record_billable(state, gen, key_id=caller.key_id, path=request.url.path, price_lane="realtime")
    log_request(state, request, caller, started, 200, decision.fault)
    return JSONResponse(out)


async def list_models(request: Request) -> Response:
    state: SimulatorState = request.app.state.sim
    caller = caller_for(request, state, "openai")
    started = time.monotonic()
    if not caller.key:
        log_request(state, request, caller, started, 401, "no_key")
        return unauthenticated(caller)
    resp = transport_fault_response(caller, state.faults.decide_metadata(caller.key))
    if resp is not None:
        log_request(state, request, caller, started, resp.status_code, "fixed_status")
        return resp
    log_request(state, request, caller, started, 200, None)
    data = [
        {"id": f"google/{m}", "object": "model", "owned_by": "google", "created": 0}
        for m in state.config.models
    ]
    return JSONResponse({"object": "list", "data": data})


# Where real relays serve the OpenAI API: OpenRouter ``/api/v1``, most relays ``/v1``, some
# ``/openai/v1``. Nowhere else, so a base URL missing its prefix fails here as it does for real.
RELAY_PREFIXES: tuple[str, ...] = ("/api/v1", "/v1", "/openai/v1")


def register(builder: AppBuilder) -> None:
    for prefix in RELAY_PREFIXES:
        builder.add_core_route(Route(f"{prefix}/chat/completions", chat_completions, methods=["POST"]))
        builder.add_core_route(Route(f"{prefix}/models", list_models, methods=["GET"]))
