"""The Redis connection -> client/backend hook, and how the operator finds the connection."""

from __future__ import annotations

import json
import random

import pytest

from airflow_banana.exceptions import ConfigurationError
from airflow_banana.hooks.redis import BananaRedisHook, parse_redis_connection, redis_conn_id_for
from airflow_banana.routing.state import ChannelPolicy, Permit
from airflow_banana.testing.connections import channel_connection, conn_env_var

pytestmark = pytest.mark.integration


def test_parse_reads_provider_style_fields_and_hides_the_password() -> None:
    settings = parse_redis_connection(
        "r",
        host="redis.internal",
        port=6380,
        login="worker",
        password="pw-123",
        schema="2",
        extra={"ssl": "true", "ssl_cert_reqs": "required", "namespace": "prod-eu"},
    )
    assert (settings.host, settings.port, settings.db, settings.username) == (
        "redis.internal",
        6380,
        2,
        "worker",
    )
    assert settings.ssl and settings.ssl_options == {"ssl_cert_reqs": "required"}
    assert settings.namespace == "prod-eu" and "pw-123" not in repr(settings)
    assert parse_redis_connection("r", host=None, port=None, extra='{"db": 5}').db == 5
    with pytest.raises(ConfigurationError, match="'r'"):
        parse_redis_connection("r", host=None, port=None, extra={"db": "x"})


def test_hook_builds_a_shared_backend_from_an_env_connection(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    conn = {"conn_type": "redis", "host": "127.0.0.1", "port": port, "extra": {"namespace": "hooktest"}}
    monkeypatch.setenv(conn_env_var("banana_redis"), json.dumps(conn))
    hook = BananaRedisHook("banana_redis")
    assert hook.test_connection() == (True, "PING answered")
    backend = hook.get_backend(random.Random(1))
    backend.register("a", ChannelPolicy())
    assert isinstance(backend.try_acquire("a", 1_000.0), Permit)
    assert hook.get_conn().exists("hooktest:channel:a") == 1


def test_operator_argument_wins_else_the_channels_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "http://127.0.0.1:9"
    monkeypatch.setenv(
        conn_env_var("ch_a"), channel_connection(url, protocol="gemini", key="k", redis_conn_id="redis_x")
    )
    monkeypatch.setenv(conn_env_var("ch_b"), channel_connection(url, protocol="gemini", key="k"))
    monkeypatch.setenv(
        conn_env_var("ch_c"), channel_connection(url, protocol="gemini", key="k", redis_conn_id="redis_y")
    )
    assert redis_conn_id_for("mine", ["ch_a"], task_id="t") == "mine"
    assert redis_conn_id_for(None, ["ch_a", "ch_b"], task_id="t") == "redis_x"
    assert redis_conn_id_for(None, ["ch_b"], task_id="t") is None
    with pytest.raises(ConfigurationError, match="different redis_conn_id"):
        redis_conn_id_for(None, ["ch_a", "ch_c"], task_id="t")
