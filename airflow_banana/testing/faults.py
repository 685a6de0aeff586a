"""Fault decisions of the simulator: which request fails, how, and for how long a key is throttled.

Pure decision code (no I/O, clock injected) so a run is reproducible: every key has its own RNG
seeded from (config seed, key), quotas are sliding windows per key, and outage windows are
measured from the key's first request after its profile was set. The HTTP layer only carries the decision out.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import NormalDist

from airflow_banana.testing.config import MARKERS, RATE_FAULTS, FaultProfile, SimulatorConfig

MARKER_RE = re.compile(r"\[sim:([a-z0-9_]+)\]")
# Faults that happen before any generation (the HTTP layer carries them out).
TRANSPORT_FAULTS = frozenset(
    {"overload", "rate_limit", "hang", "reset", "fixed_status", "outage", "quota", "400", "500"}
)
# Faults that shape a 200 answer (the generator carries them out; batch can reuse them).
CONTENT_FAULTS = frozenset({"blocked", "image_safety", "no_image", "jpeg_as_png", "wrong_size"})
# Faults that break an otherwise good 200 body after generation.
BODY_FAULTS = frozenset({"truncated", "malformed"})

MINUTE_QUOTA_ID = "GenerateRequestsPerMinutePerProjectPerModel"
DAY_QUOTA_ID = "GenerateRequestsPerDayPerProjectPerModel"


def key_id_for(key: str, profile_name: str | None = None) -> str:
    """What the ledger shows instead of a key: the profile's name, else a short hash."""
    if profile_name:
        return profile_name
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def markers_in(text: str) -> list[str]:
    """Known ``[sim:...]`` markers in ``text``, in order (unknown names are ignored)."""
    out = []
    for name in MARKER_RE.findall(text):
        if name in MARKERS:
            out.append({"503": "overload", "429": "rate_limit"}.get(name, name))
    return out


@dataclass(frozen=True)
class Decision:
    """What happens to one request. ``fault`` None = healthy."""

    fault: str | None = None
    latency_s: float = 0.0
    retry_delay_s: float | None = None
    quota_id: str | None = None
    quota_metric: str | None = None
    quota_value: int | None = None
    status: int | None = None

    @property
    def transport(self) -> bool:
        return self.fault in TRANSPORT_FAULTS

    @property
    def content(self) -> str | None:
        return self.fault if self.fault in CONTENT_FAULTS else None

    @property
    def body(self) -> str | None:
        return self.fault if self.fault in BODY_FAULTS else None


@dataclass
class _KeyState:
    rng: random.Random
    profile_set_at: float
    minute_requests: deque[float] = field(default_factory=deque)
    minute_images: deque[float] = field(default_factory=deque)
    day_requests: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0  # an enforced retryDelay: 429 for everyone until then
    generations: int = 0  # generation requests decided so far (for ``rate_limit_first``)


class FaultEngine:
    """Per-key fault profiles, RNG streams, quota windows and outage clocks (thread-safe)."""

    def __init__(self, config: SimulatorConfig, clock: Callable[[], float]):
        self._clock = clock
        self._lock = threading.Lock()
        self.config = config
        self._profiles: dict[str, FaultProfile] = dict(config.keys)
        self._default = config.default
        self._states: dict[str, _KeyState] = {}

    # --- profiles -------------------------------------------------------------------------------
    def profile(self, key: str) -> FaultProfile:
        with self._lock:
            return self._profiles.get(key, self._default)

    def key_id(self, key: str) -> str:
        prof = self._profiles.get(key)
        return key_id_for(key, prof.name if prof else None)

    def set_profile(self, key: str, profile: FaultProfile) -> None:
        with self._lock:
            self._profiles[key] = profile
            self._states.pop(key, None)  # new profile: fresh outage clock, RNG and quota windows

    def set_default(self, profile: FaultProfile) -> None:
        with self._lock:
            self._default = profile
            self._states.clear()

    def set_all(self, keys: dict[str, FaultProfile], default: FaultProfile | None) -> None:
        with self._lock:
            self._profiles = dict(keys)
            if default is not None:
                self._default = default
            self._states.clear()

    def snapshot(self) -> dict[str, object]:
        """Profiles by key id (never by key: keys are secrets)."""
        with self._lock:
            keys = {key_id_for(k, p.name): p.to_dict() for k, p in self._profiles.items()}
            return {"keys": keys, "default": self._default.to_dict()}

    def reset(self, *, faults: bool = False) -> None:
        """Forget quotas, outage clocks and RNG positions; with ``faults`` also the run-time profiles."""
        with self._lock:
            self._states.clear()
            if faults:
                self._profiles = dict(self.config.keys)
                self._default = self.config.default

    # --- decisions ------------------------------------------------------------------------------
    def _state(self, key: str) -> _KeyState:
        state = self._states.get(key)
        if state is None:
            seed = int.from_bytes(hashlib.sha256(f"{self.config.seed}:{key}".encode()).digest()[:8], "big")
            state = _KeyState(rng=random.Random(seed), profile_set_at=self._clock())
            self._states[key] = state
        return state

    def decide_metadata(self, key: str) -> Decision:
        """Non-billable metadata calls only see a key's fixed status and outages."""
        with self._lock:
            prof = self._profiles.get(key, self._default)
            state = self._state(key)
            now = self._clock()
            if prof.fixed_status is not None:
                return Decision(fault="fixed_status", status=prof.fixed_status)
            if self._in_outage(prof, state, now):
                return Decision(fault="outage", status=503)
            return Decision()

    def decide(self, key: str, prompt: str = "", images: int = 1) -> Decision:
        """Decide the fate of one generation request and charge it to the key's quotas if admitted."""
        with self._lock:
            prof = self._profiles.get(key, self._default)
            state = self._state(key)
            now = self._clock()
            # One draw for the fault and one for latency, always, so streams stay aligned.
            draw = state.rng.random()
            latency = self._latency(prof, state.rng)
            if prof.fixed_status is not None:
                return Decision(fault="fixed_status", status=prof.fixed_status)
            marks = markers_in(prompt)
            if marks and marks[0] in TRANSPORT_FAULTS:
                return self._marker_decision(marks[0], prof, latency)
            if self._in_outage(prof, state, now):
                return Decision(fault="outage", status=503, latency_s=latency)
            if now < state.locked_until:
                return Decision(
                    fault="rate_limit", status=429, latency_s=latency, retry_delay_s=state.locked_until - now
                )
            state.generations += 1
            if state.generations <= prof.rate_limit_first:
                # A burst of hints before any quota is charged: the request was never admitted.
                if prof.retry_delay_enforced:
                    state.locked_until = now + prof.retry_delay_s
                return self._marker_decision("rate_limit", prof, latency)
            quota = self._admit(prof, state, now, images)
            if quota is not None:
                return quota
            fault = marks[0] if marks else None
            edge = 0.0
            for candidate in RATE_FAULTS if fault is None else ():
                edge += prof.rate_of(candidate)
                if draw < edge:
                    fault = candidate
                    break
            if fault is None:
                return Decision(latency_s=latency)
            if fault == "rate_limit" and prof.retry_delay_enforced:
                state.locked_until = now + prof.retry_delay_s
            return self._marker_decision(fault, prof, latency)

    def _marker_decision(self, fault: str, prof: FaultProfile, latency: float) -> Decision:
        if fault == "overload":
            return Decision(fault=fault, status=503, latency_s=latency)
        if fault == "rate_limit":
            return Decision(fault=fault, status=429, latency_s=latency, retry_delay_s=prof.retry_delay_s)
        if fault in ("400", "500"):
            return Decision(fault=fault, status=int(fault), latency_s=latency)
        return Decision(fault=fault, latency_s=latency)

    def _in_outage(self, prof: FaultProfile, state: _KeyState, now: float) -> bool:
        if prof.outage_duration_s <= 0:
            return False
        start = state.profile_set_at + prof.outage_start_s
        return start <= now < start + prof.outage_duration_s

    def _admit(self, prof: FaultProfile, state: _KeyState, now: float, images: int) -> Decision | None:
        minute, day = self.config.minute_s, self.config.day_s
        for window, span in (
            (state.minute_requests, minute),
            (state.minute_images, minute),
            (state.day_requests, day),
        ):
            while window and window[0] <= now - span:
                window.popleft()
        checks = (
            (
                prof.rpd,
                state.day_requests,
                day,
                1,
                DAY_QUOTA_ID,
                "generativelanguage.googleapis.com/generate_requests_per_model_per_day",
            ),
            (
                prof.rpm,
                state.minute_requests,
                minute,
                1,
                MINUTE_QUOTA_ID,
                "generativelanguage.googleapis.com/generate_requests_per_model",
            ),
            (
                prof.ipm,
                state.minute_images,
                minute,
                images,
                MINUTE_QUOTA_ID,
                "generativelanguage.googleapis.com/generate_content_output_images",
            ),
        )
        for limit, window, span, cost, quota_id, metric in checks:
            if limit is not None and len(window) + cost > limit:
                # The oldest entries that must expire before ``cost`` more fit.
                idx = min(len(window) - 1, max(0, len(window) + cost - limit - 1))
                wait = window[idx] + span - now if window else span
                return Decision(
                    fault="quota",
                    status=429,
                    retry_delay_s=max(0.001, wait),
                    quota_id=quota_id,
                    quota_metric=metric,
                    quota_value=limit,
                )
        state.minute_requests.append(now)
        state.day_requests.append(now)
        for _ in range(images):
            state.minute_images.append(now)
        return None

    @staticmethod
    def _latency(prof: FaultProfile, rng: random.Random) -> float:
        u = rng.random()
        if prof.latency_lognormal_ms is not None:
            median, p95 = prof.latency_lognormal_ms
            mu = math.log(max(median, 1e-6))
            sigma = max(0.0, math.log(max(p95, median) / max(median, 1e-6)) / 1.6448536269514722)
            # Inverse CDF keeps it at one draw per request, so RNG streams stay aligned.
            z = NormalDist().inv_cdf(min(max(u, 1e-12), 1 - 1e-12))
            return math.exp(mu + sigma * z) / 1000.0
        if prof.latency_ms is not None:
            lo, hi = prof.latency_ms
            return (lo + (hi - lo) * u) / 1000.0
        return 0.0
