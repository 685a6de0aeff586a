"""Preflight: one free call per channel before the first paid one.

A wrong key or an unknown model would otherwise be found by the first item on that channel,
after items were already queued for it, and reported once per item. The probe (``models.get``
for Google, ``GET /models`` for relays; nothing is billed) finds it once, at the start: the
channel is left out of the run with its reason. Only a verdict that the channel cannot work
(``CHANNEL_FATAL``: 401/403/404, API_KEY_INVALID, model not listed) leaves it out; a 503 or a
timeout now says nothing about the next minute, so such a channel stays in and the router
handles it as usual.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from airflow_banana.channels.base import Channel
from airflow_banana.exceptions import ChannelError, ErrorClass

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 20.0


async def unusable_channels(
    channels: Mapping[str, Channel], *, timeout_s: float = PROBE_TIMEOUT_S
) -> dict[str, str]:
    """Probe every channel at once; ``{name: reason}`` of those that cannot work in this run."""
    verdicts = await asyncio.gather(*(_probe(c, timeout_s) for c in channels.values()))
    return {name: reason for name, reason in zip(channels, verdicts, strict=True) if reason is not None}


async def _probe(channel: Channel, timeout_s: float) -> str | None:
    probe = getattr(channel, "probe", None)
    if probe is None:
        return None  # its protocol has no free call; the first item finds out
    try:
        await asyncio.wait_for(probe(), timeout=timeout_s)
    except ChannelError as err:
        if err.error_class is ErrorClass.CHANNEL_FATAL:
            log.warning("%s; left out of this run (preflight, nothing was spent)", err)
            return str(err)
        log.info("preflight of channel '%s' inconclusive (%s); keeping it", channel.name, err)
    except TimeoutError:
        log.info("preflight of channel '%s' got no answer in %.0f s; keeping it", channel.name, timeout_s)
    return None
