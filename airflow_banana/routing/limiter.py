"""Client-side rate limits per channel: GCRA over an injected clock, plus the concurrency cap.

Our own traffic must never be the cause of a 429 (FAULTS.md R5), and the engine must know
exactly how long to sleep for the next slot. Each limit (requests per minute, images per
minute) is a Generic Cell Rate Algorithm cell holding one number, the theoretical arrival time
``tat``. With emission interval ``T = 60 / per_minute`` and ``burst`` ``b``:

* a request costing ``c`` units (``c <= b``) conforms at ``t`` iff ``t >= tat + (c - b) * T``
  (so the next free slot is exactly that time);
* on acceptance ``tat = max(tat, t) + c * T``.

With the default ``b = 1`` requests are spaced ``T`` apart, so no 60 s window ever holds more
than the configured rate (Google counts per minute) and a saturated channel runs at exactly its
cap. A larger burst trades that guarantee for latency.

Transit jitter: the provider counts a request when it *arrives*, we space them when we *send*.
If one request is delayed by ``d`` in transit and the one ``rate`` places later is not, both
land in one provider minute and the later one gets a 429 we caused ourselves (FAULTS R5). So
the limiter spaces requests over a window of ``60 + guard_s`` seconds:
``T = (60 + guard_s) / per_minute``. The router's default guard is 0.5 s (0.8 % of the cap):
a channel configured AT the provider's cap (``rpm = ipm = cap``) then never draws a 429 from
its own rate, and users need not configure it "a bit under" the cap.

Why not the ``limits`` package (not a dependency; MovingWindow/FixedWindow with memory and Redis
storage): its memory storage reads ``time.time()`` directly and expires keys with a background
``threading.Timer``, so no clock can be injected (tests would sleep and race) and it cannot say
*when* the next slot frees, only whether one is free now. GCRA is a few lines, O(1) state, and
maps one-to-one onto a Redis Lua script later.
"""

from __future__ import annotations

from dataclasses import dataclass

from airflow_banana.exceptions import ConfigurationError


@dataclass(frozen=True)
class LimitConfig:
    """Per-channel limits; ``None`` rate = unlimited. Defaults match ``ChannelConfig``."""

    rpm: float | None = None
    ipm: float | None = None
    burst: int = 1
    max_concurrency: int = 4
    guard_s: float = 0.0  # added to the 60 s window: absorbs transit jitter (see the docstring)

    def __post_init__(self) -> None:
        for name in ("rpm", "ipm"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigurationError(f"rate limit {name} must be positive, got {value}")
        if self.burst < 1 or self.max_concurrency < 1:
            raise ConfigurationError(f"burst and max_concurrency must be >= 1: {self}")
        if not 0.0 <= self.guard_s < 60.0:
            raise ConfigurationError(f"rate guard_s must be in [0, 60), got {self.guard_s}")

    @property
    def window_s(self) -> float:
        return 60.0 + self.guard_s

    def interval_s(self) -> float:
        """Seconds between two requests at the tightest configured rate (0 when unlimited)."""
        rates = [r for r in (self.rpm, self.ipm) if r is not None]
        return interval(min(rates), self.window_s) if rates else 0.0


@dataclass
class GcraRecord:
    """Theoretical arrival time; ``tat <= now`` means the cell is idle (full burst available)."""

    tat: float = 0.0


def interval(per_minute: float, window_s: float = 60.0) -> float:
    return window_s / per_minute


def gcra_earliest(
    record: GcraRecord, per_minute: float, burst: int, now: float, cost: int = 1, window_s: float = 60.0
) -> float:
    """Earliest time a request of ``cost`` units conforms (``<= now`` means: now)."""
    if cost > burst:
        raise ConfigurationError(f"a request of {cost} units can never fit a burst of {burst}")
    return max(now, record.tat + (cost - burst) * interval(per_minute, window_s))


def gcra_commit(
    record: GcraRecord, per_minute: float, now: float, cost: int = 1, window_s: float = 60.0
) -> None:
    """Account an accepted request (the caller checked ``gcra_earliest(...) <= now``)."""
    record.tat = max(record.tat, now) + cost * interval(per_minute, window_s)
