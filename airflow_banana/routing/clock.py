"""Time sources for the routing core, and the daily quota reset.

Every decision in ``airflow_banana.routing`` takes time from an injected clock so that it is
deterministic under test and never sleeps. Two kinds of time are needed:

* ``Clock.now()``: monotonic-like seconds. Breakers, limiters, leases and deadlines use it.
  A shared backend (Redis, ``redis_state.py``) needs a timebase every worker agrees on; there,
  inject a clock whose ``now()`` is epoch seconds (``SystemClock(shared=True)``).
* ``WallClock.wall()``: epoch seconds, only to find Google's daily quota reset
  (midnight America/Los_Angeles), which is a calendar fact, not an interval.

``next_daily_reset`` is pure: it takes the wall time as an argument. The simulator compresses
time, so a day length (and origin) can override the calendar: then the reset is the next
multiple of ``day_length_s`` after ``day_origin_s``, i.e.
``origin + (floor((wall - origin) / day_length) + 1) * day_length``.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable
from zoneinfo import ZoneInfo

from airflow_banana.exceptions import ConfigurationError

QUOTA_TIMEZONE = "America/Los_Angeles"


@runtime_checkable
class Clock(Protocol):
    """Monotonic-like seconds; only differences and orderings matter."""

    def now(self) -> float: ...


@runtime_checkable
class WallClock(Protocol):
    """Epoch seconds (UTC), for calendar facts such as the daily quota reset."""

    def wall(self) -> float: ...


class SystemClock:
    """The real clocks. ``shared=True`` makes ``now()`` epoch seconds, comparable across hosts."""

    def __init__(self, *, shared: bool = False) -> None:
        self._shared = shared

    def now(self) -> float:
        return time.time() if self._shared else time.monotonic()

    def wall(self) -> float:
        return time.time()


class FakeClock:
    """A clock that only moves when told to; ``wall()`` moves with it from ``wall_start``.

    The default wall start is 2026-01-15 12:00:00 America/Los_Angeles (20:00 UTC), mid-day so
    tests that bench a channel until midnight Pacific see a realistic 12 h wait.
    """

    DEFAULT_WALL_START = 1_768_507_200.0

    def __init__(self, start: float = 1_000.0, *, wall_start: float = DEFAULT_WALL_START) -> None:
        self._start = start
        self._now = start
        self._wall_start = wall_start

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._wall_start + (self._now - self._start)

    def advance(self, seconds: float) -> float:
        """Move forward (never backward: the routing core relies on monotonic time)."""
        if seconds < 0:
            raise ValueError(f"FakeClock cannot go back in time ({seconds} s)")
        self._now += seconds
        return self._now

    def set(self, moment: float) -> float:
        """Jump to ``moment`` (not earlier than the current time)."""
        return self.advance(moment - self._now)


def next_daily_reset(
    wall_s: float,
    *,
    timezone: str = QUOTA_TIMEZONE,
    day_length_s: float | None = None,
    day_origin_s: float = 0.0,
) -> float:
    """Epoch seconds of the first daily quota reset strictly after ``wall_s``.

    Without ``day_length_s``: the next local midnight in ``timezone`` (DST-aware; a reset at
    exactly midnight counts as passed, so the answer is always in the future).
    """
    if day_length_s is not None:
        if day_length_s <= 0:
            raise ConfigurationError(f"quota day length must be positive, got {day_length_s}")
        periods = math.floor((wall_s - day_origin_s) / day_length_s) + 1
        return day_origin_s + periods * day_length_s
    try:
        zone = ZoneInfo(timezone)
    except (KeyError, ValueError) as err:
        raise ConfigurationError(f"unknown quota timezone {timezone!r}") from err
    local = datetime.fromtimestamp(wall_s, zone)
    tomorrow = local.date() + timedelta(days=1)
    midnight = datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=zone)
    return midnight.timestamp()
