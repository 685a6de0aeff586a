"""Scrubbing keys out of text and exceptions (``airflow_banana.secrets``; ``Secret`` itself:
``test_foundation.py``), and a connection's secrets (``channels.config.config_secrets``)."""

from __future__ import annotations

import json

import pytest

from airflow_banana.channels.config import config_secrets
from airflow_banana.secrets import scrub, scrub_exception

KEY = "fake-test-key-this-is-not-a-real-key-0000"


@pytest.mark.parametrize(
    "text",
    [
        f"API key not valid: {KEY}",
        f"GET https://x/v1beta/models?key={KEY}&alt=json",
        "Authorization: Bearer sk-or-v1-abcdefghijklmnopqrstuvwxyz",
        "x-goog-api-key: not-shaped-like-a-key-but-named",
        '{"x-goog-api-key": "some-secret-value"}',
        f"url-encoded {json.dumps(KEY)}",
    ],
)
def test_scrub_removes_keys(text: str) -> None:
    cleaned = scrub(text, [KEY])
    assert KEY not in cleaned
    assert "sk-or-v1-abcdefghijklmnopqrstuvwxyz" not in cleaned
    assert "not-shaped-like-a-key-but-named" not in cleaned
    assert "some-secret-value" not in cleaned
    assert "***" in cleaned


def test_scrub_leaves_ordinary_text_alone_and_handles_odd_secrets() -> None:
    assert scrub("The model is overloaded.", ["short", ""]) == "The model is overloaded."
    assert scrub('say "hi"', ['with"quote']) == 'say "hi"'
    assert scrub('key with "quote" inside', ['with "quote" inside']) == "key ***"


def test_scrub_exception_in_place() -> None:
    class SdkError(Exception):
        def __init__(self, msg: str):
            super().__init__(msg)
            self.message = msg
            self.details = {"error": {"message": msg}}

    err = SdkError(f"bad key {KEY}")
    scrub_exception(err, [KEY])
    assert KEY not in str(err)
    assert KEY not in err.message
    assert KEY not in json.dumps(err.details)
    assert err.details["error"]["message"] == "bad key ***"


def test_config_secrets_include_key_file_private_parts() -> None:
    from airflow_banana.channels.config import parse_channel

    pem = "-----BEGIN PRIVATE KEY-----\nMIIEabc\n-----END PRIVATE KEY-----\n"
    creds = {"type": "service_account", "private_key": pem, "private_key_id": "kid-123456"}
    config = parse_channel(
        "vx",
        host=None,
        password="tok-abcdef",
        extra={"protocol": "vertex", "project": "p", "location": "l", "credentials": creds},
    )
    secrets = config_secrets(config)
    assert "tok-abcdef" in secrets and pem in secrets and "kid-123456" in secrets
    leaked = f"bad key file {json.dumps(creds)} and raw {pem}"
    cleaned = scrub(leaked, secrets)
    assert "MIIEabc" not in cleaned and "kid-123456" not in cleaned


def test_key_shaped_strings_are_scrubbed_even_when_not_named() -> None:
    # built at run time so nothing key-shaped is committed to the repository
    google_shaped = "AIza" + "Sy" + "k" * 33
    relay_shaped = "sk-" + "or" + "v" * 30
    text = f"upstream said: invalid key {google_shaped}; also {relay_shaped}"
    cleaned = scrub(text)
    assert google_shaped not in cleaned and relay_shaped not in cleaned
    assert cleaned.count("***") == 2
