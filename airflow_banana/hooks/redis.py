"""A Redis client (and the shared routing-state backend) from an Airflow connection.

The fleet-wide channel state of issue 7 lives in Redis; where that Redis is, and its password,
belong in an Airflow connection like every other secret. We read a connection of type ``redis``
with the same fields as ``apache-airflow-providers-redis`` (host, port, login, password,
extra ``db``/``ssl``/``ssl_*``) without depending on that provider, plus two of our own extras:
``namespace`` (key prefix, one per deployment; default ``airflow-banana``) and
``socket_timeout`` (seconds, default 0.5: every routing decision waits on Redis).

The connection can be named on the operator (``redis_conn_id=``) or in a channel connection's
extra (``"redis_conn_id": "banana_redis"``); ``redis_conn_id_for`` resolves the two.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from airflow_banana.exceptions import ConfigurationError
from airflow_banana.secrets import Secret

if TYPE_CHECKING:
    import redis

    from airflow_banana.routing.redis_state import RedisStateBackend

_SSL_EXTRAS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_keyfile", "ssl_certfile", "ssl_check_hostname")


def _flag(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


@dataclass(frozen=True)
class RedisSettings:
    """Where the routing-state Redis is; the password stays inside ``Secret``."""

    conn_id: str
    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: Secret | None = field(default=None)
    ssl: bool = False
    ssl_options: Mapping[str, Any] = field(default_factory=dict)
    namespace: str = "airflow-banana"
    socket_timeout_s: float = 0.5

    def client(self) -> redis.Redis:
        import redis

        from airflow_banana.routing.redis_state import client_options

        options: dict[str, Any] = dict(client_options(self.socket_timeout_s))
        if self.ssl:
            options.update(ssl=True, **self.ssl_options)
        return redis.Redis(
            host=self.host,
            port=self.port,
            db=self.db,
            username=self.username,
            password=self.password.reveal() if self.password else None,
            **options,
        )


def parse_redis_connection(
    conn_id: str,
    *,
    host: str | None,
    port: int | None,
    login: str | None = None,
    password: str | None = None,
    schema: str | None = None,
    extra: Mapping[str, Any] | str | None = None,
) -> RedisSettings:
    """Connection fields -> ``RedisSettings``; every error names the connection."""
    if isinstance(extra, str):
        try:
            extra = json.loads(extra) if extra.strip() else {}
        except json.JSONDecodeError as err:
            raise ConfigurationError(
                f"redis connection '{conn_id}': extra is not valid JSON: {err.msg}"
            ) from err
    extra = dict(extra or {})
    db_raw = extra.get("db", schema if schema not in (None, "") else 0)
    try:
        db = int(db_raw)
        timeout = float(extra.get("socket_timeout", 0.5))
    except (TypeError, ValueError) as err:
        raise ConfigurationError(
            f"redis connection '{conn_id}': extra.db must be an integer and extra.socket_timeout a number"
        ) from err
    if db < 0 or timeout <= 0:
        raise ConfigurationError(f"redis connection '{conn_id}': db must be >= 0 and socket_timeout > 0")
    namespace = str(extra.get("namespace") or "airflow-banana")
    if any(c.isspace() for c in namespace):
        raise ConfigurationError(f"redis connection '{conn_id}': extra.namespace must not contain spaces")
    ssl_options = {k: extra[k] for k in _SSL_EXTRAS if k in extra}
    return RedisSettings(
        conn_id=conn_id,
        host=(host or "").strip() or "127.0.0.1",
        port=int(port or 6379),
        db=db,
        username=login or None,
        password=Secret(password) if password else None,
        ssl=_flag(extra.get("ssl", False)),
        ssl_options=ssl_options,
        namespace=namespace,
        socket_timeout_s=timeout,
    )


class BananaRedisHook(BaseHook):
    """Redis for shared routing state, from a ``redis`` connection.

    :param redis_conn_id: the Airflow connection id (type ``redis``).
    """

    conn_name_attr = "redis_conn_id"
    default_conn_name = "redis_default"
    conn_type = "redis"
    hook_name = "Redis (airflow-banana routing state)"

    def __init__(self, redis_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.redis_conn_id = redis_conn_id

    def get_settings(self) -> RedisSettings:
        conn = self.get_connection(self.redis_conn_id)
        return parse_redis_connection(
            self.redis_conn_id,
            host=conn.host,
            port=conn.port,
            login=conn.login,
            password=conn.password,
            schema=conn.schema,
            extra=conn.extra_dejson or conn.extra,
        )

    def get_conn(self) -> redis.Redis:
        return self.get_settings().client()

    def get_backend(self, rng: random.Random | None = None) -> RedisStateBackend:
        """The fleet-wide ``ChannelStateBackend`` (falls back to local state if Redis is down)."""
        from airflow_banana.routing.redis_state import RedisStateBackend

        settings = self.get_settings()
        return RedisStateBackend(settings.client(), namespace=settings.namespace, rng=rng)

    def test_connection(self) -> tuple[bool, str]:
        import redis

        try:
            self.get_conn().ping()
        except redis.RedisError as err:
            return False, f"redis connection '{self.redis_conn_id}': {type(err).__name__}: {err}"
        return True, "PING answered"


def redis_conn_id_for(
    operator_conn_id: str | None, channel_conn_ids: Sequence[str], *, task_id: str
) -> str | None:
    """The Redis connection to share state through: the operator's, else the channels' extra.

    Channels naming different Redis connections would split one task's state; that is refused.
    """
    if operator_conn_id:
        return operator_conn_id
    named: dict[str, str] = {}
    for conn_id in channel_conn_ids:
        extra = BaseHook.get_connection(conn_id).extra_dejson or {}
        value = extra.get("redis_conn_id")
        if value:
            named[conn_id] = str(value)
    if len(set(named.values())) > 1:
        raise ConfigurationError(
            f"{task_id}: channels name different redis_conn_id values {named}; one task shares its "
            "routing state through one Redis — set redis_conn_id on the operator"
        )
    return next(iter(named.values()), None)
