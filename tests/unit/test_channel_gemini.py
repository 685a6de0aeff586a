"""Gemini channel units: response normalisation from recorded bodies, request shape, credentials, scrubbing.

No network: the SDK client is built but every call here is an injected callable.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import traceback

import pytest
from google.genai import errors as genai_errors
from google.genai import types
from PIL import Image

from airflow_banana.channels import build_channel
from airflow_banana.channels.config import parse_channel
from airflow_banana.channels.gemini import (
    GeminiChannel,
    build_contents,
    decode_b64,
    parse_generate_response,
    parse_usage,
    resolve_model,
    result_from_parsed,
)
from airflow_banana.exceptions import ChannelError, ConfigurationError, ErrorClass
from airflow_banana.models import DEFAULT_MODEL, ImageRequest, ReferenceImage

pytestmark = pytest.mark.genai2  # SDK types: also run on the google-genai 2.x leg

KEY = "fake-unit-test-key-0123456789abcdefghijk"


def png(w: int = 8, h: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


FINAL = png(8, 8)
DRAFT = png(2, 2)
SIG_TEXT = b"\x01sig-text\xff"
SIG_IMAGE = b"\x02sig-image\xfe"

# Recorded shape from GEMINI_WIRE.md: thoughts (text + draft image), then signed text and image.
RECORDED = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [
                    {"text": "planning…", "thought": True},
                    {"inlineData": {"mimeType": "image/png", "data": b64(DRAFT)}, "thought": True},
                    {"text": "Here is your image", "thoughtSignature": b64(SIG_TEXT)},
                    {
                        "inlineData": {"mimeType": "image/png", "data": b64(FINAL)},
                        "thoughtSignature": b64(SIG_IMAGE),
                    },
                ],
            },
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 12,
        "candidatesTokenCount": 1140,
        "thoughtsTokenCount": 268,
        "totalTokenCount": 1420,
        "candidatesTokensDetails": [
            {"modality": "IMAGE", "tokenCount": 1120},
            {"modality": "TEXT", "tokenCount": 20},
        ],
    },
    "modelVersion": "gemini-3-pro-image-preview",
}


def config(protocol: str = "gemini", **extra: object):
    base = {"protocol": protocol, **extra}
    if protocol == "vertex":
        base.setdefault("project", "p")
        base.setdefault("location", "us-central1")
    return parse_channel("direct", host="http://127.0.0.1:9", password=KEY, extra=base)


def test_parse_recorded_wire_response() -> None:
    parsed = parse_generate_response(RECORDED)
    assert parsed.image == FINAL  # the LAST non-thought image, never the draft
    assert parsed.declared_mime_type == "image/png"
    assert parsed.text == "Here is your image"  # thought text excluded
    assert parsed.thought_signatures == (SIG_TEXT, SIG_IMAGE)
    assert parsed.finish_reason == "STOP"
    assert parsed.usage.as_dict() == {
        "prompt_tokens": 12,
        "output_tokens": 1140,
        "image_tokens": 1120,
        "thoughts_tokens": 268,
        "total_tokens": 1420,
    }
    assert parsed.content is not None and parsed.content["role"] == "model"
    assert parsed.failure() is None


def test_parse_sdk_dump_equals_parse_wire() -> None:
    """The SDK dumps snake_case with URL-safe base64; the result must be identical."""
    dumped = types.GenerateContentResponse.model_validate(RECORDED).model_dump(mode="json", exclude_none=True)
    assert "usage_metadata" in dumped
    wire, sdk = parse_generate_response(RECORDED), parse_generate_response(dumped)
    assert (sdk.image, sdk.thought_signatures, sdk.usage, sdk.text) == (
        wire.image,
        wire.thought_signatures,
        wire.usage,
        wire.text,
    )
    # The dumped content round-trips into a Content the SDK accepts, signatures byte-identical.
    content = types.Content.model_validate(sdk.content)
    assert content.parts is not None and content.parts[3].thought_signature == SIG_IMAGE


def test_decode_b64_both_alphabets() -> None:
    data = bytes(range(256))
    assert decode_b64(base64.b64encode(data).decode()) == data
    assert decode_b64(base64.urlsafe_b64encode(data).decode().rstrip("=")) == data
    assert decode_b64(data) == data


@pytest.mark.parametrize(
    ("body", "expected", "reason_part"),
    [
        ({"promptFeedback": {"blockReason": "SAFETY"}}, ErrorClass.ITEM_TERMINAL, "prompt blocked: SAFETY"),
        ({"candidates": [{"finishReason": "IMAGE_SAFETY"}]}, ErrorClass.ITEM_TERMINAL, "IMAGE_SAFETY"),
        (
            {"candidates": [{"finishReason": "IMAGE_PROHIBITED_CONTENT", "content": {"role": "model"}}]},
            ErrorClass.ITEM_TERMINAL,
            "IMAGE_PROHIBITED_CONTENT",
        ),
        ({"candidates": [{"finishReason": "NO_IMAGE"}]}, ErrorClass.NO_IMAGE, "NO_IMAGE"),
        (
            {
                "candidates": [
                    {"finishReason": "STOP", "content": {"role": "model", "parts": [{"text": "I can't"}]}}
                ]
            },
            ErrorClass.NO_IMAGE,
            "no image",
        ),
        (
            {
                "candidates": [
                    {
                        "content": {
                            "role": "model",
                            "parts": [
                                {"inlineData": {"mimeType": "image/png", "data": b64(FINAL)}, "thought": True}
                            ],
                        }
                    }
                ]
            },
            ErrorClass.NO_IMAGE,
            "no image",
        ),  # only a thought draft: not a result
        ({}, ErrorClass.NO_IMAGE, "no image"),
    ],
)
def test_unsuccessful_bodies_raise_classified_errors(
    body: dict, expected: ErrorClass, reason_part: str
) -> None:
    cfg = config()
    parsed = parse_generate_response(body)
    with pytest.raises(ChannelError) as info:
        result_from_parsed(parsed, config=cfg, request=ImageRequest("cat-1", "a cat"), latency_s=0.1)
    assert info.value.error_class is expected
    assert reason_part in str(info.value)
    assert info.value.item_id == "cat-1" and info.value.channel == "direct"
    assert info.value.billed is False


def test_billed_on_failure_is_carried() -> None:
    cfg = config(billed_on_failure=True)
    parsed = parse_generate_response({"candidates": [{"finishReason": "NO_IMAGE"}]})
    with pytest.raises(ChannelError) as info:
        result_from_parsed(parsed, config=cfg, request=ImageRequest("a", "p"), latency_s=0)
    assert info.value.billed is True


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"candidates": "nope"},
        {"candidates": ["nope"]},
        {"candidates": [{"content": "nope"}]},
        {"candidates": [{"content": {"parts": "nope"}}]},
        {"candidates": [{"content": {"parts": ["nope"]}}]},
        {
            "candidates": [
                {"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": "!!not b64!!"}}]}}
            ]
        },
        {"candidates": [{"content": {"parts": [{"text": "x", "thoughtSignature": "%%%"}]}}]},
    ],
)
def test_malformed_shapes_raise_value_error(body: object) -> None:
    with pytest.raises(ValueError):
        parse_generate_response(body)  # type: ignore[arg-type]


def test_true_mime_is_sniffed_and_declared_kept() -> None:
    body = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [{"inlineData": {"mimeType": "image/png", "data": b64(jpeg())}}],
                },
                "finishReason": "STOP",
            }
        ]
    }
    cfg = config(prices={"2K": 0.2})
    result = result_from_parsed(
        parse_generate_response(body),
        config=cfg,
        request=ImageRequest("a", "p", image_size="2K"),
        latency_s=0.5,
    )
    assert result.mime_type == "image/jpeg"
    assert result.declared_mime_type == "image/png"
    assert result.cost_usd == 0.2
    assert result.latency_s == 0.5
    assert result.channel == "direct"


def test_bytes_that_are_no_image_are_a_malformed_retryable() -> None:
    body = {
        "candidates": [
            {"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": b64(b"hello")}}]}}
        ]
    }
    with pytest.raises(ChannelError) as info:
        result_from_parsed(
            parse_generate_response(body), config=config(), request=ImageRequest("a", "p"), latency_s=0
        )
    assert info.value.error_class is ErrorClass.RETRYABLE
    assert "malformed response" in str(info.value)


def test_usage_missing_or_partial() -> None:
    assert parse_usage(None).total_tokens == 0
    assert (
        parse_usage(
            {"prompt_token_count": "5", "candidates_tokens_details": [{"modality": "IMAGE"}]}
        ).prompt_tokens
        == 5
    )


def test_build_contents_prompt_first_then_references_in_order() -> None:
    refs = (ReferenceImage(png(3, 3), "image/png", "a"), ReferenceImage(jpeg(), "image/jpeg", "b"))
    contents = build_contents(ImageRequest("i", "draw", reference_images=refs))
    assert len(contents) == 1 and contents[0]["role"] == "user"
    parts = contents[0]["parts"]
    assert parts[0] == {"text": "draw"}
    assert [p["inline_data"]["data"] for p in parts[1:]] == [refs[0].data, refs[1].data]
    assert [p["inline_data"]["mime_type"] for p in parts[1:]] == ["image/png", "image/jpeg"]
    types.Content.model_validate(contents[0])  # the SDK accepts it


def test_resolve_model() -> None:
    assert resolve_model(DEFAULT_MODEL, "relay-alias-pro") == "relay-alias-pro"
    assert resolve_model("gemini-2.5-flash-image", "relay-alias-pro") == "gemini-2.5-flash-image"
    assert resolve_model("", "") == DEFAULT_MODEL


def test_generate_config_shape() -> None:
    channel = GeminiChannel(config())
    cfg = channel._generate_config(
        ImageRequest("i", "p", image_size="4K", aspect_ratio="16:9", include_thoughts=True)
    )
    assert cfg.response_modalities == ["TEXT", "IMAGE"]
    assert cfg.image_config is not None
    assert (cfg.image_config.aspect_ratio, cfg.image_config.image_size) == ("16:9", "4K")
    assert cfg.thinking_config is not None and cfg.thinking_config.include_thoughts is True
    assert channel._generate_config(ImageRequest("i", "p")).thinking_config is None


def test_build_channel_dispatch_and_repr_hides_key() -> None:
    gem = build_channel(config())
    assert isinstance(gem, GeminiChannel) and gem.name == "direct"
    assert KEY not in repr(gem) and KEY not in repr(gem.config)
    assert isinstance(build_channel(config("vertex")), GeminiChannel)
    with pytest.raises(ConfigurationError):
        GeminiChannel(parse_channel("r", host=None, password="k", extra={"protocol": "openai"}))


def test_vertex_credentials_choice() -> None:
    from google.oauth2 import credentials as oauth_credentials

    token_creds = GeminiChannel(config("vertex"))._credentials()
    assert isinstance(token_creds, oauth_credentials.Credentials) and token_creds.token == KEY

    bad = config("vertex", credentials={"type": "service_account", "private_key": "SECRET-PEM"})
    with pytest.raises(ConfigurationError) as info:
        GeminiChannel(bad)  # refused when built, before any attempt
    assert "SECRET-PEM" not in str(info.value)
    assert "nothing was sent" in str(info.value)


def test_vertex_service_account_credentials_have_cloud_platform_scope() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from google.oauth2 import service_account

    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        .decode()
    )
    info = {
        "type": "service_account",
        "project_id": "p",
        "private_key_id": "kid",
        "private_key": pem,
        "client_email": "sa@p.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    channel = GeminiChannel(config("vertex", credentials=info))
    creds = channel._credentials()
    assert isinstance(creds, service_account.Credentials)
    assert creds.service_account_email == "sa@p.iam.gserviceaccount.com"
    assert creds.scopes == ["https://www.googleapis.com/auth/cloud-platform"]
    assert pem not in repr(channel) and pem not in repr(channel.config)


def test_vertex_without_token_or_key_file_uses_adc(monkeypatch: pytest.MonkeyPatch) -> None:
    import google.auth

    calls: list[object] = []
    sentinel = object()

    def fake_default(scopes: list[str] | None = None, **_: object) -> tuple[object, str]:
        calls.append(scopes)
        return sentinel, "adc-project"

    monkeypatch.setattr(google.auth, "default", fake_default)
    cfg = parse_channel(
        "vx", host=None, password=None, extra={"protocol": "vertex", "project": "p", "location": "l"}
    )
    assert GeminiChannel(cfg)._credentials() is sentinel
    assert calls == [["https://www.googleapis.com/auth/cloud-platform"]]


def _run_failing_call(channel: GeminiChannel, err: Exception) -> ChannelError:
    async def invoke(_client: object) -> object:
        raise err

    return _run_failing_call_with(channel, invoke)


def _run_failing_call_with(channel: GeminiChannel, invoke: object) -> ChannelError:
    async def main() -> ChannelError:
        try:
            await channel._call(invoke, item_id="cat-1")  # type: ignore[arg-type]
        except ChannelError as caught:
            return caught
        finally:
            await channel.aclose()
        raise AssertionError("no ChannelError")

    return asyncio.run(main())


def test_sdk_errors_are_classified_and_scrubbed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    body = {
        "error": {
            "code": 400,
            "status": "INVALID_ARGUMENT",
            "message": f"API key not valid: {KEY}",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}],
        }
    }
    err = _run_failing_call(GeminiChannel(config()), genai_errors.ClientError(400, body))
    assert err.error_class is ErrorClass.CHANNEL_FATAL
    assert err.status_code == 400
    rendered = "".join(traceback.format_exception(err))  # includes the chained SDK exception
    assert "API key not valid" in rendered
    assert KEY not in rendered
    assert KEY not in caplog.text
    assert KEY not in json.dumps(getattr(err.__cause__, "details", {}))


def test_sdk_429_retry_delay_from_details() -> None:
    body = {
        "error": {
            "code": 429,
            "status": "RESOURCE_EXHAUSTED",
            "message": "quota",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}],
        }
    }
    err = _run_failing_call(GeminiChannel(config()), genai_errors.ClientError(429, body))
    assert (err.error_class, err.retry_after) == (ErrorClass.RATE_LIMITED, 1.5)


def test_unexpected_errors_are_named_retryable_and_scrubbed() -> None:
    err = _run_failing_call(GeminiChannel(config()), RuntimeError(f"weird {KEY}"))
    assert err.error_class is ErrorClass.RETRYABLE
    assert "RuntimeError" in str(err) and KEY not in str(err)


def test_hard_timeout_is_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server trickling bytes never trips httpx's per-read timeout: the hard cap must."""
    monkeypatch.setattr("airflow_banana.channels.gemini._HARD_CAP_MARGIN_S", 0.0)
    cfg = parse_channel("slow", host="http://127.0.0.1:9", password=KEY, extra={"timeout": 0.05})

    async def invoke(_client: object) -> object:
        await asyncio.sleep(5)
        raise AssertionError("not reached")

    err = _run_failing_call_with(GeminiChannel(cfg), invoke)
    assert err.error_class is ErrorClass.TIMEOUT


def test_invalid_history_is_refused_before_sending() -> None:
    channel = GeminiChannel(config())

    async def main() -> None:
        try:
            await channel.generate_contents(
                [{"role": "user", "parts": "not a list"}], request=ImageRequest("e", "p")
            )
        finally:
            await channel.aclose()

    with pytest.raises(ConfigurationError, match="nothing was sent"):
        asyncio.run(main())


def test_one_client_construction_for_every_lane() -> None:
    """``channels.clients`` builds the client the channel and the batch lane both use, without a channel."""
    import subprocess
    import sys

    from airflow_banana.channels.clients import close_client, genai_client

    client = genai_client(config("gemini"))
    try:
        from google import genai

        assert isinstance(client, genai.Client)
    finally:
        close_client(client)
    with pytest.raises(ConfigurationError, match="serves gemini/vertex"):
        genai_client(parse_channel("r", host=None, password="k", extra={"protocol": "openai"}))
    probe = (
        "import sys, airflow_banana.channels.clients; print('airflow_banana.channels.gemini' in sys.modules)"
    )
    assert (
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip()
        == "False"
    )
