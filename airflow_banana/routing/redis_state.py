"""Fleet-wide channel state in Redis: every Airflow worker sees one breaker, one limiter, one quota.

Google's quotas are per project, and Airflow runs tasks in many processes on many hosts. With
per-process state, N workers send N times the cap and each rediscovers an outage on its own
(issue 7). ``RedisStateBackend`` implements the ``ChannelStateBackend`` seam of
``routing.state`` on a shared Redis.

How a transition stays atomic
-----------------------------
Each channel is ONE Redis hash ``{namespace}:channel:{name}`` with two fields: ``v`` (a version
counter) and ``r`` (the channel's ``ChannelRecord`` as JSON: breaker with its half-open probe
lease, GCRA cells, throttle window, in-flight permits with expiries, retry-hint closure, daily
bench, disable, statistics). A transition is optimistic compare-and-set::

    v, r = HMGET key v r                        # read
    verdict = acquire(record, policy, now, ...) # the same pure function the in-memory backend runs
    CAS(key, expected=v, new=v+1, record')      # Lua via EVALSHA: writes only if v is unchanged
    lost the race? read again and recompute     # bounded retries with a little jitter

The Lua script checks the version and writes the record in one server-side step, so two workers
can never both take the half-open probe lease, both use the last rate slot, or both fill the
last concurrency slot. A transition that changes nothing (most denials) writes nothing.

Why not port every transition to Lua: breaker, GCRA, throttle and statistics would then exist
twice (Python for one process, Lua for the fleet) and drift; here the pure functions in
``routing/`` are the only implementation, and the behaviour suite
(``tests/unit/test_state_backend.py``) runs unchanged against both backends. Why not ``limits``
with Redis storage: it reads the time itself, cannot say *when* the next slot frees, and cannot
commit a rate slot together with the probe lease and the concurrency slot in one step.

Keys expire ``record_ttl_s`` (3 days) after their last write, longer than any daily bench.

Time: the caller's ``now`` is stored, so every worker must share a timebase: give the router
``SystemClock(shared=True)`` (epoch seconds).

CHANNEL_FATAL (401/403/404) disables a channel for the rest of *this* backend's life (the run),
and for the fleet only ``shared_disable_s`` (15 min) after it was seen: a fixed key must not stay
disabled fleet-wide for days.

Redis unreachable: the backend falls back to per-process state seeded from the last record it
saw of each channel (so an open breaker or a bench carries over, and permits issued through Redis
can still be recorded) and logs ONE warning. Every ``rejoin_after_s`` (5 s) it tries Redis again;
once Redis answers, each channel's local record is folded into the shared one (``rejoin``: the
later rate slots, retry hints and benches, the permits still in flight, the worse breaker; all of
it when Redis came back empty) and the task shares again (one INFO line). A worker that rejoins
must not undo what it learned apart, nor let the fleet reuse rate slots it spent apart.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from airflow_banana.exceptions import ConfigurationError, RoutingStateConflictError
from airflow_banana.routing.breaker import BreakerRecord, BreakerState
from airflow_banana.routing.limiter import GcraRecord
from airflow_banana.routing.state import (
    ChannelEvent,
    ChannelPolicy,
    ChannelRecord,
    ChannelSnapshot,
    Denial,
    Outcome,
    Permit,
    StatsRecord,
    acquire,
    apply_outcome,
    make_snapshot,
)
from airflow_banana.routing.throttle import ThrottleRecord
from airflow_banana.routing.window import WindowCounts

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "airflow-banana"
_FORMAT = 1  # bump when the stored JSON changes shape; an unknown format is started afresh

# KEYS[1] channel hash; ARGV: expected version ("" = key absent), new version, record JSON, ttl ms.
CAS_SCRIPT = """
local current = redis.call('HGET', KEYS[1], 'v')
if current == false then current = '' end
if current ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'r', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""


# ---------------------------------------------------------------- (de)serialization


def _window_out(window: WindowCounts) -> dict[str, list[int]]:
    return {str(index): list(values) for index, values in window.buckets.items()}


def _window_in(data: dict[str, list[int]], arity: int = 2) -> WindowCounts:
    return WindowCounts(arity=arity, buckets={int(k): [int(x) for x in v] for k, v in data.items()})


def record_to_dict(record: ChannelRecord) -> dict[str, Any]:
    """A JSON-able dict of every field of ``record`` (what goes into the Redis hash)."""
    b, s = record.breaker, record.stats
    return {
        "fmt": _FORMAT,
        "breaker": {
            "state": b.state.value,
            "window": _window_out(b.window),
            "consecutive_failures": b.consecutive_failures,
            "open_until": b.open_until,
            "reopen_count": b.reopen_count,
            "probe_failures": b.probe_failures,
            "base_failure_rate": b.base_failure_rate,
            "closed_at": b.closed_at,
            "failing_since": b.failing_since,
            "probe_id": b.probe_id,
            "probe_lease_until": b.probe_lease_until,
            "openings": b.openings,
        },
        "rpm_tat": record.rpm.tat,
        "ipm_tat": record.ipm.tat,
        "rpm_sent": list(record.rpm.sent),
        "ipm_sent": list(record.ipm.sent),
        "rpm_cold_until": record.rpm.cold_until,
        "ipm_cold_until": record.ipm.cold_until,
        "throttle": _window_out(record.throttle.window),
        "in_flight": dict(record.in_flight),
        "retry_hint_until": record.retry_hint_until,
        "benched_until": record.benched_until,
        "disabled_reason": record.disabled_reason,
        "stats": {
            "recent_successes": s.recent_successes,
            "recent_failures": s.recent_failures,
            "decayed_at": s.decayed_at,
            "latency_ewma_s": s.latency_ewma_s,
            "calls": s.calls,
            "successes": s.successes,
            "failures": s.failures,
            "spend_usd": s.spend_usd,
            "by_class": dict(s.by_class),
        },
        "permits_issued": record.permits_issued,
        "throttled": record.throttled,
    }


def _cell(data: dict[str, Any], name: str) -> GcraRecord:
    # records written before the window log (no *_sent) read as an empty log
    return GcraRecord(
        float(data[f"{name}_tat"]),
        [float(t) for t in data.get(f"{name}_sent", [])],
        float(data.get(f"{name}_cold_until", 0.0)),
    )


def record_from_dict(data: dict[str, Any]) -> ChannelRecord:
    """The inverse of ``record_to_dict``."""
    b, s = data["breaker"], data["stats"]
    return ChannelRecord(
        breaker=BreakerRecord(
            state=BreakerState(b["state"]),
            window=_window_in(b["window"]),
            consecutive_failures=int(b["consecutive_failures"]),
            open_until=float(b["open_until"]),
            reopen_count=int(b["reopen_count"]),
            probe_failures=int(b.get("probe_failures", 0)),
            base_failure_rate=float(b.get("base_failure_rate", BreakerRecord.base_failure_rate)),
            closed_at=b["closed_at"],
            failing_since=b.get("failing_since"),
            probe_id=int(b["probe_id"]),
            probe_lease_until=b["probe_lease_until"],
            openings=int(b["openings"]),
        ),
        rpm=_cell(data, "rpm"),
        ipm=_cell(data, "ipm"),
        throttle=ThrottleRecord(window=_window_in(data["throttle"])),
        in_flight={str(k): float(v) for k, v in data["in_flight"].items()},
        retry_hint_until=float(data["retry_hint_until"]),
        benched_until=float(data["benched_until"]),
        disabled_reason=data["disabled_reason"],
        stats=StatsRecord(
            recent_successes=float(s["recent_successes"]),
            recent_failures=float(s["recent_failures"]),
            decayed_at=s["decayed_at"],
            latency_ewma_s=s["latency_ewma_s"],
            calls=int(s["calls"]),
            successes=int(s["successes"]),
            failures=int(s["failures"]),
            spend_usd=float(s["spend_usd"]),
            by_class={str(k): int(v) for k, v in s["by_class"].items()},
        ),
        permits_issued=int(data["permits_issued"]),
        throttled=int(data["throttled"]),
    )


@dataclass
class _Stored:
    version: str  # "" when the key does not exist yet
    record: ChannelRecord
    disabled_at: float | None
    reseeded: bool = False  # Redis lost the record (restart): ours was folded in, must be written


# ---------------------------------------------------------------- the backend


class RedisStateBackend:
    """``ChannelStateBackend`` on Redis; see the module docstring.

    :param client: a ``redis.Redis`` (``decode_responses`` either way). Give it short socket
        timeouts: every router decision waits for it.
    :param namespace: key prefix, one per deployment (two Airflow deployments sharing a Redis
        must not share channel state by accident).
    :param rng: for breaker jitter and throttle dice (per process; only state is shared).
    :param record_ttl_s: a channel's key expires this long after its last write.
    :param shared_disable_s: how long a CHANNEL_FATAL disable holds for other workers.
    :param max_retries: compare-and-set attempts per transition before giving up the race.
    :param rejoin_after_s: after a Redis failure, seconds between attempts to share again.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        rng: random.Random | None = None,
        record_ttl_s: float = 3 * 86400.0,
        shared_disable_s: float = 900.0,
        max_retries: int = 200,
        rejoin_after_s: float = 5.0,
    ) -> None:
        if not namespace or any(c.isspace() for c in namespace):
            raise ConfigurationError(
                f"redis routing state: namespace must be a non-blank word, got {namespace!r}"
            )
        if record_ttl_s <= 0 or shared_disable_s <= 0 or max_retries < 1 or rejoin_after_s <= 0:
            raise ConfigurationError(
                "redis routing state: record_ttl_s, shared_disable_s, max_retries, rejoin_after_s must be > 0"
            )
        self._client = client
        self.namespace = namespace
        self._rng = rng or random.Random()
        self._ttl_ms = int(record_ttl_s * 1000)
        self._shared_disable_s = shared_disable_s
        self._max_retries = max_retries
        self._rejoin_after_s = rejoin_after_s
        self._rejoin_at = 0.0  # when to try Redis again while on local state
        self._cas: Script = client.register_script(CAS_SCRIPT)
        self._policies: dict[str, ChannelPolicy] = {}
        self._disabled_here: dict[str, str] = {}  # channel -> reason: disabled for this run
        self._last_seen: dict[str, ChannelRecord] = {}
        self._versions: dict[str, int] = {}  # channel -> last version read or written
        self._local: dict[str, ChannelRecord] | None = None  # set once Redis failed: fallback state
        self.fallback_reason: str | None = None
        self.rejoins = 0

    # ------------------------------------------------------------ protocol

    def register(self, channel: str, policy: ChannelPolicy) -> None:
        self._policies[channel] = policy

    def channels(self) -> tuple[str, ...]:
        return tuple(self._policies)

    @property
    def shared(self) -> bool:
        """False once this backend fell back to per-process state."""
        return self._local is None

    def key(self, channel: str) -> str:
        return f"{self.namespace}:channel:{channel}"

    def try_acquire(
        self, channel: str, now: float, *, images: int = 1, urgent: bool = False
    ) -> Permit | Denial:
        policy = self._policy(channel)

        def step(record: ChannelRecord) -> Permit | Denial:
            return acquire(channel, record, policy, now, self._rng, images, urgent=urgent)

        return self._transact(channel, now, step)

    def record(self, permit: Permit, outcome: Outcome, now: float) -> tuple[ChannelEvent, ...]:
        policy = self._policy(permit.channel)

        def step(record: ChannelRecord) -> tuple[ChannelEvent, ...]:
            return apply_outcome(record, policy, permit, outcome, now, self._rng)

        events = self._transact(permit.channel, now, step)
        if ChannelEvent.DISABLED in events:
            self._disabled_here.setdefault(permit.channel, outcome.detail or "channel-fatal error")
        return events

    def snapshot(self, channel: str, now: float) -> ChannelSnapshot:
        policy = self._policy(channel)
        self._maybe_rejoin(now)
        if self._local is None:
            try:
                stored = self._read(channel, now)
            except redis.RedisError as err:
                self._fall_back(err, now)
            else:
                return make_snapshot(channel, stored.record, policy, now)
        assert self._local is not None
        return make_snapshot(channel, copy.deepcopy(self._local_record(channel)), policy, now)

    # ------------------------------------------------------------ internals

    def _policy(self, channel: str) -> ChannelPolicy:
        try:
            return self._policies[channel]
        except KeyError as err:
            raise ConfigurationError(
                f"channel '{channel}' is not registered with the routing backend; "
                f"known channels: {sorted(self._policies)}"
            ) from err

    def _read(self, channel: str, now: float) -> _Stored:
        version, raw = self._client.hmget(self.key(channel), ["v", "r"])
        record, disabled_at = ChannelRecord(), None
        if raw is not None:
            data = json.loads(raw)
            if data.get("fmt") == _FORMAT:
                record = record_from_dict(data)
                disabled_at = data.get("disabled_at")
        if record.disabled_reason is not None and channel not in self._disabled_here:
            seen = disabled_at if disabled_at is not None else now
            if now - seen >= self._shared_disable_s:
                record.disabled_reason = None  # another worker's old verdict; the key may be fixed
        elif channel in self._disabled_here and record.disabled_reason is None:
            record.disabled_reason = self._disabled_here[channel]
            disabled_at = now
        stamp = version.decode() if isinstance(version, bytes) else (version or "")
        # Versions only grow, so a lower one (or none) means Redis lost the key: restarted empty
        # under a connection that reconnected at once. Re-seed from what this worker last saw.
        reseeded = channel in self._last_seen and int(stamp or 0) < self._versions.get(channel, 0)
        if reseeded:
            rejoin(record, self._last_seen[channel])
        self._last_seen[channel] = record
        return _Stored(stamp, record, disabled_at, reseeded)

    def _transact(self, channel: str, now: float, step: Any) -> Any:
        self._maybe_rejoin(now)
        if self._local is None:
            try:
                return self._transact_shared(channel, now, step)
            except redis.RedisError as err:
                self._fall_back(err, now)
        return step(self._local_record(channel))

    def _maybe_rejoin(self, now: float) -> None:
        if self._local is None or now < self._rejoin_at:
            return
        local = self._local
        try:
            for channel, record in local.items():

                def fold(shared: ChannelRecord, record: ChannelRecord = record) -> None:
                    rejoin(shared, record)

                self._transact_shared(channel, now, fold)
        except (redis.RedisError, RoutingStateConflictError) as err:
            self._rejoin_at = now + self._rejoin_after_s
            log.debug(
                "routing state: Redis still unavailable (%s); next try in %.0f s", err, self._rejoin_after_s
            )
            return
        self._local = None
        self.rejoins += 1
        log.info(
            "routing state: Redis (namespace %r) answers again; this task shares its %d channel(s) "
            "with the fleet again (local state folded in)",
            self.namespace,
            len(local),
        )

    def _transact_shared(self, channel: str, now: float, step: Any) -> Any:
        for attempt in range(self._max_retries):
            stored = self._read(channel, now)
            before = record_to_dict(stored.record)
            result = step(stored.record)
            after = record_to_dict(stored.record)
            if after == before and not stored.reseeded:
                self._versions[channel] = int(stored.version or 0)
                return result  # nothing changed (e.g. a rate-limit denial): nothing to write
            if stored.record.disabled_reason is not None:
                after["disabled_at"] = stored.disabled_at if stored.disabled_at is not None else now
            new_version = str(int(stored.version or 0) + 1)
            written = self._cas(
                keys=[self.key(channel)],
                args=[stored.version, new_version, json.dumps(after), self._ttl_ms],
            )
            if int(written) == 1:
                self._last_seen[channel] = stored.record
                self._versions[channel] = int(new_version)
                return result
            # another worker wrote first: recompute on its state (never apply a stale decision)
            time.sleep(self._rng.uniform(0.0, 0.0005 * min(attempt + 1, 20)))
        raise RoutingStateConflictError(
            f"channel '{channel}': {self._max_retries} workers' updates raced for its shared state; "
            "the item asks again on its next decision"
        )

    def _local_record(self, channel: str) -> ChannelRecord:
        assert self._local is not None
        if channel not in self._local:
            self._local[channel] = copy.deepcopy(self._last_seen.get(channel, ChannelRecord()))
            if channel in self._disabled_here and self._local[channel].disabled_reason is None:
                self._local[channel].disabled_reason = self._disabled_here[channel]
        return self._local[channel]

    def _fall_back(self, err: redis.RedisError, now: float) -> None:
        self._local = {}
        self._rejoin_at = now + self._rejoin_after_s
        self.fallback_reason = f"{type(err).__name__}: {err}"
        log.warning(
            "routing state: Redis (namespace %r) failed (%s); falling back to per-process state, "
            "starting from the last state seen, and trying Redis again every %.0f s. Until then "
            "breakers, rate limits and quotas are not shared with other workers.",
            self.namespace,
            self.fallback_reason,
            self._rejoin_after_s,
        )


_BREAKER_SEVERITY = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


def rejoin(shared: ChannelRecord, local: ChannelRecord) -> None:
    """Fold a worker's record from its time apart into the shared one (in place).

    Redis came back empty (a restart without persistence): the local record becomes the shared
    one. Otherwise the stricter of each gate wins, so no worker reuses a rate slot another spent
    apart, no retry hint or daily bench is forgotten, the permits still in flight stay counted,
    and a breaker one side opened stays open.
    """
    if shared == ChannelRecord():
        for name, value in vars(copy.deepcopy(local)).items():
            setattr(shared, name, value)
        return
    for mine, theirs in ((shared.rpm, local.rpm), (shared.ipm, local.ipm)):
        mine.tat = max(mine.tat, theirs.tat)
        mine.cold_until = max(mine.cold_until, theirs.cold_until)
        seen = set(mine.sent)  # both sides' sends count in the window (the ones before the split once)
        mine.sent = sorted([*mine.sent, *(t for t in theirs.sent if t not in seen)])
    shared.retry_hint_until = max(shared.retry_hint_until, local.retry_hint_until)
    shared.benched_until = max(shared.benched_until, local.benched_until)
    for permit_id, expiry in local.in_flight.items():
        shared.in_flight[permit_id] = max(shared.in_flight.get(permit_id, expiry), expiry)
    shared.permits_issued = max(shared.permits_issued, local.permits_issued)
    if _BREAKER_SEVERITY[local.breaker.state] > _BREAKER_SEVERITY[shared.breaker.state]:
        shared.breaker = copy.deepcopy(local.breaker)


def redis_backend(
    url: str,
    *,
    namespace: str = DEFAULT_NAMESPACE,
    rng: random.Random | None = None,
    socket_timeout_s: float = 0.5,
    **options: Any,
) -> RedisStateBackend:
    """A backend on the Redis at ``url`` (``redis://host:port/db``), with short timeouts."""
    client = redis.Redis.from_url(url, **client_options(socket_timeout_s))
    return RedisStateBackend(client, namespace=namespace, rng=rng, **options)


def client_options(socket_timeout_s: float = 0.5) -> dict[str, Any]:
    """Client settings for routing state: every router decision waits on Redis, so fail fast.

    One immediate retry (a pooled socket may have gone stale while idle), no backoff: a Redis
    that does not answer within ``socket_timeout_s`` twice is treated as gone (fallback).
    """
    return {
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": socket_timeout_s,
        "retry_on_timeout": False,
        "retry": Retry(NoBackoff(), 1),
    }
