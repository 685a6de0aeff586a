"""The realtime router: which channel an item tries next, or why it waits or gives up.

The objective, in one place: **every item by its deadline, for the least expected spend.**
Throughput is a means, never the goal. Every item has a deadline: its own (manifest), else the
operator's ``deadline``, else one derived from the task's ``execution_timeout`` (all three hard:
the item fails when it passes), else ``default_deadline_s`` (``DEFAULT_DEADLINE_S``, one hour
from the run's start) -- a soft planning horizon: the router plans to finish by it and waits for
cheaper channels only while that plan holds, but an item is never failed for passing it (it then
runs as fast as the channels allow). ``objective="fastest"`` is the named opposite: no waiting for
a cheaper channel, the first free channel in cost order.

The engine loop this is built for (single asyncio thread; no awaits happen inside a router
call, so every decision is atomic)::

    item = ItemProgress.for_request(request, deadline=clock.now() + 600)
    while True:
        action = router.next_action(item)
        if isinstance(action, GiveUp): record the failure (action.reason, action.detail); break
        if isinstance(action, Wait): sleep until action.until (wake early on a permit release
                                     if action.on_release); continue
        try:    result = await asyncio.wait_for(channel[action.channel].generate(request), action.timeout_s)
        except  TimeoutError:      router.report_timeout(item, action.permit)
        except  ChannelError as e: router.report_failure(item, action.permit, e)
        except  CancelledError:    router.report_cancelled(item, action.permit); raise
        else:   router.report_success(item, action.permit, cost_usd=result.cost_usd); break
        if action.alert_failovers: alert

Four estimates per channel drive every decision (``rank``, ``_estimate``):

* **price** -- expected spend per image: the configured price, corrected by what the channel
  really billed so far (``billed_ratio``: EWMA of billed / configured on successes, so a relay
  whose ``usage.cost`` is a third of the configured figure is ranked at a third); divided by
  the success rate ``p`` only where failed calls are billed (``billed_on_failure``). Where
  failures are free (Google bills only images) a 45 %-failing channel costs the same per image
  as a healthy one: its failures cost time, which the deadline plan accounts for, not money.
* **success rate** ``p = (s + a) / (s + f + a + b)``: exponentially decayed counts ``s``, ``f``
  from the backend, smoothed by a Beta(a, b) prior (a=4.5, b=0.5: a fresh channel is assumed
  90 % good with the weight of 5 calls). A half-open channel is ranked at the prior, and a
  probe that closes the breaker clears the outage's counts.
* **service interval** ``T(c)`` = seconds per call the channel can take: max(limiter interval,
  latency EWMA / max_concurrency), divided by the share of recent time retry hints left it open
  (``HintHistory``).
* **next available**: now if a permit can be had, else when the gate that blocks opens (retry
  hint, breaker open period, rate slot, the item's own backoff; a probe in flight or a full
  concurrency: about one call from now, and the wait also ends on a permit release).

Channels named in ``RouterConfig.priority`` come first, in that order; the rest by price, ties
(within ``tie_epsilon``, 2 %) to the shorter expected time per image (latency / p), then name.

Item lifecycle (``next_action``), in order:

1. the last attempt was ITEM_TERMINAL (400, blocked prompt, IMAGE_SAFETY) -> give up, no
   failover: the same model sits behind every channel;
2. more than ``max_no_image_retries`` (2) NO_IMAGE answers -> give up;
3. ``max_attempts_per_item`` reached, or a hard deadline passed, or closer than a typical call
   (the measured latency EWMA) on every candidate -> give up: a call that would more likely
   than not outlive the deadline is billed all the same;
4. a retry after a failure that was paid for (billed, or a timeout: maybe billed) with the
   run's retry budget spent -> give up (a retry after a free failure costs time, which the
   deadline bounds, and load, which the channel's limiter, breaker and throttle bound);
5. candidates = channels the item allows (``routing.eligibility``: an ``official_only`` item
   only official Google channels, a grounded one only channels carrying the Search tool),
   not disabled for the run and on which this item has not timed out (a silent channel is
   abandoned after ONE timeout); none -> give up;
6. the deadline plan (objective "cheapest", before the deadline), below;
7. otherwise (objective "fastest", past a soft deadline, or no plan fits): in rank order the
   first channel that gives a permit, skipping channels the budget cannot cover and channels
   this item is backing off from; none -> wait until the earliest ``retry_at`` (a concurrency
   block also wakes on a release), or give up when nothing can open before a hard deadline or
   the budget can never cover any channel. Such items line up (earliest deadline first): the
   k-th sleeps ``k / R`` longer, ``R`` the candidates' summed rate ``p / T(c)``, and wakes at
   once when the one ahead of it leaves the line.

After a RETRYABLE/NO_IMAGE failure the item avoids that channel for a full-jitter backoff
``U(0, min(retry_backoff_max_s, retry_backoff_base_s * 2**(k-1)))``, ``k`` = its failures there.

The deadline plan: the cheapest channel the item can still finish on, waiting for it if it is
blocked, as long as waiting still leaves time to finish on the next channel::

    L(c)      = deadline_latency_factor (2) * latency EWMA of c     (a p95-ish call time;
                before c's first answer the EWMA is min(default_latency_s (12 s, the seed's
                median call), prior_latency_timeout_fraction (0.25) * c's attempt timeout))
    start(c)  = now if c can give a permit now, else next-available(c) + ahead(c) * T(c) / p(c)
                (the queue moves at c's rate of images: the failures ahead are retried too)
    ahead(c)  = items already queued for c in front of this one (earliest deadline first,
                then arrival: a late newcomer never pushes an urgent item off c)
    need(c)   = learn(c) + max(deadline_margin_s, L of the fastest channel with p >= 0.9 when
                p(c) < reliable_success_rate (0.9) or c hangs): a try on a channel that fails
                often leaves room for the call that rescues it (and, on its last attempt but
                one, is no candidate: the rescue needs an attempt too)
    learn(c)  = L(c), or c's attempt timeout when c left a call unanswered within the last
                ``stats_half_life_s`` or two of its calls are overdue with no answer since
                ("c hangs"): a hung call is known only at its timeout
    fits(c)   = start(c) + need(c) <= deadline

In cost order: a fitting channel that is free now gets the attempt. A blocked channel is waited
for -- the item joins its queue and sleeps until ``min(start(c), latest start on c =
deadline - need(c), latest switch)`` -- where the latest switch is the last moment the NEXT
fitting channel could still be started and finish in time (``deadline - need(next) -
wait(next)``), moved earlier by ``ahead(c) / R``, ``R`` the summed rate ``p / T`` of the fitting
channels after ``c``: the items ahead on ``c`` would spill first if ``c`` stalls, so waiters reach
the fallback one by one instead of all at the last moment (never pushing an item off a channel
it still fits). A blocked channel cheaper than every fitting one is waited for the same way even
when the estimate says it will not make it: while the next fitting channel can still be started
later, spilling now would commit money on an estimate that the next answers may change (the
latency prior before a channel's first success) -- unless its queue at its configured rate
alone runs past the deadline: that rate is known, and an item so far back would only spill at
the last moment (without ``rpm`` the pace is latency / concurrency, the prior itself).
While the first success of a channel in the plan is in flight (the waited-for channel or a
fallback), waits also end when a channel they wait to hear from answers once, and leave out the
reservation: one real answer is worth more than the prior, and the first item to spill onto an
unmeasured fallback measures it for the others. When that moment
comes and ``c`` is still blocked, the item spills to the next channel -- unless only ``c``'s
spacing blocks it (a billed channel sends one call per ``T``, to hear each answer before paying
for the next), ``now + need(c) <= deadline`` and ``p(c) >= reliable_success_rate``: then it takes
a call of the window's unspent rate at once (``_try_urgent``). The same holds for a ``c`` that does
not fit by its spaced queue. Spacing buys knowledge, not capacity; a flaky channel keeps it (a
burst's fast failures would come back first and trip its breaker). When no channel fits,
the item falls back to rule 7 (best effort: whatever is open, cheapest first). Queue positions
spread wake-ups (the head also wakes on a release), so a freed slot costs a few router calls,
not one per waiting item. ``forget(item)`` drops a cancelled item's place.

Money: ``Attempt`` reserves the channel's price; the report settles it (billed cost, or the
price as "uncertain" after a timeout or cancellation, when the provider may still bill).
429s close the channel until ``now + retry_after`` (``default_retry_after_s`` without a hint);
a per-day quota benches it until the next midnight America/Los_Angeles from the wall clock
(``quota_day_length_s`` overrides the day for the time-compressed simulator).
"""

from __future__ import annotations

import bisect
import enum
import itertools
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from airflow_banana.exceptions import BananaError, ChannelError, ConfigurationError, ErrorClass
from airflow_banana.models import DEFAULT_DATA_POLICY, IMAGE_SIZES, ImageRequest
from airflow_banana.routing.availability import HintHistory
from airflow_banana.routing.breaker import BreakerConfig, BreakerState
from airflow_banana.routing.budget import RetryBudget, RetryBudgetConfig, SpendBudget
from airflow_banana.routing.clock import QUOTA_TIMEZONE, Clock, SystemClock, WallClock, next_daily_reset
from airflow_banana.routing.eligibility import describe as describe_needs
from airflow_banana.routing.eligibility import refusal
from airflow_banana.routing.failover import FailoverCounter
from airflow_banana.routing.limiter import LimitConfig
from airflow_banana.routing.silence import DEFAULT_FALSE_ALARM, CallTimes, cut_at
from airflow_banana.routing.state import (
    ChannelEvent,
    ChannelPolicy,
    ChannelSnapshot,
    ChannelStateBackend,
    Denial,
    DenialReason,
    InMemoryStateBackend,
    Outcome,
    Permit,
)
from airflow_banana.routing.terms import ChannelTerms, HasTerms, terms_of
from airflow_banana.routing.throttle import ThrottleConfig

_BACKOFF_CLASSES = (ErrorClass.RETRYABLE, ErrorClass.NO_IMAGE)
# About one call from now: a probe or a full channel frees up when a call returns.
_FREES_ON_RELEASE = (DenialReason.CONCURRENCY, DenialReason.PROBE_IN_FLIGHT)

# Items with no deadline of their own, of the operator or of the task plan to finish within this
# many seconds of the run's start (a soft horizon: never a reason to fail an item).
DEFAULT_DEADLINE_S = 3600.0
# The seed's figures for a Nano Banana Pro call: median 8-12 s, p95 ~24 s (2 x the median,
# hence deadline_latency_factor 2); the router's latency prior before a channel's first answer.
PRIOR_CALL_S = 12.0
# A billed/configured price ratio learned from successes (EWMA weight of the newest bill).
_BILLED_ALPHA = 0.2
# A success rate floor for rates of images (p / T): a channel whose estimate nears 0 still serves.
_MIN_RATE = 0.05
# The queue of items with no plan (rule 7): each wants the first slot any channel frees.
_FIRST_FREE = "(first free channel)"


class Objective(enum.StrEnum):
    """What the realtime lane optimises (see the module docstring)."""

    CHEAPEST = "cheapest"  # least expected spend that meets every deadline (the default)
    FASTEST = "fastest"  # every image as soon as the channels allow, cheapest free channel first


@dataclass(frozen=True)
class RouterConfig:
    """The router's settings (``RealtimeImageOperator(router_options={...})`` reaches them).

    The ones a user may want: ``objective`` ("cheapest" / "fastest", also the operator's own
    argument), ``default_deadline_s`` (the soft horizon of items with no deadline, 3600 s),
    ``max_attempts_per_item`` (10), ``deadline_margin_s`` (10 s kept free before a deadline),
    ``default_latency_s`` (the latency prior, 12 s), ``budget_usd`` and ``priority`` (set by the
    operator), ``quota_day_length_s`` (a compressed day, for the simulator). The rest are the
    mechanics' constants, documented where they are used (module docstring).
    """

    priority: tuple[str, ...] = ()
    tie_epsilon: float = 0.02
    prior_successes: float = 4.5
    prior_failures: float = 0.5
    default_latency_s: float = PRIOR_CALL_S
    # Before a channel's first answer its latency prior is min(default_latency_s, this x its
    # attempt timeout): a connection tuned for fast calls plans with fast calls from t = 0.
    prior_latency_timeout_fraction: float = 0.25
    max_no_image_retries: int = 2
    max_attempts_per_item: int = 10
    default_retry_after_s: float = 10.0
    retry_backoff_base_s: float = 1.0
    retry_backoff_max_s: float = 30.0
    release_poll_s: float = 1.0
    budget_usd: float | None = None
    timeouts_count_against_budget: bool = True
    retry_budget: RetryBudgetConfig = field(default_factory=RetryBudgetConfig)
    failover_alert_threshold: int = 3
    failover_window_s: float = 3600.0
    quota_timezone: str = QUOTA_TIMEZONE
    quota_day_length_s: float | None = None
    quota_day_origin_s: float = 0.0
    timeout_grace_s: float = 10.0  # a permit / probe lease outlives the attempt timeout by this
    stats_half_life_s: float = 300.0
    objective: Objective = Objective.CHEAPEST
    deadline_margin_s: float = 10.0
    deadline_latency_factor: float = 2.0  # latency EWMA x this ~ p95 of a call
    # An attempt on a channel succeeding less often than this must leave room for one call on
    # the fastest channel that does, in case it fails (the deadline-aware plan, see above).
    reliable_success_rate: float = 0.9
    default_deadline_s: float = DEFAULT_DEADLINE_S  # soft horizon for items without a deadline
    rate_guard_s: float = 0.5  # limiter window 60 s + this: no 429 from transit jitter at the cap
    # The provider's rate minute: ``rpm``/``ipm`` count per this many seconds (a compressed minute
    # for the time-compressed simulator, as ``quota_day_length_s`` is a compressed day).
    rate_minute_s: float = 60.0
    rate_cold_start_s: float = 5.0  # first window of a channel: sends count 5 s late (routing/limiter.py)
    # A silent call near a hard deadline is cut (and the item rescued) once a healthy channel
    # would be this silent at most this share of the time: the share of cuts that may pay twice
    # (routing/silence.py; one in ten thousand).
    silence_false_alarm: float = DEFAULT_FALSE_ALARM

    def __post_init__(self) -> None:
        if self.prior_successes <= 0 or self.prior_failures <= 0:
            raise ConfigurationError("router prior_successes and prior_failures must be positive")
        if self.tie_epsilon < 0 or self.max_no_image_retries < 0 or self.max_attempts_per_item < 1:
            raise ConfigurationError(f"invalid router config: {self}")
        if (
            min(
                self.release_poll_s,
                self.default_latency_s,
                self.retry_backoff_base_s,
                self.prior_latency_timeout_fraction,
            )
            <= 0
        ):
            raise ConfigurationError(f"router durations must be positive: {self}")
        if (
            self.deadline_margin_s < 0
            or self.deadline_latency_factor <= 0
            or not (0 < self.reliable_success_rate <= 1)
        ):
            raise ConfigurationError(
                "router deadline_margin_s, deadline_latency_factor or reliable_success_rate "
                f"out of range: {self}"
            )
        if not self.default_deadline_s > 0:
            raise ConfigurationError(f"router default_deadline_s must be positive: {self}")
        if not 0 < self.silence_false_alarm < 1:
            raise ConfigurationError(f"router silence_false_alarm must be in (0, 1): {self}")
        try:
            object.__setattr__(self, "objective", Objective(self.objective))
        except ValueError as err:
            raise ConfigurationError(
                f"router objective must be one of {[o.value for o in Objective]}, got {self.objective!r}"
            ) from err


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt of one item, as it goes into the item's metadata."""

    channel: str
    started_at: float
    ended_at: float
    error_class: ErrorClass | None  # None: success (unless cancelled)
    latency_s: float
    cost_usd: float
    billed: bool
    probe: bool = False
    status_code: int | None = None
    reason: str = ""
    retry_not_before: float | None = None
    cancelled: bool = False

    @property
    def ok(self) -> bool:
        return self.error_class is None and not self.cancelled


@dataclass
class ItemProgress:
    """The router's view of one item; the engine keeps it and passes it to every call."""

    item_id: str
    image_size: str = "1K"
    deadline: float | None = None  # on the router's clock
    soft_deadline: bool = False  # the default horizon: planned for, never a reason to give up
    attempts: list[AttemptRecord] = field(default_factory=list)
    queued: tuple[str, int] | None = field(default=None, repr=False)  # (channel, place) while waiting
    # What the item asks of its channels (routing.eligibility): only channels allowing it are candidates.
    data_policy: str = DEFAULT_DATA_POLICY
    grounding: str | None = None
    model: str | None = None  # and the other models it allows: a channel serves one model tier
    fallback_models: tuple[str, ...] = ()

    @classmethod
    def for_request(cls, request: ImageRequest, *, deadline: float | None = None) -> ItemProgress:
        return cls(
            item_id=request.item_id,
            image_size=request.image_size,
            deadline=deadline,
            data_policy=request.data_policy,
            grounding=request.grounding,
            model=request.model,
            fallback_models=request.fallback_models,
        )

    @property
    def succeeded(self) -> bool:
        return any(a.ok for a in self.attempts)

    @property
    def cost_usd(self) -> float:
        return sum(a.cost_usd for a in self.attempts)


@dataclass(frozen=True)
class Attempt:
    """Make one call on ``channel`` now, within ``timeout_s``, then report it with ``permit``."""

    channel: str
    permit: Permit
    price_usd: float
    timeout_s: float
    retry: bool
    failover: bool
    alert_failovers: bool  # failovers in the rolling window just exceeded the threshold


@dataclass(frozen=True)
class Wait:
    """Nothing can start now; ask again at ``until`` (or on a permit release if ``on_release``)."""

    until: float
    reason: str
    on_release: bool
    denials: tuple[Denial, ...]


class GiveUpReason(enum.StrEnum):
    ITEM_TERMINAL = "item_terminal"
    NO_IMAGE = "no_image"
    DEADLINE = "deadline"
    BUDGET = "budget"
    RETRY_BUDGET = "retry_budget"
    NO_CHANNEL = "no_channel"
    MAX_ATTEMPTS = "max_attempts"


@dataclass(frozen=True)
class GiveUp:
    """The item fails for good; ``detail`` is the human-readable why for the report."""

    reason: GiveUpReason
    detail: str
    error_class: ErrorClass | None = None


Decision = Attempt | Wait | GiveUp


@dataclass(frozen=True)
class RankedChannel:
    channel: str
    price_usd: float
    success_rate: float
    expected_cost_usd: float
    latency_s: float
    priority: int | None
    snapshot: ChannelSnapshot

    @property
    def available_at(self) -> float | None:
        return self.snapshot.available_at

    @property
    def blocked_by(self) -> DenialReason | None:
        return self.snapshot.blocked_by


@dataclass(frozen=True)
class _Open:
    price: float
    probe: bool


def policy_for(
    channel: ChannelTerms | HasTerms,
    config: RouterConfig,
    *,
    breaker: BreakerConfig | None = None,
    throttle: ThrottleConfig | None = None,
) -> ChannelPolicy:
    """A channel's backend policy from its connection settings (rpm/ipm/concurrency/timeout)."""
    channel = terms_of(channel)
    ttl = channel.attempt_timeout_s + config.timeout_grace_s
    rates = [r for r in (channel.rpm, channel.ipm) if r is not None]
    # Where failed calls are free (Google bills only images) riding out a 45 % storm is cheaper
    # than routing around it; a channel that bills failures trips at the stricter defaults.
    base = breaker or (BreakerConfig() if channel.billed_on_failure else BreakerConfig.tolerant())
    return ChannelPolicy(
        breaker=replace(base, probe_lease_s=ttl),
        limits=LimitConfig(
            rpm=channel.rpm,
            burst=1 if channel.billed_on_failure or not rates else math.ceil(min(rates)),
            ipm=channel.ipm,
            max_concurrency=channel.max_concurrency,
            guard_s=config.rate_guard_s,
            cold_start_s=config.rate_cold_start_s,
            minute_s=config.rate_minute_s,
        ),
        throttle=throttle or ThrottleConfig(),
        permit_ttl_s=ttl,
        stats_half_life_s=config.stats_half_life_s,
    )


class Router:
    """Pure decisions over a ``ChannelStateBackend``; see the module docstring."""

    def __init__(
        self,
        channels: Sequence[ChannelTerms | HasTerms],
        *,
        clock: Clock,
        rng: random.Random,
        backend: ChannelStateBackend,
        config: RouterConfig | None = None,
        wall_clock: WallClock | None = None,
        breaker: BreakerConfig | None = None,
        throttle: ThrottleConfig | None = None,
    ) -> None:
        if not channels:
            raise ConfigurationError("the router needs at least one channel")
        terms = [terms_of(c) for c in channels]
        names = [c.name for c in terms]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"channel names must be unique, got {names}")
        self.config = config or RouterConfig()
        unknown = [p for p in self.config.priority if p not in names]
        if unknown:
            raise ConfigurationError(f"priority names unknown channels {unknown}; channels are {names}")
        self.clock = clock
        self.wall_clock: WallClock = wall_clock or (clock if isinstance(clock, WallClock) else SystemClock())
        self.rng = rng
        self.backend = backend
        self.channels: dict[str, ChannelTerms] = {c.name: c for c in terms}
        self._policies: dict[str, ChannelPolicy] = {}
        for channel in terms:
            policy = policy_for(channel, self.config, breaker=breaker, throttle=throttle)
            self._policies[channel.name] = policy
            backend.register(channel.name, policy)
        self.started_at = clock.now()
        # Items waiting for a channel, earliest deadline first (EDF), then by place (arrival);
        # only the deadline-aware path queues.
        self._queues: dict[str, list[tuple[float, float]]] = {
            name: [] for name in (*self.channels, _FIRST_FREE)
        }
        self._places = itertools.count()
        self._queued_ids: dict[float, str] = {}  # place -> item id, for waking a queue's head
        self._wakeups: set[str] = set()
        # Items holding off on a latency prior until an answer measures it, and the channels they
        # wait to hear from (``_wake_measuring``).
        self._measuring: set[str] = set()
        self._unmeasured: set[str] = set()
        self.retry_budget = RetryBudget(self.config.retry_budget)
        self.spend = SpendBudget(self.config.budget_usd)
        self.failovers = FailoverCounter(
            threshold=self.config.failover_alert_threshold, window_s=self.config.failover_window_s
        )
        self._open: dict[str, _Open] = {}
        self._hints = {name: HintHistory(window_s=self.config.stats_half_life_s) for name in self.channels}
        self._billed_ratio = dict.fromkeys(self.channels, 1.0)
        self._billed_seen: set[str] = set()
        # When the latest call that produced an image on each channel started: a channel that
        # answered a call started after an item's timed-out one was not silent, only slow for it.
        self._answered_call_at: dict[str, float] = {}
        # When each channel last left a call unanswered (a timeout): plans on it allow for a hang.
        self._timed_out_at: dict[str, float] = {}
        # Calls in flight per channel (permit id -> start) and when each channel last answered
        # anything: a channel whose calls are overdue with no answer since has gone quiet.
        self._in_flight: dict[str, dict[str, float]] = {name: {} for name in self.channels}
        self._heard_at: dict[str, float] = {}
        self._call_times = {name: CallTimes() for name in self.channels}  # the spread, for cut_at
        # Calls given up on as silent, (start, end) per channel: their silence stays evidence
        # for the calls still out until the channel answers again (``silence_cut_at``).
        self._abandoned: dict[str, list[tuple[float, float]]] = {name: [] for name in self.channels}

    # ------------------------------------------------------------ views

    def price(self, channel: str, image_size: str) -> float:
        if image_size not in IMAGE_SIZES:
            raise ConfigurationError(f"unknown image size {image_size!r}; use one of {IMAGE_SIZES}")
        return self.channels[channel].prices[image_size]

    def rank(self, image_size: str, now: float | None = None) -> list[RankedChannel]:
        """Every channel in preference order, each with its availability."""
        now = self.clock.now() if now is None else now
        cfg = self.config
        priority = {name: i for i, name in enumerate(cfg.priority)}
        ranked = []
        for name in self.channels:
            snap = self.backend.snapshot(name, now)
            if snap.breaker is BreakerState.HALF_OPEN:
                # Its recent failures are the outage's and the probe is what will tell: ranked
                # by them, a cheap primary would sit last and get its probe only when every
                # other channel is busy (R14: back on it soon after recovery).
                rate = cfg.prior_successes / (cfg.prior_successes + cfg.prior_failures)
            else:
                rate = (snap.recent_successes + cfg.prior_successes) / (
                    snap.recent_successes + snap.recent_failures + cfg.prior_successes + cfg.prior_failures
                )
            price = self.price(name, image_size)
            expected = price * self._billed_ratio[name]
            if self.channels[name].billed_on_failure:
                expected /= rate  # every failed try is paid too
            latency = snap.latency_ewma_s if snap.latency_ewma_s is not None else self.prior_latency(name)
            ranked.append(RankedChannel(name, price, rate, expected, latency, priority.get(name), snap))

        def quicker(g: RankedChannel) -> tuple[float, str]:
            return (g.latency_s / g.success_rate, g.channel)

        fixed = sorted((r for r in ranked if r.priority is not None), key=lambda r: r.priority or 0)
        rest = sorted(
            (r for r in ranked if r.priority is None), key=lambda r: (r.expected_cost_usd, *quicker(r))
        )
        ordered = list(fixed)
        group: list[RankedChannel] = []
        for r in rest:
            if group and r.expected_cost_usd > group[0].expected_cost_usd * (1 + cfg.tie_epsilon) + 1e-12:
                ordered.extend(sorted(group, key=quicker))
                group = []
            group.append(r)
        ordered.extend(sorted(group, key=quicker))
        return ordered

    def billed_ratio(self, channel: str) -> float:
        """What ``channel`` really bills per image relative to its configured price (1.0 until known)."""
        return self._billed_ratio[channel]

    def prior_latency(self, channel: str) -> float:
        """The latency assumed for ``channel`` before it has answered once (see RouterConfig)."""
        timeout = self.channels[channel].attempt_timeout_s
        return min(self.config.default_latency_s, self.config.prior_latency_timeout_fraction * timeout)

    def states(self, now: float | None = None) -> dict[str, ChannelSnapshot]:
        """Snapshot of every channel, for progress lines and the run report."""
        now = self.clock.now() if now is None else now
        return {name: self.backend.snapshot(name, now) for name in self.channels}

    # ------------------------------------------------------------ decisions

    def next_action(self, item: ItemProgress, now: float | None = None) -> Decision:
        """What ``item`` does next: ``Attempt`` (permit taken), ``Wait`` or ``GiveUp``.

        When the item was first in a channel's queue and leaves it, the new first item is due
        to wake (``wakeups``): a queue moves at the channel's real pace, not at the pace each
        waiter estimated when it went to sleep.
        """
        entry = item.queued
        was_head = entry is not None and self._head_place(entry[0]) == entry[1]
        decision = self._decide(item, now)
        if entry is not None and was_head and (item.queued is None or item.queued[0] != entry[0]):
            self._wake_head(entry[0])
        return decision

    def wakeups(self) -> list[str]:
        """Items that should decide again now (a queue they head moved); drained by the call."""
        woken, self._wakeups = list(self._wakeups), set()
        return woken

    def _head_place(self, channel: str) -> float | None:
        queue = self._queues[channel]
        return queue[0][1] if queue else None

    def _wake_head(self, channel: str) -> None:
        head = self._head_place(channel)
        if head is not None:
            self._wakeups.add(self._queued_ids[head])

    def _decide(self, item: ItemProgress, now: float | None) -> Decision:
        now = self.clock.now() if now is None else now
        cfg = self.config
        if item.deadline is None:
            item.deadline = self.started_at + cfg.default_deadline_s
            item.soft_deadline = True
        previous_place = self._leave_queue(item)  # re-decided below; keeps its place if it waits again
        self._measuring.discard(item.item_id)
        attempts = [a for a in item.attempts if not a.cancelled]
        if any(a.ok for a in attempts):
            raise BananaError(f"item '{item.item_id}' already has an image; the engine must not ask again")
        last = attempts[-1] if attempts else None
        if last is not None and last.error_class is ErrorClass.ITEM_TERMINAL:
            return GiveUp(
                GiveUpReason.ITEM_TERMINAL,
                f"item '{item.item_id}': {last.reason} on channel '{last.channel}'; not failed over "
                "(the same model is behind every channel)",
                ErrorClass.ITEM_TERMINAL,
            )
        no_image = sum(1 for a in attempts if a.error_class is ErrorClass.NO_IMAGE)
        if no_image > cfg.max_no_image_retries:
            return GiveUp(
                GiveUpReason.NO_IMAGE,
                f"item '{item.item_id}': {no_image} answers without an image "
                f"(limit {cfg.max_no_image_retries} retries); last: {last.reason if last else ''}",
                ErrorClass.NO_IMAGE,
            )
        if len(attempts) >= cfg.max_attempts_per_item:
            return GiveUp(
                GiveUpReason.MAX_ATTEMPTS,
                f"item '{item.item_id}': {len(attempts)} attempts made, the per-item limit; "
                f"last: {last.error_class if last else ''} {last.reason if last else ''}",
                last.error_class if last else None,
            )
        hard_deadline = self._hard_deadline(item)
        if hard_deadline is not None and now >= hard_deadline:
            return GiveUp(
                GiveUpReason.DEADLINE,
                f"item '{item.item_id}': deadline passed after {len(attempts)} attempts",
                last.error_class if last else None,
            )
        # The budget bounds what a storm of retries can cost: a retry draws on it only when the
        # failure before it was paid for, or may have been (a timeout). After a free failure
        # (a 503 or 429 on Google) a retry costs time, which the deadline bounds, and load, which
        # the channel's limiter, breaker and throttle bound; counting it gave up on items of a
        # run whose cheap channel failed more than half its calls, with hours of slack left.
        retry = bool(attempts)
        budgeted = last is not None and (last.billed or last.error_class is ErrorClass.TIMEOUT)
        if budgeted and not self.retry_budget.can_retry():
            budget = self.retry_budget
            return GiveUp(
                GiveUpReason.RETRY_BUDGET,
                f"item '{item.item_id}': run retry budget spent ({budget.retries} retries for "
                f"{budget.first_attempts} first attempts)",
                last.error_class if last else None,
            )

        ranked = self._allowed_for(item, self.rank(item.image_size, now))
        if not ranked:
            return GiveUp(
                GiveUpReason.NO_CHANNEL,
                f"item '{item.item_id}': no channel may carry it ({describe_needs(item)}); not sent anywhere",
                ErrorClass.CHANNEL_FATAL,
            )
        live = [r for r in ranked if not r.snapshot.disabled]
        if not live:
            reasons = "; ".join(f"{r.channel}: {r.snapshot.disabled_reason}" for r in ranked)
            return GiveUp(
                GiveUpReason.NO_CHANNEL,
                f"item '{item.item_id}': every channel is disabled ({reasons})",
                ErrorClass.CHANNEL_FATAL,
            )
        timed_out = {a.channel for a in attempts if self._silent_for(a)}
        candidates = [r for r in live if r.channel not in timed_out]
        if not candidates:
            return GiveUp(
                GiveUpReason.NO_CHANNEL,
                f"item '{item.item_id}': timed out on every usable channel ({sorted(timed_out)})",
                ErrorClass.TIMEOUT,
            )
        if hard_deadline is not None:
            # A call more likely than not to outlive the deadline is not started: the provider
            # bills an image it finishes after we stopped waiting, and the item fails anyway.
            # Judged on measured calls only: before a channel's first answer its latency is the
            # prior, a guess that must not turn away a channel answering in milliseconds.
            candidates = [
                r
                for r in candidates
                if r.snapshot.latency_ewma_s is None or now + r.latency_s <= hard_deadline
            ]
            if not candidates:
                return GiveUp(
                    GiveUpReason.DEADLINE,
                    f"item '{item.item_id}': {hard_deadline - now:.1f}s to the deadline, less than "
                    f"a typical call on any usable channel; not sent ({len(attempts)} attempts made)",
                    last.error_class if last else None,
                )

        if cfg.objective is Objective.CHEAPEST and item.deadline is not None and now < item.deadline:
            planned = self._deadline_plan(
                item, candidates, now, previous_place, retry=retry, budgeted=budgeted, last=last
            )
            if planned is not None:
                return planned
        denials: list[Denial] = []
        for ranked_channel in candidates:
            result = self._try(item, ranked_channel, now)
            if isinstance(result, Permit):
                return self._dispatch(
                    item, ranked_channel, result, now, retry=retry, budgeted=budgeted, last=last
                )
            denials.append(result)
        return self._wait_or_give_up(item, candidates, denials, now, last, previous_place)

    def _silent_for(self, attempt: AttemptRecord) -> bool:
        """The attempt timed out and its channel has answered no call started since (R6).

        A silent channel is abandoned by the item after one timeout. A channel that went on
        making images for calls started after this one is answering: the hang was one call's
        tail, and the item may go back to it when the plan says it is still the cheapest.
        """
        if attempt.error_class is not ErrorClass.TIMEOUT:
            return False
        return self._answered_call_at.get(attempt.channel, -math.inf) <= attempt.started_at

    def _gone_quiet(self, ranked: RankedChannel, now: float) -> bool:
        """Two calls on the channel are overdue (each past a p95-ish call plus ``deadline_margin_s``)
        and nothing has come back since the first started: it has likely stopped answering
        (FAULTS R6, seen long before a timeout). One overdue call is a slow call one time in
        twenty; two are not.

        Its calls in flight are left to their timeout (cutting one that is only slow would pay
        twice); ``finish_need`` plans new calls there as calls that may hang.
        """
        heard = self._heard_at.get(ranked.channel, -math.inf)
        # past a p95-ish call and the plan's margin: a busy event loop delays answers of 10 ms
        # calls by more than their p95, and that is no silence
        overdue = now - self.expected_latency(ranked) - self.config.deadline_margin_s
        late = sum(1 for t in self._in_flight[ranked.channel].values() if heard < t < overdue)
        return late >= 2

    def silence_cut_at(self, item: ItemProgress, permit: Permit, now: float | None = None) -> float | None:
        """When the engine should abandon this attempt as hung if its channel answers nothing
        first (``now`` or earlier: cut it now; ``inf``: not on the calls out now, ask again when
        the channel is sent another); None: let it run to its timeout.

        Only where the timeout would leave no time to rescue the item before its hard deadline
        (a call on the fastest other candidate, p95-ish, plus ``deadline_margin_s``): elsewhere
        the timeout itself still lets a rescue in, and waiting for it cannot pay twice. Then the
        cut comes when the channel's calls sent since it last answered (this one included) are
        silent beyond ``silence_false_alarm`` for a healthy channel (``routing.silence``), and
        not later than that rescue's latest start (after it, the call is the item's best chance).
        """
        now = self.clock.now() if now is None else now
        deadline = self._hard_deadline(item)
        if deadline is None or permit.permit_id not in self._open:
            return None
        channel = permit.channel
        ranked = self.rank(item.image_size, now)
        rescues = [
            self.expected_latency(r)
            for r in self._allowed_for(item, ranked)
            if r.channel != channel and not r.snapshot.disabled
        ]
        if not rescues:
            return None  # nowhere to rescue it: the call is the item's only chance
        latest = deadline - self.config.deadline_margin_s - min(rescues)
        if permit.acquired_at + self.channels[channel].attempt_timeout_s <= latest:
            return None
        if latest < now:
            return None  # too late for a rescue: the call is the item's best chance
        heard = self._heard_at.get(channel, -math.inf)
        silent = [t for pid, t in self._in_flight[channel].items() if t > heard and pid != permit.permit_id]
        gone = [(s, e) for s, e in self._abandoned[channel] if s > heard]
        cut = cut_at(
            [permit.acquired_at, *silent],
            self._call_times[channel],
            self.prior_latency(channel),
            now=now,
            latest=latest,
            false_alarm=self.config.silence_false_alarm,
            abandoned=[e - s for s, e in gone],
        )
        return math.inf if cut is None else cut  # not silent enough yet: ask again at the next send

    def _allowed_for(self, item: ItemProgress, ranked: list[RankedChannel]) -> list[RankedChannel]:
        """The per-item candidate filter (``routing.eligibility``): a filter, never a ranking rule.

        An ``official_only`` item never reaches a relay, a grounded one never a channel without
        the Search tool -- whatever the relay's price or the official channels' health.
        """
        return [r for r in ranked if refusal(self.channels[r.channel], item) is None]

    @staticmethod
    def _hard_deadline(item: ItemProgress) -> float | None:
        """The deadline past which the item fails (None: none, or only the soft default horizon)."""
        return None if item.soft_deadline else item.deadline

    # ------------------------------------------------------------ deadline-aware spill

    def expected_latency(self, ranked: RankedChannel) -> float:
        """A p95-ish call time on the channel: EWMA x factor, never above its attempt timeout."""
        timeout = self.channels[ranked.channel].attempt_timeout_s
        return min(ranked.latency_s * self.config.deadline_latency_factor, timeout)

    def service_interval(self, ranked: RankedChannel, now: float) -> float:
        """Seconds per call the channel really takes: its limits (rate or concurrency bound),
        stretched by the share of time and answers lost to retry hints (``HintHistory``)."""
        concurrency = self._policies[ranked.channel].limits.max_concurrency
        paced = ranked.latency_s / concurrency / self._hints[ranked.channel].open_share(now)
        return max(self._rate_interval(ranked, now), paced)

    def _image_rate(self, channels: Sequence[RankedChannel], now: float) -> float:
        """Images per second ``channels`` deliver together: the sum of ``p / T(c)``."""
        return sum(
            max(r.success_rate, _MIN_RATE) / max(self.service_interval(r, now), 1e-9) for r in channels
        )

    def _rate_interval(self, ranked: RankedChannel, now: float) -> float:
        """Seconds per call the channel's configured rate allows, stretched by its retry hints:
        the part of ``service_interval`` that does not rest on its latency (0 without a rate)."""
        share = self._hints[ranked.channel].open_share(now)
        return self._policies[ranked.channel].limits.interval_s() / share

    def finish_need(self, ranked: RankedChannel, candidates: Sequence[RankedChannel], now: float) -> float:
        """Seconds an attempt started on ``ranked`` needs before the deadline.

        The time until the item knows how the attempt went, plus ``deadline_margin_s``. That
        time is a p95-ish call -- or, on a channel that hangs (it left a call unanswered within
        the last ``stats_half_life_s``, or has gone quiet now: ``_gone_quiet``), its attempt
        timeout: a hung call is only known at the timeout, and cutting it earlier could abandon
        a slow call that still bills (paid twice). So a hanging channel still takes the items
        that have the time (a hang is free), and the others go where they can be rescued.
        Where the attempt may well fail (success rate below ``reliable_success_rate``, or
        hangs) the margin is at least one p95-ish call on the fastest reliable alternative,
        so an item whose try fails can still be rescued in time. Two p95s in a row already hold
        more slack than the margin (both calls running to their p95 is rare), so the larger of
        the margin and that rescue call is added.
        """
        cfg = self.config
        margin = cfg.deadline_margin_s
        learn = self.expected_latency(ranked)
        timed_out_at = self._timed_out_at.get(ranked.channel, -math.inf)
        hangs = now - timed_out_at < cfg.stats_half_life_s or self._gone_quiet(ranked, now)
        if hangs:
            learn = max(learn, self.channels[ranked.channel].attempt_timeout_s)
        if hangs or ranked.success_rate < cfg.reliable_success_rate:
            rescues = [
                self.expected_latency(r)
                for r in candidates
                if r.channel != ranked.channel and r.success_rate >= cfg.reliable_success_rate
            ]
            margin = max(margin, min(rescues, default=0.0))
        return learn + margin

    def queued(self, channel: str) -> int:
        """How many items wait in ``channel``'s queue (deadline-aware path)."""
        return len(self._queues[channel])

    def forget(self, item: ItemProgress) -> None:
        """The engine stopped ``item`` (cancelled, or finished elsewhere): drop its queue place."""
        entry = item.queued
        was_head = entry is not None and self._head_place(entry[0]) == entry[1]
        self._leave_queue(item)
        self._measuring.discard(item.item_id)
        if entry is not None:
            self._queued_ids.pop(entry[1], None)
            if was_head:
                self._wake_head(entry[0])

    @staticmethod
    def _queue_key(item: ItemProgress, place: float) -> tuple[float, float]:
        return (math.inf if item.deadline is None else item.deadline, place)

    def _leave_queue(self, item: ItemProgress) -> tuple[str, int] | None:
        entry, item.queued = item.queued, None
        if entry is not None:
            queue = self._queues[entry[0]]
            key = self._queue_key(item, entry[1])
            i = bisect.bisect_left(queue, key)
            if i < len(queue) and queue[i] == key:
                del queue[i]
            self._queued_ids.pop(entry[1], None)
        return entry

    def _join_queue(self, item: ItemProgress, channel: str, previous: tuple[str, int] | None) -> int:
        """Queue ``item`` for ``channel``; an item re-waiting for the same channel keeps its place."""
        place = previous[1] if previous is not None and previous[0] == channel else next(self._places)
        bisect.insort(self._queues[channel], self._queue_key(item, place))
        item.queued = (channel, place)
        self._queued_ids[place] = item.item_id
        return place

    def _estimate(
        self, item: ItemProgress, ranked: RankedChannel, now: float, previous: tuple[str, int] | None
    ) -> tuple[float, int, Denial | None, float] | None:
        """(expected start, items ahead, blocking denial, when it unblocks) or None if unusable."""
        denial = self._item_denial(item, ranked, now)
        if denial is not None and denial.reason is DenialReason.UNAFFORDABLE:
            return None
        snap = ranked.snapshot
        if denial is None and snap.blocked_by is None:
            return now, 0, None, now  # free now: work-conserving, whoever is awake takes it
        interval = self.service_interval(ranked, now)
        if snap.blocked_by is not None:
            at = snap.available_at
            if at is not None and math.isinf(at):
                return None
            if snap.blocked_by in _FREES_ON_RELEASE:
                at = None  # a call in flight returns in about one call (a probe's lease is far longer)
            denial = denial or Denial(ranked.channel, snap.blocked_by, at, "channel blocked")
        assert denial is not None  # free-now returned above
        retry_ats = [d for d in (denial.retry_at, snap.available_at) if d is not None]
        base = max(retry_ats or [now + interval])
        if snap.blocked_by in _FREES_ON_RELEASE:
            # a slot frees every T(c) on average; the probe answers within about one call
            frees = ranked.latency_s if snap.blocked_by is DenialReason.PROBE_IN_FLIGHT else interval
            base = max([now + frees, *(d for d in (denial.retry_at,) if d is not None)])
        queue = self._queues[ranked.channel]
        # EDF: everyone with an earlier deadline (or the same deadline and an earlier place) is
        # ahead; a newcomer goes behind every item with its deadline or an earlier one.
        mine = previous[1] if previous is not None and previous[0] == ranked.channel else math.inf
        ahead = bisect.bisect_left(queue, self._queue_key(item, mine))
        # The queue moves at the channel's rate of images, p / T(c): an item ahead that fails
        # re-queues behind this one, but its retry still takes a slot before the queue is through,
        # so a queue longer than the channel can serve by the deadline spills its tail now, not
        # one failure at a time near the end.
        return base + ahead * interval / max(ranked.success_rate, _MIN_RATE), ahead, denial, base

    def _deadline_plan(
        self,
        item: ItemProgress,
        candidates: list[RankedChannel],
        now: float,
        previous: tuple[str, int] | None,
        *,
        retry: bool,
        budgeted: bool,
        last: AttemptRecord | None,
    ) -> Decision | None:
        """The cheapest channel that still meets the deadline, now or after a safe wait; None: none."""
        cfg = self.config
        deadline = item.deadline
        assert deadline is not None
        need = {r.channel: self.finish_need(r, candidates, now) for r in candidates}
        # Attempts are spent like time: a try on a channel that fails often must leave one
        # attempt for the call that rescues it.
        attempts_left = cfg.max_attempts_per_item - sum(1 for a in item.attempts if not a.cancelled)
        # (channel, start, ahead, blocking denial, fits, worth waiting for) per usable candidate
        plans: list[tuple[RankedChannel, float, int, Denial | None, bool, bool]] = []
        for ranked in candidates:
            estimate = self._estimate(item, ranked, now, previous)
            if estimate is None:
                continue
            if attempts_left < 2 and ranked.success_rate < cfg.reliable_success_rate:
                continue
            start, ahead, denial, base = estimate
            fits = start + need[ranked.channel] <= deadline
            # Not fitting by the estimate, but the estimate rests on the latency prior (no answer
            # yet): worth waiting for unless it opens too late for a call even with an empty
            # queue, or its queue at the channel's rate limit alone runs past the deadline (the
            # rate is configured, only the latency is unknown: an item that far back would only
            # spill at the last moment, onto fallbacks in whatever state they are in by then).
            hopeful = (
                denial is not None
                and ranked.snapshot.latency_ewma_s is None
                and base + need[ranked.channel] <= deadline
                and base + ahead * self._rate_interval(ranked, now) + cfg.deadline_margin_s <= deadline
            )
            plans.append((ranked, start, ahead, denial, fits, fits or hopeful))
        if not any(p[4] for p in plans):
            return None
        # Within a tie group (same expected cost) a channel free now beats waiting for another.
        group, groups, first_cost = -1, [], 0.0
        for ranked, *_ in plans:
            if (
                group < 0
                or ranked.priority is not None
                or ranked.expected_cost_usd > first_cost * (1 + cfg.tie_epsilon) + 1e-12
            ):
                group, first_cost = group + 1, ranked.expected_cost_usd
            groups.append(group)
        order = sorted(range(len(plans)), key=lambda k: (groups[k], plans[k][3] is not None))
        plans = [plans[k] for k in order]
        denials: list[Denial] = []
        for i, (ranked, start, ahead, denial, fits, worth_waiting) in enumerate(plans):
            fallbacks = [p for p in plans[i + 1 :] if p[4]]
            if not fits:
                urgent = self._try_urgent(item, ranked, denial, now, deadline - need[ranked.channel])
                if urgent is not None:
                    return self._dispatch(
                        item, ranked, urgent, now, retry=retry, budgeted=budgeted, last=last
                    )
                if not (worth_waiting and fallbacks):
                    continue  # too late here for sure, or nothing to fall back on: no reason to wait
            if denial is None:
                result = self._try(item, ranked, now)
                if isinstance(result, Permit):
                    return self._dispatch(
                        item, ranked, result, now, retry=retry, budgeted=budgeted, last=last
                    )
                denials.append(result)
                if result.retry_at is None or result.reason is DenialReason.UNAFFORDABLE:
                    continue  # money, or lost the race for the last slot: the next channel
                start = max(start, result.retry_at)
                denial = result
            latest_start = deadline - need[ranked.channel] if fits else math.inf
            latest_switch = math.inf
            # A channel's first success is its first real latency; until then its estimates are
            # the prior's. While such a measurement is in flight (on this channel or a fallback),
            # wait for it -- waking when it comes (``_wake_measuring``) -- instead of spilling on
            # the prior.
            unmeasured = [
                r.channel
                for r in (ranked, *(f[0] for f in fallbacks))
                if r.snapshot.latency_ewma_s is None and r.snapshot.in_flight > 0
            ]
            measuring = bool(unmeasured)
            if fallbacks:
                nxt, nxt_start, *_ = fallbacks[0]
                plain_switch = deadline - need[nxt.channel] - (nxt_start - now)
                latest_switch = plain_switch
                if not measuring:
                    # Fleet view: the ``ahead`` items queued before this one on ``ranked`` spill
                    # before it if ``ranked`` stalls, onto the fitting fallbacks at their success
                    # rate; reserve that load so spills start early and spread out instead of
                    # everyone switching at the same latest moment.
                    spill_rate = self._image_rate([r for r, *_ in fallbacks], now)
                    latest_switch = plain_switch - ahead / spill_rate
                    if fits and min(start, latest_start, latest_switch) <= now < plain_switch:
                        # The fallbacks could not absorb everyone ahead anyway and this item still
                        # fits here: the reservation must not push it off a channel that fits.
                        latest_switch = plain_switch
            until = min(start, latest_start, latest_switch)
            if until <= now:
                urgent = self._try_urgent(item, ranked, denial, now, deadline - need[ranked.channel])
                if urgent is not None:
                    return self._dispatch(
                        item, ranked, urgent, now, retry=retry, budgeted=budgeted, last=last
                    )
                denials.append(denial)
                continue  # waiting would risk the deadline: spill to the next channel
            self._join_queue(item, ranked.channel, previous)
            on_release = ahead == 0 and denial.reason in _FREES_ON_RELEASE
            if measuring:
                self._measuring.add(item.item_id)
                self._unmeasured.update(unmeasured)
            why = (
                f"waiting {until - now:.1f}s for cheaper '{ranked.channel}' ({denial.reason}, "
                f"{ahead} ahead); deadline in {deadline - now:.0f}s still met"
            )
            return Wait(until, why, on_release, (*denials, denial))
        return None

    def _try_urgent(
        self,
        item: ItemProgress,
        ranked: RankedChannel,
        denial: Denial | None,
        now: float,
        latest_start: float,
    ) -> Permit | None:
        """A permit from the rest of the window's rate when only the channel's spacing blocks it.

        Spacing a channel's calls buys knowledge (each answer before the next call), not capacity:
        when waiting for the spaced slot would send the item to a dearer channel, or past its
        deadline, and starting now still finishes in time, it takes the burst. Not on a channel
        failing more than ``reliable_success_rate`` allows: its 503s answer in a second, its images
        in ten, so a burst's failures come back first and trip its breaker on arrival order (the
        virtual bench's s11-73: a $0.05 relay at 22 % 503, 311 -> 525 items late when it burst)."""
        if denial is None or denial.reason is not DenialReason.RATE_LIMIT or now > latest_start:
            return None
        if ranked.success_rate < self.config.reliable_success_rate:
            return None
        result = self._try(item, ranked, now, urgent=True)
        return result if isinstance(result, Permit) else None

    def _item_denial(self, item: ItemProgress, ranked: RankedChannel, now: float) -> Denial | None:
        """This item's own reasons not to use the channel now (budget, its backoff), or None."""
        price = ranked.price_usd
        if not self.spend.can_afford(price):
            spend = self.spend
            settled = spend.spent_usd + spend.uncertain_usd
            fits_later = spend.limit_usd is None or settled + price <= spend.limit_usd
            return Denial(
                ranked.channel,
                DenialReason.UNAFFORDABLE,
                None if fits_later else math.inf,
                f"${price:.4f} does not fit the remaining budget ${spend.remaining_usd or 0.0:.4f}",
            )
        not_before = max(
            (a.retry_not_before for a in item.attempts if a.channel == ranked.channel and a.retry_not_before),
            default=None,
        )
        if not_before is not None and not_before > now:
            return Denial(
                ranked.channel, DenialReason.ITEM_BACKOFF, not_before, "backing off after a failure"
            )
        return None

    def _try(
        self, item: ItemProgress, ranked: RankedChannel, now: float, *, urgent: bool = False
    ) -> Permit | Denial:
        denial = self._item_denial(item, ranked, now)
        if denial is not None:
            return denial
        return self.backend.try_acquire(ranked.channel, now, urgent=urgent)

    def _dispatch(
        self,
        item: ItemProgress,
        ranked: RankedChannel,
        permit: Permit,
        now: float,
        *,
        retry: bool,
        budgeted: bool,
        last: AttemptRecord | None,
    ) -> Attempt:
        self.spend.reserve(permit.permit_id, ranked.price_usd)  # affordability checked in _try
        # a half-open probe is the breaker measuring the channel, one call per open period, not a
        # retry storm: it does not draw on the run's retry budget
        if not retry:
            self.retry_budget.record(retry=False)
        elif budgeted and not permit.probe:
            self.retry_budget.record(retry=True)
        self._open[permit.permit_id] = _Open(ranked.price_usd, permit.probe)
        self._in_flight[ranked.channel][permit.permit_id] = permit.acquired_at
        timeout = self.channels[ranked.channel].attempt_timeout_s
        hard_deadline = self._hard_deadline(item)
        if hard_deadline is not None:
            timeout = min(timeout, hard_deadline - now)
        failover = last is not None and not last.ok and last.channel != ranked.channel
        alert = self.failovers.record(now) if failover else False
        return Attempt(ranked.channel, permit, ranked.price_usd, timeout, retry, failover, alert)

    def _wait_or_give_up(
        self,
        item: ItemProgress,
        candidates: Sequence[RankedChannel],
        denials: list[Denial],
        now: float,
        last: AttemptRecord | None,
        previous: tuple[str, int] | None,
    ) -> Wait | GiveUp:
        summary = "; ".join(
            f"{d.channel}: {d.reason}" + ("" if d.retry_at is None else f" until +{d.retry_at - now:.1f}s")
            for d in denials
        )
        last_class = last.error_class if last else None
        on_release = any(d.retry_at is None for d in denials)
        finite = [d.retry_at for d in denials if d.retry_at is not None and not math.isinf(d.retry_at)]
        if not finite and not on_release:
            return GiveUp(
                GiveUpReason.BUDGET,
                f"item '{item.item_id}': no channel fits the task budget ({summary})",
                last_class,
            )
        until = min(finite) if finite else now + self.config.release_poll_s
        hard_deadline = self._hard_deadline(item)
        if hard_deadline is not None and not on_release and until >= hard_deadline:
            return GiveUp(
                GiveUpReason.DEADLINE,
                f"item '{item.item_id}': no channel is available before the deadline ({summary})",
                last_class,
            )
        if on_release:
            until = min(until, now + self.config.release_poll_s)
        # Every item waiting here wants the first slot any channel frees, and one item takes
        # it. Only the first in line wakes for it; the k-th sleeps until k more images should
        # have come at the candidates' summed rate p / T(c), and is woken sooner when the item
        # ahead of it leaves the line. Waking all of them for every slot made a backlog of N
        # items cost N decisions per slot (s11-134: 2,142 items, 354,000 decisions).
        place = self._join_queue(item, _FIRST_FREE, previous)
        ahead = bisect.bisect_left(self._queues[_FIRST_FREE], self._queue_key(item, place))
        if ahead:
            until += ahead / self._image_rate(candidates, now)
            on_release = False
        if hard_deadline is not None:
            until = min(until, hard_deadline)
        return Wait(until, summary, on_release, tuple(denials))

    # ------------------------------------------------------------ reports

    def _close(
        self,
        item: ItemProgress,
        permit: Permit,
        outcome: Outcome,
        now: float,
        *,
        billed: bool,
        uncertain: float = 0.0,
        status_code: int | None = None,
        retry_not_before: float | None = None,
    ) -> tuple[ChannelEvent, ...]:
        opened = self._open.pop(permit.permit_id, None)
        if opened is None:
            return ()  # reported before: one attempt is recorded once
        self._in_flight[permit.channel].pop(permit.permit_id, None)
        if not outcome.cancelled and outcome.error_class is not ErrorClass.TIMEOUT:
            self._heard_at[permit.channel] = now
            self._abandoned[permit.channel].clear()  # every call given up on started before this answer
        events = self.backend.record(permit, outcome, now)
        self._wake_head(permit.channel)  # a slot came back, or the channel's state changed
        if self._measuring:
            self._wake_measuring(now)
        if outcome.error_class is ErrorClass.RATE_LIMITED and outcome.closed_until is not None:
            self._hints[permit.channel].record(now, outcome.closed_until)
        self.spend.settle(permit.permit_id, spent=outcome.cost_usd, uncertain=uncertain)
        item.attempts.append(
            AttemptRecord(
                channel=permit.channel,
                started_at=permit.acquired_at,
                ended_at=now,
                error_class=outcome.error_class,
                latency_s=outcome.latency_s,
                cost_usd=outcome.cost_usd,
                billed=billed,
                probe=opened.probe,
                status_code=status_code,
                reason=outcome.detail,
                retry_not_before=retry_not_before,
                cancelled=outcome.cancelled,
            )
        )
        return events

    def _wake_measuring(self, now: float) -> None:
        """Items holding off on the latency prior decide again once a channel they were waiting
        to hear from has answered (here or, on shared state, in another worker): one wake-up
        per measurement, not one per release (on s11-134, 2,142 items woken at every release
        until the first images came were about 70,000 decisions)."""
        answered = {c for c in self._unmeasured if self.backend.snapshot(c, now).latency_ewma_s is not None}
        if answered:
            self._unmeasured -= answered
            self._wakeups |= self._measuring
            self._measuring.clear()

    def _price_of(self, permit: Permit) -> float:
        opened = self._open.get(permit.permit_id)
        return opened.price if opened else 0.0

    def report_success(
        self,
        item: ItemProgress,
        permit: Permit,
        *,
        cost_usd: float | None = None,
        latency_s: float | None = None,
        now: float | None = None,
    ) -> tuple[ChannelEvent, ...]:
        """The attempt produced an image; ``cost_usd`` defaults to the channel's price."""
        now = self.clock.now() if now is None else now
        if permit.permit_id not in self._open:
            return ()
        price = self._price_of(permit)
        cost = price if cost_usd is None else cost_usd
        if cost_usd is not None and price > 0:
            self._learn_bill(permit.channel, cost_usd / price)
        latency = now - permit.acquired_at if latency_s is None else latency_s
        self._call_times[permit.channel].observe(latency)
        answered = self._answered_call_at.get(permit.channel, -math.inf)
        self._answered_call_at[permit.channel] = max(answered, permit.acquired_at)
        return self._close(item, permit, Outcome(None, latency, cost), now, billed=cost > 0)

    def _learn_bill(self, channel: str, ratio: float) -> None:
        """Rank by what the channel bills: the first bill sets the ratio, later ones move it."""
        if channel in self._billed_seen:
            ratio = _BILLED_ALPHA * ratio + (1 - _BILLED_ALPHA) * self._billed_ratio[channel]
        self._billed_seen.add(channel)
        self._billed_ratio[channel] = ratio

    def report_failure(
        self,
        item: ItemProgress,
        permit: Permit,
        error: ChannelError,
        *,
        latency_s: float | None = None,
        now: float | None = None,
    ) -> tuple[ChannelEvent, ...]:
        """The attempt failed with ``error``; its ``error_class`` decides everything."""
        now = self.clock.now() if now is None else now
        if permit.permit_id not in self._open:
            return ()  # reported before
        cfg = self.config
        error_class = error.error_class
        price = self._price_of(permit)
        latency = now - permit.acquired_at if latency_s is None else latency_s
        closed_until: float | None = None
        if error_class is ErrorClass.RATE_LIMITED:
            delay = cfg.default_retry_after_s if error.retry_after is None else max(0.0, error.retry_after)
            closed_until = now + delay
        elif error_class is ErrorClass.QUOTA_EXHAUSTED:
            wall = self.wall_clock.wall()
            reset = next_daily_reset(
                wall,
                timezone=cfg.quota_timezone,
                day_length_s=cfg.quota_day_length_s,
                day_origin_s=cfg.quota_day_origin_s,
            )
            closed_until = now + max(reset - wall, error.retry_after or 0.0)
        retry_not_before = None
        if error_class in _BACKOFF_CLASSES:
            here = [a for a in item.attempts if a.channel == permit.channel]
            k = 1 + sum(1 for a in here if a.error_class in _BACKOFF_CLASSES)
            cap = min(cfg.retry_backoff_max_s, cfg.retry_backoff_base_s * 2.0 ** min(k - 1, 32))
            retry_not_before = now + self.rng.uniform(0.0, cap)
        cost = price if error.billed else 0.0
        uncertain = 0.0
        if error_class is ErrorClass.TIMEOUT and not error.billed and cfg.timeouts_count_against_budget:
            uncertain = price
        outcome = Outcome(error_class, latency, cost, closed_until, detail=error.reason)
        return self._close(
            item,
            permit,
            outcome,
            now,
            billed=error.billed,
            uncertain=uncertain,
            status_code=error.status_code,
            retry_not_before=retry_not_before,
        )

    def report_timeout(
        self, item: ItemProgress, permit: Permit, *, now: float | None = None
    ) -> tuple[ChannelEvent, ...]:
        """The attempt got no answer within its timeout (the engine abandoned it)."""
        now = self.clock.now() if now is None else now
        if permit.permit_id in self._open:
            self._timed_out_at[permit.channel] = now
            self._abandoned[permit.channel].append((permit.acquired_at, now))
        error = ChannelError(
            f"no answer within {now - permit.acquired_at:.1f} s; failing over",
            channel=permit.channel,
            item_id=item.item_id,
            error_class=ErrorClass.TIMEOUT,
            reason="attempt timeout",
        )
        return self.report_failure(item, permit, error, now=now)

    def report_cancelled(
        self, item: ItemProgress, permit: Permit, *, now: float | None = None
    ) -> tuple[ChannelEvent, ...]:
        """The engine cancelled the attempt (shutdown); its price stays counted as uncertain."""
        now = self.clock.now() if now is None else now
        price = self._price_of(permit)
        outcome = Outcome(None, now - permit.acquired_at, 0.0, cancelled=True, detail="cancelled")
        return self._close(item, permit, outcome, now, billed=False, uncertain=price)

    def failovers_in_window(self, now: float | None = None) -> int:
        return self.failovers.count(self.clock.now() if now is None else now)


def router_for(
    channels: Iterable[ChannelTerms | HasTerms],
    clock: Clock,
    rng: random.Random,
    backend: ChannelStateBackend | None = None,
    *,
    config: RouterConfig | None = None,
    wall_clock: WallClock | None = None,
    breaker: BreakerConfig | None = None,
    throttle: ThrottleConfig | None = None,
) -> Router:
    """A router over ``channels`` with an in-memory backend unless one is given."""
    return Router(
        list(channels),
        clock=clock,
        rng=rng,
        backend=backend if backend is not None else InMemoryStateBackend(rng),
        config=config,
        wall_clock=wall_clock,
        breaker=breaker,
        throttle=throttle,
    )


_BREAKER_WORDS = {"closed": "ok", "open": "open", "half_open": "probing"}


def describe(snapshots: Mapping[str, ChannelSnapshot], now: float) -> str:
    """One short line of channel states for progress logs: ``relay=ok gemini=retry_hint(+12s)``.

    A healthy channel reads ``ok``: "closed" is breaker jargon that reads like "shut".
    """
    parts = []
    for name, snap in snapshots.items():
        if snap.disabled:
            state = "disabled"
        elif snap.blocked_by is None:
            state = _BREAKER_WORDS.get(str(snap.breaker), str(snap.breaker))
        elif snap.available_at is None:
            state = str(snap.blocked_by)
        else:
            state = f"{snap.blocked_by}(+{max(0.0, snap.available_at - now):.0f}s)"
        parts.append(f"{name}={state}")
    return " ".join(parts)
