"""Model tiers (Nano Banana Pro and Flash Image): a connection's ``extra.models`` expanded into
router channels, their price tables, the per-item filter with models and sizes, the model a
channel sends, manifest fields, and the planner pricing items on their allowed lanes."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from airflow_banana.channels.config import ChannelConfig, parse_channels
from airflow_banana.channels.gemini import resolve_model
from airflow_banana.channels.openai_compat import resolve_model as relay_model
from airflow_banana.exceptions import ConfigurationError, NoEligibleChannelError
from airflow_banana.manifests import read_manifest
from airflow_banana.manifests.packed import PackedItems
from airflow_banana.models import FLASH_IMAGE_MODEL, ImageRequest, sizes_of
from airflow_banana.planning.inputs import lane_capacity, plan_items
from airflow_banana.planning.planner import make_plan
from airflow_banana.pricing import price_table
from airflow_banana.routing import (
    Attempt,
    BreakerConfig,
    FakeClock,
    GiveUp,
    ItemProgress,
    RouterConfig,
    ThrottleConfig,
    Wait,
    router_for,
)
from airflow_banana.routing.eligibility import ItemNeeds, allowed, refusal, require_servable
from airflow_banana.storage.objects import open_storage

PRO = "gemini-3-pro-image-preview"
FLASH_CH = f"google/{FLASH_IMAGE_MODEL}"
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def channels(name: str = "google", protocol: str = "gemini", **extra: object) -> list[ChannelConfig]:
    return parse_channels(name, host=None, password="k", extra={"protocol": protocol, **extra})


def tiered() -> list[ChannelConfig]:
    return channels(timeout=30, models={FLASH_IMAGE_MODEL: {"rpm": 100}})


# ------------------------------------------------------------------ expansion and prices


def test_a_connection_with_models_is_one_router_channel_per_model() -> None:
    pro, flash = tiered()
    assert (pro.name, pro.model, pro.conn_id) == ("google", PRO, "google")
    assert (flash.name, flash.model, flash.conn_id) == (FLASH_CH, FLASH_IMAGE_MODEL, "google")
    assert pro.prices == {"1K": 0.134, "2K": 0.134, "4K": 0.24}
    assert flash.prices == {"1K": 0.039}  # PRICING.md: 1K only
    # Google's quotas are per model: the tier has its own rate, not the connection's
    assert flash.rpm == 100 and pro.rpm is None
    assert flash.attempt_timeout_s == pro.attempt_timeout_s == 30  # the rest is the connection's
    limited = channels(rpm=10, models=[FLASH_IMAGE_MODEL])
    assert [c.rpm for c in limited] == [10, None]
    assert flash.api_key.reveal() == pro.api_key.reveal() and flash.official == pro.official
    # a list of names takes the defaults; without models the connection is one channel, as before
    assert [c.name for c in channels(models=[FLASH_IMAGE_MODEL])] == ["google", FLASH_CH]
    assert [c.name for c in channels()] == ["google"]


def test_tier_prices_override_and_a_relay_keeps_its_namespace() -> None:
    _pro, flash = channels("relay", "openai", models={FLASH_IMAGE_MODEL: {"prices": {"1K": 0.02}}})
    assert flash.name == f"relay/{FLASH_IMAGE_MODEL}" and flash.model == f"google/{FLASH_IMAGE_MODEL}"
    assert flash.prices == {"1K": 0.02}
    # a Flash-only connection is priced as Flash
    (only,) = channels("nano", model=FLASH_IMAGE_MODEL)
    assert only.prices == {"1K": 0.039}
    assert price_table("batch", model=FLASH_IMAGE_MODEL) == {"1K": 0.0195}


@pytest.mark.parametrize(
    ("models", "match"),
    [
        ({FLASH_IMAGE_MODEL: {"prices": {"2K": 0.05}}}, "draws 1K only, not 2K"),
        ({FLASH_IMAGE_MODEL: {"colour": "blue"}}, r"unknown key\(s\) \['colour'\]"),
        ({FLASH_IMAGE_MODEL: 3}, "must be an object"),
        ({PRO: {}}, "names 'gemini-3-pro-image-preview' twice"),
        ("flash", "must be a list of model names or an object"),
    ],
)
def test_bad_models_extra_names_the_connection(models: object, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match) as caught:
        channels(models=models)
    assert "channel 'google" in str(caught.value)


# ------------------------------------------------------------------ the filter with models and sizes


def test_a_tier_channel_carries_only_items_that_allow_its_model_at_a_size_it_draws() -> None:
    pro, flash = tiered()
    plain = ItemNeeds(model=PRO, image_size="1K")
    allowing = ItemNeeds(model=PRO, fallback_models=(FLASH_IMAGE_MODEL,), image_size="1K")
    allowing_2k = ItemNeeds(model=PRO, fallback_models=(FLASH_IMAGE_MODEL,), image_size="2K")
    flash_first = ItemNeeds(model=FLASH_IMAGE_MODEL, image_size="1K")
    assert allowed([pro, flash], plain) == [pro]
    assert allowed([pro, flash], allowing) == [pro, flash]
    assert allowed([pro, flash], allowing_2k) == [pro]  # a 2K item never goes to Flash
    assert allowed([pro, flash], flash_first) == [flash]
    assert "serves gemini-2.5-flash-image, a model the item does not allow" in (refusal(flash, plain) or "")
    assert "gemini-2.5-flash-image draws 1K only, not 2K" in (refusal(flash, allowing_2k) or "")
    # an edit session's needs carry no model: its channels are chosen by the session model
    assert allowed([pro, flash], ItemNeeds()) == [pro, flash]
    assert sizes_of(f"google/{FLASH_IMAGE_MODEL}") == ("1K",)


def test_a_relay_alias_still_serves_the_items_own_model() -> None:
    (alias,) = channels("relay", model="relay-alias-pro")  # how that relay spells Pro
    assert allowed([alias], ItemNeeds(model=PRO, image_size="4K")) == [alias]


def test_an_item_no_tier_can_draw_is_refused_before_spend() -> None:
    (nano,) = channels("nano", model=FLASH_IMAGE_MODEL)
    items = [
        ("hero", ItemNeeds(model=FLASH_IMAGE_MODEL, image_size="2K")),
        ("ok", ItemNeeds(model=FLASH_IMAGE_MODEL)),
    ]
    with pytest.raises(NoEligibleChannelError) as caught:
        require_servable(items, [nano], who="gen", lane="realtime")
    assert caught.value.item_ids == ("hero",)
    assert "item 'hero' (2K on gemini-2.5-flash-image)" in str(caught.value)
    assert "extra.models" in str(caught.value)


def test_a_channel_sends_its_own_model_when_the_item_allows_it() -> None:
    allowed_models = (PRO, FLASH_IMAGE_MODEL)
    assert resolve_model(PRO, FLASH_IMAGE_MODEL, allowed_models) == FLASH_IMAGE_MODEL
    assert resolve_model(FLASH_IMAGE_MODEL, PRO, (FLASH_IMAGE_MODEL, PRO)) == PRO
    assert resolve_model(PRO, "relay-alias-pro", (PRO,)) == "relay-alias-pro"  # as before tiers
    assert relay_model(PRO, f"google/{FLASH_IMAGE_MODEL}", allowed_models) == f"google/{FLASH_IMAGE_MODEL}"
    request = ImageRequest("a", "p", fallback_models=(FLASH_IMAGE_MODEL,))
    assert request.allowed_models == allowed_models
    # who may draw it is not what is drawn: the fingerprint is the item's, with or without fallbacks
    assert request.fingerprint() == ImageRequest("a", "p").fingerprint()


def make_router(configs: list[ChannelConfig]):
    return router_for(
        configs,
        FakeClock(),
        random.Random(1),
        config=RouterConfig(),
        breaker=BreakerConfig(jitter=0.0),
        throttle=ThrottleConfig(enabled=False),
    )


def test_the_cost_first_router_sends_an_allowing_item_to_flash_and_a_2k_item_to_pro() -> None:
    router = make_router(tiered())
    cheap = router.next_action(
        ItemProgress.for_request(ImageRequest("a", "p", fallback_models=(FLASH_IMAGE_MODEL,)))
    )
    assert (
        isinstance(cheap, Attempt) and cheap.channel == FLASH_CH and cheap.price_usd == pytest.approx(0.039)
    )
    big = ItemProgress.for_request(
        ImageRequest("b", "p", image_size="2K", fallback_models=(FLASH_IMAGE_MODEL,))
    )
    action = router.next_action(big)
    assert isinstance(action, Attempt) and action.channel == "google"
    plain = router.next_action(ItemProgress.for_request(ImageRequest("c", "p")))
    assert isinstance(plain, Attempt) and plain.channel == "google"


def test_the_router_gives_up_an_item_only_another_model_could_draw() -> None:
    (_pro, flash) = tiered()
    router = make_router([flash])
    action = router.next_action(ItemProgress.for_request(ImageRequest("c", "p")))
    assert isinstance(action, GiveUp) and "no channel may carry it" in action.detail


# ------------------------------------------------------------------ manifest and planner


def test_manifest_fallback_models_from_defaults_and_items(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    lines = [
        {"manifest_version": 1, "defaults": {"fallback_models": [FLASH_IMAGE_MODEL]}},
        {"id": "a", "prompt": "x"},
        {"id": "b", "prompt": "x", "image_size": "2K"},
        {"id": "c", "prompt": "x", "fallback_models": []},
        {"id": "d", "prompt": "x", "model": FLASH_IMAGE_MODEL},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    items = {i.id: i for i in read_manifest(str(path), open_storage()).items}
    assert items["a"].fallback_models == (FLASH_IMAGE_MODEL,)
    assert items["c"].fallback_models == ()  # an item may turn the default off
    assert items["d"].fallback_models == ()  # its primary already
    assert items["a"].to_request().allowed_models == (PRO, FLASH_IMAGE_MODEL)
    assert items["a"].to_dict()["fallback_models"] == [FLASH_IMAGE_MODEL]
    assert PackedItems([items["a"]])[0] == items["a"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "prompt": "x", "fallback_models": "flash"}) + "\n")
    result = read_manifest(str(bad), open_storage(), on_invalid="quarantine")
    assert not result.items and result.rejects[0].field == "fallback_models"


def test_the_planner_prices_each_item_on_its_allowed_model_tiers(tmp_path: Path) -> None:
    configs = tiered()
    path = tmp_path / "m.jsonl"
    lines = [
        {"id": "a", "prompt": "x", "fallback_models": [FLASH_IMAGE_MODEL]},
        {"id": "b", "prompt": "x", "image_size": "2K", "fallback_models": [FLASH_IMAGE_MODEL]},
        {"id": "c", "prompt": "x"},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    items = read_manifest(str(path), open_storage()).items
    planned = plan_items(
        items,
        logical_date=NOW,
        default_deadline=timedelta(hours=1),
        lanes={c.name: c for c in configs},
    )
    assert [p.lanes for p in planned] == [None, frozenset({"google"}), frozenset({"google"})]
    plan = make_plan(planned, now=NOW, realtime=[lane_capacity(c) for c in configs])
    lanes = {a.item_id: (a.lane, round(a.expected_cost_usd, 4)) for a in plan.assignments}
    assert lanes["a"][0] == FLASH_CH and lanes["b"][0] == "google" and lanes["c"][0] == "google"
    assert not plan.infeasible


def test_an_item_goes_to_flash_when_pro_cannot_meet_its_deadline() -> None:
    # Pro at a negotiated price below Flash's, rate-limited to one call a minute and used up
    configs = channels(prices={"1K": 0.01}, rpm=1, models={FLASH_IMAGE_MODEL: {}})
    clock = FakeClock()
    router = router_for(
        configs,
        clock,
        random.Random(1),
        config=RouterConfig(),
        breaker=BreakerConfig(jitter=0.0),
        throttle=ThrottleConfig(enabled=False),
    )

    def item(
        item_id: str, deadline_s: float, fallback: tuple[str, ...] = (FLASH_IMAGE_MODEL,)
    ) -> ItemProgress:
        request = ImageRequest(item_id, "p", fallback_models=fallback)
        return ItemProgress.for_request(request, deadline=clock.now() + deadline_s)

    first = router.next_action(item("a", 3600))
    assert isinstance(first, Attempt) and first.channel == "google"  # the cheaper tier first
    urgent = router.next_action(item("b", 20))
    assert isinstance(urgent, Attempt) and urgent.channel == FLASH_CH  # Pro is free again only in 60 s
    relaxed = router.next_action(item("c", 3600))
    assert isinstance(relaxed, Wait) and "cheaper 'google'" in relaxed.reason  # it can wait for Pro
    pro_only = router.next_action(item("d", 20, fallback=()))
    assert isinstance(pro_only, GiveUp) and "before the deadline" in pro_only.detail  # never Flash


def test_a_flash_primary_item_at_2k_is_rejected_in_the_manifest(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    lines = [
        {"id": "big", "prompt": "x", "model": FLASH_IMAGE_MODEL, "image_size": "2K"},
        {"id": "small", "prompt": "x", "model": FLASH_IMAGE_MODEL},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = read_manifest(str(path), open_storage(), on_invalid="quarantine")
    assert [i.id for i in result.items] == ["small"]
    (reject,) = result.rejects
    assert (reject.item_id, reject.field) == ("big", "image_size")
    assert "gemini-2.5-flash-image draws 1K only, not 2K" in reject.reason
