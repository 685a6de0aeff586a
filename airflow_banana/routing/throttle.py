"""Client-side adaptive throttling per channel (Google SRE book, "Handling Overload").

When a channel rejects most of what we send, sending more only deepens the overload and costs
our own latency. Each channel keeps, over a sliding window (default 120 s in 10 s buckets):

* ``requests``: calls to the channel that completed (any outcome but a cancellation);
* ``accepts``: those the backend accepted, i.e. answered with a success, an item-terminal
  verdict (400, blocked prompt) or a 200 without an image; not 5xx, 429, timeouts or resets.

A new attempt is rejected locally with probability ``max(0, (requests - K * accepts) / (requests + 1))``
(``K = 2``). At a 45 % 503 rate accepts are 55 % of requests, so ``K * accepts > requests`` and
nothing is rejected; once more than ``1 - 1/K`` of calls fail, the channel is sent roughly what
it accepts times K. The half-open probe bypasses the throttle (it is the one call whose purpose
is to measure the channel).

Two deliberate departures from the book, both measured in ``tests/unit/test_router_scenarios.py``:

* The book counts a request when it is sent and includes locally rejected ones. Image calls take
  10-30 s, so calls in flight would count as failures (with 8 in flight and none back yet the
  probability is 8/9), and an engine re-asking for a waiting item would count the same item
  again and again; at a 34 % failure rate that spiral held the cheap channel at p = 0.75 and sent
  two thirds of the items to a channel 2.7 times dearer. So requests are counted when a call
  *completes*, and local rejections are not requests: the probability depends only on what the
  channel actually answered.
* A rejection is not a final failure: the router fails over to the next channel.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from airflow_banana.exceptions import ConfigurationError
from airflow_banana.routing.window import WindowCounts, window_add, window_totals

REQUESTS, ACCEPTS = 0, 1


@dataclass(frozen=True)
class ThrottleConfig:
    k: float = 2.0
    window_s: float = 120.0
    bucket_s: float = 10.0
    enabled: bool = True
    recheck_s: float = 0.5  # after a local rejection, how soon the engine should ask again

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigurationError(f"throttle k must be >= 1 (1 = reject at any failure), got {self.k}")
        if min(self.window_s, self.bucket_s, self.recheck_s) <= 0:
            raise ConfigurationError(f"throttle durations must be positive: {self}")


@dataclass
class ThrottleRecord:
    window: WindowCounts = field(default_factory=lambda: WindowCounts(arity=2))


def reject_probability(record: ThrottleRecord, config: ThrottleConfig, now: float) -> float:
    """``max(0, (requests - K * accepts) / (requests + 1))`` over the window ending at ``now``."""
    if not config.enabled:
        return 0.0
    requests, accepts = window_totals(record.window, now, bucket_s=config.bucket_s, window_s=config.window_s)
    return max(0.0, (requests - config.k * accepts) / (requests + 1))


def admit(record: ThrottleRecord, config: ThrottleConfig, now: float, rng: random.Random) -> bool:
    """Roll the dice for one attempt (counts nothing)."""
    probability = reject_probability(record, config, now)
    return probability <= 0.0 or rng.random() >= probability


def count_request(record: ThrottleRecord, config: ThrottleConfig, now: float) -> None:
    """Count one completed call (accepted or not)."""
    window_add(record.window, now, REQUESTS, bucket_s=config.bucket_s, window_s=config.window_s)


def count_accept(record: ThrottleRecord, config: ThrottleConfig, now: float) -> None:
    window_add(record.window, now, ACCEPTS, bucket_s=config.bucket_s, window_s=config.window_s)
