"""One huge request cannot stall the simulator: over-limit prompts get Google's 400 before any
rendering, and the renderer's time is bounded whatever text it is given (issue 16)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import errors, types

from airflow_banana.models import CHARS_PER_TOKEN, MAX_INPUT_TOKENS
from airflow_banana.testing import Simulator
from airflow_banana.testing.render import render_edit, render_image

pytest_plugins = ["airflow_banana.testing.simulator_fixtures"]  # also listed by tests/conftest.py

pytestmark = [pytest.mark.integration, pytest.mark.genai2]

MODEL = "gemini-3-pro-image-preview"
FIVE_MB = 5 * 1024 * 1024
_CLIENTS: dict[str, Any] = {}  # the SDK closes a collected client mid-call; keep them alive


def client(sim: Simulator) -> Any:
    if sim.base_url not in _CLIENTS:
        _CLIENTS[sim.base_url] = genai.Client(
            api_key="big-key", http_options=types.HttpOptions(base_url=sim.base_url)
        )
    return _CLIENTS[sim.base_url]


def config() -> types.GenerateContentConfig:
    return types.GenerateContentConfig(
        response_modalities=["TEXT", "IMAGE"], image_config=types.ImageConfig(image_size="1K")
    )


def test_a_5_mb_prompt_gets_googles_token_limit_400_within_a_second(sim: Simulator) -> None:
    prompt = "x" * FIVE_MB  # one long word: what made textwrap spin for an hour
    sdk = client(sim)
    started = time.monotonic()
    with pytest.raises(errors.ClientError) as info:
        sdk.models.generate_content(model=MODEL, contents=prompt, config=config())
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"{elapsed:.2f}s"
    tokens = -(-FIVE_MB // CHARS_PER_TOKEN)
    assert info.value.code == 400 and info.value.status == "INVALID_ARGUMENT"
    assert info.value.message == (
        f"The input token count ({tokens}) exceeds the maximum number of tokens allowed ({MAX_INPUT_TOKENS})."
    )
    assert sim.billable() == []
    # the worker is free: the next request is answered as usual
    ok = sdk.models.generate_content(model=MODEL, contents="a small fox", config=config())
    assert any(p.inline_data for p in ok.candidates[0].content.parts)


def test_a_prompt_at_the_limit_is_drawn_and_an_image_beside_it_is_over(sim: Simulator) -> None:
    at_limit = "y" * (MAX_INPUT_TOKENS * CHARS_PER_TOKEN)
    sdk = client(sim)
    started = time.monotonic()
    resp = sdk.models.generate_content(model=MODEL, contents=at_limit, config=config())
    assert time.monotonic() - started < 2.0  # a 262,144-character word is drawn truncated
    assert resp.usage_metadata.prompt_token_count == MAX_INPUT_TOKENS
    image = render_image("ref", "ref", 64, 64)
    with_image = [at_limit[:-100], types.Part.from_bytes(data=image, mime_type="image/png")]
    with pytest.raises(errors.ClientError, match=r"count \(66071\) exceeds the maximum number"):
        sdk.models.generate_content(model=MODEL, contents=with_image, config=config())
    assert len(sim.billable()) == 1


def test_relay_route_refuses_an_over_limit_prompt_too(sim: Simulator) -> None:
    body = {
        "model": f"google/{MODEL}",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "z" * FIVE_MB}]}],
        "modalities": ["image", "text"],
    }
    started = time.monotonic()
    resp = httpx.post(
        f"{sim.base_url}/api/v1/chat/completions", json=body, headers={"Authorization": "Bearer relay-key"}
    )
    assert time.monotonic() - started < 1.0
    assert resp.status_code == 400
    assert "exceeds the maximum number of tokens allowed" in resp.json()["error"]["message"]
    assert sim.billable() == []


@pytest.mark.parametrize("text", ["w" * FIVE_MB, "word " * (FIVE_MB // 5), "\n" * FIVE_MB])
def test_renderer_time_is_bounded_whatever_the_text(text: str) -> None:
    started = time.monotonic()
    image = render_image(f"seed-{len(text)}-{text[:2]!r}", text, 1024, 1024)
    render_edit(image, text, 512, 512)
    assert time.monotonic() - started < 1.0
