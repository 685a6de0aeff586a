"""Router: channel ordering and the per-item lifecycle, on a FakeClock with the in-memory backend."""

from __future__ import annotations

import random

import pytest

from airflow_banana.channels.config import ChannelConfig
from airflow_banana.exceptions import BananaError, ChannelError, ConfigurationError, ErrorClass
from airflow_banana.routing import (
    Attempt,
    BreakerConfig,
    DenialReason,
    FakeClock,
    GiveUp,
    GiveUpReason,
    InMemoryStateBackend,
    ItemProgress,
    RetryBudgetConfig,
    Router,
    RouterConfig,
    ThrottleConfig,
    Wait,
    describe,
    router_for,
)
from airflow_banana.routing.state import ChannelEvent, Outcome, Permit
from airflow_banana.secrets import Secret

KEY = "sk-test-DO-NOT-LEAK"


def chan(name: str, protocol: str = "gemini", **kwargs: object) -> ChannelConfig:
    return ChannelConfig(
        name=name,
        protocol=protocol,
        base_url="http://127.0.0.1:9",
        api_key=Secret(KEY),
        **kwargs,  # type: ignore[arg-type]
    )


RELAY = chan("relay", "openai")  # 0.05 flat
DIRECT = chan("direct", "gemini")  # 0.134 / 0.24
VERTEX = chan("vertex", "vertex", project="p", location="us-central1")  # 0.134 / 0.24


def make_router(
    channels: list[ChannelConfig] | None = None,
    *,
    throttle: bool = False,
    seed: int = 1,
    breaker: BreakerConfig | None = None,
    **config: object,
) -> tuple[Router, FakeClock]:
    clock = FakeClock()
    # The lifecycle rules (failover, give-up, budgets) are those of every objective; "fastest"
    # shows them without the cost-first plan's waiting (tested in test_router_deadlines.py).
    config.setdefault("objective", "fastest")
    router = router_for(
        channels or [RELAY, DIRECT, VERTEX],
        clock,
        random.Random(seed),
        config=RouterConfig(**config),  # type: ignore[arg-type]
        breaker=breaker or BreakerConfig(jitter=0.0),
        throttle=None if throttle else ThrottleConfig(enabled=False),
    )
    return router, clock


def err(channel: str, error_class: ErrorClass, **kwargs: object) -> ChannelError:
    return ChannelError("boom", channel=channel, error_class=error_class, **kwargs)  # type: ignore[arg-type]


def attempt(router: Router, item: ItemProgress, now: float | None = None) -> Attempt:
    action = router.next_action(item, now)
    assert isinstance(action, Attempt), action
    return action


def fail(router: Router, item: ItemProgress, error_class: ErrorClass, **kwargs: object) -> Attempt:
    action = attempt(router, item)
    router.report_failure(item, action.permit, err(action.channel, error_class, **kwargs))
    return action


# ------------------------------------------------------------------ ordering


def test_fresh_channels_rank_by_price_with_the_prior() -> None:
    router, _clock = make_router()
    ranked = router.rank("2K")
    assert [r.channel for r in ranked] == ["relay", "direct", "vertex"]  # direct/vertex tie -> name
    assert ranked[0].success_rate == pytest.approx(0.9)
    # failed calls are free on these channels: an image costs the price, whatever p is
    assert ranked[0].expected_cost_usd == pytest.approx(0.05)
    assert ranked[1].expected_cost_usd == pytest.approx(0.134)
    assert router.rank("4K")[1].price_usd == 0.24


def _relay_answering_one_in_four(billed_on_failure: bool) -> list[str]:
    clock = FakeClock()
    lenient = BreakerConfig(consecutive_failures=1_000, minimum_calls=1_000)
    relay = chan("relay", "openai", billed_on_failure=billed_on_failure)
    router = router_for(
        [relay, DIRECT, VERTEX],
        clock,
        random.Random(1),
        breaker=lenient,
        throttle=ThrottleConfig(enabled=False),
    )
    backend = router.backend
    now = clock.now()
    for i in range(40):
        p = backend.try_acquire("relay", now)
        assert isinstance(p, Permit), p
        outcome = Outcome(None, 1.0, 0.05) if i % 4 == 0 else Outcome(ErrorClass.RETRYABLE, 1.0)
        backend.record(p, outcome, now)
        now += 0.001
    ranked = router.rank("1K", now)
    assert next(r for r in ranked if r.channel == "relay").success_rate == pytest.approx(14.5 / 45, rel=1e-3)
    return [r.channel for r in ranked]


def test_a_failing_cheap_channel_stays_first_when_its_failures_are_free() -> None:
    # an image there still costs 0.05; its failures cost time, which the deadline plan weighs
    assert _relay_answering_one_in_four(billed_on_failure=False)[0] == "relay"


def test_a_failing_cheap_channel_drops_below_a_reliable_one_when_failures_are_billed() -> None:
    # 0.05 / ((10 + 4.5) / (40 + 5)) = 0.155 per image > 0.134
    assert _relay_answering_one_in_four(billed_on_failure=True)[:2] == ["direct", "vertex"]


def test_ranking_follows_what_a_channel_really_bills() -> None:
    relay = chan("openrouter", "openai", prices={"1K": 0.15, "2K": 0.15, "4K": 0.15})
    router, clock = make_router([relay, DIRECT])
    assert [r.channel for r in router.rank("1K")] == ["direct", "openrouter"]  # 0.134 < 0.15 configured
    held = [router.backend.try_acquire("direct", clock.now()) for _ in range(4)]  # direct is full
    assert all(isinstance(p, Permit) for p in held)
    item = ItemProgress("x")
    action = attempt(router, item)
    assert action.channel == "openrouter" and action.price_usd == 0.15  # reserved at the estimate
    router.report_success(item, action.permit, cost_usd=0.05)  # the relay's usage.cost
    assert item.attempts[0].cost_usd == 0.05
    assert router.billed_ratio("openrouter") == pytest.approx(1 / 3)
    assert router.billed_ratio("direct") == 1.0  # nothing billed there yet
    ranked = router.rank("1K")
    assert [r.channel for r in ranked] == ["openrouter", "direct"]
    assert ranked[0].expected_cost_usd == pytest.approx(0.05)
    # later bills move the learned ratio, they do not replace it
    second = ItemProgress("y")
    action = attempt(router, second)
    router.report_success(second, action.permit, cost_usd=0.15)
    assert router.billed_ratio("openrouter") == pytest.approx(0.2 * 1.0 + 0.8 / 3)


def test_ties_go_to_the_faster_channel() -> None:
    router, clock = make_router()
    now = clock.now()
    for name, latency in (("direct", 20.0), ("vertex", 5.0)):
        p = router.backend.try_acquire(name, now)
        assert isinstance(p, Permit)
        router.backend.record(p, Outcome(None, latency, 0.134), now)
    assert [r.channel for r in router.rank("1K", now)] == ["relay", "vertex", "direct"]


def test_costs_outside_the_epsilon_do_not_tie() -> None:
    slightly = chan("slightly", "gemini", prices={"1K": 0.14, "2K": 0.14, "4K": 0.24})
    router, clock = make_router([DIRECT, slightly])
    p = router.backend.try_acquire("slightly", clock.now())
    router.backend.record(p, Outcome(None, 1.0, 0.137), clock.now())  # type: ignore[arg-type]
    # with one success: 0.14 / (5.5 / 6) = 0.1527 vs 0.134 / 0.9 = 0.1489, 2.6 % apart
    assert [r.channel for r in router.rank("1K")] == ["direct", "slightly"]
    router2, _ = make_router([DIRECT, slightly], tie_epsilon=0.05)
    p = router2.backend.try_acquire("slightly", clock.now())
    router2.backend.record(p, Outcome(None, 1.0, 0.137), clock.now())  # type: ignore[arg-type]
    assert [r.channel for r in router2.rank("1K")] == ["slightly", "direct"]  # tie -> faster (1 s < 30 s)


def test_priority_list_overrides_cost() -> None:
    router, _ = make_router(priority=("vertex",))
    assert [r.channel for r in router.rank("1K")] == ["vertex", "relay", "direct"]
    with pytest.raises(ConfigurationError, match="nope"):
        make_router(priority=("nope",))


def test_router_refuses_bad_channel_sets() -> None:
    with pytest.raises(ConfigurationError):
        router_for([], FakeClock(), random.Random(1))
    with pytest.raises(ConfigurationError):
        router_for([RELAY, RELAY], FakeClock(), random.Random(1))
    router, _ = make_router()
    with pytest.raises(ConfigurationError):
        router.rank("8K")


# ------------------------------------------------------------------ lifecycle


def test_first_attempt_takes_the_cheapest_and_success_settles_the_price() -> None:
    router, clock = make_router(budget_usd=1.0)
    item = ItemProgress("cat", image_size="2K")
    action = attempt(router, item)
    assert (action.channel, action.retry, action.failover, action.price_usd) == ("relay", False, False, 0.05)
    assert action.timeout_s == 120.0
    assert router.spend.reserved_usd == pytest.approx(0.05)
    clock.advance(7)
    router.report_success(item, action.permit)
    assert item.succeeded and item.cost_usd == pytest.approx(0.05)
    only = item.attempts[0]
    assert only.ok and only.latency_s == pytest.approx(7.0) and only.billed
    assert router.spend.spent_usd == pytest.approx(0.05) and router.spend.reserved_usd == 0.0
    router.report_success(item, action.permit)  # a duplicate report is ignored
    assert len(item.attempts) == 1
    with pytest.raises(BananaError, match="cat"):
        router.next_action(item)


def test_retryable_failure_retries_the_cheap_channel_after_a_short_backoff() -> None:
    router, clock = make_router(objective="cheapest")
    item = ItemProgress("x")
    first = fail(router, item, ErrorClass.RETRYABLE, status_code=503)
    assert first.channel == "relay"
    record = item.attempts[0]
    assert record.status_code == 503 and not record.billed and record.cost_usd == 0.0
    assert record.retry_not_before is not None
    assert clock.now() <= record.retry_not_before <= clock.now() + 1.0  # U(0, 1 s) for k = 1
    waiting = router.next_action(item)
    assert isinstance(waiting, Wait) and waiting.until == record.retry_not_before
    assert waiting.denials[-1].reason is DenialReason.ITEM_BACKOFF
    clock.set(waiting.until)
    again = attempt(router, item)
    assert again.channel == "relay" and again.retry and not again.failover


def test_fastest_fails_over_at_once_after_a_failure() -> None:
    router, clock = make_router()
    item = ItemProgress("x")
    fail(router, item, ErrorClass.RETRYABLE, status_code=503)
    second = attempt(router, item)
    assert second.channel == "direct" and second.retry and second.failover
    router.report_failure(item, second.permit, err("direct", ErrorClass.RETRYABLE))
    clock.advance(1.0)  # relay's backoff for this item is over
    third = attempt(router, item)
    assert third.channel == "relay" and third.failover


def test_no_waiting_for_a_backoff_on_a_channel_that_is_blocked_anyway() -> None:
    router, clock = make_router([RELAY, DIRECT])
    item = ItemProgress("x")
    fail(router, item, ErrorClass.RETRYABLE)
    for _ in range(4):  # four more failures in a row trip relay's breaker
        action = router.backend.try_acquire("relay", clock.now())
        assert isinstance(action, Permit)
        router.backend.record(action, Outcome(ErrorClass.RETRYABLE), clock.now())
    assert router.states()["relay"].breaker == "open"
    assert attempt(router, item).channel == "direct"


def test_backoff_grows_with_failures_on_the_same_channel() -> None:
    router, clock = make_router([RELAY], retry_backoff_base_s=2.0, retry_backoff_max_s=5.0)
    item = ItemProgress("x")
    caps = []
    for _ in range(4):
        action = attempt(router, item, clock.now())
        router.report_failure(item, action.permit, err("relay", ErrorClass.RETRYABLE))
        waited = router.next_action(item)
        assert isinstance(waited, Wait) and waited.denials[0].reason is DenialReason.ITEM_BACKOFF
        caps.append(waited.until - clock.now())
        clock.set(waited.until)
    assert caps[0] <= 2.0 and caps[1] <= 4.0 and all(c <= 5.0 for c in caps)


def test_item_terminal_is_neither_retried_nor_failed_over() -> None:
    router, _ = make_router()
    item = ItemProgress("nsfw")
    fail(router, item, ErrorClass.ITEM_TERMINAL, reason="IMAGE_SAFETY", status_code=200)
    decision = router.next_action(item)
    assert isinstance(decision, GiveUp) and decision.reason is GiveUpReason.ITEM_TERMINAL
    assert "IMAGE_SAFETY" in decision.detail and decision.error_class is ErrorClass.ITEM_TERMINAL
    assert router.states()["relay"].failures_by_class == {"item_terminal": 1}


def test_no_image_is_retried_a_bounded_number_of_times() -> None:
    router, clock = make_router()
    item = ItemProgress("blank")
    for _ in range(3):
        fail(router, item, ErrorClass.NO_IMAGE, reason="finishReason NO_IMAGE")
        clock.advance(60)
    decision = router.next_action(item)
    assert isinstance(decision, GiveUp) and decision.reason is GiveUpReason.NO_IMAGE
    assert "3 answers without an image" in decision.detail
    router2, _ = make_router(max_no_image_retries=0)
    item2 = ItemProgress("blank")
    fail(router2, item2, ErrorClass.NO_IMAGE)
    assert isinstance(router2.next_action(item2), GiveUp)


def test_a_silent_channel_is_abandoned_for_the_item_after_one_timeout() -> None:
    router, clock = make_router()
    item = ItemProgress("slow")
    action = attempt(router, item)
    clock.advance(action.timeout_s)
    router.report_timeout(item, action.permit)
    assert item.attempts[0].error_class is ErrorClass.TIMEOUT
    for _ in range(3):
        clock.advance(600)
        nxt = attempt(router, item)
        assert nxt.channel != "relay"
        router.report_failure(item, nxt.permit, err(nxt.channel, ErrorClass.RETRYABLE))
    # other items still use the relay
    assert attempt(router, ItemProgress("other")).channel == "relay"
    only, _clock2 = make_router([RELAY])
    solo = ItemProgress("solo")
    action = attempt(only, solo)
    only.report_timeout(solo, action.permit)
    decision = only.next_action(solo)
    assert isinstance(decision, GiveUp) and decision.reason is GiveUpReason.NO_CHANNEL


def test_an_item_goes_back_to_a_channel_that_answered_others_after_its_timeout() -> None:
    """One call's hang on a channel that keeps answering is a tail, not a silent channel (R6)."""
    router, clock = make_router()
    item = ItemProgress("unlucky")
    hung = attempt(router, item)
    assert hung.channel == "relay"
    clock.advance(1)
    other = ItemProgress("lucky")
    answered = attempt(router, other)
    assert answered.channel == "relay"
    clock.advance(5)
    router.report_success(other, answered.permit)  # started after the hung call: relay answers
    clock.advance(hung.timeout_s)
    router.report_timeout(item, hung.permit)
    assert attempt(router, item).channel == "relay"


def test_a_success_started_before_the_timed_out_call_does_not_clear_it() -> None:
    router, clock = make_router()
    early = ItemProgress("early")
    first = attempt(router, early)
    clock.advance(1)
    item = ItemProgress("slow")
    hung = attempt(router, item)
    clock.advance(5)
    router.report_success(early, first.permit)  # answered, but it started before the hang
    clock.advance(hung.timeout_s)
    router.report_timeout(item, hung.permit)
    assert attempt(router, item).channel != "relay"


def test_timeout_is_capped_by_the_item_deadline() -> None:
    router, clock = make_router()
    item = ItemProgress("x", deadline=clock.now() + 45)
    assert attempt(router, item).timeout_s == pytest.approx(45)


def test_channel_fatal_disables_the_channel_and_fails_over() -> None:
    router, _ = make_router()
    item = ItemProgress("x")
    fail(router, item, ErrorClass.CHANNEL_FATAL, status_code=401, reason="API key invalid")
    assert router.states()["relay"].disabled
    assert attempt(router, item).channel == "direct"
    assert attempt(router, ItemProgress("y")).channel == "direct"


def test_all_channels_fatal_gives_up_with_the_reasons() -> None:
    router, _ = make_router([RELAY, DIRECT])
    item = ItemProgress("x")
    fail(router, item, ErrorClass.CHANNEL_FATAL, reason="401 key invalid")
    fail(router, item, ErrorClass.CHANNEL_FATAL, reason="404 model not found")
    decision = router.next_action(item)
    assert isinstance(decision, GiveUp) and decision.reason is GiveUpReason.NO_CHANNEL
    assert "401 key invalid" in decision.detail and "404 model not found" in decision.detail


def test_retry_info_closes_the_channel_exactly_until_the_delay() -> None:
    router, clock = make_router()
    item = ItemProgress("x")
    t0 = clock.now()
    fail(router, item, ErrorClass.RATE_LIMITED, retry_after=26.0, status_code=429)
    for t in (t0, t0 + 25.99):
        assert attempt(router, ItemProgress(f"at{t}"), t).channel == "direct"
    snap = router.states(t0 + 1)["relay"]
    assert snap.blocked_by is DenialReason.RETRY_HINT and snap.available_at == pytest.approx(t0 + 26)
    assert attempt(router, ItemProgress("later"), t0 + 26.0).channel == "relay"


def test_429_without_retry_info_pauses_the_default_delay() -> None:
    router, clock = make_router(default_retry_after_s=7.0)
    t0 = clock.now()
    fail(router, ItemProgress("x"), ErrorClass.RATE_LIMITED)
    assert router.states(t0)["relay"].retry_hint_until == pytest.approx(t0 + 7.0)


def test_daily_quota_benches_until_midnight_pacific() -> None:
    router, clock = make_router()
    t0 = clock.now()  # FakeClock wall: 12:00 America/Los_Angeles
    events = fail(router, ItemProgress("x"), ErrorClass.QUOTA_EXHAUSTED, status_code=429)
    assert events.channel == "relay"
    snap = router.states(t0)["relay"]
    assert snap.blocked_by is DenialReason.BENCHED
    assert snap.benched_until == pytest.approx(t0 + 12 * 3600)
    assert attempt(router, ItemProgress("y"), t0 + 12 * 3600 - 1).channel == "direct"
    assert attempt(router, ItemProgress("z"), t0 + 12 * 3600).channel == "relay"


def test_daily_quota_day_can_be_compressed_for_the_simulator() -> None:
    router, clock = make_router(
        quota_day_length_s=600.0, quota_day_origin_s=FakeClock.DEFAULT_WALL_START - 100
    )
    t0 = clock.now()
    fail(router, ItemProgress("x"), ErrorClass.QUOTA_EXHAUSTED)
    assert router.states(t0)["relay"].benched_until == pytest.approx(t0 + 500)


def test_deadline_passed_gives_up_and_nothing_before_the_deadline_gives_up_early() -> None:
    router, clock = make_router([RELAY])
    t0 = clock.now()
    item = ItemProgress("x", deadline=t0 + 20)
    fail(router, item, ErrorClass.RATE_LIMITED, retry_after=60.0)
    decision = router.next_action(item)
    assert isinstance(decision, GiveUp) and decision.reason is GiveUpReason.DEADLINE
    assert "before the deadline" in decision.detail
    late = ItemProgress("late", deadline=t0)
    decision = router.next_action(late)
    assert isinstance(decision, GiveUp) and decision.reason is GiveUpReason.DEADLINE


def test_no_call_is_started_that_would_more_likely_than_not_outlive_the_deadline() -> None:
    router, clock = make_router([RELAY, DIRECT])
    t0 = clock.now()
    # before any answer the 12 s latency is a prior: it turns nothing away
    assert attempt(router, ItemProgress("unmeasured", deadline=t0 + 1.0)).channel == "relay"
    for name in ("relay", "direct"):  # as a run of 12 s answers would set it
        router.backend._records[name].stats.latency_ewma_s = 12.0  # type: ignore[attr-defined]
    reserved = router.spend.reserved_usd
    assert attempt(router, ItemProgress("fits", deadline=clock.now() + 12.0)).channel == "relay"
    decision = router.next_action(ItemProgress("short", deadline=clock.now() + 11.9))
    assert isinstance(decision, GiveUp) and decision.reason is GiveUpReason.DEADLINE
    assert "less than a typical call" in decision.detail
    assert router.spend.reserved_usd == pytest.approx(reserved + 0.05)  # only the call that fits


def test_wait_until_the_earliest_channel_frees() -> None:
    router, clock = make_router([RELAY, DIRECT])
    t0 = clock.now()
    fail(router, ItemProgress("a"), ErrorClass.RATE_LIMITED, retry_after=30.0)
    fail(router, ItemProgress("b"), ErrorClass.RATE_LIMITED, retry_after=12.0)
    decision = router.next_action(ItemProgress("c"))  # no deadline: the earliest channel
    assert isinstance(decision, Wait) and not decision.on_release
    assert decision.until == pytest.approx(t0 + 12.0)
    assert {d.channel: d.reason for d in decision.denials} == {
        "relay": DenialReason.RETRY_HINT,
        "direct": DenialReason.RETRY_HINT,
    }
    capped = router.next_action(ItemProgress("d", deadline=t0 + 12.0 + 1e-3))
    assert isinstance(capped, Wait) and capped.until == pytest.approx(t0 + 12.0)


def test_concurrency_block_waits_for_a_release() -> None:
    router, clock = make_router([chan("one", "openai", max_concurrency=1)], release_poll_s=0.5)
    busy = attempt(router, ItemProgress("a"))
    decision = router.next_action(ItemProgress("b"))
    assert isinstance(decision, Wait) and decision.on_release
    assert decision.until == pytest.approx(clock.now() + 0.5)
    router.report_success(ItemProgress("a"), busy.permit)
    assert attempt(router, ItemProgress("b")).channel == "one"


def test_client_rate_limit_waits_for_the_cheaper_slot_by_default_and_fails_over_when_fastest() -> None:
    relay = chan("relay", "openai", rpm=30.0, billed_on_failure=True)  # spaced: see the next test
    router, _clock = make_router([relay, DIRECT])
    assert attempt(router, ItemProgress("a")).channel == "relay"
    assert attempt(router, ItemProgress("b")).channel == "direct"  # fastest: use every channel
    patient, clock2 = make_router([relay, DIRECT], objective="cheapest")
    assert attempt(patient, ItemProgress("a")).channel == "relay"
    decision = patient.next_action(ItemProgress("b"))
    slot = 60.5 / 30.0  # the limiter spaces over 60 s + rate_guard_s (0.5 s)
    assert isinstance(decision, Wait) and decision.until == pytest.approx(clock2.now() + slot)
    assert attempt(patient, ItemProgress("b"), clock2.now() + slot).channel == "relay"


def test_a_channel_with_free_failures_sends_its_window_at_once_one_that_bills_them_spaces() -> None:
    free = chan("free", "gemini", rpm=6.0, max_concurrency=10)
    router, clock = make_router([free], objective="cheapest")
    started = [attempt(router, ItemProgress(f"f{i}")).channel for i in range(6)]
    assert started == ["free"] * 6  # no call held back that the provider would take
    seventh = router.next_action(ItemProgress("f6"))
    # the oldest send leaves the window: 60.5 s, plus the 5 s of a channel's first window
    assert isinstance(seventh, Wait) and seventh.until == pytest.approx(clock.now() + 60.5 + 5.0)
    billed = chan("billed", "openai", rpm=6.0, max_concurrency=10, billed_on_failure=True)
    spaced, clock2 = make_router([billed], objective="cheapest")
    assert attempt(spaced, ItemProgress("b0")).channel == "billed"
    second = spaced.next_action(ItemProgress("b1"))
    # one interval: the first answer (a 429, a 503: paid here) is known before more go out
    assert isinstance(second, Wait) and second.until == pytest.approx(clock2.now() + 60.5 / 6)


def test_budget_reserves_in_flight_attempts_and_stops_before_exceeding() -> None:
    router, _ = make_router([RELAY, DIRECT], budget_usd=0.1)
    a, b = ItemProgress("a"), ItemProgress("b")
    pa, pb = attempt(router, a), attempt(router, b)
    assert (pa.channel, pb.channel) == ("relay", "relay")
    c = ItemProgress("c")
    waiting = router.next_action(c)  # a failure could free a reservation
    assert isinstance(waiting, Wait) and waiting.on_release
    assert {d.reason for d in waiting.denials} == {DenialReason.UNAFFORDABLE}
    router.report_failure(a, pa.permit, err("relay", ErrorClass.RETRYABLE))  # not billed
    assert router.spend.committed_usd == pytest.approx(0.05)
    pc = attempt(router, c)
    router.report_success(b, pb.permit)
    router.report_success(c, pc.permit)
    assert router.spend.spent_usd == pytest.approx(0.1)
    decision = router.next_action(ItemProgress("d"))
    assert isinstance(decision, GiveUp) and decision.reason is GiveUpReason.BUDGET
    assert router.spend.remaining_usd == pytest.approx(0.0)


def test_billed_failures_and_timeouts_count_against_the_budget() -> None:
    router, _ = make_router([RELAY], budget_usd=1.0)
    item = ItemProgress("x")
    fail(router, item, ErrorClass.RETRYABLE, billed=True)
    assert item.attempts[0].billed and item.attempts[0].cost_usd == 0.05
    action = attempt(router, ItemProgress("y"))
    router.report_timeout(ItemProgress("y"), action.permit)
    assert router.spend.spent_usd == pytest.approx(0.05)
    assert router.spend.uncertain_usd == pytest.approx(0.05)
    lenient, _ = make_router([RELAY], budget_usd=1.0, timeouts_count_against_budget=False)
    action = attempt(lenient, ItemProgress("z"))
    lenient.report_timeout(ItemProgress("z"), action.permit)
    assert lenient.spend.committed_usd == 0.0


def test_retry_budget_stops_retry_storms_of_paid_failures() -> None:
    router, _clock = make_router([RELAY, DIRECT], retry_budget=RetryBudgetConfig(ratio=0.0, min_retries=1))
    item = ItemProgress("x")
    fail(router, item, ErrorClass.RETRYABLE, billed=True)
    fail(router, item, ErrorClass.RETRYABLE, billed=True)  # the one allowed retry
    decision = router.next_action(item)
    assert isinstance(decision, GiveUp) and decision.reason is GiveUpReason.RETRY_BUDGET
    assert "1 retries for 1 first attempts" in decision.detail
    assert isinstance(router.next_action(ItemProgress("fresh")), Attempt)  # first attempts still go


def test_a_retry_after_a_free_failure_does_not_draw_on_the_retry_budget() -> None:
    """A free 429 or 503 costs the retry time and load, which deadline and limits bound."""
    router, clock = make_router([RELAY, DIRECT], retry_budget=RetryBudgetConfig(ratio=0.0, min_retries=1))
    item = ItemProgress("x")
    for error_class in (ErrorClass.RATE_LIMITED, ErrorClass.RETRYABLE) * 3:
        fail(router, item, error_class, retry_after=1.0)
        clock.advance(31)  # past the 429's closing and the item's backoff
    assert (router.retry_budget.retries, router.retry_budget.first_attempts) == (0, 1)
    action = attempt(router, item)  # a timeout may have been billed: the retry after it counts
    router.report_timeout(item, action.permit)
    fail(router, item, ErrorClass.RETRYABLE, billed=True)  # the one budgeted retry
    assert router.retry_budget.retries == 1
    decision = router.next_action(item)
    assert isinstance(decision, GiveUp) and decision.reason is GiveUpReason.RETRY_BUDGET


def test_max_attempts_per_item() -> None:
    router, _clock = make_router(max_attempts_per_item=2)
    item = ItemProgress("x")
    fail(router, item, ErrorClass.RETRYABLE)
    fail(router, item, ErrorClass.RETRYABLE)
    decision = router.next_action(item)
    assert isinstance(decision, GiveUp) and decision.reason is GiveUpReason.MAX_ATTEMPTS


def test_cancelled_attempt_is_recorded_and_not_a_retry() -> None:
    router, _ = make_router([RELAY], budget_usd=1.0)
    item = ItemProgress("x")
    action = attempt(router, item)
    router.report_cancelled(item, action.permit)
    assert item.attempts[0].cancelled and not item.attempts[0].ok and not item.succeeded
    assert router.spend.uncertain_usd == pytest.approx(0.05)
    again = attempt(router, item)
    assert not again.retry and router.states()["relay"].in_flight == 1


def test_failover_alert_fires_once_per_window_above_the_threshold() -> None:
    lenient = BreakerConfig(consecutive_failures=100, minimum_calls=100)
    router, clock = make_router([RELAY, DIRECT], breaker=lenient, failover_alert_threshold=3)
    alerts = []
    for i in range(6):
        item = ItemProgress(f"i{i}")
        fail(router, item, ErrorClass.RETRYABLE)
        action = attempt(router, item)
        alerts.append(action.alert_failovers)
        router.report_success(item, action.permit)
        clock.advance(2)
    assert alerts == [False, False, False, True, False, False]
    assert router.failovers_in_window() == 6
    clock.advance(3600)
    assert router.failovers_in_window() == 0


def test_breaker_sends_traffic_elsewhere_and_one_item_probes() -> None:
    router, clock = make_router([RELAY, DIRECT])
    for i in range(5):
        fail(router, ItemProgress(f"f{i}"), ErrorClass.RETRYABLE, status_code=503)
    assert router.states()["relay"].breaker == "open"
    assert attempt(router, ItemProgress("during")).channel == "direct"
    clock.advance(30)
    probe = attempt(router, ItemProgress("prober"))
    assert probe.channel == "relay" and probe.permit.probe
    assert attempt(router, ItemProgress("meanwhile")).channel == "direct"
    events = router.report_success(ItemProgress("prober"), probe.permit)
    assert events == (ChannelEvent.BREAKER_CLOSED,)
    assert attempt(router, ItemProgress("after")).channel == "relay"


def test_secrets_never_reach_decisions_or_reports() -> None:
    router, _ = make_router([RELAY])
    item = ItemProgress("x")
    fail(router, item, ErrorClass.CHANNEL_FATAL, reason="401")
    decision = router.next_action(item)
    text = repr(decision) + repr(item) + repr(router.states()) + repr(router.channels)
    assert KEY not in text


def test_describe_gives_one_line_of_channel_states() -> None:
    router, clock = make_router()
    fail(router, ItemProgress("x"), ErrorClass.RATE_LIMITED, retry_after=20.0)
    fail(router, ItemProgress("y"), ErrorClass.CHANNEL_FATAL)
    line = describe(router.states(), clock.now())
    assert line == "relay=retry_hint(+20s) direct=disabled vertex=ok"


def test_router_uses_the_injected_backend() -> None:
    backend = InMemoryStateBackend(random.Random(3))
    router = router_for([RELAY], FakeClock(), random.Random(3), backend)
    assert router.backend is backend and backend.channels() == ("relay",)


def test_a_half_open_probe_does_not_draw_on_the_retry_budget() -> None:
    router, clock = make_router([RELAY], retry_budget=RetryBudgetConfig(ratio=0.0, min_retries=1))
    item = ItemProgress("x")
    fail(router, item, ErrorClass.RETRYABLE)  # a first attempt
    for _ in range(4):  # four more failures in a row trip relay's breaker
        p = router.backend.try_acquire("relay", clock.now())
        assert isinstance(p, Permit)
        router.backend.record(p, Outcome(ErrorClass.RETRYABLE), clock.now())
    assert router.states()["relay"].breaker == "open"
    clock.advance(router.states()["relay"].open_until - clock.now() + 30.0)  # past the item's backoff too
    probe = attempt(router, item)
    assert probe.permit.probe and probe.retry
    assert router.retry_budget.retries == 0  # the probe measured the channel; it was no storm
    router.report_failure(item, probe.permit, err("relay", ErrorClass.RETRYABLE))
    clock.advance(router.states()["relay"].open_until - clock.now() + 30.0)
    again = attempt(router, item)  # probing again is still allowed
    assert again.permit.probe
