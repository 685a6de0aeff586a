"""Per-channel circuit breaker as pure transitions on a plain record.

Why not the reference design (3 consecutive failures -> open 60 s) or LiteLLM's >50 % rule
alone: a 45 % 503 rate never trips a rate rule, a flapping channel keeps being re-tried at a
fixed cadence, and a breaker that auto-closes lets every waiting caller stampede a recovering
channel. Here:

* CLOSED -> OPEN when the channel fails far more than it did before. "Before" is ``f``, its
  failure rate over a span longer than the window (the state's decayed counts, half-life 300 s)
  without the run of failures under way, half a failure as prior (``base_failure_rate``). Over
  the sliding window (default 60 s, bucketed): ``calls >= minimum_calls`` (10), ``failures /
  calls >= failure_rate_threshold`` (0.5), and a channel failing at ``f`` would show that many
  failures less than ``false_alarm`` (5 %) of the time (binomial tail, divided by the window's
  calls: the test runs at every failure); or after ``n`` failures in a row, ``n`` at least
  ``consecutive_failures`` (5) and at least the run a channel failing at ``f`` would make less
  than ``false_alarm`` of the time over the calls of its history (``run_to_trip``). Why: a
  channel that fails 57 % of its calls from the start is flaky, not down, and its price per
  image already ranks it; measured against the window alone it tripped every minute and its
  capacity was lost to a run that needed it (the virtual bench's s11-73: an OpenRouter at 57 %
  503, shut for most of an hour, 631 items late). A channel healthy before, or with no history,
  still trips after 5 in a row. With ``in_send_order`` (the tolerant preset:
  failed calls are free, so waiting for evidence costs nothing), "in a row" is in the order the
  calls were sent: a failure that comes back while a call sent no later is still out counts, but
  cannot trip the breaker until that call has answered. Where each failure is billed, the wait
  would pay for a call latency's worth of failures in an outage, so the breaker trips on arrival
  order. Why: a 503 answers in a second, an image in ten, so when a minute's rate slots go out
  together the failures of a channel failing half its calls all come back first, a dozen "in a
  row" from a channel that is up (the virtual bench's s11-65: Vertex at 48 % 503, 20 calls a
  minute, tripped three times in two hours).
* OPEN for ``d = min(max_open_s, max(base_open_s, age) * (1 + jitter * u))`` with ``u`` uniform in
  [-1, 1] from the injected RNG and ``age`` = how long the outage has lasted so far: the time
  since the first failure after the channel's last healthy answer (defaults: 1 s floor, 300 s
  cap, jitter 0.2). The open period fits the incident: a blip seen a second ago is probed again
  about a second later, and every failed probe (the outage is older now) roughly doubles the
  wait, so a ten-minute outage costs a handful of probes and is noticed within about its own
  length once it ends. Why not a fixed first period (30 s): a 3 s blip would then cost 30 s of
  the dearest channel. An outage that has lasted ``a`` is, with no other knowledge, as likely
  as not to last another ``a`` (the Lindy rule behind doubling backoff), so probing at about
  ``2a`` spends one call per doubling of the outage.
* After ``open_until`` the breaker is HALF_OPEN: exactly one caller gets a probe lease
  (``probe_id``), valid ``probe_lease_s`` so a crashed prober cannot wedge the channel; after the
  lease expires the next caller gets a fresh lease and the old one is void.
* A probe round: any probe's success -> CLOSED (window and consecutive count reset). A failed
  probe ends the round only once ``k`` probes in a row have failed, where ``k`` is the fewest
  failures the channel, failing at its rate from before the outage (``f`` at the trip), would
  produce in a row less than ``false_alarm`` (5 %) of the time:
  ``k = ceil(log(false_alarm) / log(f))``, at most ``max_probes``: 1 by default, for a channel
  that bills failed calls pays for every probe; 12 in the tolerant preset (free failures), as
  many failures in a row as trip it.
  Then OPEN again for ``d`` with the outage older; until then the lease is handed back and the
  next caller probes at once. Why: a channel that fails half its calls and trips on an unlucky run
  would otherwise fail a single probe half the time, and each failure doubles the next opening, so
  the cheapest channel stayed shut for most of a run (the virtual bench's s11-199: a $0.05 relay
  at 52 % 503 shut for 9 of 13 minutes). A channel that was healthy before the outage (``f`` near
  0) still gets one probe per round. A neutral probe outcome (429, cancelled) only returns the lease.
* Outcomes of ordinary calls that were in flight when the breaker opened are ignored: they say
  nothing about the channel now.

What is a failure is decided by the caller (``state.breaker_verdict``): RETRYABLE, TIMEOUT and
NO_IMAGE are failures; a success or ITEM_TERMINAL answer is a healthy call; 429s are handled by
the retry-hint/bench closures and CHANNEL_FATAL disables the channel outright.

The record is a flat dataclass so the Redis backend can hold the same fields and run these same
Python transitions on them (``routing/redis_state.py``: only the versioned write is a Lua step).
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass, field

from airflow_banana.exceptions import ConfigurationError
from airflow_banana.routing.window import WindowCounts, window_add, window_clear, window_totals

CALLS, FAILURES = 0, 1
# A channel with no history before a run of failures is as likely as not to be failing.
PRIOR_FAILURES, PRIOR_CALLS = 0.5, 1.0


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerEvent(enum.StrEnum):
    OPENED = "breaker_opened"  # CLOSED -> OPEN
    REOPENED = "breaker_reopened"  # HALF_OPEN probe failed -> OPEN
    CLOSED = "breaker_closed"  # HALF_OPEN probe succeeded -> CLOSED


@dataclass(frozen=True)
class BreakerConfig:
    failure_rate_threshold: float = 0.5
    minimum_calls: int = 10
    window_s: float = 60.0
    bucket_s: float = 5.0
    consecutive_failures: int = 5
    base_open_s: float = 1.0  # the shortest open period (a young outage)
    max_open_s: float = 300.0
    jitter: float = 0.2
    probe_lease_s: float = 130.0
    false_alarm: float = 0.05  # how often a probe round may fail a channel that is merely as flaky as before
    max_probes: int = 1  # failed probes that end a round at most (see ``probes_per_round``)
    in_send_order: bool = False  # judge "in a row" in send order (see the module docstring)

    @classmethod
    def tolerant(cls, **overrides: float) -> BreakerConfig:
        """Rides out a random ~45 % failure rate instead of routing around it (80 %, 20 calls, 12 in a row).

        With the defaults, independent 45 % failures cross 50 % in a 10-call window, or run 5 in a
        row, every minute or so; each trip shuts the cheap channel for 30 s and more (a probe
        fails 45 % of the time, doubling the next opening). Where failed calls are free (Google
        bills only images), riding it out is cheaper: in the R1 scenario test it cut the cost
        of 200 images from about $25 to $12. The router's ranking (price / success rate) already
        moves traffic off a free-failure channel once it is dearer per image than the next one
        (a $0.05 relay at ~63 % failures against $0.134), so this breaker only has to catch a
        channel that is down, not one that is slow to succeed. Measured by feeding i.i.d.
        outcomes to ``record_result`` at 20 calls/s, 220 calls per run: at 45 % failures the
        earlier 70 % / 8-in-a-row settings tripped in 21 % of runs (a trip then cost the bench's
        peak run ~20 relay images); these trip in 0.7 %; at 100 % failures after 12 calls.
        """
        settings: dict[str, float | bool] = {
            "failure_rate_threshold": 0.8,
            "minimum_calls": 20,
            "consecutive_failures": 12,
            "max_probes": 12,
            "in_send_order": True,
        }
        return cls(**{**settings, **overrides})  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        if not 0 < self.failure_rate_threshold <= 1:
            raise ConfigurationError(f"breaker failure_rate_threshold must be in (0, 1], got {self}")
        if min(self.minimum_calls, self.consecutive_failures, self.max_probes) < 1:
            raise ConfigurationError(
                f"breaker minimum_calls, consecutive_failures and max_probes must be >= 1: {self}"
            )
        if min(self.window_s, self.bucket_s, self.base_open_s, self.probe_lease_s) <= 0:
            raise ConfigurationError(f"breaker durations must be positive: {self}")
        if self.max_open_s < self.base_open_s or not 0 <= self.jitter < 1:
            raise ConfigurationError(f"breaker needs max_open_s >= base_open_s and 0 <= jitter < 1: {self}")
        if not 0 < self.false_alarm < 1:
            raise ConfigurationError(f"breaker false_alarm must be in (0, 1), got {self}")


@dataclass
class BreakerRecord:
    state: BreakerState = BreakerState.CLOSED
    window: WindowCounts = field(default_factory=lambda: WindowCounts(arity=2))
    consecutive_failures: int = 0
    open_until: float = 0.0
    reopen_count: int = 0  # failed probe rounds in the current outage
    probe_failures: int = 0  # failed probes in the current round
    base_failure_rate: float = PRIOR_FAILURES / PRIOR_CALLS  # before the outage (set at the trip)
    closed_at: float | None = None
    failing_since: float | None = None  # first failure after the last healthy answer
    probe_id: int = 0  # id of the latest lease granted
    probe_lease_until: float | None = None  # None: no lease out
    openings: int = 0


@dataclass(frozen=True)
class BreakerGate:
    """Whether the breaker lets a call through now; ``probe`` means it would take the lease."""

    allowed: bool
    probe: bool = False
    retry_at: float | None = None


def open_duration(config: BreakerConfig, age_s: float, rng: random.Random) -> float:
    """``min(max_open_s, max(base_open_s, age) * (1 + jitter * U(-1, 1)))``; ``age``: the outage so far."""
    raw = max(config.base_open_s, age_s) * (1.0 + config.jitter * rng.uniform(-1.0, 1.0))
    return min(config.max_open_s, raw)


def base_failure_rate(calls: float, failures: float, run: int) -> float:
    """The failure rate before the outage: the channel's counts without the run of failures
    that is under way (half a failure as prior: a channel with no history reads 0.5)."""
    before_calls, before_failures = max(0.0, calls - run), max(0.0, failures - run)
    return (before_failures + PRIOR_FAILURES) / (before_calls + PRIOR_CALLS)


def failures_at_least(calls: int, failures: int, rate: float) -> float:
    """P(at least ``failures`` of ``calls`` fail) for calls failing independently at ``rate``."""
    if not 0.0 < rate < 1.0:
        return 1.0 if rate >= 1.0 or failures <= 0 else 0.0
    log_fail, log_ok = math.log(rate), math.log1p(-rate)
    log_n = math.lgamma(calls + 1)
    return min(
        1.0,
        sum(
            math.exp(
                log_n - math.lgamma(k + 1) - math.lgamma(calls - k + 1) + k * log_fail + (calls - k) * log_ok
            )
            for k in range(max(0, failures), calls + 1)
        ),
    )


def run_to_trip(config: BreakerConfig, base_rate: float, chances: float) -> int:
    """Failures in a row that trip the breaker: at least ``consecutive_failures``, and more on a
    channel that already failed often -- the fewest that a channel failing at ``base_rate`` would
    run into less than ``false_alarm`` of the time over ``chances`` calls that could each start
    such a run (a run of ``n`` starts at a success with probability ``base_rate ** n``)."""
    if not 0.0 < base_rate < 1.0:  # base_failure_rate() is inside; a hand-set one may not be
        return config.consecutive_failures
    starts = max(1.0, chances * (1.0 - base_rate))
    n = math.ceil(math.log(config.false_alarm / starts) / math.log(base_rate))
    return max(config.consecutive_failures, n)


def probes_per_round(record: BreakerRecord, config: BreakerConfig) -> int:
    """``k``: failed probes in a row that end a round (see the module docstring)."""
    if record.base_failure_rate >= 1.0:  # base_failure_rate() is below 1; a hand-set record may not be
        return config.max_probes
    k = math.ceil(math.log(config.false_alarm) / math.log(record.base_failure_rate))
    return max(1, min(config.max_probes, k))


def refresh(record: BreakerRecord, now: float) -> BreakerState:
    """Apply the only time-driven transition, OPEN -> HALF_OPEN at ``open_until``."""
    if record.state is BreakerState.OPEN and now >= record.open_until:
        record.state = BreakerState.HALF_OPEN
        record.probe_lease_until = None
    return record.state


def gate(record: BreakerRecord, now: float) -> BreakerGate:
    """Would a call be let through at ``now``? Changes nothing but the time-driven refresh."""
    state = refresh(record, now)
    if state is BreakerState.CLOSED:
        return BreakerGate(allowed=True)
    if state is BreakerState.OPEN:
        return BreakerGate(allowed=False, retry_at=record.open_until)
    if record.probe_lease_until is not None and now < record.probe_lease_until:
        return BreakerGate(allowed=False, retry_at=record.probe_lease_until)
    return BreakerGate(allowed=True, probe=True)


def take_probe(record: BreakerRecord, config: BreakerConfig, now: float) -> int:
    """Grant the half-open probe lease (caller checked ``gate(...).probe``); returns its id."""
    record.probe_id += 1
    record.probe_lease_until = now + config.probe_lease_s
    return record.probe_id


def release_probe(record: BreakerRecord, probe_id: int | None) -> None:
    """Give the lease back without a verdict (429 on the probe, cancellation)."""
    if probe_id is not None and record.state is BreakerState.HALF_OPEN and probe_id == record.probe_id:
        record.probe_lease_until = None


def _open(record: BreakerRecord, config: BreakerConfig, now: float, rng: random.Random, count: int) -> None:
    since = record.failing_since if record.failing_since is not None else now
    record.probe_failures = 0
    record.state = BreakerState.OPEN
    record.open_until = now + open_duration(config, now - since, rng)
    record.reopen_count = count
    record.probe_lease_until = None
    record.consecutive_failures = 0
    record.openings += 1
    window_clear(record.window)


def record_result(
    record: BreakerRecord,
    config: BreakerConfig,
    now: float,
    *,
    failure: bool,
    probe_id: int | None,
    rng: random.Random,
    older_in_flight: bool = False,
    history: tuple[float, float] | None = None,
) -> BreakerEvent | None:
    """Feed one verdict (``failure`` True/False) from a call; returns the transition, if any.

    ``probe_id`` is the lease id the call held (None for ordinary calls); ``older_in_flight``:
    a call sent no later than this one has not answered yet (its verdict may break the run);
    ``history``: the channel's (calls, failures) before this one over a span longer than the
    window (the state's decayed counts), what "as flaky as before" is judged on; None: the window.
    """
    state = refresh(record, now)
    if state is not BreakerState.CLOSED:
        if probe_id is None or probe_id != record.probe_id or state is not BreakerState.HALF_OPEN:
            return None  # a late ordinary result, or a stale probe whose lease was replaced
        if failure:
            record.probe_failures += 1
            if record.probe_failures < probes_per_round(record, config):
                record.probe_lease_until = None  # the round goes on: the next caller probes
                return None
            _open(record, config, now, rng, record.reopen_count + 1)
            return BreakerEvent.REOPENED
        record.state = BreakerState.CLOSED
        record.probe_failures = 0
        record.closed_at = now
        record.probe_lease_until = None
        record.consecutive_failures = 0
        record.reopen_count = 0
        record.failing_since = None
        window_clear(record.window)
        return BreakerEvent.CLOSED

    window_add(record.window, now, CALLS, bucket_s=config.bucket_s, window_s=config.window_s)
    if not failure:
        record.consecutive_failures = 0
        record.failing_since = None
        return None
    window_add(record.window, now, FAILURES, bucket_s=config.bucket_s, window_s=config.window_s)
    record.consecutive_failures += 1
    if record.failing_since is None:
        record.failing_since = now
    if older_in_flight and config.in_send_order:
        return None
    calls, failures = window_totals(record.window, now, bucket_s=config.bucket_s, window_s=config.window_s)
    run = record.consecutive_failures
    # this failure counted in: it may be the first of the run, which is then taken out again
    base_calls, base_failures = (calls, failures) if history is None else (history[0] + 1, history[1] + 1)
    base_rate = base_failure_rate(base_calls, base_failures, run)
    # A channel that failed this often before is not in an outage for failing this often now:
    # its price per image (price / success rate) already ranks it where it belongs.
    tripped_by_rate = (
        calls >= config.minimum_calls
        and failures >= config.failure_rate_threshold * calls
        and failures_at_least(calls, failures, base_rate) <= config.false_alarm / calls
    )
    if tripped_by_rate or run >= run_to_trip(config, base_rate, base_calls - run):
        record.base_failure_rate = base_rate  # what the channel was like before this outage
        _open(record, config, now, rng, 0)
        return BreakerEvent.OPENED
    return None
