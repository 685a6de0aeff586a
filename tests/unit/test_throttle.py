"""Adaptive throttling: the SRE formula over a bucketed two-minute window."""

from __future__ import annotations

import random

import pytest

from airflow_banana.exceptions import ConfigurationError
from airflow_banana.routing.throttle import (
    ThrottleConfig,
    ThrottleRecord,
    admit,
    count_accept,
    count_request,
    reject_probability,
)

CFG = ThrottleConfig()


class FixedRandom(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def fill(record: ThrottleRecord, requests: int, accepts: int, now: float, cfg: ThrottleConfig = CFG) -> None:
    for _ in range(requests):
        count_request(record, cfg, now)
    for _ in range(accepts):
        count_accept(record, cfg, now)


@pytest.mark.parametrize(
    ("requests", "accepts", "expected"),
    [
        (0, 0, 0.0),
        (1, 0, 0.5),
        (10, 0, 10 / 11),
        (10, 5, 0.0),
        (10, 4, 2 / 11),
        (100, 55, 0.0),  # the 45 % 503 peak profile is never throttled
        (100, 40, 20 / 101),
        (100, 10, 80 / 101),
    ],
)
def test_reject_probability_is_the_sre_formula(requests: int, accepts: int, expected: float) -> None:
    record = ThrottleRecord()
    fill(record, requests, accepts, 500.0)
    assert reject_probability(record, CFG, 500.0) == pytest.approx(expected)


def test_k_changes_the_tolerance() -> None:
    record = ThrottleRecord()
    fill(record, 10, 4, 0.0)
    assert reject_probability(record, ThrottleConfig(k=1.0), 0.0) == pytest.approx(6 / 11)
    assert reject_probability(record, ThrottleConfig(k=3.0), 0.0) == 0.0


def test_window_is_two_minutes() -> None:
    record = ThrottleRecord()
    fill(record, 20, 0, 1_000.0)
    assert reject_probability(record, CFG, 1_000.0 + 105.0) > 0.9
    assert reject_probability(record, CFG, 1_000.0 + 130.0) == 0.0


def test_admit_rolls_against_the_probability() -> None:
    record = ThrottleRecord()
    fill(record, 1, 0, 0.0)  # p = 0.5
    assert admit(record, CFG, 0.0, FixedRandom(0.49)) is False
    assert admit(record, CFG, 0.0, FixedRandom(0.5)) is True
    rng = random.Random(3)
    admitted = sum(admit(record, CFG, 0.0, rng) for _ in range(4000))
    assert 1800 < admitted < 2200


def test_zero_probability_always_admits_and_disabled_never_rejects() -> None:
    record = ThrottleRecord()
    assert admit(record, CFG, 0.0, FixedRandom(0.0)) is True
    fill(record, 50, 0, 0.0)
    off = ThrottleConfig(enabled=False)
    assert reject_probability(record, off, 0.0) == 0.0
    assert admit(record, off, 0.0, FixedRandom(0.0)) is True


def test_invalid_config() -> None:
    for bad in ({"k": 0.5}, {"window_s": 0}, {"bucket_s": -1}, {"recheck_s": 0}):
        with pytest.raises(ConfigurationError):
            ThrottleConfig(**bad)
