"""The seam between routing decisions and where per-channel state lives.

The engine (one asyncio task, or later many workers) only ever performs three whole
transitions per channel, each atomic:

* ``try_acquire(channel, now, images=1) -> Permit | Denial``: all gates checked, then all
  effects committed together (half-open probe lease, rate-limit slots, in-flight slot).
  A ``Denial`` says why and ``retry_at``, the earliest time asking
  again can succeed (``None``: when some in-flight permit is released; ``inf``: never).
* ``record(permit, outcome, now) -> events``: releases the permit (idempotent: a second record
  of the same permit is ignored) and feeds breaker, throttle, closures and statistics.
* ``snapshot(channel, now) -> ChannelSnapshot``: read-only view for ordering and progress lines.

Gate order in ``try_acquire``: disabled (CHANNEL_FATAL, for the run) -> benched (per-day quota,
until the daily reset) -> retry hint (429 ``RetryInfo``: no permit before ``now + retryDelay``)
-> breaker (OPEN, or HALF_OPEN with the probe lease out) -> concurrency (``in_flight <
max_concurrency``; a permit expires after ``permit_ttl_s`` so a crashed caller cannot leak its
slot) -> rate limits (GCRA on requests and images per minute) -> adaptive throttle (random; the
probe bypasses it). Only when every gate passes is anything committed (probe lease, rate slots,
in-flight slot); a throttle rejection only bumps the channel's ``throttled`` counter.

How each outcome counts (``OUTCOME_RULES``)::

    outcome          breaker     throttle accept   success-rate stats   closure
                                 (every non-cancelled outcome is a throttle request)
    success          healthy     yes               success              -
    ITEM_TERMINAL    healthy     yes               -                    -
    NO_IMAGE         failure     yes (a 200)       failure              -
    RETRYABLE        failure     no                failure              -
    TIMEOUT          failure     no                failure              -
    RATE_LIMITED     -           no                - (failure if billed) retry hint until t
    QUOTA_EXHAUSTED  -           no                - (failure if billed) bench until t
    CHANNEL_FATAL    -           no                -                    disabled for the run
    cancelled        -           -                 -                    -

A successful half-open probe also clears the channel's throttle window and drops the decayed
failures beyond the channel's rate from before the outage: the failures that led to the outage
would otherwise keep rejecting traffic to the recovered channel for two minutes and rank it as
dear for half-lives, while a channel that was flaky before stays ranked as flaky.

NO_IMAGE counts against the breaker so that a relay that strips images from every answer is
routed around; a prompt that rarely yields no image cannot trip it alone (bounded retries per
item, minimum volume, and healthy calls in between). A "-" for the breaker on a probe returns
the lease without a verdict.

Statistics decay exponentially: ``x(t) = x(t0) * 0.5 ** ((t - t0) / half_life)`` (300 s), so
"recent success rate" follows the channel within minutes; latency is an EWMA
(``alpha = 0.2``) of successful and timed-out calls.

The in-memory backend keeps one ``ChannelRecord`` per channel and applies the pure functions
below. The Redis backend (``routing/redis_state.py``) stores the same fields per channel and runs
the same pure transitions, committing each with a versioned Lua write; ``tests/unit/test_state_backend.py``
is the behaviour suite every backend must pass. A shared backend needs a shared timebase: give
the router ``SystemClock(shared=True)`` (epoch seconds) or use the server's clock.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from airflow_banana.exceptions import ConfigurationError, ErrorClass
from airflow_banana.routing import breaker as brk
from airflow_banana.routing import throttle as thr
from airflow_banana.routing.breaker import BreakerConfig, BreakerRecord, BreakerState
from airflow_banana.routing.limiter import GcraRecord, LimitConfig, gcra_commit, gcra_earliest, window_units
from airflow_banana.routing.throttle import ThrottleConfig, ThrottleRecord
from airflow_banana.routing.window import window_clear

# A permit id that was recorded, or expired this long ago, is forgotten.
_EXPIRED_PERMIT_MEMORY_S = 3600.0


class DenialReason(enum.StrEnum):
    DISABLED = "disabled"  # CHANNEL_FATAL earlier in this run
    BENCHED = "benched"  # per-day quota exhausted, until the daily reset
    RETRY_HINT = "retry_hint"  # 429 with RetryInfo (or the default pause)
    BREAKER_OPEN = "breaker_open"
    PROBE_IN_FLIGHT = "probe_in_flight"  # half-open and another caller holds the probe lease
    CONCURRENCY = "concurrency"
    RATE_LIMIT = "rate_limit"
    THROTTLED = "throttled"  # adaptive throttling rejected this attempt locally
    # Decided by the router for one item, never by a backend:
    ITEM_BACKOFF = "item_backoff"  # this item just failed on this channel; backing off
    EXCLUDED = "excluded"  # this item timed out on this channel: not retried there
    UNAFFORDABLE = "unaffordable"  # the task budget cannot cover this channel's price


class ChannelEvent(enum.StrEnum):
    BREAKER_OPENED = brk.BreakerEvent.OPENED.value
    BREAKER_REOPENED = brk.BreakerEvent.REOPENED.value
    BREAKER_CLOSED = brk.BreakerEvent.CLOSED.value
    RETRY_HINT = "closed_until_retry_hint"
    BENCHED = "benched_until_daily_reset"
    DISABLED = "disabled_for_run"


@dataclass(frozen=True)
class ChannelPolicy:
    """Everything the backend needs to know about one channel's limits and breaker."""

    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    limits: LimitConfig = field(default_factory=LimitConfig)
    throttle: ThrottleConfig = field(default_factory=ThrottleConfig)
    permit_ttl_s: float = 130.0
    stats_half_life_s: float = 300.0
    latency_alpha: float = 0.2

    def __post_init__(self) -> None:
        if self.permit_ttl_s <= 0 or self.stats_half_life_s <= 0 or not 0 < self.latency_alpha <= 1:
            raise ConfigurationError(f"invalid channel policy: {self}")


@dataclass(frozen=True)
class Permit:
    """Leave to make one attempt on ``channel``; hand it back through ``record``."""

    channel: str
    permit_id: str
    acquired_at: float
    expires_at: float
    probe_id: int | None = None  # set when this attempt is the breaker's half-open probe
    images: int = 1

    @property
    def probe(self) -> bool:
        return self.probe_id is not None


@dataclass(frozen=True)
class Denial:
    """No permit now. ``retry_at``: earliest useful retry (None: after a release; inf: never)."""

    channel: str
    reason: DenialReason
    retry_at: float | None
    detail: str = ""


@dataclass(frozen=True)
class Outcome:
    """What happened to an attempt. ``error_class=None`` is a success.

    ``closed_until`` (absolute ``now``-clock time) is required for RATE_LIMITED and
    QUOTA_EXHAUSTED; the router computes it from ``retry_after`` / the daily reset.
    """

    error_class: ErrorClass | None = None
    latency_s: float = 0.0
    cost_usd: float = 0.0
    closed_until: float | None = None
    cancelled: bool = False
    detail: str = ""

    def __post_init__(self) -> None:
        closing = self.error_class in (ErrorClass.RATE_LIMITED, ErrorClass.QUOTA_EXHAUSTED)
        if closing and self.closed_until is None:
            raise ConfigurationError(f"an outcome of class {self.error_class} needs closed_until")


@dataclass(frozen=True)
class OutcomeRule:
    breaker_failure: bool | None  # True failure, False healthy, None no verdict
    throttle_accept: bool
    stats_success: bool | None  # None: not counted in the success rate


OUTCOME_RULES: Mapping[ErrorClass | None, OutcomeRule] = MappingProxyType(
    {
        None: OutcomeRule(breaker_failure=False, throttle_accept=True, stats_success=True),
        ErrorClass.ITEM_TERMINAL: OutcomeRule(False, True, None),
        ErrorClass.NO_IMAGE: OutcomeRule(True, True, False),
        ErrorClass.RETRYABLE: OutcomeRule(True, False, False),
        ErrorClass.TIMEOUT: OutcomeRule(True, False, False),
        ErrorClass.RATE_LIMITED: OutcomeRule(None, False, None),
        ErrorClass.QUOTA_EXHAUSTED: OutcomeRule(None, False, None),
        ErrorClass.CHANNEL_FATAL: OutcomeRule(None, False, None),
    }
)


@dataclass
class StatsRecord:
    recent_successes: float = 0.0
    recent_failures: float = 0.0
    decayed_at: float | None = None
    latency_ewma_s: float | None = None
    calls: int = 0
    successes: int = 0
    failures: int = 0
    spend_usd: float = 0.0
    by_class: dict[str, int] = field(default_factory=dict)


@dataclass
class ChannelRecord:
    """All mutable state of one channel (what a Redis hash would hold)."""

    breaker: BreakerRecord = field(default_factory=BreakerRecord)
    rpm: GcraRecord = field(default_factory=GcraRecord)
    ipm: GcraRecord = field(default_factory=GcraRecord)
    throttle: ThrottleRecord = field(default_factory=ThrottleRecord)
    in_flight: dict[str, float] = field(default_factory=dict)  # permit id -> expiry
    retry_hint_until: float = 0.0
    benched_until: float = 0.0
    disabled_reason: str | None = None
    stats: StatsRecord = field(default_factory=StatsRecord)
    permits_issued: int = 0
    throttled: int = 0


@dataclass(frozen=True)
class ChannelSnapshot:
    """Read-only view of one channel at ``at``.

    ``available_at``: ``at`` if a permit could be had now (throttle dice aside), a future time
    if blocked until then, ``None`` if blocked by concurrency (until a release), ``inf`` when
    disabled. ``blocked_by`` names the first gate that blocks.
    """

    channel: str
    at: float
    breaker: BreakerState
    open_until: float | None
    reopen_count: int
    openings: int
    retry_hint_until: float | None
    benched_until: float | None
    disabled_reason: str | None
    in_flight: int
    max_concurrency: int
    next_request_at: float
    throttle_reject_probability: float
    recent_successes: float
    recent_failures: float
    latency_ewma_s: float | None
    calls: int
    successes: int
    failures: int
    failures_by_class: Mapping[str, int]
    spend_usd: float
    throttled: int
    blocked_by: DenialReason | None
    available_at: float | None

    @property
    def disabled(self) -> bool:
        return self.disabled_reason is not None


# ---------------------------------------------------------------- pure transitions


def _live_permits(record: ChannelRecord, now: float) -> int:
    return sum(1 for expiry in record.in_flight.values() if expiry > now)


def _forget_old_permits(record: ChannelRecord, now: float) -> None:
    horizon = now - _EXPIRED_PERMIT_MEMORY_S
    for permit_id in [p for p, expiry in record.in_flight.items() if expiry <= horizon]:
        del record.in_flight[permit_id]


def _next_rate_slot(
    record: ChannelRecord, limits: LimitConfig, now: float, images: int, urgent: bool = False
) -> float:
    earliest = now
    if limits.rpm is not None:
        burst = window_units(limits.rpm) if urgent else limits.burst
        earliest = max(earliest, gcra_earliest(record.rpm, limits.rpm, burst, now, 1, limits.window_s))
    if limits.ipm is not None:
        burst = window_units(limits.ipm) if urgent else limits.burst
        earliest = max(earliest, gcra_earliest(record.ipm, limits.ipm, burst, now, images, limits.window_s))
    return earliest


def evaluate(
    channel: str,
    record: ChannelRecord,
    policy: ChannelPolicy,
    now: float,
    images: int = 1,
    *,
    urgent: bool = False,
) -> Denial | brk.BreakerGate:
    """Every deterministic gate, in order; commits nothing (bar the OPEN -> HALF_OPEN refresh)."""
    if record.disabled_reason is not None:
        return Denial(channel, DenialReason.DISABLED, math.inf, record.disabled_reason)
    if now < record.benched_until:
        return Denial(channel, DenialReason.BENCHED, record.benched_until, "daily quota exhausted")
    if now < record.retry_hint_until:
        return Denial(channel, DenialReason.RETRY_HINT, record.retry_hint_until, "429 retry delay")
    gate = brk.gate(record.breaker, now)
    if not gate.allowed:
        is_open = record.breaker.state is BreakerState.OPEN
        reason = DenialReason.BREAKER_OPEN if is_open else DenialReason.PROBE_IN_FLIGHT
        return Denial(channel, reason, gate.retry_at, f"breaker {record.breaker.state}")
    in_flight = _live_permits(record, now)
    if in_flight >= policy.limits.max_concurrency:
        return Denial(channel, DenialReason.CONCURRENCY, None, f"{in_flight} in flight")
    slot = _next_rate_slot(record, policy.limits, now, images, urgent)
    if slot > now:
        return Denial(channel, DenialReason.RATE_LIMIT, slot, "client-side rate limit")
    return gate


def acquire(
    channel: str,
    record: ChannelRecord,
    policy: ChannelPolicy,
    now: float,
    rng: random.Random,
    images: int = 1,
    *,
    urgent: bool = False,
) -> Permit | Denial:
    """The ``try_acquire`` transition on one record; ``urgent`` may spend the rest of the window's
    rate at once, whatever the channel's burst (the router's call: spacing is for learning, and
    this item would otherwise leave for a dearer channel)."""
    _forget_old_permits(record, now)
    verdict = evaluate(channel, record, policy, now, images, urgent=urgent)
    if isinstance(verdict, Denial):
        return verdict
    if not verdict.probe and not thr.admit(record.throttle, policy.throttle, now, rng):
        record.throttled += 1
        return Denial(channel, DenialReason.THROTTLED, now + policy.throttle.recheck_s, "adaptive throttling")
    probe_id = brk.take_probe(record.breaker, policy.breaker, now) if verdict.probe else None
    if policy.limits.rpm is not None:
        gcra_commit(record.rpm, policy.limits.rpm, now, 1, policy.limits.window_s, policy.limits.cold_start_s)
    if policy.limits.ipm is not None:
        gcra_commit(
            record.ipm, policy.limits.ipm, now, images, policy.limits.window_s, policy.limits.cold_start_s
        )
    record.permits_issued += 1
    permit = Permit(
        channel=channel,
        permit_id=f"{channel}#{record.permits_issued}",
        acquired_at=now,
        expires_at=now + policy.permit_ttl_s,
        probe_id=probe_id,
        images=images,
    )
    record.in_flight[permit.permit_id] = permit.expires_at
    return permit


def decay_stats(stats: StatsRecord, half_life_s: float, now: float) -> None:
    if stats.decayed_at is not None and now > stats.decayed_at:
        factor = 0.5 ** ((now - stats.decayed_at) / half_life_s)
        stats.recent_successes *= factor
        stats.recent_failures *= factor
    if stats.decayed_at is None or now > stats.decayed_at:
        stats.decayed_at = now


def apply_outcome(
    record: ChannelRecord,
    policy: ChannelPolicy,
    permit: Permit,
    outcome: Outcome,
    now: float,
    rng: random.Random,
) -> tuple[ChannelEvent, ...]:
    """The ``record`` transition on one record; returns what changed about the channel."""
    if record.in_flight.pop(permit.permit_id, None) is None:
        return ()  # recorded before (or forgotten long ago): never count one attempt twice
    if outcome.cancelled:
        brk.release_probe(record.breaker, permit.probe_id)
        return ()
    events: list[ChannelEvent] = []
    error_class = outcome.error_class
    rule = OUTCOME_RULES[error_class]
    stats = record.stats
    stats.calls += 1
    stats.spend_usd += outcome.cost_usd
    if error_class is None:
        stats.successes += 1
    else:
        stats.failures += 1
        stats.by_class[error_class.value] = stats.by_class.get(error_class.value, 0) + 1

    if rule.breaker_failure is None:
        brk.release_probe(record.breaker, permit.probe_id)
    else:
        decay_stats(stats, policy.stats_half_life_s, now)
        transition = brk.record_result(
            record.breaker,
            policy.breaker,
            now,
            failure=rule.breaker_failure,
            probe_id=permit.probe_id,
            rng=rng,
            # one channel's permits share a lease length: an expiry no later is a call sent no later
            older_in_flight=any(now < e <= permit.expires_at for e in record.in_flight.values()),
            # "as flaky as before" over the stats' half-lives, not the breaker's one-minute window
            history=(stats.recent_successes + stats.recent_failures, stats.recent_failures),
        )
        if transition is not None:
            events.append(ChannelEvent(transition.value))
        if transition is brk.BreakerEvent.CLOSED:
            # the probe proved the outage over; its failures must not keep throttling a healthy
            # channel for the rest of the window, nor keep its success rate (and so its rank,
            # price / rate) at the outage's level for half-lives (R14: back on the cheap primary
            # soon): the failures beyond the channel's rate before the outage are dropped (a
            # channel down from its start starts again from the prior, plus the probe's success)
            window_clear(record.throttle.window)
            before = min(record.breaker.base_failure_rate, 0.99)
            stats.recent_failures = min(stats.recent_failures, stats.recent_successes * before / (1 - before))
    thr.count_request(record.throttle, policy.throttle, now)
    if rule.throttle_accept:
        thr.count_accept(record.throttle, policy.throttle, now)
    # A billed 429 (or quota answer) is a paid try that failed: the success rate is what the
    # router divides a billing channel's price by (price per image). An item's own fault
    # (ITEM_TERMINAL) stays no measure of the channel, billed or not.
    billed_refusal = rule.stats_success is None and error_class is not ErrorClass.ITEM_TERMINAL
    stats_success = False if billed_refusal and outcome.cost_usd > 0 else rule.stats_success
    if stats_success is not None:
        decay_stats(stats, policy.stats_half_life_s, now)
        if stats_success:
            stats.recent_successes += 1.0
        else:
            stats.recent_failures += 1.0
    if error_class in (None, ErrorClass.TIMEOUT):
        previous = stats.latency_ewma_s
        alpha = policy.latency_alpha
        latency = outcome.latency_s
        stats.latency_ewma_s = latency if previous is None else alpha * latency + (1 - alpha) * previous

    if error_class is ErrorClass.RATE_LIMITED and outcome.closed_until is not None:
        record.retry_hint_until = max(record.retry_hint_until, outcome.closed_until)
        events.append(ChannelEvent.RETRY_HINT)
    elif error_class is ErrorClass.QUOTA_EXHAUSTED and outcome.closed_until is not None:
        record.benched_until = max(record.benched_until, outcome.closed_until)
        events.append(ChannelEvent.BENCHED)
    elif error_class is ErrorClass.CHANNEL_FATAL and record.disabled_reason is None:
        record.disabled_reason = outcome.detail or "channel-fatal error (401/403/404)"
        events.append(ChannelEvent.DISABLED)
    return tuple(events)


def make_snapshot(channel: str, record: ChannelRecord, policy: ChannelPolicy, now: float) -> ChannelSnapshot:
    verdict = evaluate(channel, record, policy, now)
    if isinstance(verdict, Denial):
        blocked_by: DenialReason | None = verdict.reason
        available_at = verdict.retry_at
    else:
        blocked_by, available_at = None, now
    stats = record.stats
    factor = 1.0
    if stats.decayed_at is not None and now > stats.decayed_at:
        factor = 0.5 ** ((now - stats.decayed_at) / policy.stats_half_life_s)
    b = record.breaker
    return ChannelSnapshot(
        channel=channel,
        at=now,
        breaker=b.state,
        open_until=b.open_until if b.state is BreakerState.OPEN else None,
        reopen_count=b.reopen_count,
        openings=b.openings,
        retry_hint_until=record.retry_hint_until if record.retry_hint_until > now else None,
        benched_until=record.benched_until if record.benched_until > now else None,
        disabled_reason=record.disabled_reason,
        in_flight=_live_permits(record, now),
        max_concurrency=policy.limits.max_concurrency,
        next_request_at=_next_rate_slot(record, policy.limits, now, 1),
        throttle_reject_probability=thr.reject_probability(record.throttle, policy.throttle, now),
        recent_successes=stats.recent_successes * factor,
        recent_failures=stats.recent_failures * factor,
        latency_ewma_s=stats.latency_ewma_s,
        calls=stats.calls,
        successes=stats.successes,
        failures=stats.failures,
        failures_by_class=MappingProxyType(dict(stats.by_class)),
        spend_usd=stats.spend_usd,
        throttled=record.throttled,
        blocked_by=blocked_by,
        available_at=available_at,
    )


# ---------------------------------------------------------------- the seam


class ChannelStateBackend(Protocol):
    """Where per-channel routing state lives; every method is one atomic transition."""

    def register(self, channel: str, policy: ChannelPolicy) -> None:
        """Declare a channel and its policy (idempotent; a new policy replaces the old one)."""

    def try_acquire(
        self, channel: str, now: float, *, images: int = 1, urgent: bool = False
    ) -> Permit | Denial: ...

    def record(self, permit: Permit, outcome: Outcome, now: float) -> tuple[ChannelEvent, ...]: ...

    def snapshot(self, channel: str, now: float) -> ChannelSnapshot: ...

    def channels(self) -> tuple[str, ...]: ...


class InMemoryStateBackend:
    """Per-process backend: a dict of ``ChannelRecord``. Safe in one asyncio thread (no awaits)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._records: dict[str, ChannelRecord] = {}
        self._policies: dict[str, ChannelPolicy] = {}

    def register(self, channel: str, policy: ChannelPolicy) -> None:
        self._policies[channel] = policy
        self._records.setdefault(channel, ChannelRecord())

    def _get(self, channel: str) -> tuple[ChannelRecord, ChannelPolicy]:
        try:
            return self._records[channel], self._policies[channel]
        except KeyError as err:
            raise ConfigurationError(
                f"channel '{channel}' is not registered with the routing backend; "
                f"known channels: {sorted(self._records)}"
            ) from err

    def try_acquire(
        self, channel: str, now: float, *, images: int = 1, urgent: bool = False
    ) -> Permit | Denial:
        record, policy = self._get(channel)
        return acquire(channel, record, policy, now, self._rng, images, urgent=urgent)

    def record(self, permit: Permit, outcome: Outcome, now: float) -> tuple[ChannelEvent, ...]:
        record, policy = self._get(permit.channel)
        return apply_outcome(record, policy, permit, outcome, now, self._rng)

    def snapshot(self, channel: str, now: float) -> ChannelSnapshot:
        record, policy = self._get(channel)
        return make_snapshot(channel, record, policy, now)

    def channels(self) -> tuple[str, ...]:
        return tuple(self._records)
