"""Two workers, one item: item claims keep overlapping runs from paying twice.

Real parts: the shipped simulator over HTTP (three channels, as ``test_realtime_faults.py``
builds them), local storage shared by the engines, and fake-gcs-server for the create-only
claim on ``gs://``. The simulator's billing ledger is the proof: each request fingerprint is
billed at most once, however many runs wanted the item.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from realtime_sim import (
    DAY_S,
    FAST_BREAKER,
    FAST_ROUTER,
    FAST_THROTTLE,
    GENERATION_ROUTES,
    KEYS,
    MINUTE_S,
    RELAY,
    three_channels,
    work_items,
)

from airflow_banana.channels import build_channel
from airflow_banana.exceptions import PreconditionFailedError
from airflow_banana.realtime.claims import ClaimHeld, ItemClaims
from airflow_banana.realtime.engine import RealtimeEngine, RealtimeSettings, RunResult, WorkItem
from airflow_banana.routing import RouterConfig, SystemClock, router_for
from airflow_banana.storage.objects import open_storage
from airflow_banana.storage.outputs import OutputStore
from airflow_banana.storage.report import NOT_ATTEMPTED, SKIPPED, SUCCEEDED, build_report
from airflow_banana.testing import FaultProfile
from airflow_banana.testing.config import SimulatorConfig
from airflow_banana.testing.server import Simulator

pytestmark = pytest.mark.integration

LATENCY_MS = (200.0, 400.0)
POLL_S = 0.05


@pytest.fixture(scope="module")
def claims_simulator() -> Iterator[Simulator]:
    importlib.import_module("google.genai")  # pay the SDK import before any timed call
    with Simulator(SimulatorConfig(minute_s=MINUTE_S, day_s=DAY_S), modules=GENERATION_ROUTES) as simulator:
        yield simulator


@pytest.fixture
def rsim(claims_simulator: Simulator) -> Iterator[Simulator]:
    claims_simulator.reset(faults=True)
    for name, key in KEYS.items():
        claims_simulator.set_faults(key, FaultProfile(name=name, latency_ms=LATENCY_MS))
    yield claims_simulator
    claims_simulator.reset(faults=True)


def settings(**kwargs: Any) -> RealtimeSettings:
    return RealtimeSettings(progress_interval_s=60.0, **{"claim_poll_s": POLL_S, **kwargs})


def run_engines(
    sim: Simulator,
    out: Path,
    runs: Mapping[str, RealtimeSettings],
    work: Sequence[WorkItem],
    *,
    router: Mapping[str, Any] | None = None,
) -> dict[str, RunResult]:
    """One engine per run key (its own channels and router, as separate workers have), all at once."""
    store = OutputStore(open_storage(), str(out))
    engines = {}
    channels = []
    for run_key, run_settings in runs.items():
        configs = three_channels(sim)
        rt = router_for(
            configs,
            SystemClock(),
            random.Random(len(engines)),
            config=RouterConfig(**{**FAST_ROUTER, **dict(router or {})}),
            breaker=FAST_BREAKER,
            throttle=FAST_THROTTLE,
        )
        built = {c.name: build_channel(c) for c in configs}
        channels.extend(built.values())
        engines[run_key] = RealtimeEngine(
            channels=built, router=rt, store=store, run_key=run_key, settings=run_settings
        )

    async def go() -> list[RunResult]:
        try:
            return await asyncio.gather(*(engine.run(list(work)) for engine in engines.values()))
        finally:
            for channel in channels:
                await channel.aclose()

    return dict(zip(engines, asyncio.run(go()), strict=True))


def by_status(result: RunResult, status: str) -> set[str]:
    return {o.item_id for o in result.outcomes if o.status == status}


def billed_fingerprints(sim: Simulator) -> list[str]:
    return [b["fingerprint"] for b in sim.billable()]


def plant_claims(out: Path, work: Sequence[WorkItem], *, owner: str, ttl_s: float) -> dict[str, Any]:
    """Claims as a worker that then died would have left them; returns the first one as stored."""
    store = OutputStore(open_storage(), str(out))
    claims = ItemClaims(store)
    for w in work:
        assert claims.take(w.request.item_id, w.request.fingerprint(), owner=owner, ttl_s=ttl_s) is None
    return dict(store.storage.read_json(store.claim_uri(work[0].request.item_id)))


# ----------------------------------------------------------------------------- two runs


def test_two_overlapping_runs_split_the_items_and_pay_for_each_once(rsim, tmp_path, caplog):
    work = work_items(12)
    fingerprints = {w.request.item_id: w.request.fingerprint() for w in work}
    # Few slots per run, so each run must move on to other items while the other one works:
    # an item waiting for the other run does not hold a slot.
    runs = {"run-a": settings(max_in_flight=3), "run-b": settings(max_in_flight=3)}
    with caplog.at_level(logging.INFO, logger="airflow_banana.realtime.engine"):
        results = run_engines(rsim, tmp_path, runs, work)

    store = OutputStore(open_storage(), str(tmp_path))
    for item_id, fp in fingerprints.items():
        assert store.done_record(item_id, fp) is not None, f"{item_id} has no image"
    paid = billed_fingerprints(rsim)
    assert sorted(paid) == sorted(fingerprints.values()), "an item was paid twice (or not at all)"

    made = {key: by_status(result, SUCCEEDED) for key, result in results.items()}
    assert made["run-a"] and made["run-b"], f"the items did not split: {made}"
    assert made["run-a"].isdisjoint(made["run-b"])
    assert made["run-a"] | made["run-b"] == set(fingerprints)
    for key, other in (("run-a", "run-b"), ("run-b", "run-a")):
        skipped = {o.item_id: o for o in results[key].outcomes if o.status == SKIPPED}
        assert set(skipped) == made[other], key
        for outcome in skipped.values():
            assert f"another worker ({other})" in outcome.reason and "not paid twice" in outcome.reason
            assert outcome.image_uri and store.storage.exists(outcome.image_uri)
            assert outcome.cost_usd == 0
    waits = [r.getMessage() for r in caplog.records if "waiting for its result" in r.getMessage()]
    assert waits, "no item waited for the other run"
    assert "instead of paying twice" in waits[0] and "(claim until 20" in waits[0]
    # claims are released after the commit: nothing is left for a later run to wait on
    assert list(store.storage.list(store.prefix + "/claims/")) == []
    # each run's report says what the other one bought
    for key, result in results.items():
        report = build_report(result.outcomes, run_key=key, lane="realtime", started_at="", finished_at="")
        assert report["items"]["succeeded"] + report["items"]["skipped"] == 12


def test_without_claims_two_overlapping_runs_pay_twice(rsim, tmp_path):
    """The gap claims close (and proof the test above can fail): switched off, items are bought twice."""
    work = work_items(4)
    runs = {"run-a": settings(claims=False), "run-b": settings(claims=False)}
    run_engines(rsim, tmp_path, runs, work)

    paid = billed_fingerprints(rsim)
    assert len(paid) > len(set(paid))
    assert not (tmp_path / "claims").exists()


def test_a_different_request_under_an_id_another_run_is_generating_fails_without_waiting(rsim, tmp_path):
    """Issue 15.1 while both run: one id, two requests; the second fails before any call instead
    of waiting for (and then overwriting) the first worker's image."""
    theirs = work_items(2)
    # short-lived: waiting it out (as for the same request) would then generate, and bill, ours
    plant_claims(tmp_path, theirs[:1], owner="run-a", ttl_s=1.0)
    ours = work_items(2, prompts={0: "a different prompt under the same id"})
    result = run_engines(rsim, tmp_path, {"run-b": settings()}, ours)["run-b"]
    (failed,) = [o for o in result.outcomes if o.status == "failed"]
    assert failed.item_id == "item-000" and failed.attempts == []
    assert "being generated right now by run-a for a different request" in failed.reason
    assert by_status(result, SUCCEEDED) == {"item-001"}
    assert billed_fingerprints(rsim) == [ours[1].request.fingerprint()]
    assert not (tmp_path / "metadata" / "item-000.json").exists()  # nothing written for it


# ----------------------------------------------------------------------------- dead workers


def test_a_dead_attempt_of_the_same_run_key_is_retaken_at_once(rsim, tmp_path, caplog):
    work = work_items(4)
    plant_claims(tmp_path, work, owner="run-a", ttl_s=900.0)
    started = time.monotonic()
    # a long poll: had any item waited for its own dead claim, this test would take 30 s+
    with caplog.at_level(logging.INFO, logger="airflow_banana.realtime.engine"):
        results = run_engines(rsim, tmp_path, {"run-a": settings(claim_poll_s=30.0)}, work)

    assert time.monotonic() - started < 10.0
    assert by_status(results["run-a"], SUCCEEDED) == {w.request.item_id for w in work}
    assert not [r for r in caplog.records if "waiting for its result" in r.getMessage()]
    paid = billed_fingerprints(rsim)
    assert sorted(paid) == sorted(w.request.fingerprint() for w in work)
    assert not list(open_storage().list(str(tmp_path / "claims") + "/"))


def test_a_claim_that_never_resolves_leaves_items_not_attempted_at_their_deadline(rsim, tmp_path):
    work = work_items(4, deadline_s=1.5)
    planted = plant_claims(tmp_path, work, owner="backfill__generate__run7", ttl_s=900.0)
    started = time.monotonic()
    results = run_engines(rsim, tmp_path, {"run-a": settings(claim_poll_s=0.2)}, work)
    elapsed = time.monotonic() - started

    result = results["run-a"]
    assert by_status(result, NOT_ATTEMPTED) == {w.request.item_id for w in work}
    assert 1.0 < elapsed < 6.0, "items were not given up at their deadline"
    expiry_iso = planted["expires_at_iso"][:16]  # to the minute: each item's claim is its own
    report = build_report(result.outcomes, run_key="run-a", lane="realtime", started_at="", finished_at="")
    assert len(report["failed_items"]) == 4
    for failure in report["failed_items"]:
        reason = failure["reason"]
        assert "backfill__generate__run7" in reason and "deadline" in reason, reason
        assert expiry_iso in reason and "a retry picks it up" in reason, reason
    assert not rsim.billable(), "a held item was paid for"
    assert not [r for r in rsim.requests() if r["method"] == "POST"], "a channel was called"
    # the holder's claims and (absent) metadata are untouched: it may still commit
    store = OutputStore(open_storage(), str(tmp_path))
    for w in work:
        assert (
            store.storage.read_json(store.claim_uri(w.request.item_id))["owner"] == "backfill__generate__run7"
        )
        assert not store.storage.exists(store.metadata_uri(w.request.item_id))


def test_a_waiting_item_frees_its_slot_and_takes_over_the_claim_when_it_expires(rsim, tmp_path):
    work = work_items(4)
    held, free = work[0], work[1:]
    expires = plant_claims(tmp_path, [held], owner="crashed-run", ttl_s=3.0)["expires_at"]
    # one slot: had the waiting item kept it, nothing else would start before the claim expired
    results = run_engines(rsim, tmp_path, {"run-a": settings(max_in_flight=1, claim_poll_s=0.1)}, work)

    assert by_status(results["run-a"], SUCCEEDED) == {w.request.item_id for w in work}
    billed = {b["fingerprint"]: b["ts"] for b in rsim.billable()}
    assert len(billed) == len(rsim.billable()) == 4
    assert all(billed[w.request.fingerprint()] < expires for w in free), "the others waited for the slot"
    assert billed[held.request.fingerprint()] > expires, "a live claim of another run was ignored"


@pytest.mark.parametrize("ttl_s", [0.3, 900.0])
def test_a_claim_is_renewed_before_an_attempt_once_half_its_ttl_is_gone(rsim, tmp_path, monkeypatch, ttl_s):
    # the cheap relay always answers 503 after 200-400 ms, so every item makes a second attempt
    rsim.set_faults(KEYS[RELAY], FaultProfile(name=RELAY, latency_ms=LATENCY_MS, overload_rate=1.0))
    renewals: list[tuple[str, float | None]] = []
    real_renew = ItemClaims.renew

    def spy(self: ItemClaims, item_id: str, *, owner: str, ttl_s: float) -> float | None:
        expiry = real_renew(self, item_id, owner=owner, ttl_s=ttl_s)
        renewals.append((item_id, expiry))
        return expiry

    monkeypatch.setattr(ItemClaims, "renew", spy)
    # due in 4 s: the items give the dead relay a try, then spill in time (cost-first would
    # otherwise wait for it within the default one-hour horizon)
    work = work_items(4, deadline_s=4.0)
    results = run_engines(rsim, tmp_path, {"run-a": settings(claim_ttl_s=ttl_s)}, work)

    assert by_status(results["run-a"], SUCCEEDED) == {w.request.item_id for w in work}
    assert all(len(o.attempts) >= 2 for o in results["run-a"].outcomes)
    if ttl_s < 1:  # the first attempt alone outlasts half the TTL: renewed before the second
        assert {item for item, _ in renewals} == {w.request.item_id for w in work}
        assert all(expiry is not None for _, expiry in renewals), "our own claim was not renewed"
        # a claim that expired during the last call is left to whoever comes next (harmless)
    else:  # plenty left: no storage round trip per attempt
        assert renewals == []
        assert not list(open_storage().list(str(tmp_path / "claims") + "/"))


# ----------------------------------------------------------------------------- GCS


def test_claims_are_create_only_on_gcs(gcs_bucket, run_together):
    store = OutputStore(open_storage(), f"gs://{gcs_bucket}/out")
    t = [1_700_000_000.0]
    a = ItemClaims(store, now=lambda: t[0])
    b = ItemClaims(store, now=lambda: t[0])

    assert a.take("mug", "fp", owner="run-a", ttl_s=60) is None
    assert b.take("mug", "fp", owner="run-b", ttl_s=60) == ClaimHeld("run-a", t[0] + 60)
    with pytest.raises(PreconditionFailedError):
        store.storage.write_json(store.claim_uri("mug"), {"owner": "run-b"}, if_absent=True)
    # a stale generation is refused too: a take-over can only replace what it read
    _, generation = store.storage.read_with_generation(store.claim_uri("mug"))
    assert a.renew("mug", owner="run-a", ttl_s=60) == t[0] + 60
    with pytest.raises(PreconditionFailedError):
        store.storage.write_json(store.claim_uri("mug"), {"owner": "run-b"}, if_generation_match=generation)
    t[0] += 61
    assert b.take("mug", "fp", owner="run-b", ttl_s=60) is None
    assert a.renew("mug", owner="run-a", ttl_s=60) is None  # taken over: logged, not raised
    a.release("mug", owner="run-a")
    assert store.storage.read_json(store.claim_uri("mug"))["owner"] == "run-b"
    b.release("mug", owner="run-b")
    assert not store.storage.exists(store.claim_uri("mug"))

    for r in range(5):  # two workers racing for the same fresh item: exactly one wins
        results = run_together(
            partial(a.take, f"race-{r}", "fp", owner="run-a", ttl_s=60),
            partial(b.take, f"race-{r}", "fp", owner="run-b", ttl_s=60),
        )
        assert sorted(held is None for held in results) == [False, True], results


def test_a_long_wait_for_the_cheap_channel_keeps_the_claim_alive(rsim, tmp_path, monkeypatch):
    """Cost-first waits can outlast a claim's TTL: the claim is renewed during the wait, not lost."""
    from realtime_sim import FAST_BREAKER, FAST_ROUTER, FAST_THROTTLE, RELAY, three_channels

    from airflow_banana.exceptions import ErrorClass
    from airflow_banana.routing.state import Outcome, Permit

    renewals: list[float | None] = []
    real_renew = ItemClaims.renew

    def spy(self: ItemClaims, item_id: str, *, owner: str, ttl_s: float) -> float | None:
        renewals.append(real_renew(self, item_id, owner=owner, ttl_s=ttl_s))
        return renewals[-1]

    monkeypatch.setattr(ItemClaims, "renew", spy)
    configs = three_channels(rsim)
    rt = router_for(
        configs, SystemClock(), random.Random(1), config=RouterConfig(**FAST_ROUTER),
        breaker=FAST_BREAKER, throttle=FAST_THROTTLE,
    )  # fmt: skip
    # the cheap relay is shut by a retry hint for 1.5 s, five times the claim's 0.3 s TTL
    permit = rt.backend.try_acquire(RELAY, rt.clock.now())
    assert isinstance(permit, Permit)
    closed = Outcome(ErrorClass.RATE_LIMITED, closed_until=rt.clock.now() + 1.5)
    rt.backend.record(permit, closed, rt.clock.now())
    built = {c.name: build_channel(c) for c in configs}
    store = OutputStore(open_storage(), str(tmp_path))
    engine = RealtimeEngine(
        channels=built, router=rt, store=store, run_key="run-a", settings=settings(claim_ttl_s=0.3)
    )

    async def go() -> RunResult:
        try:
            return await engine.run(work_items(1))
        finally:
            for channel in built.values():
                await channel.aclose()

    result = asyncio.run(go())
    (outcome,) = result.outcomes
    assert outcome.status == SUCCEEDED and outcome.channel == RELAY  # it waited for the cheap one
    assert len(renewals) >= 3 and all(expiry is not None for expiry in renewals), renewals
