"""Model tiers through the real google-genai SDK and httpx, over HTTP to the simulator.

A Google connection declaring ``extra.models`` for Flash Image becomes two router channels
(Pro, Flash) on one key; the simulator's ledger names the model of every billed image and the
path (``models/{model}:generateContent``) of every call, so "a 2K item never reached Flash" is
checked over every request, not only paid ones.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from realtime_sim import FAST_BREAKER, FAST_ROUTER, FAST_THROTTLE, GENERATION_ROUTES, MINUTE_S

from airflow_banana.channels import build_channel
from airflow_banana.channels.config import ChannelConfig, parse_channels
from airflow_banana.models import FLASH_IMAGE_MODEL, ImageRequest
from airflow_banana.realtime.engine import RealtimeEngine, RealtimeSettings, RunResult, WorkItem
from airflow_banana.routing import RouterConfig, SystemClock, router_for
from airflow_banana.storage.objects import open_storage
from airflow_banana.storage.outputs import OutputStore
from airflow_banana.storage.report import build_report, render_markdown
from airflow_banana.testing import FaultProfile
from airflow_banana.testing.config import SimulatorConfig
from airflow_banana.testing.connections import channel_connection
from airflow_banana.testing.server import Simulator

pytestmark = pytest.mark.integration

PRO = "gemini-3-pro-image-preview"
FLASH_CH = f"google/{FLASH_IMAGE_MODEL}"
FLASH = (FLASH_IMAGE_MODEL,)


@pytest.fixture(scope="module")
def tier_sim() -> Iterator[Simulator]:
    importlib.import_module("google.genai")  # pay the SDK import before any timed attempt
    with Simulator(SimulatorConfig(minute_s=MINUTE_S, day_s=3.0), modules=GENERATION_ROUTES) as simulator:
        yield simulator


@pytest.fixture
def sim(tier_sim: Simulator) -> Iterator[Simulator]:
    tier_sim.reset(faults=True)
    yield tier_sim
    tier_sim.reset(faults=True)


def configs(sim: Simulator, name: str, protocol: str, key: str, **extra: Any) -> list[ChannelConfig]:
    conn = json.loads(channel_connection(sim.base_url, protocol=protocol, key=key, timeout=5, **extra))
    return parse_channels(name, host=conn["host"], password=conn["password"], extra=conn["extra"])


def run(channels: list[ChannelConfig], work: list[WorkItem], out: Path) -> tuple[RunResult, dict]:
    router = router_for(
        channels,
        SystemClock(),
        random.Random(3),
        config=RouterConfig(**{**FAST_ROUTER, "max_attempts_per_item": 3}),
        breaker=FAST_BREAKER,
        throttle=FAST_THROTTLE,
    )
    store = OutputStore(open_storage(), str(out))
    built = {c.name: build_channel(c) for c in channels}
    engine = RealtimeEngine(
        channels=built, router=router, store=store, run_key="tiers-run", settings=RealtimeSettings()
    )

    async def go() -> RunResult:
        try:
            return await engine.run(work)
        finally:
            for channel in built.values():
                await channel.aclose()

    result = asyncio.run(go())
    report = build_report(
        result.outcomes,
        run_key="tiers-run",
        lane="realtime",
        started_at=result.started_at,
        finished_at=result.finished_at,
        breaker_openings=result.breaker_openings,
    )
    return result, report


def flash_calls(sim: Simulator) -> list[dict[str, Any]]:
    return [r for r in sim.requests() if r["method"] == "POST" and FLASH_IMAGE_MODEL in r["path"]]


def test_an_allowing_item_lands_on_flash_a_2k_item_never_does(sim, tmp_path):
    channels = configs(sim, "google", "gemini", "google-key", official=True, models={FLASH_IMAGE_MODEL: {}})
    assert [c.name for c in channels] == ["google", FLASH_CH]
    work = [
        WorkItem(ImageRequest("thumb", "thumbnail of a red chair", fallback_models=FLASH)),
        WorkItem(ImageRequest("hero", "hero shot of a red chair", image_size="2K", fallback_models=FLASH)),
        WorkItem(ImageRequest("label", "a label with the exact text 'Chair No. 5'")),
    ]
    result, report = run(channels, work, tmp_path)
    assert [o.status for o in result.outcomes] == ["succeeded"] * 3

    billed = {(b["model"], b["image_size"]) for b in sim.billable()}
    assert billed == {(FLASH_IMAGE_MODEL, "1K"), (PRO, "2K"), (PRO, "1K")}
    # every call that reached Flash (answered or not) was the one 1K item that allows it
    assert len(flash_calls(sim)) == 1 and [b["model"] for b in sim.billable()].count(FLASH_IMAGE_MODEL) == 1

    store = OutputStore(open_storage(), str(tmp_path))
    thumb = store.storage.read_json(store.metadata_uri("thumb"))
    assert (thumb["model"], thumb["channel"], thumb["cost_usd"]) == (FLASH_IMAGE_MODEL, FLASH_CH, 0.039)
    assert thumb["requested_models"] == [PRO, FLASH_IMAGE_MODEL]
    hero = store.storage.read_json(store.metadata_uri("hero"))
    assert (hero["model"], hero["channel"], hero["cost_usd"]) == (PRO, "google", 0.134)
    assert report["models"] == {FLASH_IMAGE_MODEL: 1, PRO: 2}
    assert report["channels"][FLASH_CH]["spend_usd"] == pytest.approx(0.039)
    assert report["cost"]["spent_usd"] == pytest.approx(0.039 + 0.134 + 0.134)
    assert "Images per model: gemini-2.5-flash-image: 1, gemini-3-pro-image-preview: 2" in render_markdown(
        report
    )


def test_when_pro_cannot_deliver_an_allowing_item_fails_over_to_flash_only(sim, tmp_path):
    # Pro at a negotiated price below Flash, so the cost-first router tries it first; it answers
    # 503 to everything. The item allowing Flash is made by Flash; the others are never sent there.
    sim.set_faults("pro-key", FaultProfile(name="pro-down", fixed_status=503))
    pro = configs(sim, "pro", "gemini", "pro-key", prices={"1K": 0.01, "2K": 0.01, "4K": 0.01})
    nano = configs(sim, "nano", "gemini", "nano-key", model=FLASH_IMAGE_MODEL)
    work = [
        WorkItem(ImageRequest("thumb", "thumbnail of a lamp", fallback_models=FLASH)),
        WorkItem(ImageRequest("hero", "hero shot of a lamp", image_size="2K", fallback_models=FLASH)),
        WorkItem(ImageRequest("label", "a label with the exact text 'Lamp'")),
    ]
    result, _report = run(pro + nano, work, tmp_path)
    status = {o.item_id: o.status for o in result.outcomes}
    assert status == {"thumb": "succeeded", "hero": "failed", "label": "failed"}
    assert sim.requests("pro-down"), "Pro was tried first"
    nano_calls = [r for r in sim.requests() if r["method"] == "POST" and r["key_id"] != "pro-down"]
    assert len(nano_calls) == 1 and FLASH_IMAGE_MODEL in nano_calls[0]["path"]
    (paid,) = sim.billable()
    assert (paid["model"], paid["image_size"]) == (FLASH_IMAGE_MODEL, "1K")
    meta = OutputStore(open_storage(), str(tmp_path)).storage.read_json(
        OutputStore(open_storage(), str(tmp_path)).metadata_uri("thumb")
    )
    assert meta["model"] == FLASH_IMAGE_MODEL and [a["channel"] for a in meta["attempts"]][-1] == "nano"


def test_a_relay_tier_sends_the_relays_spelling_of_flash(sim, tmp_path):
    channels = configs(
        sim, "relay", "openai", "relay-key", models={FLASH_IMAGE_MODEL: {"prices": {"1K": 0.02}}}
    )
    result, _report = run(
        channels, [WorkItem(ImageRequest("t", "a teacup", fallback_models=FLASH))], tmp_path
    )
    (outcome,) = result.outcomes
    assert (outcome.status, outcome.channel, outcome.model) == (
        "succeeded",
        f"relay/{FLASH_IMAGE_MODEL}",
        f"google/{FLASH_IMAGE_MODEL}",
    )
    (paid,) = sim.billable()
    assert paid["model"] == FLASH_IMAGE_MODEL


def test_simulator_answers_a_2k_flash_request_with_googles_400_and_flash_is_faster(sim):
    from google import genai
    from google.genai import errors, types

    sim.set_faults("lat-key", FaultProfile(name="lat", latency_ms=(400.0, 400.0)))
    client = genai.Client(api_key="lat-key", http_options=types.HttpOptions(base_url=sim.base_url))

    def call(model: str, size: str) -> Any:
        return client.models.generate_content(
            model=model,
            contents="a paper boat",
            config=types.GenerateContentConfig(
                response_modalities=["TEXT", "IMAGE"], image_config=types.ImageConfig(image_size=size)
            ),
        )

    with pytest.raises(errors.ClientError) as caught:
        call(FLASH_IMAGE_MODEL, "2K")
    assert caught.value.code == 400 and caught.value.status == "INVALID_ARGUMENT"
    assert "supports 1K only" in str(caught.value.message)
    assert call(FLASH_IMAGE_MODEL, "1K").candidates[0].content.parts
    assert call(PRO, "1K").candidates[0].content.parts
    answered = [r for r in sim.requests("lat") if r["method"] == "POST" and r["status"] == 200]
    flash_ms, pro_ms = (r["latency_ms"] for r in answered)
    assert pro_ms >= 400 and flash_ms < pro_ms / 2  # 3-4x faster: 0.3 of the key's latency
    assert not [b for b in sim.billable() if b["image_size"] == "2K"]  # the refused call is not billed


def test_test_connection_probes_every_model_tier_for_free(sim, monkeypatch):
    from airflow_banana.hooks import BananaChannelHook
    from airflow_banana.testing.connections import conn_env_var

    monkeypatch.setenv(
        conn_env_var("banana_tiers"),
        channel_connection(sim.base_url, protocol="gemini", key="probe-key", models=[FLASH_IMAGE_MODEL]),
    )
    ok, message = BananaChannelHook("banana_tiers").test_connection()
    assert ok, message
    assert f"model tier {FLASH_IMAGE_MODEL}" in message and "probe-key" not in message
    gets = [r["path"] for r in sim.requests() if r["method"] == "GET"]
    assert len(gets) == 2 and any(FLASH_IMAGE_MODEL in p for p in gets)
    assert sim.billable() == []
