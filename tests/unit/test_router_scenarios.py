"""Fault scenarios (FAULTS.md R1-R3, R6, R13, R14) through the router in a discrete-event loop.

The loop below is the engine contract in miniature: ask ``next_action``, run the call (here a
scripted channel on a FakeClock), report the outcome. It proves the decisions compose: nothing
is lost, every failure has a reason, and traffic goes where the issue says it should.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from airflow_banana.channels.config import ChannelConfig
from airflow_banana.exceptions import ChannelError, ErrorClass
from airflow_banana.routing import (
    Attempt,
    BreakerConfig,
    FakeClock,
    GiveUp,
    ItemProgress,
    Router,
    RouterConfig,
    Wait,
    router_for,
)
from airflow_banana.secrets import Secret

# (channel, now) -> (error class or None, latency s, retry_after)
Behaviour = Callable[[str, float], tuple[ErrorClass | None, float, float | None]]


def chan(name: str, protocol: str, **kwargs: Any) -> ChannelConfig:
    return ChannelConfig(
        name=name, protocol=protocol, base_url="http://127.0.0.1:9", api_key=Secret("k"), **kwargs
    )


RELAY = chan("relay", "openai", attempt_timeout_s=30.0, max_concurrency=8)
DIRECT = chan("direct", "gemini", attempt_timeout_s=30.0, max_concurrency=8)


@dataclass
class Run:
    router: Router
    done: dict[str, str] = field(default_factory=dict)  # item -> channel
    failed: dict[str, GiveUp] = field(default_factory=dict)
    calls: list[tuple[float, float, str, bool]] = field(default_factory=list)  # start, end, channel, probe
    items: dict[str, ItemProgress] = field(default_factory=dict)


def simulate(
    behaviour: Behaviour,
    *,
    n_items: int = 200,
    parallel: int = 8,
    deadline_s: float | None = 900.0,
    channels: tuple[ChannelConfig, ...] = (RELAY, DIRECT),
    seed: int = 7,
    breaker: BreakerConfig | None = None,
    **config: object,
) -> Run:
    clock = FakeClock(0.0)
    rng = random.Random(seed)
    router_config = RouterConfig(**config)  # type: ignore[arg-type]
    router = router_for(list(channels), clock, rng, config=router_config, breaker=breaker)
    run = Run(router)
    seq = itertools.count()
    events: list[tuple[float, int, str, object]] = []
    queue = [f"item-{i:04d}" for i in range(n_items)]

    def start_next(now: float) -> None:
        if queue:
            item_id = queue.pop(0)
            deadline = None if deadline_s is None else now + deadline_s
            run.items[item_id] = ItemProgress(item_id, "2K", deadline)
            wake(item_id, now)

    # As the engine does: a waiter sleeps until its Wait ends, or until a permit comes back
    # when it asked for that; each item's latest sleep is the one that counts.
    sleeps: dict[str, int] = {}
    on_release: set[str] = set()

    def wake(item_id: str, at: float) -> None:
        sleeps[item_id] = sleeps.get(item_id, 0) + 1
        heapq.heappush(events, (at, next(seq), item_id, sleeps[item_id]))

    for _ in range(parallel):
        start_next(0.0)
    steps = 0
    while events:
        steps += 1
        assert steps < 200_000, "simulation does not terminate"
        now, _, item_id, payload = heapq.heappop(events)
        clock.set(max(now, clock.now()))
        now = clock.now()
        item = run.items[item_id]
        if isinstance(payload, int) and payload != sleeps[item_id]:
            continue  # an earlier sleep, already ended by a release
        if isinstance(payload, tuple):
            payload, (error_class, _, retry_after) = payload
            assert isinstance(payload, Attempt)
            run.calls.append((payload.permit.acquired_at, now, payload.channel, payload.permit.probe))
            if error_class is None:
                router.report_success(item, payload.permit)
                run.done[item_id] = payload.channel
            elif error_class is ErrorClass.TIMEOUT:
                router.report_timeout(item, payload.permit)
            else:
                router.report_failure(
                    item,
                    payload.permit,
                    ChannelError(
                        "x", channel=payload.channel, error_class=error_class, retry_after=retry_after
                    ),
                )
            # a permit came back: release waiters and the channel's queue head decide again
            for waiter in {*on_release, *router.wakeups()} - {item_id}:
                if waiter not in run.done:
                    wake(waiter, now)
            on_release.clear()
            if error_class is None:
                start_next(now)
                continue
        action = router.next_action(item, now)
        on_release.discard(item_id)
        for waiter in router.wakeups():  # the queue this item headed moved: its new head decides
            if waiter != item_id and waiter not in run.done:
                on_release.discard(waiter)
                wake(waiter, now)
        if isinstance(action, Attempt):
            result = behaviour(action.channel, now)
            latency = min(result[1], action.timeout_s)
            sleeps[item_id] = sleeps.get(item_id, 0) + 1
            heapq.heappush(events, (now + latency, next(seq), item_id, (action, result)))
        elif isinstance(action, Wait):
            wake(item_id, max(action.until, now + 1e-3))
            if action.on_release:
                on_release.add(item_id)
        else:
            run.failed[item_id] = action
            start_next(now)
    assert len(run.done) + len(run.failed) == n_items  # nothing lost
    return run


def calls_to(run: Run, channel: str, start: float = 0.0, end: float = float("inf")) -> int:
    return sum(1 for s, _, c, _ in run.calls if c == channel and start <= s < end)


def peak_profile(seed: int) -> Behaviour:
    rng = random.Random(seed)

    def peak(channel: str, now: float) -> tuple[ErrorClass | None, float, float | None]:
        if channel == "relay" and rng.random() < 0.45:
            return ErrorClass.RETRYABLE, 1.0, None
        return None, 8.0, None

    return peak


def test_r1_peak_profile_every_item_done() -> None:
    run = simulate(peak_profile(1))
    assert len(run.done) == 200 and not run.failed
    assert len(run.calls) / len(run.done) < 2.0  # calls per success stay bounded


def test_r1_cost_first_rides_out_the_peak_on_the_cheap_channel() -> None:
    for seed in (1, 2, 3):
        run = simulate(peak_profile(seed))
        assert len(run.done) == 200 and not run.failed
        # its failures are free and the deadline leaves time to retry: images at 0.05, but for
        # an item that failed there 9 times (0.45**9 each): its last attempt is the rescue on direct
        rescued = sum(1 for c in run.done.values() if c != "relay")
        assert rescued <= 2
        for item in run.items.values():
            if item.attempts[-1].channel != "relay":
                assert len(item.attempts) == 10 and {a.channel for a in item.attempts[:-1]} == {"relay"}
        assert run.router.spend.spent_usd == pytest.approx((200 - rescued) * 0.05 + rescued * 0.134)
        assert len(run.calls) / len(run.done) < 2.0


def test_r1_tolerant_breaker_keeps_the_cheap_channel_busy_when_fastest() -> None:
    for seed in (1, 2, 3):
        fast = {"objective": "fastest"}
        strict = simulate(peak_profile(seed), breaker=BreakerConfig(), **fast)
        tolerant = simulate(peak_profile(seed), breaker=BreakerConfig.tolerant(), **fast)
        default = simulate(peak_profile(seed), **fast)  # channels that bill no failures: tolerant
        assert default.router.spend.spent_usd == tolerant.router.spend.spent_usd
        assert len(tolerant.done) == 200 and not tolerant.failed
        assert sum(1 for c in tolerant.done.values() if c == "relay") > 100
        # the default breaker too judges a channel against its own history, so a channel that
        # fails 45 % of its calls from the start is flaky, not down, for it as well
        assert tolerant.router.spend.spent_usd <= strict.router.spend.spent_usd


def test_cost_first_is_cheaper_than_fastest_at_the_peak() -> None:
    cheapest = simulate(peak_profile(4))
    fastest = simulate(peak_profile(4), objective="fastest")
    assert len(cheapest.done) == len(fastest.done) == 200
    assert cheapest.router.spend.spent_usd < fastest.router.spend.spent_usd


@pytest.mark.parametrize(
    ("breaker", "parallel"),
    [
        (BreakerConfig(), 8),  # a channel that bills failures: the strict breaker
        # a free-failure relay gets the tolerant one (12 in a row); with only 8 items the ranking
        # (price / success rate) moves them off the relay before that, so keep it busy with 24
        (BreakerConfig.tolerant(), 24),
    ],
)
def test_r2_dead_channel_opens_and_probes_one_at_a_time(breaker: BreakerConfig, parallel: int) -> None:
    def dead_relay(channel: str, now: float) -> tuple[ErrorClass | None, float, float | None]:
        return (ErrorClass.RETRYABLE, 0.5, None) if channel == "relay" else (None, 8.0, None)

    run = simulate(dead_relay, breaker=breaker, parallel=parallel)
    assert len(run.done) == 200 and set(run.done.values()) == {"direct"}
    relay = [(s, e) for s, e, c, p in run.calls if c == "relay"]
    probes = sorted((s, e) for s, e, c, p in run.calls if c == "relay" and p)
    # the tripping run of failures, the calls still in flight when it opened (relay
    # max_concurrency 8), then one probe at a time
    assert len(relay) <= breaker.consecutive_failures + 8 + len(probes)
    assert probes and all(a[1] <= b[0] for a, b in itertools.pairwise(probes))  # never two at once
    assert run.router.states()["relay"].openings >= 2  # failed probes reopen it


def test_r3_no_call_before_the_retry_delay_ends() -> None:
    hinted: list[float] = []

    def hint_once(channel: str, now: float) -> tuple[ErrorClass | None, float, float | None]:
        if channel == "relay" and now >= 5.0 and not hinted:
            hinted.append(now)
            return ErrorClass.RATE_LIMITED, 0.2, 26.0
        return None, 4.0, None

    for objective in ("cheapest", "fastest"):
        hinted.clear()
        run = simulate(hint_once, n_items=150, objective=objective)
        assert hinted and len(run.done) == 150
        t = hinted[0] + 0.2  # the 429 answer arrives after its 0.2 s latency
        assert calls_to(run, "relay", t, t + 26.0) == 0
        assert calls_to(run, "relay", t + 26.0) > 0
        if objective == "fastest":  # the other channel keeps working meanwhile
            assert calls_to(run, "direct", t, t + 26.0) > 0
        else:  # 26 s of a 900 s deadline: worth waiting for, every image at 0.05
            assert set(run.done.values()) == {"relay"}
    hinted.clear()
    tight = simulate(hint_once, n_items=150, deadline_s=40.0)  # no time to wait: direct keeps working
    t = hinted[0] + 0.2
    assert calls_to(tight, "relay", t, t + 26.0) == 0 and calls_to(tight, "direct", t, t + 26.0) > 0


def test_r6_silent_channel_times_out_once_per_item_then_fails_over() -> None:
    def silent_relay(channel: str, now: float) -> tuple[ErrorClass | None, float, float | None]:
        return (ErrorClass.TIMEOUT, 1e9, None) if channel == "relay" else (None, 8.0, None)

    run = simulate(silent_relay, n_items=60)
    assert len(run.done) == 60
    for item in run.items.values():
        assert sum(1 for a in item.attempts if a.channel == "relay") <= 1
        assert all(a.latency_s <= 30.0 + 1e-6 for a in item.attempts)


def test_r13_all_channels_down_fails_cleanly_after_the_deadline() -> None:
    def down(channel: str, now: float) -> tuple[ErrorClass | None, float, float | None]:
        return ErrorClass.RETRYABLE, 1.0, None

    run = simulate(down, n_items=40, deadline_s=300.0)
    assert not run.done and len(run.failed) == 40
    reasons = {g.reason for g in run.failed.values()}
    assert reasons <= {"deadline", "retry_budget", "max_attempts"}
    assert all(g.detail for g in run.failed.values())
    # a storm does not multiply load: total calls stay near items x (1 + retry ratio)
    assert len(run.calls) <= 40 * 2 + 10 + 16


def test_r14_flapping_primary_is_back_in_use_soon_after_recovery() -> None:
    def flapping(channel: str, now: float) -> tuple[ErrorClass | None, float, float | None]:
        if channel == "relay" and 20.0 <= now < 80.0:
            return ErrorClass.RETRYABLE, 0.5, None
        return None, 4.0, None

    for deadline_s in (900.0, 40.0):
        run = simulate(flapping, n_items=400, parallel=8, deadline_s=deadline_s)
        assert len(run.done) == 400 and not run.failed
        during = calls_to(run, "direct", 25.0, 80.0)
        if deadline_s < 60.0:
            assert during > 0  # served from the other channel during the outage
        else:
            assert during == 0  # a minute of a 15-minute deadline is worth waiting out
        recovered = min(s for s, _, c, _ in run.calls if c == "relay" and s >= 80.0)
        # probed at about twice the outage's age: noticed within about its own length (60 s)
        assert recovered < 80.0 + 60.0 * 1.2 + 4.0
        late = [c for s, _, c, _ in run.calls if s > recovered + 30.0]
        assert late and late.count("relay") / len(late) > 0.5  # most traffic is back on the cheap one
