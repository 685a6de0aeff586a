"""The peers of ``bench/incidents.py``, over real HTTP to the same simulator profile, no Airflow.

Both send through this project's channel adapters (``build_channel``: google-genai for the two
Gemini-native channels, httpx for the OpenAI-compatible relay), so the protocol is the same and
only the routing differs; at most the channels' summed ``max_concurrency`` items are in flight.

- ``naive``: ``NaiveFailover`` of the virtual-time bench (``bench/virtual/systems.py``), fixed
  order cheapest first, a channel skipped for 60 s after 3 failures in a row.
- ``litellm``: LiteLLM Router configured as its docs recommend for fallbacks and cooldowns
  ("Retries, fallbacks and cooldowns", docs.litellm.ai/docs/router/learn/reliability): one
  model group per channel, ``fallbacks`` from the cheapest to the others in price order,
  ``num_retries=2``, ``allowed_fails=3``, ``cooldown_time=30`` and the docs' ``retry_policy``;
  its deployments are a ``CustomLLM`` provider calling our channel adapter, raising the LiteLLM
  exception the answer maps to (429 with the provider's ``Retry-After``, 503, timeout).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download of LiteLLM's price map

from airflow_banana.channels import build_channel
from airflow_banana.channels.base import Channel
from airflow_banana.channels.config import parse_channel
from airflow_banana.models import ImageRequest
from airflow_banana.routing import DEFAULT_DEADLINE_S
from airflow_banana.testing import Simulator, SimulatorConfig
from airflow_banana.testing.connections import OPENAI_PREFIX
from bench.incidents import CHANNELS, DEADLINES, Cell, measure, profiles


def channels_for(base_url: str) -> dict[str, Channel]:
    """The three channels as the bench's connections describe them, cheapest first."""
    out: dict[str, Channel] = {}
    for spec in sorted(CHANNELS, key=lambda c: c.price):
        extra: dict[str, Any] = {"protocol": spec.protocol}
        if spec.configured_price:
            extra["prices"] = {size: spec.price for size in ("1K", "2K", "4K")}
        if spec.protocol == "openai":
            extra["model"] = "google/gemini-3-pro-image-preview"
        host = base_url + (OPENAI_PREFIX if spec.protocol == "openai" else "")
        name = spec.conn_id.removeprefix("banana_")
        out[name] = build_channel(parse_channel(name, host=host, password=spec.key, extra=extra))
    return out


async def _all(
    limit: int, requests: list[ImageRequest], one: Callable[[ImageRequest], Awaitable[bool]]
) -> dict[str, float]:
    """Run ``one`` over every request, ``limit`` at a time; item id -> wall time it succeeded."""
    slots = asyncio.Semaphore(limit)
    done: dict[str, float] = {}

    async def run(request: ImageRequest) -> None:
        async with slots:
            if await one(request):
                done[request.item_id] = time.time()

    await asyncio.gather(*(run(r) for r in requests))
    return done


def _naive(channels: Mapping[str, Channel]) -> Callable[[ImageRequest], Awaitable[bool]]:
    from bench.virtual.systems import NaiveFailover

    return NaiveFailover(channels, list(channels)).generate


def _litellm(channels: Mapping[str, Channel]) -> Callable[[ImageRequest], Awaitable[bool]]:
    from bench.virtual.litellm_peer import docs_router, provider

    requests: dict[str, ImageRequest] = {}
    order = list(channels)
    router = docs_router(order, provider(channels, requests.__getitem__))

    async def one(request: ImageRequest) -> bool:
        requests[request.item_id] = request
        try:
            await router.acompletion(model=order[0], messages=[{"role": "user", "content": request.item_id}])
        except Exception:  # LiteLLM gave up on the item: it has no image
            return False
        return True

    return one


def run_peer(system: str, cell: Cell, workdir: Path, items: int) -> dict[str, Any]:
    """One cell with a peer; the same row as ``run_ours`` (cost etc. from the simulator's ledger)."""
    from airflow_banana.channels.config import DEFAULT_MAX_CONCURRENCY

    deadline_s = DEADLINES[cell.deadline]
    requests = [ImageRequest(f"item-{i:03d}", f"catalog product number {i}") for i in range(items)]
    with Simulator(SimulatorConfig(keys=profiles(cell))) as sim:
        channels = channels_for(sim.base_url)
        one = {"naive": _naive, "litellm": _litellm}[system](channels)
        limit = sum(c.config.max_concurrency for c in channels.values())
        started = time.time()

        async def go() -> dict[str, float]:
            try:
                return await _all(limit, requests, one)
            finally:
                for channel in channels.values():
                    await channel.aclose()

        done = asyncio.run(go())
        ledger = sim.ledger()
    due = datetime.fromtimestamp(started, UTC) + timedelta(seconds=deadline_s or DEFAULT_DEADLINE_S)
    made = [{"written_at": datetime.fromtimestamp(t, UTC).isoformat()} for t in done.values()]
    first = min((r["ts"] for r in ledger["requests"]), default=started)
    row = measure(
        cell, ledger, made=made, items=items, run_start=first, due=due, concurrency=DEFAULT_MAX_CONCURRENCY
    )
    row.update(system=system, slack_at_start_s=round(due.timestamp() - first, 1))
    return row
