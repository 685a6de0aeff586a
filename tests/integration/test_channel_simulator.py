"""Channels against the REAL simulator over HTTP: the unmodified google-genai SDK and httpx.

Every ErrorClass is reached through each protocol (Developer API via ``gemini``, Vertex, the
OpenAI-compatible relay), and the ledger proves what was sent and billed.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from typing import Any

import pytest
from PIL import Image

from airflow_banana.channels import build_channel
from airflow_banana.channels.config import ChannelConfig, parse_channel
from airflow_banana.channels.gemini import GeminiChannel
from airflow_banana.exceptions import ChannelError, ErrorClass
from airflow_banana.imaging import inspect_image
from airflow_banana.models import GenerationResult, ImageRequest, ReferenceImage, expected_pixels
from airflow_banana.testing import FaultProfile, Simulator
from airflow_banana.testing.connections import OPENAI_PREFIX

pytestmark = [pytest.mark.integration, pytest.mark.genai2, pytest.mark.timeout(60)]

PROTOCOLS = ("gemini", "vertex", "openai")


@pytest.fixture
def key() -> str:
    return f"sim-key-{uuid.uuid4().hex[:12]}"


def make_config(sim: Simulator, protocol: str, key: str, **extra: Any) -> ChannelConfig:
    fields: dict[str, Any] = {"protocol": protocol, "timeout": 5, **extra}
    if protocol == "vertex":
        fields.setdefault("project", "banana-test")
        fields.setdefault("location", "us-central1")
    if protocol == "openai":
        fields.setdefault("model", "google/gemini-3-pro-image-preview")
    host = sim.base_url + (OPENAI_PREFIX if protocol == "openai" else "")  # relays serve under a prefix
    return parse_channel(f"{protocol}-chan", host=host, password=key, extra=fields)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def attempt(config: ChannelConfig, request: ImageRequest) -> GenerationResult:
    channel = build_channel(config)
    try:
        return await channel.generate(request)
    finally:
        await channel.aclose()


def failure(config: ChannelConfig, request: ImageRequest) -> ChannelError:
    with pytest.raises(ChannelError) as info:
        run(attempt(config, request))
    return info.value


def png_bytes(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, "PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- success paths


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_success_with_reference_images_fingerprint_and_cost(sim: Simulator, key: str, protocol: str) -> None:
    refs = (
        ReferenceImage(png_bytes((255, 0, 0)), "image/png", "mem://red"),
        ReferenceImage(png_bytes((0, 0, 255)), "image/png", "mem://blue"),
    )
    request = ImageRequest(
        "item-1",
        "a banana on a red and blue plate",
        image_size="2K",
        aspect_ratio="16:9",
        reference_images=refs,
    )
    config = make_config(sim, protocol, key, prices={"2K": 0.111})
    result = run(attempt(config, request))

    assert result.channel == f"{protocol}-chan"
    assert result.mime_type == result.declared_mime_type == "image/png"
    info = inspect_image(result.image)
    assert (info.width, info.height) == expected_pixels("2K", "16:9")
    assert result.usage.image_tokens == 1120
    assert result.usage.prompt_tokens > 2 * 560  # two reference images were counted
    assert result.latency_s > 0
    billable = sim.billable(sim.key_id(key))
    assert len(billable) == 1
    assert billable[0]["fingerprint"] == request.fingerprint()  # prompt first, refs in order
    assert billable[0]["image_sha256"] == result.sha256
    if protocol == "openai":
        assert result.cost_usd == pytest.approx(0.05)  # the relay's usage.cost beats the table
        assert result.thought_signatures == () and result.content is None
    else:
        assert result.cost_usd == pytest.approx(0.111)
        assert result.thought_signatures  # the signed answer parts
        assert result.content is not None and result.content["role"] == "model"


def test_reference_order_changes_the_fingerprint(sim: Simulator, key: str) -> None:
    """Guards the order contract: swapping references must be a different purchase."""
    a, b = (
        ReferenceImage(png_bytes((1, 2, 3)), "image/png"),
        ReferenceImage(png_bytes((9, 8, 7)), "image/png"),
    )
    config = make_config(sim, "gemini", key)
    for refs in ((a, b), (b, a)):
        run(attempt(config, ImageRequest("x", "same prompt", reference_images=refs)))
    prints = [e["fingerprint"] for e in sim.billable(sim.key_id(key))]
    assert prints == [
        ImageRequest("x", "same prompt", reference_images=r).fingerprint() for r in ((a, b), (b, a))
    ]
    assert prints[0] != prints[1]


@pytest.mark.parametrize("protocol", ["gemini", "vertex"])
def test_thoughts_signatures_and_multi_turn_history(sim: Simulator, key: str, protocol: str) -> None:
    config = make_config(sim, protocol, key)

    async def scenario() -> tuple[GenerationResult, GenerationResult]:
        channel = build_channel(config)
        assert isinstance(channel, GeminiChannel)
        try:
            first = ImageRequest("edit-1", "a cat in a hat", include_thoughts=True)
            result, model_turn = await channel.generate_contents(
                [{"role": "user", "parts": [{"text": first.prompt}]}], request=first
            )
            # Second turn: the model turn goes back unchanged (signatures included); the
            # Developer path of the simulator is strict and would 400 on a missing signature.
            history = [
                {"role": "user", "parts": [{"text": first.prompt}]},
                model_turn,
                {"role": "user", "parts": [{"text": "make the hat blue"}]},
            ]
            second, _ = await channel.generate_contents(
                history, request=ImageRequest("edit-1", "make the hat blue")
            )
            return result, second
        finally:
            await channel.aclose()

    first, second = run(scenario())
    assert len(first.thought_signatures) >= 2 and all(isinstance(s, bytes) for s in first.thought_signatures)
    assert first.usage.thoughts_tokens > 0
    assert first.content is not None
    parts = first.content["parts"]
    assert parts[0].get("thought") is True  # thoughts were requested and kept in the turn
    assert second.sha256 != first.sha256
    assert [e["turns"] for e in sim.billable(sim.key_id(key))] == [1, 2]


def test_stripped_signature_is_item_terminal_on_strict_developer_path(sim: Simulator, key: str) -> None:
    config = make_config(sim, "gemini", key)

    async def scenario() -> None:
        channel = build_channel(config)
        assert isinstance(channel, GeminiChannel)
        try:
            req = ImageRequest("e", "a dog")
            _, turn = await channel.generate_contents(
                [{"role": "user", "parts": [{"text": "a dog"}]}], request=req
            )
            for part in turn["parts"]:
                part.pop("thought_signature", None)
            history = [
                {"role": "user", "parts": [{"text": "a dog"}]},
                turn,
                {"role": "user", "parts": [{"text": "x"}]},
            ]
            await channel.generate_contents(history, request=req)
        finally:
            await channel.aclose()

    with pytest.raises(ChannelError) as info:
        run(scenario())
    assert info.value.error_class is ErrorClass.ITEM_TERMINAL
    assert "thought_signature" in str(info.value)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_jpeg_declared_as_png_is_sniffed(sim: Simulator, key: str, protocol: str) -> None:
    result = run(attempt(make_config(sim, protocol, key), ImageRequest("j", "a pear [sim:jpeg_as_png]")))
    assert result.mime_type == "image/jpeg"
    assert result.declared_mime_type == "image/png"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_wrong_size_is_returned_for_the_caller_to_check(sim: Simulator, key: str, protocol: str) -> None:
    result = run(attempt(make_config(sim, protocol, key), ImageRequest("w", "a plum [sim:wrong_size]")))
    info = inspect_image(result.image)
    assert (info.width, info.height) != expected_pixels("1K", "1:1")


def test_openai_markdown_form_and_configured_price(sim: Simulator, key: str) -> None:
    sim.set_faults(key, FaultProfile(openai_markdown=True))
    config = make_config(sim, "openai", key)
    result = run(attempt(config, ImageRequest("m", "a kiwi")))
    assert result.mime_type == "image/png"
    assert "data:image" not in result.text
    assert result.cost_usd == pytest.approx(0.05)
    sim.set_faults(key, FaultProfile(openai_cost_usd=0.0731))
    assert run(attempt(config, ImageRequest("m", "a kiwi"))).cost_usd == pytest.approx(0.0731)


# --------------------------------------------------------------------------- every ErrorClass

MARKER_TABLE = [
    ("[sim:503]", ErrorClass.RETRYABLE, 503),
    ("[sim:500]", ErrorClass.RETRYABLE, 500),
    ("[sim:429]", ErrorClass.RATE_LIMITED, 429),
    ("[sim:400]", ErrorClass.ITEM_TERMINAL, 400),
    ("[sim:blocked]", ErrorClass.ITEM_TERMINAL, 200),
    ("[sim:image_safety]", ErrorClass.ITEM_TERMINAL, 200),
    ("[sim:no_image]", ErrorClass.NO_IMAGE, 200),
    ("[sim:truncated]", ErrorClass.RETRYABLE, None),
    ("[sim:malformed]", ErrorClass.RETRYABLE, None),
    ("[sim:reset]", ErrorClass.RETRYABLE, None),
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(("marker", "expected", "status"), MARKER_TABLE)
def test_markers_are_classified(
    sim: Simulator, key: str, protocol: str, marker: str, expected: ErrorClass, status: int | None
) -> None:
    err = failure(make_config(sim, protocol, key), ImageRequest("item-m", f"a lemon {marker}"))
    assert err.error_class is expected, str(err)
    if status is not None:
        assert err.status_code == status
    assert err.item_id == "item-m" and err.channel == f"{protocol}-chan"
    assert err.billed is False
    assert key not in str(err)
    assert sim.billable(sim.key_id(key)) == []  # no failure was charged


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_hang_times_out(sim: Simulator, key: str, protocol: str) -> None:
    config = make_config(sim, protocol, key, timeout=0.5)
    err = failure(config, ImageRequest("h", "a fig [sim:hang]"))
    assert err.error_class is ErrorClass.TIMEOUT


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_rate_limit_carries_retry_delay(sim: Simulator, key: str, protocol: str) -> None:
    sim.set_faults(key, FaultProfile(rate_limit_rate=1.0, retry_delay_s=1.5))
    err = failure(make_config(sim, protocol, key), ImageRequest("r", "an apple"))
    assert err.error_class is ErrorClass.RATE_LIMITED
    assert err.retry_after == pytest.approx(1.5)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_per_day_quota_is_quota_exhausted(sim: Simulator, key: str, protocol: str) -> None:
    sim.set_faults(key, FaultProfile(rpd=1))
    config = make_config(sim, protocol, key)
    run(attempt(config, ImageRequest("q1", "a grape")))
    err = failure(config, ImageRequest("q2", "a melon"))
    assert err.error_class is ErrorClass.QUOTA_EXHAUSTED
    assert err.status_code == 429


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_fixed_status_disables_the_channel(sim: Simulator, key: str, protocol: str, status: int) -> None:
    sim.set_faults(key, FaultProfile(fixed_status=status))
    err = failure(make_config(sim, protocol, key), ImageRequest("f", "a lime"))
    assert err.error_class is ErrorClass.CHANNEL_FATAL, str(err)
    assert err.status_code == status
    assert "disabled for this run" in str(err)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_connection_refused_is_retryable_and_not_billed(protocol: str, key: str) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fields: dict[str, Any] = {"protocol": protocol, "timeout": 2, "billed_on_failure": True}
    if protocol == "vertex":
        fields.update(project="p", location="us-central1")
    config = parse_channel("dead", host=f"http://127.0.0.1:{port}", password=key, extra=fields)
    err = failure(config, ImageRequest("c", "a date"))
    assert err.error_class is ErrorClass.RETRYABLE
    assert err.billed is False  # the request never reached anyone who could bill it


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_billed_on_failure_channel_marks_errors_billed(sim: Simulator, key: str, protocol: str) -> None:
    err = failure(
        make_config(sim, protocol, key, billed_on_failure=True), ImageRequest("b", "a nut [sim:503]")
    )
    assert err.billed is True
