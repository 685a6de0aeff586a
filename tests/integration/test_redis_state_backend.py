"""The backend behaviour suite (tests/unit/test_state_backend.py) against a real redis-server.

The suite is imported unchanged and re-parametrized with the Redis backend, so both backends are
held to exactly the same tests. Plus what only a shared backend has: atomicity across clients,
namespaces, TTLs, fleet-wide disable expiry and the fallback when Redis goes away.
"""

from __future__ import annotations

import importlib.util
import logging
import random
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from airflow_banana.exceptions import ErrorClass
from airflow_banana.routing.breaker import BreakerConfig, BreakerState
from airflow_banana.routing.limiter import LimitConfig
from airflow_banana.routing.redis_state import (
    RedisStateBackend,
    record_from_dict,
    record_to_dict,
    redis_backend,
    rejoin,
)
from airflow_banana.routing.state import (
    ChannelEvent,
    ChannelPolicy,
    ChannelRecord,
    ChannelStateBackend,
    Denial,
    DenialReason,
    Outcome,
    Permit,
    acquire,
    apply_outcome,
)
from airflow_banana.routing.throttle import ThrottleConfig
from airflow_banana.testing.redis_fixtures import RedisServer

pytestmark = pytest.mark.integration

_SUITE_PATH = Path(__file__).resolve().parent.parent / "unit" / "test_state_backend.py"
_spec = importlib.util.spec_from_file_location("banana_state_backend_suite", _SUITE_PATH)
assert _spec is not None and _spec.loader is not None
suite = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = suite
_spec.loader.exec_module(suite)

# Every behaviour test of the suite, collected here again against Redis.
for _name in dir(suite):
    if _name.startswith("test_"):
        globals()[_name] = getattr(suite, _name)

T0 = suite.T0
OK = suite.OK
FAIL = suite.FAIL


@pytest.fixture
def make(redis_url: str) -> Callable[..., ChannelStateBackend]:
    """The suite's ``make`` fixture, building Redis backends (fresh namespace per build)."""
    count = 0

    def build(
        policy: ChannelPolicy | None = None, seed: int = 1, **more: ChannelPolicy
    ) -> ChannelStateBackend:
        nonlocal count
        count += 1
        backend = redis_backend(redis_url, namespace=f"suite{count}", rng=random.Random(seed))
        backend.register("a", policy or suite.pol())
        for name, extra in more.items():
            backend.register(name, extra)
        return backend

    return build


def _pair(url: str, policy: ChannelPolicy, namespace: str = "fleet") -> tuple[RedisStateBackend, ...]:
    """Two backends with their own clients: two workers of one deployment."""
    backends = tuple(redis_backend(url, namespace=namespace, rng=random.Random(i)) for i in range(2))
    for backend in backends:
        backend.register("a", policy)
    return backends


def test_record_round_trips_through_json() -> None:
    record, policy, rng = ChannelRecord(), ChannelPolicy(limits=LimitConfig(rpm=60, ipm=30)), random.Random(3)
    permits = [acquire("a", record, policy, T0 + i * 2, rng) for i in range(3)]
    apply_outcome(record, policy, permits[0], FAIL, T0 + 5, rng)  # type: ignore[arg-type]
    apply_outcome(record, policy, permits[1], OK, T0 + 6, rng)  # type: ignore[arg-type]
    record.breaker.probe_failures, record.breaker.base_failure_rate = 2, 0.31  # a probe round under way
    assert record_from_dict(record_to_dict(record)) == record
    assert record_to_dict(record_from_dict(record_to_dict(record))) == record_to_dict(record)


def test_workers_share_breaker_limits_and_closures(redis_url: str) -> None:
    one, two = _pair(redis_url, suite.pol(limits=LimitConfig(rpm=6, max_concurrency=10)))
    permit = one.try_acquire("a", T0)
    assert isinstance(permit, Permit)
    blocked = two.try_acquire("a", T0 + 1)
    assert isinstance(blocked, Denial) and blocked.reason is DenialReason.RATE_LIMIT
    assert blocked.retry_at == pytest.approx(T0 + 10)
    two.record(permit, Outcome(ErrorClass.RATE_LIMITED, closed_until=T0 + 40), T0 + 2)  # any worker records
    hinted = one.try_acquire("a", T0 + 20)
    assert (
        isinstance(hinted, Denial) and hinted.reason is DenialReason.RETRY_HINT and hinted.retry_at == T0 + 40
    )
    assert two.snapshot("a", T0 + 20).retry_hint_until == T0 + 40


def test_other_namespaces_are_untouched(redis_url: str) -> None:
    policy = suite.pol()
    (mine,) = _pair(redis_url, policy, "deploy-a")[:1]
    (theirs,) = _pair(redis_url, policy, "deploy-b")[:1]
    suite.trip(mine, T0)
    assert mine.snapshot("a", T0 + 1).breaker is BreakerState.OPEN
    assert theirs.snapshot("a", T0 + 1).breaker is BreakerState.CLOSED
    client = redis.Redis.from_url(redis_url)
    assert client.exists("deploy-a:channel:a") == 1 and client.exists("deploy-b:channel:a") == 0
    assert 0 < client.ttl("deploy-a:channel:a") <= 3 * 86400


def test_denials_write_nothing(redis_url: str) -> None:
    (backend,) = _pair(redis_url, suite.pol(limits=LimitConfig(rpm=1)))[:1]
    assert isinstance(backend.try_acquire("a", T0), Permit)
    client = redis.Redis.from_url(redis_url)
    version = client.hget(backend.key("a"), "v")
    for i in range(20):
        assert isinstance(backend.try_acquire("a", T0 + i), Denial)
    assert client.hget(backend.key("a"), "v") == version


def test_threads_racing_on_separate_clients_get_exactly_the_capacity(redis_url: str) -> None:
    """16 clients hammer one channel with 5 slots: never more than 5 permits, and one probe."""
    policy = ChannelPolicy(
        breaker=BreakerConfig(jitter=0.0, base_open_s=30.0),
        throttle=ThrottleConfig(enabled=False),
        limits=LimitConfig(max_concurrency=5),
    )
    backends = [redis_backend(redis_url, namespace="race", rng=random.Random(i)) for i in range(16)]
    for backend in backends:
        backend.register("a", policy)
    got: list[Permit] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(backends))

    def worker(backend: RedisStateBackend, now: float) -> None:
        barrier.wait()
        for _ in range(10):
            result = backend.try_acquire("a", now)
            if isinstance(result, Permit):
                with lock:
                    got.append(result)

    def run(now: float) -> None:
        threads = [threading.Thread(target=worker, args=(b, now)) for b in backends]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    run(T0)
    assert len(got) == 5 and len({p.permit_id for p in got}) == 5
    for p in got:  # five failures in a row open the breaker
        backends[0].record(p, FAIL, T0 + 1)
    assert backends[1].snapshot("a", T0 + 2).breaker is BreakerState.OPEN
    got.clear()
    run(T0 + 1 + 30)  # half-open: 160 attempts from 16 clients, exactly one probe
    assert len(got) == 1 and got[0].probe


def test_channel_fatal_holds_for_this_run_but_expires_for_the_fleet(redis_url: str) -> None:
    one, two = _pair(redis_url, suite.pol())
    permit = one.try_acquire("a", T0)
    assert isinstance(permit, Permit)
    assert one.record(permit, Outcome(ErrorClass.CHANNEL_FATAL, detail="401 key invalid"), T0) == (
        ChannelEvent.DISABLED,
    )
    assert isinstance(two.try_acquire("a", T0 + 10), Denial)  # the fleet learns at once
    later = T0 + 901  # shared_disable_s (900 s) later another worker may try the (fixed?) key
    assert isinstance(two.try_acquire("a", later), Permit)
    blocked = one.try_acquire("a", later)  # the worker that saw the 401 stays off it this run
    assert isinstance(blocked, Denial) and blocked.reason is DenialReason.DISABLED


def test_redis_going_away_falls_back_with_one_warning(
    redis_server_factory: Callable[[], RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_server_factory()
    backend = redis_backend(server.url, namespace="gone", rng=random.Random(1))
    backend.register("a", suite.pol(limits=LimitConfig(max_concurrency=2)))
    held = backend.try_acquire("a", T0)
    assert isinstance(held, Permit)
    suite.trip(backend, T0, n=4)
    server.stop()
    with caplog.at_level(logging.WARNING, logger="airflow_banana.routing.redis_state"):
        # the in-flight permit issued through Redis is still known, and 4 failures are remembered
        assert backend.record(held, FAIL, T0 + 1) == (ChannelEvent.BREAKER_OPENED,)
        assert isinstance(backend.try_acquire("a", T0 + 2), Denial)
        snap = backend.snapshot("a", T0 + 40)
        assert snap.breaker is BreakerState.HALF_OPEN
        probe = backend.try_acquire("a", T0 + 40)
        assert isinstance(probe, Permit) and probe.probe
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "per-process state" in warnings[0].getMessage()
    assert not backend.shared and backend.fallback_reason


def test_unreachable_from_the_start_still_works(caplog: pytest.LogCaptureFixture) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = redis_backend(f"redis://:s3cret-pw@127.0.0.1:{port}/0", rng=random.Random(1))
    backend.register("a", suite.pol())
    with caplog.at_level(logging.WARNING):
        assert isinstance(backend.try_acquire("a", T0), Permit)
        assert backend.snapshot("a", T0).in_flight == 1
    assert "s3cret-pw" not in caplog.text and "s3cret-pw" not in repr(backend.fallback_reason)


def _rated() -> ChannelPolicy:
    return suite.pol(limits=LimitConfig(rpm=6, max_concurrency=4))  # one slot per 10 s


def test_redis_restarted_empty_is_reseeded_from_what_the_workers_saw(
    redis_server_factory: Callable[[], RedisServer],
) -> None:
    """A restart the client reconnects through at once: the record is gone, the rate slot is not."""
    server = redis_server_factory()
    one, two = _pair(server.url, _rated(), namespace="reseed")
    assert isinstance(one.try_acquire("a", T0), Permit)
    assert isinstance(two.try_acquire("a", T0 + 1), Denial)  # two has seen the slot taken
    server.stop()
    server.start()  # empty, on the same port
    denied = two.try_acquire("a", T0 + 2)
    assert isinstance(denied, Denial) and denied.reason is DenialReason.RATE_LIMIT
    assert two.shared
    # two wrote its re-seeded record back: one (which never noticed) is held to the same slot
    again = one.try_acquire("a", T0 + 3)
    assert isinstance(again, Denial) and again.reason is DenialReason.RATE_LIMIT
    assert isinstance(one.try_acquire("a", T0 + 10), Permit)


def test_redis_down_then_back_the_task_rejoins_with_what_it_did_apart(
    redis_server_factory: Callable[[], RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_server_factory()
    one = redis_backend(server.url, namespace="rejoin", rng=random.Random(1), rejoin_after_s=5.0)
    one.register("a", _rated())
    assert isinstance(one.try_acquire("a", T0), Permit)
    server.stop()
    with caplog.at_level(logging.INFO, logger="airflow_banana.routing.redis_state"):
        apart = one.try_acquire("a", T0 + 10)  # local state: the next slot, spent while apart
        assert isinstance(apart, Permit) and not one.shared
        server.start()
        assert isinstance(one.try_acquire("a", T0 + 12), Denial) and not one.shared  # not yet due
        assert isinstance(one.try_acquire("a", T0 + 16), Denial) and one.shared  # rejoined
    assert one.rejoins == 1
    assert [r.levelno for r in caplog.records].count(logging.WARNING) == 1
    assert any("answers again" in r.getMessage() for r in caplog.records)
    # another worker sees the slot spent apart and the permit still in flight
    two = redis_backend(server.url, namespace="rejoin", rng=random.Random(2))
    two.register("a", _rated())
    denied = two.try_acquire("a", T0 + 17)
    assert isinstance(denied, Denial) and denied.reason is DenialReason.RATE_LIMIT
    assert two.snapshot("a", T0 + 17).in_flight == 2
    one.record(apart, OK, T0 + 18)  # the permit taken apart is released in the shared record
    assert two.snapshot("a", T0 + 18).in_flight == 1


def test_rejoin_keeps_the_stricter_gates() -> None:
    shared, local = ChannelRecord(), ChannelRecord()
    shared.rpm.tat, local.rpm.tat = 50.0, 70.0
    shared.retry_hint_until, local.retry_hint_until = 90.0, 10.0
    shared.in_flight, local.in_flight = {"a#1": 60.0}, {"a#7": 80.0}
    shared.permits_issued, local.permits_issued = 2, 8
    local.breaker.state = BreakerState.OPEN
    rejoin(shared, local)
    assert (shared.rpm.tat, shared.retry_hint_until, shared.permits_issued) == (70.0, 90.0, 8)
    assert shared.in_flight == {"a#1": 60.0, "a#7": 80.0} and shared.breaker.state is BreakerState.OPEN
    fresh = ChannelRecord()
    rejoin(fresh, local)  # Redis came back empty: the local record is taken whole
    assert record_to_dict(fresh) == record_to_dict(local)
