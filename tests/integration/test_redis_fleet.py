"""Several worker PROCESSES share one channel's state through a real redis-server.

Each worker is ``python -m bench.redis_shared worker``: the real ``RealtimeEngine`` over its
shard of one manifest, against the simulator started here (quota minute = 1 s), recording every
permit, denial and channel event. Checked: the combined rate stays under the channel's cap with
no 429 caused by us; a breaker opened by one process stops every process at once, with exactly
one half-open probe per half-open period across all of them; and a Redis killed mid-run leaves a
run that still completes.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_banana.testing import FaultProfile, Simulator
from airflow_banana.testing.redis_fixtures import RedisServer

pytestmark = pytest.mark.integration

_PATH = Path(__file__).resolve().parents[2] / "bench" / "redis_shared.py"
_spec = importlib.util.spec_from_file_location("bench_redis_shared", _PATH)
assert _spec is not None and _spec.loader is not None
fleet_mod = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = fleet_mod
_spec.loader.exec_module(fleet_mod)


def _generate_calls(sim: Simulator, key: str) -> list[dict[str, Any]]:
    key_id = sim.key_id(key)
    return sorted(
        (e for e in sim.requests(key_id) if e["path"].endswith(":generateContent")), key=lambda e: e["ts"]
    )


def _max_in_window(times: list[float], window_s: float) -> int:
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


def _shards(workers: int, per_worker: int, tag: str) -> list[list[str]]:
    return [[f"{tag}-w{w}-{i:02d}" for i in range(per_worker)] for w in range(workers)]


def test_combined_rate_stays_under_the_cap_without_self_inflicted_429s(
    sim: Simulator, redis_url: str, tmp_path: Path
) -> None:
    cap = 8  # per simulated minute (1 s)
    sim.set_faults("fleet-rate", FaultProfile(name="rate", rpm=cap, latency_ms=(20.0, 60.0)))
    # every worker is configured with (a little under) the whole cap, as each would be in Airflow;
    # the limiter counts per the simulator's minute (SIM_ROUTER)
    channel = {"name": "gemini_direct", "key": "fleet-rate", "rpm": 0.75 * cap, "max_concurrency": 4}
    fleet = fleet_mod.start_fleet(
        tmp_path,
        base_url=sim.base_url,
        channels=[channel],
        shards=_shards(4, 6, "rate"),
        redis_url=redis_url,
        namespace="rate",
        router=fleet_mod.SIM_ROUTER,
    )
    started = fleet.go()
    results = fleet.wait(timeout_s=90)
    assert sum(r["statuses"].get("succeeded", 0) for r in results) == 24
    assert all(r["shared"] for r in results)
    calls = [e for e in _generate_calls(sim, "fleet-rate") if e["ts"] >= started]
    assert [e for e in calls if e["status"] == 429] == []  # no quota 429 caused by us
    assert len(calls) == 24
    assert _max_in_window([e["ts"] for e in calls], 1.0) <= cap
    # and the four processes really did compete for the one limit
    assert sum(r["denials"].get("rate_limit", 0) for r in results) > 0
    assert sum(1 for r in results if r["permits"]) == 4


def test_a_breaker_opened_in_one_process_stops_all_and_one_probe_goes_out(
    sim: Simulator, redis_url: str, tmp_path: Path
) -> None:
    sim.set_faults("fleet-down", FaultProfile(name="down", fixed_status=503))
    channel = {"name": "gemini_direct", "key": "fleet-down", "rpm": 6000, "max_concurrency": 8, "timeout": 2}
    breaker = {
        "consecutive_failures": 5,
        "minimum_calls": 1000,
        "base_open_s": 1.0,
        "max_open_s": 1.0,
        "jitter": 0.0,
    }
    router = {"retry_backoff_base_s": 0.05, "retry_backoff_max_s": 0.1, "max_attempts_per_item": 100}
    fleet = fleet_mod.start_fleet(
        tmp_path,
        base_url=sim.base_url,
        channels=[channel],
        shards=_shards(3, 3, "down"),
        redis_url=redis_url,
        namespace="down",
        breaker=breaker,
        router=router,
        item_deadline_s=3.5,
    )
    fleet.go()
    results = fleet.wait(timeout_s=90)
    permits = sorted((p for r in results for p in r["permits"]), key=lambda p: p["at"])
    opened = [e["at"] for r in results for e in r["events"] if e["event"] == "breaker_opened"]
    assert len(opened) == 1  # one opening for the whole fleet, not one per process
    first_open = opened[0]
    # after the opening no process got an ordinary permit: only probes, one per half-open period
    late = [p for p in permits if p["at"] >= first_open]
    assert late and all(p["probe"] for p in late)
    assert len({p["probe_id"] for p in late}) == len(late)
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(late)]
    assert all(gap >= 0.95 for gap in gaps)  # a failed probe reopens for 1 s: never 2 probes at once
    assert sum(1 for r in results if r["denials"].get("probe_in_flight")) >= 2  # they raced, and lost
    assert sum(1 for r in results if r["denials"].get("breaker_open")) == 3  # every process was stopped
    # the simulator saw nothing but probes from 1 s after the opening on
    calls = _generate_calls(sim, "fleet-down")
    assert len([e for e in calls if e["ts"] > first_open + 1.0]) <= len(late)
    assert len(calls) <= 5 + 8 + len(late)  # trip + whatever was in flight + probes


def test_redis_killed_mid_run_the_run_still_completes(
    sim: Simulator, redis_server_factory: Callable[[], RedisServer], tmp_path: Path
) -> None:
    server = redis_server_factory()
    sim.set_faults("fleet-kill", FaultProfile(name="kill", latency_ms=(50.0, 100.0)))
    channel = {"name": "gemini_direct", "key": "fleet-kill", "rpm": 600, "max_concurrency": 2}
    fleet = fleet_mod.start_fleet(
        tmp_path,
        base_url=sim.base_url,
        channels=[channel],
        shards=_shards(3, 8, "kill"),
        redis_url=server.url,
        namespace="kill",
    )
    started = fleet.go()
    limit = time.monotonic() + 20
    while len(_generate_calls(sim, "fleet-kill")) < 4 and time.monotonic() < limit:
        time.sleep(0.01)
    server.stop()  # SIGKILL, mid-run
    killed_at = time.time()
    results = fleet.wait(timeout_s=90)
    assert sum(r["statuses"].get("succeeded", 0) for r in results) == 24
    assert max(r["finished"] for r in results) > killed_at > started  # really mid-run
    assert not any(r["shared"] for r in results)
    for log in fleet.stderr():
        assert log.count("falling back to per-process state") == 1, log
