"""Behaviour every ``ChannelStateBackend`` must show, run against each factory in BACKENDS.

A Redis backend (issue 7) adds its factory to ``BACKENDS`` (or imports this module and
parametrizes again) and must pass the same tests unchanged.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from airflow_banana.exceptions import ConfigurationError, ErrorClass
from airflow_banana.routing.breaker import BreakerConfig, BreakerState
from airflow_banana.routing.limiter import LimitConfig
from airflow_banana.routing.state import (
    ChannelEvent,
    ChannelPolicy,
    ChannelStateBackend,
    Denial,
    DenialReason,
    InMemoryStateBackend,
    Outcome,
    Permit,
)
from airflow_banana.routing.throttle import ThrottleConfig

BackendFactory = Callable[[random.Random], ChannelStateBackend]
BACKENDS: dict[str, BackendFactory] = {"memory": InMemoryStateBackend}

T0 = 1_000.0
NO_JITTER = BreakerConfig(jitter=0.0, probe_lease_s=50.0, base_open_s=30.0)
NO_THROTTLE = ThrottleConfig(enabled=False)


def pol(**kwargs: object) -> ChannelPolicy:
    """A policy with a jitter-free breaker and no throttle unless the test says otherwise."""
    return ChannelPolicy(**{"breaker": NO_JITTER, "throttle": NO_THROTTLE, **kwargs})  # type: ignore[arg-type]


OK = Outcome(None, latency_s=2.0, cost_usd=0.05)
FAIL = Outcome(ErrorClass.RETRYABLE, latency_s=1.0)


@pytest.fixture(params=sorted(BACKENDS))
def make(request: pytest.FixtureRequest) -> Callable[..., ChannelStateBackend]:
    factory = BACKENDS[request.param]

    def build(
        policy: ChannelPolicy | None = None, seed: int = 1, **more: ChannelPolicy
    ) -> ChannelStateBackend:
        backend = factory(random.Random(seed))
        backend.register("a", policy or pol())
        for name, extra in more.items():
            backend.register(name, extra)
        return backend

    return build


def permit(result: Permit | Denial) -> Permit:
    assert isinstance(result, Permit), result
    return result


def denial(result: Permit | Denial, reason: DenialReason) -> Denial:
    assert isinstance(result, Denial), result
    assert result.reason is reason, result
    return result


def trip(backend: ChannelStateBackend, now: float, n: int = 5) -> None:
    for _ in range(n):
        backend.record(permit(backend.try_acquire("a", now)), FAIL, now)


def test_permit_is_issued_and_released(make: Callable[..., ChannelStateBackend]) -> None:
    backend = make()
    p = permit(backend.try_acquire("a", T0))
    assert p.channel == "a" and p.acquired_at == T0 and not p.probe
    assert backend.snapshot("a", T0).in_flight == 1
    assert backend.record(p, OK, T0 + 2) == ()
    snap = backend.snapshot("a", T0 + 2)
    assert snap.in_flight == 0 and snap.calls == 1 and snap.successes == 1
    assert snap.spend_usd == pytest.approx(0.05) and snap.latency_ewma_s == pytest.approx(2.0)


def test_recording_a_permit_twice_counts_once(make: Callable[..., ChannelStateBackend]) -> None:
    backend = make()
    p = permit(backend.try_acquire("a", T0))
    backend.record(p, OK, T0)
    backend.record(p, OK, T0)
    backend.record(p, FAIL, T0)
    snap = backend.snapshot("a", T0)
    assert snap.calls == 1 and snap.failures == 0


def test_concurrency_cap_and_release(make: Callable[..., ChannelStateBackend]) -> None:
    backend = make(pol(limits=LimitConfig(max_concurrency=2)))
    first = permit(backend.try_acquire("a", T0))
    permit(backend.try_acquire("a", T0))
    blocked = denial(backend.try_acquire("a", T0), DenialReason.CONCURRENCY)
    assert blocked.retry_at is None
    backend.record(first, OK, T0 + 1)
    permit(backend.try_acquire("a", T0 + 1))


def test_a_leaked_permit_expires(make: Callable[..., ChannelStateBackend]) -> None:
    backend = make(pol(limits=LimitConfig(max_concurrency=1), permit_ttl_s=30.0))
    leaked = permit(backend.try_acquire("a", T0))
    assert leaked.expires_at == T0 + 30.0
    denial(backend.try_acquire("a", T0 + 29.9), DenialReason.CONCURRENCY)
    late = permit(backend.try_acquire("a", T0 + 30.0))
    backend.record(leaked, OK, T0 + 31)  # the late answer still counts, but frees nothing twice
    assert backend.snapshot("a", T0 + 31).in_flight == 1
    backend.record(late, OK, T0 + 32)
    assert backend.snapshot("a", T0 + 32).in_flight == 0


def test_rate_limit_says_exactly_when_the_next_slot_frees(make: Callable[..., ChannelStateBackend]) -> None:
    backend = make(pol(limits=LimitConfig(rpm=10, ipm=6, max_concurrency=10)))
    permit(backend.try_acquire("a", T0))
    blocked = denial(backend.try_acquire("a", T0 + 1), DenialReason.RATE_LIMIT)
    assert blocked.retry_at == pytest.approx(T0 + 10.0)  # ipm 6 is the tighter: 10 s per image
    denial(backend.try_acquire("a", T0 + 9.99), DenialReason.RATE_LIMIT)
    permit(backend.try_acquire("a", T0 + 10.0))
    assert backend.snapshot("a", T0 + 10).next_request_at == pytest.approx(T0 + 20.0)


def test_an_urgent_request_may_spend_the_rest_of_the_window_at_once(
    make: Callable[..., ChannelStateBackend],
) -> None:
    backend = make(pol(limits=LimitConfig(rpm=6, burst=1, max_concurrency=10)))  # spaced: 10 s
    permit(backend.try_acquire("a", T0))
    denial(backend.try_acquire("a", T0 + 1), DenialReason.RATE_LIMIT)
    for _ in range(5):  # the window holds 6: the spacing, not the provider's cap, blocked it
        permit(backend.try_acquire("a", T0 + 1, urgent=True))
    full = denial(backend.try_acquire("a", T0 + 1, urgent=True), DenialReason.RATE_LIMIT)
    assert full.retry_at == pytest.approx(T0 + 60.0)  # the window's first send must leave it
    spaced = denial(backend.try_acquire("a", T0 + 30), DenialReason.RATE_LIMIT)
    assert spaced.retry_at == pytest.approx(T0 + 60.0)  # the burst used the slots spacing had left


def test_a_denial_commits_nothing(make: Callable[..., ChannelStateBackend]) -> None:
    backend = make(pol(limits=LimitConfig(rpm=60, max_concurrency=10)))
    for i in range(5):
        backend.record(permit(backend.try_acquire("a", T0 + i)), FAIL, T0 + i)
    half_open = T0 + 4 + 30.0
    probe = permit(backend.try_acquire("a", half_open))
    assert probe.probe
    backend.record(probe, Outcome(ErrorClass.RATE_LIMITED, closed_until=half_open), half_open)
    # the probe used the rate slot: the next caller is rate-limited and must NOT take the lease
    denial(backend.try_acquire("a", half_open), DenialReason.RATE_LIMIT)
    assert permit(backend.try_acquire("a", half_open + 1.0)).probe


def test_retry_hint_closes_the_channel_exactly_until_then(make: Callable[..., ChannelStateBackend]) -> None:
    backend = make()
    p = permit(backend.try_acquire("a", T0))
    events = backend.record(p, Outcome(ErrorClass.RATE_LIMITED, closed_until=T0 + 26.0), T0)
    assert events == (ChannelEvent.RETRY_HINT,)
    for t in (T0, T0 + 10, T0 + 25.999):
        assert denial(backend.try_acquire("a", t), DenialReason.RETRY_HINT).retry_at == T0 + 26.0
    permit(backend.try_acquire("a", T0 + 26.0))
    snap = backend.snapshot("a", T0 + 26.0)
    assert snap.breaker is BreakerState.CLOSED and snap.retry_hint_until is None


def test_a_shorter_retry_hint_never_shortens_a_closure(make: Callable[..., ChannelStateBackend]) -> None:
    backend = make(pol(limits=LimitConfig(max_concurrency=2)))
    p1, p2 = permit(backend.try_acquire("a", T0)), permit(backend.try_acquire("a", T0))
    backend.record(p1, Outcome(ErrorClass.RATE_LIMITED, closed_until=T0 + 30), T0)
    backend.record(p2, Outcome(ErrorClass.RATE_LIMITED, closed_until=T0 + 5), T0 + 1)
    assert denial(backend.try_acquire("a", T0 + 10), DenialReason.RETRY_HINT).retry_at == T0 + 30


def test_many_429s_do_not_open_the_breaker(make: Callable[..., ChannelStateBackend]) -> None:
    backend = make()
    now = T0
    for _ in range(20):
        p = permit(backend.try_acquire("a", now))
        backend.record(p, Outcome(ErrorClass.RATE_LIMITED, closed_until=now + 1), now)
        now += 1
    assert backend.snapshot("a", now).breaker is BreakerState.CLOSED


def test_daily_quota_benches_until_the_given_reset(make: Callable[..., ChannelStateBackend]) -> None:
    backend = make()
    p = permit(backend.try_acquire("a", T0))
    events = backend.record(p, Outcome(ErrorClass.QUOTA_EXHAUSTED, closed_until=T0 + 3_600), T0)
    assert events == (ChannelEvent.BENCHED,)
    assert denial(backend.try_acquire("a", T0 + 3_599), DenialReason.BENCHED).retry_at == T0 + 3_600
    assert backend.snapshot("a", T0 + 1).benched_until == T0 + 3_600
    permit(backend.try_acquire("a", T0 + 3_600))


def test_channel_fatal_disables_for_the_run(make: Callable[..., ChannelStateBackend]) -> None:
    backend = make()
    p = permit(backend.try_acquire("a", T0))
    events = backend.record(p, Outcome(ErrorClass.CHANNEL_FATAL, detail="401 API key invalid"), T0)
    assert events == (ChannelEvent.DISABLED,)
    blocked = denial(backend.try_acquire("a", T0 + 1e6), DenialReason.DISABLED)
    assert math.isinf(blocked.retry_at or 0) and "401" in blocked.detail
    snap = backend.snapshot("a", T0)
    assert snap.disabled and snap.available_at == math.inf


def test_breaker_opens_on_consecutive_failures_and_admits_one_probe(
    make: Callable[..., ChannelStateBackend],
) -> None:
    backend = make()
    for _ in range(4):
        backend.record(permit(backend.try_acquire("a", T0)), FAIL, T0)
    p = permit(backend.try_acquire("a", T0))
    assert backend.record(p, FAIL, T0) == (ChannelEvent.BREAKER_OPENED,)
    blocked = denial(backend.try_acquire("a", T0 + 29), DenialReason.BREAKER_OPEN)
    assert blocked.retry_at == pytest.approx(T0 + 30)
    # 50 callers race for the half-open channel: exactly one gets the probe
    results = [backend.try_acquire("a", T0 + 30) for _ in range(50)]
    probes = [r for r in results if isinstance(r, Permit)]
    assert len(probes) == 1 and probes[0].probe
    assert all(r.reason is DenialReason.PROBE_IN_FLIGHT for r in results if isinstance(r, Denial))
    assert backend.snapshot("a", T0 + 30).breaker is BreakerState.HALF_OPEN
    assert backend.record(probes[0], OK, T0 + 31) == (ChannelEvent.BREAKER_CLOSED,)
    permit(backend.try_acquire("a", T0 + 31))
    assert backend.snapshot("a", T0 + 31).openings == 1


def test_failed_probe_reopens_longer_and_expired_lease_is_reissued(
    make: Callable[..., ChannelStateBackend],
) -> None:
    backend = make()
    trip(backend, T0)
    probe = permit(backend.try_acquire("a", T0 + 30))
    assert backend.record(probe, FAIL, T0 + 31) == (ChannelEvent.BREAKER_REOPENED,)
    # the outage is 31 s old now: open as long again
    assert denial(backend.try_acquire("a", T0 + 31), DenialReason.BREAKER_OPEN).retry_at == pytest.approx(
        T0 + 62
    )
    crashed = permit(backend.try_acquire("a", T0 + 62))
    assert crashed.probe
    denial(backend.try_acquire("a", T0 + 62 + 49.9), DenialReason.PROBE_IN_FLIGHT)
    again = permit(backend.try_acquire("a", T0 + 62 + 50))  # lease (50 s) expired: new prober
    assert again.probe and again.probe_id != crashed.probe_id
    assert backend.record(crashed, OK, T0 + 113) == ()  # the old prober's word no longer counts
    assert backend.record(again, OK, T0 + 114) == (ChannelEvent.BREAKER_CLOSED,)


def test_neutral_probe_outcomes_return_the_lease(make: Callable[..., ChannelStateBackend]) -> None:
    backend = make()
    trip(backend, T0)
    probe = permit(backend.try_acquire("a", T0 + 30))
    backend.record(probe, Outcome(cancelled=True), T0 + 31)
    again = permit(backend.try_acquire("a", T0 + 31))
    assert again.probe
    assert backend.snapshot("a", T0 + 31).breaker is BreakerState.HALF_OPEN


def _feed(backend: ChannelStateBackend, pattern: str, start: float) -> list[ChannelEvent]:
    events: list[ChannelEvent] = []
    for i, verdict in enumerate(pattern):
        outcome = FAIL if verdict == "F" else OK
        events += backend.record(permit(backend.try_acquire("a", start + i)), outcome, start + i)
    return events


def test_failure_rate_trips_with_minimum_volume(make: Callable[..., ChannelStateBackend]) -> None:
    """A channel healthy over its stats' half-lives that fails 8 of its next 10 calls (never 5
    in a row) trips on the rate at the 10th; one that was as flaky before does not."""
    backend = make(pol(limits=LimitConfig(max_concurrency=100)))
    assert _feed(backend, "S" * 20, T0 - 100) == []  # before the one-minute window
    assert _feed(backend, "SFFFFSFFF", T0) == []
    assert _feed(backend, "F", T0 + 9) == [ChannelEvent.BREAKER_OPENED]
    flaky = make(pol(limits=LimitConfig(max_concurrency=100)))
    assert _feed(flaky, "SFFFFSFFFFSSF" * 6, T0 - 100) == []
    assert _feed(flaky, "SFFFFSFFFF", T0) == []


def test_a_closing_probe_drops_only_the_outage_failures(make: Callable[..., ChannelStateBackend]) -> None:
    """After a probe closes the breaker the success rate is back at the rate from before the
    outage, not at the outage's level (R14) and not at the prior either: a flaky channel stays
    ranked as flaky, so its next run of bad luck is judged against what it is."""
    backend = make(pol(limits=LimitConfig(max_concurrency=100)))
    _feed(backend, "SSF" * 20, T0 - 200)  # a third of its calls fail
    before = backend.snapshot("a", T0 - 140)
    rate = before.recent_failures / (before.recent_failures + before.recent_successes)
    run = 0
    while not _feed(backend, "F", T0 + run):  # an outage: failures until it trips
        run += 1
    assert 5 <= run + 1 < 30  # the tripping failure included
    probe = permit(backend.try_acquire("a", T0 + 200))
    assert probe.probe and backend.record(probe, OK, T0 + 200) == (ChannelEvent.BREAKER_CLOSED,)
    after = backend.snapshot("a", T0 + 200)
    share = after.recent_failures / (after.recent_failures + after.recent_successes)
    assert 0.2 < share < rate + 0.05  # the outage's 30 failures are gone, the usual third is not


def test_a_billed_429_counts_as_a_paid_failure_but_not_against_the_breaker(
    make: Callable[..., ChannelStateBackend],
) -> None:
    """Where a 429 is billed, the router's price per image (price / success rate) must count it
    as a paid try without an image; it still says nothing about the channel's health."""
    backend = make()
    now = T0
    for _ in range(20):
        p = permit(backend.try_acquire("a", now))
        backend.record(p, Outcome(ErrorClass.RATE_LIMITED, cost_usd=0.05, closed_until=now + 1), now)
        now += 1
    snap = backend.snapshot("a", now)
    assert snap.breaker is BreakerState.CLOSED
    assert snap.recent_failures > 15 and snap.recent_successes == 0.0
    free = make()
    p = permit(free.try_acquire("a", T0))
    free.record(p, Outcome(ErrorClass.RATE_LIMITED, closed_until=T0 + 1), T0)
    assert free.snapshot("a", T0 + 1).recent_failures == 0.0  # a free 429 is no try at all


def test_item_terminal_and_success_never_count_against_the_channel(
    make: Callable[..., ChannelStateBackend],
) -> None:
    backend = make()
    terminal = Outcome(ErrorClass.ITEM_TERMINAL, detail="prompt blocked")
    for i in range(30):
        assert backend.record(permit(backend.try_acquire("a", T0 + i)), terminal, T0 + i) == ()
    snap = backend.snapshot("a", T0 + 30)
    assert snap.breaker is BreakerState.CLOSED and snap.throttle_reject_probability == 0.0
    assert snap.recent_failures == 0.0 and snap.failures_by_class == {"item_terminal": 30}


@pytest.mark.parametrize("error_class", [ErrorClass.RETRYABLE, ErrorClass.TIMEOUT, ErrorClass.NO_IMAGE])
def test_breaker_failures(make: Callable[..., ChannelStateBackend], error_class: ErrorClass) -> None:
    backend = make()
    events: list[ChannelEvent] = []
    for _ in range(5):
        events += backend.record(permit(backend.try_acquire("a", T0)), Outcome(error_class), T0)
    assert events == [ChannelEvent.BREAKER_OPENED]


def test_adaptive_throttle_rejects_locally_once_failures_dominate(
    make: Callable[..., ChannelStateBackend],
) -> None:
    policy = ChannelPolicy(
        breaker=BreakerConfig(consecutive_failures=10_000, minimum_calls=10_000),
        limits=LimitConfig(max_concurrency=1_000),
    )
    backend = make(policy, seed=5)
    now, throttled = T0, 0
    for _ in range(200):
        result = backend.try_acquire("a", now)
        if isinstance(result, Denial):
            assert result.reason is DenialReason.THROTTLED and result.retry_at == now + 0.5
            throttled += 1
        else:
            backend.record(result, FAIL, now)
        now += 0.1
    snap = backend.snapshot("a", now)
    assert throttled > 150 and snap.throttled == throttled
    assert snap.throttle_reject_probability > 0.9


def test_half_open_probe_bypasses_the_throttle(make: Callable[..., ChannelStateBackend]) -> None:
    policy = pol(throttle=ThrottleConfig(k=1.0))
    for seed in range(20):
        backend = make(policy, seed=seed)
        failures = 0
        while failures < 5:  # the throttle rejects some attempts on the way to tripping
            result = backend.try_acquire("a", T0)
            if isinstance(result, Permit):
                backend.record(result, FAIL, T0)
                failures += 1
        assert backend.snapshot("a", T0 + 30).throttle_reject_probability > 0.8
        probe = permit(backend.try_acquire("a", T0 + 30))
        assert probe.probe
        assert backend.record(probe, OK, T0 + 31) == (ChannelEvent.BREAKER_CLOSED,)
        # recovered: the outage's failures no longer throttle it
        assert backend.snapshot("a", T0 + 31).throttle_reject_probability == 0.0


def test_success_rate_statistics_decay(make: Callable[..., ChannelStateBackend]) -> None:
    backend = make(pol(stats_half_life_s=100.0, breaker=BreakerConfig(consecutive_failures=100)))
    for _ in range(4):
        backend.record(permit(backend.try_acquire("a", T0)), OK, T0)
    for _ in range(2):
        backend.record(permit(backend.try_acquire("a", T0)), FAIL, T0)
    snap = backend.snapshot("a", T0 + 100)
    assert snap.recent_successes == pytest.approx(2.0) and snap.recent_failures == pytest.approx(1.0)
    assert snap.calls == 6 and snap.successes == 4 and snap.failures == 2


def test_latency_ewma_follows_successes_and_timeouts(make: Callable[..., ChannelStateBackend]) -> None:
    backend = make(pol(latency_alpha=0.5))
    backend.record(permit(backend.try_acquire("a", T0)), Outcome(None, latency_s=10.0), T0)
    backend.record(permit(backend.try_acquire("a", T0)), Outcome(ErrorClass.TIMEOUT, latency_s=30.0), T0)
    backend.record(permit(backend.try_acquire("a", T0)), Outcome(ErrorClass.RETRYABLE, latency_s=0.1), T0)
    assert backend.snapshot("a", T0).latency_ewma_s == pytest.approx(20.0)


def test_channels_are_independent(make: Callable[..., ChannelStateBackend]) -> None:
    backend = make(b=pol())
    trip(backend, T0)
    denial(backend.try_acquire("a", T0), DenialReason.BREAKER_OPEN)
    assert permit(backend.try_acquire("b", T0)).channel == "b"
    assert set(backend.channels()) == {"a", "b"}


def test_snapshot_reports_availability(make: Callable[..., ChannelStateBackend]) -> None:
    backend = make()
    assert backend.snapshot("a", T0).available_at == T0 and backend.snapshot("a", T0).blocked_by is None
    trip(backend, T0)
    snap = backend.snapshot("a", T0 + 1)
    assert snap.blocked_by is DenialReason.BREAKER_OPEN and snap.available_at == pytest.approx(T0 + 30)
    assert snap.open_until == pytest.approx(T0 + 30) and snap.reopen_count == 0  # no failed probe yet
    # a snapshot never takes the probe lease
    backend.snapshot("a", T0 + 30)
    assert permit(backend.try_acquire("a", T0 + 30)).probe


def test_unknown_channel_is_a_configuration_error(make: Callable[..., ChannelStateBackend]) -> None:
    backend = make()
    with pytest.raises(ConfigurationError, match="'zz'"):
        backend.try_acquire("zz", T0)


def test_outcomes_that_close_a_channel_need_a_time() -> None:
    with pytest.raises(ConfigurationError):
        Outcome(ErrorClass.RATE_LIMITED)
    with pytest.raises(ConfigurationError):
        ChannelPolicy(permit_ttl_s=0)


def test_a_tolerant_breaker_judges_a_run_in_send_order(make: Callable[..., ChannelStateBackend]) -> None:
    """A minute's slots sent together: the 503s answer in a second, the images in ten, so a
    channel failing half its calls returns a dozen failures "in a row" while it is up."""
    tolerant = BreakerConfig.tolerant(jitter=0.0)
    backend = make(pol(breaker=tolerant, limits=LimitConfig(max_concurrency=64)))
    burst = [permit(backend.try_acquire("a", T0)) for _ in range(20)]
    for p in burst[:12]:  # the fast failures come back first
        assert backend.record(p, FAIL, T0 + 1) == ()
    assert backend.snapshot("a", T0 + 1).breaker is BreakerState.CLOSED  # images sent with them are out
    assert backend.record(burst[12], OK, T0 + 10) == ()  # and one of them breaks the run
    later = [permit(backend.try_acquire("a", T0 + 11)) for _ in range(12)]
    for p in burst[13:]:
        backend.record(p, OK, T0 + 12)
    events = [backend.record(p, FAIL, T0 + 13) for p in later]  # nothing older is out now
    assert events[-1] == (ChannelEvent.BREAKER_OPENED,) and all(e == () for e in events[:-1])


def test_a_breaker_on_billed_failures_trips_on_arrival_order(
    make: Callable[..., ChannelStateBackend],
) -> None:
    """Where every failure is billed, waiting for an older call's answer pays for the outage."""
    backend = make(pol(limits=LimitConfig(max_concurrency=64)))
    burst = [permit(backend.try_acquire("a", T0)) for _ in range(10)]
    events = [backend.record(p, FAIL, T0 + 1) for p in burst[:5]]
    assert events[-1] == (ChannelEvent.BREAKER_OPENED,)
