"""The Airflow face of a channel: one ``banana`` connection = one channel.

The connection holds everything secret (host = base URL, password = API key or Vertex access
token, extra = protocol/model/prices/limits); operators and triggers pass only its id. The hook
turns the connection into a ``ChannelConfig`` (pure parsing in ``channels.config``) and a
``Channel``; ``load_channel_configs`` does it for a list of ids up front, so a bad connection
fails a task (or a CLI plan) before any spend. google-genai is imported only when a Google
channel actually makes a call, so importing this module in a DAG file is cheap.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseHook

from airflow_banana.channels import build_channel
from airflow_banana.channels.base import Channel
from airflow_banana.channels.config import ChannelConfig, config_secrets, parse_channel, parse_channels
from airflow_banana.connection_form import UI_FIELD_BEHAVIOUR
from airflow_banana.exceptions import BananaError, ConfigurationError
from airflow_banana.secrets import scrub


class BananaChannelHook(BaseHook):
    """Builds the channel of a ``banana`` connection.

    :param banana_conn_id: the Airflow connection id; also the channel's name in reports.
    """

    conn_name_attr = "banana_conn_id"
    default_conn_name = "banana_default"
    conn_type = "banana"
    hook_name = "Nano Banana channel"

    def __init__(self, banana_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.banana_conn_id = banana_conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Connection form: base URL + API key + JSON extra (Airflow < 3.2 asks the hook)."""
        return copy.deepcopy(UI_FIELD_BEHAVIOUR)

    def get_config(self) -> ChannelConfig:
        """The parsed, validated channel settings of this connection (its own model)."""
        return parse_channel(self.banana_conn_id, **self._fields())

    def get_configs(self) -> list[ChannelConfig]:
        """Its router channels: its own model, then one per model tier in ``extra.models``."""
        return parse_channels(self.banana_conn_id, **self._fields())

    def _fields(self) -> dict[str, Any]:
        conn = self.get_connection(self.banana_conn_id)
        if conn.conn_type != self.conn_type:
            # An http (or any other) connection has no protocol/model/prices to read: accepting it
            # would route paid calls with defaults the user never chose.
            raise ConfigurationError(
                f"connection '{self.banana_conn_id}' is of type {conn.conn_type!r}, not 'banana'; "
                "recreate it with conn_type 'banana' (nothing was spent)"
            )
        extra: Any = conn.extra_dejson
        raw = conn.extra
        if not extra and isinstance(raw, str) and raw.strip() not in ("", "{}"):
            # extra_dejson swallows invalid JSON into {}; hand the text over so the error says so.
            extra = raw
        elif isinstance(extra, dict):
            # Older connection forms saved custom fields as "extra__banana__<field>".
            prefix = f"extra__{self.conn_type}__"
            extra = {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in extra.items()}
        return {"host": conn.host, "password": conn.password, "extra": extra}

    def get_channel(self) -> Channel:
        """A new channel for this connection; the caller owns it and must ``await aclose()``."""
        return build_channel(self.get_config())

    def get_conn(self) -> Channel:
        return self.get_channel()

    def test_connection(self) -> tuple[bool, str]:
        """Prove the key and model work with a call that bills nothing.

        gemini: ``models.get``; vertex: get the publisher model; openai: ``GET {base}/models``.
        The message never contains the key.
        """
        secrets: list[str] = []
        try:
            configs = self.get_configs()
            config = configs[0]
            secrets = config_secrets(config)
            message = _run(_probe(build_channel(config))) + _capabilities(config)
            for tier in configs[1:]:  # each model tier is probed too: a key may lack one model
                message += f"; model tier {tier.model}: " + _run(_probe(build_channel(tier)))
            return True, message
        except BananaError as err:
            return False, scrub(str(err), secrets)
        except Exception as err:  # the UI shows this text: it must be useful and secret-free
            return False, scrub(f"{type(err).__name__}: {err}", secrets)


def _capabilities(config: ChannelConfig) -> str:
    """What the channel may carry (docs/policy.md): people set up compliance runs from this line."""
    if config.official:
        who = "an official Google channel (official_only items may use it)"
    else:
        who = "not an official Google channel (official_only items never use it)"
    search = "carries" if config.grounding else "does not carry"
    return f"; {who}, {search} Google Search grounding"


async def _probe(channel: Channel) -> str:
    try:
        probe = getattr(channel, "probe", None)
        if probe is None:
            return f"channel '{channel.name}' built (its protocol has no free probe call)"
        result: str = await probe()
        return result
    finally:
        await channel.aclose()


def _run(coro: Any) -> Any:
    """Run a coroutine from sync code, even when the caller already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def channel_ids(value: Sequence[str] | str | None) -> list[str]:
    """Connection ids from a list or from a comma-separated string (what a template renders to)."""
    if value is None:
        return []
    parts = value.split(",") if isinstance(value, str) else list(value)
    return [str(p).strip() for p in parts if str(p).strip()]


def load_channel_configs(conn_ids: Sequence[str] | str, *, task_id: str) -> list[ChannelConfig]:
    """Parse every channel connection up front: a bad one fails the task before any spend."""
    ids = channel_ids(conn_ids)
    if not ids:
        raise ConfigurationError(f"{task_id}: channels is empty; name at least one banana connection id")
    if len(set(ids)) != len(ids):
        raise ConfigurationError(f"{task_id}: channels lists a connection twice: {ids}")
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        # a connection's model tiers (extra.models) are router channels of their own
        return [config for conn_id in ids for config in BananaChannelHook(conn_id).get_configs()]
    except AirflowNotFoundException as err:
        raise ConfigurationError(
            f"{task_id}: {err}; define the banana connection first (nothing was spent)"
        ) from err
