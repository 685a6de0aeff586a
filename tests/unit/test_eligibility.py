"""Official-only items and Search grounding: who operates a channel, the per-item candidate
filter (``routing.eligibility``) in the router and the planner, manifest fields, request building."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from airflow_banana.batch.requests import inline_request, jsonl_line
from airflow_banana.channels.config import ChannelConfig, parse_channel
from airflow_banana.channels.gemini import GeminiChannel, grounding_summary, parse_generate_response
from airflow_banana.exceptions import ChannelError, ConfigurationError, ErrorClass, NoEligibleChannelError
from airflow_banana.manifests import read_manifest
from airflow_banana.manifests.packed import PackedItems
from airflow_banana.models import ImageRequest
from airflow_banana.planning.planner import BatchLane, LaneCapacity, PlanItem, make_plan
from airflow_banana.routing import (
    Attempt,
    BreakerConfig,
    FakeClock,
    GiveUp,
    GiveUpReason,
    ItemProgress,
    RouterConfig,
    ThrottleConfig,
    router_for,
)
from airflow_banana.routing.eligibility import ItemNeeds, allowed, refusal, require_servable
from airflow_banana.storage.objects import open_storage


def conn(name: str, protocol: str, host: str | None = None, **extra: object) -> ChannelConfig:
    if protocol == "vertex":
        extra.setdefault("project", "p")
        extra.setdefault("location", "global")
    return parse_channel(name, host=host, password="k", extra={"protocol": protocol, **extra})


# ------------------------------------------------------------------ who operates a channel


def test_google_direct_and_vertex_are_official_relays_are_not() -> None:
    assert conn("g", "gemini").official  # default host generativelanguage.googleapis.com
    assert conn("v", "vertex").official  # the SDK's own endpoint
    assert conn("v2", "vertex", "https://europe-west4-aiplatform.googleapis.com").official
    assert not conn("native", "gemini", "https://relay.example.com").official
    assert not conn("or", "openai").official
    # a look-alike host is not Google's
    assert not conn("fake", "gemini", "https://generativelanguage.googleapis.com.evil.example").official


def test_the_connection_extra_decides_when_given() -> None:
    assert conn("own-proxy", "gemini", "https://proxy.corp.example", official=True).official
    assert conn("sim", "gemini", "http://127.0.0.1:8080", official="true").official
    assert not conn("g", "gemini", official=False).official


def test_grounding_on_google_by_default_on_native_relays_only_when_said_never_on_openai() -> None:
    assert conn("g", "gemini").grounding and conn("v", "vertex").grounding
    assert not conn("native", "gemini", "https://relay.example.com").grounding
    assert conn("native", "gemini", "https://relay.example.com", supports_grounding=True).grounding
    assert not conn("g", "gemini", supports_grounding=False).grounding
    assert not conn("or", "openai").grounding
    with pytest.raises(ConfigurationError, match=r"'or'.*cannot carry Gemini's Google Search tool"):
        conn("or", "openai", supports_grounding=True)


# ------------------------------------------------------------------ the filter

GOOGLE = conn("google", "gemini")
VERTEX = conn("vertex", "vertex")
NATIVE = conn("native", "gemini", "https://relay.example.com", prices={"1K": 0.03, "2K": 0.03, "4K": 0.03})
RELAY = conn("relay", "openai", prices={"1K": 0.02, "2K": 0.02, "4K": 0.02})
ALL = [RELAY, NATIVE, GOOGLE, VERTEX]


def test_refusal_names_why() -> None:
    official = ItemNeeds(data_policy="official_only")
    grounded = ItemNeeds(grounding="google_search")
    assert [c.name for c in allowed(ALL, official)] == ["google", "vertex"]
    assert [c.name for c in allowed(ALL, grounded)] == ["google", "vertex"]
    assert [c.name for c in allowed(ALL, ItemNeeds())] == ["relay", "native", "google", "vertex"]
    assert "not an official Google channel" in (refusal(RELAY, official) or "")
    assert "cannot carry google_search grounding" in (refusal(RELAY, grounded) or "")


def test_require_servable_names_every_item_and_why_before_any_spend() -> None:
    items = [
        ("ok", ItemNeeds()),
        ("secret-1", ItemNeeds(data_policy="official_only")),
        ("grounded", ItemNeeds(grounding="google_search")),
    ]
    require_servable(items, ALL, who="gen", lane="realtime")  # Google channels configured: fine
    with pytest.raises(NoEligibleChannelError) as caught:
        require_servable(items, [RELAY, NATIVE], who="gen", lane="realtime")
    message = str(caught.value)
    assert caught.value.item_ids == ("secret-1", "grounded")
    assert "item 'secret-1' (data_policy official_only)" in message
    assert "'relay': not an official Google channel" in message
    assert "item 'grounded' (grounding google_search)" in message
    assert "Nothing was sent or spent" in message
    assert "k" not in json.dumps(caught.value.item_ids)  # no key anywhere near it


def make_router(channels: list[ChannelConfig]):
    clock = FakeClock()
    router = router_for(
        channels,
        clock,
        random.Random(1),
        config=RouterConfig(objective="fastest"),
        breaker=BreakerConfig(jitter=0.0),
        throttle=ThrottleConfig(enabled=False),
    )
    return router, clock


def test_router_never_offers_a_relay_to_an_official_only_item_even_when_google_is_failing() -> None:
    router, _clock = make_router(ALL)
    plain = ItemProgress.for_request(ImageRequest("plain", "p"))
    first = router.next_action(plain)
    assert isinstance(first, Attempt) and first.channel == "relay"  # cheapest wins for a plain item
    secret = ItemProgress.for_request(ImageRequest("secret", "p", data_policy="official_only"))
    seen = []
    for _ in range(8):  # a 503 storm on Google: it fails over between official channels only
        action = router.next_action(secret, _clock.now())
        if not isinstance(action, Attempt):
            _clock.advance(60)
            continue
        seen.append(action.channel)
        router.report_failure(
            secret,
            action.permit,
            ChannelError("503", channel=action.channel, error_class=ErrorClass.RETRYABLE),
        )
    assert seen and set(seen) <= {"google", "vertex"}


def test_router_gives_up_an_item_no_channel_may_carry() -> None:
    router, _clock = make_router([RELAY, NATIVE])
    item = ItemProgress.for_request(ImageRequest("g", "p", grounding="google_search"))
    action = router.next_action(item)
    assert isinstance(action, GiveUp) and action.reason is GiveUpReason.NO_CHANNEL
    assert "no channel may carry it (grounding google_search)" in action.detail


# ------------------------------------------------------------------ planner

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
OFFICIAL_LANES = frozenset({"google", "batch:developer"})
RETRYABLE = ErrorClass.RETRYABLE


def test_planner_prices_official_only_items_on_official_lanes_only() -> None:
    relay = LaneCapacity("relay", 60, 1.0, {"1K": 0.05})
    google = LaneCapacity("google", 60, 1.0, {"1K": 0.134})
    batch = BatchLane("batch:developer", {"1K": 0.067}, turnaround=timedelta(hours=24))
    soon = NOW + timedelta(hours=1)
    items = [
        PlanItem("plain", "1K", soon),
        PlanItem("secret", "1K", soon, lanes=OFFICIAL_LANES),
        PlanItem("secret-late", "1K", NOW + timedelta(days=2), lanes=OFFICIAL_LANES),
        PlanItem("nowhere", "1K", soon, lanes=frozenset()),
    ]
    plan = make_plan(items, now=NOW, realtime=[relay, google], batch=[batch])
    lanes = {a.item_id: a.lane for a in plan.assignments}
    assert lanes == {"plain": "relay", "secret": "google", "secret-late": "batch:developer"}
    assert plan.assignment("secret").expected_cost_usd == pytest.approx(0.134)
    (bad,) = plan.infeasible
    assert (bad.item_id, bad.code, bad.earliest_achievable) == ("nowhere", "no_eligible_lane", None)


# ------------------------------------------------------------------ manifest fields


def test_manifest_policy_strictest_wins_and_grounding_defaults(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    lines = [
        {"manifest_version": 1, "defaults": {"grounding": "google_search"}},
        {"id": "a", "prompt": "x"},
        {"id": "b", "prompt": "x", "data_policy": "official_only", "grounding": "none"},
        {"id": "c", "prompt": "x", "data_policy": "any"},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = read_manifest(str(path), open_storage(), defaults={"data_policy": "official_only"})
    got = {i.id: (i.data_policy, i.grounding) for i in result.items}
    # an item cannot loosen the operator's official_only; "none" turns a grounding default off
    assert got == {
        "a": ("official_only", "google_search"),
        "b": ("official_only", None),
        "c": ("official_only", "google_search"),
    }
    plain = read_manifest(str(path), open_storage())
    assert {i.id: i.data_policy for i in plain.items} == {"a": "any", "b": "official_only", "c": "any"}
    item = result.items[1]
    assert PackedItems([item])[0] == item and PackedItems([item])[0].data_policy == "official_only"
    assert item.to_dict()["data_policy"] == "official_only"
    request = result.items[0].to_request()
    assert (request.data_policy, request.grounding) == ("official_only", "google_search")


def test_manifest_rejects_an_unknown_policy(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"id": "a", "prompt": "x", "data_policy": "google-ish"}) + "\n")
    result = read_manifest(str(path), open_storage(), on_invalid="quarantine")
    assert not result.items and result.rejects[0].field == "data_policy"


def test_grounding_is_part_of_the_fingerprint_the_policy_is_not() -> None:
    base = ImageRequest("a", "p")
    assert ImageRequest("a", "p", data_policy="official_only").fingerprint() == base.fingerprint()
    assert ImageRequest("a", "p", grounding="google_search").fingerprint() != base.fingerprint()


# ------------------------------------------------------------------ request building


def test_a_grounded_request_carries_the_search_tool_realtime_and_batch() -> None:
    from google.genai import types

    channel = GeminiChannel(GOOGLE)
    grounded = ImageRequest("a", "p", grounding="google_search")
    config = channel._generate_config(grounded)
    assert config.tools == [types.Tool(google_search=types.GoogleSearch())]
    assert channel._generate_config(ImageRequest("a", "p")).tools is None
    assert json.loads(jsonl_line(grounded))["request"]["tools"] == [{"googleSearch": {}}]
    assert "tools" not in json.loads(jsonl_line(ImageRequest("a", "p")))["request"]
    assert inline_request(grounded)["config"]["tools"] == [{"google_search": {}}]
    # the inline shape is what the SDK validates for batches.create(src=[...])
    types.InlinedRequest.model_validate({**inline_request(grounded), "model": "m"})
    with pytest.raises(ConfigurationError, match="does not carry google_search grounding"):
        GeminiChannel(NATIVE)._generate_config(grounded)


def test_grounding_metadata_is_read_in_either_spelling() -> None:
    wire = {
        "groundingMetadata": {
            "webSearchQueries": ["eiffel tower height"],
            "groundingChunks": [
                {"web": {"uri": "https://x/1", "title": "wikipedia.org"}},
                {"retrievedContext": {"uri": "gs://b/doc"}},
            ],
            "searchEntryPoint": {"renderedContent": "<div>chips</div>"},
        }
    }
    expected = {
        "web_search_queries": ["eiffel tower height"],
        "sources": [{"uri": "https://x/1", "title": "wikipedia.org"}],
        "search_entry_point": "<div>chips</div>",
    }
    assert grounding_summary(wire) == expected
    from google.genai import types

    dumped = types.Candidate.model_validate(wire).model_dump(mode="json", exclude_none=True)
    assert "grounding_metadata" in dumped and grounding_summary(dumped) == expected
    assert grounding_summary({}) is None
    body = {"candidates": [{**wire, "content": {"parts": [{"text": "t"}]}, "finishReason": "STOP"}]}
    assert parse_generate_response(body).grounding == expected


def test_plan_step_and_estimate_price_official_only_items_on_official_lanes() -> None:
    from airflow_banana.manifests import ManifestItem
    from airflow_banana.planning.estimate import estimate_scenarios, render_estimate
    from airflow_banana.planning.manifest import compute_plan

    relay = conn("relay", "openai", rpm=60, prices={"1K": 0.02, "2K": 0.02, "4K": 0.02})
    google = conn("google", "gemini", rpm=60)
    items = [
        ManifestItem("plain", "p", deadline="+1h"),
        ManifestItem("secret", "p", deadline="+1h", data_policy="official_only"),
        ManifestItem("grounded", "p", deadline="+1h", grounding="google_search"),
    ]
    computed = compute_plan(items, configs=[relay, google], batch="developer", now=NOW, logical_date=NOW)
    lanes = {a.item_id: (a.lane, a.expected_cost_usd) for a in computed.plan.assignments}
    assert lanes == {"plain": ("relay", 0.02), "secret": ("google", 0.134), "grounded": ("google", 0.134)}
    estimate = estimate_scenarios(computed)
    assert estimate["scenarios"][-1]["cost_usd"] == pytest.approx(0.02 + 2 * 0.134)
    assert estimate["restricted"] == 2
    assert "2 item(s) are official-only or grounded" in render_estimate(estimate)
    # no official realtime channel and no batch lane: nothing may carry them, before any spend
    none = compute_plan(items, configs=[relay], batch=None, now=NOW, logical_date=NOW)
    assert {b.item_id: b.code for b in none.plan.infeasible} == {
        "secret": "no_eligible_lane",
        "grounded": "no_eligible_lane",
    }
    # a deadline the batch lane can make: the official-only item goes there, at the batch price
    later = [ManifestItem("secret", "p", deadline="+3d", data_policy="official_only")]
    (only,) = compute_plan(
        later, configs=[relay], batch="developer", now=NOW, logical_date=NOW
    ).plan.assignments
    assert (only.lane, only.kind) == ("batch:developer", "batch")
