"""In-process channel models: the engine's ``Channel`` interface over a scenario's ground truth.

Each call samples what the provider would do at that virtual moment (``ChannelTruth``): an
outage answers 503 or never answers, a 429 burst or steady 429s carry ``RetryInfo``, the
per-minute cap answers 429 with the delay to the next minute, a spent daily quota answers 429
``QuotaFailure ...PerDay...`` until the Pacific midnight, a silent hang never answers, and a
success takes a lognormal latency. Error bodies are the providers' own shapes (the simulator's
``airflow_banana.testing.errors``), classified by the real adapters' ``classify_http`` and
``to_channel_error``, so the router sees exactly the ``ChannelError``s it sees in production.

Billing is the provider's, recorded in a ``Ledger``: successes bill (a relay its ``usage.cost``),
failures only where the channel bills failures, and a success the client stopped waiting for is
billed anyway when the provider finishes it (that is how an item gets paid twice).
"""

from __future__ import annotations

import asyncio
import functools
import io
import math
import random
from collections import defaultdict
from dataclasses import dataclass, field

from airflow_banana.channels.config import ChannelConfig
from airflow_banana.channels.errors import classify_http, to_channel_error
from airflow_banana.exceptions import ChannelError
from airflow_banana.models import GenerationResult, ImageRequest
from airflow_banana.testing.errors import OVERLOADED, google_error, openai_error, quota_error
from bench.virtual.scenarios import DAY_S, GOOGLE_QUOTA_PER_DAY, ChannelTruth

_PER_MINUTE_QUOTA = "GenerateRequestsPerMinutePerProjectPerModel"
_QUOTA_METRIC = "generativelanguage.googleapis.com/generate_requests_per_model"


@functools.lru_cache(maxsize=1)
def png() -> bytes:
    """A real 32x32 PNG: the engine decodes and checks every image as in production.

    Not Google's 1024x1024: decoding that takes 12 ms, more than the engine and router spend
    on an item; the engine only records the size mismatch (``size_matches``), it routes the same.
    """
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (32, 32), (250, 200, 40)).save(out, format="PNG")
    return out.getvalue()


@dataclass
class Call:
    channel: str
    item_id: str
    started: float
    ended: float | None = None
    outcome: str = ""  # "success", "503", "429", "quota", "hang", "cancelled"
    billed: float = 0.0


@dataclass
class Ledger:
    """Every call every system made, as the providers saw and billed them."""

    calls: list[Call] = field(default_factory=list)

    def spent(self) -> float:
        return sum(c.billed for c in self.calls)

    def paid_images(self) -> dict[str, int]:
        """Item id -> images billed for it (2 or more is an item paid twice)."""
        counts: dict[str, int] = defaultdict(int)
        for call in self.calls:
            if call.outcome in ("success", "billed_after_cancel"):
                counts[call.item_id] += 1
        return counts

    def first_success(self) -> dict[str, float]:
        """Item id -> virtual second its first image was delivered to the client."""
        done: dict[str, float] = {}
        for call in self.calls:
            if call.outcome == "success" and call.ended is not None:
                done[call.item_id] = min(done.get(call.item_id, math.inf), call.ended)
        return done


class ChannelModel:
    """One provider behind the ``Channel`` protocol, sampling its ground truth per call."""

    def __init__(
        self, truth: ChannelTruth, ledger: Ledger, rng: random.Random, config: ChannelConfig | None = None
    ):
        self.truth = truth
        self.config = config or truth.config()
        self.ledger = ledger
        self.rng = rng
        self._minute = -1
        self._in_minute = 0
        self._day = 0
        self._today = 0
        self.calls = 0

    @property
    def name(self) -> str:
        return self.config.name

    async def aclose(self) -> None:
        return None

    # ----------------------------------------------------------------- the call
    async def generate(self, request: ImageRequest) -> GenerationResult:
        loop = asyncio.get_running_loop()
        now = loop.time()
        truth = self.truth
        self.calls += 1
        call = Call(truth.name, request.item_id, now)
        self.ledger.calls.append(call)
        verdict, hint = self._sample(now)
        try:
            if verdict == "hang":
                call.outcome = "hang"
                await asyncio.Event().wait()  # accepted, never answered: the client's timeout ends it
            if verdict in ("503", "429", "quota"):
                await asyncio.sleep(self._error_latency())
                call.ended = loop.time()
                call.outcome = verdict
                if truth.billed_on_failure:
                    call.billed = truth.billed
                raise self._error(verdict, hint, request)
            latency = self.rng.lognormvariate(math.log(truth.latency_median_s), truth.latency_sigma)
            await asyncio.sleep(latency)
        except asyncio.CancelledError:
            if verdict == "success":
                # the provider finishes and bills what it started; the client no longer listens
                call.outcome = "billed_after_cancel"
                call.billed = truth.billed
            elif call.outcome == "":
                call.outcome = "cancelled"
            call.ended = loop.time()
            raise
        call.ended = loop.time()
        call.outcome = "success"
        call.billed = truth.billed
        return GenerationResult(
            image=png(),
            mime_type="image/png",
            declared_mime_type="image/png",
            channel=self.name,
            cost_usd=truth.billed,
            cost_reported=truth.protocol == "openai",  # relays of that shape send usage.cost
            latency_s=latency,
        )

    def _sample(self, now: float) -> tuple[str, float | None]:
        """The provider's answer to a call arriving at ``now``: verdict and its retry hint."""
        truth = self.truth
        for outage in truth.outages:
            if outage.covers(now):
                return ("hang" if outage.mode == "hang" else "503"), None
        for burst in truth.bursts:
            if burst.covers(now):
                return "429", burst.retry_s
        day = 0 if now < truth.day_end_s else 1 + int((now - truth.day_end_s) // DAY_S)
        if day != self._day:
            self._day, self._today = day, 0
        if truth.daily_quota is not None and self._today >= truth.daily_quota:
            return "quota", max(1.0, truth.day_end_s + (day * DAY_S) - now)
        minute = int(now // 60.0)
        if minute != self._minute:
            self._minute, self._in_minute = minute, 0
        if self._in_minute >= truth.cap_rpm:
            return "429", max(0.001, (minute + 1) * 60.0 - now)
        self._in_minute += 1
        self._today += 1
        draw = self.rng.random()
        if draw < truth.p_hang:
            return "hang", None
        draw -= truth.p_hang
        if draw < truth.p503:
            return "503", None
        draw -= truth.p503
        if draw < truth.p429:
            return "429", truth.retry429_s
        return "success", None

    def _error_latency(self) -> float:
        return self.rng.lognormvariate(math.log(self.truth.error_latency_s), 0.5)

    def _error(self, verdict: str, hint: float | None, request: ImageRequest) -> ChannelError:
        truth = self.truth
        if verdict == "503":
            status, body = 503, google_error(503, OVERLOADED)
        else:
            status = 429
            body = quota_error(
                retry_delay_s=round(hint or 1.0, 3),
                quota_id=GOOGLE_QUOTA_PER_DAY if verdict == "quota" else _PER_MINUTE_QUOTA,
                quota_metric=_QUOTA_METRIC,
                quota_value=truth.daily_quota if verdict == "quota" else truth.cap_rpm,
                model=request.model,
                vertex=truth.protocol == "vertex",
            )
        if truth.protocol == "openai":
            body = openai_error(body, retry_after=hint)
        verdict_ = classify_http(status, body)
        return to_channel_error(
            verdict_,
            channel=self.name,
            item_id=request.item_id,
            billed_on_failure=truth.billed_on_failure,
        )
