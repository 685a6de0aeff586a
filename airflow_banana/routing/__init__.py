"""Pure routing core of the realtime lane: breaker, limits, throttle, budgets and the router.

No I/O, no asyncio, no Airflow: time comes from an injected ``Clock``, randomness from an
injected ``random.Random``, and per-channel mutable state sits behind ``ChannelStateBackend``
(in memory, or shared by every worker through Redis: ``redis_state.py``). Start at
``router.py``'s docstring: the objective and the engine loop.
"""

from __future__ import annotations

from airflow_banana.routing.breaker import BreakerConfig, BreakerState
from airflow_banana.routing.budget import RetryBudget, RetryBudgetConfig, SpendBudget
from airflow_banana.routing.clock import Clock, FakeClock, SystemClock, WallClock, next_daily_reset
from airflow_banana.routing.failover import FailoverCounter
from airflow_banana.routing.limiter import LimitConfig
from airflow_banana.routing.router import (
    DEFAULT_DEADLINE_S,
    Attempt,
    AttemptRecord,
    Decision,
    GiveUp,
    GiveUpReason,
    ItemProgress,
    Objective,
    RankedChannel,
    Router,
    RouterConfig,
    Wait,
    describe,
    policy_for,
    router_for,
)
from airflow_banana.routing.state import (
    ChannelEvent,
    ChannelPolicy,
    ChannelSnapshot,
    ChannelStateBackend,
    Denial,
    DenialReason,
    InMemoryStateBackend,
    Outcome,
    Permit,
)
from airflow_banana.routing.throttle import ThrottleConfig

__all__ = [
    "DEFAULT_DEADLINE_S",
    "Attempt",
    "AttemptRecord",
    "BreakerConfig",
    "BreakerState",
    "ChannelEvent",
    "ChannelPolicy",
    "ChannelSnapshot",
    "ChannelStateBackend",
    "Clock",
    "Decision",
    "Denial",
    "DenialReason",
    "FailoverCounter",
    "FakeClock",
    "GiveUp",
    "GiveUpReason",
    "InMemoryStateBackend",
    "ItemProgress",
    "LimitConfig",
    "Objective",
    "Outcome",
    "Permit",
    "RankedChannel",
    "RetryBudget",
    "RetryBudgetConfig",
    "Router",
    "RouterConfig",
    "SpendBudget",
    "SystemClock",
    "ThrottleConfig",
    "Wait",
    "WallClock",
    "describe",
    "next_daily_reset",
    "policy_for",
    "router_for",
]
