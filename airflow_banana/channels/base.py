"""The one interface every channel implements, whatever protocol sits behind it."""

from __future__ import annotations

from typing import Protocol

from airflow_banana.channels.config import ChannelConfig
from airflow_banana.models import GenerationResult, ImageRequest


class Channel(Protocol):
    """Turns an ``ImageRequest`` into a ``GenerationResult`` or raises ``ChannelError``.

    One attempt per call: retries and failover are the router's job, never the channel's.
    """

    config: ChannelConfig

    @property
    def name(self) -> str: ...

    async def generate(self, request: ImageRequest) -> GenerationResult: ...

    async def aclose(self) -> None: ...
