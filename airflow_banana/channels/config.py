"""A channel's settings, parsed from the fields of its Airflow connection.

Pure parsing with no Airflow import, so it is unit-testable and shared by the hook, the
operators and the CLI. Secrets stay inside ``Secret`` and never reach ``repr``.
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from airflow_banana.exceptions import ConfigurationError, InsecureBaseUrlError
from airflow_banana.models import DEFAULT_MODEL, model_id
from airflow_banana.pricing import price_table
from airflow_banana.routing.terms import ChannelTerms
from airflow_banana.secrets import Secret

PROTOCOLS = ("gemini", "vertex", "openai")
DEFAULT_BASE_URLS = {
    "gemini": "https://generativelanguage.googleapis.com",
    "vertex": "",  # the SDK derives it from location
    "openai": "https://openrouter.ai/api/v1",
}
DEFAULT_ATTEMPT_TIMEOUT_S = 120.0
# A typical image call (Nano Banana Pro at 2K: 10-30 s); the router's latency prior is the same.
TYPICAL_CALL_S = 30.0
DEFAULT_MAX_CONCURRENCY = 4
MAX_DERIVED_CONCURRENCY = 64
# Hosts operated by Google itself: a channel whose base URL is one of these (or a Vertex channel
# on the SDK's default endpoint) is "official" -- prompts and images stay with Google.
GOOGLE_API_HOST_SUFFIX = ".googleapis.com"


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(base_url: str, *, channel: str, allow_insecure: bool = False) -> str:
    """Refuse plain http to a non-loopback host (FAULTS.md S9): the key would cross the wire in clear."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"channel '{channel}': base URL {base_url!r} is not an http(s) URL")
    if parts.scheme == "http" and not _is_loopback(parts.hostname) and not allow_insecure:
        raise InsecureBaseUrlError(
            f"channel '{channel}': refusing plain-http base URL to non-loopback host {parts.hostname!r}; "
            "use https, or set extra.allow_insecure_http=true if you really mean it"
        )
    return base_url.rstrip("/")


@dataclass(frozen=True)
class ChannelConfig:
    """Everything needed to build a channel; ``name`` is the Airflow connection id."""

    name: str
    protocol: str
    base_url: str
    api_key: Secret = field(repr=True)
    model: str = DEFAULT_MODEL
    prices: dict[str, float] = field(default_factory=dict)
    rpm: float | None = None
    ipm: float | None = None
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    project: str | None = None
    location: str | None = None
    credentials_info: Secret | None = None
    billed_on_failure: bool = False
    attempt_timeout_s: float = DEFAULT_ATTEMPT_TIMEOUT_S
    signatures: bool = True  # False: the channel drops thought signatures (OpenAI-shape relays)
    # Operated by Google (Developer API, Vertex AI): may carry ``data_policy: official_only`` items.
    official: bool = False
    # Can carry the Google Search tool (``grounding: google_search``); never an OpenAI-shape relay.
    grounding: bool = False
    # The Airflow connection it came from: ``name`` itself, or for a model tier expanded from the
    # connection's ``extra.models`` (``conn/gemini-2.5-flash-image``) the connection's id.
    connection: str = ""

    @property
    def lane(self) -> str:
        return self.protocol

    @property
    def conn_id(self) -> str:
        return self.connection or self.name

    def terms(self) -> ChannelTerms:
        """What the router needs of this connection: prices (the protocol's table with this
        connection's overrides), billing, timeout, limits and what it may carry."""
        return ChannelTerms(
            name=self.name,
            prices={**price_table(self.protocol), **self.prices},
            billed_on_failure=self.billed_on_failure,
            attempt_timeout_s=self.attempt_timeout_s,
            rpm=self.rpm,
            ipm=self.ipm,
            max_concurrency=self.max_concurrency,
            official=self.official,
            grounding=self.grounding,
            model=self.model,
        )


def _number(extra: Mapping[str, Any], key: str, channel: str, *, integer: bool = False) -> Any:
    value = extra.get(key)
    if value is None or value == "":
        return None
    try:
        number = int(value) if integer else float(value)
    except (TypeError, ValueError) as err:
        raise ConfigurationError(f"channel '{channel}': extra.{key} must be a number, got {value!r}") from err
    if number <= 0:
        raise ConfigurationError(f"channel '{channel}': extra.{key} must be positive, got {value!r}")
    return number


def derived_concurrency(rpm: float | None, ipm: float | None, attempt_timeout_s: float) -> int:
    """``max_concurrency`` for a connection that sets a rate but no concurrency.

    Calls in flight at the cap = cap per second x call time: with 4 slots and ~30 s calls a
    channel tops out at 8 calls a minute, so a connection saying ``rpm: 50`` would never see
    50 unless its owner also did this sum. ``ceil(rate / 60 x min(timeout, 30 s) x 1.25)``
    (25 % headroom for slow calls), at least the default 4 and at most 64; without a rate, 4.
    """
    rates = [r for r in (rpm, ipm) if r is not None]
    if not rates:
        return DEFAULT_MAX_CONCURRENCY
    needed = math.ceil(min(rates) / 60.0 * min(attempt_timeout_s, TYPICAL_CALL_S) * 1.25)
    return max(DEFAULT_MAX_CONCURRENCY, min(MAX_DERIVED_CONCURRENCY, needed))


def _flag(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _google_host(base_url: str) -> bool:
    host = (urlsplit(base_url).hostname or "").lower()
    return host.endswith(GOOGLE_API_HOST_SUFFIX)


def _official(protocol: str, base_url: str, extra: Mapping[str, Any]) -> bool:
    """Who operates the channel: the connection's ``official`` when given, else from protocol and host.

    Google direct (``gemini`` on ``*.googleapis.com``) and Vertex AI (its default endpoint, or a
    ``*.googleapis.com`` one) are official; a relay -- any other host -- is not unless its
    connection says so (a private endpoint of your own Google project, or a test simulator).
    """
    if extra.get("official") not in (None, ""):
        return _flag(extra["official"])
    if protocol == "vertex":
        return not base_url or _google_host(base_url)
    return protocol == "gemini" and _google_host(base_url)


def _grounding(name: str, protocol: str, official: bool, extra: Mapping[str, Any]) -> bool:
    """Whether the channel carries the Search tool: Google's own by default, Gemini-native relays
    only when the connection says so, OpenAI-compatible relays never (their request shape has no
    place for Gemini tools)."""
    given = extra.get("supports_grounding")
    if protocol == "openai":
        if given not in (None, "") and _flag(given):
            raise ConfigurationError(
                f"channel '{name}': extra.supports_grounding is true but an OpenAI-compatible relay "
                "cannot carry Gemini's Google Search tool; remove it (grounded items go to Google channels)"
            )
        return False
    if given not in (None, ""):
        return _flag(given)
    return official


def parse_channel(
    name: str,
    *,
    host: str | None,
    password: str | None,
    extra: Mapping[str, Any] | str | None,
) -> ChannelConfig:
    """Build a ``ChannelConfig`` from connection fields; every error names the connection."""
    if isinstance(extra, str):
        try:
            extra = json.loads(extra) if extra.strip() else {}
        except json.JSONDecodeError as err:
            raise ConfigurationError(f"channel '{name}': extra is not valid JSON: {err.msg}") from err
    extra = dict(extra or {})
    protocol = str(extra.get("protocol") or "gemini").lower()
    if protocol not in PROTOCOLS:
        raise ConfigurationError(
            f"channel '{name}': extra.protocol must be one of {PROTOCOLS}, got {protocol!r}"
        )
    base_url = (host or "").strip() or DEFAULT_BASE_URLS[protocol]
    if base_url and "://" not in base_url:
        base_url = "https://" + base_url
    allow_insecure = _flag(extra.get("allow_insecure_http", False))
    if base_url:
        base_url = check_base_url(base_url, channel=name, allow_insecure=allow_insecure)

    credentials = extra.get("credentials") or extra.get("keyfile_dict") or extra.get("service_account_json")
    if isinstance(credentials, Mapping):
        credentials = json.dumps(credentials)
    project = extra.get("project")
    location = extra.get("location")
    if protocol == "vertex" and not (project and location):
        raise ConfigurationError(
            f"channel '{name}': a vertex channel needs extra.project and extra.location "
            "(without them the SDK posts to the bare base URL)"
        )
    if protocol != "vertex" and not password:
        raise ConfigurationError(f"channel '{name}': the connection has no API key (password field)")

    prices_raw = extra.get("prices") or {}
    if not isinstance(prices_raw, Mapping):
        raise ConfigurationError(f"channel '{name}': extra.prices must be an object like {{\"1K\": 0.05}}")
    try:
        prices = price_table(protocol, prices_raw, model=str(extra.get("model") or DEFAULT_MODEL))
    except ConfigurationError as err:
        raise ConfigurationError(f"channel '{name}': {err}") from err

    rpm, ipm = _number(extra, "rpm", name), _number(extra, "ipm", name)
    timeout = _number(extra, "timeout", name) or DEFAULT_ATTEMPT_TIMEOUT_S
    official = _official(protocol, base_url, extra)
    return ChannelConfig(
        name=name,
        protocol=protocol,
        base_url=base_url,
        api_key=Secret(password or ""),
        model=str(extra.get("model") or DEFAULT_MODEL),
        prices=prices,
        rpm=rpm,
        ipm=ipm,
        max_concurrency=_number(extra, "max_concurrency", name, integer=True)
        or derived_concurrency(rpm, ipm, timeout),
        project=str(project) if project else None,
        location=str(location) if location else None,
        credentials_info=Secret(str(credentials)) if credentials else None,
        billed_on_failure=_flag(extra.get("billed_on_failure", False)),
        attempt_timeout_s=timeout,
        signatures=protocol in ("gemini", "vertex") and not _flag(extra.get("drops_signatures", False)),
        official=official,
        grounding=_grounding(name, protocol, official, extra),
    )


# What a model tier of a connection may set on its own. Prices and quotas are per model (Google's
# rate limits and overloads are), so a tier does not inherit the connection's; the rest it does.
TIER_KEYS = ("prices", "rpm", "ipm", "max_concurrency", "timeout")
PER_MODEL_KEYS = ("prices", "rpm", "ipm", "max_concurrency")


def _tier_settings(name: str, model: str, value: object) -> Mapping[str, Any]:
    if value is None or value is True:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"channel '{name}': extra.models[{model!r}] must be an object like "
            '{"prices": {"1K": 0.039}, "rpm": 10} (or null for the defaults)'
        )
    unknown = set(value) - set(TIER_KEYS)
    if unknown:
        raise ConfigurationError(
            f"channel '{name}': extra.models[{model!r}] has unknown key(s) {sorted(unknown)}; "
            f"a model tier may set {list(TIER_KEYS)}"
        )
    return value


def parse_channels(
    name: str,
    *,
    host: str | None,
    password: str | None,
    extra: Mapping[str, Any] | str | None,
) -> list[ChannelConfig]:
    """The router channels of one connection: its own model, then one per ``extra.models`` entry.

    The unit the router chooses is (connection, model): a Flash Image tier of a Google connection
    has its own breaker, limiter and price table (Google's quotas and overloads are per model),
    named ``{connection}/{model}``. ``extra.models`` is a list of model names or an object
    ``{model: {"prices": {...}, "rpm": ..., ...}}``; the rest comes from the connection.
    """
    if isinstance(extra, str):
        try:
            extra = json.loads(extra) if extra.strip() else {}
        except json.JSONDecodeError as err:
            raise ConfigurationError(f"channel '{name}': extra is not valid JSON: {err.msg}") from err
    extra = dict(extra or {})
    raw = extra.pop("models", None) or {}
    primary = parse_channel(name, host=host, password=password, extra=extra)
    if isinstance(raw, list | tuple):
        raw = {str(m): None for m in raw}
    if not isinstance(raw, Mapping):
        raise ConfigurationError(
            f"channel '{name}': extra.models must be a list of model names or an object "
            '{"gemini-2.5-flash-image": {"prices": {"1K": 0.039}}}'
        )
    configs = [primary]
    seen = {model_id(primary.model)}
    for model, value in raw.items():
        model = str(model)
        if model_id(model) in seen:
            raise ConfigurationError(f"channel '{name}': extra.models names {model_id(model)!r} twice")
        seen.add(model_id(model))
        tier = {
            **{k: v for k, v in extra.items() if k not in PER_MODEL_KEYS},
            "model": _spelled(primary, model),
        }
        tier.update(_tier_settings(name, model, value))
        config = parse_channel(f"{name}/{model_id(model)}", host=host, password=password, extra=tier)
        configs.append(replace(config, connection=name))
    return configs


def _spelled(primary: ChannelConfig, model: str) -> str:
    """How the connection spells ``model``: a relay's namespace carries over (``google/`` when its
    own model names none, as the relay channel itself assumes)."""
    if primary.protocol == "openai" and "/" not in model:
        namespace = primary.model.split("/", 1)[0] if "/" in primary.model else "google"
        return f"{namespace}/{model}"
    return model


def config_secrets(config: ChannelConfig) -> list[str]:
    """Every string that must never be shown: the key/token and the key file's private parts."""
    values = [config.api_key.reveal()]
    if config.credentials_info is not None:
        raw = config.credentials_info.reveal()
        values.append(raw)
        try:
            info = json.loads(raw)
        except ValueError:
            info = None
        if isinstance(info, dict):
            values.extend(str(info[k]) for k in ("private_key", "private_key_id") if info.get(k))
    return [v for v in values if v]
