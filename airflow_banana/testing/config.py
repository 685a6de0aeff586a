"""Settings of the Gemini simulator: global knobs plus one fault profile per API key.

Plain dataclasses that round-trip through JSON, so the same profile can come from a config file
(``airflow-banana simulator --config``), from Python tests, or from the admin endpoint at run time.
A key is the channel's identity: every fault, quota and RNG stream is per key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from airflow_banana.exceptions import ConfigurationError

DEFAULT_MODELS: tuple[str, ...] = (
    "gemini-3-pro-image-preview",
    "gemini-2.5-flash-image",
    "gemini-3.1-flash-image-preview",
)
# A model tier's latency as a fraction of the key's profile (written for Pro): Flash Image is
# 3-4x faster (the seed; docs/tiers.md).
MODEL_LATENCY_FACTORS: dict[str, float] = {"gemini-2.5-flash-image": 0.3}
# Fixed so that signatures issued by one simulator process validate in another (edit sessions
# restored across processes, FAULTS.md S6). Override it to simulate "signature from elsewhere".
DEFAULT_SIGNATURE_SECRET = "airflow-banana-simulator"

# Rate-driven faults, in the order a single uniform draw is mapped onto them.
RATE_FAULTS: tuple[str, ...] = (
    "overload",
    "rate_limit",
    "hang",
    "reset",
    "truncated",
    "malformed",
    "blocked",
    "image_safety",
    "no_image",
    "jpeg_as_png",
    "wrong_size",
)
# Faults a prompt marker ``[sim:<name>]`` can force; "503" and "429" are aliases.
MARKERS: tuple[str, ...] = (*RATE_FAULTS, "503", "429", "400", "500")


def _seconds(value: Any, *, what: str) -> float:
    """Accept 26, 26.5, "26s" or "26.5s" (Google's Duration spelling)."""
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text[:-1] if text.endswith("s") else text)
        except ValueError as err:
            raise ConfigurationError(f"simulator config: {what}={value!r} is not a duration") from err
    raise ConfigurationError(f"simulator config: {what}={value!r} is not a duration")


# Final states a simulated batch job can be told to end in (Vertex spelling, without JOB_STATE_).
BATCH_FINAL_STATES: tuple[str, ...] = ("SUCCEEDED", "FAILED", "EXPIRED", "CANCELLED", "PARTIALLY_SUCCEEDED")


@dataclass(frozen=True)
class BatchProfile:
    """How simulated batch jobs (Developer Batch API and Vertex batch prediction) behave.

    Google's "24 h" is scaled: a job is PENDING for ``pending_s``, then its lines complete one by
    one, evenly spread until ``turnaround_s`` after creation, when it reaches ``final_state``.
    Jobs ending FAILED, EXPIRED or CANCELLED, and ``stuck`` jobs (RUNNING forever), finish only
    ``completed_fraction`` of their lines first; those lines are billed and their results exposed.
    ``line_error_rate`` makes that share of lines fail on their own (not billed).
    ``poll_errors`` = the first N GETs of each job answer 503; ``poll_error_rate`` = that share of
    all its GETs does. PARTIALLY_SUCCEEDED with no ``line_error_rate`` fails every 4th line (index
    1, 5, 9 ...); the Developer API has no such state and reports SUCCEEDED for it.
    """

    turnaround_s: float = 2.0
    pending_s: float = 0.2
    final_state: str = "SUCCEEDED"
    completed_fraction: float = 0.5
    line_error_rate: float = 0.0
    stuck: bool = False
    poll_error_rate: float = 0.0
    poll_errors: int = 0

    def __post_init__(self) -> None:
        if self.turnaround_s < 0 or self.pending_s < 0:
            raise ConfigurationError("batch profile: turnaround_s and pending_s must not be negative")
        if self.final_state not in BATCH_FINAL_STATES:
            known = ", ".join(BATCH_FINAL_STATES)
            raise ConfigurationError(f"batch profile: final_state={self.final_state!r} is not one of {known}")
        for name in ("completed_fraction", "line_error_rate", "poll_error_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigurationError(f"batch profile: {name}={value} is not in [0, 1]")
        if self.poll_errors < 0:
            raise ConfigurationError(f"batch profile: poll_errors={self.poll_errors} is negative")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | BatchProfile) -> BatchProfile:
        if isinstance(data, BatchProfile):
            return data
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"batch profile must be an object, got {type(data).__name__}")
        data = dict(data)
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigurationError(f"batch profile: unknown field(s) {unknown}")
        for name in ("turnaround_s", "pending_s"):
            if name in data:
                data[name] = _seconds(data[name], what=name)
        if "final_state" in data:
            data["final_state"] = str(data["final_state"]).upper().removeprefix("JOB_STATE_")
        try:
            return cls(**data)
        except TypeError as err:
            raise ConfigurationError(f"batch profile: {err}") from err

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FaultProfile:
    """How one API key (one channel) misbehaves. Rates are probabilities per generation request.

    ``latency_ms`` = (min, max) uniform; ``latency_lognormal_ms`` = (median, p95) wins if set.
    ``fixed_status`` answers every request with 400 (API_KEY_INVALID), 401, 403, 404, 500 or 503.
    The outage window starts ``outage_start_s`` after the profile was set and lasts
    ``outage_duration_s``. ``strict_signatures`` None = the path default (Developer strict,
    Vertex lenient). ``openai_markdown`` makes ``/chat/completions`` answer with a markdown data
    URL in ``content`` instead of ``images``. ``retry_delay_enforced`` makes a 429 drawn by
    ``rate_limit_rate`` mean what a real one means (a quota shared with other callers ran
    out): every request before its ``retryDelay`` ends gets a 429 with the delay that is left;
    without it each 429 is an independent dice roll and the hint is not enforced.
    ``rate_limit_first`` = the key's first N generation requests answer 429 with ``RetryInfo`` of
    ``retry_delay_s`` (a burst of hints at the start of a run, then whatever the rates say).
    The key's clock (outage window, quota windows) starts at its first request after the
    profile was set, so a run that starts late still sees the whole window.
    """

    name: str | None = None
    overload_rate: float = 0.0
    rate_limit_rate: float = 0.0
    retry_delay_s: float = 26.0
    retry_delay_enforced: bool = False
    rate_limit_first: int = 0
    hang_rate: float = 0.0
    reset_rate: float = 0.0
    truncated_rate: float = 0.0
    malformed_rate: float = 0.0
    blocked_rate: float = 0.0
    image_safety_rate: float = 0.0
    no_image_rate: float = 0.0
    jpeg_as_png_rate: float = 0.0
    wrong_size_rate: float = 0.0
    rpm: int | None = None
    ipm: int | None = None
    rpd: int | None = None
    latency_ms: tuple[float, float] | None = None
    latency_lognormal_ms: tuple[float, float] | None = None
    fixed_status: int | None = None
    outage_start_s: float = 0.0
    outage_duration_s: float = 0.0
    strict_signatures: bool | None = None
    openai_markdown: bool = False
    openai_cost_usd: float | None = None
    batch: BatchProfile | None = None

    def __post_init__(self) -> None:
        total = 0.0
        for fault in RATE_FAULTS:
            rate = getattr(self, f"{fault}_rate")
            if not 0.0 <= rate <= 1.0:
                raise ConfigurationError(f"fault profile {self.name!r}: {fault}_rate={rate} is not in [0, 1]")
            total += rate
        if total > 1.0 + 1e-9:
            raise ConfigurationError(f"fault profile {self.name!r}: fault rates add up to {total:.3f} > 1")
        if self.rate_limit_first < 0:
            raise ConfigurationError(
                f"fault profile {self.name!r}: rate_limit_first={self.rate_limit_first} is negative"
            )
        if self.fixed_status not in (None, 400, 401, 403, 404, 500, 503):
            raise ConfigurationError(
                f"fault profile {self.name!r}: fixed_status={self.fixed_status} "
                "is not one of 400/401/403/404/500/503"
            )

    def rate_of(self, fault: str) -> float:
        return float(getattr(self, f"{fault}_rate"))

    @classmethod
    def peak(cls, name: str | None = None, **overrides: Any) -> FaultProfile:
        """Weekday 10:00-18:00 Pacific: ~45 % of direct calls fail, mostly 503 (PRICING.md)."""
        base = cls(
            name=name,
            overload_rate=0.40,
            rate_limit_rate=0.03,
            retry_delay_s=2.0,
            truncated_rate=0.01,
            reset_rate=0.01,
            latency_ms=(20.0, 120.0),
        )
        return replace(base, **overrides)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | FaultProfile) -> FaultProfile:
        if isinstance(data, FaultProfile):
            return data
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"fault profile must be an object, got {type(data).__name__}")
        data = dict(data)
        preset = data.pop("preset", None)
        if preset not in (None, "peak"):
            raise ConfigurationError(f"fault profile {data.get('name')!r}: unknown preset {preset!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigurationError(f"fault profile {data.get('name')!r}: unknown field(s) {unknown}")
        if "retry_delay_s" in data:
            data["retry_delay_s"] = _seconds(data["retry_delay_s"], what="retry_delay_s")
        for pair in ("latency_ms", "latency_lognormal_ms"):
            if data.get(pair) is not None:
                lo, hi = data[pair]
                data[pair] = (float(lo), float(hi))
        if data.get("batch") is not None:
            data["batch"] = BatchProfile.from_dict(data["batch"])
        try:
            return cls.peak(**data) if preset == "peak" else cls(**data)
        except TypeError as err:
            raise ConfigurationError(f"fault profile {data.get('name')!r}: {err}") from err

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for pair in ("latency_ms", "latency_lognormal_ms"):
            if out[pair] is not None:
                out[pair] = list(out[pair])
        return out


@dataclass(frozen=True)
class SimulatorConfig:
    """Global simulator settings. ``keys`` maps an API key (or Vertex bearer token) to its profile.

    ``minute_s``/``day_s`` are the real seconds a quota minute/day lasts, so tests can use 1 s.
    ``strict_signatures`` None = path default (strict on Developer paths, lenient on Vertex).
    ``batch`` shapes batch jobs of keys whose profile has no ``batch`` of its own.
    """

    keys: Mapping[str, FaultProfile] = field(default_factory=dict)
    default: FaultProfile = field(default_factory=FaultProfile)
    minute_s: float = 60.0
    day_s: float = 86400.0
    seed: int = 0
    strict_signatures: bool | None = None
    signature_secret: str = field(default=DEFAULT_SIGNATURE_SECRET, repr=False)
    models: tuple[str, ...] = DEFAULT_MODELS
    hang_max_s: float = 600.0
    host: str = "127.0.0.1"
    port: int = 0
    batch: BatchProfile = field(default_factory=BatchProfile)

    def __post_init__(self) -> None:
        if self.minute_s <= 0 or self.day_s <= 0:
            raise ConfigurationError("simulator config: minute_s and day_s must be positive")

    def __repr__(self) -> str:
        # Keys are secrets: show only how many profiles there are.
        return (
            f"SimulatorConfig(keys=<{len(self.keys)} keys>, default={self.default!r}, "
            f"minute_s={self.minute_s}, "
            f"day_s={self.day_s}, seed={self.seed}, host={self.host!r}, port={self.port})"
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SimulatorConfig:
        if not isinstance(data, Mapping):
            raise ConfigurationError("simulator config must be a JSON object")
        data = dict(data)
        keys = {str(k): FaultProfile.from_dict(v) for k, v in (data.pop("keys", None) or {}).items()}
        default = FaultProfile.from_dict(data.pop("default", None) or {})
        if "models" in data:
            data["models"] = tuple(data["models"])
        if data.get("batch") is not None:
            data["batch"] = BatchProfile.from_dict(data["batch"])
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigurationError(f"simulator config: unknown field(s) {unknown}")
        return cls(keys=keys, default=default, **data)

    @classmethod
    def load(cls, path: str | Path) -> SimulatorConfig:
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise ConfigurationError(f"simulator config {path}: cannot read JSON: {err}") from err
        return cls.from_dict(raw)
