"""Batch request lines built from the same ``ImageRequest`` as realtime.

Same request shape as the realtime channel (``channels.gemini.build_contents``): one user turn,
the prompt text first, then the reference images inline, in order; ``responseModalities``
TEXT+IMAGE and ``imageConfig`` {aspectRatio, imageSize}; a grounded item carries the Google Search
tool (``tools: [{googleSearch: {}}]``) as realtime does. The item id travels as the request key
(``metadata.key`` inline, ``key`` in a JSONL line), which is how results find their item.

Two encodings: wire JSON (camelCase, standard base64) for JSONL files (Files API and GCS), and the
SDK's own dict shape for inline requests (``InlinedRequest``: raw bytes, snake_case).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator
from typing import Any

from airflow_banana.channels.gemini import build_contents
from airflow_banana.models import ImageRequest

# The Developer Batch API refuses inline payloads of 20 MB or more; keep a margin for the envelope.
INLINE_LIMIT_BYTES = 20 * 1000 * 1000
INLINE_MARGIN = 0.9
# Inline results come back inside one batches.get answer, which the SDK parses whole: above this
# estimate of result bytes a file is used even when the requests would fit inline (B7).
INLINE_RESULT_LIMIT_BYTES = 64 * 1024 * 1024
# Rough base64 size of one result image by requested size (PNG from Google; used only to choose).
_RESULT_BYTES = {"1K": 2_000_000, "2K": 8_000_000, "4K": 30_000_000}


def generation_config(request: ImageRequest) -> dict[str, Any]:
    """``generationConfig`` in wire spelling."""
    config: dict[str, Any] = {
        "responseModalities": ["TEXT", "IMAGE"],
        "imageConfig": {"aspectRatio": request.aspect_ratio, "imageSize": request.image_size},
    }
    if request.include_thoughts:
        config["thinkingConfig"] = {"includeThoughts": True}
    return config


def wire_request(request: ImageRequest) -> dict[str, Any]:
    """A GenerateContentRequest as wire JSON (camelCase, standard base64)."""
    parts: list[dict[str, Any]] = [{"text": request.prompt}]
    for ref in request.reference_images:
        parts.append(
            {"inlineData": {"mimeType": ref.mime_type, "data": base64.b64encode(ref.data).decode("ascii")}}
        )
    body: dict[str, Any] = {
        "contents": [{"role": "user", "parts": parts}],
        "generationConfig": generation_config(request),
    }
    if request.grounding:
        body["tools"] = [{"googleSearch": {}}]  # top level, as realtime sends it
    return body


def jsonl_line(request: ImageRequest) -> str:
    """One input line ``{"key": id, "request": {...}}`` with its newline (Developer file and Vertex GCS)."""
    return (
        json.dumps({"key": request.item_id, "request": wire_request(request)}, separators=(",", ":")) + "\n"
    )


def jsonl_lines(requests: Iterable[ImageRequest]) -> Iterator[str]:
    for request in requests:
        yield jsonl_line(request)


def inline_request(request: ImageRequest) -> dict[str, Any]:
    """An ``InlinedRequest`` dict for ``batches.create(src=[...])``; contents as realtime sends them."""
    config: dict[str, Any] = {
        "response_modalities": ["TEXT", "IMAGE"],
        "image_config": {"aspect_ratio": request.aspect_ratio, "image_size": request.image_size},
    }
    if request.include_thoughts:
        config["thinking_config"] = {"include_thoughts": True}
    if request.grounding:
        config["tools"] = [{"google_search": {}}]
    return {"contents": build_contents(request), "config": config, "metadata": {"key": request.item_id}}


def request_bytes(request: ImageRequest) -> int:
    """Approximate wire size of one request (base64 references dominate)."""
    refs = sum((len(r.data) + 2) // 3 * 4 + 64 for r in request.reference_images)
    return len(request.prompt.encode("utf-8")) + refs + 256


def fits_inline(requests: Iterable[ImageRequest]) -> bool:
    """Inline when the requests stay under the 20 MB limit AND the results stay small (see above)."""
    total = 0
    results = 0
    for request in requests:
        total += request_bytes(request)
        results += _RESULT_BYTES.get(request.image_size, _RESULT_BYTES["4K"])
        if total >= INLINE_LIMIT_BYTES * INLINE_MARGIN or results > INLINE_RESULT_LIMIT_BYTES:
            return False
    return True
