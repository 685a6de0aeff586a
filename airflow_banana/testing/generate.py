"""Image generation as the Gemini API does it: parse, validate, render, and shape the answer.

``produce`` is protocol-neutral (it returns a ``Generated``); ``gemini_response`` and the OpenAI
module wrap it. ``generate_content_response`` is the one-call entry for other route modules (the
batch module uses it with ``price_lane="batch"``): request dict in, response dict out, billing
recorded. HTTP concerns (keys, transport faults, latency) live in the route layer, not here.
"""

from __future__ import annotations

import binascii
import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_banana.models import (
    ASPECT_RATIOS,
    IMAGE_SIZES,
    INPUT_IMAGE_TOKENS,
    MAX_INPUT_TOKENS,
    MAX_REFERENCE_IMAGES,
    OUTPUT_IMAGE_TOKENS,
    ImageRequest,
    ReferenceImage,
    estimate_input_tokens,
    expected_pixels,
    model_id,
    sizes_of,
)
from airflow_banana.testing.errors import RequestError, model_not_found
from airflow_banana.testing.faults import CONTENT_FAULTS, markers_in
from airflow_banana.testing.render import render_edit, render_image
from airflow_banana.testing.signatures import MissingSignature, b64decode_any, b64encode_std, check_history
from airflow_banana.testing.state import SimulatorState

RESULT_TEXT = "Here is the image you asked for."
SEARCH_TOOL = "googleSearch"
# The redirect host Google puts in grounding chunk URIs (the real source is behind it).
GROUNDING_REDIRECT = "https://vertexaisearch.cloud.google.com/grounding-api-redirect/"
NO_IMAGE_TEXT = "I could not generate an image for this request. Try rephrasing the prompt."


def _camel(key: str) -> str:
    if "_" not in key or key.startswith("@"):
        return key
    head, *rest = key.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def camelize(obj: Any) -> Any:
    """Accept snake_case and camelCase alike, as Google's proto-JSON parser does."""
    if isinstance(obj, Mapping):
        return {_camel(str(k)): camelize(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [camelize(v) for v in obj]
    return obj


def _tokens(text: str) -> int:
    return estimate_input_tokens(len(text))


def check_input_tokens(parsed: ParsedRequest) -> None:
    """Refuse a request over the model's input limit, with Google's 400, before anything is drawn."""
    if parsed.prompt_tokens > MAX_INPUT_TOKENS:
        raise RequestError(
            400,
            f"The input token count ({parsed.prompt_tokens}) exceeds the maximum number of tokens "
            f"allowed ({MAX_INPUT_TOKENS}).",
        )


@dataclass(frozen=True)
class ParsedRequest:
    """A validated image request in protocol-neutral form."""

    model: str
    prompt: str
    references: tuple[ReferenceImage, ...]
    image_size: str
    aspect_ratio: str
    include_thoughts: bool = False
    want_image: bool = True
    turns: int = 1
    parent_image: bytes | None = None
    prompt_tokens: int = 0
    history: tuple[Mapping[str, Any], ...] = ()
    tools: tuple[str, ...] = ()  # top-level tool names as sent, e.g. ("googleSearch",)

    @property
    def grounded(self) -> bool:
        return SEARCH_TOOL in self.tools

    def fingerprint(self) -> str:
        return ImageRequest(
            item_id="",
            prompt=self.prompt,
            image_size=self.image_size,
            aspect_ratio=self.aspect_ratio,
            model=self.model,
            reference_images=self.references,
            grounding="google_search" if self.grounded else None,
        ).fingerprint()


@dataclass(frozen=True)
class Generated:
    """What the model 'did', before any wire format."""

    request: ParsedRequest
    fingerprint: str
    response_id: str
    image: bytes | None = None
    image_mime: str = "image/png"
    draft: bytes | None = None
    text: str = ""
    thought_text: str = ""
    finish_reason: str = "STOP"
    block_reason: str | None = None
    parent_sha256: str | None = None
    prompt_tokens: int = 0
    thoughts_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def billable(self) -> bool:
        return self.image is not None

    @property
    def image_tokens(self) -> int:
        return OUTPUT_IMAGE_TOKENS[self.request.image_size] if self.image is not None else 0

    @property
    def text_tokens(self) -> int:
        return _tokens(self.text)


def last_user_prompt(body: Mapping[str, Any]) -> str:
    """The text of the last user turn of a (possibly invalid) request; used to find markers."""
    try:
        contents = camelize(body).get("contents") or []
        for content in reversed(contents):
            if content.get("role", "user") == "user":
                return "\n".join(str(p["text"]) for p in content.get("parts") or [] if "text" in p)
    except (AttributeError, TypeError):
        return ""
    return ""


def _image_config(gen: Mapping[str, Any]) -> tuple[str, str]:
    cfg = gen.get("imageConfig") or {}
    size = cfg.get("imageSize", "1K")
    ratio = cfg.get("aspectRatio", "1:1")
    if size not in IMAGE_SIZES:
        raise RequestError(
            400,
            f"Invalid value at 'generation_config.image_config.image_size' ({size!r}): "
            f"supported values are {', '.join(IMAGE_SIZES)}.",
        )
    if ratio not in ASPECT_RATIOS:
        raise RequestError(
            400,
            f"Invalid value at 'generation_config.image_config.aspect_ratio' ({ratio!r}): "
            f"supported values are {', '.join(ASPECT_RATIOS)}.",
        )
    return str(size), str(ratio)


def check_model_size(model: str, size: str) -> None:
    """Google's 400 INVALID_ARGUMENT for a size the model cannot draw (Flash Image: 1K only)."""
    sizes = sizes_of(model)
    if size not in sizes:
        raise RequestError(
            400,
            f"Invalid value at 'generation_config.image_config.image_size' ({size!r}): model "
            f"{model_id(model)} supports {', '.join(sizes)} only.",
        )


def _decode_inline(part: Mapping[str, Any], where: str) -> ReferenceImage:
    inline = part.get("inlineData") or {}
    try:
        data = b64decode_any(str(inline.get("data", "")))
    except (binascii.Error, ValueError) as err:
        raise RequestError(
            400, f"Invalid value at '{where}.inline_data.data' (TYPE_BYTES), Base64 decoding failed"
        ) from err
    return ReferenceImage(data=data, mime_type=str(inline.get("mimeType", "application/octet-stream")))


def parse_generate_request(
    body: Mapping[str, Any], model: str, *, known_models: Sequence[str], version: str = "v1beta"
) -> ParsedRequest:
    """Validate a GenerateContentRequest the way the API does; raise ``RequestError`` if it would."""
    if model.startswith("models/"):
        model = model[len("models/") :]
    if model not in known_models:
        err = model_not_found(model, version)["error"]
        raise RequestError(404, err["message"])
    if not isinstance(body, Mapping):
        raise RequestError(400, "Invalid JSON payload received. Expected an object.")
    req = camelize(body)
    contents = req.get("contents")
    if isinstance(contents, Mapping):
        contents = [contents]
    if not contents or not isinstance(contents, list):
        raise RequestError(400, "* GenerateContentRequest.contents: contents is not specified\n")
    gen = req.get("generationConfig") or {}
    size, ratio = _image_config(gen)
    check_model_size(model, size)
    modalities = [str(m).upper() for m in gen.get("responseModalities") or ["TEXT", "IMAGE"]]
    include_thoughts = bool((gen.get("thinkingConfig") or {}).get("includeThoughts", False))

    last_user = max((i for i, c in enumerate(contents) if c.get("role", "user") == "user"), default=None)
    if last_user is None:
        raise RequestError(400, "* GenerateContentRequest.contents: the last content must be from the user\n")
    texts: list[str] = []
    refs: list[ReferenceImage] = []
    for pi, part in enumerate(contents[last_user].get("parts") or []):
        if "text" in part:
            texts.append(str(part["text"]))
        elif "inlineData" in part:
            refs.append(_decode_inline(part, f"contents[{last_user}].parts[{pi}]"))
    if len(refs) > MAX_REFERENCE_IMAGES:
        raise RequestError(
            400, f"Too many input images: {len(refs)}; at most {MAX_REFERENCE_IMAGES} are supported."
        )

    prompt_tokens = 0
    parent: bytes | None = None
    for ci, content in enumerate(contents):
        for pi, part in enumerate(content.get("parts") or []):
            if "text" in part and not part.get("thought"):
                prompt_tokens += _tokens(str(part["text"]))
            elif "inlineData" in part:
                prompt_tokens += INPUT_IMAGE_TOKENS
                if content.get("role") == "model" and ci < last_user and not part.get("thought"):
                    parent = _decode_inline(part, f"contents[{ci}].parts[{pi}]").data
    turns = sum(1 for c in contents if c.get("role", "user") == "user")
    return ParsedRequest(
        tools=_tool_names(req.get("tools")),
        model=model,
        prompt="\n".join(texts),
        references=tuple(refs),
        image_size=size,
        aspect_ratio=ratio,
        include_thoughts=include_thoughts,
        want_image="IMAGE" in modalities,
        turns=turns,
        parent_image=parent,
        prompt_tokens=max(1, prompt_tokens),
        history=tuple(contents),
    )


def _tool_names(tools: Any) -> tuple[str, ...]:
    """Names of the tools a request carries (``[{"googleSearch": {}}]`` -> ``("googleSearch",)``)."""
    if not isinstance(tools, list):
        return ()
    names: list[str] = []
    for tool in tools:
        if isinstance(tool, Mapping):
            names.extend(str(k) for k, v in tool.items() if v is not None)
    return tuple(names)


def grounding_metadata(parsed: ParsedRequest, fingerprint: str) -> dict[str, Any]:
    """``groundingMetadata`` as Google returns it for a request with the Search tool.

    Shape from the Gemini API docs (grounding with Google Search) and google-genai's
    ``GroundingMetadata``: ``webSearchQueries``, ``searchEntryPoint.renderedContent`` (HTML),
    ``groundingChunks[].web.{uri,title}`` and ``groundingSupports``. Deterministic in the request.
    """
    words = [w.strip(".,;:!?\"'()").lower() for w in parsed.prompt.split()]
    topic = " ".join(w for w in words if len(w) > 3)[:80] or "image"
    queries = [topic, f"{topic} facts"]
    chunks = [
        {"web": {"uri": f"{GROUNDING_REDIRECT}{fingerprint[:16]}{n}", "title": title}}
        for n, title in enumerate(("en.wikipedia.org", "example.com"))
    ]
    chips = "".join(f'<a class="chip" href="https://www.google.com/search?q={q}">{q}</a>' for q in queries)
    return {
        "webSearchQueries": queries,
        "searchEntryPoint": {
            "renderedContent": f'<style>.chip{{margin:2px}}</style><div class="container">{chips}</div>'
        },
        "groundingChunks": chunks,
        "groundingSupports": [
            {
                "segment": {"startIndex": 0, "endIndex": len(RESULT_TEXT), "text": RESULT_TEXT},
                "groundingChunkIndices": [0, 1],
                "confidenceScores": [0.9, 0.7],
            }
        ],
    }


def check_signatures(state: SimulatorState, parsed: ParsedRequest) -> MissingSignature | None:
    return check_history(parsed.history, state.signer)


def content_fault_of(parsed: ParsedRequest, decided: str | None) -> str | None:
    if decided in CONTENT_FAULTS:
        return decided
    for marker in markers_in(parsed.prompt):
        if marker in CONTENT_FAULTS:
            return marker
    return None


def produce(
    parsed: ParsedRequest, *, content_fault: str | None = None, response_id: str | None = None
) -> Generated:
    """Render the outcome of one generation (deterministic in the request, except the id).

    Raises ``RequestError`` (400) for a request over the input-token limit: every route and the
    batch lanes come through here, so none of them renders an over-limit prompt.
    """
    check_input_tokens(parsed)
    fp = parsed.fingerprint()
    rid = response_id or uuid.uuid4().hex[:22]
    digest = hashlib.sha256(fp.encode()).digest()
    thoughts = 120 + int.from_bytes(digest[:2], "big") % 240
    base: dict[str, Any] = {
        "request": parsed,
        "fingerprint": fp,
        "response_id": rid,
        "prompt_tokens": parsed.prompt_tokens,
    }
    if content_fault == "blocked":
        return Generated(**base, finish_reason="", block_reason="PROHIBITED_CONTENT")
    thought_text = f"**Composing the scene**\n\nI am planning an image for: {parsed.prompt[:200]}"
    if content_fault == "image_safety":
        return Generated(
            **base, finish_reason="IMAGE_SAFETY", thoughts_tokens=thoughts, thought_text=thought_text
        )
    if content_fault == "no_image" or not parsed.want_image:
        reason = "NO_IMAGE" if content_fault == "no_image" else "STOP"
        text = NO_IMAGE_TEXT if content_fault == "no_image" else f"(text only) {parsed.prompt[:200]}"
        return Generated(
            **base, finish_reason=reason, text=text, thoughts_tokens=thoughts, thought_text=thought_text
        )

    width, height = expected_pixels(parsed.image_size, parsed.aspect_ratio)
    if content_fault == "wrong_size":
        width, height = max(16, width // 2), max(16, height // 2 + 7)
    fmt = "JPEG" if content_fault == "jpeg_as_png" else "PNG"
    chunks: tuple[tuple[str, str], ...] = (("sim:fingerprint", fp),)
    parent_sha = None
    if parsed.parent_image is not None:
        parent_sha = hashlib.sha256(parsed.parent_image).hexdigest()
        chunks += (("sim:parent_sha256", parent_sha),)
        try:
            image = render_edit(parsed.parent_image, parsed.prompt, width, height, fmt=fmt, chunks=chunks)
        except Exception as err:  # the history carried bytes PIL cannot read
            raise RequestError(
                400, "Unable to process input image. Please retry or report in the forum."
            ) from err
    else:
        image = render_image(fp, parsed.prompt, width, height, fmt=fmt, chunks=chunks)
    draft = None
    if parsed.include_thoughts:
        draft = render_image(
            fp + ":draft", "draft: " + parsed.prompt, max(16, width // 4), max(16, height // 4)
        )
    return Generated(
        **base,
        image=image,
        image_mime="image/png",  # declared PNG even for jpeg_as_png: that is the fault
        draft=draft,
        text=RESULT_TEXT,
        thought_text=thought_text,
        thoughts_tokens=thoughts,
        parent_sha256=parent_sha,
    )


def gemini_parts(state: SimulatorState, gen: Generated) -> list[dict[str, Any]]:
    """Candidate parts with thoughtSignature exactly where Google puts them."""
    parts: list[dict[str, Any]] = []
    if gen.request.include_thoughts and gen.thought_text:
        parts.append({"text": gen.thought_text, "thought": True})
        if gen.draft is not None:
            parts.append(
                {"inlineData": {"mimeType": "image/png", "data": b64encode_std(gen.draft)}, "thought": True}
            )
    first_answer = len(parts)
    if gen.text:
        parts.append({"text": gen.text})
    if gen.image is not None:
        parts.append({"inlineData": {"mimeType": gen.image_mime, "data": b64encode_std(gen.image)}})
    for i in range(first_answer, len(parts)):
        if i == first_answer or "inlineData" in parts[i]:
            parts[i]["thoughtSignature"] = b64encode_std(state.signer.issue(gen.response_id, i))
    return parts


def usage_metadata(gen: Generated) -> dict[str, Any]:
    text_tokens = gen.text_tokens
    candidates = gen.image_tokens + text_tokens
    usage: dict[str, Any] = {
        "promptTokenCount": gen.prompt_tokens,
        "totalTokenCount": gen.prompt_tokens + candidates + gen.thoughts_tokens,
    }
    n_images = len(gen.request.references)
    usage["promptTokensDetails"] = [
        {"modality": "TEXT", "tokenCount": max(0, gen.prompt_tokens - n_images * INPUT_IMAGE_TOKENS)}
    ]
    if n_images:
        usage["promptTokensDetails"].append(
            {"modality": "IMAGE", "tokenCount": n_images * INPUT_IMAGE_TOKENS}
        )
    if gen.block_reason is None:
        usage["candidatesTokenCount"] = candidates
        usage["thoughtsTokenCount"] = gen.thoughts_tokens
        details = []
        if gen.image is not None:
            details.append({"modality": "IMAGE", "tokenCount": gen.image_tokens})
        if text_tokens:
            details.append({"modality": "TEXT", "tokenCount": text_tokens})
        usage["candidatesTokensDetails"] = details
    return usage


def gemini_response(state: SimulatorState, gen: Generated) -> dict[str, Any]:
    """A full GenerateContentResponse dict (camelCase, standard base64)."""
    body: dict[str, Any] = {}
    if gen.block_reason is not None:
        body["promptFeedback"] = {"blockReason": gen.block_reason}
    elif gen.finish_reason == "IMAGE_SAFETY":
        body["candidates"] = [{"finishReason": "IMAGE_SAFETY", "index": 0}]
    else:
        candidate: dict[str, Any] = {
            "content": {"role": "model", "parts": gemini_parts(state, gen)},
            "finishReason": gen.finish_reason,
            "index": 0,
        }
        if gen.request.grounded:
            candidate["groundingMetadata"] = grounding_metadata(gen.request, gen.fingerprint)
        body["candidates"] = [candidate]
    body["usageMetadata"] = usage_metadata(gen)
    body["modelVersion"] = gen.request.model
    body["responseId"] = gen.response_id
    return body


def record_billable(
    state: SimulatorState, gen: Generated, *, key_id: str, path: str, price_lane: str
) -> None:
    if not gen.billable or gen.image is None:
        return
    state.ledger.record_billable(
        key_id=key_id,
        path=path,
        model=gen.request.model,
        image_size=gen.request.image_size,
        aspect_ratio=gen.request.aspect_ratio,
        fingerprint=gen.fingerprint,
        price_lane=price_lane,
        turns=gen.request.turns,
        image_sha256=hashlib.sha256(gen.image).hexdigest(),
        response_id=gen.response_id,
    )


def strict_for(state: SimulatorState, key: str, *, vertex: bool) -> bool:
    """Per-key setting beats the global one, which beats the path default."""
    prof = state.faults.profile(key)
    if prof.strict_signatures is not None:
        return prof.strict_signatures
    if state.config.strict_signatures is not None:
        return state.config.strict_signatures
    return not vertex


def generate(
    state: SimulatorState,
    body: Mapping[str, Any],
    *,
    model: str,
    strict: bool,
    content_fault: str | None = None,
    version: str = "v1beta",
    parsed: ParsedRequest | None = None,
) -> Generated:
    """Validate and produce; raises ``RequestError`` for what the API would refuse.

    ``parsed``: the body already parsed (the route parses once, to log what it asked for).
    """
    if parsed is None:
        parsed = parse_generate_request(body, model, known_models=state.config.models, version=version)
    if strict:
        missing = check_signatures(state, parsed)
        if missing is not None:
            raise RequestError(400, missing.message)
    return produce(parsed, content_fault=content_fault_of(parsed, content_fault))


def generate_content_response(
    state: SimulatorState,
    body: Mapping[str, Any],
    *,
    model: str,
    key: str = "",
    path: str = "",
    price_lane: str = "realtime",
    strict: bool | None = None,
    content_fault: str | None = None,
    record: bool = True,
) -> tuple[int, dict[str, Any]]:
    """(status, body) for one GenerateContentRequest; a billable result is put in the ledger.

    For route modules that answer many requests at once (batch): no transport faults here, but
    content faults (markers, or ``content_fault``) and validation errors do apply.
    """
    strict_mode = strict_for(state, key, vertex=False) if strict is None else strict
    try:
        gen = generate(state, body, model=model, strict=strict_mode, content_fault=content_fault)
    except RequestError as err:
        return err.code, err.body()
    if record:
        record_billable(state, gen, key_id=state.key_id(key), path=path, price_lane=price_lane)
    return 200, gemini_response(state, gen)
