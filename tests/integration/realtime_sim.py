"""Shared by the realtime integration tests: the three simulator channels and a fast router.

Three real channels (an OpenAI-compatible relay, Gemini Developer, Vertex) built with
``parse_channel`` from ``AIRFLOW_CONN_*``-shaped JSON pointing at a simulator on 127.0.0.1, and
the router's durations scaled so a breaker opens, probes and closes within a test. Imported by
the test modules next to it (pytest puts this non-package directory on ``sys.path``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow_banana.channels.config import ChannelConfig, parse_channel
from airflow_banana.models import ImageRequest
from airflow_banana.realtime.engine import WorkItem
from airflow_banana.routing import BreakerConfig, ThrottleConfig
from airflow_banana.testing.connections import channel_connection
from airflow_banana.testing.server import Simulator

MINUTE_S = 1.0
DAY_S = 3.0
RELAY, GEMINI, VERTEX = "relay", "gemini", "vertex"
KEYS = {RELAY: "relay-key", GEMINI: "gemini-key", VERTEX: "vertex-token"}
PROTOCOLS = {RELAY: "openai", GEMINI: "gemini", VERTEX: "vertex"}
RELAY_PRICES = {"1K": 0.05, "2K": 0.05, "4K": 0.05}
GENERATION_ROUTES = [
    "airflow_banana.testing.admin",
    "airflow_banana.testing.gemini_routes",
    "airflow_banana.testing.openai_compat",
]

# Durations of the real router scaled ~1:60 so a breaker opens, probes and closes within a test.
FAST_ROUTER = {
    "retry_backoff_base_s": 0.05,
    "retry_backoff_max_s": 0.4,
    "default_retry_after_s": 0.5,
    "release_poll_s": 0.05,
    "timeout_grace_s": 0.5,
    "stats_half_life_s": 5.0,
    "deadline_margin_s": 0.2,
    # The provider's minute is the simulator's (1 s), so the limiter counts ``rpm`` per 1 s;
    # transit jitter is not compressed (~25 ms on a busy loopback, stalls on 2 busy cores reach
    # 0.1 s), so the guard and the cold start stay in real seconds.
    "rate_minute_s": MINUTE_S,
    "rate_guard_s": 0.1,
    "rate_cold_start_s": 0.1,
}
FAST_BREAKER = BreakerConfig(
    window_s=3.0,
    bucket_s=0.25,
    base_open_s=0.3,
    max_open_s=1.0,
    probe_lease_s=2.0,
)
FAST_THROTTLE = ThrottleConfig(window_s=2.0, bucket_s=0.25, recheck_s=0.05)


def channel_config(sim: Simulator, name: str, **extra: Any) -> ChannelConfig:
    """A channel exactly as an ``AIRFLOW_CONN_*`` connection to the simulator would give it."""
    protocol = PROTOCOLS[name]
    extra.setdefault("prices", RELAY_PRICES if protocol == "openai" else None)
    extra.setdefault("timeout", 5)
    conn = json.loads(channel_connection(sim.base_url, protocol=protocol, key=KEYS[name], **extra))
    return parse_channel(name, host=conn["host"], password=conn["password"], extra=conn["extra"])


def three_channels(sim: Simulator, **per_channel: Mapping[str, Any]) -> list[ChannelConfig]:
    return [channel_config(sim, name, **dict(per_channel.get(name, {}))) for name in (RELAY, GEMINI, VERTEX)]


def work_items(
    n: int, *, prompts: Mapping[int, str] | None = None, deadline_s: float | None = None
) -> list[WorkItem]:
    deadline = datetime.now(UTC) + timedelta(seconds=deadline_s) if deadline_s is not None else None
    ratios = ["1:1", "4:3", "16:9", "9:16"]
    return [
        WorkItem(
            ImageRequest(
                item_id=f"item-{i:03d}",
                prompt=(prompts or {}).get(i, f"studio photo of product {i}"),
                aspect_ratio=ratios[i % len(ratios)],
            ),
            deadline=deadline,
        )
        for i in range(n)
    ]
