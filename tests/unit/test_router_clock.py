"""Injected clocks and the daily quota reset (midnight America/Los_Angeles)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from airflow_banana.exceptions import ConfigurationError
from airflow_banana.routing import FakeClock, SystemClock, next_daily_reset
from airflow_banana.routing.clock import Clock, WallClock


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


def test_fake_clock_moves_only_forward_and_drags_the_wall_clock() -> None:
    clock = FakeClock(10.0, wall_start=1_000_000.0)
    assert isinstance(clock, Clock) and isinstance(clock, WallClock)
    assert clock.advance(5) == 15.0 and clock.wall() == 1_000_005.0
    assert clock.set(20.0) == 20.0
    with pytest.raises(ValueError):
        clock.advance(-1)
    with pytest.raises(ValueError):
        clock.set(19.0)


def test_default_fake_wall_is_noon_pacific() -> None:
    assert FakeClock().wall() == utc(2026, 1, 15, 20, 0)


def test_system_clock_is_monotonic_or_shared_epoch() -> None:
    local, shared = SystemClock(), SystemClock(shared=True)
    assert local.now() <= local.now()
    assert abs(shared.now() - shared.wall()) < 5


@pytest.mark.parametrize(
    ("wall", "reset"),
    [
        (utc(2026, 1, 15, 20, 0), utc(2026, 1, 16, 8, 0)),  # noon PST -> midnight PST (UTC-8)
        (utc(2026, 1, 16, 7, 59, 59), utc(2026, 1, 16, 8, 0)),  # one second before
        (utc(2026, 1, 16, 8, 0), utc(2026, 1, 17, 8, 0)),  # exactly midnight: that reset passed
        (utc(2026, 7, 1, 12, 0), utc(2026, 7, 2, 7, 0)),  # PDT (UTC-7)
        (utc(2026, 3, 8, 12, 0), utc(2026, 3, 9, 7, 0)),  # the day DST starts (23 h day)
        (utc(2026, 11, 1, 12, 0), utc(2026, 11, 2, 8, 0)),  # the day DST ends (25 h day)
    ],
)
def test_next_daily_reset_is_the_next_midnight_pacific(wall: float, reset: float) -> None:
    assert next_daily_reset(wall) == reset


def test_day_length_override_for_the_time_compressed_simulator() -> None:
    assert next_daily_reset(1_000.0, day_length_s=600.0) == 1_200.0
    assert next_daily_reset(1_200.0, day_length_s=600.0) == 1_800.0
    assert next_daily_reset(1_000.0, day_length_s=600.0, day_origin_s=950.0) == 1_550.0


def test_bad_reset_settings() -> None:
    with pytest.raises(ConfigurationError):
        next_daily_reset(0.0, day_length_s=0)
    with pytest.raises(ConfigurationError):
        next_daily_reset(0.0, timezone="Mars/Olympus_Mons")
