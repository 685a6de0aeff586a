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


def test_cost_counts_units_and_cannot_exceed_burst() -> None:
    record = GcraRecord()
    gcra_commit(record, 60, 10.0, cost=2)
    assert gcra_earliest(record, 60, 2, 10.0, cost=2) == pytest.approx(12.0)
    assert gcra_earliest(record, 60, 2, 10.0, cost=1) == pytest.approx(11.0)
    with pytest.raises(ConfigurationError):
        gcra_earliest(record, 60, 1, 10.0, cost=2)


@pytest.mark.parametrize(("per_minute", "burst"), [(10, 1), (50, 1), (100, 1), (7.5, 1), (60, 5)])
def test_no_sixty_second_window_exceeds_rate_plus_burst(per_minute: float, burst: int) -> None:
    sent = run_saturated(per_minute, burst, 1_000.0, 600.0)
    limit = math.ceil(per_minute) + burst - 1
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
