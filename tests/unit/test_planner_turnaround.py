"""Batch turnaround estimation: percentile of recorded jobs, conservative default when too few."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from airflow_banana.exceptions import ConfigurationError
from airflow_banana.planning.planner import BatchLane
from airflow_banana.planning.turnaround import DEFAULT_TURNAROUND, estimate_turnaround
from airflow_banana.pricing import LIST_PRICES

HOUR = 3600.0


def test_no_history_is_the_conservative_24h_default() -> None:
    est = estimate_turnaround([])
    assert est.duration == DEFAULT_TURNAROUND == timedelta(hours=24)
    assert est.source == "default"
    assert est.samples == 0
    assert "default" in est.describe()


def test_too_few_fast_samples_keep_the_default() -> None:
    est = estimate_turnaround([HOUR, 2 * HOUR, HOUR, 3 * HOUR], min_samples=5)
    assert est.duration == timedelta(hours=24)
    assert est.source == "default"
    assert est.samples == 4


def test_too_few_samples_never_go_below_the_slowest_seen() -> None:
    # One stuck job of 40 h: with too little history the default is not allowed to hide it.
    est = estimate_turnaround([HOUR, 40 * HOUR], min_samples=5)
    assert est.duration == timedelta(hours=40)
    assert est.source == "observed-max"
    assert "slowest" in est.describe()


def test_enough_samples_refine_below_the_default_with_nearest_rank() -> None:
    durations = [float(h) * HOUR for h in range(1, 21)]  # 1 h .. 20 h
    est = estimate_turnaround(durations, percentile=95)
    # nearest rank: ceil(0.95 * 20) = 19th smallest
    assert est.duration == timedelta(hours=19)
    assert est.source == "history"
    assert est.samples == 20
    assert estimate_turnaround(durations, percentile=50).duration == timedelta(hours=10)
    assert estimate_turnaround(durations, percentile=100).duration == timedelta(hours=20)


def test_a_stuck_job_dominates_a_high_percentile() -> None:
    durations = [2 * HOUR] * 9 + [60 * HOUR]
    assert estimate_turnaround(durations, percentile=95).duration == timedelta(hours=60)
    assert estimate_turnaround(durations, percentile=90).duration == timedelta(hours=2)


def test_exactly_min_samples_uses_history() -> None:
    est = estimate_turnaround([HOUR] * 5, min_samples=5)
    assert est.source == "history"
    assert est.duration == timedelta(hours=1)


def test_window_keeps_only_the_most_recent_jobs() -> None:
    old_slow = [50 * HOUR] * 10
    recent_fast = [HOUR] * 10
    assert estimate_turnaround(old_slow + recent_fast, window=10).duration == timedelta(hours=1)
    assert estimate_turnaround(old_slow + recent_fast, window=None).duration == timedelta(hours=50)


def test_corrupt_records_are_ignored_and_counted() -> None:
    est = estimate_turnaround([HOUR] * 5 + [-1.0, math.nan, math.inf])
    assert est.ignored == 3
    assert est.samples == 5
    assert est.duration == timedelta(hours=1)
    assert "3 unusable" in est.describe()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"percentile": 0},
        {"percentile": 101},
        {"min_samples": 0},
        {"window": 0},
        {"default": timedelta(0)},
    ],
)
def test_bad_parameters_are_configuration_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError, match="batch turnaround"):
        estimate_turnaround([HOUR], **kwargs)  # type: ignore[arg-type]


def test_batch_lane_from_history_uses_the_confidence_as_percentile() -> None:
    durations = [float(h) * HOUR for h in range(1, 21)]
    lane = BatchLane.from_history("dev-batch", LIST_PRICES["batch"], durations, confidence=0.5)
    assert lane.turnaround == timedelta(hours=10)
    assert lane.estimate is not None and lane.estimate.source == "history"
    conservative = BatchLane.from_history("dev-batch", LIST_PRICES["batch"], durations, confidence=0.95)
    assert conservative.turnaround == timedelta(hours=19)
    fresh = BatchLane.from_history("vertex-batch", LIST_PRICES["batch"], [])
    assert fresh.turnaround == timedelta(hours=24)
    with pytest.raises(ConfigurationError, match="confidence"):
        BatchLane.from_history("dev-batch", LIST_PRICES["batch"], durations, confidence=1.0)
