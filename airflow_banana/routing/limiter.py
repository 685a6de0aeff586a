"""Client-side rate limits per channel: GCRA over an injected clock, plus the concurrency cap.

Our own traffic must never be the cause of a 429 (FAULTS.md R5), and the engine must know
exactly how long to sleep for the next slot. Each limit (requests per minute, images per
minute) is a Generic Cell Rate Algorithm cell: the theoretical arrival time ``tat`` plus the
send times of the last window. With emission interval ``T = 60 / per_minute``, ``n =
ceil(per_minute)`` and burst ``b <= n``:

* a request costing ``c`` units (``c <= b``) conforms at ``t`` iff ``t >= tat + (c - b) * T``
  and the last window holds at most ``n - c`` units, so the next free slot is exactly the
  later of the two times (the window log is the provider's own rule: at most its cap in any
  minute; a burst never adds to it);
* on acceptance ``tat = tat + c * T`` when the request is less than one interval late for its
  slot, else ``now + c * T``.

The burst is a choice between learning and time. ``b = 1`` spaces calls by ``T``: each answer
is known before many more calls go out, so the first 429 or 503 of an incident costs one call.
``b = n`` sends a whole window at once when the channel is idle: nothing is held back that the
provider would take. The router (``policy_for``) spaces where a failed call is billed (a call
sent into an incident is money) and bursts where failures are free (a call sent into an
incident costs nothing, holding it back costs its deadline: 14 items on a 15 rpm channel with
spacing take 52 s to start, bursting they all start at once). A request may also ask for the
whole window (``state.acquire(..., urgent=True)``): the router does so on a spaced channel for an
item that would otherwise leave for a dearer one.

Catch-up: a request sent late for its slot (a worker's event loop woke late, a Redis round
trip, a busy CPU) keeps the schedule instead of pushing every later slot back by its lateness.
Plain GCRA (``tat = max(tat, now) + T``) loses every such delay for good; in the fleet bench
(issue 14: 4 Airflow workers sharing three channels through Redis, 2 busy cores) that was 6-9 %
of the cap. With catch-up two requests can be closer than ``T``, so the window log is what
bounds a window: no window of ``60 + guard_s`` seconds of send times ever holds more than
``n`` units, whatever the burst, and a saturated channel runs at its cap.

Transit jitter: the provider counts a request when it *arrives*, we space them when we *send*.
If one request is delayed by ``d`` in transit and the one ``rate`` places later is not, both
land in one provider minute and the later one gets a 429 we caused ourselves (FAULTS R5). So
the limiter spaces requests over a window of ``60 + guard_s`` seconds:
``T = (60 + guard_s) / per_minute``. The router's default guard is 0.5 s (0.8 % of the cap):
a channel configured AT the provider's cap (``rpm = ipm = cap``) then never draws a 429 from
its own rate as long as no request takes half a second longer in transit than another.

Cold start: in the first window of a channel's use (its log empty: a fresh channel, or one idle
for a window) every send is logged ``cold_start_s`` later than it was sent, so it stays in the
window that much longer. Cold task processes start together then (imports, first connections,
a busy CPU), and their first requests can arrive seconds after their permit. Measured in the
fleet bench (issue 14, 4 task processes starting at once on 2 cores shared with other work):
4 quota 429s of our own at 60 s with no cold start, 0 and then 2 (load average 6-11) with 2 s;
the router's default is 5 s, which costs at most 5 s of the first minute's sends (a channel
running for 4 minutes: 2 % of them, an hour: 0.1 %).

Why not the ``limits`` package (not a dependency; MovingWindow/FixedWindow with memory and Redis
storage): its memory storage reads ``time.time()`` directly and expires keys with a background
``threading.Timer``, so no clock can be injected (tests would sleep and race) and it cannot say
*when* the next slot frees, only whether one is free now. GCRA plus the log is a few lines; its
state is one number and at most a window's worth of send times (``rpm`` floats), small enough
for the one Redis hash per channel of ``routing/redis_state.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from airflow_banana.exceptions import ConfigurationError


@dataclass(frozen=True)
class LimitConfig:
    """Per-channel limits; ``None`` rate = unlimited. Defaults match ``ChannelConfig``."""

    rpm: float | None = None
    ipm: float | None = None
    burst: int = 1
    max_concurrency: int = 4
    guard_s: float = 0.0  # added to the minute: absorbs transit jitter (see the docstring)
    minute_s: float = 60.0  # the provider's minute (a compressed one in the time-compressed simulator)
    cold_start_s: float = 0.0  # first window: sends count this much later (see the docstring)

    def __post_init__(self) -> None:
        for name in ("rpm", "ipm"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigurationError(f"rate limit {name} must be positive, got {value}")
        if self.burst < 1 or self.max_concurrency < 1:
            raise ConfigurationError(f"burst and max_concurrency must be >= 1: {self}")
        if not self.minute_s > 0:
            raise ConfigurationError(f"rate minute_s must be positive, got {self.minute_s}")
        if not 0.0 <= self.guard_s < self.minute_s:
            raise ConfigurationError(f"rate guard_s must be in [0, {self.minute_s}), got {self.guard_s}")
        if not 0.0 <= self.cold_start_s < self.minute_s:
            raise ConfigurationError(
                f"rate cold_start_s must be in [0, {self.minute_s}), got {self.cold_start_s}"
            )

    @property
    def window_s(self) -> float:
        return self.minute_s + self.guard_s

    def interval_s(self) -> float:
        """Seconds between two requests at the tightest configured rate (0 when unlimited)."""
        rates = [r for r in (self.rpm, self.ipm) if r is not None]
        return interval(min(rates), self.window_s) if rates else 0.0


@dataclass
class GcraRecord:
    """Theoretical arrival time (``tat <= now``: idle, full burst available), the send times of
    the last window (one entry per unit, sorted; a cold start's shifted) and when the cold start
    that began with the first send into an empty window ends."""

    tat: float = 0.0
    sent: list[float] = field(default_factory=list)
    cold_until: float = 0.0


def interval(per_minute: float, window_s: float = 60.0) -> float:
    return window_s / per_minute


def window_units(per_minute: float) -> int:
    """The most units any window may hold: the rate, rounded up (a burst never adds to it)."""
    return math.ceil(per_minute - 1e-9)


def gcra_earliest(
    record: GcraRecord, per_minute: float, burst: int, now: float, cost: int = 1, window_s: float = 60.0
) -> float:
    """Earliest time a request of ``cost`` units conforms (``<= now`` means: now)."""
    if cost > burst:
        raise ConfigurationError(f"a request of {cost} units can never fit a burst of {burst}")
    units = window_units(per_minute)
    burst = min(burst, units)
    earliest = max(now, record.tat + (cost - burst) * interval(per_minute, window_s))
    live = [t for t in record.sent if t > now - window_s]
    over = len(live) + cost - units
    if over > 0:  # the window is full: the oldest units that must leave it first
        earliest = max(earliest, live[over - 1] + window_s)
    return earliest


def gcra_commit(
    record: GcraRecord,
    per_minute: float,
    now: float,
    cost: int = 1,
    window_s: float = 60.0,
    cold_start_s: float = 0.0,
) -> None:
    """Account an accepted request (the caller checked ``gcra_earliest(...) <= now``)."""
    step = interval(per_minute, window_s)
    base = record.tat if record.tat >= now - step else now  # less than a slot late: keep the schedule
    record.tat = base + cost * step
    live = [t for t in record.sent if t > now - window_s]
    if not live:
        record.cold_until = now + window_s  # the first send into an empty window: a cold start
    stamp = now + cold_start_s if now < record.cold_until else now
    record.sent = sorted([*live, *([stamp] * cost)])
