"""Channels: one module per wire protocol, all behind the ``Channel`` protocol.

``build_channel`` is the only constructor callers need. SDK-backed modules are imported on
demand, so importing this package (hooks, operators, DAG parsing) never imports google-genai.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

from airflow_banana.channels.base import Channel
from airflow_banana.channels.config import ChannelConfig, parse_channel
from airflow_banana.exceptions import BananaError, ConfigurationError

log = logging.getLogger(__name__)

__all__ = ["Channel", "ChannelConfig", "build_channel", "close_channels", "parse_channel"]


# The HTTP clients under the SDKs log one INFO line per request ("HTTP Request: POST ..."):
# thousands of them would drown the provider's own progress lines in a task log.
_CHATTY_LOGGERS = ("httpx", "httpcore")


def quiet_http_loggers() -> None:
    """Keep the HTTP clients' loggers at WARNING, unless the user set a level for them."""
    for name in _CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


class Closable(Protocol):
    """What closing needs of a channel: its name (for the log) and ``aclose``."""

    @property
    def name(self) -> str: ...

    async def aclose(self) -> None: ...


async def close_channels(channels: Iterable[Closable]) -> None:
    """Close every channel of a run; a channel failing to close is logged, never raised (the
    run's outcome is already decided)."""
    for channel in channels:
        try:
            await channel.aclose()
        except BananaError:
            log.debug("closing channel %s failed", channel.name, exc_info=True)


def build_channel(config: ChannelConfig) -> Channel:
    """The channel for ``config.protocol``; builds no network client for the Google SDK yet."""
    quiet_http_loggers()
    if config.protocol in ("gemini", "vertex"):
        from airflow_banana.channels.gemini import GeminiChannel

        return GeminiChannel(config)
    if config.protocol == "openai":
        from airflow_banana.channels.openai_compat import OpenAICompatChannel

        return OpenAICompatChannel(config)
    raise ConfigurationError(
        f"channel '{config.name}': no channel implementation for protocol {config.protocol!r}"
    )
