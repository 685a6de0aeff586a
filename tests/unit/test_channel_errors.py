"""The classification table of channels/errors.py: every row, both spellings, every exception family."""

from __future__ import annotations

import json

import httpx
import pytest
from google.auth import exceptions as google_auth_exceptions

from airflow_banana.channels.errors import (
    Classification,
    classify_exception,
    classify_http,
    classify_outcome,
    malformed,
    parse_retry_after_header,
    protobuf_seconds,
    quota_ids,
    retry_delay,
    to_channel_error,
)
from airflow_banana.exceptions import ChannelError, ErrorClass

RETRY_INFO = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "26s"}


def google_error(code: int, status: str, message: str, *details: dict) -> dict:
    body: dict = {"error": {"code": code, "status": status, "message": message}}
    if details:
        body["error"]["details"] = list(details)
    return body


def quota_failure(quota_id: str) -> dict:
    return {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [{"quotaMetric": "generativelanguage.googleapis.com/x", "quotaId": quota_id}],
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("26s", 26.0),
        ("1.5s", 1.5),
        ("0s", 0.0),
        ("7", 7.0),
        (3, 3.0),
        (2.5, 2.5),
        ({"seconds": 4, "nanos": 500_000_000}, 4.5),
        (None, None),
        ("soon", None),
        (-1, None),
        (True, None),
    ],
)
def test_protobuf_seconds(value: object, expected: float | None) -> None:
    assert protobuf_seconds(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("12", 12.0),
        (" 1.5 ", 1.5),
        ("", None),
        (None, None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
        ("-3", None),
    ],
)
def test_parse_retry_after_header(value: str | None, expected: float | None) -> None:
    assert parse_retry_after_header(value) == expected


# --------------------------------------------------------------------------- HTTP table

HTTP_TABLE = [
    # (status, body, expected class, expected retry_after)
    (
        503,
        google_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
        ErrorClass.RETRYABLE,
        None,
    ),
    (500, google_error(500, "INTERNAL", "Internal error"), ErrorClass.RETRYABLE, None),
    (502, "<html>Bad gateway</html>", ErrorClass.RETRYABLE, None),
    (504, google_error(504, "DEADLINE_EXCEEDED", "Deadline exceeded"), ErrorClass.RETRYABLE, None),
    (408, {"message": "timeout", "status": "Request Timeout"}, ErrorClass.RETRYABLE, None),
    (409, google_error(409, "ABORTED", "aborted"), ErrorClass.RETRYABLE, None),
    (
        429,
        google_error(
            429,
            "RESOURCE_EXHAUSTED",
            "quota",
            quota_failure("GenerateRequestsPerMinutePerProjectPerModel"),
            RETRY_INFO,
        ),
        ErrorClass.RATE_LIMITED,
        26.0,
    ),
    (
        429,
        google_error(429, "RESOURCE_EXHAUSTED", "Resource exhausted. Please try again later."),
        ErrorClass.RATE_LIMITED,
        None,
    ),
    (
        429,
        google_error(
            429,
            "RESOURCE_EXHAUSTED",
            "quota",
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retry_delay": "1.5s"},
        ),
        ErrorClass.RATE_LIMITED,
        1.5,
    ),
    (
        429,
        google_error(
            429,
            "RESOURCE_EXHAUSTED",
            "daily",
            quota_failure("GenerateRequestsPerDayPerProjectPerModel"),
            RETRY_INFO,
        ),
        ErrorClass.QUOTA_EXHAUSTED,
        26.0,
    ),
    (
        429,
        google_error(
            429,
            "RESOURCE_EXHAUSTED",
            "daily",
            quota_failure("GenerateContentInputTokensPerModelPerDay-FreeTier"),
        ),
        ErrorClass.QUOTA_EXHAUSTED,
        None,
    ),
    (
        401,
        google_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."),
        ErrorClass.CHANNEL_FATAL,
        None,
    ),
    (403, google_error(403, "PERMISSION_DENIED", "Permission denied"), ErrorClass.CHANNEL_FATAL, None),
    (
        404,
        google_error(404, "NOT_FOUND", "models/x is not found for API version v1beta"),
        ErrorClass.CHANNEL_FATAL,
        None,
    ),
    (402, {"error": {"code": 402, "message": "Insufficient credits"}}, ErrorClass.CHANNEL_FATAL, None),
    (405, "Method Not Allowed", ErrorClass.CHANNEL_FATAL, None),
    (
        400,
        google_error(
            400,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key.",
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"},
        ),
        ErrorClass.CHANNEL_FATAL,
        None,
    ),
    (
        400,
        google_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."),
        ErrorClass.CHANNEL_FATAL,
        None,
    ),
    (
        400,
        google_error(400, "FAILED_PRECONDITION", "User location is not supported for the API use."),
        ErrorClass.CHANNEL_FATAL,
        None,
    ),
    (
        400,
        google_error(400, "INVALID_ARGUMENT", "Unsupported aspect ratio 7:3"),
        ErrorClass.ITEM_TERMINAL,
        None,
    ),
    (
        400,
        google_error(
            400,
            "INVALID_ARGUMENT",
            "Image part is missing a thought_signature in content position 2, part position 1.",
        ),
        ErrorClass.ITEM_TERMINAL,
        None,
    ),
    (413, "payload too large", ErrorClass.ITEM_TERMINAL, None),
    (422, {"error": {"code": 422, "message": "bad image_config"}}, ErrorClass.ITEM_TERMINAL, None),
    (
        403,
        {
            "error": {
                "code": 403,
                "message": "Input flagged",
                "metadata": {"reasons": ["violence"], "flagged_input": "..."},
            }
        },
        ErrorClass.ITEM_TERMINAL,
        None,
    ),
    (418, "teapot", ErrorClass.CHANNEL_FATAL, None),
    (302, "", ErrorClass.RETRYABLE, None),
]


@pytest.mark.parametrize(("status", "body", "expected", "retry_after"), HTTP_TABLE)
def test_classify_http_table(
    status: int, body: object, expected: ErrorClass, retry_after: float | None
) -> None:
    verdict = classify_http(status, body)
    assert verdict.error_class is expected
    assert verdict.retry_after == retry_after
    assert verdict.status_code == status
    assert verdict.reason.startswith(f"HTTP {status}")


def test_classify_http_accepts_the_sdk_details_shapes() -> None:
    body = google_error(429, "RESOURCE_EXHAUSTED", "q", RETRY_INFO)
    # The SDK unwraps one-element lists; some proxies leave them wrapped.
    assert classify_http(429, [body]).retry_after == 26.0
    # A missing status code falls back to error.code (OpenRouter's 200-with-error envelope).
    verdict = classify_http(None, {"error": {"code": 503, "message": "upstream overloaded"}})
    assert (verdict.error_class, verdict.status_code) == (ErrorClass.RETRYABLE, 503)
    verdict = classify_http(None, {"error": {"message": "no code at all"}})
    assert verdict.error_class is ErrorClass.RETRYABLE


def test_429_falls_back_to_retry_after_header_when_body_has_no_hint() -> None:
    verdict = classify_http(429, {"error": {"code": 429, "message": "slow down"}}, retry_after_header="7")
    assert (verdict.error_class, verdict.retry_after) == (ErrorClass.RATE_LIMITED, 7.0)
    # The body's RetryInfo wins over the header.
    verdict = classify_http(
        429, google_error(429, "RESOURCE_EXHAUSTED", "q", RETRY_INFO), retry_after_header="7"
    )
    assert verdict.retry_after == 26.0
    assert classify_http(503, "busy", retry_after_header="3").retry_after == 3.0


def test_retry_delay_and_quota_ids_helpers() -> None:
    body = google_error(
        429, "RESOURCE_EXHAUSTED", "q", quota_failure("A"), quota_failure("BPerDay"), RETRY_INFO
    )
    assert retry_delay(body) == 26.0
    assert quota_ids(body) == ["A", "BPerDay"]
    assert retry_delay({"error": {"details": "not a list"}}) is None
    assert quota_ids("plain text") == []


# --------------------------------------------------------------------------- exceptions


class ReadTimeout2(Exception):
    """Stands in for httpx2.ReadTimeout: same names, other namespace."""


class TimeoutException(Exception):
    pass


class FakeHttpx2ReadTimeout(TimeoutException):
    pass


class ClientConnectorError(ConnectionError):
    """Stands in for aiohttp's connect failure."""


def _chained(outer: Exception, inner: Exception) -> Exception:
    try:
        try:
            raise inner
        except Exception as err:
            raise outer from err
    except Exception as final:
        return final


EXC_TABLE = [
    (httpx.ReadTimeout("read timed out"), ErrorClass.TIMEOUT, True),
    (httpx.ConnectTimeout("connect timed out"), ErrorClass.TIMEOUT, True),
    (httpx.PoolTimeout("pool"), ErrorClass.TIMEOUT, True),
    (TimeoutError(), ErrorClass.TIMEOUT, True),
    (FakeHttpx2ReadTimeout("x"), ErrorClass.TIMEOUT, True),
    (httpx.ConnectError("refused"), ErrorClass.RETRYABLE, False),
    (ConnectionRefusedError(111, "refused"), ErrorClass.RETRYABLE, False),
    (ClientConnectorError("refused"), ErrorClass.RETRYABLE, False),
    (
        httpx.RemoteProtocolError("peer closed connection without sending complete message body"),
        ErrorClass.RETRYABLE,
        True,
    ),
    (httpx.ReadError("reset"), ErrorClass.RETRYABLE, True),
    (ConnectionResetError(104, "reset by peer"), ErrorClass.RETRYABLE, True),
    (json.JSONDecodeError("Expecting value", "{", 1), ErrorClass.RETRYABLE, True),
    (google_auth_exceptions.RefreshError("invalid_grant: token revoked"), ErrorClass.CHANNEL_FATAL, False),
    (google_auth_exceptions.DefaultCredentialsError("no ADC"), ErrorClass.CHANNEL_FATAL, False),
    (google_auth_exceptions.TransportError("oauth2 endpoint unreachable"), ErrorClass.RETRYABLE, True),
    (
        _chained(ValueError("Failed to parse response as JSON"), json.JSONDecodeError("x", "{", 0)),
        ErrorClass.RETRYABLE,
        True,
    ),
]


@pytest.mark.parametrize(("err", "expected", "reached"), EXC_TABLE)
def test_classify_exception_table(err: BaseException, expected: ErrorClass, reached: bool) -> None:
    verdict = classify_exception(err)
    assert verdict is not None
    assert verdict.error_class is expected
    assert verdict.reached_provider is reached


def test_malformed_exceptions_say_so() -> None:
    verdict = classify_exception(json.JSONDecodeError("Expecting value", "{", 1))
    assert verdict is not None and verdict.reason.startswith("malformed response")
    assert malformed("truncated").reason == "malformed response: truncated"


def test_unrelated_exceptions_are_not_classified() -> None:
    assert classify_exception(KeyError("x")) is None
    assert classify_exception(ReadTimeout2("name does not match")) is None


# --------------------------------------------------------------------------- 200 outcomes

OUTCOME_TABLE = [
    (dict(has_image=False, finish_reason=None, block_reason="SAFETY"), ErrorClass.ITEM_TERMINAL),
    (dict(has_image=False, finish_reason=None, block_reason="PROHIBITED_CONTENT"), ErrorClass.ITEM_TERMINAL),
    (dict(has_image=False, finish_reason="IMAGE_SAFETY"), ErrorClass.ITEM_TERMINAL),
    (dict(has_image=False, finish_reason="IMAGE_PROHIBITED_CONTENT"), ErrorClass.ITEM_TERMINAL),
    (dict(has_image=False, finish_reason="IMAGE_OTHER"), ErrorClass.ITEM_TERMINAL),
    (dict(has_image=False, finish_reason="IMAGE_RECITATION"), ErrorClass.ITEM_TERMINAL),
    (dict(has_image=False, finish_reason="SAFETY"), ErrorClass.ITEM_TERMINAL),
    (dict(has_image=False, finish_reason="content_filter"), ErrorClass.ITEM_TERMINAL),
    (dict(has_image=False, finish_reason="NO_IMAGE"), ErrorClass.NO_IMAGE),
    (dict(has_image=False, finish_reason="STOP"), ErrorClass.NO_IMAGE),
    (dict(has_image=False, finish_reason="MAX_TOKENS"), ErrorClass.NO_IMAGE),
    (dict(has_image=False, finish_reason=None), ErrorClass.NO_IMAGE),
]


@pytest.mark.parametrize(("kwargs", "expected"), OUTCOME_TABLE)
def test_classify_outcome_table(kwargs: dict, expected: ErrorClass) -> None:
    verdict = classify_outcome(**kwargs)
    assert verdict is not None
    assert verdict.error_class is expected
    assert verdict.status_code == 200


def test_an_image_wins_over_its_finish_reason() -> None:
    assert classify_outcome(has_image=True, finish_reason="STOP") is None
    assert classify_outcome(has_image=True, finish_reason="IMAGE_SAFETY") is None


def test_blocked_prompt_reason_names_the_block() -> None:
    verdict = classify_outcome(
        has_image=False, finish_reason=None, block_reason="OTHER", block_message="nope"
    )
    assert verdict is not None and verdict.reason == "prompt blocked: OTHER (nope)"


# --------------------------------------------------------------------------- ChannelError

KEY = "fake-test-key-this-is-not-a-real-key-0000"


def test_to_channel_error_fields_message_and_billing() -> None:
    verdict = classify_http(429, google_error(429, "RESOURCE_EXHAUSTED", f"quota for {KEY}", RETRY_INFO))
    err = to_channel_error(verdict, channel="direct", item_id="cat-1", billed_on_failure=True, secrets=[KEY])
    assert isinstance(err, ChannelError)
    assert err.error_class is ErrorClass.RATE_LIMITED
    assert err.retry_after == 26.0
    assert err.status_code == 429
    assert err.billed is True
    assert err.channel == "direct" and err.item_id == "cat-1"
    text = str(err)
    assert KEY not in text and KEY not in err.reason
    assert "channel 'direct', item 'cat-1'" in text
    assert "retry after 26s" in text
    assert "rests until the retry hint" in text

    not_billed = to_channel_error(verdict, channel="direct", item_id=None, billed_on_failure=False)
    assert not_billed.billed is False
    refused = Classification(ErrorClass.RETRYABLE, "connection failed", reached_provider=False)
    assert to_channel_error(refused, channel="relay", item_id="a", billed_on_failure=True).billed is False


@pytest.mark.parametrize("error_class", list(ErrorClass))
def test_every_error_class_has_a_next_step(error_class: ErrorClass) -> None:
    err = to_channel_error(
        Classification(error_class, "why"), channel="c", item_id="i", billed_on_failure=False
    )
    assert err.error_class is error_class
    assert "; " in str(err)
