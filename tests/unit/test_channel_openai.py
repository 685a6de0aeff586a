"""OpenAI-compatible channel units: completion parsing, request shape, hosted images, key scrubbing.

Relay dialects the simulator does not speak (hosted URLs, 200-with-error, key echo) run through
httpx's own ``MockTransport``: the channel's real HTTP code, no socket.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import traceback
from collections.abc import Callable

import httpx
import pytest
from PIL import Image

from airflow_banana.channels import build_channel
from airflow_banana.channels.config import parse_channel
from airflow_banana.channels.openai_compat import (
    OpenAICompatChannel,
    build_body,
    decode_data_url,
    parse_completion,
    parse_usage,
    resolve_model,
)
from airflow_banana.exceptions import ChannelError, ConfigurationError, ErrorClass
from airflow_banana.models import DEFAULT_MODEL, GenerationResult, ImageRequest, ReferenceImage

KEY = "sk-or-v1-unit-test-key-0123456789abcdef"


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 200, 10)).save(buf, "PNG")
    return buf.getvalue()


PNG = png()
DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()


def completion(
    message: dict, *, usage: dict | None = None, finish: str = "stop", native: str | None = None
) -> dict:
    choice = {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}
    if native:
        choice["native_finish_reason"] = native
    return {"choices": [choice], "usage": usage or {}}


def test_parse_images_array_takes_the_last() -> None:
    other = "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8\xffjunk").decode()
    parsed = parse_completion(
        completion(
            {
                "content": "done",
                "images": [
                    {"type": "image_url", "image_url": {"url": other}},
                    {"type": "image_url", "image_url": {"url": DATA_URL}},
                ],
            },
            usage={
                "prompt_tokens": 10,
                "completion_tokens": 1130,
                "total_tokens": 1400,
                "cost": 0.067,
                "completion_tokens_details": {"reasoning_tokens": 260, "image_tokens": 1120},
            },
        )
    )
    assert parsed.image == PNG and parsed.declared_mime_type == "image/png"
    assert parsed.text == "done"
    assert parsed.cost == 0.067
    assert parsed.usage.as_dict() == {
        "prompt_tokens": 10,
        "output_tokens": 1130,
        "image_tokens": 1120,
        "thoughts_tokens": 260,
        "total_tokens": 1400,
    }


def test_parse_markdown_data_url_and_strips_it_from_text() -> None:
    parsed = parse_completion(completion({"content": f"Here you go\n\n![image]({DATA_URL})"}))
    assert parsed.image == PNG
    assert parsed.text == "Here you go"


def test_parse_hosted_url_in_images_or_markdown() -> None:
    hosted = "https://cdn.example.invalid/img/abc.png"
    assert (
        parse_completion(completion({"content": "", "images": [{"image_url": {"url": hosted}}]})).image_url
        == hosted
    )
    assert parse_completion(completion({"content": f"![x]({hosted})"})).image_url == hosted


def test_parse_content_parts_list_and_no_image() -> None:
    parsed = parse_completion(
        completion({"content": [{"type": "text", "text": "no can do"}]}, native="NO_IMAGE")
    )
    assert parsed.image is None and parsed.image_url is None
    assert parsed.text == "no can do"
    assert parsed.finish_reason == "NO_IMAGE"


@pytest.mark.parametrize(
    "body",
    [
        [],
        {},
        {"choices": []},
        {"choices": ["x"]},
        {"choices": [{"message": "x"}]},
        completion({"images": [{"image_url": {"url": "data:image/png;base64,@@@"}}]}),
        completion({"images": [{"image_url": {"url": "ftp://x/y.png"}}]}),
    ],
)
def test_malformed_completions_raise_value_error(body: object) -> None:
    with pytest.raises(ValueError):
        parse_completion(body)


def test_usage_cost_edge_cases() -> None:
    assert parse_usage(None)[1] is None
    assert parse_usage({"cost": "0.1"})[1] == 0.1
    assert parse_usage({"cost": -1})[1] is None
    assert parse_usage({"cost": True})[1] is None
    assert parse_usage({"cost": "n/a"})[1] is None


def test_decode_data_url_variants() -> None:
    assert decode_data_url(DATA_URL) == (PNG, "image/png")
    raw = base64.b64encode(PNG).decode().rstrip("=")
    assert decode_data_url(f"data:image/png;charset=binary;base64,{raw}")[0] == PNG
    with pytest.raises(ValueError):
        decode_data_url("data:image/png,notbase64")


def test_resolve_model() -> None:
    assert (
        resolve_model(DEFAULT_MODEL, "google/gemini-3-pro-image-preview")
        == "google/gemini-3-pro-image-preview"
    )
    assert (
        resolve_model("gemini-2.5-flash-image", "google/gemini-3-pro-image-preview")
        == "google/gemini-2.5-flash-image"
    )
    assert resolve_model("vendor/x", "google/y") == "vendor/x"
    assert resolve_model("plain", "alias") == "plain"
    assert resolve_model("", "") == f"google/{DEFAULT_MODEL}"


def test_build_body_text_first_then_data_urls() -> None:
    refs = (ReferenceImage(PNG, "image/png"), ReferenceImage(b"\xff\xd8\xffx", "image/jpeg"))
    body = build_body(
        ImageRequest("i", "draw", image_size="4K", aspect_ratio="21:9", reference_images=refs), "m"
    )
    assert body["model"] == "m"
    assert body["modalities"] == ["image", "text"]
    assert body["image_config"] == {"aspect_ratio": "21:9", "image_size": "4K"}
    content = body["messages"][0]["content"]
    assert content[0] == {"type": "text", "text": "draw"}
    assert content[1]["image_url"]["url"] == DATA_URL
    assert content[2]["image_url"]["url"].startswith("data:image/jpeg;base64,")


# --------------------------------------------------------------------------- HTTP via MockTransport


def channel_with(handler: Callable[[httpx.Request], httpx.Response], **extra: object) -> OpenAICompatChannel:
    config = parse_channel(
        "relay",
        host="https://relay.example.invalid/api/v1",
        password=KEY,
        extra={"protocol": "openai", "model": "google/gemini-3-pro-image-preview", **extra},
    )
    return OpenAICompatChannel(config, transport=httpx.MockTransport(handler))


def generate(channel: OpenAICompatChannel, request: ImageRequest | None = None) -> GenerationResult:
    async def main() -> GenerationResult:
        try:
            return await channel.generate(request or ImageRequest("it", "a pear", image_size="2K"))
        finally:
            await channel.aclose()

    return asyncio.run(main())


def test_hosted_image_is_fetched_without_credentials() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        if req.url.path.endswith("/chat/completions"):
            assert req.headers["authorization"] == f"Bearer {KEY}"
            body = json.loads(req.content)
            assert body["model"] == "google/gemini-3-pro-image-preview"
            return httpx.Response(
                200, json=completion({"content": "![r](https://cdn.example.invalid/r.png)"})
            )
        return httpx.Response(200, content=PNG, headers={"content-type": "image/png"})

    result = generate(channel_with(handler, prices={"2K": 0.09}))
    assert result.image == PNG and result.mime_type == "image/png"
    assert result.cost_usd == 0.09  # no usage.cost: the configured price
    assert [r.url.path for r in seen] == ["/api/v1/chat/completions", "/r.png"]
    assert "authorization" not in seen[1].headers


def test_hosted_plain_http_off_loopback_is_refused() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json=completion({"images": [{"image_url": {"url": "http://evil.invalid/x.png"}}]})
        )

    with pytest.raises(ChannelError) as info:
        generate(channel_with(handler))
    assert info.value.error_class is ErrorClass.RETRYABLE and "refused" in str(info.value)


def test_hosted_image_failure_is_retryable() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("/chat/completions"):
            return httpx.Response(
                200, json=completion({"images": [{"image_url": {"url": "https://cdn.invalid/x"}}]})
            )
        return httpx.Response(404)

    with pytest.raises(ChannelError) as info:
        generate(channel_with(handler))
    assert info.value.error_class is ErrorClass.RETRYABLE


def test_200_with_error_envelope_is_classified() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"error": {"code": 502, "message": "upstream error"}})

    with pytest.raises(ChannelError) as info:
        generate(channel_with(handler))
    assert info.value.error_class is ErrorClass.RETRYABLE and info.value.status_code == 502


def test_relay_429_with_nested_per_day_quota() -> None:
    raw = {
        "error": {
            "code": 429,
            "message": "daily",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel"}],
                }
            ],
        }
    }

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(
            429, json={"error": {"code": 429, "message": "daily", "metadata": {"raw": json.dumps(raw)}}}
        )

    with pytest.raises(ChannelError) as info:
        generate(channel_with(handler))
    assert info.value.error_class is ErrorClass.QUOTA_EXHAUSTED


def test_echoed_key_never_leaks(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(
            401, json={"error": {"code": 401, "message": f"Invalid key {KEY} (Bearer {KEY})"}}
        )

    channel = channel_with(handler, billed_on_failure=True)
    with pytest.raises(ChannelError) as info:
        generate(channel)
    err = info.value
    assert err.error_class is ErrorClass.CHANNEL_FATAL and err.billed is True
    rendered = "".join(traceback.format_exception(err))
    assert "Invalid key" in rendered
    assert KEY not in rendered and KEY not in err.reason and KEY not in caplog.text
    assert KEY not in repr(channel) and KEY not in repr(channel.config)


def test_transport_errors_are_scrubbed_and_classified() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot reach relay with key={KEY}", request=req)

    with pytest.raises(ChannelError) as info:
        generate(channel_with(handler, billed_on_failure=True))
    assert info.value.error_class is ErrorClass.RETRYABLE
    assert info.value.billed is False  # never reached the relay
    assert KEY not in "".join(traceback.format_exception(info.value))


def test_non_json_error_body() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(503, text="<html>upstream down</html>")

    with pytest.raises(ChannelError) as info:
        generate(channel_with(handler))
    assert info.value.error_class is ErrorClass.RETRYABLE and "upstream down" in str(info.value)


def test_bytes_that_are_no_image_are_malformed() -> None:
    url = "data:image/png;base64," + base64.b64encode(b"definitely not an image").decode()

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=completion({"images": [{"image_url": {"url": url}}]}))

    with pytest.raises(ChannelError) as info:
        generate(channel_with(handler))
    assert "malformed response" in str(info.value)


def test_probe_lists_models() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        assert req.url.path == "/api/v1/models" and req.headers["authorization"] == f"Bearer {KEY}"
        return httpx.Response(200, json={"data": [{"id": "google/gemini-3-pro-image-preview"}, {"id": "x"}]})

    channel = channel_with(handler)

    async def main() -> str:
        try:
            return await channel.probe()
        finally:
            await channel.aclose()

    message = asyncio.run(main())
    assert "2 models" in message and "it lists google/gemini-3-pro-image-preview" in message


@pytest.mark.parametrize(("listed", "fatal"), [(["x", "y"], True), ([], False)])
def test_probe_refuses_a_relay_that_lists_models_but_not_ours(listed: list[str], fatal: bool) -> None:
    """Issue 15.5: an unknown model is found by the free call, not by every item's 404."""

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"data": [{"id": m} for m in listed]})

    channel = channel_with(handler)

    async def main() -> str:
        try:
            return await channel.probe()
        finally:
            await channel.aclose()

    if not fatal:  # a relay that lists nothing cannot say no
        assert "cannot confirm" in asyncio.run(main())
        return
    with pytest.raises(ChannelError) as info:
        asyncio.run(main())
    assert info.value.error_class is ErrorClass.CHANNEL_FATAL
    assert "2 models listed, not google/gemini-3-pro-image-preview" in str(info.value)


def test_build_channel_dispatches_openai_and_refuses_other_protocols() -> None:
    config = parse_channel("relay", host=None, password=KEY, extra={"protocol": "openai"})
    channel = build_channel(config)
    assert isinstance(channel, OpenAICompatChannel)
    asyncio.run(channel.aclose())
    with pytest.raises(ConfigurationError):
        OpenAICompatChannel(parse_channel("g", host=None, password=KEY, extra={"protocol": "gemini"}))
