"""The Google channel: Developer API, Gemini-native relays and Vertex AI through google-genai.

One attempt per call: the SDK's own retries are switched off (``HttpRetryOptions(attempts=1)``)
because retry and failover belong to the router, which sees every channel at once. The google-genai
import happens when a channel is constructed (``build_channel``, before any attempt), never at
module import, so importing this module, the hooks or the DAGs stays cheap and the pure parsing
below is testable without building a client.

Works with google-genai 2.x and 3.x (>=1.66,<4): only APIs present in both are used
(``Client(vertexai=...)``, ``HttpOptions``, ``aio.models.generate_content``/``get``,
``aio.aclose``, ``model_dump``), and responses are normalised from their JSON dump, not from
version-specific attributes.

Model choice: the connection's ``extra.model`` is how THIS channel spells the model, so it wins
while the request carries the default model; a request (manifest) that names a different model
explicitly is sent that model, since Google spells model names the same on every endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from airflow_banana.channels.clients import (
    build_genai_client,
    require_genai_protocol,
    service_account_credentials,
    vertex_credentials,
)
from airflow_banana.channels.config import ChannelConfig, config_secrets
from airflow_banana.channels.errors import (
    Classification,
    classify_exception,
    classify_http,
    classify_outcome,
    malformed,
    to_channel_error,
)
from airflow_banana.exceptions import ChannelError, ConfigurationError, ErrorClass
from airflow_banana.imaging import sniff_mime
from airflow_banana.models import DEFAULT_MODEL, GenerationResult, ImageRequest, Usage, model_id
from airflow_banana.pricing import attempt_cost
from airflow_banana.secrets import scrub, scrub_exception

log = logging.getLogger(__name__)

# The hard cap on one attempt sits just above the SDK's own timeout: the SDK's httpx timeout is
# per read, so a server trickling bytes forever would otherwise never time out (FAULTS.md R6).
_HARD_CAP_MARGIN_S = 1.0


# ----------------------------------------------------------------------------- pure parsing


def _field(mapping: Mapping[str, Any], camel: str, snake: str) -> Any:
    """A field under either spelling: wire JSON is camelCase, the SDK's dump is snake_case."""
    value = mapping.get(camel)
    return mapping.get(snake) if value is None else value


def decode_b64(value: Any) -> bytes:
    """Bytes from standard OR URL-safe base64 (Google answers standard, the SDK dumps URL-safe)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    text = str(value).strip().replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    return base64.b64decode(text, validate=True)


@dataclass(frozen=True)
class ParsedResponse:
    """What one GenerateContentResponse holds, normalised; ``image`` is None when there is none."""

    image: bytes | None
    declared_mime_type: str
    text: str
    thought_signatures: tuple[bytes, ...]
    finish_reason: str | None
    block_reason: str | None
    block_message: str | None
    usage: Usage
    content: dict[str, Any] | None
    grounding: dict[str, Any] | None = None

    def failure(self) -> Classification | None:
        """The classification of this answer when it is not a success (blocked, no image)."""
        return classify_outcome(
            has_image=self.image is not None,
            finish_reason=self.finish_reason,
            block_reason=self.block_reason,
            block_message=self.block_message,
        )


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def parse_usage(usage: Mapping[str, Any] | None) -> Usage:
    """``usageMetadata`` (either spelling) as ``Usage``; image tokens from the IMAGE modality."""
    if not isinstance(usage, Mapping):
        return Usage()
    image_tokens = 0
    for detail in _field(usage, "candidatesTokensDetails", "candidates_tokens_details") or []:
        if isinstance(detail, Mapping) and str(detail.get("modality", "")).upper() == "IMAGE":
            image_tokens += _int(_field(detail, "tokenCount", "token_count"))
    return Usage(
        prompt_tokens=_int(_field(usage, "promptTokenCount", "prompt_token_count")),
        output_tokens=_int(_field(usage, "candidatesTokenCount", "candidates_token_count")),
        image_tokens=image_tokens,
        thoughts_tokens=_int(_field(usage, "thoughtsTokenCount", "thoughts_token_count")),
        total_tokens=_int(_field(usage, "totalTokenCount", "total_token_count")),
    )


def grounding_summary(candidate: Mapping[str, Any]) -> dict[str, Any] | None:
    """A candidate's ``groundingMetadata`` as stored in the item's metadata, or None without one.

    ``web_search_queries`` (what the model searched), ``sources`` (``uri`` + ``title`` of each web
    grounding chunk, in order) and ``search_entry_point`` (Google's rendered search-suggestion
    HTML, which Google's terms ask apps to show next to grounded results). Either spelling.
    """
    meta = _field(candidate, "groundingMetadata", "grounding_metadata")
    if not isinstance(meta, Mapping):
        return None
    queries = _field(meta, "webSearchQueries", "web_search_queries") or []
    sources = []
    for chunk in _field(meta, "groundingChunks", "grounding_chunks") or []:
        web = chunk.get("web") if isinstance(chunk, Mapping) else None
        if isinstance(web, Mapping) and web.get("uri"):
            sources.append({"uri": str(web["uri"]), "title": str(web.get("title") or "")})
    entry = _field(meta, "searchEntryPoint", "search_entry_point")
    rendered = _field(entry, "renderedContent", "rendered_content") if isinstance(entry, Mapping) else None
    return {
        "web_search_queries": [str(q) for q in queries if isinstance(q, str)],
        "sources": sources,
        "search_entry_point": str(rendered) if rendered else None,
    }


def parse_generate_response(body: Mapping[str, Any]) -> ParsedResponse:
    """Normalise a GenerateContentResponse given as wire JSON or as the SDK's JSON dump.

    The result image is the LAST non-thought image part (thought parts may hold drafts); every
    thought signature of the model turn is kept in order, as raw bytes. Raises ``ValueError``
    when the body does not have the promised shape (the caller reports "malformed response").
    """
    if not isinstance(body, Mapping):
        raise ValueError(f"response is a {type(body).__name__}, not an object")
    usage = parse_usage(_field(body, "usageMetadata", "usage_metadata"))
    feedback = _field(body, "promptFeedback", "prompt_feedback") or {}
    if not isinstance(feedback, Mapping):
        feedback = {}
    block_reason = _field(feedback, "blockReason", "block_reason")
    block_message = _field(feedback, "blockReasonMessage", "block_reason_message")
    candidates = body.get("candidates") or []
    if not isinstance(candidates, list):
        raise ValueError("candidates is not a list")
    if not candidates:
        return ParsedResponse(
            None,
            "",
            "",
            (),
            None,
            str(block_reason) if block_reason else None,
            str(block_message) if block_message else None,
            usage,
            None,
        )
    candidate = candidates[0]
    if not isinstance(candidate, Mapping):
        raise ValueError("candidate is not an object")
    finish = _field(candidate, "finishReason", "finish_reason")
    content = candidate.get("content")
    image: bytes | None = None
    declared = ""
    texts: list[str] = []
    signatures: list[bytes] = []
    if content is not None:
        if not isinstance(content, Mapping):
            raise ValueError("candidate content is not an object")
        parts = content.get("parts") or []
        if not isinstance(parts, list):
            raise ValueError("content parts is not a list")
        for part in parts:
            if not isinstance(part, Mapping):
                raise ValueError("a content part is not an object")
            signature = _field(part, "thoughtSignature", "thought_signature")
            if signature:
                try:
                    signatures.append(decode_b64(signature))
                except (binascii.Error, ValueError) as err:
                    raise ValueError("a thought signature is not base64") from err
            if part.get("thought"):
                continue
            inline = _field(part, "inlineData", "inline_data")
            if isinstance(inline, Mapping) and inline.get("data"):
                try:
                    image = decode_b64(inline["data"])
                except (binascii.Error, ValueError) as err:
                    raise ValueError("image data is not base64") from err
                declared = str(_field(inline, "mimeType", "mime_type") or "")
            elif isinstance(part.get("text"), str):
                texts.append(part["text"])
    return ParsedResponse(
        image=image,
        declared_mime_type=declared,
        text="".join(texts),
        thought_signatures=tuple(signatures),
        finish_reason=str(finish) if finish else None,
        block_reason=str(block_reason) if block_reason else None,
        block_message=str(block_message) if block_message else None,
        usage=usage,
        content=dict(content) if isinstance(content, Mapping) else None,
        grounding=grounding_summary(candidate),
    )


def build_contents(request: ImageRequest) -> list[dict[str, Any]]:
    """One user turn: the prompt text FIRST, then the reference images inline, in order.

    The order is part of the contract: the simulator's ledger fingerprint is computed from it.
    """
    parts: list[dict[str, Any]] = [{"text": request.prompt}]
    for ref in request.reference_images:
        parts.append({"inline_data": {"mime_type": ref.mime_type, "data": ref.data}})
    return [{"role": "user", "parts": parts}]


def resolve_model(request_model: str, config_model: str, allowed: Sequence[str] = ()) -> str:
    """The model name to send: the connection's, unless the request explicitly names another.

    ``allowed`` are the models the request may be drawn by (``ImageRequest.allowed_models``): a
    channel whose own model is one of them (a model tier, ``extra.models``) sends its own.
    """
    if config_model and model_id(config_model) in {model_id(m) for m in allowed}:
        return config_model
    if request_model and request_model != DEFAULT_MODEL:
        return request_model
    return config_model or DEFAULT_MODEL


def result_from_parsed(
    parsed: ParsedResponse,
    *,
    config: ChannelConfig,
    request: ImageRequest,
    latency_s: float,
) -> GenerationResult:
    """A ``GenerationResult`` from a successful parse; raises ``ChannelError`` for everything else."""
    secrets = config_secrets(config)
    verdict = parsed.failure()
    if verdict is not None:
        raise to_channel_error(
            verdict,
            channel=config.name,
            item_id=request.item_id,
            billed_on_failure=config.billed_on_failure,
            secrets=secrets,
        )
    assert parsed.image is not None  # failure() is None only when there is an image
    mime = sniff_mime(parsed.image)
    if mime is None:
        raise to_channel_error(
            malformed(f"image bytes are no known type (declared {parsed.declared_mime_type or 'none'})"),
            channel=config.name,
            item_id=request.item_id,
            billed_on_failure=config.billed_on_failure,
            secrets=secrets,
        )
    return GenerationResult(
        image=parsed.image,
        mime_type=mime,
        declared_mime_type=parsed.declared_mime_type or mime,
        channel=config.name,
        usage=parsed.usage,
        finish_reason=parsed.finish_reason or "STOP",
        cost_usd=attempt_cost(
            config.prices, request.image_size, succeeded=True, billed_on_failure=config.billed_on_failure
        ),
        text=parsed.text,
        thought_signatures=parsed.thought_signatures,
        content=parsed.content,
        latency_s=latency_s,
        grounding=parsed.grounding,
        model=resolve_model(request.model, config.model, request.allowed_models),
    )


# ----------------------------------------------------------------------------- the channel


class GeminiChannel:
    """A ``Channel`` over google-genai's async client, for the ``gemini`` and ``vertex`` protocols.

    The SDK client (``channels.clients``, the one construction every lane shares) is built in
    ``__init__`` (so no attempt pays the SDK import) and kept in an attribute (a temporary client
    is closed under the caller's feet); ``aclose()`` closes it.
    """

    def __init__(self, config: ChannelConfig, *, clock: Callable[[], float] = time.monotonic):
        require_genai_protocol(config)
        self.config = config
        self._clock = clock
        self._client: Any = None
        # A broken service-account JSON is a configuration error: surface it when the channel is
        # built (with the other connection checks), not as a failed attempt mid-run.
        self._service_account: Any = (
            service_account_credentials(config) if config.credentials_info is not None else None
        )
        # Built now, not in the first generate(): importing google-genai and building the client
        # takes ~0.5 s of CPU on the event loop, which would stall every item in flight and eat
        # into the first attempt's timeout. build_channel runs before any attempt starts.
        # (Importing airflow_banana still imports no SDK: only constructing a channel does.)
        try:
            if config.protocol == "vertex" and self._service_account is None and not config.api_key:
                # application-default credentials may probe the metadata server: no network at
                # construction; pay only the SDK import now, build the client at the first call
                import google.genai  # noqa: F401
            else:
                self.get_client()
        except ConfigurationError:
            raise
        except Exception as err:
            # e.g. Vertex with no application-default credentials on this host: keep the old
            # behaviour, the first call retries the construction and reports a classified error
            log.debug("channel %s: client not built yet (%s); retried at the first call", config.name, err)

    @property
    def name(self) -> str:
        return self.config.name

    def __repr__(self) -> str:
        return f"GeminiChannel(name={self.config.name!r}, protocol={self.config.protocol!r})"

    # -- client ---------------------------------------------------------------------------

    def _credentials(self) -> Any:
        """Vertex credentials: service-account JSON, else the password as a static OAuth token, else ADC."""
        return vertex_credentials(self.config, self._service_account)

    def get_client(self) -> Any:
        """The google-genai client this channel sends through (built once, closed by aclose)."""
        if self._client is None:
            self._client = build_genai_client(self.config, self._service_account)
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.aio.aclose()
            finally:
                client.close()

    # -- calls ----------------------------------------------------------------------------

    def _generate_config(self, request: ImageRequest) -> Any:
        from google.genai import types

        if request.grounding and not self.config.grounding:
            # the router never picks such a channel; this guards a direct caller
            raise ConfigurationError(
                f"channel '{self.name}', item '{request.item_id}': the channel does not carry "
                f"{request.grounding} grounding (extra.supports_grounding); nothing was sent"
            )
        return types.GenerateContentConfig(
            # no function tools: without this the SDK logs "AFC is enabled ..." on every call
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
            response_modalities=["TEXT", "IMAGE"],
            image_config=types.ImageConfig(aspect_ratio=request.aspect_ratio, image_size=request.image_size),
            thinking_config=types.ThinkingConfig(include_thoughts=True) if request.include_thoughts else None,
            tools=[types.Tool(google_search=types.GoogleSearch())] if request.grounding else None,
        )

    async def generate(self, request: ImageRequest) -> GenerationResult:
        """One attempt for ``request``; raises ``ChannelError`` classified for the router."""
        result, _content = await self.generate_contents(build_contents(request), request=request)
        return result

    async def generate_contents(
        self, contents: Sequence[Mapping[str, Any] | Any], *, request: ImageRequest
    ) -> tuple[GenerationResult, dict[str, Any]]:
        """Send an arbitrary ``contents`` list (multi-turn history) and return the result plus the
        model turn as a JSON dict (``Content.model_dump(mode="json", exclude_none=True)``).

        ``contents`` items are ``types.Content`` or their JSON dicts (signatures included; they
        are sent back unchanged). From ``request`` only item id, size, ratio, model and
        ``include_thoughts`` are used: its prompt and reference images are NOT added.
        """
        from google.genai import types

        try:
            payload = [
                c if isinstance(c, types.Content) else types.Content.model_validate(c) for c in contents
            ]
        except Exception as err:
            raise ConfigurationError(
                f"channel '{self.name}', item '{request.item_id}': contents are not valid Content "
                f"objects ({type(err).__name__}); nothing was sent"
            ) from err
        model = resolve_model(request.model, self.config.model, request.allowed_models)
        started = self._clock()
        body = await self._call(
            lambda client: client.aio.models.generate_content(
                model=model, contents=payload, config=self._generate_config(request)
            ),
            item_id=request.item_id,
        )
        latency = self._clock() - started
        try:
            parsed = parse_generate_response(body)
        except ValueError as err:
            raise to_channel_error(
                malformed(str(err)),
                channel=self.name,
                item_id=request.item_id,
                billed_on_failure=self.config.billed_on_failure,
                secrets=config_secrets(self.config),
            ) from err
        result = result_from_parsed(parsed, config=self.config, request=request, latency_s=latency)
        log.debug(
            "channel %s item %s: image %s (%d bytes) in %.2fs",
            self.name,
            request.item_id,
            result.mime_type,
            len(result.image),
            latency,
        )
        return result, dict(parsed.content or {})

    async def probe(self) -> str:
        """A free call proving the key/credentials and model work (``models.get``; no generation)."""
        model = self.config.model
        response = await self._call(lambda client: client.aio.models.get(model=model), item_id=None)
        name = response.get("name") or model
        return f"channel '{self.name}' ({self.config.protocol}) can see model {name}"

    async def _call(self, invoke: Callable[[Any], Any], *, item_id: str | None) -> dict[str, Any]:
        """Run one SDK call under the hard timeout; return its JSON dump or raise ``ChannelError``."""
        secrets = config_secrets(self.config)
        try:
            client = self.get_client()
            response = await asyncio.wait_for(
                invoke(client), timeout=self.config.attempt_timeout_s + _HARD_CAP_MARGIN_S
            )
            dumped = response.model_dump(mode="json", exclude_none=True)
        except (ChannelError, ConfigurationError):
            raise
        except Exception as err:
            verdict = self._classify(err)
            scrub_exception(err, secrets)
            error = to_channel_error(
                verdict,
                channel=self.name,
                item_id=item_id,
                billed_on_failure=self.config.billed_on_failure,
                secrets=secrets,
            )
            log.debug("channel %s item %s: %s", self.name, item_id, error)
            raise error from err
        return dumped if isinstance(dumped, dict) else {}

    def _classify(self, err: Exception) -> Classification:
        from google.genai import errors as genai_errors

        if isinstance(err, genai_errors.APIError):
            response = getattr(err, "response", None)
            headers = getattr(response, "headers", None)
            retry_after = headers.get("retry-after") if headers is not None else None
            code = err.code if isinstance(err.code, int) else None
            return classify_http(code, err.details, retry_after_header=retry_after)
        verdict = classify_exception(err)
        if verdict is not None:
            return verdict
        # Anything else (an SDK bug, an unexpected library error) is treated as transient but
        # named, so a persistent one shows up in the report instead of vanishing.
        return Classification(
            ErrorClass.RETRYABLE,
            scrub(f"unexpected {type(err).__name__}: {err}"[:300], config_secrets(self.config)),
        )
