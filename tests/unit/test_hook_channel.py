"""BananaChannelHook units: UI field behaviour, connections from AIRFLOW_CONN_ JSON env vars (no DB),
lazy SDK import, and secret-free failures of test_connection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from airflow_banana.channels.gemini import GeminiChannel
from airflow_banana.channels.openai_compat import OpenAICompatChannel
from airflow_banana.connection_form import EXTRA_EXAMPLE
from airflow_banana.exceptions import ConfigurationError
from airflow_banana.hooks import BananaChannelHook

KEY = "fake-hook-unit-test-key-0123456789abcdefgh"
ROOT = Path(__file__).resolve().parents[2]


def set_conn(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: object) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "banana", **fields}))


def test_hook_identity() -> None:
    assert BananaChannelHook.conn_type == "banana"
    assert BananaChannelHook.hook_name == "Nano Banana channel"
    assert BananaChannelHook.conn_name_attr == "banana_conn_id"
    assert BananaChannelHook.default_conn_name == "banana_default"
    assert BananaChannelHook().banana_conn_id == "banana_default"


def test_ui_field_behaviour_matches_airflow_schema() -> None:
    import airflow

    schema_path = Path(airflow.__file__).parent / "customized_form_field_behaviours.schema.json"
    behaviour = BananaChannelHook.get_ui_field_behaviour()
    jsonschema.validate(behaviour, json.loads(schema_path.read_text()))
    assert set(behaviour["hidden_fields"]) == {"schema", "login", "port"}
    assert behaviour["relabeling"] == {"password": "API Key", "host": "Base URL"}
    placeholders = behaviour["placeholders"]
    assert placeholders["host"].startswith("https://")
    assert json.loads(placeholders["extra"]) == EXTRA_EXAMPLE
    assert EXTRA_EXAMPLE == {
        "protocol": "gemini",
        "model": "gemini-3-pro-image-preview",
        "rpm": 10,
        "prices": {"1K": 0.134},
    }


def test_config_from_env_json_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(
        monkeypatch,
        "banana_direct",
        host="https://generativelanguage.googleapis.com",
        password=KEY,
        extra={
            "protocol": "gemini",
            "model": "gemini-3-pro-image-preview",
            "rpm": 10,
            "prices": {"1K": 0.12},
        },
    )
    hook = BananaChannelHook(banana_conn_id="banana_direct")
    config = hook.get_config()
    assert config.name == "banana_direct"
    assert config.protocol == "gemini"
    assert config.base_url == "https://generativelanguage.googleapis.com"
    assert config.api_key.reveal() == KEY
    assert config.rpm == 10 and config.prices["1K"] == 0.12
    assert KEY not in repr(config)
    channel = hook.get_channel()
    assert isinstance(channel, GeminiChannel) and channel.name == "banana_direct"
    assert isinstance(hook.get_conn(), GeminiChannel)


def test_vertex_and_openai_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch, "vx", extra={"protocol": "vertex", "project": "p", "location": "europe-west4"})
    config = BananaChannelHook("vx").get_config()
    assert (config.protocol, config.project, config.location, config.base_url) == (
        "vertex",
        "p",
        "europe-west4",
        "",
    )
    set_conn(monkeypatch, "relay", password="sk-relay", extra={"protocol": "openai"})
    hook = BananaChannelHook("relay")
    assert hook.get_config().base_url == "https://openrouter.ai/api/v1"
    assert isinstance(hook.get_channel(), OpenAICompatChannel)


def test_prefixed_form_fields_are_understood(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(
        monkeypatch,
        "legacy",
        password=KEY,
        extra={"extra__banana__protocol": "openai", "extra__banana__rpm": 5},
    )
    config = BananaChannelHook("legacy").get_config()
    assert (config.protocol, config.rpm) == ("openai", 5)


def test_invalid_extra_json_is_reported_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_BROKEN", json.dumps({"conn_type": "banana", "password": KEY, "extra": "{not json"})
    )
    with pytest.raises(ConfigurationError, match="extra is not valid JSON"):
        BananaChannelHook("broken").get_config()


def test_test_connection_config_errors_are_secret_free(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch, "insecure", host="http://example.com", password=KEY, extra={"protocol": "gemini"})
    ok, message = BananaChannelHook("insecure").test_connection()
    assert ok is False
    assert "plain-http" in message and KEY not in message
    set_conn(monkeypatch, "nokey", extra={"protocol": "gemini"})
    ok, message = BananaChannelHook("nokey").test_connection()
    assert ok is False and "no API key" in message


def test_importing_hooks_does_not_import_the_sdk() -> None:
    code = (
        "import sys, airflow_banana.hooks, airflow_banana.channels; "
        "from airflow_banana.channels import build_channel; "
        "bad = [m for m in sys.modules if m.startswith('google.genai')]; "
        "assert not bad, bad"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
