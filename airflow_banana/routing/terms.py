"""What the routing core knows of a channel: its own small value, not the channel layer's.

The router, its policies and the eligibility filter decide on prices, billing, timeouts, limits
and what a channel may carry; they never need a base URL, a key or a protocol adapter. So the
pure core takes ``ChannelTerms`` and imports nothing from ``channels/``; the channel layer maps
a connection onto it (``ChannelConfig.terms()``). ``terms_of`` accepts either, so callers that
hold connection configs pass them as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from airflow_banana.models import DEFAULT_MODEL


@dataclass(frozen=True)
class ChannelTerms:
    """One router channel as the decisions see it (no secrets, no endpoint)."""

    name: str
    prices: Mapping[str, float]  # per image size, complete
    attempt_timeout_s: float
    max_concurrency: int
    billed_on_failure: bool = False
    rpm: float | None = None
    ipm: float | None = None
    official: bool = False  # operated by Google: prompts and images stay with Google
    grounding: bool = False  # carries Gemini's Search tool
    model: str = DEFAULT_MODEL


class HasTerms(Protocol):
    """Anything that can say what the router needs to know of it (``ChannelConfig``)."""

    def terms(self) -> ChannelTerms: ...


def terms_of(channel: ChannelTerms | HasTerms) -> ChannelTerms:
    return channel if isinstance(channel, ChannelTerms) else channel.terms()
