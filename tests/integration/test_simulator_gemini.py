"""The unmodified google-genai SDK (3.x, and 2.x in CI) against the simulator over real HTTP.

Every endpoint and every fault the simulator offers is exercised through the SDK, sync and
``client.aio``, asserting what the SDK parses or raises; the ledger is checked against
``ImageRequest.fingerprint()`` so "paid once" claims elsewhere rest on a verified base.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from typing import Any

import google.oauth2.credentials
import httpx
import pytest
from google import genai
from google.genai import errors, types
from PIL import Image

from airflow_banana.models import ImageRequest, ReferenceImage, expected_pixels
from airflow_banana.testing import FaultProfile, Simulator
from airflow_banana.testing.render import png_text

pytest_plugins = ["airflow_banana.testing.simulator_fixtures"]  # also listed by tests/conftest.py

pytestmark = [pytest.mark.integration, pytest.mark.genai2]

MODEL = "gemini-3-pro-image-preview"
try:  # google-genai 3.x talks through httpx2; 2.x through httpx
    import httpx2

    TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (httpx.TransportError, httpx2.TransportError)
except ImportError:
    TRANSPORT_ERRORS = (httpx.TransportError,)


# The SDK closes a client that is garbage collected, even mid-call on a temporary
# (GEMINI_WIRE.md), so every client made here is kept alive for the session. Clients are typed
# Any: every SDK response field is Optional, and these tests assert presence at run time.
_CLIENTS: dict[tuple[Any, ...], genai.Client] = {}


def client(sim: Simulator, key: str = "key-a", **http: Any) -> Any:
    ident = ("dev", sim.base_url, key, tuple(sorted(http.items())))
    if ident not in _CLIENTS:
        _CLIENTS[ident] = genai.Client(
            api_key=key, http_options=types.HttpOptions(base_url=sim.base_url, **http)
        )
    return _CLIENTS[ident]


def vertex_client(sim: Simulator, token: str = "vertex-token") -> Any:
    ident = ("vertex", sim.base_url, token)
    if ident not in _CLIENTS:
        _CLIENTS[ident] = _vertex_client(sim, token)
    return _CLIENTS[ident]


def _vertex_client(sim: Simulator, token: str) -> genai.Client:
    return genai.Client(
        vertexai=True,
        project="proj",
        location="us-central1",
        credentials=google.oauth2.credentials.Credentials(token=token),
        http_options=types.HttpOptions(base_url=sim.base_url),
    )


def image_config(size: str = "1K", ratio: str = "1:1", thoughts: bool = False) -> types.GenerateContentConfig:
    return types.GenerateContentConfig(
        response_modalities=["TEXT", "IMAGE"],
        image_config=types.ImageConfig(image_size=size, aspect_ratio=ratio),
        thinking_config=types.ThinkingConfig(include_thoughts=True) if thoughts else None,
    )


def final_image(resp: Any) -> Any:
    parts = resp.candidates[0].content.parts
    return [p for p in parts if p.inline_data is not None and not p.thought][-1]


def pixels(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        return img.size


def png_bytes(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


# --- success paths ------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "ratio"), [("1K", "1:1"), ("1K", "21:9"), ("2K", "9:16"), ("4K", "16:9")])
def test_png_has_exact_pixel_size(sim: Simulator, size: str, ratio: str) -> None:
    resp = client(sim).models.generate_content(
        model=MODEL, contents="a lighthouse", config=image_config(size, ratio)
    )
    part = final_image(resp)
    assert part.inline_data.mime_type == "image/png"
    assert part.inline_data.data.startswith(b"\x89PNG")
    assert pixels(part.inline_data.data) == expected_pixels(size, ratio)
    assert resp.usage_metadata.candidates_tokens_details[0].token_count == (2000 if size == "4K" else 1120)


def test_same_request_gives_identical_image(sim: Simulator) -> None:
    c = client(sim)
    a = final_image(c.models.generate_content(model=MODEL, contents="same", config=image_config()))
    b = final_image(c.models.generate_content(model=MODEL, contents="same", config=image_config()))
    other = final_image(c.models.generate_content(model=MODEL, contents="different", config=image_config()))
    assert a.inline_data.data == b.inline_data.data != other.inline_data.data


def test_ledger_fingerprint_matches_image_request(sim: Simulator) -> None:
    refs = [png_bytes((255, 0, 0)), png_bytes((0, 0, 255))]
    contents = [
        types.Content(
            role="user",
            parts=[types.Part.from_text(text="combine these [ref]")]
            + [types.Part.from_bytes(data=r, mime_type="image/png") for r in refs],
        )
    ]
    resp = client(sim, "fp-key").models.generate_content(
        model=MODEL, contents=contents, config=image_config("1K", "4:3")
    )
    expected = ImageRequest(
        item_id="",
        prompt="combine these [ref]",
        image_size="1K",
        aspect_ratio="4:3",
        model=MODEL,
        reference_images=tuple(ReferenceImage(r, "image/png") for r in refs),
    ).fingerprint()
    [entry] = sim.billable()
    assert entry["fingerprint"] == expected
    assert entry["key_id"] == sim.key_id("fp-key") and "fp-key" not in str(sim.ledger())
    assert (entry["image_size"], entry["aspect_ratio"], entry["price_lane"], entry["turns"]) == (
        "1K",
        "4:3",
        "realtime",
        1,
    )
    assert png_text(final_image(resp).inline_data.data)["sim:fingerprint"] == expected
    # Two reference images of ~560 tokens each are counted as input.
    assert resp.usage_metadata.prompt_token_count >= 2 * 560


def test_thought_parts_and_signatures_are_where_google_puts_them(sim: Simulator) -> None:
    resp = client(sim).models.generate_content(
        model=MODEL, contents="castle", config=image_config(thoughts=True)
    )
    parts = resp.candidates[0].content.parts
    thoughts = [p for p in parts if p.thought]
    answer = [p for p in parts if not p.thought]
    assert len(thoughts) == 2 and thoughts[0].text and thoughts[1].inline_data is not None
    assert all(p.thought_signature is None for p in thoughts)
    assert answer[0].text and answer[0].thought_signature  # first non-thought part
    assert all(p.thought_signature for p in answer if p.inline_data is not None)  # every answer image
    assert parts.index(answer[0]) == len(thoughts)  # thoughts come first
    assert resp.usage_metadata.thoughts_token_count > 0
    um = resp.usage_metadata
    total = um.prompt_token_count + um.candidates_token_count + um.thoughts_token_count
    assert um.total_token_count == total
    assert resp.model_version == MODEL and resp.response_id


def test_without_thoughts_no_thought_parts(sim: Simulator) -> None:
    resp = client(sim).models.generate_content(model=MODEL, contents="castle", config=image_config())
    parts = resp.candidates[0].content.parts
    assert not any(p.thought for p in parts)
    assert all(p.thought_signature for p in parts if p.inline_data is not None)


def test_v1beta_path_as_used_by_genai_2(sim: Simulator) -> None:
    c = client(sim, api_version="v1beta")
    resp = c.models.generate_content(model=MODEL, contents="beta", config=image_config())
    assert pixels(final_image(resp).inline_data.data) == (1024, 1024)
    assert sim.requests()[-1]["path"].startswith("/v1beta/models/")


def test_stream_generate_content_sse(sim: Simulator) -> None:
    chunks = list(
        client(sim).models.generate_content_stream(
            model=MODEL, contents="stream me", config=image_config(thoughts=True)
        )
    )
    assert len(chunks) >= 2
    parts = [p for ch in chunks if ch.candidates for p in ch.candidates[0].content.parts]
    final = [p for p in parts if p.inline_data is not None and not p.thought][-1]
    assert final.thought_signature and pixels(final.inline_data.data) == (1024, 1024)
    assert chunks[-1].usage_metadata.total_token_count > 0
    assert len(sim.billable()) == 1


def test_async_client_generate_and_stream(sim: Simulator) -> None:
    async def run() -> tuple[Any, list[Any]]:
        c = client(sim, "aio-key")
        one = await c.aio.models.generate_content(
            model=MODEL, contents="async", config=image_config("1K", "3:2")
        )
        stream = [ch async for ch in await c.aio.models.generate_content_stream(model=MODEL, contents="s")]
        return one, stream

    one, stream = asyncio.run(run())
    assert pixels(final_image(one).inline_data.data) == (1264, 848)
    assert stream and stream[-1].candidates[0].finish_reason == types.FinishReason.STOP


def test_models_get_and_list(sim: Simulator) -> None:
    c = client(sim)
    model = c.models.get(model=MODEL)
    assert model.name == f"models/{MODEL}"
    assert "generateContent" in (model.supported_actions or [])
    names = [m.name for m in c.models.list()]
    assert f"models/{MODEL}" in names
    assert sim.billable() == []


def test_models_get_with_bad_key_uses_its_fixed_status(sim: Simulator) -> None:
    sim.set_faults("bad-key", FaultProfile(fixed_status=400))
    with pytest.raises(errors.ClientError) as info:
        client(sim, "bad-key").models.get(model=MODEL)
    assert info.value.code == 400
    assert info.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "ratio"), [("1k", "1:1"), ("8K", "1:1"), ("1K", "7:3")])
def test_invalid_image_config_is_400(sim: Simulator, size: str, ratio: str) -> None:
    body = {
        "contents": [{"role": "user", "parts": [{"text": "x"}]}],
        "generationConfig": {"imageConfig": {"imageSize": size, "aspect_ratio": ratio}},
    }
    resp = httpx.post(
        f"{sim.base_url}/v1beta/models/{MODEL}:generateContent", json=body, headers={"x-goog-api-key": "k"}
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["status"] == "INVALID_ARGUMENT"
    # The SDK surfaces the same as a ClientError (it validates nothing of this client-side).
    with pytest.raises(errors.ClientError) as info:
        client(sim).models.generate_content(model=MODEL, contents="x", config=image_config(size, ratio))
    assert info.value.code == 400 and info.value.status == "INVALID_ARGUMENT"
    assert sim.billable() == []


def test_unknown_model_is_404(sim: Simulator) -> None:
    with pytest.raises(errors.ClientError) as info:
        client(sim).models.generate_content(model="gemini-9-ultra", contents="x")
    assert info.value.code == 404 and info.value.status == "NOT_FOUND"


def test_key_via_query_parameter(sim: Simulator) -> None:
    body = {"contents": [{"parts": [{"text": "q"}]}]}
    resp = httpx.post(f"{sim.base_url}/v1/models/{MODEL}:generateContent?key=qk", json=body)
    assert resp.status_code == 200
    assert sim.billable()[0]["key_id"] == sim.key_id("qk")


def test_snake_case_and_urlsafe_base64_accepted(sim: Simulator) -> None:
    ref = png_bytes((1, 2, 3))
    body = {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "snake"},
                    {
                        "inline_data": {
                            "mime_type": "image/png",
                            "data": base64.urlsafe_b64encode(ref).decode(),
                        }
                    },
                ],
            }
        ],
        "generation_config": {"image_config": {"image_size": "1K", "aspect_ratio": "2:3"}},
    }
    resp = httpx.post(
        f"{sim.base_url}/v1/models/{MODEL}:generateContent", json=body, headers={"x-goog-api-key": "k"}
    )
    assert resp.status_code == 200
    part = resp.json()["candidates"][0]["content"]["parts"][-1]
    assert pixels(base64.b64decode(part["inlineData"]["data"])) == (848, 1264)  # standard base64 back
    assert (
        sim.billable()[0]["fingerprint"]
        == ImageRequest(
            item_id="",
            prompt="snake",
            aspect_ratio="2:3",
            reference_images=(ReferenceImage(ref, "image/png"),),
        ).fingerprint()
    )


# --- multi-turn editing and strict signatures ---------------------------------------------------


def test_chat_round_trip_passes_strict_validation_and_is_an_edit(sim: Simulator) -> None:
    c = client(sim)
    chat = c.chats.create(model=MODEL, config=image_config(thoughts=True))
    first = final_image(chat.send_message("draw a red boat")).inline_data.data
    # History survives a process boundary byte-identically and still validates.
    saved = [h.model_dump(mode="json", exclude_none=True) for h in chat.get_history()]
    restored = [types.Content.model_validate(d) for d in saved]
    chat2 = client(sim).chats.create(model=MODEL, config=image_config(thoughts=True), history=restored)
    edited = final_image(chat2.send_message("make the boat blue")).inline_data.data
    meta = png_text(edited)
    import hashlib

    assert meta["sim:parent_sha256"] == hashlib.sha256(first).hexdigest()
    assert pixels(edited) == (1024, 1024)
    billed = sim.billable()
    assert [b["turns"] for b in billed] == [1, 2]
    assert billed[1]["fingerprint"] == ImageRequest(item_id="", prompt="make the boat blue").fingerprint()


def _history(sig_text: bytes | None, sig_image: bytes | None) -> list[types.Content]:
    model_parts = [types.Part(text="here", thought_signature=sig_text)]
    model_parts.append(
        types.Part(
            inline_data=types.Blob(data=png_bytes((9, 9, 9)), mime_type="image/png"),
            thought_signature=sig_image,
        )
    )
    return [
        types.Content(role="user", parts=[types.Part.from_text(text="first")]),
        types.Content(role="model", parts=model_parts),
        types.Content(role="user", parts=[types.Part.from_text(text="edit it")]),
    ]


def test_strict_mode_rejects_missing_image_signature_with_positions(sim: Simulator) -> None:
    valid = sim.state.signer.issue("r", 0)
    with pytest.raises(errors.ClientError) as info:
        client(sim).models.generate_content(model=MODEL, contents=_history(valid, None))
    assert info.value.code == 400
    assert str(info.value.message).startswith(
        "Image part is missing a thought_signature in content position 2, part position 2."
    )
    with pytest.raises(errors.ClientError) as info:
        client(sim).models.generate_content(model=MODEL, contents=_history(None, valid))
    assert str(info.value.message).startswith(
        "Text part is missing a thought_signature in content position 2, part position 1."
    )
    # A forged signature is not one this simulator issued.
    with pytest.raises(errors.ClientError):
        client(sim).models.generate_content(model=MODEL, contents=_history(valid, b"forged-signature"))
    assert sim.billable() == []


@pytest.mark.parametrize(
    "bypass", [b"context_engineering_is_the_way_to_go", b"skip_thought_signature_validator"]
)
def test_documented_bypass_values_pass(sim: Simulator, bypass: bytes) -> None:
    resp = client(sim).models.generate_content(model=MODEL, contents=_history(bypass, bypass))
    assert png_text(final_image(resp).inline_data.data)["sim:parent_sha256"]


def test_strict_switch_per_key_and_vertex_default_lenient(sim: Simulator) -> None:
    sim.set_faults("lenient", FaultProfile(strict_signatures=False))
    assert final_image(
        client(sim, "lenient").models.generate_content(model=MODEL, contents=_history(None, None))
    )
    resp = vertex_client(sim).models.generate_content(model=MODEL, contents=_history(None, None))
    assert final_image(resp).inline_data.data
    sim.set_faults("vertex-strict", FaultProfile(strict_signatures=True))
    with pytest.raises(errors.ClientError) as info:
        vertex_client(sim, "vertex-strict").models.generate_content(
            model=MODEL, contents=_history(None, None)
        )
    assert "content position 2, part position 1" in str(info.value.message)


# --- Vertex -------------------------------------------------------------------------------------


def test_vertex_generate_and_model_get(sim: Simulator) -> None:
    c = vertex_client(sim, "tok-1")
    resp = c.models.generate_content(model=MODEL, contents="vertex", config=image_config("1K", "5:4"))
    assert pixels(final_image(resp).inline_data.data) == (1152, 928)
    path = sim.billable()[0]["path"]
    assert "/projects/proj/locations/us-central1/publishers/google/models/" in path
    assert sim.billable()[0]["key_id"] == sim.key_id("tok-1")
    assert c.models.get(model=MODEL).name.endswith(f"models/{MODEL}")


def test_vertex_429_uses_vertex_message(sim: Simulator) -> None:
    sim.set_faults("vtok", FaultProfile(rate_limit_rate=1.0, retry_delay_s=3))
    with pytest.raises(errors.ClientError) as info:
        vertex_client(sim, "vtok").models.generate_content(model=MODEL, contents="x")
    assert info.value.code == 429 and info.value.message == "Resource exhausted. Please try again later."


# --- faults -------------------------------------------------------------------------------------


def details_of(err: errors.APIError, type_suffix: str) -> dict[str, Any]:
    return next(d for d in err.details["error"]["details"] if d["@type"].endswith(type_suffix))


def test_overload_rate_and_marker_give_503(sim: Simulator) -> None:
    with pytest.raises(errors.ServerError) as info:
        client(sim).models.generate_content(model=MODEL, contents="x [sim:503]")
    assert info.value.code == 503 and info.value.status == "UNAVAILABLE"
    assert info.value.details == {
        "error": {
            "code": 503,
            "message": "The model is overloaded. Please try again later.",
            "status": "UNAVAILABLE",
        }
    }
    sim.set_faults(
        "hot", FaultProfile.peak(overload_rate=1.0, rate_limit_rate=0, truncated_rate=0, reset_rate=0)
    )
    with pytest.raises(errors.ServerError):
        asyncio.run(client(sim, "hot").aio.models.generate_content(model=MODEL, contents="x"))
    assert sim.billable() == []


def test_peak_profile_fails_about_45_percent_reproducibly(sim: Simulator) -> None:
    def run() -> list[str]:
        sim.reset()
        sim.set_faults("peak-key", FaultProfile.peak(latency_ms=None))
        out = []
        for i in range(60):
            r = httpx.post(
                f"{sim.base_url}/v1/models/{MODEL}:generateContent",
                json={"contents": [{"parts": [{"text": f"p{i}"}]}]},
                headers={"x-goog-api-key": "peak-key"},
            )
            out.append(str(r.status_code))
        return out

    first, second = run(), run()
    assert first == second  # seeded per key
    failed = sum(s != "200" for s in first) / len(first)
    assert 0.25 <= failed <= 0.65


def test_rate_limit_429_has_quota_failure_and_retry_info(sim: Simulator) -> None:
    sim.set_faults("rl", {"rate_limit_rate": 1.0, "retry_delay_s": "26s"})
    with pytest.raises(errors.ClientError) as info:
        client(sim, "rl").models.generate_content(model=MODEL, contents="x")
    err = info.value
    assert err.code == 429 and err.status == "RESOURCE_EXHAUSTED"
    assert details_of(err, "RetryInfo")["retryDelay"] == "26s"
    assert details_of(err, "QuotaFailure")["violations"][0]["quotaId"]


def test_requests_per_minute_quota_enforced(sim: Simulator) -> None:
    sim.set_faults("rpm", FaultProfile(rpm=2))  # minute_s = 1 in the session fixture
    c = client(sim, "rpm")
    c.models.generate_content(model=MODEL, contents="a")
    c.models.generate_content(model=MODEL, contents="b")
    with pytest.raises(errors.ClientError) as info:
        c.models.generate_content(model=MODEL, contents="c")
    violation = details_of(info.value, "QuotaFailure")["violations"][0]
    assert (
        violation["quotaId"] == "GenerateRequestsPerMinutePerProjectPerModel"
        and violation["quotaValue"] == "2"
    )
    delay = float(details_of(info.value, "RetryInfo")["retryDelay"].rstrip("s"))
    assert 0 < delay <= 1.0
    time.sleep(delay + 0.05)
    c.models.generate_content(model=MODEL, contents="c")
    assert len(sim.billable()) == 3


def test_images_per_minute_and_per_day_quotas(sim: Simulator) -> None:
    sim.set_faults("ipm", FaultProfile(ipm=1))
    c = client(sim, "ipm")
    c.models.generate_content(model=MODEL, contents="a")
    with pytest.raises(errors.ClientError) as info:
        c.models.generate_content(model=MODEL, contents="b")
    assert info.value.code == 429
    sim.set_faults("rpd", FaultProfile(rpd=1))  # day_s = 10 in the session fixture
    d = client(sim, "rpd")
    d.models.generate_content(model=MODEL, contents="a")
    with pytest.raises(errors.ClientError) as info:
        d.models.generate_content(model=MODEL, contents="b")
    assert (
        details_of(info.value, "QuotaFailure")["violations"][0]["quotaId"]
        == "GenerateRequestsPerDayPerProjectPerModel"
    )
    assert 5 < float(details_of(info.value, "RetryInfo")["retryDelay"].rstrip("s")) <= 10


@pytest.mark.parametrize(
    ("status", "name", "exc"),
    [
        (400, "INVALID_ARGUMENT", errors.ClientError),
        (401, "UNAUTHENTICATED", errors.ClientError),
        (403, "PERMISSION_DENIED", errors.ClientError),
        (404, "NOT_FOUND", errors.ClientError),
        (500, "INTERNAL", errors.ServerError),
    ],
)
def test_fixed_status_per_key(sim: Simulator, status: int, name: str, exc: type[errors.APIError]) -> None:
    sim.set_faults("fixed", FaultProfile(name="broken-channel", fixed_status=status))
    with pytest.raises(exc) as info:
        client(sim, "fixed").models.generate_content(model=MODEL, contents="x")
    assert info.value.code == status and info.value.status == name
    if status == 400:
        assert details_of(info.value, "ErrorInfo")["reason"] == "API_KEY_INVALID"
    assert sim.requests("broken-channel")[-1]["status"] == status


def test_outage_window_then_healthy(sim: Simulator) -> None:
    sim.set_faults("flappy", FaultProfile(outage_start_s=0.0, outage_duration_s=0.6))
    c = client(sim, "flappy")
    with pytest.raises(errors.ServerError):
        c.models.generate_content(model=MODEL, contents="x")
    time.sleep(0.7)
    assert final_image(c.models.generate_content(model=MODEL, contents="x"))


def test_hang_times_out_and_does_not_block_others(sim: Simulator) -> None:
    async def run() -> None:
        hung = client(sim, "hang", timeout=700).aio.models.generate_content(
            model=MODEL, contents="x [sim:hang]"
        )
        task = asyncio.ensure_future(hung)
        await asyncio.sleep(0.1)
        ok = await client(sim, "other").aio.models.generate_content(model=MODEL, contents="fine")
        assert final_image(ok)
        with pytest.raises(TRANSPORT_ERRORS):
            await task

    started = time.monotonic()
    asyncio.run(run())
    assert time.monotonic() - started < 5
    with pytest.raises(TRANSPORT_ERRORS):
        client(sim, "hang", timeout=300).models.generate_content(model=MODEL, contents="x [sim:hang]")
    assert sim.state.ledger.billable(sim.key_id("hang")) == []


def test_hang_rate_profile(sim: Simulator) -> None:
    sim.set_faults("hang-rate", FaultProfile(hang_rate=1.0))
    with pytest.raises(TRANSPORT_ERRORS):
        client(sim, "hang-rate", timeout=300).models.generate_content(model=MODEL, contents="x")


def test_connection_reset_is_a_transport_error(sim: Simulator) -> None:
    with pytest.raises(TRANSPORT_ERRORS):
        client(sim).models.generate_content(model=MODEL, contents="x [sim:reset]")
    with pytest.raises(TRANSPORT_ERRORS):
        asyncio.run(client(sim).aio.models.generate_content(model=MODEL, contents="x [sim:reset]"))
    sim.set_faults("rst", FaultProfile(reset_rate=1.0))
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError)):
        httpx.post(
            f"{sim.base_url}/v1/models/{MODEL}:generateContent",
            json={"contents": [{"parts": [{"text": "x"}]}]},
            headers={"x-goog-api-key": "rst"},
        )
    assert [r["fault"] for r in sim.requests()] == ["reset"] * 3
    assert sim.billable() == []


@pytest.mark.parametrize("marker", ["truncated", "malformed"])
def test_broken_200_bodies_are_not_parsed_as_success(sim: Simulator, marker: str) -> None:
    raw = httpx.post(
        f"{sim.base_url}/v1/models/{MODEL}:generateContent",
        json={"contents": [{"parts": [{"text": f"x [sim:{marker}]"}]}]},
        headers={"x-goog-api-key": "k"},
    )
    assert raw.status_code == 200
    with pytest.raises(ValueError):
        raw.json()
    with pytest.raises(ValueError):  # json.JSONDecodeError / the SDK's UnknownApiResponseError
        client(sim).models.generate_content(model=MODEL, contents=f"x [sim:{marker}]")
    assert sim.billable() == []  # the client never got the image: a retry is not a double payment


def test_truncated_stream(sim: Simulator) -> None:
    with pytest.raises((ValueError, errors.APIError)):
        list(client(sim).models.generate_content_stream(model=MODEL, contents="x [sim:truncated]"))


def test_blocked_image_safety_and_no_image(sim: Simulator) -> None:
    c = client(sim)
    blocked = c.models.generate_content(model=MODEL, contents="x [sim:blocked]")
    assert not blocked.candidates and blocked.prompt_feedback.block_reason is not None
    safety = c.models.generate_content(model=MODEL, contents="x [sim:image_safety]")
    assert safety.candidates[0].finish_reason == types.FinishReason.IMAGE_SAFETY
    assert safety.candidates[0].content is None or not safety.candidates[0].content.parts
    no_image = c.models.generate_content(model=MODEL, contents="x [sim:no_image]")
    assert no_image.candidates[0].finish_reason == types.FinishReason.NO_IMAGE
    assert all(p.inline_data is None for p in no_image.candidates[0].content.parts)
    assert sim.billable() == []
    sim.set_faults("nsfw", FaultProfile(blocked_rate=1.0))
    assert not client(sim, "nsfw").models.generate_content(model=MODEL, contents="x").candidates


def test_jpeg_declared_as_png_and_wrong_size(sim: Simulator) -> None:
    c = client(sim)
    jpeg = final_image(c.models.generate_content(model=MODEL, contents="x [sim:jpeg_as_png]"))
    assert jpeg.inline_data.mime_type == "image/png" and jpeg.inline_data.data.startswith(b"\xff\xd8\xff")
    wrong = final_image(
        c.models.generate_content(model=MODEL, contents="x [sim:wrong_size]", config=image_config())
    )
    assert pixels(wrong.inline_data.data) != (1024, 1024)
    assert len(sim.billable()) == 2  # both were 200s with an image: Google bills them


def test_marker_400(sim: Simulator) -> None:
    with pytest.raises(errors.ClientError) as info:
        client(sim).models.generate_content(model=MODEL, contents="x [sim:400]")
    assert info.value.code == 400 and info.value.status == "INVALID_ARGUMENT"


def test_latency_is_applied_without_blocking(sim: Simulator) -> None:
    sim.set_faults("slow", FaultProfile(latency_ms=(300.0, 300.0)))

    async def run() -> float:
        c = client(sim, "slow")
        started = time.monotonic()
        await asyncio.gather(
            *(c.aio.models.generate_content(model=MODEL, contents=f"s{i}") for i in range(4))
        )
        return time.monotonic() - started

    elapsed = asyncio.run(run())
    assert 0.3 <= elapsed < 1.1  # concurrent, not 4 x 0.3 s


def test_no_key_is_refused(sim: Simulator) -> None:
    resp = httpx.post(f"{sim.base_url}/v1/models/{MODEL}:generateContent", json={"contents": []})
    assert resp.status_code == 403 and resp.json()["error"]["status"] == "PERMISSION_DENIED"


# --- admin --------------------------------------------------------------------------------------


def test_admin_endpoints(sim: Simulator) -> None:
    base = sim.base_url
    r = httpx.put(
        f"{base}/_simulator/faults",
        json={"key": "secret-key-1", "profile": {"name": "ch1", "overload_rate": 1}},
    )
    assert (
        r.status_code == 200
        and "secret-key-1" not in r.text
        and r.json()["keys"]["ch1"]["overload_rate"] == 1
    )
    with pytest.raises(errors.ServerError):
        client(sim, "secret-key-1").models.generate_content(model=MODEL, contents="x")
    r = httpx.put(
        f"{base}/_simulator/faults", json={"keys": {"secret-key-1": {"name": "ch1"}}, "default": {}}
    )
    assert r.status_code == 200
    client(sim, "secret-key-1").models.generate_content(model=MODEL, contents="x")
    ledger = httpx.get(f"{base}/_simulator/ledger").json()
    assert [e["status"] for e in ledger["requests"]] == [503, 200]
    assert ledger["billable"][0]["key_id"] == "ch1" and "secret-key-1" not in str(ledger)
    assert httpx.get(f"{base}/_simulator/faults").status_code == 200
    assert (
        httpx.put(f"{base}/_simulator/faults", json={"key": "k", "profile": {"nope": 1}}).status_code == 400
    )
    assert httpx.post(f"{base}/_simulator/reset").json()["reset"] is True
    assert httpx.get(f"{base}/_simulator/ledger").json() == {"requests": [], "billable": [], "jobs": []}
