"""The simulator's OpenAI-compatible relay surface, spoken to with plain httpx like our channel does."""

from __future__ import annotations

import base64
import io
import re

import httpx
import pytest
from PIL import Image

from airflow_banana.models import ImageRequest, ReferenceImage
from airflow_banana.testing import FaultProfile, Simulator

pytest_plugins = ["airflow_banana.testing.simulator_fixtures"]  # also listed by tests/conftest.py

pytestmark = [pytest.mark.integration]


def chat(sim: Simulator, prefix: str = "/api/v1", key: str = "relay-key", **extra: object) -> httpx.Response:
    body: dict[str, object] = {
        "model": "google/gemini-3-pro-image-preview",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "a fox"}]}],
        "modalities": ["image", "text"],
        "image_config": {"aspect_ratio": "16:9", "image_size": "2K"},
    }
    body.update(extra)
    return httpx.post(
        f"{sim.base_url}{prefix}/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    )


def decode_data_url(url: str) -> bytes:
    head, _, data = url.partition(";base64,")
    assert head == "data:image/png"
    return base64.b64decode(data)


@pytest.mark.parametrize("prefix", ["/api/v1", "/openai/v1", "/v1"])
def test_images_in_message_with_usage_cost(sim: Simulator, prefix: str) -> None:
    resp = chat(sim, prefix)
    assert resp.status_code == 200
    msg = resp.json()["choices"][0]["message"]
    image = decode_data_url(msg["images"][0]["image_url"]["url"])
    with Image.open(io.BytesIO(image)) as img:
        assert img.size == (2752, 1536)
    usage = resp.json()["usage"]
    assert usage["cost"] == 0.05 and usage["total_tokens"] > usage["prompt_tokens"] > 0
    [billed] = sim.billable()
    assert (
        billed["fingerprint"]
        == ImageRequest(item_id="", prompt="a fox", image_size="2K", aspect_ratio="16:9").fingerprint()
    )


def test_markdown_variant_per_key(sim: Simulator) -> None:
    sim.set_faults("md-key", FaultProfile(openai_markdown=True, openai_cost_usd=0.2))
    resp = chat(sim, key="md-key")
    msg = resp.json()["choices"][0]["message"]
    assert "images" not in msg
    match = re.search(r"!\[[^\]]*\]\((data:image/png;base64,[A-Za-z0-9+/=]+)\)", msg["content"])
    assert match is not None and decode_data_url(match.group(1)).startswith(b"\x89PNG")
    assert resp.json()["usage"]["cost"] == 0.2


def test_reference_images_count_in_fingerprint(sim: Simulator) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (5, 6, 7)).save(buf, format="PNG")
    ref = buf.getvalue()
    url = "data:image/png;base64," + base64.b64encode(ref).decode()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "restyle"},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        }
    ]
    assert (
        chat(sim, messages=messages, image_config={"aspect_ratio": "1:1", "image_size": "1K"}).status_code
        == 200
    )
    expected = ImageRequest(
        item_id="", prompt="restyle", reference_images=(ReferenceImage(ref, "image/png"),)
    )
    assert sim.billable()[0]["fingerprint"] == expected.fingerprint()


def test_errors_in_openrouter_shape(sim: Simulator) -> None:
    sim.set_faults("busy", FaultProfile(overload_rate=1.0))
    resp = chat(sim, key="busy")
    assert resp.status_code == 503
    err = resp.json()["error"]
    assert err["code"] == 503 and err["metadata"]["raw"]["error"]["status"] == "UNAVAILABLE"
    sim.set_faults("limited", FaultProfile(rate_limit_rate=1.0, retry_delay_s=7))
    resp = chat(sim, key="limited")
    assert resp.status_code == 429 and resp.headers["retry-after"] == "7"
    resp = chat(sim, image_config={"aspect_ratio": "1:1", "image_size": "1k"})
    assert resp.status_code == 400
    assert httpx.post(f"{sim.base_url}/api/v1/chat/completions", json={}).status_code == 401
    assert sim.billable() == []


def test_content_faults_and_transport_faults(sim: Simulator) -> None:
    messages = [{"role": "user", "content": "x [sim:blocked]"}]
    blocked = chat(sim, messages=messages).json()["choices"][0]
    assert blocked["finish_reason"] == "content_filter" and "images" not in blocked["message"]
    messages = [{"role": "user", "content": "x [sim:malformed]"}]
    resp = chat(sim, messages=messages)
    assert resp.status_code == 200
    with pytest.raises(ValueError):
        resp.json()
    with pytest.raises(httpx.TransportError):
        chat(sim, messages=[{"role": "user", "content": "x [sim:reset]"}])
    assert sim.billable() == []


def test_models_list(sim: Simulator) -> None:
    resp = httpx.get(f"{sim.base_url}/api/v1/models", headers={"Authorization": "Bearer relay-key"})
    assert resp.status_code == 200
    assert "google/gemini-3-pro-image-preview" in [m["id"] for m in resp.json()["data"]]
    resp = httpx.get(f"{sim.base_url}/v1/models", headers={"Authorization": "Bearer relay-key"})
    assert resp.json()["object"] == "list"
    assert sim.billable() == [] and len(sim.requests()) == 2


@pytest.mark.parametrize("prefix", ["", "/relay", "/api"])
def test_no_chat_completions_where_real_relays_have_none(sim: Simulator, prefix: str) -> None:
    """Issue 15.6: a base URL without its API prefix must fail offline as it does for real."""
    assert chat(sim, prefix).status_code == 404
    assert sim.billable() == []
