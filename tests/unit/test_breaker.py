"""Circuit breaker transitions on a plain record, driven by hand-picked times."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from airflow_banana.exceptions import ConfigurationError
from airflow_banana.routing.breaker import (
    BreakerConfig,
    BreakerEvent,
    BreakerRecord,
    BreakerState,
    base_failure_rate,
    failures_at_least,
    gate,
    open_duration,
    probes_per_round,
    record_result,
    release_probe,
    run_to_trip,
    take_probe,
)

CFG = BreakerConfig(jitter=0.0, base_open_s=30.0)  # a 30 s floor keeps the hand-picked times apart


class FixedRandom(random.Random):
    """``uniform(a, b)`` returns the point at ``fraction`` of the way from a to b."""

    def __init__(self, fraction: float = 0.5) -> None:
        super().__init__(0)
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.fraction


RNG = FixedRandom()


def feed(
    record: BreakerRecord,
    pattern: str,
    now: float,
    cfg: BreakerConfig = CFG,
    step: float = 0.1,
    history: tuple[float, float] | None = None,
):
    """Feed 'F'/'S' verdicts starting at ``now``; returns the events and the final time.
    ``history``: (calls, failures) the channel had before the first of them (counted on)."""
    events = []
    for verdict in pattern:
        event = record_result(
            record, cfg, now, failure=verdict == "F", probe_id=None, rng=RNG, history=history
        )
        if history is not None:
            history = (history[0] + 1, history[1] + (verdict == "F"))
        if event:
            events.append(event)
        now += step
    return events, now


def trip(record: BreakerRecord, now: float = 100.0, cfg: BreakerConfig = CFG) -> float:
    events, _ = feed(record, "F" * cfg.consecutive_failures, now, cfg, step=0.0)
    assert events == [BreakerEvent.OPENED]
    return now


def test_four_consecutive_failures_do_not_trip_the_fifth_does() -> None:
    record = BreakerRecord()
    events, now = feed(record, "FFFF", 100.0)
    assert events == [] and record.state is BreakerState.CLOSED
    assert record_result(record, CFG, now, failure=True, probe_id=None, rng=RNG) is BreakerEvent.OPENED
    assert record.state is BreakerState.OPEN
    assert record.open_until == pytest.approx(now + 30.0)
    assert record.openings == 1


def test_a_success_resets_the_consecutive_count() -> None:
    record = BreakerRecord()
    events, _ = feed(record, "FFFFSFFFF", 100.0)
    assert events == [] and record.consecutive_failures == 4


HEALTHY_BEFORE = (200.0, 4.0)  # (calls, failures) over the stats' half-lives: 2 % failures
FLAKY_BEFORE = (200.0, 110.0)  # 55 %


def test_failure_rate_trips_at_threshold_with_minimum_volume() -> None:
    record = BreakerRecord()
    # alternate so consecutive failures never reach 5; 10th call is the 5th failure = 50 %
    events, _ = feed(record, "SFSFSFSFS", 100.0, history=HEALTHY_BEFORE)
    assert events == []
    later = (HEALTHY_BEFORE[0] + 9, HEALTHY_BEFORE[1] + 4)
    event = record_result(record, CFG, 101.0, failure=True, probe_id=None, rng=RNG, history=later)
    assert event is BreakerEvent.OPENED
    # before: 209 calls and 8 failures, plus this one, less the run of 1 it is; half a failure prior
    assert record.base_failure_rate == pytest.approx((9 - 1 + 0.5) / (210 - 1 + 1))


def test_a_channel_as_flaky_as_before_does_not_trip_on_rate() -> None:
    """The rate rule asks whether the window is an outage or the channel's usual: at 50 % in
    the window, a channel that failed 55 % of its calls before is as it always was (its price
    per image ranks it), and one with no history is as likely as not to fail."""
    for history in (FLAKY_BEFORE, None):
        record = BreakerRecord()
        events, _ = feed(record, "SFSFSFSFSF" * 3, 100.0, history=history)
        assert events == [] and record.state is BreakerState.CLOSED


def test_high_failure_rate_below_minimum_volume_does_not_trip() -> None:
    record = BreakerRecord()
    events, now = feed(record, "FFSFFSFFS", 100.0, history=HEALTHY_BEFORE)  # 9 calls, 67 % failures
    assert events == [] and record.state is BreakerState.CLOSED
    later = (HEALTHY_BEFORE[0] + 9, HEALTHY_BEFORE[1] + 6)
    event = record_result(record, CFG, now, failure=True, probe_id=None, rng=RNG, history=later)
    assert event is BreakerEvent.OPENED


def test_the_run_that_trips_grows_with_how_flaky_the_channel_was() -> None:
    """Failures in a row trip at ``consecutive_failures`` (5) on a healthy or new channel; on one
    that failed often before, only at a run it would make less than 5 % of the time over the
    calls of its history that could start one."""
    assert run_to_trip(CFG, base_rate=0.02, chances=200) == 5
    assert run_to_trip(CFG, base_rate=0.5, chances=0) == 5  # no history: the prior's 0.5
    starts = 200 * (1 - 0.55)
    n = run_to_trip(CFG, base_rate=0.55, chances=200)
    assert n == math.ceil(math.log(0.05 / starts) / math.log(0.55)) == 13
    assert starts * 0.55**n <= 0.05 < starts * 0.55 ** (n - 1)
    record = BreakerRecord()
    events, _ = feed(record, "S" + "F" * 11, 100.0, history=FLAKY_BEFORE)
    assert events == [] and record.state is BreakerState.CLOSED  # 11 in a row: its usual bad luck
    record = BreakerRecord()
    events, _ = feed(record, "S" + "F" * 5, 100.0, history=HEALTHY_BEFORE)
    assert events == [BreakerEvent.OPENED]


def test_failures_at_least_is_the_binomial_tail() -> None:
    assert failures_at_least(10, 5, 0.5) == pytest.approx(0.623046875)
    assert failures_at_least(10, 10, 0.05) == pytest.approx(0.05**10)
    assert failures_at_least(10, 0, 0.3) == pytest.approx(1.0)
    assert failures_at_least(3, 2, 0.0) == 0.0 and failures_at_least(3, 2, 1.0) == 1.0


def test_peak_profile_45_percent_failures_never_trips_the_rate_rule() -> None:
    record = BreakerRecord()
    pattern = "FSFSFSFSSS" * 2 + "FSFSFSFSFSS"  # 13 of 31 = 42 %, and 9/20 = 45 % at the 20th
    events, _ = feed(record, pattern * 4, 100.0, step=0.5)
    assert events == [] and record.state is BreakerState.CLOSED


def test_failures_leave_the_sliding_window() -> None:
    record = BreakerRecord()
    feed(record, "FFFFSFFFFS", 100.0, step=0.1)  # 8/10 failures, but never at a failure with volume
    # 70 s later the old calls are out of the 60 s window: a few new failures do not trip on rate
    events, _ = feed(record, "SSSSSF", 170.0)
    assert events == [] and record.state is BreakerState.CLOSED


def test_open_duration_fits_the_outage_so_far_and_is_capped() -> None:
    cfg = BreakerConfig(base_open_s=1.0, max_open_s=300.0, jitter=0.2)
    mid = FixedRandom(0.5)  # u = 0
    assert [open_duration(cfg, age, mid) for age in (0.0, 0.5, 3.0, 40.0, 299.0, 5000.0)] == [
        1.0,
        1.0,
        3.0,
        40.0,
        299.0,
        300.0,
    ]
    assert open_duration(cfg, 10.0, FixedRandom(0.0)) == pytest.approx(8.0)  # u = -1
    assert open_duration(cfg, 10.0, FixedRandom(1.0)) == pytest.approx(12.0)  # u = +1
    assert open_duration(cfg, 290.0, FixedRandom(1.0)) == 300.0  # 348, capped
    rng = random.Random(7)
    samples = [open_duration(cfg, 50.0, rng) for _ in range(200)]
    assert min(samples) >= 40.0 and max(samples) <= 60.0 and len(set(samples)) > 100


def test_a_blip_costs_about_a_second_and_a_long_outage_a_handful_of_probes() -> None:
    """The default floor (1 s): the first open period is as long as the outage so far."""
    cfg = BreakerConfig(jitter=0.0)
    for outage_s, most_probes, noticed_within in ((3.0, 3, 3.0), (600.0, 12, 600.0)):
        record = BreakerRecord()
        now, probes = 0.0, 0
        while True:  # one call at a time, each answering in 0.01 s, the channel down until outage_s
            failure = now < outage_s
            if record.state is BreakerState.CLOSED:
                record_result(record, cfg, now, failure=failure, probe_id=None, rng=RNG)
                if not failure:
                    break
                now += 0.01
                continue
            verdict = gate(record, now)
            if not verdict.allowed:
                assert verdict.retry_at is not None
                now = verdict.retry_at
                continue
            probes += 1
            probe = take_probe(record, cfg, now)
            now += 0.01
            record_result(record, cfg, now, failure=now < outage_s, probe_id=probe, rng=RNG)
            if record.state is BreakerState.CLOSED:
                break
        assert probes <= most_probes
        assert now - outage_s <= noticed_within  # probing at about twice the outage's age


def test_open_until_then_half_open_lets_exactly_one_probe() -> None:
    record = BreakerRecord()
    trip(record, 100.0)
    assert gate(record, 129.9).allowed is False
    assert gate(record, 129.9).retry_at == pytest.approx(130.0)
    first = gate(record, 130.0)
    assert first.allowed and first.probe and record.state is BreakerState.HALF_OPEN
    probe_id = take_probe(record, CFG, 130.0)
    for t in (130.0, 131.0, 200.0):
        denied = gate(record, t)
        assert not denied.allowed and denied.retry_at == pytest.approx(130.0 + CFG.probe_lease_s)
    assert probe_id == record.probe_id


def test_probe_success_closes_and_resets_counters() -> None:
    record = BreakerRecord()
    trip(record)
    gate(record, 130.0)
    probe = take_probe(record, CFG, 130.0)
    assert record_result(record, CFG, 131.0, failure=False, probe_id=probe, rng=RNG) is BreakerEvent.CLOSED
    assert record.state is BreakerState.CLOSED and record.consecutive_failures == 0
    assert record.window.buckets == {}
    assert gate(record, 131.0).allowed and not gate(record, 131.0).probe


def test_probe_failure_reopens_for_as_long_as_the_outage_has_lasted() -> None:
    record = BreakerRecord()
    trip(record)  # failing since 100; 30 s (the floor)
    gate(record, 130.0)
    probe = take_probe(record, CFG, 130.0)
    assert record_result(record, CFG, 135.0, failure=True, probe_id=probe, rng=RNG) is BreakerEvent.REOPENED
    assert record.state is BreakerState.OPEN and record.open_until == pytest.approx(135.0 + 35.0)
    gate(record, 170.0)
    probe = take_probe(record, CFG, 170.0)
    record_result(record, CFG, 171.0, failure=True, probe_id=probe, rng=RNG)
    assert record.open_until == pytest.approx(171.0 + 71.0)  # about doubling each time
    assert record.openings == 3 and record.reopen_count == 2


def test_expired_probe_lease_is_replaced_and_the_stale_probe_is_ignored() -> None:
    record = BreakerRecord()
    trip(record)
    gate(record, 130.0)
    stale = take_probe(record, CFG, 130.0)
    expiry = 130.0 + CFG.probe_lease_s
    assert not gate(record, expiry - 0.01).allowed
    assert gate(record, expiry).probe
    fresh = take_probe(record, CFG, expiry)
    assert fresh != stale
    assert record_result(record, CFG, expiry + 1, failure=False, probe_id=stale, rng=RNG) is None
    assert record.state is BreakerState.HALF_OPEN
    assert (
        record_result(record, CFG, expiry + 2, failure=False, probe_id=fresh, rng=RNG) is BreakerEvent.CLOSED
    )


def test_late_ordinary_results_while_open_or_half_open_change_nothing() -> None:
    record = BreakerRecord()
    trip(record)
    until = record.open_until
    assert record_result(record, CFG, 110.0, failure=True, probe_id=None, rng=RNG) is None
    assert record_result(record, CFG, 111.0, failure=False, probe_id=None, rng=RNG) is None
    assert record.state is BreakerState.OPEN and record.open_until == until
    gate(record, 130.0)
    take_probe(record, CFG, 130.0)
    assert record_result(record, CFG, 131.0, failure=False, probe_id=None, rng=RNG) is None
    assert record.state is BreakerState.HALF_OPEN


def test_released_probe_lets_the_next_caller_probe() -> None:
    record = BreakerRecord()
    trip(record)
    gate(record, 130.0)
    probe = take_probe(record, CFG, 130.0)
    release_probe(record, probe + 1)  # not the holder: nothing happens
    assert not gate(record, 130.5).allowed
    release_probe(record, probe)
    assert gate(record, 130.5).probe


def test_a_close_forgets_the_outage_and_the_next_one_starts_from_the_floor() -> None:
    record = BreakerRecord()
    trip(record, 100.0)
    gate(record, 130.0)
    probe = take_probe(record, CFG, 130.0)
    record_result(record, CFG, 160.0, failure=True, probe_id=probe, rng=RNG)  # age 60 -> 60 s
    assert record.open_until == pytest.approx(220.0)
    gate(record, 220.0)
    probe = take_probe(record, CFG, 220.0)
    record_result(record, CFG, 221.0, failure=False, probe_id=probe, rng=RNG)
    assert record.state is BreakerState.CLOSED and record.failing_since is None
    assert record.reopen_count == 0
    trip(record, 300.0)
    assert record.open_until == pytest.approx(330.0)


def test_the_outage_starts_at_the_first_failure_after_the_last_healthy_call() -> None:
    record = BreakerRecord()
    cfg = BreakerConfig(jitter=0.0, base_open_s=1.0)
    feed(record, "SFSFFFF", 100.0, cfg, step=1.0)  # healthy at 102; failing from 103 to 106
    assert record.failing_since == pytest.approx(103.0) and record.state is BreakerState.CLOSED
    record_result(record, cfg, 110.0, failure=True, probe_id=None, rng=RNG)  # 5th in a row
    assert record.state is BreakerState.OPEN and record.open_until == pytest.approx(110.0 + 7.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_rate_threshold": 0.0},
        {"failure_rate_threshold": 1.5},
        {"minimum_calls": 0},
        {"consecutive_failures": 0},
        {"base_open_s": 0.0},
        {"base_open_s": 20.0, "max_open_s": 10.0},
        {"jitter": 1.0},
        {"probe_lease_s": -1.0},
        {"false_alarm": 0.0},
        {"false_alarm": 1.0},
        {"max_probes": 0},
    ],
)
def test_invalid_breaker_config_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        BreakerConfig(**kwargs)


TOLERANT = BreakerConfig.tolerant(jitter=0.0)


def test_the_base_failure_rate_leaves_out_the_run_that_tripped() -> None:
    assert base_failure_rate(calls=32, failures=12, run=12) == pytest.approx(0.5 / 21)  # healthy, then down
    assert base_failure_rate(calls=112, failures=62, run=12) == pytest.approx(50.5 / 101)  # flaky all along
    assert base_failure_rate(calls=12, failures=12, run=12) == 0.5  # no history: as likely as not
    assert base_failure_rate(calls=5, failures=5, run=30) == 0.5  # the run outlived the window


@pytest.mark.parametrize(
    ("rate", "tolerant", "default"),
    [(0.01, 1, 1), (0.2, 2, 1), (0.5, 5, 1), (0.52, 5, 1), (0.8, 12, 1), (0.99, 12, 1), (1.0, 12, 1)],
)
def test_a_probe_round_is_as_long_as_a_flaky_channel_needs(rate: float, tolerant: int, default: int) -> None:
    """k = ceil(log 0.05 / log f): a channel failing at f before the outage fails k in a row < 5 %
    of the time; capped by max_probes (1 where failed probes are billed)."""
    record = BreakerRecord(base_failure_rate=rate)
    assert probes_per_round(record, TOLERANT) == tolerant
    assert probes_per_round(record, BreakerConfig()) == default


def _flaky_trip(record: BreakerRecord, now: float) -> float:
    """Half the calls fail for a minute, then an unlucky run of 12 trips the tolerant breaker."""
    events, now = feed(record, "SF" * 50, now, TOLERANT, step=0.5)
    assert events == [] and record.state is BreakerState.CLOSED
    events, now = feed(record, "F" * 12, now, TOLERANT, step=0.5)
    assert events == [BreakerEvent.OPENED]
    return now


def test_a_flaky_channel_gets_a_round_of_probes_before_it_is_shut_again() -> None:
    record = BreakerRecord()
    now = _flaky_trip(record, 100.0)
    k = probes_per_round(record, TOLERANT)
    assert k == 5  # the window before the run failed about half its calls
    now = record.open_until
    for i in range(k):
        verdict = gate(record, now)
        assert verdict.allowed and verdict.probe  # the next caller probes at once
        probe = take_probe(record, TOLERANT, now)
        now += 1.0
        event = record_result(record, TOLERANT, now, failure=True, probe_id=probe, rng=RNG)
        if i < k - 1:
            assert event is None and record.state is BreakerState.HALF_OPEN and record.probe_failures == i + 1
    assert event is BreakerEvent.REOPENED and record.reopen_count == 1 and record.probe_failures == 0
    assert record.base_failure_rate == pytest.approx(0.5, abs=0.02)  # kept for the outage's later rounds
    now = record.open_until
    gate(record, now)
    probe = take_probe(record, TOLERANT, now)
    assert record_result(record, TOLERANT, now + 1, failure=True, probe_id=probe, rng=RNG) is None
    probe = take_probe(record, TOLERANT, now + 1)
    closed = record_result(record, TOLERANT, now + 2, failure=False, probe_id=probe, rng=RNG)
    assert closed is BreakerEvent.CLOSED
    assert record.probe_failures == 0 and record.reopen_count == 0


def test_a_channel_healthy_before_the_outage_is_probed_once_per_round() -> None:
    record = BreakerRecord()
    feed(record, "S" * 20, 100.0, TOLERANT, step=0.5)
    events, now = feed(record, "F" * 12, 110.0, TOLERANT, step=0.1)
    assert events == [BreakerEvent.OPENED] and probes_per_round(record, TOLERANT) == 1
    now = record.open_until
    gate(record, now)
    probe = take_probe(record, TOLERANT, now)
    reopened = record_result(record, TOLERANT, now + 0.1, failure=True, probe_id=probe, rng=RNG)
    assert reopened is BreakerEvent.REOPENED


def _open_share(cfg: BreakerConfig, failure_rate: float, seed: int) -> float:
    """One call every 0.6 s for an hour to a channel failing at random: the share of time it is shut."""
    rng, record, now, shut, step = random.Random(seed), BreakerRecord(), 0.0, 0.0, 0.6
    while now < 3600.0:
        verdict = gate(record, now)
        if not verdict.allowed:
            assert verdict.retry_at is not None
            shut += verdict.retry_at - now
            now = verdict.retry_at
            continue
        probe = take_probe(record, cfg, now) if verdict.probe else None
        record_result(record, cfg, now, failure=rng.random() < failure_rate, probe_id=probe, rng=rng)
        now += step
    return shut / now


def test_a_channel_failing_half_its_calls_stays_open_for_traffic() -> None:
    """The virtual bench's s11-199 in miniature: with one probe per round the tolerant breaker kept
    a 52 % flaky relay shut for a large share of the hour (each failed probe doubling the wait)."""
    rounds = [_open_share(TOLERANT, 0.52, seed) for seed in range(20)]
    single = [_open_share(BreakerConfig.tolerant(jitter=0.0, max_probes=1), 0.52, seed) for seed in range(20)]
    assert sum(rounds) / len(rounds) < 0.02
    assert sum(single) / len(single) > 3 * sum(rounds) / len(rounds)


def test_a_failure_with_an_older_call_out_counts_but_cannot_trip() -> None:
    record = BreakerRecord()
    for _ in range(12):
        event = record_result(
            record, TOLERANT, 100.0, failure=True, probe_id=None, rng=RNG, older_in_flight=True
        )
        assert event is None
    assert record.state is BreakerState.CLOSED and record.consecutive_failures == 12
    event = record_result(record, TOLERANT, 101.0, failure=True, probe_id=None, rng=RNG)
    assert event is BreakerEvent.OPENED  # the older call failed too: the run stands
    billed = BreakerRecord()
    events = [
        record_result(billed, CFG, 100.0, failure=True, probe_id=None, rng=RNG, older_in_flight=True)
        for _ in range(5)
    ]
    assert events[-1] is BreakerEvent.OPENED  # not in send order where failures are billed
