"""LiteLLM Router as a peer, in-process and on virtual time.

Configured as its docs recommend for fallbacks and cooldowns ("Retries, fallbacks and
cooldowns", docs.litellm.ai/docs/router/learn/reliability): one model group per channel,
``fallbacks`` from the cheapest group to the others in price order, ``num_retries=2``,
``allowed_fails=3``, ``cooldown_time=30``, and the docs' example ``retry_policy``. Each
deployment's call is a ``CustomLLM`` provider that calls the scenario's channel model (no HTTP)
and raises the LiteLLM exception its status maps to (429 with the ``Retry-After`` the provider
gave, 503, timeout).

Only scenarios of at most ``MAX_ITEMS`` items (CPU cost, see there).

Virtual time: LiteLLM's retry sleeps are ``asyncio.sleep`` (virtual already) and its health
cache reads ``time.time()`` (patched by ``run_virtual``). Its cooldowns live in a native (Rust)
store with its own real-time TTLs, so the router's ``CooldownCache`` is given a Python store
(``VirtualCooldowns``) with the same operations over the virtual wall clock.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from airflow_banana.exceptions import ChannelError, ErrorClass
from airflow_banana.models import ImageRequest
from bench.virtual.channels import ChannelModel, Ledger
from bench.virtual.loop import VirtualClock
from bench.virtual.scenarios import Scenario
from bench.virtual.systems import SystemRun, _bounded_all, _run, by_price, models_of, requests_of

PROVIDER = "banana"
ROUTER_SETTINGS: Mapping[str, Any] = {"num_retries": 2, "allowed_fails": 3, "cooldown_time": 30}
# LiteLLM spends 10-40 ms of CPU per call in-process (its logging payloads, pydantic checks,
# deep copies), so a 5,000-item scenario takes it minutes: it runs on the scenarios of at most
# this many items (about a third of a run), and the report says how many it ran.
MAX_ITEMS = 100


class VirtualCooldowns:
    """LiteLLM's ``RouterCooldownsHandle`` in Python, on the virtual wall clock (memory only)."""

    def __init__(self) -> None:
        self._cooldowns: dict[str, tuple[dict[str, Any], float]] = {}
        self._fails: dict[tuple[str, str | None], tuple[int, float]] = {}

    @property
    def has_redis(self) -> bool:
        return False

    def attach(self, client: Any, /) -> bool:
        return False

    def put(self, model_id: str, cooldown: Mapping[str, object], ttl_seconds: float) -> None:
        self._cooldowns[model_id] = (dict(cooldown), time.time() + ttl_seconds)

    def increment_allowed_fails(self, model_id: str, suffix: str | None, ttl_seconds: float) -> int:
        now = time.time()
        count, expires = self._fails.get((model_id, suffix), (0, 0.0))
        if expires <= now:
            count, expires = 0, now + ttl_seconds
        self._fails[(model_id, suffix)] = (count + 1, expires)
        return count + 1

    async def async_put(self, model_id: str, cooldown: Mapping[str, object], ttl_seconds: float) -> None:
        self.put(model_id, cooldown, ttl_seconds)

    async def async_increment_allowed_fails(
        self, model_id: str, suffix: str | None, ttl_seconds: float
    ) -> int:
        return self.increment_allowed_fails(model_id, suffix, ttl_seconds)

    def active(self, model_ids: Sequence[str], send: Any) -> Any:
        raise NotImplementedError("memory only: LiteLLM asks this only with Redis attached")

    def active_sync(self, model_ids: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
        now = time.time()
        return [
            (m, self._cooldowns[m][0])
            for m in model_ids
            if m in self._cooldowns and self._cooldowns[m][1] > now
        ]

    def minimum(self, model_ids: Sequence[str]) -> float | None:
        now = time.time()
        left = [self._cooldowns[m][1] - now for m in model_ids if m in self._cooldowns]
        left = [x for x in left if x > 0]
        return min(left) if left else None

    def delete_local(self, model_id: str) -> None:
        self._cooldowns.pop(model_id, None)

    def flush_local_counters(self) -> None:
        self._fails.clear()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        now = time.time()
        return {m: v for m, (v, until) in self._cooldowns.items() if until > now}


def provider(channels: Mapping[str, Any], request_for: Callable[[str], ImageRequest]) -> Any:
    """A LiteLLM ``CustomLLM`` whose model ``banana/<name>`` is our channel ``<name>``.

    The message content is the item id; ``request_for`` turns it back into the request. Our
    errors become the LiteLLM errors the answer maps to (429 with the provider's Retry-After).
    Shared by the virtual bench and the incidents bench (``bench.incident_peers``).
    """
    import httpx
    import litellm
    from litellm.llms.custom_llm import CustomLLM
    from litellm.types.utils import ModelResponse

    def litellm_error(err: ChannelError, model: str) -> Exception:
        headers = {} if err.retry_after is None else {"retry-after": f"{err.retry_after:g}"}
        response = httpx.Response(
            err.status_code or 500, headers=headers, request=httpx.Request("POST", "https://bench")
        )
        if err.error_class in (ErrorClass.RATE_LIMITED, ErrorClass.QUOTA_EXHAUSTED):
            return litellm.RateLimitError(err.reason, llm_provider=PROVIDER, model=model, response=response)
        return litellm.ServiceUnavailableError(
            err.reason, llm_provider=PROVIDER, model=model, response=response
        )

    class BananaLLM(CustomLLM):
        async def acompletion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> ModelResponse:
            channel = channels[model.split("/", 1)[-1]]
            request = request_for(str(messages[-1]["content"]))
            try:
                result = await asyncio.wait_for(
                    channel.generate(request), timeout=channel.config.attempt_timeout_s
                )
            except TimeoutError as err:
                raise litellm.Timeout(
                    message="no answer within the timeout", model=model, llm_provider=PROVIDER
                ) from err
            except ChannelError as err:
                raise litellm_error(err, model) from err
            response = ModelResponse()
            response.choices[0].message.content = f"image {result.sha256[:8]}"
            return response

    return BananaLLM()


def docs_router(order: Sequence[str], handler: Any) -> Any:
    """LiteLLM Router as its reliability docs recommend: one model group per channel, fallbacks
    from the first (cheapest) to the rest in order, retries, allowed fails and cooldowns."""
    import litellm
    from litellm import Router
    from litellm.types.router import RetryPolicy

    litellm.custom_provider_map = [{"provider": PROVIDER, "custom_handler": handler}]
    litellm.suppress_debug_info = True
    litellm.turn_off_message_logging = True
    return Router(
        model_list=[
            {"model_name": name, "litellm_params": {"model": f"{PROVIDER}/{name}", "timeout": 120}}
            for name in order
        ],
        fallbacks=[{order[0]: list(order[1:])}],
        retry_policy=RetryPolicy(
            ContentPolicyViolationErrorRetries=3,
            AuthenticationErrorRetries=0,
            BadRequestErrorRetries=1,
            TimeoutErrorRetries=2,
            RateLimitErrorRetries=3,
        ),
        **ROUTER_SETTINGS,
    )


def _router(scenario: Scenario, models: Mapping[str, ChannelModel]) -> Any:
    from litellm.redis.stores.router_cooldowns import RouterCooldownStore
    from litellm.router_utils.cooldown_cache import CooldownCache

    order = by_price(scenario)
    handler = provider(models, lambda item_id: ImageRequest(item_id=item_id, prompt="bench"))
    router = docs_router(order, handler)
    router._cooldowns = CooldownCache(
        store=RouterCooldownStore(VirtualCooldowns()),  # type: ignore[arg-type,unused-ignore]
        default_cooldown_time=ROUTER_SETTINGS["cooldown_time"],
        clock=lambda: time.time(),
    )
    return router, order[0]


async def _litellm(scenario: Scenario, clock: VirtualClock, ledger: Ledger) -> None:
    models = models_of(scenario, ledger, "litellm")
    router, first = _router(scenario, models)
    limit = sum(m.config.max_concurrency for m in models.values())

    async def one(request: ImageRequest) -> None:
        try:
            await router.acompletion(model=first, messages=[{"role": "user", "content": request.item_id}])
        except Exception:  # LiteLLM gave up on the item: it has no image
            return

    await _bounded_all(limit, requests_of(scenario), one)


def run_litellm(scenario: Scenario, *, real_cap_s: float | None = None) -> SystemRun | None:
    if scenario.items > MAX_ITEMS:
        return None
    ledger = Ledger()
    random.seed(scenario.seed)  # LiteLLM's shuffles and jitter draw from the global random module
    return _run("litellm", scenario, ledger, lambda clock: _litellm(scenario, clock, ledger), real_cap_s)
