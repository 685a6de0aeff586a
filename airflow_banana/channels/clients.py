"""One way to build a google-genai client from a ``ChannelConfig``, for every lane.

Key or Vertex credentials (service-account JSON, the password as an OAuth token, else ADC), base
URL, the one-attempt timeout and no SDK retries: the realtime channel
(``channels.gemini.GeminiChannel``) and the batch lane's job control (``batch.jobs``) both build
their client here, so there is no second copy of that logic that could drift (and, e.g., leak a
key differently). The SDK is imported only when a client or credentials are built.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from airflow_banana.channels.config import ChannelConfig, config_secrets
from airflow_banana.exceptions import ConfigurationError
from airflow_banana.secrets import scrub_exception

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
GENAI_PROTOCOLS = ("gemini", "vertex")


def require_genai_protocol(config: ChannelConfig, *, who: str = "GeminiChannel") -> None:
    """Refuse a connection whose protocol google-genai does not speak (``openai`` relays)."""
    if config.protocol not in GENAI_PROTOCOLS:
        raise ConfigurationError(
            f"channel '{config.name}': {who} serves gemini/vertex, not {config.protocol!r}"
        )


def service_account_credentials(config: ChannelConfig) -> Any:
    """The credentials of the connection's service-account JSON (``extra.credentials``).

    A broken key file is a ``ConfigurationError`` naming only the error's type: the error text of
    a bad key file might quote it, so the cause is scrubbed too.
    """
    from google.oauth2 import service_account

    assert config.credentials_info is not None
    try:
        info = json.loads(config.credentials_info.reveal())
        return service_account.Credentials.from_service_account_info(info, scopes=[CLOUD_PLATFORM_SCOPE])
    except (ValueError, KeyError, TypeError) as err:
        scrub_exception(err, config_secrets(config))
        raise ConfigurationError(
            f"channel '{config.name}': extra.credentials is not a usable service-account JSON "
            f"({type(err).__name__}); fix the connection, nothing was sent"
        ) from err


def vertex_credentials(config: ChannelConfig, service_account: Any = None) -> Any:
    """Vertex credentials: ``service_account`` (built from the key file), else the password as a
    static OAuth token, else application-default credentials."""
    if service_account is not None:
        return service_account
    if config.api_key:
        from google.oauth2.credentials import Credentials

        return Credentials(token=config.api_key.reveal())
    import google.auth

    credentials, _project = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
    return credentials


def build_genai_client(config: ChannelConfig, service_account: Any = None) -> Any:
    """A new ``google.genai.Client`` for ``config`` (``service_account``: its key file's
    credentials, already built); one attempt per call, the connection's timeout."""
    from google import genai
    from google.genai import types

    http_options = types.HttpOptions(
        base_url=config.base_url or None,
        timeout=max(1, int(config.attempt_timeout_s * 1000)),
        # One attempt, said explicitly: with ``retry_options=None`` the SDK's aiohttp transport
        # (chosen whenever aiohttp is installed, as it is beside many providers) silently
        # retries a reset or refused connection after sleeping 1-10 s, inside our attempt
        # timeout, so the router saw a TIMEOUT where httpx reports a RETRYABLE at once.
        retry_options=types.HttpRetryOptions(attempts=1),
    )
    if config.protocol == "vertex":
        return genai.Client(
            vertexai=True,
            project=config.project,
            location=config.location,
            credentials=vertex_credentials(config, service_account),
            http_options=http_options,
        )
    return genai.Client(api_key=config.api_key.reveal(), http_options=http_options)


def genai_client(config: ChannelConfig) -> Any:
    """A new ``google.genai.Client`` for a ``gemini`` or ``vertex`` connection; the caller closes it.

    Raises ``ConfigurationError`` for another protocol or unusable Vertex credentials.
    """
    require_genai_protocol(config)
    service_account = service_account_credentials(config) if config.credentials_info is not None else None
    return build_genai_client(config, service_account)


def close_client(client: Any) -> None:
    """Close a sync client's HTTP pools (best effort; a failure to close is not an error)."""
    # closing must never mask the result of the work done
    with contextlib.suppress(Exception):
        client.close()
