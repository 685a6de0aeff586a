"""Client-side adaptive throttling per channel (Google SRE book, "Handling Overload").

When a channel rejects most of what we send, sending more only deepens the overload and costs
our own latency. Each channel keeps, over a sliding window (default 120 s in 10 s buckets):

* ``requests``: every attempt the application wanted to make, including the ones this throttle
  rejected locally;
* ``accepts``: attempts the backend accepted, i.e. answered with a success or an item-terminal
  verdict (400, blocked prompt) or a 200 without an image; not 5xx, 429, timeouts or resets.

A new attempt is rejected locally with probability ``max(0, (requests - K * accepts) / (requests + 1))``
(``K = 2``). At a 45 % 503 rate accepts are 55 % of requests, so ``K * accepts > requests`` and
nothing is rejected; once more than ``1 - 1/K`` of calls fail, the channel is sent roughly
``K * accepts`` requests, i.e. about what it can take. The half-open probe bypasses the throttle
(it is a single request whose purpose is to measure the channel).
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
    """Roll the dice for one attempt. Does not count it: call ``count_request`` either way."""
    probability = reject_probability(record, config, now)
    return probability <= 0.0 or rng.random() >= probability


def count_request(record: ThrottleRecord, config: ThrottleConfig, now: float) -> None:
    window_add(record.window, now, REQUESTS, bucket_s=config.bucket_s, window_s=config.window_s)


def count_accept(record: ThrottleRecord, config: ThrottleConfig, now: float) -> None:
    window_add(record.window, now, ACCEPTS, bucket_s=config.bucket_s, window_s=config.window_s)
