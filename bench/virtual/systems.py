"""The systems under test, each run on one scenario in virtual time: ours and the peers.

- ``ours``: ``RealtimeEngine`` + ``router_for`` exactly as ``run_realtime_lane`` builds them, with
  ``RouterConfig()`` and ``RealtimeSettings()`` untouched; only the clock (virtual), storage
  (in memory) and channels (models) differ.
- ``naive``: ``NaiveFailover``, the ordered failover the project started from: channels by
  price, 3 failures in a row open a channel for 60 s, no hints, no rate limit.
- ``sdk``: google-genai alone on Google direct with ``HttpRetryOptions()`` (its documented
  defaults: 5 attempts, exponential backoff with jitter, retry on 408/429/5xx and timeouts);
  the SDK's own ``retry_args`` builds the tenacity loop, which sleeps on the virtual clock.
- ``litellm`` lives in ``bench.virtual.litellm_peer`` (it needs the bench venv).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from airflow_banana.channels.base import Channel
from airflow_banana.exceptions import ChannelError
from airflow_banana.models import ImageRequest
from bench.virtual.channels import ChannelModel, Ledger
from bench.virtual.loop import VirtualClock, run_virtual
from bench.virtual.scenarios import Scenario

RUN_KEY = "vbench__scenario__run"
PREFIX = "gs://vbench/out"


@dataclass
class SystemRun:
    """What one system did on one scenario: the providers' ledger plus the system's own counts."""

    system: str
    ledger: Ledger
    virtual_s: float
    real_s: float = 0.0
    capped: str = ""  # why the run was stopped early, when it was
    decisions: int = 0  # router decisions (ours), to catch a spin
    extra: dict[str, Any] = field(default_factory=dict)


def requests_of(scenario: Scenario) -> list[ImageRequest]:
    return [
        ImageRequest(
            item_id=f"item-{i:05d}", prompt=f"{scenario.id} image {i}", image_size=scenario.image_size
        )
        for i in range(scenario.items)
    ]


def models_of(scenario: Scenario, ledger: Ledger, salt: str) -> dict[str, ChannelModel]:
    """One model per channel, each with its own seeded stream (the same for every system)."""
    return {
        c.name: ChannelModel(c, ledger, random.Random(f"{scenario.seed}:{c.name}:{salt}"))
        for c in scenario.channels
    }


def by_price(scenario: Scenario) -> list[str]:
    return [c.name for c in sorted(scenario.channels, key=lambda c: (c.price, c.name))]


def quiet() -> None:
    """Per-item INFO/WARNING lines cost more CPU than the routing itself at 5,000 items."""
    for name in ("airflow_banana", "LiteLLM", "LiteLLM Router", "litellm", "httpx"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


# ----------------------------------------------------------------------------- ours


async def _ours(scenario: Scenario, clock: VirtualClock, ledger: Ledger, counter: list[int]) -> None:
    from airflow_banana.realtime.claims import ItemClaims
    from airflow_banana.realtime.engine import RealtimeEngine, RealtimeSettings, WorkItem
    from airflow_banana.routing import RouterConfig, router_for
    from airflow_banana.storage.outputs import OutputStore
    from bench.virtual.storage import MemoryStorage

    models = models_of(scenario, ledger, "ours")
    rng = random.Random(scenario.seed)
    router = router_for([m.config for m in models.values()], clock, rng, config=RouterConfig())
    decide = router.next_action

    def counted(item: Any) -> Any:
        counter[0] += 1
        return decide(item)

    router.next_action = counted  # type: ignore[method-assign,assignment]  # count decisions: a spin shows here
    store = OutputStore(MemoryStorage(), PREFIX)
    engine = RealtimeEngine(
        channels=dict(models), router=router, store=store, run_key=RUN_KEY, settings=RealtimeSettings()
    )
    engine.claims = ItemClaims(store, now=clock.wall)  # claim TTLs on the virtual wall clock
    deadline = (
        None
        if scenario.deadline_s is None
        else datetime.fromtimestamp(scenario.wall_start + scenario.deadline_s, UTC)
    )
    await engine.run([WorkItem(request=r, deadline=deadline) for r in requests_of(scenario)])


def run_ours(scenario: Scenario, *, real_cap_s: float | None = None) -> SystemRun:
    ledger = Ledger()
    counter = [0]
    return _run(
        "ours", scenario, ledger, lambda clock: _ours(scenario, clock, ledger, counter), real_cap_s, counter
    )


# ----------------------------------------------------------------------------- naive


@dataclass
class _NaiveState:
    consecutive: int = 0
    open_until: float = 0.0
    openings: int = 0


class NaiveFailover:
    """The reference design the issue starts from: fixed order, 3 strikes -> open 60 s.

    No retry hint, no rate limit, no per-item terminal verdicts: any failure moves the item to
    the next closed channel in order; an item gives up after ``max_attempts``. When every
    channel is open it polls every ``poll_s``. Each attempt has the channel's attempt timeout.
    """

    def __init__(
        self,
        channels: Mapping[str, Channel],
        order: Sequence[str],
        *,
        open_s: float = 60.0,
        strikes: int = 3,
        max_attempts: int = 10,
        poll_s: float = 1.0,
    ) -> None:
        self.channels = channels
        self.order = list(order)
        self.open_s = open_s
        self.strikes = strikes
        self.max_attempts = max_attempts
        self.poll_s = poll_s
        self.state = {name: _NaiveState() for name in order}

    async def generate(self, request: ImageRequest) -> bool:
        loop = asyncio.get_running_loop()
        attempts = 0
        while attempts < self.max_attempts:
            ready = [n for n in self.order if self.state[n].open_until <= loop.time()]
            if not ready:
                await asyncio.sleep(self.poll_s)
                continue
            for name in ready:
                if attempts >= self.max_attempts:
                    break
                if self.state[name].open_until > loop.time():
                    continue
                attempts += 1
                channel = self.channels[name]
                try:
                    await asyncio.wait_for(
                        channel.generate(request), timeout=channel.config.attempt_timeout_s
                    )
                except (ChannelError, TimeoutError):
                    st = self.state[name]
                    st.consecutive += 1
                    if st.consecutive >= self.strikes:
                        st.open_until = loop.time() + self.open_s
                        st.consecutive = 0
                        st.openings += 1
                    continue
                self.state[name].consecutive = 0
                return True
        return False


async def _bounded_all(
    limit: int, requests: Sequence[ImageRequest], one: Callable[[ImageRequest], Awaitable[Any]]
) -> None:
    slots = asyncio.Semaphore(max(1, limit))

    async def run(request: ImageRequest) -> None:
        async with slots:
            await one(request)

    await asyncio.gather(*(run(r) for r in requests))


async def _naive(scenario: Scenario, ledger: Ledger) -> None:
    models = models_of(scenario, ledger, "naive")
    naive = NaiveFailover(models, by_price(scenario))
    limit = sum(m.config.max_concurrency for m in models.values())
    await _bounded_all(limit, requests_of(scenario), naive.generate)


def run_naive(scenario: Scenario, *, real_cap_s: float | None = None) -> SystemRun:
    ledger = Ledger()
    return _run("naive", scenario, ledger, lambda clock: _naive(scenario, ledger), real_cap_s)


# ----------------------------------------------------------------------------- sdk


def sdk_channel(scenario: Scenario) -> str | None:
    """Google direct, the SDK's default endpoint; None when the scenario has no such channel."""
    return next((c.name for c in scenario.channels if c.kind == "google"), None)


async def _sdk(scenario: Scenario, ledger: Ledger) -> None:
    import httpx
    import tenacity
    from google.genai import _api_client, errors, types

    name = sdk_channel(scenario)
    assert name is not None
    model = models_of(scenario, ledger, "sdk")[name]
    retry_kwargs = _api_client.retry_args(types.HttpRetryOptions())

    async def call(request: ImageRequest) -> None:
        try:
            await asyncio.wait_for(model.generate(request), timeout=model.config.attempt_timeout_s)
        except ChannelError as err:
            # what the SDK raises for that HTTP answer, so its own predicate decides on a retry
            raise errors.APIError(
                err.status_code or 500, {"error": {"code": err.status_code, "message": err.reason}}
            ) from err
        except TimeoutError as err:
            raise httpx.ReadTimeout("no answer within the timeout") from err

    async def one(request: ImageRequest) -> None:
        try:
            async for attempt in tenacity.AsyncRetrying(**retry_kwargs):
                with attempt:
                    await call(request)
        except (errors.APIError, httpx.TimeoutException, tenacity.RetryError):
            return  # the user's code gets the exception: the item has no image

    await _bounded_all(model.config.max_concurrency, requests_of(scenario), one)


def run_sdk(scenario: Scenario, *, real_cap_s: float | None = None) -> SystemRun | None:
    if sdk_channel(scenario) is None:
        return None
    ledger = Ledger()
    # tenacity's jitter draws from the global random module
    random.seed(scenario.seed)
    return _run("sdk", scenario, ledger, lambda clock: _sdk(scenario, ledger), real_cap_s)


# ----------------------------------------------------------------------------- common


def _run(
    system: str,
    scenario: Scenario,
    ledger: Ledger,
    make: Callable[[VirtualClock], Awaitable[None]],
    real_cap_s: float | None,
    counter: list[int] | None = None,
) -> SystemRun:
    import time

    from bench.virtual.loop import RealTimeCapExceeded

    quiet()
    started = time.perf_counter()
    clocks: list[VirtualClock] = []

    async def main(clock: VirtualClock) -> None:
        clocks.append(clock)
        await make(clock)

    capped = ""
    try:
        run_virtual(main, wall_start=scenario.wall_start, real_cap_s=real_cap_s)
    except RealTimeCapExceeded as err:
        capped = str(err)
    return SystemRun(
        system=system,
        ledger=ledger,
        virtual_s=clocks[0].now() if clocks else 0.0,
        real_s=time.perf_counter() - started,
        capped=capped,
        decisions=counter[0] if counter else 0,
    )


RUNNERS: dict[str, Callable[..., SystemRun | None]] = {"ours": run_ours, "naive": run_naive, "sdk": run_sdk}


def runner(system: str) -> Callable[..., SystemRun | None] | None:
    """The runner of ``system``; LiteLLM's is imported only when asked for (bench venv)."""
    if system == "litellm":
        from bench.virtual.litellm_peer import run_litellm

        return run_litellm
    return RUNNERS.get(system)
