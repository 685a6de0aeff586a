"""FAULTS.md R1–R14 against the real simulator over HTTP, through the ``RealtimeEngine``.

Every scenario runs three real channels (an OpenAI-compatible relay, Gemini Developer, Vertex)
built with ``parse_channel`` from ``AIRFLOW_CONN_*``-shaped JSON pointing at a simulator on
127.0.0.1, and ends with the same two proofs: nothing lost (each item has an image or a
recorded, explained failure in its metadata and the run report) and nothing paid twice (the
simulator's billing ledger holds each request fingerprint at most once).

Time is compressed so the file runs in seconds: the simulator's quota minute is 1 s and its day
3 s, attempt timeouts are fractions of a second, and breaker/backoff durations are scaled down
through ``RouterConfig`` and ``BreakerConfig`` (the engine takes any router).

The simulator here is module-scoped and mounts only the generation routes: these tests need
their own quota day and must not depend on batch/files routes other lanes are still building.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import math
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from realtime_sim import (
    DAY_S,
    FAST_BREAKER,
    FAST_ROUTER,
    FAST_THROTTLE,
    GEMINI,
    GENERATION_ROUTES,
    KEYS,
    MINUTE_S,
    PROTOCOLS,
    RELAY,
    RELAY_PRICES,
    VERTEX,
    three_channels,
    work_items,
)

from airflow_banana.channels import build_channel
from airflow_banana.channels.config import ChannelConfig
from airflow_banana.realtime.engine import RealtimeEngine, RealtimeSettings, RunResult, WorkItem
from airflow_banana.routing import BreakerConfig, RouterConfig, SystemClock, router_for
from airflow_banana.routing.clock import next_daily_reset
from airflow_banana.routing.state import ChannelEvent, Denial, InMemoryStateBackend, Outcome, Permit
from airflow_banana.storage.objects import open_storage
from airflow_banana.storage.outputs import OutputStore
from airflow_banana.storage.report import build_report
from airflow_banana.testing import FaultProfile
from airflow_banana.testing.config import SimulatorConfig
from airflow_banana.testing.connections import channel_connection
from airflow_banana.testing.server import Simulator

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rt_simulator() -> Iterator[Simulator]:
    # The first google-genai call imports the SDK (~0.4 s) ON the event loop, inside the first
    # attempt's timeout; R6 measures sub-second timeouts, so pay the import before any test.
    importlib.import_module("google.genai")
    with Simulator(SimulatorConfig(minute_s=MINUTE_S, day_s=DAY_S), modules=GENERATION_ROUTES) as simulator:
        yield simulator


@pytest.fixture
def rsim(rt_simulator: Simulator) -> Iterator[Simulator]:
    rt_simulator.reset(faults=True)
    for name, key in KEYS.items():
        rt_simulator.set_faults(key, FaultProfile(name=name))
    yield rt_simulator
    rt_simulator.reset(faults=True)


def faults(sim: Simulator, channel: str, **profile: Any) -> None:
    """Give ``channel``'s key a profile (its outage clock starts at the key's next request)."""
    sim.set_faults(KEYS[channel], FaultProfile(name=channel, **profile))


@dataclass
class Run:
    result: RunResult
    report: dict[str, Any]
    store: OutputStore
    work: list[WorkItem]
    elapsed_s: float

    def meta(self, item_id: str) -> dict[str, Any]:
        return self.store.storage.read_json(self.store.metadata_uri(item_id))

    def by_status(self, status: str) -> list[str]:
        return [o.item_id for o in self.result.outcomes if o.status == status]


def run_engine(
    sim: Simulator,
    configs: Sequence[ChannelConfig],
    work: list[WorkItem],
    out: Path,
    *,
    router: Mapping[str, Any] | None = None,
    settings: RealtimeSettings | None = None,
    breaker: BreakerConfig | None = FAST_BREAKER,
    backend: InMemoryStateBackend | None = None,
) -> Run:
    """One engine run over real channels, then the run report, as the operator writes it."""
    config = RouterConfig(**{**FAST_ROUTER, **dict(router or {})})
    rt = router_for(
        configs,
        SystemClock(),
        random.Random(11),
        backend,
        config=config,
        breaker=breaker,
        throttle=FAST_THROTTLE,
    )
    store = OutputStore(open_storage(), str(out))
    channels = {c.name: build_channel(c) for c in configs}
    engine = RealtimeEngine(
        channels=channels,
        router=rt,
        store=store,
        run_key="faults-run",
        settings=settings or RealtimeSettings(progress_interval_s=60.0),
    )

    async def go() -> RunResult:
        try:
            return await engine.run(work)
        finally:
            for channel in channels.values():
                await channel.aclose()

    started = time.monotonic()
    result = asyncio.run(go())
    elapsed = time.monotonic() - started
    report = build_report(
        result.outcomes,
        run_key="faults-run",
        lane="realtime",
        started_at=result.started_at,
        finished_at=result.finished_at,
        budget_usd=config.budget_usd,
        breaker_openings=result.breaker_openings,
    )
    store.write_report("faults-run", report)
    return Run(result, report, store, work, elapsed)


def assert_nothing_lost_nor_paid_twice(sim: Simulator, run: Run) -> None:
    """The two invariants of every FAULTS.md row."""
    fingerprints = {w.request.item_id: w.request.fingerprint() for w in run.work}
    assert len(run.result.outcomes) == len(run.work)
    images = {Path(u).stem: u for u in run.store.storage.list(run.store.prefix + "/images/")}
    for w in run.work:
        item_id = w.request.item_id
        meta = run.meta(item_id)
        assert meta["request_fingerprint"] == fingerprints[item_id]
        if meta["status"] == "succeeded":
            assert run.store.storage.exists(meta["image"]["uri"]), item_id
            assert meta["attempts"][-1]["outcome"] == "success"
        else:
            assert meta["status"] in ("failed", "not_attempted"), meta
            assert meta["reason"], f"{item_id} failed without a reason"
            assert item_id not in images, f"{item_id} failed but an image was left behind"
    failed = {f["item_id"]: f["reason"] for f in run.report["failed_items"]}
    assert set(failed) == set(run.by_status("failed")) | set(run.by_status("not_attempted"))
    assert all(failed.values())

    billable = sim.billable()
    paid = [b["fingerprint"] for b in billable]
    assert len(paid) == len(set(paid)), "an item was paid twice"
    assert set(paid) <= set(fingerprints.values())
    succeeded = {fingerprints[i] for i in run.by_status("succeeded")}
    assert succeeded <= set(paid)
    # the report's spend is what the channels billed (relay 0.05, Google 0.134 per 1K image)
    prices = {RELAY: 0.05, GEMINI: 0.134, VERTEX: 0.134}
    assert run.report["cost"]["spent_usd"] == pytest.approx(sum(prices[b["key_id"]] for b in billable))


def requests_of(sim: Simulator, channel: str, *, fault: str | None = "*") -> list[dict[str, Any]]:
    """Generation requests (not metadata calls) of one channel, each with its arrival time."""
    out = []
    for r in sim.requests(channel):
        if r["method"] != "POST":
            continue
        if fault != "*" and r["fault"] != fault:
            continue
        out.append({**r, "arrived": r["ts"] - r["latency_ms"] / 1000.0})
    return sorted(out, key=lambda r: r["arrived"])


def channels_used(run: Run) -> dict[str, int]:
    used: dict[str, int] = {}
    for o in run.result.outcomes:
        if o.channel:
            used[o.channel] = used.get(o.channel, 0) + 1
    return used


# ----------------------------------------------------------------------------- R1


def test_r1_peak_503s_every_item_done_with_calls_and_cost_per_success(rsim, tmp_path):
    faults(rsim, RELAY, overload_rate=0.45, latency_ms=(10.0, 40.0))
    run = run_engine(rsim, three_channels(rsim), work_items(30), tmp_path)

    assert run.by_status("succeeded") == [w.request.item_id for w in run.work]
    assert len(requests_of(rsim, RELAY, fault="overload")) > 0
    assert run.report["calls"]["per_success"] > 1.0
    cost = run.report["cost"]["cost_per_success_usd"]
    # riding out free 503s on the 0.05 relay beats Google direct's 0.134 list price
    assert cost < 0.134
    assert run.report["cost"]["savings_vs_direct_usd"] > 0
    assert_nothing_lost_nor_paid_twice(rsim, run)


# ----------------------------------------------------------------------------- R2


class PermitLog(InMemoryStateBackend):
    """The in-memory backend, noting when each permit was granted and handed back."""

    def __init__(self) -> None:
        super().__init__(random.Random(11))
        self.permits: dict[str, tuple[Permit, float]] = {}

    def try_acquire(
        self, channel: str, now: float, *, images: int = 1, urgent: bool = False
    ) -> Permit | Denial:
        granted = super().try_acquire(channel, now, images=images, urgent=urgent)
        if isinstance(granted, Permit):
            self.permits[granted.permit_id] = (granted, math.inf)
        return granted

    def record(self, permit: Permit, outcome: Outcome, now: float) -> tuple[ChannelEvent, ...]:
        self.permits[permit.permit_id] = (permit, now)
        return super().record(permit, outcome, now)


def test_r2_breaker_opens_traffic_moves_one_probe_and_the_channel_returns(rsim, tmp_path):
    outage_s = 1.0
    faults(rsim, GEMINI, outage_duration_s=outage_s, latency_ms=(40.0, 60.0))
    for name in (RELAY, VERTEX):
        faults(rsim, name, latency_ms=(150.0, 200.0))
    configs = three_channels(rsim, **{n: {"max_concurrency": 2} for n in (RELAY, GEMINI, VERTEX)})
    breaker = BreakerConfig(
        consecutive_failures=3, window_s=3.0, bucket_s=0.25, base_open_s=0.25, max_open_s=0.5,
        jitter=0.0, probe_lease_s=2.0,
    )  # fmt: skip
    permits = PermitLog()
    run = run_engine(
        rsim,
        configs,
        work_items(60),
        tmp_path,
        router={"priority": (GEMINI,)},
        breaker=breaker,
        backend=permits,
    )

    assert run.result.breaker_openings[GEMINI] >= 1
    outage_503 = requests_of(rsim, GEMINI, fault="outage")
    # the breaker stops the storm: 3 in a row (+ what was already in flight), then one probe
    # per opening — never every waiting caller at once
    assert len(outage_503) <= 3 + 2 + run.result.breaker_openings[GEMINI]
    on_gemini = [(p, back) for p, back in permits.permits.values() if p.channel == GEMINI]
    probes = [(p, back) for p, back in on_gemini if p.probe]
    assert probes, "the open breaker was never probed"
    for probe, back in probes:
        overlapping = [
            p for p, _ in on_gemini if p is not probe and probe.acquired_at <= p.acquired_at < back
        ]
        assert not overlapping, "a call went to the channel while its half-open probe was out"
    during = [o for o in run.result.outcomes if o.channel in (RELAY, VERTEX)]
    assert during, "traffic did not move to the other channels"
    # the simulator's outage clock starts at the key's first request
    ended = requests_of(rsim, GEMINI)[0]["arrived"] + outage_s
    back = [r for r in requests_of(rsim, GEMINI, fault=None) if r["ts"] > ended]
    assert back, "the channel did not return after the outage"
    assert_nothing_lost_nor_paid_twice(rsim, run)


# ----------------------------------------------------------------------------- R3


def test_r3_no_call_before_retry_delay_ends_and_others_keep_working(rsim, tmp_path):
    delay = 0.6
    faults(rsim, GEMINI, rate_limit_rate=0.5, retry_delay_s=delay, latency_ms=(20.0, 40.0))
    for name in (RELAY, VERTEX):
        faults(rsim, name, latency_ms=(80.0, 120.0))
    run = run_engine(rsim, three_channels(rsim), work_items(30), tmp_path, router={"priority": (GEMINI,)})

    gemini = requests_of(rsim, GEMINI)
    limited = [r for r in gemini if r["fault"] == "rate_limit"]
    assert limited, "the scenario produced no 429"
    for hit in limited:
        # calls already let through when the 429 was sent may land just after it (on a loaded
        # 2-core machine up to ~0.15 s: seen in CI-like runs); nothing later within the delay
        early = [r for r in gemini if hit["ts"] + 0.25 < r["arrived"] < hit["ts"] + delay - 0.05]
        assert not early, f"called {early[0]['arrived'] - hit['ts']:.3f}s after a {delay}s retryDelay"
    used = channels_used(run)
    assert used.get(RELAY, 0) + used.get(VERTEX, 0) > 0
    assert len(run.by_status("succeeded")) == 30
    assert_nothing_lost_nor_paid_twice(rsim, run)


# ----------------------------------------------------------------------------- R4


def test_r4_daily_quota_benches_the_channel_until_the_reset(rsim, tmp_path):
    faults(rsim, GEMINI, rpd=3, latency_ms=(20.0, 30.0))
    for name in (RELAY, VERTEX):
        faults(rsim, name, latency_ms=(100.0, 140.0))
    configs = three_channels(rsim, **{n: {"max_concurrency": 1} for n in (RELAY, GEMINI, VERTEX)})
    run = run_engine(
        rsim,
        configs,
        work_items(24),
        tmp_path,
        router={"priority": (GEMINI,), "quota_day_length_s": DAY_S},
    )

    gemini = requests_of(rsim, GEMINI)
    quota = [r for r in gemini if r["fault"] == "quota"]
    assert quota, "the scenario never exhausted the daily quota"
    for hit in quota:
        reset = next_daily_reset(hit["ts"], day_length_s=DAY_S)
        hammering = [r for r in gemini if hit["ts"] + 0.05 < r["arrived"] < reset - 0.05]
        assert not hammering, "called a channel benched until the daily reset"
    assert len(quota) <= run.elapsed_s / DAY_S + 2
    assert len(run.by_status("succeeded")) == 24
    assert_nothing_lost_nor_paid_twice(rsim, run)


# ----------------------------------------------------------------------------- R5

# The simulator's minute is 1 s but a stall is not compressed: a request delayed in transit by
# ``d`` more than the one ``rpm`` places after it lands in the same simulator minute once ``d``
# exceeds the guard. FAST_ROUTER's 0.1 s (10 % of the minute; production's 0.5 s is 0.8 %) was
# exceeded once in CI (2 cores, the whole suite in one process, the simulator a thread of it:
# several 429s on one channel in one burst), so these two tests allow a 0.3 s stall. They still
# run every channel at 1 / 1.3 of its cap and assert the throughput that gives.
R5_ROUTER = {"rate_guard_s": 0.3}


def test_r5_client_side_limits_keep_us_under_the_providers_rpm(rsim, tmp_path):
    sim_rpm = 8  # per simulator minute (1 s)
    for name in (RELAY, GEMINI, VERTEX):
        faults(rsim, name, rpm=sim_rpm, latency_ms=(5.0, 15.0))
    ours = sim_rpm  # per the simulator's minute (FAST_ROUTER's rate_minute_s): AT the cap
    configs = three_channels(
        rsim, **{n: {"rpm": ours, "ipm": ours, "max_concurrency": 4} for n in (RELAY, GEMINI, VERTEX)}
    )
    # "fastest": every channel carries load, one task keeps all of them at their caps
    run = run_engine(rsim, configs, work_items(48), tmp_path, router={**R5_ROUTER, "objective": "fastest"})

    statuses = [r["status"] for r in rsim.requests() if r["method"] == "POST"]
    assert 429 not in statuses, "our own rate caused a 429"
    assert len(run.by_status("succeeded")) == 48
    assert set(channels_used(run)) == {RELAY, GEMINI, VERTEX}
    sum_of_caps = 3 * ours / MINUTE_S
    assert 48 / run.elapsed_s >= 0.6 * sum_of_caps
    assert_nothing_lost_nor_paid_twice(rsim, run)


def test_r5_cost_first_runs_the_cheap_channel_at_its_cap_without_a_429(rsim, tmp_path):
    sim_rpm = 8
    for name in (RELAY, GEMINI, VERTEX):
        faults(rsim, name, rpm=sim_rpm, latency_ms=(5.0, 15.0))
    ours = sim_rpm
    configs = three_channels(
        rsim, **{n: {"rpm": ours, "ipm": ours, "max_concurrency": 4} for n in (RELAY, GEMINI, VERTEX)}
    )
    run = run_engine(rsim, configs, work_items(24), tmp_path, router=R5_ROUTER)  # default horizon: room

    statuses = [r["status"] for r in rsim.requests() if r["method"] == "POST"]
    assert 429 not in statuses, "our own rate caused a 429"
    assert len(run.by_status("succeeded")) == 24
    assert set(channels_used(run)) == {RELAY}  # the cheap one alone, at its cap
    assert 24 / run.elapsed_s >= 0.6 * ours / MINUTE_S
    assert_nothing_lost_nor_paid_twice(rsim, run)


# ----------------------------------------------------------------------------- R6


def test_r6_silent_channel_abandoned_after_the_first_timeout(rsim, tmp_path):
    faults(rsim, VERTEX, hang_rate=1.0)
    configs = three_channels(rsim, vertex={"timeout": 0.4, "max_concurrency": 3})
    run = run_engine(rsim, configs, work_items(12), tmp_path, router={"priority": (VERTEX,)})

    hangs = requests_of(rsim, VERTEX, fault="hang")
    assert hangs
    assert len(hangs) <= len(run.work), "the silent channel got more than one request per item"
    for w in run.work:
        meta = run.meta(w.request.item_id)
        on_vertex = [a for a in meta["attempts"] if a["channel"] == VERTEX]
        assert len(on_vertex) <= 1
        assert all(a["outcome"] == "timeout" for a in on_vertex)
        assert meta["status"] == "succeeded"
        if on_vertex:  # failed over right after the first timeout
            assert meta["attempts"][1]["channel"] != VERTEX
    assert_nothing_lost_nor_paid_twice(rsim, run)


def test_r6_calls_sent_into_a_hang_near_the_deadline_are_cut_and_rescued_in_time(rsim, tmp_path):
    """Every item due in 6 s; the cheap relay takes them all and hangs. Its 8 s timeout would
    end past the deadline (before this rule the items failed there); the calls are cut once a
    healthy relay (prior call 2 s) would almost never be that silent, and the items rescued."""
    faults(rsim, RELAY, hang_rate=1.0)
    configs = three_channels(
        rsim, relay={"timeout": 8, "max_concurrency": 12}, gemini={"timeout": 2}, vertex={"timeout": 2}
    )
    run = run_engine(rsim, configs, work_items(12, deadline_s=6.0), tmp_path)

    assert run.by_status("succeeded") == [w.request.item_id for w in run.work]
    for w in run.work:
        attempts = run.meta(w.request.item_id)["attempts"]
        assert attempts[0]["channel"] == RELAY and attempts[0]["outcome"] == "timeout"
        assert attempts[-1]["channel"] != RELAY
    assert run.elapsed_s < 6.0
    assert_nothing_lost_nor_paid_twice(rsim, run)


# ----------------------------------------------------------------------------- R7, R8


def test_r7_resets_are_retried_or_failed_over(rsim, tmp_path):
    faults(rsim, RELAY, reset_rate=0.5)
    run = run_engine(rsim, three_channels(rsim), work_items(16), tmp_path)

    assert requests_of(rsim, RELAY, fault="reset")
    assert len(run.by_status("succeeded")) == 16
    errors = run.report["channels"][RELAY]["errors"]
    assert errors.get("retryable", 0) >= 1
    assert_nothing_lost_nor_paid_twice(rsim, run)


def test_r8_truncated_or_malformed_200_is_never_stored_and_retried(rsim, tmp_path):
    faults(rsim, GEMINI, truncated_rate=0.3, malformed_rate=0.3)
    run = run_engine(rsim, three_channels(rsim), work_items(16), tmp_path, router={"priority": (GEMINI,)})

    broken = requests_of(rsim, GEMINI, fault="truncated") + requests_of(rsim, GEMINI, fault="malformed")
    assert broken
    assert len(run.by_status("succeeded")) == 16
    for w in run.work:
        meta = run.meta(w.request.item_id)
        assert meta["image"]["mime_type"] == "image/png"
        reasons = [a["reason"] for a in meta["attempts"] if a["outcome"] != "success"]
        assert all("malformed" in r or "truncated" in r or r for r in reasons)
    assert_nothing_lost_nor_paid_twice(rsim, run)


# ----------------------------------------------------------------------------- R9, R10


def test_r9_no_image_retried_a_bounded_number_of_times_then_recorded(rsim, tmp_path):
    work = work_items(6, prompts={2: "a lamp [sim:no_image]"})
    run = run_engine(rsim, three_channels(rsim), work, tmp_path)

    meta = run.meta("item-002")
    assert meta["status"] == "failed"
    assert [a["outcome"] for a in meta["attempts"]] == ["no_image"] * 3  # 1 + max_no_image_retries
    assert "no_image" in meta["reason"] and "without an image" in meta["reason"]
    assert len(run.by_status("succeeded")) == 5
    assert_nothing_lost_nor_paid_twice(rsim, run)


@pytest.mark.parametrize(
    ("marker", "words"),
    [
        ("[sim:400]", ("invalid",)),
        ("[sim:blocked]", ("block", "safety")),
        ("[sim:image_safety]", ("safety",)),
    ],
)
def test_r10_terminal_item_errors_are_not_retried_nor_failed_over(rsim, tmp_path, marker, words):
    work = work_items(4, prompts={1: f"a chair {marker}"})
    run = run_engine(rsim, three_channels(rsim), work, tmp_path)

    meta = run.meta("item-001")
    assert meta["status"] == "failed"
    assert len(meta["attempts"]) == 1, "a terminal verdict was retried or failed over"
    assert meta["attempts"][0]["outcome"] == "item_terminal"
    assert "not failed over" in meta["reason"]
    assert any(w in (meta["reason"] + meta["attempts"][0]["reason"]).lower() for w in words)
    assert len(run.by_status("succeeded")) == 3
    assert_nothing_lost_nor_paid_twice(rsim, run)


# ----------------------------------------------------------------------------- R11


@pytest.mark.parametrize("status", [401, 403, 404])
def test_r11_fatal_channel_disabled_for_the_run_others_used(rsim, tmp_path, status):
    faults(rsim, GEMINI, fixed_status=status)
    configs = three_channels(rsim, gemini={"max_concurrency": 2})
    run = run_engine(rsim, configs, work_items(10), tmp_path, router={"priority": (GEMINI,)})

    # only what was in flight when the first answer came back; never again afterwards
    assert len(requests_of(rsim, GEMINI)) <= 2
    assert run.report["channels"][GEMINI]["errors"] == {"channel_fatal": len(requests_of(rsim, GEMINI))}
    assert len(run.by_status("succeeded")) == 10
    assert GEMINI not in channels_used(run)
    attempt = next(a for o in run.result.outcomes for a in o.attempts if a.channel == GEMINI)
    assert attempt.status_code == status and attempt.reason
    assert_nothing_lost_nor_paid_twice(rsim, run)


# ----------------------------------------------------------------------------- R12


def test_r12_jpeg_declared_png_stored_as_jpg_and_size_mismatch_recorded(rsim, tmp_path):
    work = work_items(4, prompts={0: "a mug [sim:jpeg_as_png]", 1: "a vase [sim:wrong_size]"})
    run = run_engine(rsim, three_channels(rsim), work, tmp_path)

    jpeg = run.meta("item-000")
    assert jpeg["image"]["uri"].endswith("images/item-000.jpg")
    assert jpeg["image"]["mime_type"] == "image/jpeg"
    assert jpeg["image"]["declared_mime_type"] == "image/png"
    assert run.store.storage.read_bytes(jpeg["image"]["uri"])[:3] == b"\xff\xd8\xff"
    wrong = run.meta("item-001")
    assert wrong["image"]["size_matches"] is False
    assert (wrong["image"]["width"], wrong["image"]["height"]) != (
        wrong["image"]["expected_width"],
        wrong["image"]["expected_height"],
    )
    assert run.report["size_mismatches"] == ["item-001"]
    assert len(run.by_status("succeeded")) == 4
    assert_nothing_lost_nor_paid_twice(rsim, run)


# ----------------------------------------------------------------------------- R13


def test_r13_all_channels_down_items_fail_cleanly_at_the_deadline(rsim, tmp_path):
    for name in (RELAY, GEMINI, VERTEX):
        faults(rsim, name, fixed_status=503)
    run = run_engine(rsim, three_channels(rsim), work_items(8, deadline_s=1.5), tmp_path)

    assert run.elapsed_s < 6.0, "items were not given up at their deadline"
    assert run.by_status("succeeded") == []
    assert not list(run.store.storage.list(run.store.prefix + "/images/")), "half-written images"
    for failure in run.report["failed_items"]:
        assert "deadline" in failure["reason"] or "retry budget" in failure["reason"], failure
    assert run.report["items"]["failed"] + run.report["items"]["not_attempted"] == 8
    assert run.report["cost"]["spent_usd"] == 0
    md = run.store.storage.read_bytes(run.store.run_uri("faults-run", "report.md")).decode()
    assert "Items without an image" in md and "deadline" in md
    assert not rsim.billable()
    assert_nothing_lost_nor_paid_twice(rsim, run)


# ----------------------------------------------------------------------------- R14


def test_r14_primary_flaps_served_by_others_then_back_on_the_primary(rsim, tmp_path, caplog):
    outage_start, outage_s = 0.4, 1.2
    faults(rsim, RELAY, outage_start_s=outage_start, outage_duration_s=outage_s, latency_ms=(60.0, 80.0))
    for name in (GEMINI, VERTEX):
        faults(rsim, name, latency_ms=(60.0, 80.0))
    # the cheap primary also has the most capacity, as a flat-price relay typically does
    configs = three_channels(
        rsim,
        relay={"max_concurrency": 4, "rpm": 20},  # per simulator minute (1 s)
        gemini={"max_concurrency": 2, "rpm": 10},
        vertex={"max_concurrency": 2, "rpm": 10},
    )
    settings = RealtimeSettings(progress_interval_s=0.3)
    with caplog.at_level(logging.INFO, logger="airflow_banana.realtime.engine"):
        # "fastest": served by the others at once (cost-first waits out a short outage when the
        # deadline allows: tests/unit/test_router_scenarios.py R14 covers both)
        run = run_engine(
            rsim, configs, work_items(80), tmp_path, settings=settings, router={"objective": "fastest"}
        )

    began = requests_of(rsim, RELAY)[0]["arrived"]  # the outage clock starts at the first request
    ended = began + outage_start + outage_s
    served = {name: [b["ts"] for b in rsim.billable(name)] for name in (RELAY, GEMINI, VERTEX)}
    during = [t for n in (GEMINI, VERTEX) for t in served[n] if began + outage_start < t < ended]
    assert during, "nothing was served while the primary was down"
    assert not [t for t in served[RELAY] if began + outage_start + 0.1 < t < ended]
    relay_after = sorted(t for t in served[RELAY] if t > ended)
    assert relay_after, "never came back to the cheap primary"
    assert relay_after[0] - ended < 1.5, "came back to the primary too late"
    after = [n for n in served for t in served[n] if t > relay_after[0]]
    assert after.count(RELAY) >= 0.4 * len(after), "after recovery the primary should carry its share"
    assert len(run.by_status("succeeded")) == 80
    # progress lines with done/total, rate, spend, ETA and channel states
    progress = [r.getMessage() for r in caplog.records if "progress:" in r.getMessage()]
    assert progress and "/80 items done" in progress[0] and "ETA" in progress[0] and "relay=" in progress[0]
    assert any("finished: 80/80" in r.getMessage() for r in caplog.records)
    assert_nothing_lost_nor_paid_twice(rsim, run)


# ----------------------------------------------------------------------------- S10, alerts


def test_s10_budget_cap_stops_before_exceeding_and_reports_what_is_left(rsim, tmp_path):
    run = run_engine(rsim, three_channels(rsim), work_items(10), tmp_path, router={"budget_usd": 0.30})

    spent = run.report["cost"]["spent_usd"]
    assert spent <= 0.30 + 1e-9
    assert len(run.by_status("succeeded")) == 6  # 6 x 0.05 on the relay; nothing dearer fits
    left = run.by_status("not_attempted")
    assert len(left) == 4
    assert all("budget" in f["reason"] for f in run.report["failed_items"])
    assert_nothing_lost_nor_paid_twice(rsim, run)


def _alerting_settings(calls: list[Mapping[str, Any]], *, raises: bool) -> RealtimeSettings:
    def callback(info: Mapping[str, Any]) -> None:
        calls.append(dict(info))
        if raises:
            raise RuntimeError("pager is down")

    return RealtimeSettings(progress_interval_s=60.0, on_failover_alert=callback)


@pytest.mark.parametrize("raises", [False, True])
def test_failover_alert_fires_above_threshold_and_a_failing_callback_does_not_fail_the_run(
    rsim, tmp_path, caplog, raises
):
    faults(rsim, RELAY, overload_rate=1.0)
    calls: list[Mapping[str, Any]] = []
    settings = _alerting_settings(calls, raises=raises)
    with caplog.at_level(logging.WARNING, logger="airflow_banana.realtime.engine"):
        run = run_engine(
            rsim, three_channels(rsim), work_items(8), tmp_path, settings=settings,
            router={"failover_alert_threshold": 2, "objective": "fastest"},
        )  # fmt: skip

    assert calls, "the failover alert never fired"
    assert calls[0]["failovers_last_hour"] > 2 and calls[0]["channel"] in (GEMINI, VERTEX)
    assert calls[0]["run_key"] == "faults-run"
    assert any("failover alert" in r.getMessage() for r in caplog.records)
    if raises:
        assert any("callback failed" in r.getMessage() for r in caplog.records)
    assert len(run.by_status("succeeded")) == 8
    assert_nothing_lost_nor_paid_twice(rsim, run)


# ----------------------------------------------------------------------------- the operator


class _TI:
    dag_id = "faults_dag"
    task_id = "generate"
    run_id = "manual__faults"
    map_index = -1


def _operator_context() -> dict[str, Any]:
    return {"ti": _TI(), "run_id": _TI.run_id, "logical_date": datetime.now(UTC)}


def _connections(sim: Simulator, monkeypatch: pytest.MonkeyPatch, **extra: Any) -> list[str]:
    from airflow_banana.testing.connections import conn_env_var

    ids = []
    for name in (RELAY, GEMINI, VERTEX):
        conn_id = f"banana_faults_{name}"
        prices = RELAY_PRICES if PROTOCOLS[name] == "openai" else None
        monkeypatch.setenv(
            conn_env_var(conn_id),
            channel_connection(
                sim.base_url, protocol=PROTOCOLS[name], key=KEYS[name], prices=prices, **extra
            ),
        )
        ids.append(conn_id)
    return ids


def test_operator_all_down_writes_the_report_then_fails_the_task_without_paying(rsim, tmp_path, monkeypatch):
    from airflow_banana.exceptions import BananaError
    from airflow_banana.operators import RealtimeImageOperator

    for name in (RELAY, GEMINI, VERTEX):
        faults(rsim, name, fixed_status=503)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({"id": f"p{i}", "prompt": f"product {i}", "deadline": "PT1S"}) + "\n" for i in range(4)
        )
    )
    out = tmp_path / "out"
    op = RealtimeImageOperator(
        task_id="generate",
        manifest=str(manifest),
        output_prefix=str(out),
        channels=_connections(rsim, monkeypatch, timeout=2),
        progress_interval_s=0.5,
        router_options={**FAST_ROUTER},
    )
    with pytest.raises(BananaError, match="4 item"):
        op.execute(_operator_context())  # type: ignore[arg-type]

    storage = open_storage()
    report = storage.read_json(str(out / "runs" / "faults_dag__generate__manual__faults" / "report.json"))
    assert report["items"]["succeeded"] == 0
    assert len(report["failed_items"]) == 4 and all(f["reason"] for f in report["failed_items"])
    assert not (out / "images").exists() or not any((out / "images").iterdir())
    assert not rsim.billable()


def test_operator_under_faults_returns_a_small_summary_and_pays_once(rsim, tmp_path, monkeypatch):
    from airflow_banana.operators import RealtimeImageOperator

    faults(rsim, RELAY, overload_rate=0.45)
    # every generation fails, its free preflight call does not (a 403 would leave it out at the start)
    faults(rsim, GEMINI, overload_rate=1.0)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "".join(json.dumps({"id": f"p{i}", "prompt": f"product {i}"}) + "\n" for i in range(8))
    )
    alerts: list[dict[str, Any]] = []
    op = RealtimeImageOperator(
        task_id="generate",
        manifest=str(manifest),
        output_prefix=str(tmp_path / "out"),
        channels=_connections(rsim, monkeypatch),
        failover_alert_threshold=1,
        on_failover_alert=lambda context: alerts.append(context["banana_alert"]),
        objective="fastest",  # fails over at once, so the failing channel and the alert are both reached
        router_options={**FAST_ROUTER},
    )
    summary = op.execute(_operator_context())  # type: ignore[arg-type]

    assert summary["items"]["succeeded"] == 8
    assert set(summary) == {
        "report_uri",
        "run_key",
        "output_prefix",
        "summary",
        "items",
        "spent_usd",
        "cost_per_success_usd",
        "images",
        "gallery_uri",
    }
    assert summary["output_prefix"] == str(tmp_path / "out") and len(summary["images"]) == 8
    assert all(open_storage().exists(uri) for uri in summary["images"].values())
    assert len(json.dumps(summary)) < 2000  # XCom carries URIs, no image bytes
    paid = [b["fingerprint"] for b in rsim.billable()]
    assert len(paid) == len(set(paid)) == 8
    assert KEYS[RELAY] not in json.dumps(summary)
    report = open_storage().read_json(summary["report_uri"])
    assert report["channels"][f"banana_faults_{GEMINI}"]["errors"].get("retryable", 0) >= 1
    assert report["channels_left_out"] == {}
    assert alerts and alerts[0]["failovers_last_hour"] > 1  # the notifier got the task context


def test_operator_waits_for_another_runs_claim_and_claim_ttl_none_turns_claims_off(
    rsim, tmp_path, monkeypatch
):
    from airflow_banana.exceptions import BananaError, ConfigurationError
    from airflow_banana.operators import RealtimeImageOperator
    from airflow_banana.realtime.claims import ItemClaims
    from airflow_banana.storage.outputs import OutputStore

    rows = [{"id": f"p{i}", "prompt": f"product {i}", "deadline": "PT2S"} for i in range(3)]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    claims = ItemClaims(OutputStore(open_storage(), str(out)))
    channels = _connections(rsim, monkeypatch)

    def operator(**kwargs: Any) -> RealtimeImageOperator:
        return RealtimeImageOperator(
            task_id="generate",
            manifest=str(manifest),
            output_prefix=str(out),
            channels=channels,
            router_options={**FAST_ROUTER},
            **kwargs,
        )

    with pytest.raises(ConfigurationError, match="claim_ttl_s"):
        operator(claim_ttl_s=0)
    # another run (a backfill, say) is generating these items right now
    for row in rows:
        assert claims.take(row["id"], "someone-elses-request", owner="backfill__generate", ttl_s=3600) is None
    with pytest.raises(BananaError, match="3 item"):
        operator().execute(_operator_context())  # type: ignore[arg-type]
    assert not rsim.billable()  # it waited for the other run instead of paying
    report = open_storage().read_json(
        str(out / "runs" / "faults_dag__generate__manual__faults" / "report.json")
    )
    assert all("backfill__generate" in f["reason"] for f in report["failed_items"])

    summary = operator(claim_ttl_s=None).execute(_operator_context())  # type: ignore[arg-type]
    assert summary["items"]["succeeded"] == 3 and len(rsim.billable()) == 3


def test_a_task_log_has_the_providers_lines_not_one_sdk_line_per_call(rsim, tmp_path, monkeypatch):
    from airflow_banana.operators import RealtimeImageOperator

    faults(rsim, GEMINI, overload_rate=0.3)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "".join(json.dumps({"id": f"p{i}", "prompt": f"product {i}"}) + "\n" for i in range(12))
    )
    channels = _connections(rsim, monkeypatch)
    op = RealtimeImageOperator(
        task_id="generate",
        manifest=str(manifest),
        output_prefix=str(tmp_path / "out"),
        channels=channels,
        priority=[channels[1]],  # Gemini through google-genai, where the SDK's own lines come from
        router_options={**FAST_ROUTER},
    )

    class Keep(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.INFO)
            self.records: list[logging.LogRecord] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.records.append(record)

    # Airflow's logging setup may stop propagation to the root: listen on each logger itself,
    # at the user's levels (outside Airflow's config, which sets httpx to WARN, they are unset)
    keep = Keep()
    for name in ("httpx", "httpcore", "google_genai", "airflow_banana"):
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "level", logger.level)  # restored after the test
        monkeypatch.setattr(logger, "propagate", False)
        logger.setLevel(logging.NOTSET if name != "airflow_banana" else logging.INFO)
        logger.addHandler(keep)
    root = logging.getLogger()
    monkeypatch.setattr(root, "level", root.level)
    root.setLevel(logging.INFO)
    try:
        summary = op.execute(_operator_context())  # type: ignore[arg-type]
    finally:
        for name in ("httpx", "httpcore", "google_genai", "airflow_banana"):
            logging.getLogger(name).removeHandler(keep)

    assert summary["items"]["succeeded"] == 12
    calls = [r for r in rsim.requests() if r["method"] == "POST"]
    assert len(calls) >= 12
    messages = [r.getMessage() for r in keep.records]
    assert not [m for m in messages if "HTTP Request:" in m], "the HTTP client logs every call"
    assert not [m for m in messages if "AFC is enabled" in m], "the SDK logs every call"
    ours = [r for r in keep.records if r.name.startswith("airflow_banana")]
    assert ours, "the provider's own lines were not captured"
    # at most one line per attempt, plus the run's own start, progress, report and finish lines
    assert len(ours) <= len(calls) + 10, [r.getMessage() for r in ours]


def test_operator_refuses_a_50_mb_line_and_an_over_limit_prompt_before_any_request(
    rsim, tmp_path, monkeypatch
):
    """Issue 16 end to end: nothing reaches a channel, the errors name line and field."""
    from airflow_banana.exceptions import ManifestError
    from airflow_banana.operators import RealtimeImageOperator

    manifest = tmp_path / "m.jsonl"
    with manifest.open("w") as out:
        out.write(json.dumps({"id": "ok", "prompt": "a small fox"}) + "\n")
        out.write('{"id": "huge", "prompt": "' + "x" * (50 * 1024 * 1024) + '"}\n')
        out.write(json.dumps({"id": "long", "prompt": "y" * 300_000}) + "\n")

    def operator(on_invalid: str) -> RealtimeImageOperator:
        return RealtimeImageOperator(
            task_id="generate",
            manifest=str(manifest),
            output_prefix=str(tmp_path / "out"),
            channels=_connections(rsim, monkeypatch, timeout=5),
            on_invalid=on_invalid,
            router_options={**FAST_ROUTER},
        )

    started = time.monotonic()
    with pytest.raises(ManifestError) as info:
        operator("reject").execute(_operator_context())  # type: ignore[arg-type]
    assert time.monotonic() - started < 2.0
    text = str(info.value)
    assert "2 invalid items; nothing was generated or spent" in text
    assert "line 2: line is 52428828 bytes long, over the 4194304-byte limit" in text
    assert "line 3 field 'prompt': prompt is 300000 characters, over the 262144" in text
    assert rsim.requests() == [] and rsim.billable() == []

    summary = operator("quarantine").execute(_operator_context())  # type: ignore[arg-type]
    assert summary["items"]["succeeded"] == 1 and len(rsim.billable()) == 1
    run_dir = tmp_path / "out" / "runs" / "faults_dag__generate__manual__faults"
    rejects = (run_dir / "rejects.jsonl").read_text()
    assert [json.loads(r)["line"] for r in rejects.splitlines()] == [2, 3]
    assert len(rejects) < 40_000  # the 50 MB line is summarised, not copied
