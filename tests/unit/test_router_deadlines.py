"""Deadline-aware spill: wait for the cheaper channel only while the item's slack allows.

FakeClock and the in-memory backend; numbers follow the router docstring's formula with a
latency prior of 30 s (``default_latency_s``; taught with ``teach_latency`` where a test needs a
channel that has answered) so ``L = 2 x 30 = 60 s``, ``deadline_margin_s = 10 s``, and a fresh
channel's success rate is the prior 0.9.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random

import pytest

from airflow_banana.channels.config import ChannelConfig
from airflow_banana.exceptions import ChannelError, ConfigurationError, ErrorClass
from airflow_banana.routing import (
    DEFAULT_DEADLINE_S,
    Attempt,
    BreakerConfig,
    DenialReason,
    FakeClock,
    GiveUp,
    ItemProgress,
    Router,
    RouterConfig,
    ThrottleConfig,
    Wait,
    router_for,
)
from airflow_banana.routing.state import Outcome, Permit
from airflow_banana.secrets import Secret

L, MARGIN = 60.0, 10.0
# Rate-limited channels below bill their failures, so the limiter spaces their calls by
# 60.5 s / rpm (routing/limiter.py): the queue arithmetic these tests check counts such slots.
# A queue moves at the channel's rate of images: each item ahead takes slot / P, P = the prior
# success rate of a fresh channel (its failures re-queue and take slots too).
P = 4.5 / 5.0


def chan(name: str, protocol: str = "gemini", **kwargs: object) -> ChannelConfig:
    return ChannelConfig(
        name=name,
        protocol=protocol,
        base_url="http://127.0.0.1:9",
        api_key=Secret("k"),
        **kwargs,  # type: ignore[arg-type]
    )


RELAY = chan("relay", "openai")  # 0.05
DIRECT = chan("direct")  # 0.134
VERTEX = chan("vertex", "vertex", project="p", location="us-central1")  # 0.134


def make(
    channels: list[ChannelConfig] | None = None, *, answered: bool = True, **config: object
) -> tuple[Router, FakeClock]:
    """A router whose channels have (``answered``) or have not yet answered once (30 s calls)."""
    clock = FakeClock()
    config.setdefault("default_latency_s", 30.0)
    router = router_for(
        channels or [RELAY, DIRECT],
        clock,
        random.Random(3),
        config=RouterConfig(**config),  # type: ignore[arg-type]
        breaker=BreakerConfig(jitter=0.0),
        throttle=ThrottleConfig(enabled=False),
    )
    if answered:
        for name in router.channels:
            teach_latency(router, name, 30.0)
    return router, clock


def _permit(router: Router, channel: str) -> Permit:
    permit = router.backend.try_acquire(channel, router.clock.now())
    assert isinstance(permit, Permit), permit
    return permit


def hint(router: Router, channel: str, seconds: float) -> None:
    """Close ``channel`` as a 429 with RetryInfo ``seconds`` does (another item's call)."""
    now = router.clock.now()
    outcome = Outcome(ErrorClass.RATE_LIMITED, closed_until=now + seconds)
    router.backend.record(_permit(router, channel), outcome, now)


def teach_latency(router: Router, channel: str, seconds: float) -> None:
    """Set ``channel``'s latency EWMA to ``seconds``, as a run of such answers would."""
    router.backend._records[channel].stats.latency_ewma_s = seconds  # type: ignore[attr-defined]


def decide(router: Router, item: ItemProgress, now: float | None = None) -> Attempt | Wait | GiveUp:
    return router.next_action(item, now)


def test_waits_for_the_cheap_channel_while_the_slack_allows() -> None:
    router, clock = make()
    t0 = clock.now()
    hint(router, "relay", 100.0)  # relay closed until t0+100
    item = ItemProgress("x", deadline=t0 + 200)
    decision = decide(router, item)
    # relay fits (100 + 60 + 10 <= 200); the latest switch to direct is 200 - 10 - 60 = 130
    assert isinstance(decision, Wait) and decision.until == pytest.approx(t0 + 100)
    assert "relay" in decision.reason and not decision.on_release
    assert router.queued("relay") == 1
    clock.set(t0 + 100)
    action = decide(router, item)
    assert isinstance(action, Attempt) and action.channel == "relay"
    assert router.queued("relay") == 0


def test_spills_at_once_when_waiting_cannot_meet_the_deadline() -> None:
    router, clock = make()
    t0 = clock.now()
    hint(router, "relay", 100.0)
    action = decide(router, ItemProgress("x", deadline=t0 + 169.9))  # 100 + 60 + 10 > 169.9
    assert isinstance(action, Attempt) and action.channel == "direct"
    fits = decide(router, ItemProgress("y", deadline=t0 + 170.0))  # exactly feasible: waits
    assert isinstance(fits, Wait)


def test_spills_exactly_when_the_slack_runs_out_and_still_makes_the_deadline() -> None:
    router, clock = make()
    t0 = clock.now()
    teach_latency(router, "direct", 40.0)  # L(direct) = 80
    hint(router, "relay", 100.0)
    deadline = t0 + 175.0  # relay: 100 + 60 + 10 = 170 fits; latest switch: 175 - 10 - 80 = 85
    item = ItemProgress("x", deadline=deadline)
    decision = decide(router, item)
    assert isinstance(decision, Wait) and decision.until == pytest.approx(t0 + 85.0)
    clock.set(t0 + 84.0)  # woken early (e.g. a release): still slack, still waiting
    early = decide(router, item)
    assert isinstance(early, Wait) and early.until == pytest.approx(t0 + 85.0)
    clock.set(t0 + 85.0)
    action = decide(router, item)
    assert isinstance(action, Attempt) and action.channel == "direct"
    # never missed because it waited: direct started at the last moment it could still make it
    assert clock.now() + 80.0 + MARGIN <= deadline + 1e-9
    assert action.timeout_s == pytest.approx(90.0)  # capped by the time left to the deadline


def test_items_without_a_deadline_wait_for_the_cheap_channel_within_the_default_horizon() -> None:
    router, clock = make()
    t0 = clock.now()
    hint(router, "relay", 100.0)
    item = ItemProgress("x")
    waited = decide(router, item)
    assert item.deadline == pytest.approx(t0 + DEFAULT_DEADLINE_S) and item.soft_deadline
    assert isinstance(waited, Wait) and waited.until == pytest.approx(t0 + 100.0)
    assert router.queued("relay") == 1


def test_a_soft_deadline_never_fails_an_item_and_a_hard_one_does() -> None:
    router, clock = make([RELAY], default_deadline_s=100.0)
    soft, hard = ItemProgress("soft"), ItemProgress("hard", deadline=clock.now() + 100.0)
    for item in (soft, hard):
        action = decide(router, item)
        assert isinstance(action, Attempt)
        router.report_failure(
            item, action.permit, ChannelError("503", channel="relay", error_class=ErrorClass.RETRYABLE)
        )
    clock.advance(150.0)  # both horizons passed
    late = decide(router, soft)
    assert isinstance(late, Attempt) and late.timeout_s == RELAY.attempt_timeout_s  # as fast as it can
    gone = decide(router, hard)
    assert isinstance(gone, GiveUp) and gone.reason == "deadline"


def test_fastest_never_waits_for_a_cheaper_channel() -> None:
    router, clock = make(objective="fastest")
    hint(router, "relay", 100.0)
    action = decide(router, ItemProgress("x", deadline=clock.now() + 10_000))
    assert isinstance(action, Attempt) and action.channel == "direct"
    assert router.queued("relay") == 0
    with pytest.raises(ConfigurationError, match="objective"):
        RouterConfig(objective="thriftiest")  # type: ignore[arg-type]


def test_default_deadline_is_relative_to_the_run_start() -> None:
    router, clock = make(default_deadline_s=200.0)
    t0 = clock.now()
    hint(router, "relay", 100.0)
    clock.advance(5.0)
    item = ItemProgress("x")
    decision = decide(router, item)
    assert item.deadline == pytest.approx(t0 + 200.0)
    assert isinstance(decision, Wait) and decision.until == pytest.approx(t0 + 100.0)
    own = ItemProgress("own", deadline=t0 + 120.0)  # its own deadline wins: relay does not fit
    action = decide(router, own)
    assert own.deadline == t0 + 120.0 and isinstance(action, Attempt) and action.channel == "direct"
    with pytest.raises(ConfigurationError):
        RouterConfig(default_deadline_s=0.0)
    with pytest.raises(ConfigurationError):
        RouterConfig(deadline_margin_s=-1.0)


def test_queue_places_spread_wakeups_and_spill_the_items_that_cannot_fit() -> None:
    relay = chan("relay", "openai", billed_on_failure=True, rpm=6.0)  # one call per 60.5 / 6 = 10.08 s
    router, clock = make([relay, DIRECT], rate_guard_s=0.5)
    t0 = clock.now()
    slot = 60.5 / 6.0
    deadline = t0 + 150.0  # relay fits while start + 60 + 10 <= 150, i.e. start <= 80
    pace = slot / P  # one item ahead
    first = decide(router, ItemProgress("i0", deadline=deadline))
    assert isinstance(first, Attempt) and first.channel == "relay"
    waits: list[Wait] = []
    spilled: list[str] = []
    for k in range(1, 12):
        d = decide(router, ItemProgress(f"i{k}", deadline=deadline))
        if isinstance(d, Wait):
            waits.append(d)
        else:
            assert isinstance(d, Attempt)
            spilled.append(d.channel)
    # place k starts at slot + k * pace (k items ahead); it fits while that is <= 80
    fitting = sum(1 for k in range(11) if t0 + slot + k * pace <= t0 + 80.0)
    assert len(waits) == fitting == 7
    # the rest would spill; the relay's spacing is all that blocks them, so they take the rest of
    # its minute at once, as far as its concurrency allows, and only then go to direct
    urgent = relay.max_concurrency - 1
    assert spilled == ["relay"] * urgent + ["direct"] * (11 - fitting - urgent)
    # wake-ups at the optimistic place times, or earlier at the place's reserved latest switch
    # (the items ahead may all spill first): all distinct, no thundering herd
    untils = [w.until for w in waits]
    assert len(set(untils)) == len(untils)
    assert all(u <= t0 + slot + k * pace + 1e-9 for k, u in enumerate(untils))
    assert untils[0] == pytest.approx(t0 + slot) and untils[1] == pytest.approx(t0 + slot + pace)
    assert router.queued("relay") == 7


def _spaced_relay_for_an_item_that_cannot_wait(
    failures: float, due_in: float
) -> tuple[Router, Attempt | Wait | GiveUp]:
    """A billed relay at 6 rpm (spaced: one call per 10.08 s) that just sent a call, then an item
    due in ``due_in``: no time to wait for the next spaced slot, but enough to start now."""
    relay = chan("relay", "openai", billed_on_failure=True, rpm=6.0)
    router, clock = make([relay, DIRECT], rate_guard_s=0.5)
    router.backend._records["relay"].stats.recent_failures = failures  # type: ignore[attr-defined]
    assert isinstance(decide(router, ItemProgress("first", deadline=clock.now() + 500.0)), Attempt)
    return router, decide(router, ItemProgress("tight", deadline=clock.now() + due_in))


def test_an_item_that_would_spill_takes_a_reliable_channels_burst_instead_of_its_spaced_slot() -> None:
    router, action = _spaced_relay_for_an_item_that_cannot_wait(failures=0.0, due_in=75.0)  # 60 + 10
    assert isinstance(action, Attempt) and action.channel == "relay"
    snapshot = router.states()["relay"]
    assert snapshot.in_flight == 2 and snapshot.recent_failures == 0.0


def test_a_flaky_spaced_channel_keeps_its_spacing_and_the_item_spills() -> None:
    # p = 4.5 / (5 + 5) = 0.45 < reliable_success_rate: each answer must be heard before the next
    # call, and a burst of a flaky channel's fast failures would trip its breaker on arrival order.
    # Starting now would still fit (a call and a rescue: 60 + 60 <= 125), the spaced slot not.
    router, action = _spaced_relay_for_an_item_that_cannot_wait(failures=5.0, due_in=125.0)
    assert isinstance(action, Attempt) and action.channel == "direct"
    assert router.states()["relay"].in_flight == 1


def test_a_waiting_item_keeps_its_place_and_forget_frees_it() -> None:
    relay = chan("relay", "openai", billed_on_failure=True, rpm=6.0)
    router, clock = make([relay, DIRECT])
    deadline = clock.now() + 400.0
    decide(router, ItemProgress("busy", deadline=deadline))
    a, b, c = (ItemProgress(n, deadline=deadline) for n in "abc")
    wa, wb, wc = decide(router, a), decide(router, b), decide(router, c)
    assert isinstance(wa, Wait) and isinstance(wb, Wait) and isinstance(wc, Wait)
    again = decide(router, b)  # b re-asks before its time: same place, same wake-up
    assert isinstance(again, Wait) and again.until == pytest.approx(wb.until)
    router.forget(a)  # a was cancelled: b and c move up one place
    moved = decide(router, c)
    assert isinstance(moved, Wait) and moved.until == pytest.approx(wb.until)
    assert router.queued("relay") == 2


def test_only_the_head_of_a_concurrency_queue_wakes_on_release() -> None:
    one = chan("relay", "openai", max_concurrency=1)
    router, clock = make([one, DIRECT])
    deadline = clock.now() + 1_000.0
    busy = decide(router, ItemProgress("busy", deadline=deadline))
    assert isinstance(busy, Attempt)
    waits = [decide(router, ItemProgress(f"w{k}", deadline=deadline)) for k in range(5)]
    assert all(isinstance(w, Wait) for w in waits)
    assert [w.on_release for w in waits] == [True, False, False, False, False]  # type: ignore[union-attr]
    assert {d.reason for d in waits[0].denials} == {DenialReason.CONCURRENCY}  # type: ignore[union-attr]


def test_a_tied_channel_free_now_beats_waiting_for_its_twin() -> None:
    router, clock = make([RELAY, DIRECT, VERTEX])
    hint(router, "relay", 500.0)  # cheap one out of reach for this deadline
    hint(router, "direct", 20.0)  # direct (ranked before vertex on the name tie) closed briefly
    action = decide(router, ItemProgress("x", deadline=clock.now() + 300.0))
    assert isinstance(action, Attempt) and action.channel == "vertex"


def test_nothing_fits_falls_back_to_best_effort() -> None:
    router, clock = make()
    t0 = clock.now()
    hint(router, "relay", 100.0)
    hint(router, "direct", 50.0)
    decision = decide(router, ItemProgress("x", deadline=t0 + 80.0))  # neither fits: earliest opening
    assert isinstance(decision, Wait) and decision.until == pytest.approx(t0 + 50.0)
    assert router.queued("relay") == router.queued("direct") == 0


def test_items_with_no_plan_line_up_for_the_first_free_slot_and_only_the_first_wakes_for_it() -> None:
    router, clock = make()
    t0 = clock.now()
    hint(router, "relay", 100.0)
    hint(router, "direct", 50.0)
    items = [ItemProgress(f"x{k}", deadline=t0 + 80.0) for k in range(4)]
    waits = [decide(router, item) for item in items]
    assert all(isinstance(w, Wait) for w in waits)
    # the k-th in line sleeps until k more images should have come at the summed rate p / T(c)
    rate = sum(r.success_rate / router.service_interval(r, t0) for r in router.rank("1K", t0))
    assert [w.until for w in waits] == pytest.approx([t0 + 50.0 + k / rate for k in range(4)])  # type: ignore[union-attr]
    again = decide(router, items[2])  # waking early changes nothing: same place, same time
    assert isinstance(again, Wait) and again.until == pytest.approx(t0 + 50.0 + 2 / rate)
    assert router.wakeups() == []
    clock.set(t0 + 50.0)
    first = decide(router, items[0])
    assert isinstance(first, Attempt) and first.channel == "direct"
    assert router.wakeups() == ["x1"]  # the next in line goes now, not when its estimate says
    assert isinstance(decide(router, items[1]), Attempt)
    assert router.wakeups() == ["x2"]


# ---------------------------------------------------------------- whole runs on a FakeClock


def run_all(objective: str, *, n: int = 200, horizon: float = 150.0) -> tuple[Router, dict[str, float]]:
    """Every item starts at t=0 with one shared deadline; calls take exactly 4 s."""
    relay = chan(
        "relay", "openai", billed_on_failure=True, rpm=60.0, max_concurrency=4, attempt_timeout_s=30.0
    )
    direct = chan("direct", max_concurrency=8, attempt_timeout_s=30.0)
    clock = FakeClock(0.0)
    router = router_for(
        [relay, direct],
        clock,
        random.Random(5),
        config=RouterConfig(objective=objective, default_latency_s=4.0),  # type: ignore[arg-type]
        throttle=ThrottleConfig(enabled=False),
    )
    items = {f"i{k:03d}": ItemProgress(f"i{k:03d}", "1K", horizon) for k in range(n)}
    seq = itertools.count()
    events: list[tuple[float, int, str, Attempt | None]] = [(0.0, next(seq), f"{i}@0", None) for i in items]
    heapq.heapify(events)
    done: dict[str, float] = {}
    wakeups = 0
    # As the engine does for "cheapest" (every item waits in the router): an on-release waiter
    # also wakes when a permit comes back. ("fastest" runs inside the engine's slots and polls.)
    on_release: set[str] = set()
    sleep = dict.fromkeys(items, 0)  # each item's current sleep; an older wake-up is stale
    while events:
        now, _, tagged, payload = heapq.heappop(events)
        item_id, generation = tagged.split("@")
        clock.set(max(now, clock.now()))
        item = items[item_id]
        if payload is not None:
            router.report_success(item, payload.permit, latency_s=4.0)
            done[item_id] = clock.now()
            for waiter in on_release:
                sleep[waiter] += 1
                heapq.heappush(events, (clock.now(), next(seq), f"{waiter}@{sleep[waiter]}", None))
            on_release.clear()
            continue
        if int(generation) != sleep[item_id]:
            continue
        wakeups += 1
        action = router.next_action(item)
        on_release.discard(item_id)
        sleep[item_id] += 1
        tag = f"{item_id}@{sleep[item_id]}"
        if isinstance(action, Attempt):
            heapq.heappush(events, (clock.now() + 4.0, next(seq), tag, action))
        elif isinstance(action, Wait):
            heapq.heappush(events, (max(action.until, clock.now() + 1e-3), next(seq), tag, None))
            if action.on_release and objective == "cheapest":
                on_release.add(item_id)
        else:
            raise AssertionError(f"{item_id}: {action}")
    if objective == "cheapest":  # queue places spread the wake-ups ("fastest" polls on release)
        assert wakeups < 10 * n, f"waiting items were woken {wakeups} times"
    return router, done


def test_deadline_aware_run_is_cheaper_and_every_item_is_on_time() -> None:
    fast, fast_done = run_all("fastest")
    cheap, cheap_done = run_all("cheapest")
    assert len(fast_done) == len(cheap_done) == 200
    assert max(cheap_done.values()) <= 150.0  # never late because of waiting
    assert cheap.spend.spent_usd < 0.85 * fast.spend.spent_usd
    relay_share = cheap.states()["relay"].successes / 200
    assert relay_share > 0.5  # the cheap channel carried most of it; the rest spilled in time


# ----------------------------------------------------------------------------- fleet-level spill

FAST_RELAY = chan(
    "relay", "openai", billed_on_failure=True, rpm=60.0, max_concurrency=100
)  # one call per 60.5 / 60 s
WIDE_DIRECT = chan("direct", max_concurrency=100)  # free now for everyone: a pure fallback


def test_the_latency_prior_comes_from_the_attempt_timeout() -> None:
    quick = chan("relay", "openai", attempt_timeout_s=8.0)
    router, _ = make([quick, DIRECT], answered=False)
    assert router.prior_latency("relay") == pytest.approx(2.0)  # 0.25 x 8 s
    assert router.prior_latency("direct") == pytest.approx(30.0)  # this module's prior (0.25 x 120 s)
    assert RouterConfig().default_latency_s == 12.0  # the shipped prior: the seed's median call
    ranked = {r.channel: r for r in router.rank("1K")}
    assert ranked["relay"].latency_s == pytest.approx(2.0)
    teach_latency(router, "relay", 5.0)  # a real answer replaces the prior
    assert {r.channel: r for r in router.rank("1K")}["relay"].latency_s == pytest.approx(5.0)
    with pytest.raises(ConfigurationError):
        RouterConfig(prior_latency_timeout_fraction=0.0)


def test_fifty_waiters_on_a_relay_with_room_for_twenty_burst_the_rest_of_its_minute_then_spill() -> None:
    router, clock = make([FAST_RELAY, WIDE_DIRECT], rate_guard_s=0.5)
    t0 = clock.now()
    slot = 60.5 / 60.0
    # relay fits place k while t0 + slot + k * slot / P + L + MARGIN <= deadline
    deadline = t0 + slot + 19 * slot / P + L + MARGIN + 0.01  # room for places 0..19
    first = decide(router, ItemProgress("busy", deadline=deadline + 100))
    assert isinstance(first, Attempt) and first.channel == "relay"
    items = [ItemProgress(f"i{k:02d}", deadline=deadline) for k in range(50)]
    decisions = [decide(router, item) for item in items]
    waiting = [it.item_id for it, d in zip(items, decisions, strict=True) if isinstance(d, Wait)]
    spilled = [it.item_id for it, d in zip(items, decisions, strict=True) if isinstance(d, Attempt)]
    assert waiting == [f"i{k:02d}" for k in range(20)]  # the first 20 in deadline (then arrival) order
    assert spilled == [f"i{k:02d}" for k in range(20, 50)]
    # the 30 the spaced queue cannot serve in time take the rest of the relay's minute at once
    # (only its spacing blocked them); once the minute is spent, newcomers spill to direct
    assert all(d.channel == "relay" for d in decisions if isinstance(d, Attempt))
    more = [decide(router, ItemProgress(f"j{k:02d}", deadline=deadline)) for k in range(40)]
    channels = [d.channel for d in more if isinstance(d, Attempt)]
    assert len(channels) == 40 and "direct" in channels
    cut = channels.index("direct")
    assert set(channels[cut:]) == {"direct"}
    assert 1 + 30 + cut <= 60  # never more than the provider's 60 per minute
    assert router.states()["relay"].in_flight == 1 + 30 + cut >= 55
    assert router.queued("relay") == 20


def test_queues_are_earliest_deadline_first_and_pushed_out_items_take_the_unspent_minute() -> None:
    router, clock = make([FAST_RELAY, WIDE_DIRECT], rate_guard_s=0.5)
    t0 = clock.now()
    slot = 60.5 / 60.0
    decide(router, ItemProgress("busy"))  # takes the free slot; no deadline, not queued
    roomy = t0 + slot + 9 * slot / P + L + MARGIN + 0.01  # room for places 0..9
    late = [ItemProgress(f"late{k}", deadline=roomy + 0.001 * k) for k in range(10)]
    assert all(isinstance(decide(router, it), Wait) for it in late)  # alone, they all fit
    urgent = [ItemProgress(f"urgent{k}", deadline=roomy - 1.0) for k in range(5)]
    assert all(isinstance(decide(router, it), Wait) for it in urgent)  # EDF: they jump the queue
    # the late items re-plan, latest deadline first: late9 is pushed out of the spaced queue and
    # takes a call of the relay's unspent minute instead of going to direct; that call takes a
    # slot of the spaced schedule, so the next one no longer fits either, and so on
    outcomes = [decide(router, it) for it in reversed(late)]
    assert all(isinstance(d, Attempt) and d.channel == "relay" for d in outcomes)
    assert router.queued("relay") == 5  # the urgent ones, in front
    # every item is on the cheap channel now, within the provider's 60 a minute
    again = [decide(router, it) for it in urgent]
    assert all(isinstance(d, Attempt) and d.channel == "relay" for d in again)
    assert router.states()["relay"].in_flight == 16 <= 60


def test_a_relay_closing_makes_the_newly_infeasible_waiters_spill_in_edf_order() -> None:
    direct = chan(
        "direct", billed_on_failure=True, rpm=60.0, max_concurrency=100
    )  # dearer, same rate as the relay
    router, clock = make([FAST_RELAY, direct], rate_guard_s=0.5)
    t0 = clock.now()
    slot = 60.5 / 60.0
    decide(router, ItemProgress("busy"))
    deadline = t0 + 110.0  # relay place k fits while slot + k * slot / P <= 40
    items = [ItemProgress(f"i{k:02d}", deadline=deadline + 0.001 * k) for k in range(30)]
    assert all(isinstance(decide(router, it), Wait) for it in items)  # relay fits every one
    clock.advance(1.1)  # the relay's next rate slot: another item's call draws the 429
    hint(router, "relay", 20.0)  # the relay closes for 20 s (429 RetryInfo)
    reopen = clock.now() + 20.0
    # they re-plan latest deadline first: the order of wake-ups must not matter
    decisions = {it.item_id: decide(router, it) for it in reversed(items)}
    fits = sum(1 for k in range(30) if reopen + k * slot / P + L + MARGIN <= deadline)
    on_relay = sorted(k for k, d in decisions.items() if isinstance(d, Wait) and "'relay'" in d.reason)
    assert 0 < fits < 30 and on_relay == [f"i{k:02d}" for k in range(fits)]  # EDF prefix stays
    moved = [decisions[f"i{k:02d}"] for k in range(fits, 30)]
    # the rest moved to the fallback, which can take them all before the deadline
    assert all(d.channel == "direct" for d in moved if isinstance(d, Attempt))
    assert all("'direct'" in d.reason for d in moved if isinstance(d, Wait))
    assert sum(isinstance(d, Attempt) for d in moved) == 1  # the one free slot, then its queue
    assert router.queued("relay") == fits and router.queued("direct") == 30 - fits - 1


def test_waiters_reserve_the_fallback_for_the_items_ahead_so_spills_spread() -> None:
    direct = chan(
        "direct", billed_on_failure=True, rpm=12.0, max_concurrency=100
    )  # one call per 60.5 / 12 = 5.04 s
    router, clock = make([FAST_RELAY, direct], rate_guard_s=0.5)
    t0 = clock.now()
    hint(router, "relay", 30.0)  # the relay is closed for 30 s
    deadline = t0 + 30.0 + L + MARGIN + 10.0  # room on the relay for ~9 places after it reopens
    waits = [decide(router, ItemProgress(f"i{k}", deadline=deadline)) for k in range(6)]
    assert all(isinstance(w, Wait) and "'relay'" in w.reason for w in waits)
    untils = [w.until for w in waits if isinstance(w, Wait)]
    # the plain latest switch (deadline - margin - L) is the same for all six; place k reserves
    # the fallback for the k items ahead and switches k x (5.04 / 0.9) s earlier, so if the
    # relay stays shut they reach the fallback one by one, not at the same moment
    plain, slot, gap = deadline - MARGIN - L, 60.5 / 60.0, (60.5 / 12.0) / P
    expected = [min(t0 + 30.0 + k * slot / P, plain - k * gap) for k in range(6)]
    assert untils == pytest.approx(expected)
    assert len(set(untils)) == 6 and untils[-1] < untils[0]


# ----------------------------------------------------------------------------- retry hints and rescue room


def test_a_channel_that_hints_keep_closing_is_planned_at_the_rate_it_really_gives() -> None:
    def waiting_on_relay(hints: int, retry_after: float = 20.0, every: float = 20.0) -> int:
        router, clock = make([FAST_RELAY, WIDE_DIRECT], rate_guard_s=0.5, stats_half_life_s=600.0)
        for k in range(hints):  # one call each time it opens, answered "429, retry in 20 s"
            item = ItemProgress(f"h{k}")
            action = decide(router, item)
            assert isinstance(action, Attempt) and action.channel == "relay"
            error = ChannelError(
                "429", channel="relay", error_class=ErrorClass.RATE_LIMITED, retry_after=retry_after
            )
            router.report_failure(item, action.permit, error)
            clock.advance(every)
        decide(router, ItemProgress("busy"))  # takes the relay's free slot
        deadline = clock.now() + 200.0
        decisions = [decide(router, ItemProgress(f"i{k}", deadline=deadline)) for k in range(100)]
        return sum(1 for d in decisions if isinstance(d, Wait) and "'relay'" in d.reason)

    # never hinted: one call per ~1 s, so every item that can start by deadline - L - margin waits
    never = waiting_on_relay(0)
    assert never > 100 - 10
    # shut 300 s of the last 10 minutes: planned at half its nominal rate, so about half as many
    # items are worth queueing for it; the rest go to direct now
    assert 0.4 * never < waiting_on_relay(15) < 0.75 * never
    # five "retry in 1 s" answers at the start are one second shut, not a useless channel
    assert waiting_on_relay(5, retry_after=1.0, every=1.01) >= never - 1


def _teach(router: Router, channel: str, successes: int, failures: int, latency_s: float) -> None:
    now = router.clock.now()
    for _ in range(successes):
        router.backend.record(_permit(router, channel), Outcome(None, latency_s=latency_s), now)
    for _ in range(failures):
        router.backend.record(_permit(router, channel), Outcome(ErrorClass.RETRYABLE, latency_s=1.0), now)


@pytest.mark.parametrize(
    ("relay_failures", "slack", "channel"),
    [
        # relay fails 4 in 10 (p = 10.5 / 15 < 0.9, still the cheapest per image and under the
        # breaker's 50 %): a try there needs its L (20) plus room for one call on direct (L 30,
        # more than the 10 s margin): 50 s
        (4, 45.0, "direct"),
        (4, 50.0, "relay"),
        # a reliable relay needs only its L plus the margin: 30 s
        (0, 45.0, "relay"),
        (0, 30.0, "relay"),
    ],
)
def test_a_try_on_a_channel_that_often_fails_leaves_room_for_its_rescue(
    relay_failures: int, slack: float, channel: str
) -> None:
    router, clock = make([RELAY, chan("direct", max_concurrency=100)], answered=False)
    _teach(router, "relay", 10 - relay_failures, relay_failures, latency_s=10.0)  # L(relay) = 2 x 10
    _teach(router, "direct", 1, 0, latency_s=15.0)  # L(direct) = 2 x 15; direct needs 40 s
    action = decide(router, ItemProgress("x", deadline=clock.now() + slack))
    assert isinstance(action, Attempt) and action.channel == channel


def test_after_an_outage_the_cheap_primary_gets_its_probe_first_and_is_cheap_again() -> None:
    clock = FakeClock()
    router = router_for(
        [RELAY, chan("direct", max_concurrency=100)],
        clock,
        random.Random(3),
        breaker=BreakerConfig.tolerant(jitter=0.0),  # what a relay that bills no failures gets
        throttle=ThrottleConfig(enabled=False),
    )
    _teach(router, "relay", 0, 12, latency_s=10.0)  # an outage: 12 failures in a row trip it
    assert router.states()["relay"].breaker == "open"
    open_until = router.backend.snapshot("relay", clock.now()).open_until
    assert open_until is not None
    # the outage is as young as its 12 failures (all at once): open for the 1 s floor
    assert open_until - clock.now() == pytest.approx(1.0)
    item = ItemProgress("x", deadline=clock.now() + 10_000)
    waiting = decide(router, item)  # its failures were free: the cheap relay is worth the wait
    assert isinstance(waiting, Wait) and waiting.until == pytest.approx(open_until)
    # 1 + 24 + 24 > 45 (relay's latency is still the 12 s prior, doubled, plus a rescue on direct)
    hurried = decide(router, ItemProgress("h", deadline=clock.now() + 45))
    assert isinstance(hurried, Attempt) and hurried.channel == "direct"
    clock.advance(open_until - clock.now() + 0.1)
    # half-open: ranked at the prior and at its price (failures are free), first
    assert router.rank("1K")[0].channel == "relay"
    probe = decide(router, ItemProgress("y", deadline=clock.now() + 10_000))
    assert isinstance(probe, Attempt) and probe.channel == "relay" and probe.permit.probe
    router.report_success(ItemProgress("y"), probe.permit)
    snap = router.states()["relay"]
    assert snap.breaker == "closed"
    assert (snap.recent_successes, snap.recent_failures) == (1.0, 0.0)  # the outage is forgotten
    assert router.rank("1K")[0].channel == "relay"


def test_a_channel_that_left_a_call_unanswered_is_planned_with_its_timeout_and_a_rescue() -> None:
    relay = chan("relay", "openai", attempt_timeout_s=100.0)
    router, clock = make([relay, DIRECT], stats_half_life_s=300.0)
    t0 = clock.now()
    # relay fits by a p95 call: 60 + 10 <= 100 -> the cheap channel
    before = ItemProgress("before", deadline=t0 + 100.0)
    answered = decide(router, before)
    assert isinstance(answered, Attempt) and answered.channel == "relay"
    hung = ItemProgress("hung", deadline=t0 + 1000.0)
    attempt = decide(router, hung)
    assert isinstance(attempt, Attempt) and attempt.channel == "relay"
    clock.set(t0 + 30.0)
    router.report_success(before, answered.permit)
    clock.set(t0 + 100.0)
    router.report_timeout(hung, attempt.permit)
    # now a call there is only known to have failed at its timeout (100 s), and the rescue on
    # direct needs a p95 call (60 s): 100 + 60 > 150, so an item due in 150 s goes to direct
    spilled = decide(router, ItemProgress("tight", deadline=t0 + 250.0))
    assert isinstance(spilled, Attempt) and spilled.channel == "direct"
    roomy = decide(router, ItemProgress("roomy", deadline=t0 + 100.0 + 100.0 + 60.0))
    assert isinstance(roomy, Attempt) and roomy.channel == "relay"
    # a half-life after the timeout it is planned by its calls again: a p95 call (2 x the latency
    # EWMA the timeout raised to 44 s) plus the rescue its lower success rate asks for
    # (88 + 60 = 148 s <= 155 s; planned with the timeout: 100 + 60 = 160 s)
    clock.set(t0 + 100.0 + 300.0)
    later = decide(router, ItemProgress("later", deadline=t0 + 400.0 + 155.0))
    assert isinstance(later, Attempt) and later.channel == "relay"


def test_a_channel_with_two_overdue_calls_and_no_answer_since_is_planned_as_one_that_hangs() -> None:
    router, clock = make([RELAY, DIRECT])  # latency EWMA 30 s: overdue after 60 + 10 s
    t0 = clock.now()
    first, second = ItemProgress("first"), ItemProgress("second")
    a1 = decide(router, first)
    clock.set(t0 + 5.0)
    a2 = decide(router, second)
    assert isinstance(a1, Attempt) and isinstance(a2, Attempt) and a1.channel == a2.channel == "relay"
    due = 60.0 + 60.0  # a p95 call there and the rescue's p95 on direct fit; its timeout (120 s) does not
    clock.set(t0 + 71.0)  # one overdue call is a slow call: the cheap channel still gets the item
    one = decide(router, ItemProgress("one", deadline=clock.now() + due))
    assert isinstance(one, Attempt) and one.channel == "relay"
    clock.set(t0 + 76.0)  # two overdue, nothing heard since the first started: it may hang
    elsewhere = decide(router, ItemProgress("elsewhere", deadline=clock.now() + due))
    assert isinstance(elsewhere, Attempt) and elsewhere.channel == "direct"
    roomy = decide(router, ItemProgress("roomy"))  # the hour's horizon has room for a hang (free)
    assert isinstance(roomy, Attempt) and roomy.channel == "relay"
    assert a1.timeout_s == RELAY.attempt_timeout_s  # the quiet calls are left to their timeout
    router.report_success(second, a2.permit)  # it answers again
    back = decide(router, ItemProgress("back", deadline=clock.now() + due))
    assert isinstance(back, Attempt) and back.channel == "relay"


def test_an_unmeasured_channel_is_not_waited_for_by_an_item_its_queue_alone_makes_late() -> None:
    # one call per 10.08 s, 6 per minute; concurrency to spare, so only the rate binds
    relay = chan("relay", "openai", billed_on_failure=True, rpm=6.0, max_concurrency=20)
    router, clock = make([relay, DIRECT], answered=False, rate_guard_s=0.5)
    t0 = clock.now()
    deadline = t0 + 150.0  # relay opens at once, a call and a rescue fit: 60 + 60 <= 150
    assert decide(router, ItemProgress("first", deadline=deadline)).channel == "relay"  # type: ignore[union-attr]
    waiting = [decide(router, ItemProgress(f"w{i}", deadline=deadline)) for i in range(13)]
    # places 0-6 fit by the prior and wait for their spaced slots; 7-11 do not, and take the 5
    # calls left of the relay's minute at once; 12 is worth the wait (13 x 10.08 + 10 <= 150)
    kinds = [w.channel if isinstance(w, Attempt) else type(w).__name__ for w in waiting]
    assert kinds == ["Wait"] * 7 + ["relay"] * 5 + ["Wait"]
    far_back = decide(router, ItemProgress("far", deadline=deadline))  # 13 ahead: 151 s to its slot
    assert isinstance(far_back, Attempt) and far_back.channel == "direct"


def test_an_unmeasured_channel_without_a_rate_is_waited_for_whatever_its_queue() -> None:
    """Without ``rpm`` its pace is latency / concurrency: the very prior the first answer corrects
    (the issue-11 incidents: 10 ms calls planned at 12 s until the first one came back)."""
    relay = chan("relay", "openai", max_concurrency=1)
    router, clock = make([relay, DIRECT], answered=False, default_latency_s=12.0)
    deadline = clock.now() + 90.0
    first = decide(router, ItemProgress("first", deadline=deadline))
    assert isinstance(first, Attempt) and first.channel == "relay"  # its answer will measure it
    items = [ItemProgress(f"w{i}", deadline=deadline) for i in range(30)]
    waits = [decide(router, item) for item in items]
    assert all(isinstance(w, Wait) for w in waits)  # 30 x 12 s of queue by the prior
    # only the head wakes on a release; the first answer wakes every one of them, once
    assert [w.on_release for w in waits] == [True] + [False] * 29  # type: ignore[union-attr]
    assert router.wakeups() == []
    clock.advance(0.01)
    router.report_success(ItemProgress("first", deadline=deadline), first.permit, latency_s=0.01)
    assert sorted(router.wakeups()) == sorted(item.item_id for item in items)
    again = decide(router, items[-1])
    assert isinstance(again, Attempt) and again.channel == "relay"  # measured: 10 ms calls, no queue


def test_silent_calls_near_a_hard_deadline_are_cut_in_time_for_a_rescue() -> None:
    """``silence_cut_at``: a burst of calls sent into a hang, due before their timeout (120 s)
    could leave room for a rescue on direct (p95 60 s + margin 10 s before the deadline)."""
    relay = chan("relay", "openai", max_concurrency=8)
    router, clock = make([relay, DIRECT])  # 30 s calls: a healthy relay answers in ~30-70 s
    t0 = clock.now()
    deadline = t0 + 180.0  # latest rescue start: 180 - 10 - 60 = 110 s, before the 120 s timeout
    items = [ItemProgress(f"i{k}", deadline=deadline) for k in range(6)]
    attempts = []
    for k, item in enumerate(items):
        clock.set(t0 + k)
        attempt = decide(router, item)
        assert isinstance(attempt, Attempt) and attempt.channel == "relay"
        attempts.append(attempt)
    first, permit = items[0], attempts[0].permit
    cut = router.silence_cut_at(first, permit)
    assert cut is not None and t0 + 60.0 < cut <= t0 + 110.0  # past a p95 call, before the rescue's latest
    clock.set(cut)
    assert router.silence_cut_at(first, permit) == pytest.approx(cut)  # still nothing heard: now
    # the relay answers one of them: the others were slow, not hung; no cut on what is out now
    # (inf: the engine asks again when the relay is sent another call)
    router.report_success(items[5], attempts[5].permit, latency_s=cut - (t0 + 5))
    assert router.silence_cut_at(first, permit) == math.inf
    router.report_timeout(first, permit)  # the engine cut it: a timeout, the item goes elsewhere
    rescue = decide(router, first)
    assert isinstance(rescue, Attempt) and rescue.channel == "direct"


def test_no_silence_cut_where_the_timeout_leaves_room_or_nothing_can_rescue() -> None:
    router, clock = make([RELAY, DIRECT])
    t0 = clock.now()
    roomy = ItemProgress("roomy", deadline=t0 + 300.0)  # 120 s timeout <= 300 - 10 - 60
    soft = ItemProgress("soft")  # the hour's soft horizon: never cut
    attempts = [decide(router, roomy), decide(router, soft)]
    assert all(isinstance(a, Attempt) and a.channel == "relay" for a in attempts)
    assert router.silence_cut_at(roomy, attempts[0].permit, t0 + 100) is None  # type: ignore[union-attr]
    assert router.silence_cut_at(soft, attempts[1].permit, t0 + 100) is None  # type: ignore[union-attr]
    alone, clock = make([RELAY])
    only = ItemProgress("only", deadline=clock.now() + 150.0)
    attempt = decide(alone, only)
    assert isinstance(attempt, Attempt)
    assert alone.silence_cut_at(only, attempt.permit, clock.now() + 140) is None  # its only chance


def _fail_on(router: Router, channel: str, n: int, *, billed: bool = True) -> None:
    """``n`` other calls on ``channel`` fail (503): its measured success rate drops."""
    for _ in range(n):
        outcome = Outcome(ErrorClass.RETRYABLE, latency_s=1.0, cost_usd=0.05 if billed else 0.0)
        router.backend.record(_permit(router, channel), outcome, router.clock.now())
        router.clock.advance(60.5 / 60.0)  # the next rate slot


def test_a_queue_moves_at_the_channels_rate_of_images_not_of_calls() -> None:
    """Half of a relay's calls failing halves the places that fit: the items behind spill now,
    at the start of the run, instead of one failed retry at a time near the deadline."""
    many_tries = BreakerConfig(jitter=0.0, consecutive_failures=1_000, minimum_calls=1_000)

    def fitting(failures: int) -> tuple[int, float]:
        clock = FakeClock()
        router = router_for(
            [FAST_RELAY, WIDE_DIRECT],
            clock,
            random.Random(3),
            config=RouterConfig(default_latency_s=30.0, rate_guard_s=0.5),
            breaker=many_tries,
            throttle=ThrottleConfig(enabled=False),
        )
        for name in router.channels:
            teach_latency(router, name, 30.0)
        _fail_on(router, "relay", failures)
        decide(router, ItemProgress("busy"))  # takes the free slot
        ranked = router.rank("1K")
        relay = next(r for r in ranked if r.channel == "relay")
        # 60 s of queue before the call and what it needs (a flaky one leaves room for a rescue)
        deadline = clock.now() + 60.0 + router.finish_need(relay, ranked, clock.now())
        rate = relay.success_rate
        decisions = [decide(router, ItemProgress(f"i{k:02d}", deadline=deadline)) for k in range(80)]
        return sum(isinstance(d, Wait) and "'relay'" in d.reason for d in decisions), rate

    healthy, p_healthy = fitting(0)
    flaky, p_flaky = fitting(5)
    slot = 60.5 / 60.0
    assert p_healthy == pytest.approx(0.9) and p_flaky == pytest.approx(
        4.5 / 10.0, rel=0.01
    )  # decayed a little
    # place k fits while slot + k * slot / p <= 60
    assert healthy == sum(1 for k in range(80) if slot + k * slot / p_healthy <= 60.0)
    assert flaky == sum(1 for k in range(80) if slot + k * slot / p_flaky <= 60.0)
    assert flaky < 0.6 * healthy
