"""Channels: one module per wire protocol, all behind the ``Channel`` protocol.

``build_channel`` is the only constructor callers need. SDK-backed modules are imported on
demand, so importing this package (hooks, operators, DAG parsing) never imports google-genai.
"""

from __future__ import annotations

from airflow_banana.channels.base import Channel
from airflow_banana.channels.config import ChannelConfig, parse_channel
from airflow_banana.exceptions import ConfigurationError

__all__ = ["Channel", "ChannelConfig", "build_channel", "parse_channel"]


def build_channel(config: ChannelConfig) -> Channel:
    """The channel for ``config.protocol``; builds no network client for the Google SDK yet."""
    if config.protocol in ("gemini", "vertex"):
        from airflow_banana.channels.gemini import GeminiChannel

        return GeminiChannel(config)
    if config.protocol == "openai":
        from airflow_banana.channels.openai_compat import OpenAICompatChannel

        return OpenAICompatChannel(config)
    raise ConfigurationError(
        f"channel '{config.name}': no channel implementation for protocol {config.protocol!r}"
    )
