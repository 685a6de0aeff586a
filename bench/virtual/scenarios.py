"""Seeded scenarios: each channel's ground truth (what the provider really does) and the job.

Drawn so that nobody tuned the router on them (issue 11, part 4): outages of 1 s to 10 min at
random times (503s or silent hangs), bursts and steady rates of 429 + ``RetryInfo``, a per-day
quota that runs out before the day ends, 503 rates of 0-60 %, silent hangs, provider caps of
5-100 rpm, 10-5,000 items, deadlines from tight to none, 2-4 channels from the price table of
/work/shared/PRICING.md. The connection a user writes says the provider's documented rpm and
leaves ``max_concurrency`` to its default: that is what ``connection_extra`` returns.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, replace
from typing import Any

from airflow_banana.channels.config import ChannelConfig, parse_channel

# 2026-01-15 08:00 America/Los_Angeles (16:00 UTC): a weekday morning; a scenario with a daily
# quota moves its start so that the Pacific midnight falls inside the run.
WALL_START = 1_768_492_800.0
DAY_S = 86_400.0
GOOGLE_QUOTA_PER_DAY = "GenerateRequestsPerDayPerProjectPerModel-FreeTier"


@dataclass(frozen=True)
class Window:
    """A stretch of virtual seconds ``[start, end)`` during which a fault holds."""

    start: float
    end: float

    def covers(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass(frozen=True)
class Outage(Window):
    mode: str = "503"  # "503": every call fails fast; "hang": every call is accepted and never answers


@dataclass(frozen=True)
class Burst(Window):
    retry_s: float = 5.0  # the RetryInfo delay every 429 of the burst carries


@dataclass(frozen=True)
class ChannelTruth:
    """What one provider does, whatever the client believes; the channel model samples it."""

    name: str
    kind: str  # "relay" (Gemini-native), "google", "vertex", "openrouter" (OpenAI-compatible)
    protocol: str
    price: float  # what the connection is configured with (list price), USD per 1K image
    billed: float  # what a success really bills (a relay's usage.cost may differ)
    billed_on_failure: bool
    cap_rpm: int  # enforced by the provider per clock minute; the connection says the same
    latency_median_s: float
    latency_sigma: float  # lognormal; p95 = median * exp(1.645 sigma) ~ 24 s
    error_latency_s: float = 1.0  # median time to a 503 / 429 answer
    p503: float = 0.0
    p429: float = 0.0  # steady share of 429 + RetryInfo
    retry429_s: float = 5.0
    p_hang: float = 0.0  # calls accepted that never answer
    outages: tuple[Outage, ...] = ()
    bursts: tuple[Burst, ...] = ()
    daily_quota: int | None = None  # calls left today; 429 QuotaFailure ...PerDay... after, until day end
    day_end_s: float = math.inf  # virtual second of the next Pacific midnight

    def connection_extra(self) -> dict[str, Any]:
        """The Airflow connection ``extra`` a user writes for this channel."""
        extra: dict[str, Any] = {"protocol": self.protocol, "prices": {"1K": self.price}, "rpm": self.cap_rpm}
        if self.protocol == "vertex":
            extra.update(project="bench-project", location="global")
        if self.billed_on_failure:
            extra["billed_on_failure"] = True
        return extra

    def config(self) -> ChannelConfig:
        host = {
            "relay": "https://relay.example.com",
            "openrouter": "https://openrouter.ai/api/v1",
        }.get(self.kind)
        return parse_channel(self.name, host=host, password="bench-key", extra=self.connection_extra())

    def failure_rate(self, t: float) -> float:
        """Share of calls at ``t`` that fail (outside outages and bursts), for the optimum."""
        return min(1.0, self.p503 + self.p429 + self.p_hang)


@dataclass(frozen=True)
class Scenario:
    id: str
    seed: int
    items: int
    channels: tuple[ChannelTruth, ...]
    deadline_s: float | None  # every item is due this long after the start; None: no deadline
    deadline_kind: str  # "tight", "moderate", "loose", "none"
    wall_start: float = WALL_START
    image_size: str = "1K"

    def summary(self) -> dict[str, Any]:
        return asdict(self)


# name, kind, protocol, list price (PRICING.md), who bills what
_POOL: tuple[tuple[str, str, str, float], ...] = (
    ("relay", "relay", "gemini", 0.05),
    ("google", "google", "gemini", 0.134),
    ("vertex", "vertex", "vertex", 0.134),
    ("openrouter", "openrouter", "openai", 0.0),  # price drawn from 0.15-0.26
)
CAPS = (5, 10, 15, 20, 30, 50, 60, 100)


def _loguniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def min_makespan_s(items: int, channels: tuple[ChannelTruth, ...]) -> float:
    """Seconds to do ``items`` at the summed caps with every call succeeding (a floor)."""
    per_minute = sum(c.cap_rpm for c in channels)
    return items / per_minute * 60.0 + max(c.latency_median_s for c in channels)


def _channel(
    rng: random.Random, slot: tuple[str, str, str, float], items: int, horizon: float
) -> ChannelTruth:
    name, kind, protocol, price = slot
    if kind == "openrouter":
        price = round(rng.uniform(0.15, 0.26), 3)
    # usage.cost of an OpenAI-compatible relay varies with its upstream; others bill the list price
    billed = round(price * rng.uniform(0.8, 1.0), 4) if kind == "openrouter" else price
    billed_on_failure = kind in ("relay", "openrouter") and rng.random() < 0.25
    median = rng.uniform(8.0, 12.0)
    sigma = math.log(24.0 / median) / 1.645
    outages = []
    for _ in range(rng.choice((0, 0, 1, 1, 2))):
        duration = _loguniform(rng, 1.0, 600.0)
        start = rng.uniform(0.0, max(60.0, horizon))
        outages.append(Outage(start, start + duration, mode="hang" if rng.random() < 0.3 else "503"))
    bursts = []
    for _ in range(rng.choice((0, 0, 1))):
        duration = _loguniform(rng, 1.0, 120.0)
        start = rng.uniform(0.0, max(60.0, horizon / 2)) if rng.random() < 0.7 else 0.0
        bursts.append(Burst(start, start + duration, retry_s=round(rng.uniform(1.0, 30.0), 1)))
    p503 = 0.0 if rng.random() < 0.4 else rng.uniform(0.0, 0.6)
    p429 = 0.0 if rng.random() < 0.7 else rng.uniform(0.02, 0.3)
    p_hang = 0.0 if rng.random() < 0.8 else rng.uniform(0.01, 0.2)
    quota = None
    if kind in ("google", "relay") and rng.random() < 0.15:
        quota = max(1, int(items * rng.uniform(0.1, 0.8)))
    return ChannelTruth(
        name=name,
        kind=kind,
        protocol=protocol,
        price=price,
        billed=billed,
        billed_on_failure=billed_on_failure,
        cap_rpm=rng.choice(CAPS),
        latency_median_s=round(median, 2),
        latency_sigma=round(sigma, 4),
        p503=round(p503, 3),
        p429=round(p429, 3),
        retry429_s=round(rng.uniform(1.0, 20.0), 1),
        p_hang=round(p_hang, 3),
        outages=tuple(sorted(outages, key=lambda o: o.start)),
        bursts=tuple(bursts),
        daily_quota=quota,
    )


def generate(seed: int, index: int) -> Scenario:
    """Scenario ``index`` of the run seeded ``seed`` (each one reproducible on its own)."""
    scenario_seed = (seed * 1_000_003 + index) & 0x7FFFFFFF
    rng = random.Random(scenario_seed)
    items = round(_loguniform(rng, 10, 5000))
    k = rng.choice((2, 3, 3, 4))
    slots = rng.sample(_POOL, k)
    # a first guess of the run's length, to place faults where the run is
    caps_guess = [rng.choice(CAPS) for _ in slots]
    horizon = min(3600.0, items / sum(caps_guess) * 60.0 + 30.0)
    channels = tuple(_channel(rng, slot, items, horizon) for slot in slots)
    floor = min_makespan_s(items, channels)
    kind = rng.choice(("tight", "moderate", "loose", "none", "none"))
    factor = {"tight": (1.2, 2.0), "moderate": (2.0, 5.0), "loose": (5.0, 20.0)}.get(kind)
    deadline = None if factor is None else round(floor * rng.uniform(*factor) + 30.0, 1)
    wall_start = WALL_START
    if any(c.daily_quota is not None for c in channels):
        # the Pacific midnight falls 5-60 min into the run: 16:00 PST is 08:00 UTC next day - 16 h
        to_midnight = rng.uniform(300.0, 3600.0)
        wall_start = WALL_START + (16 * 3600.0 - to_midnight)
        channels = tuple(c if c.daily_quota is None else _with_day_end(c, to_midnight) for c in channels)
    return Scenario(
        id=f"s{seed}-{index}",
        seed=scenario_seed,
        items=items,
        channels=channels,
        deadline_s=deadline,
        deadline_kind=kind,
        wall_start=wall_start,
    )


def _with_day_end(channel: ChannelTruth, day_end: float) -> ChannelTruth:
    return replace(channel, day_end_s=round(day_end, 1))


def scenario_set(seed: int, count: int) -> list[Scenario]:
    return [generate(seed, i) for i in range(count)]


__all__ = ["Burst", "ChannelTruth", "Outage", "Scenario", "Window", "generate", "scenario_set"]
