"""With aiohttp installed, google-genai sends through aiohttp: failures must read as under httpx.

Lives with the bench tests because the bench venv is the one with aiohttp (LiteLLM pulls it), as
many Airflow installations are (several providers depend on it); the main venv has none, so
there these tests would only skip. Two things differ on that transport: the exception classes
(classified by ``channels/errors.py``), and the SDK's own hidden retry of a reset or refused
connection (a 1-10 s sleep, then a second request) unless retry options say one attempt.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from airflow_banana.channels import build_channel
from airflow_banana.channels.config import parse_channel
from airflow_banana.channels.errors import classify_exception
from airflow_banana.exceptions import ChannelError, ErrorClass
from airflow_banana.models import ImageRequest
from airflow_banana.testing.server import Simulator

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import client_exceptions as aio  # noqa: E402


class _Key:
    """The connection key aiohttp's connector errors describe (host, port, ssl)."""

    host, port, ssl, is_ssl = "127.0.0.1", 1, False, False


AIOHTTP_TABLE = [
    # (exception, what httpx's counterpart is classified as, did it reach the provider)
    (aio.ServerTimeoutError("read timed out"), ErrorClass.TIMEOUT, True),  # httpx.ReadTimeout
    (TimeoutError(), ErrorClass.TIMEOUT, True),  # ClientTimeout(total=...) expiring (asyncio.TimeoutError)
    (aio.ConnectionTimeoutError("connect timed out"), ErrorClass.TIMEOUT, True),  # httpx.ConnectTimeout
    (aio.SocketTimeoutError("socket read"), ErrorClass.TIMEOUT, True),
    (aio.ClientConnectorError(_Key(), ConnectionRefusedError(111, "refused")), ErrorClass.RETRYABLE, False),
    (aio.ClientOSError(104, "Connection reset by peer"), ErrorClass.RETRYABLE, True),  # httpx.ReadError
    (aio.ServerDisconnectedError(), ErrorClass.RETRYABLE, True),  # httpx.RemoteProtocolError
    (aio.ClientPayloadError("Response payload is not completed"), ErrorClass.RETRYABLE, True),
    (aio.ClientResponseError(None, (), status=502, message="Bad Gateway"), ErrorClass.RETRYABLE, True),
    (aio.ClientError("anything else aiohttp raises"), ErrorClass.RETRYABLE, True),  # httpx.TransportError
]


@pytest.mark.parametrize(
    ("err", "expected", "reached"), AIOHTTP_TABLE, ids=[type(row[0]).__name__ for row in AIOHTTP_TABLE]
)
def test_aiohttp_exceptions_are_classified_like_httpx(
    err: BaseException, expected: ErrorClass, reached: bool
) -> None:
    verdict = classify_exception(err)
    assert verdict is not None, f"{type(err).__name__} was not classified"
    assert verdict.error_class is expected
    assert verdict.reached_provider is reached


def test_google_genai_error_named_client_error_is_not_taken_for_aiohttps() -> None:
    from google.genai import errors as genai_errors

    class ClientError(Exception):  # same bare name as aiohttp's root and genai's 4xx error
        pass

    assert classify_exception(ClientError("x")) is None
    assert genai_errors.ClientError.__name__ == "ClientError"


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["gemini", "vertex"])
def test_a_reset_through_the_sdk_on_aiohttp_is_retryable_at_once(protocol: str) -> None:
    """The same answer as httpx gives: RETRYABLE, without the SDK's hidden sleep and second call."""
    import google.genai._api_client as api_client

    assert api_client.has_aiohttp  # the point of this test: the SDK picks aiohttp here
    extra = {"protocol": protocol, "timeout": 30}
    if protocol == "vertex":
        extra.update(project="banana-test", location="us-central1")
    with Simulator() as sim:
        config = parse_channel(f"{protocol}-chan", host=sim.base_url, password="reset-key", extra=extra)

        async def attempt() -> tuple[ChannelError, float]:
            channel = build_channel(config)
            started = time.monotonic()
            try:
                with pytest.raises(ChannelError) as info:
                    await channel.generate(ImageRequest("item-r", "a lemon [sim:reset]"))
            finally:
                await channel.aclose()
            return info.value, time.monotonic() - started

        err, took = asyncio.run(attempt())
        generations = [r for r in sim.requests() if r["method"] == "POST"]
    assert err.error_class is ErrorClass.RETRYABLE, str(err)
    assert "ClientOSError" in str(err) or "ServerDisconnected" in str(err)
    assert took < 1.0  # no 1-10 s sleep before a hidden second try
    assert len(generations) == 1  # and no second request the router never saw
