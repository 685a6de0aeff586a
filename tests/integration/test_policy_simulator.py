"""Official-only items and Search grounding through the real google-genai SDK and httpx, over HTTP
to the simulator, proved from its ledger.

Four real channels: an OpenAI-compatible relay and a Gemini-native relay (both cheap, both not
official), Google direct and Vertex (the simulator runs on 127.0.0.1, so their connections say
``official: true``, as a private endpoint of one's own Google project would). The ledger names
the request fingerprint and the tools of EVERY generation request, answered or not, so "zero
official-only requests reached a relay's key" is checked over failed calls too.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from realtime_sim import FAST_BREAKER, FAST_ROUTER, FAST_THROTTLE, GENERATION_ROUTES, MINUTE_S

from airflow_banana.batch.requests import jsonl_line
from airflow_banana.channels import build_channel
from airflow_banana.channels.config import ChannelConfig, parse_channel
from airflow_banana.models import ImageRequest
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

CHEAP = {"1K": 0.02, "2K": 0.02, "4K": 0.02}
NATIVE_PRICES = {"1K": 0.03, "2K": 0.03, "4K": 0.03}
# name -> (protocol, key, extra)
CHANNELS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "relay": ("openai", "relay-key", {"prices": CHEAP}),
    "native": ("gemini", "native-key", {"prices": NATIVE_PRICES}),
    "google": ("gemini", "google-key", {"official": True}),
    "vertex": ("vertex", "vertex-token", {"official": True}),
}
RELAYS = {"relay", "native"}


@pytest.fixture(scope="module")
def policy_sim() -> Iterator[Simulator]:
    importlib.import_module("google.genai")  # pay the SDK import before any timed attempt
    with Simulator(SimulatorConfig(minute_s=MINUTE_S, day_s=3.0), modules=GENERATION_ROUTES) as simulator:
        yield simulator


@pytest.fixture
def sim(policy_sim: Simulator) -> Iterator[Simulator]:
    policy_sim.reset(faults=True)
    for name, (_protocol, key, _extra) in CHANNELS.items():
        policy_sim.set_faults(key, FaultProfile(name=name))
    yield policy_sim
    policy_sim.reset(faults=True)


def configs(sim: Simulator, names: Sequence[str] = tuple(CHANNELS)) -> list[ChannelConfig]:
    out = []
    for name in names:
        protocol, key, extra = CHANNELS[name]
        conn = json.loads(channel_connection(sim.base_url, protocol=protocol, key=key, timeout=5, **extra))
        out.append(parse_channel(name, host=conn["host"], password=conn["password"], extra=conn["extra"]))
    return out


def run(
    sim: Simulator, channels: list[ChannelConfig], work: list[WorkItem], out: Path
) -> tuple[RunResult, dict]:
    router = router_for(
        channels,
        SystemClock(),
        random.Random(3),
        config=RouterConfig(**FAST_ROUTER),
        breaker=FAST_BREAKER,
        throttle=FAST_THROTTLE,
    )
    store = OutputStore(open_storage(), str(out))
    built = {c.name: build_channel(c) for c in channels}
    engine = RealtimeEngine(
        channels=built,
        router=router,
        store=store,
        run_key="policy-run",
        settings=RealtimeSettings(progress_interval_s=60.0),
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
        run_key="policy-run",
        lane="realtime",
        started_at=result.started_at,
        finished_at=result.finished_at,
        breaker_openings=result.breaker_openings,
    )
    store.write_report("policy-run", report)
    return result, report


def generation_requests(sim: Simulator) -> list[dict[str, Any]]:
    return [r for r in sim.requests() if r["method"] == "POST" and r["fingerprint"]]


def test_official_only_items_never_reach_a_relay_key_under_a_google_503_storm(sim, tmp_path):
    # Google answers most calls 503 while both relays are healthy and far cheaper: the router
    # ranks the relays first, and still only official channels may see the official-only items.
    for name in ("google", "vertex"):
        sim.set_faults(CHANNELS[name][1], FaultProfile(name=name, overload_rate=0.6))
    work = [
        WorkItem(
            ImageRequest(
                f"item-{i:02d}",
                f"patient leaflet illustration {i}",
                data_policy="official_only" if i % 2 else "any",
            )
        )
        for i in range(12)
    ]
    official = {w.request.fingerprint(): w.request.item_id for w in work if w.request.official_only}
    plain = {w.request.fingerprint() for w in work if not w.request.official_only}

    result, report = run(sim, configs(sim), work, tmp_path)

    requests = generation_requests(sim)
    to_relays = [r for r in requests if r["key_id"] in RELAYS]
    assert not [r for r in to_relays if r["fingerprint"] in official], "an official-only item reached a relay"
    # the ledger does see what the relays got (the plain items), so the zero above is a real zero
    assert {r["fingerprint"] for r in to_relays} & plain
    # ... and the storm was real: official-only items met 503s and were failed over among Google's own
    storm = [r for r in requests if r["fingerprint"] in official and r["status"] == 503]
    assert storm and {r["key_id"] for r in storm} <= {"google", "vertex"}
    assert not [b for b in sim.billable() if b["key_id"] in RELAYS and b["fingerprint"] in official]

    store = OutputStore(open_storage(), str(tmp_path))
    for outcome in result.outcomes:
        meta = store.storage.read_json(store.metadata_uri(outcome.item_id))
        if outcome.item_id in official.values():
            assert meta["data_policy"] == "official_only"
            assert {a["channel"] for a in meta["attempts"]} <= {"google", "vertex"}
        else:
            assert meta["data_policy"] == "any"
    policies = report["policies"]
    assert policies["data_policy"] == {"any": 6, "official_only": 6}
    assert set(policies["official_only_channels"]) <= {"google", "vertex"}
    assert "6 item(s) `official_only`: sent only to official Google channels" in render_markdown(report)
    assert len([o for o in result.outcomes if o.status == "succeeded"]) >= 10  # the storm is ridden out


def test_grounded_items_carry_the_search_tool_and_store_what_they_were_grounded_in(sim, tmp_path):
    work = [
        WorkItem(
            ImageRequest("infographic", "Infographic of the tallest buildings", grounding="google_search")
        ),
        WorkItem(ImageRequest("mug", "Studio photo of a blue mug")),
    ]
    grounded_fp = work[0].request.fingerprint()
    result, report = run(sim, configs(sim, ("relay", "native", "google")), work, tmp_path)
    assert [o.status for o in result.outcomes] == ["succeeded", "succeeded"]

    by_fp = {}
    for r in generation_requests(sim):
        by_fp.setdefault(r["fingerprint"], []).append(r)
    # only the channel that carries the tool got the grounded item, and the tool was on the wire
    assert {r["key_id"] for r in by_fp[grounded_fp]} == {"google"}
    assert all(r["tools"] == ["googleSearch"] for r in by_fp[grounded_fp])
    mug = by_fp[work[1].request.fingerprint()]
    assert {r["key_id"] for r in mug} == {"relay"} and all(r["tools"] == [] for r in mug)  # cheapest
    (paid,) = [b for b in sim.billable() if b["fingerprint"] == grounded_fp]
    assert paid["key_id"] == "google"

    store = OutputStore(open_storage(), str(tmp_path))
    meta = store.storage.read_json(store.metadata_uri("infographic"))
    assert meta["grounding"] == "google_search" and meta["channel"] == "google"
    grounding = meta["grounding_metadata"]
    assert grounding["web_search_queries"] and all(
        isinstance(q, str) for q in grounding["web_search_queries"]
    )
    assert grounding["sources"] and all(
        s["uri"].startswith("https://") and s["title"] for s in grounding["sources"]
    )
    assert "<div" in grounding["search_entry_point"]
    plain = store.storage.read_json(store.metadata_uri("mug"))
    assert plain["grounding"] is None and "grounding_metadata" not in plain
    assert report["policies"]["grounded"] == 1 and report["policies"]["grounded_channels"] == ["google"]


def test_a_grounded_item_with_no_channel_for_it_fails_without_any_request(sim, tmp_path):
    work = [
        WorkItem(
            ImageRequest("g", "chart of rainfall", grounding="google_search", data_policy="official_only")
        )
    ]
    result, _report = run(sim, configs(sim, ("relay", "native")), work, tmp_path)
    (outcome,) = result.outcomes
    assert outcome.status == "not_attempted" and "no channel may carry it" in outcome.reason
    assert not generation_requests(sim) and not sim.billable()


def test_simulator_batch_line_with_the_tool_is_answered_with_grounding_metadata(sim):
    # The same generateContent body a batch JSONL line carries, sent through the SDK's own client.
    from google import genai
    from google.genai import types

    request = ImageRequest("b", "Infographic of the water cycle", grounding="google_search")
    body = json.loads(jsonl_line(request))["request"]
    assert body["tools"] == [{"googleSearch": {}}]
    client = genai.Client(api_key="google-key", http_options=types.HttpOptions(base_url=sim.base_url))
    response = client.models.generate_content(
        model="gemini-3-pro-image-preview",
        contents=request.prompt,
        config=types.GenerateContentConfig(
            response_modalities=["TEXT", "IMAGE"],
            tools=[types.Tool(google_search=types.GoogleSearch())],
        ),
    )
    meta = response.candidates[0].grounding_metadata
    assert meta.web_search_queries and meta.grounding_chunks[0].web.uri
    assert meta.search_entry_point.rendered_content
    (entry,) = generation_requests(sim)
    assert entry["tools"] == ["googleSearch"] and entry["fingerprint"] == request.fingerprint()
