"""The OpenAI-compatible relay channel (OpenRouter shape) over a plain ``httpx.AsyncClient``.

Relays are the cheap lane (PRICING.md) but each speaks its own dialect of "image in a chat
completion": ``message.images[]`` data URLs, a markdown ``![](data:...)`` inside ``content``, or
a hosted https URL. All three are accepted. Relays drop thought signatures, so results from here
never carry any (the editing lane refuses such channels, FAULTS.md S7).

Model choice: the connection's ``extra.model`` (e.g. ``google/gemini-3-pro-image-preview``) is
sent unless the request explicitly names a non-default model; a bare name is then placed in the
configured model's namespace (``google/`` + name).

The key is sent only to ``{base_url}/chat/completions`` and ``/models``, never to a hosted
image URL (that GET carries no credentials).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from airflow_banana.channels.config import ChannelConfig, check_base_url, config_secrets
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
from airflow_banana.secrets import scrub_exception

log = logging.getLogger(__name__)

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[^,;]*)*?;base64,(?P<data>.*)$", re.DOTALL)
_MARKDOWN_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*(?P<url>(?:data:image/[^)\s]+)|(?:https?://[^)\s]+))\s*\)")
_HARD_CAP_MARGIN_S = 1.0
_MAX_HOSTED_IMAGE_BYTES = 64 * 1024 * 1024


# ----------------------------------------------------------------------------- pure parsing


def resolve_model(request_model: str, config_model: str, allowed: Sequence[str] = ()) -> str:
    """The relay model name: the connection's, unless the request explicitly names another
    (and the connection's own when it is one of the ``allowed`` models: a model tier)."""
    if config_model and model_id(config_model) in {model_id(m) for m in allowed}:
        return config_model
    if not request_model or request_model == DEFAULT_MODEL:
        return config_model or f"google/{DEFAULT_MODEL}"
    if "/" in request_model:
        return request_model
    namespace = config_model.split("/", 1)[0] if "/" in config_model else ""
    return f"{namespace}/{request_model}" if namespace else request_model


def build_body(request: ImageRequest, model: str) -> dict[str, Any]:
    """The chat-completions body: the text item FIRST, then reference images as data URLs."""
    content: list[dict[str, Any]] = [{"type": "text", "text": request.prompt}]
    for ref in request.reference_images:
        url = f"data:{ref.mime_type};base64,{base64.b64encode(ref.data).decode('ascii')}"
        content.append({"type": "image_url", "image_url": {"url": url}})
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "modalities": ["image", "text"],
        "image_config": {"aspect_ratio": request.aspect_ratio, "image_size": request.image_size},
    }


def decode_data_url(url: str) -> tuple[bytes, str]:
    """(bytes, declared mime) of a ``data:`` URL; raises ``ValueError`` when it is not base64 data."""
    match = _DATA_URL.match(url.strip())
    if not match:
        raise ValueError("image URL is not a base64 data URL")
    data = re.sub(r"\s+", "", match.group("data"))
    data += "=" * (-len(data) % 4)
    try:
        return base64.b64decode(data, validate=True), match.group("mime") or ""
    except (binascii.Error, ValueError) as err:
        raise ValueError("image data URL is not valid base64") from err


@dataclass(frozen=True)
class ParsedCompletion:
    """A chat completion normalised: either image bytes, or a hosted URL still to fetch, or neither."""

    image: bytes | None
    declared_mime_type: str
    image_url: str | None
    text: str
    finish_reason: str | None
    usage: Usage
    cost: float | None


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # some relays answer with content parts
        return "".join(
            str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("type") == "text"
        )
    return ""


def parse_usage(usage: Any) -> tuple[Usage, float | None]:
    """OpenAI-shape ``usage`` as ``Usage`` plus the relay's reported ``cost`` (USD) if any."""
    if not isinstance(usage, Mapping):
        return Usage(), None

    def num(value: Any) -> int:
        try:
            return int(value or 0)
        except (TypeError, ValueError):
            return 0

    details = usage.get("completion_tokens_details") or {}
    details = details if isinstance(details, Mapping) else {}
    cost_raw = usage.get("cost")
    cost: float | None
    try:
        cost = float(cost_raw) if cost_raw is not None and not isinstance(cost_raw, bool) else None
    except (TypeError, ValueError):
        cost = None
    if cost is not None and cost < 0:
        cost = None
    return (
        Usage(
            prompt_tokens=num(usage.get("prompt_tokens")),
            output_tokens=num(usage.get("completion_tokens")),
            image_tokens=num(details.get("image_tokens")),
            thoughts_tokens=num(details.get("reasoning_tokens")),
            total_tokens=num(usage.get("total_tokens")),
        ),
        cost,
    )


def parse_completion(body: Any) -> ParsedCompletion:
    """Normalise a chat completion; raises ``ValueError`` when its shape is not the promised one.

    Image sources in order of preference: the LAST ``message.images[]`` entry, else the last
    markdown image in ``content`` (data URL, or an https URL to fetch).
    """
    if not isinstance(body, Mapping):
        raise ValueError(f"response is a {type(body).__name__}, not an object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise ValueError("response has no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, Mapping):
        raise ValueError("choice has no message")
    usage, cost = parse_usage(body.get("usage"))
    finish = choice.get("native_finish_reason") or choice.get("finish_reason")
    text = _message_text(message.get("content"))

    url: str | None = None
    images = message.get("images")
    if isinstance(images, list):
        for entry in images:
            if isinstance(entry, Mapping):
                inner = entry.get("image_url")
                candidate = inner.get("url") if isinstance(inner, Mapping) else inner
                if isinstance(candidate, str) and candidate:
                    url = candidate
    if url is None:
        found = list(_MARKDOWN_IMAGE.finditer(text))
        if found:
            url = found[-1].group("url")
            text = _MARKDOWN_IMAGE.sub("", text).strip()

    image: bytes | None = None
    declared = ""
    hosted: str | None = None
    if url is not None:
        if url.startswith("data:"):
            image, declared = decode_data_url(url)
        elif url.startswith(("https://", "http://")):
            hosted = url
        else:
            raise ValueError("image URL is neither a data URL nor http(s)")
    return ParsedCompletion(
        image=image,
        declared_mime_type=declared,
        image_url=hosted,
        text=text,
        finish_reason=str(finish).upper() if finish else None,
        usage=usage,
        cost=cost,
    )


# ----------------------------------------------------------------------------- the channel


class OpenAICompatChannel:
    """A ``Channel`` for relays speaking OpenAI chat completions with image output."""

    def __init__(
        self,
        config: ChannelConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        if config.protocol != "openai":
            raise ConfigurationError(
                f"channel '{config.name}': OpenAICompatChannel serves openai, not {config.protocol!r}"
            )
        self.config = config
        self._clock = clock
        # No default headers: the key is attached per request, so a hosted-image GET to a third
        # party never carries it.
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(config.attempt_timeout_s),
            transport=transport,
            follow_redirects=False,
        )

    @property
    def name(self) -> str:
        return self.config.name

    def __repr__(self) -> str:
        return f"OpenAICompatChannel(name={self.config.name!r})"

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.api_key.reveal()}"}

    async def aclose(self) -> None:
        await self._client.aclose()

    def _fail(self, verdict: Classification, item_id: str | None) -> ChannelError:
        return to_channel_error(
            verdict,
            channel=self.name,
            item_id=item_id,
            billed_on_failure=self.config.billed_on_failure,
            secrets=config_secrets(self.config),
        )

    async def _send(self, method: str, url: str, *, item_id: str | None, **kwargs: Any) -> httpx.Response:
        """One HTTP exchange under the hard timeout; transport failures become ``ChannelError``."""
        try:
            response = await asyncio.wait_for(
                self._client.request(method, url, **kwargs),
                timeout=self.config.attempt_timeout_s + _HARD_CAP_MARGIN_S,
            )
        except Exception as err:
            verdict = classify_exception(err) or Classification(
                ErrorClass.RETRYABLE, f"unexpected {type(err).__name__}"
            )
            scrub_exception(err, config_secrets(self.config))
            raise self._fail(verdict, item_id) from err
        return response

    def _check_status(self, response: httpx.Response, item_id: str | None) -> Any:
        """The parsed JSON of a 200, else a classified ``ChannelError``."""
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            if response.status_code == 200:
                raise self._fail(malformed("body is not JSON (truncated?)"), item_id) from err
            body = response.text[:500]
        if response.status_code != 200:
            retry_after = response.headers.get("retry-after")
            verdict = classify_http(response.status_code, body, retry_after_header=retry_after)
            raise self._fail(verdict, item_id)
        if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping) and not body.get("choices"):
            # OpenRouter reports upstream failures as 200 with an error envelope.
            raise self._fail(classify_http(None, body), item_id)
        return body

    async def generate(self, request: ImageRequest) -> GenerationResult:
        """One attempt for ``request``; raises ``ChannelError`` classified for the router."""
        if request.grounding:
            # never a candidate for a grounded item (routing.eligibility); guards a direct caller
            raise ConfigurationError(
                f"channel '{self.name}', item '{request.item_id}': an OpenAI-compatible relay cannot "
                f"carry {request.grounding} grounding; nothing was sent"
            )
        model = resolve_model(request.model, self.config.model, request.allowed_models)
        body = build_body(request, model)
        started = self._clock()
        response = await self._send(
            "POST",
            f"{self.config.base_url}/chat/completions",
            item_id=request.item_id,
            json=body,
            headers=self._auth(),
        )
        payload = self._check_status(response, request.item_id)
        try:
            parsed = parse_completion(payload)
        except ValueError as err:
            raise self._fail(malformed(str(err)), request.item_id) from err
        image, declared = parsed.image, parsed.declared_mime_type
        if image is None and parsed.image_url is not None:
            image, declared = await self._fetch_hosted(parsed.image_url, request.item_id)
        latency = self._clock() - started

        verdict = classify_outcome(has_image=image is not None, finish_reason=parsed.finish_reason)
        if verdict is not None:
            raise self._fail(verdict, request.item_id)
        assert image is not None
        mime = sniff_mime(image)
        if mime is None:
            raise self._fail(
                malformed(f"image bytes are no known type (declared {declared or 'none'})"), request.item_id
            )
        cost = parsed.cost
        if cost is None:
            cost = attempt_cost(
                self.config.prices,
                request.image_size,
                succeeded=True,
                billed_on_failure=self.config.billed_on_failure,
            )
        log.debug("channel %s item %s: image %s in %.2fs", self.name, request.item_id, mime, latency)
        return GenerationResult(
            image=image,
            mime_type=mime,
            declared_mime_type=declared or mime,
            channel=self.name,
            usage=parsed.usage,
            finish_reason=parsed.finish_reason or "STOP",
            cost_usd=cost,
            cost_reported=parsed.cost is not None,
            text=parsed.text,
            thought_signatures=(),
            content=None,
            latency_s=latency,
            model=resolve_model(request.model, self.config.model, request.allowed_models),
        )

    async def _fetch_hosted(self, url: str, item_id: str) -> tuple[bytes, str]:
        """GET a hosted result image, without credentials, refusing plain http off loopback."""
        try:
            url = check_base_url(url, channel=self.name)
        except ConfigurationError as err:
            raise self._fail(malformed(f"hosted image URL refused: {err}"), item_id) from err
        response = await self._send("GET", url, item_id=item_id, follow_redirects=True)
        if response.status_code != 200:
            raise self._fail(
                Classification(
                    ErrorClass.RETRYABLE,
                    f"hosted image GET answered HTTP {response.status_code}",
                    response.status_code,
                ),
                item_id,
            )
        if len(response.content) > _MAX_HOSTED_IMAGE_BYTES:
            raise self._fail(malformed("hosted image is larger than 64 MiB"), item_id)
        return response.content, response.headers.get("content-type", "").split(";")[0].strip()

    async def probe(self) -> str:
        """A free call proving the key works: ``GET {base}/models`` (lists models, bills nothing)."""
        url = f"{self.config.base_url}/models"
        response = await self._send("GET", url, item_id=None, headers=self._auth())
        body = self._check_status(response, None)
        models = body.get("data") if isinstance(body, Mapping) else None
        count = len(models) if isinstance(models, list) else 0
        listed = isinstance(models, list) and any(
            isinstance(m, Mapping) and m.get("id") == self.config.model for m in models
        )
        if count and not listed:
            # A relay that lists models but not ours would answer every generation with 404.
            raise self._fail(
                Classification(
                    ErrorClass.CHANNEL_FATAL,
                    f"{count} models listed, not {self.config.model}; check extra.model",
                    404,
                ),
                None,
            )
        note = "lists" if listed else "lists no models, so it cannot confirm"
        return f"channel '{self.name}' (openai) answered: {count} models; it {note} {self.config.model}"
