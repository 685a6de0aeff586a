"""GCRA rate limiting: exact next-slot times, no window ever over the cap, full use of the cap."""

from __future__ import annotations

import math

import pytest

from airflow_banana.exceptions import ConfigurationError
from airflow_banana.routing.limiter import GcraRecord, LimitConfig, gcra_commit, gcra_earliest


def run_saturated(per_minute: float, burst: int, start: float, duration: float) -> list[float]:
    """A caller that always wants to send, sleeping exactly until the next slot."""
    record = GcraRecord()
    now, sent = start, []
    while now < start + duration:
        slot = gcra_earliest(record, per_minute, burst, now)
        if slot > now:
            now = slot
            continue
        gcra_commit(record, per_minute, now)
        sent.append(now)
    return sent


def test_idle_cell_admits_now_and_spaces_the_next_by_the_interval() -> None:
    record = GcraRecord()
    assert gcra_earliest(record, 10, 1, 100.0) == 100.0
    gcra_commit(record, 10, 100.0)
    assert gcra_earliest(record, 10, 1, 100.0) == pytest.approx(106.0)
    assert gcra_earliest(record, 10, 1, 105.9) == pytest.approx(106.0)
    assert gcra_earliest(record, 10, 1, 106.0) == 106.0
    assert gcra_earliest(record, 10, 1, 300.0) == 300.0  # idle long: available now


def test_burst_allows_b_back_to_back_then_spacing() -> None:
    record = GcraRecord()
    for _ in range(3):
        assert gcra_earliest(record, 60, 3, 50.0) == 50.0
        gcra_commit(record, 60, 50.0)
    assert gcra_earliest(record, 60, 3, 50.0) == pytest.approx(51.0)


def test_a_whole_window_burst_sends_the_cap_at_once_then_waits_for_the_oldest_to_leave() -> None:
    record, sent = GcraRecord(), []
    for _ in range(15):
        assert gcra_earliest(record, 15, 15, 20.0, window_s=60.5) == 20.0
        gcra_commit(record, 15, 20.0, window_s=60.5)
        sent.append(20.0)
    # the 16th: when the first send leaves the 60.5 s window, not one interval later
    assert gcra_earliest(record, 15, 15, 20.0, window_s=60.5) == pytest.approx(80.5)
    assert gcra_earliest(record, 15, 15, 80.5, window_s=60.5) == pytest.approx(80.5)


def test_cost_counts_units_and_cannot_exceed_burst() -> None:
    record = GcraRecord()
    gcra_commit(record, 60, 10.0, cost=2)
    assert gcra_earliest(record, 60, 2, 10.0, cost=2) == pytest.approx(12.0)
    assert gcra_earliest(record, 60, 2, 10.0, cost=1) == pytest.approx(11.0)
    with pytest.raises(ConfigurationError):
        gcra_earliest(record, 60, 1, 10.0, cost=2)


@pytest.mark.parametrize(
    ("per_minute", "burst"), [(10, 1), (50, 1), (100, 1), (7.5, 1), (60, 5), (15, 15), (7.5, 8), (30, 99)]
)
def test_no_sixty_second_window_exceeds_the_rate_whatever_the_burst(per_minute: float, burst: int) -> None:
    sent = run_saturated(per_minute, burst, 1_000.0, 600.0)
    limit = math.ceil(per_minute)
    for i, t in enumerate(sent):
        in_window = sum(1 for u in sent[i:] if u < t + 60.0 - 1e-6)  # float drift of sums of 0.6
        assert in_window <= limit
    # and a saturated caller gets the whole cap: >= 99 % of rate over 10 minutes
    assert len(sent) >= 0.99 * per_minute * 10


def test_limit_config_validation() -> None:
    assert LimitConfig().max_concurrency == 4
    for bad in ({"rpm": 0}, {"ipm": -1}, {"burst": 0}, {"max_concurrency": 0}):
        with pytest.raises(ConfigurationError):
            LimitConfig(**bad)


def test_a_request_late_for_its_slot_keeps_the_schedule() -> None:
    """Catch-up (issue 14): lateness under one interval is not lost for every later slot."""
    record = GcraRecord()
    gcra_commit(record, 10, 100.0)  # slots every 6 s: 106, 112, ...
    gcra_commit(record, 10, 109.0)  # 3 s late for 106
    assert gcra_earliest(record, 10, 1, 109.0) == pytest.approx(112.0)  # not 115
    gcra_commit(record, 10, 119.0)  # 7 s late for 112: more than an interval, the schedule restarts
    assert gcra_earliest(record, 10, 1, 119.0) == pytest.approx(125.0)


def test_the_window_log_bounds_a_window_when_catching_up() -> None:
    record = GcraRecord()
    for t in (0.0, 6.0, 12.0, 18.0, 24.0, 30.0, 36.0, 42.0, 48.0, 59.0):  # the last one 5 s late
        assert gcra_earliest(record, 10, 1, t) <= t
        gcra_commit(record, 10, t)
    # the schedule says 60, but ten units are in the window until the first leaves it at 0 + 60
    assert gcra_earliest(record, 10, 1, 59.5) == pytest.approx(60.0)
    gcra_commit(record, 10, 60.0)
    assert gcra_earliest(record, 10, 1, 60.0) == pytest.approx(66.0)


@pytest.mark.parametrize("per_minute", [10, 40, 100])
def test_late_wakeups_cost_nothing_and_no_window_exceeds_the_cap(per_minute: int) -> None:
    """A saturated caller that wakes late (up to 0.9 intervals) one time in four: a busy worker.

    A late send that the window log then waits on is lost (no limiter can send earlier than
    ``window`` after the send ``per_minute`` places before); one the schedule absorbs is not."""
    import random

    rng = random.Random(per_minute)
    window = 60.5
    step = window / per_minute
    record, now, sent = GcraRecord(), 1_000.0, []
    while now < 1_000.0 + 600.0:
        slot = gcra_earliest(record, per_minute, 1, now, window_s=window)
        if slot > now:
            now = slot + (rng.uniform(0.0, 0.9 * step) if rng.random() < 0.25 else 0.0)
            continue
        gcra_commit(record, per_minute, now, window_s=window)
        sent.append(now)
    for i, t in enumerate(sent):
        assert sum(1 for u in sent[i:] if u < t + window - 1e-6) <= per_minute
    # plain GCRA (tat = max(tat, now) + T) would lose ~11 % of the cap to this lateness
    assert len(sent) >= 0.97 * per_minute * 600.0 / window


def test_the_first_window_counts_its_sends_cold_start_s_later() -> None:
    """Cold start (issue 14): requests of the first window may arrive late; they stay longer."""
    record, window = GcraRecord(), 60.5
    sends = [i * window / 10 for i in range(10)]
    for t in sends:
        assert gcra_earliest(record, 10, 1, t, window_s=window) == pytest.approx(t)
        gcra_commit(record, 10, t, window_s=window, cold_start_s=2.0)
    # GCRA's slot is 60.5; the first send is logged at 2.0, so it leaves the window at 62.5
    assert gcra_earliest(record, 10, 1, 60.5, window_s=window) == pytest.approx(62.5)
    gcra_commit(record, 10, 62.5, window_s=window, cold_start_s=2.0)  # after the cold window: as sent
    assert record.sent[-1] == pytest.approx(62.5)
    # a window without sends: the next send starts a cold window again
    gcra_commit(record, 10, 300.0, window_s=window, cold_start_s=2.0)
    assert record.sent == [pytest.approx(302.0)] and record.cold_until == pytest.approx(360.5)


def test_limit_config_refuses_a_cold_start_outside_a_minute() -> None:
    for bad in (-1.0, 60.0):
        with pytest.raises(ConfigurationError):
            LimitConfig(cold_start_s=bad)
