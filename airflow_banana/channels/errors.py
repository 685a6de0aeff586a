"""Classify what went wrong with one attempt, so the router can decide retry/failover from data.

Pure functions over plain values (HTTP status, the parsed error body, finish reasons, exception
class names): no SDK import, no I/O, so the whole decision table is unit-tested exhaustively and
stays identical for google-genai 2.x and 3.x, httpx and httpx2 (the SDK may use either), and
the OpenAI-compatible relays.

The table (FAULTS.md R1-R11)::

    transport  google-auth RefreshError / no ADC               -> CHANNEL_FATAL
               timeouts (httpx/httpx2/aiohttp/asyncio)        -> TIMEOUT
               connect errors, resets, protocol errors         -> RETRYABLE
               truncated / malformed JSON, invalid body shape  -> RETRYABLE "malformed response"
    HTTP       408, 409, 425, 5xx                              -> RETRYABLE
               429 + QuotaFailure quotaId "...PerDay..."       -> QUOTA_EXHAUSTED
               429 otherwise                                   -> RATE_LIMITED (+ RetryInfo delay,
                                                                  else relay metadata, else Retry-After)
               401, 402, 403, 404, 405, 400 API_KEY_INVALID,
               400 FAILED_PRECONDITION (e.g. region)           -> CHANNEL_FATAL
               other 400, 413, 422, relay moderation 403       -> ITEM_TERMINAL
               any other 4xx                                   -> CHANNEL_FATAL (misconfigured channel)
    200        prompt blocked (promptFeedback.blockReason)     -> ITEM_TERMINAL
               finishReason SAFETY / IMAGE_SAFETY / ...        -> ITEM_TERMINAL
               NO_IMAGE, or no image for any other reason      -> NO_IMAGE
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from airflow_banana.exceptions import ChannelError, ErrorClass
from airflow_banana.secrets import scrub

# finishReason values that mean "the model will not draw this": the same model sits behind every
# channel, so failing over would only pay again for the same refusal (FAULTS.md R10).
TERMINAL_FINISH_REASONS = frozenset(
    {
        "SAFETY",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_OTHER",
        "IMAGE_RECITATION",
        "PROHIBITED_CONTENT",
        "RECITATION",
        "BLOCKLIST",
        "SPII",
        "CONTENT_FILTER",  # OpenAI-shape relays
    }
)
NO_IMAGE_FINISH_REASONS = frozenset({"NO_IMAGE"})

_RETRYABLE_STATUS = frozenset({408, 409, 425})
_FATAL_STATUS = frozenset({401, 402, 403, 404, 405})
_ITEM_STATUS = frozenset({400, 413, 422})

# Exception class names, matched anywhere in the MRO, so httpx, httpx2 (a fork with the same
# names in another namespace) and aiohttp are all recognised without importing any of them.
_TIMEOUT_NAMES = frozenset({"TimeoutException", "TimeoutError", "ServerTimeoutError"})
_TRANSPORT_NAMES = frozenset(
    {
        "TransportError",  # httpx: ConnectError, ReadError, RemoteProtocolError, ...
        "NetworkError",
        "ProtocolError",
        "ConnectionError",  # builtin: resets, refused, aborted
        "ClientConnectionError",  # aiohttp
        "ClientPayloadError",
        "IncompleteRead",
    }
)
# aiohttp's root (``ClientError``) by its qualified name: the bare name is also google-genai's
# 4xx ``APIError``. Anything under it the names above do not single out (a response or payload
# error) is a failed transport, as ``httpx.TransportError`` is.
_AIOHTTP_ROOT = "aiohttp.client_exceptions.ClientError"
# google-auth failures: the credentials themselves are unusable (expired token, revoked key,
# no ADC). Its network failures are ``google.auth.exceptions.TransportError`` -> RETRYABLE.
_AUTH_NAMES = frozenset({"RefreshError", "DefaultCredentialsError", "ReauthFailError"})
_MALFORMED_NAMES = frozenset(
    {"JSONDecodeError", "UnknownApiResponseError", "ValidationError", "UnicodeDecodeError", "DecodingError"}
)


@dataclass(frozen=True)
class Classification:
    """The verdict on one failed attempt; ``reason`` is short, human and secret-free."""

    error_class: ErrorClass
    reason: str
    status_code: int | None = None
    retry_after: float | None = None
    # False when the request provably never reached the provider (connection refused), so even a
    # relay that bills failures cannot have charged for it.
    reached_provider: bool = True


# ----------------------------------------------------------------------------- helpers


def protobuf_seconds(value: Any) -> float | None:
    """Seconds from a protobuf Duration as JSON ("26s", "1.5s") or a {"seconds","nanos"} dict.

    A wire format (Google's ``RetryInfo.retryDelay``, a relay's ``retry_after_seconds``), not a
    duration a user writes: those are ``manifests.parse_duration`` / ``planning.inputs.duration_of``.
    """
    if value is None:
        return None
    if isinstance(value, Mapping):
        try:
            return float(value.get("seconds", 0) or 0) + float(value.get("nanos", 0) or 0) / 1e9
        except (TypeError, ValueError):
            return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) if value >= 0 else None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*s?\s*", str(value))
    return float(match.group(1)) if match else None


def parse_retry_after_header(value: str | None) -> float | None:
    """Seconds from an HTTP ``Retry-After`` header (relays send it; Google does not)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # an HTTP-date: rare enough to ignore; the router's backoff still applies
    return seconds if seconds >= 0 else None


def error_envelope(body: Any) -> Mapping[str, Any]:
    """The ``error`` object of an error body, whatever wrapping the SDK or relay used."""
    if isinstance(body, list) and len(body) == 1:
        body = body[0]
    if isinstance(body, Mapping):
        inner = body.get("error")
        if isinstance(inner, Mapping):
            return inner
        return body
    return {}


def _upstream(envelope: Mapping[str, Any]) -> Mapping[str, Any]:
    """The provider's own error that an OpenRouter-style relay nests in ``metadata.raw``."""
    metadata = envelope.get("metadata")
    raw = metadata.get("raw") if isinstance(metadata, Mapping) else None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return {}
    return error_envelope(raw) if raw is not None else {}


def _details(envelope: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Google's typed error details, including those of an upstream error a relay passed on."""
    found: list[Mapping[str, Any]] = []
    for source in (envelope, _upstream(envelope)):
        details = source.get("details")
        if isinstance(details, list):
            found.extend(d for d in details if isinstance(d, Mapping))
    return found


def _relay_retry_after(envelope: Mapping[str, Any]) -> float | None:
    metadata = envelope.get("metadata")
    if isinstance(metadata, Mapping):
        return protobuf_seconds(metadata.get("retry_after_seconds"))
    return None


def _detail_type(detail: Mapping[str, Any]) -> str:
    return str(detail.get("@type") or detail.get("type") or "")


def retry_delay(body: Any) -> float | None:
    """``RetryInfo.retryDelay`` in seconds from a Google error body, if any."""
    for detail in _details(error_envelope(body)):
        if _detail_type(detail).endswith("RetryInfo"):
            delay = protobuf_seconds(detail.get("retryDelay", detail.get("retry_delay")))
            if delay is not None:
                return delay
    return None


def quota_ids(body: Any) -> list[str]:
    """Every ``QuotaFailure`` violation quotaId in a Google error body."""
    ids: list[str] = []
    for detail in _details(error_envelope(body)):
        if _detail_type(detail).endswith("QuotaFailure"):
            for violation in detail.get("violations") or []:
                if isinstance(violation, Mapping):
                    quota_id = violation.get("quotaId", violation.get("quota_id"))
                    if quota_id:
                        ids.append(str(quota_id))
    return ids


def _error_reasons(envelope: Mapping[str, Any]) -> set[str]:
    reasons = set()
    for detail in _details(envelope):
        if _detail_type(detail).endswith("ErrorInfo") and detail.get("reason"):
            reasons.add(str(detail["reason"]))
    return reasons


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ----------------------------------------------------------------------------- classifiers


def classify_http(
    status_code: int | None,
    body: Any,
    *,
    retry_after_header: str | None = None,
) -> Classification:
    """Classify a non-success HTTP answer from its status and its WHOLE parsed error body.

    ``body`` is the SDK exception's ``.details`` or a relay's JSON (``{"error": {...}}``); plain
    text bodies are accepted too. A status missing from the response falls back to ``error.code``.
    """
    envelope = error_envelope(body)
    if status_code is None:
        code = envelope.get("code")
        status_code = code if isinstance(code, int) else None
    status = str(envelope.get("status") or "")
    message = envelope.get("message")
    if not isinstance(message, str) or not message:
        message = body if isinstance(body, str) and body else (status or "no error message")
    label = f"HTTP {status_code}" + (f" {status}" if status else "")
    reason = _short(f"{label}: {message}")

    if status_code == 429:
        per_day = [q for q in quota_ids(body) if "perday" in q.lower()]
        delay = retry_delay(body)
        if delay is None:
            delay = _relay_retry_after(envelope)
        if delay is None:
            delay = parse_retry_after_header(retry_after_header)
        if per_day:
            return Classification(
                ErrorClass.QUOTA_EXHAUSTED,
                _short(f"{label}: daily quota {per_day[0]} exhausted"),
                status_code,
                delay,
            )
        return Classification(ErrorClass.RATE_LIMITED, reason, status_code, delay)
    if status_code is None:
        return Classification(ErrorClass.RETRYABLE, reason)
    if status_code >= 500 or status_code in _RETRYABLE_STATUS:
        return Classification(
            ErrorClass.RETRYABLE, reason, status_code, parse_retry_after_header(retry_after_header)
        )
    if status_code == 400 and (
        "API_KEY_INVALID" in _error_reasons(envelope)
        or "api key not valid" in message.lower()
        or status == "FAILED_PRECONDITION"
        or status == "UNAUTHENTICATED"
        or status == "PERMISSION_DENIED"
    ):
        return Classification(ErrorClass.CHANNEL_FATAL, reason, status_code)
    if status_code == 403 and _relay_moderation(envelope):
        # OpenRouter answers 403 when ITS moderation flags the prompt: the prompt is the problem.
        return Classification(ErrorClass.ITEM_TERMINAL, reason, status_code)
    if status_code in _FATAL_STATUS:
        return Classification(ErrorClass.CHANNEL_FATAL, reason, status_code)
    if status_code in _ITEM_STATUS:
        return Classification(ErrorClass.ITEM_TERMINAL, reason, status_code)
    if 400 <= status_code < 500:
        return Classification(ErrorClass.CHANNEL_FATAL, reason, status_code)
    # 1xx/3xx (an unfollowed redirect, a proxy speaking nonsense): the answer is unusable, not final.
    return Classification(ErrorClass.RETRYABLE, reason, status_code)


def _relay_moderation(envelope: Mapping[str, Any]) -> bool:
    metadata = envelope.get("metadata")
    return isinstance(metadata, Mapping) and ("flagged_input" in metadata or "reasons" in metadata)


def classify_exception(err: BaseException) -> Classification | None:
    """Classify a transport or decoding exception by its class names; None when it is neither.

    The ``__cause__`` chain is searched too: SDKs wrap a ``JSONDecodeError`` in their own type.
    """
    names: set[str] = set()
    qualified: set[str] = set()
    link: BaseException | None = err
    for _ in range(5):
        if link is None:
            break
        names.update(cls.__name__ for cls in type(link).__mro__)
        qualified.update(f"{cls.__module__}.{cls.__qualname__}" for cls in type(link).__mro__)
        link = link.__cause__
    kind = type(err).__name__
    if names & _AUTH_NAMES:
        return Classification(
            ErrorClass.CHANNEL_FATAL, f"credentials unusable ({kind})", reached_provider=False
        )
    if names & _TIMEOUT_NAMES:
        return Classification(ErrorClass.TIMEOUT, f"no answer within the attempt timeout ({kind})")
    if names & _MALFORMED_NAMES:
        return Classification(ErrorClass.RETRYABLE, f"malformed response ({kind})")
    if names & _TRANSPORT_NAMES or _AIOHTTP_ROOT in qualified:
        refused = bool(names & {"ConnectError", "ConnectionRefusedError", "ClientConnectorError"})
        return Classification(
            ErrorClass.RETRYABLE, f"connection failed ({kind})", reached_provider=not refused
        )
    return None


def malformed(detail: str) -> Classification:
    """A 200 whose body is not the JSON shape promised (truncated, garbage, wrong shape)."""
    return Classification(ErrorClass.RETRYABLE, _short(f"malformed response: {detail}"), 200)


def classify_outcome(
    *,
    has_image: bool,
    finish_reason: str | None,
    block_reason: str | None = None,
    block_message: str | None = None,
) -> Classification | None:
    """Classify a 200 answer; None means success (an image is there).

    An image that came back wins over its finish reason: it was produced and paid for.
    """
    if has_image:
        return None
    if block_reason:
        detail = f"prompt blocked: {block_reason}" + (f" ({block_message})" if block_message else "")
        return Classification(ErrorClass.ITEM_TERMINAL, _short(detail), 200)
    reason = (finish_reason or "").upper()
    if reason in TERMINAL_FINISH_REASONS:
        return Classification(ErrorClass.ITEM_TERMINAL, f"image refused: finishReason {reason}", 200)
    if reason in NO_IMAGE_FINISH_REASONS:
        return Classification(ErrorClass.NO_IMAGE, "model returned no image (finishReason NO_IMAGE)", 200)
    return Classification(
        ErrorClass.NO_IMAGE, f"response has no image (finishReason {reason or 'missing'})", 200
    )


def to_channel_error(
    verdict: Classification,
    *,
    channel: str,
    item_id: str | None,
    billed_on_failure: bool,
    secrets: Iterable[str] = (),
) -> ChannelError:
    """The ``ChannelError`` for a verdict, with a secret-free message saying what happens next."""
    next_step = {
        ErrorClass.RETRYABLE: "the router will retry or fail over",
        ErrorClass.RATE_LIMITED: "the channel rests until the retry hint, others take over",
        ErrorClass.QUOTA_EXHAUSTED: "the channel is benched until its daily quota resets",
        ErrorClass.TIMEOUT: "the router fails over at once",
        ErrorClass.NO_IMAGE: "the item is retried a bounded number of times",
        ErrorClass.CHANNEL_FATAL: "the channel is disabled for this run",
        ErrorClass.ITEM_TERMINAL: "the item is recorded as failed, not retried elsewhere",
    }[verdict.error_class]
    reason = scrub(verdict.reason, secrets)
    if verdict.retry_after is not None:
        reason_msg = f"{reason} (retry after {verdict.retry_after:g}s)"
    else:
        reason_msg = reason
    return ChannelError(
        f"{reason_msg}; {next_step}",
        channel=channel,
        error_class=verdict.error_class,
        item_id=item_id,
        status_code=verdict.status_code,
        retry_after=verdict.retry_after,
        reason=reason,
        billed=billed_on_failure and verdict.reached_provider,
    )
