"""One way to build a google-genai client from a ``ChannelConfig``, for every lane.

The realtime channel (``channels.gemini.GeminiChannel``) owns the construction: key or Vertex
credentials (service-account JSON, the password as an OAuth token, else ADC), base URL, the
one-attempt timeout and no SDK retries. The batch lane needs the same client, so it comes from
here instead of a second copy of that logic that could drift (and, e.g., leak a key differently).
"""

from __future__ import annotations

import contextlib
from typing import Any

from airflow_banana.channels.config import ChannelConfig


def genai_client(config: ChannelConfig) -> Any:
    """A new ``google.genai.Client`` for a ``gemini`` or ``vertex`` connection; the caller closes it.

    Raises ``ConfigurationError`` for another protocol or unusable Vertex credentials.
    """
    from airflow_banana.channels.gemini import GeminiChannel

    # The channel only builds the client here; it makes no call and is dropped at once.
    return GeminiChannel(config).get_client()


def close_client(client: Any) -> None:
    """Close a sync client's HTTP pools (best effort; a failure to close is not an error)."""
    # closing must never mask the result of the work done
    with contextlib.suppress(Exception):
        client.close()
