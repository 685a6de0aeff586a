"""Benchmark: the sharded example DAG on a real Airflow deployment, 4 shards at once, at the caps.

Why (issue 14): users split a catalog into shards that mapped tasks run at once on several
workers, all sharing one project quota through Redis. This starts the deployment of
``bench/deployment.py`` (LocalExecutor, parallelism 4), uploads the shards to fake-gcs-server,
triggers ``banana_catalog_sharded`` through the REST API and reads the simulator's ledger:

* throughput as a fraction of the sum of the channels' caps, three ways: calls the provider
  admitted per minute from the first call to the last (what a quota measures; the pass mark),
  images from the first call to the last image (the last call's latency in), and end to end
  (DAG run start to end: task start-up and Airflow's scheduling in);
* quota 429s we caused ourselves (simulator ``fault == "quota"``), the most requests any channel
  received in any 60 s window (must never exceed its cap), images paid twice, items lost.

Channels run at the provider's caps with the shipped defaults: each connection's ``rpm``/``ipm``
equals the simulator key's quota, quota minutes are real minutes, nothing is scaled.

Faults (``--fault``), each checked on the same ledger (nothing paid twice, nothing lost):

* ``kill-worker``: one shard's task process is SIGKILLed mid-run; Airflow retries the task
  instance, which skips finished items and re-takes its own claims;
* ``redis-restart``: redis-server is killed mid-run and comes back empty 5 s later; tasks go on
  with local state and rejoin;
* ``triggerer-restart``: a deferred batch job (``banana_batch_developer``) while the triggerer
  is restarted: one job, one outcome.

``python -m bench fleet [--items 400] [--shards 4] [--fault NAME]``; ``make fleet``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_banana.testing import FaultProfile
from airflow_banana.testing.config import BatchProfile
from bench.deployment import BUCKET, Deployment

DAG_ID = "banana_catalog_sharded"
BATCH_DAG_ID = "banana_batch_developer"
PRICE = 0.134  # Google's list price per 1K image, on every channel (the relay charges the same)
# requests (= images) per minute per channel: a Tier-3-like project split over three channels
CAPS = {"banana_relay": 40, "banana_gemini": 35, "banana_vertex": 25}
PROTOCOLS = {"banana_relay": "openai", "banana_gemini": "gemini", "banana_vertex": "vertex"}
LATENCY_MS = (3000.0, 9000.0)  # uniform: image generation takes seconds
MAX_CONCURRENCY = 8  # fleet-wide calls in flight per channel (shared through Redis)
FAULTS = ("none", "kill-worker", "redis-restart", "triggerer-restart")
# Airflow settings of the deployment: a task retry soon after a kill (the docs' 5 min is for
# breakers to half-open; here the kill is the only fault, so waiting would only stretch the run).
AIRFLOW_ENV = {
    "AIRFLOW__CORE__DEFAULT_TASK_RETRIES": "1",
    "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "5",
}


def channels(caps: Mapping[str, int] = CAPS) -> dict[str, tuple[str, str, dict[str, Any], FaultProfile]]:
    out = {}
    for conn_id, cap in caps.items():
        key = f"fleet-{conn_id}"
        profile = FaultProfile(
            name=conn_id,
            rpm=cap,
            ipm=cap,
            latency_ms=LATENCY_MS,
            openai_cost_usd=PRICE,
            batch=BatchProfile(turnaround_s=60.0, pending_s=5.0),
        )
        extra = {
            "rpm": cap,
            "ipm": cap,
            "max_concurrency": MAX_CONCURRENCY,
            "timeout": 60,
            "prices": {"1K": PRICE, "2K": PRICE, "4K": 0.24},
        }
        out[conn_id] = (PROTOCOLS[conn_id], key, extra, profile)
    # the batch DAG's channel: Google direct, no realtime cap needed
    out["banana_gemini_batch"] = (
        "gemini",
        "fleet-batch",
        {"timeout": 60},
        FaultProfile(name="banana_gemini_batch", batch=BatchProfile(turnaround_s=60.0, pending_s=5.0)),
    )
    return out


def shard_items(items: int, shards: int) -> list[list[dict[str, str]]]:
    parts: list[list[dict[str, str]]] = [[] for _ in range(shards)]
    for i in range(items):
        s = i % shards
        parts[s].append(
            {"id": f"s{s}-{i:04d}", "prompt": f"catalog product {i}: a ceramic mug, studio light"}
        )
    return parts


def upload_shards(parts: Sequence[Sequence[Mapping[str, str]]], prefix: str) -> None:
    from airflow_banana.storage.objects import open_storage

    storage = open_storage(prefix)
    for s, items in enumerate(parts):
        body = "".join(json.dumps(item) + "\n" for item in items).encode()
        storage.write_bytes(f"{prefix}part-{s:02d}.jsonl", body)


@dataclass
class FleetResult:
    """What one fleet run measured, from the ledger, storage and the API."""

    run_id: str
    state: str
    items: int
    succeeded: int
    lost: int
    paid_twice: int  # images bought again, other than the calls in flight at a kill
    requests: int
    self_429: int
    calls_span_s: float
    span_s: float
    end_to_end_s: float
    sum_caps_per_min: int
    max_in_60s: dict[str, int]
    caps: dict[str, int]
    tries: dict[int, int] = field(default_factory=dict)
    in_flight_at_kill: int = 0  # billed by the provider, never received by the killed process
    notes: list[str] = field(default_factory=list)

    @property
    def call_rate_of_caps(self) -> float:
        """Admitted calls per minute between the first and the last call, over the sum of caps."""
        admitted = self.requests - self.self_429
        if self.calls_span_s <= 0 or admitted < 2:
            return 0.0
        return (admitted - 1) / self.calls_span_s * 60.0 / self.sum_caps_per_min

    @property
    def of_caps(self) -> float:
        return self.succeeded / self.span_s * 60.0 / self.sum_caps_per_min if self.span_s > 0 else 0.0

    @property
    def of_caps_end_to_end(self) -> float:
        if self.end_to_end_s <= 0:
            return 0.0
        return self.succeeded / self.end_to_end_s * 60.0 / self.sum_caps_per_min

    @property
    def within_caps(self) -> bool:
        return all(self.max_in_60s[c] <= self.caps[c] for c in self.caps)

    def ok(self, *, throughput: bool) -> bool:
        good = self.state == "success" and self.lost == 0 and self.paid_twice == 0
        if throughput:
            good = good and self.self_429 == 0 and self.within_caps and self.call_rate_of_caps >= 0.95
        return good


def max_in_window(arrivals: Sequence[float], window_s: float = 60.0) -> int:
    """The most arrivals any half-open window of ``window_s`` holds (the simulator's sliding quota)."""
    best, inside = 0, deque[float]()
    for t in sorted(arrivals):
        inside.append(t)
        while inside[0] <= t - window_s:
            inside.popleft()
        best = max(best, len(inside))
    return best


def _generation(entry: Mapping[str, Any]) -> bool:
    path = str(entry["path"])
    return path.endswith((":generateContent", ":streamGenerateContent", "/chat/completions"))


def measure(
    d: Deployment,
    run_id: str,
    state: str,
    parts: Sequence[Sequence[Mapping[str, str]]],
    output: str,
    killed_at: float | None = None,
) -> FleetResult:
    from airflow_banana.storage.objects import open_storage

    assert d.sim is not None
    key_ids = {d.sim.key_id(key): conn for conn, (_p, key, _e, _f) in d.channels.items() if conn in CAPS}
    requests = [e for e in d.sim.requests() if e["key_id"] in key_ids and _generation(e)]
    billable = [b for b in d.sim.billable() if b["key_id"] in key_ids]
    fingerprints = Counter(b["fingerprint"] for b in billable)
    lost_in_kill = _in_flight_at(killed_at, billable, requests) if killed_at is not None else set()
    storage = open_storage(output)
    ids = [item["id"] for items in parts for item in items]
    succeeded = 0
    for item_id in ids:
        uri = f"{output}/metadata/{item_id}.json"
        if storage.exists(uri) and storage.read_json(uri).get("status") == "succeeded":
            succeeded += 1
    arrivals: dict[str, list[float]] = {conn: [] for conn in CAPS}
    for e in requests:
        arrivals[key_ids[e["key_id"]]].append(e["ts"] - e["latency_ms"] / 1000.0)
    first = min((t for ts in arrivals.values() for t in ts), default=0.0)
    last_call = max((t for ts in arrivals.values() for t in ts), default=first)
    last = max((b["ts"] for b in billable), default=first)
    run = d.client.get(f"/dags/{DAG_ID}/dagRuns/{run_id}").json()
    started, ended = _epoch(run.get("start_date")), _epoch(run.get("end_date"))
    tries = Counter(
        int(ti["try_number"]) for ti in d.task_instances(DAG_ID, run_id) if ti["task_id"] == "generate_shard"
    )
    return FleetResult(
        run_id=run_id,
        state=state,
        items=len(ids),
        succeeded=succeeded,
        lost=len(ids) - succeeded,
        paid_twice=sum(n - 1 for n in fingerprints.values() if n > 1) - len(lost_in_kill),
        in_flight_at_kill=len(lost_in_kill),
        requests=len(requests),
        self_429=sum(1 for e in requests if e["status"] == 429 and e["fault"] == "quota"),
        calls_span_s=last_call - first,
        span_s=last - first,
        end_to_end_s=(ended - started) if started and ended else 0.0,
        sum_caps_per_min=sum(CAPS.values()),
        max_in_60s={conn: max_in_window(ts) for conn, ts in arrivals.items()},
        caps=dict(CAPS),
        tries=dict(tries),
    )


def _in_flight_at(
    killed_at: float, billable: Sequence[Mapping[str, Any]], requests: Sequence[Mapping[str, Any]]
) -> set[str]:
    """Fingerprints whose first paid call was under way when the task process was killed: the
    provider finished and billed it, the process never got the image (no client can avoid it;
    Gemini has no idempotency key). Each bill is matched to its request by key and end time."""
    first: dict[str, Mapping[str, Any]] = {}
    for b in sorted(billable, key=lambda b: b["ts"]):
        first.setdefault(b["fingerprint"], b)
    paid = Counter(b["fingerprint"] for b in billable)
    lost = set()
    for fingerprint, bill in first.items():
        if paid[fingerprint] < 2:
            continue
        ends = [r for r in requests if r["key_id"] == bill["key_id"] and r["status"] == 200]
        request = min(ends, key=lambda r: abs(r["ts"] - bill["ts"]))
        if request["ts"] - request["latency_ms"] / 1000.0 < killed_at <= bill["ts"] + 0.05:
            lost.add(fingerprint)
    return lost


def _shard_report(output: str, map_index: int) -> dict[str, Any]:
    """The item counts of one shard's run report (the last try writes it)."""
    from airflow_banana.storage.objects import open_storage

    storage = open_storage(output)
    for uri in storage.list(f"{output}/runs/"):
        if uri.endswith(f"__m{map_index}/report.json"):
            return dict(storage.read_json(uri)["items"])
    return {}


def _epoch(iso: str | None) -> float:
    if not iso:
        return 0.0
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _succeeded_so_far(d: Deployment) -> int:
    assert d.sim is not None
    return len(d.sim.billable())


def _wait_progress(d: Deployment, images: int, timeout_s: float = 600.0) -> None:
    limit = time.monotonic() + timeout_s
    while _succeeded_so_far(d) < images:
        if time.monotonic() > limit:
            raise RuntimeError(f"fleet: fewer than {images} images after {timeout_s:g} s")
        time.sleep(0.5)


def kill_one_task(d: Deployment, run_id: str, notes: list[str], map_index: int = 0) -> float:
    """SIGKILL the task process of one running shard (found by its task instance id); when."""
    for _ in range(60):
        for ti in d.task_instances(DAG_ID, run_id):
            if (
                ti["task_id"] == "generate_shard"
                and ti["map_index"] == map_index
                and ti["state"] == "running"
            ):
                pid = d.task_pid(ti["id"])
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                    killed_at = time.time()
                    notes.append(
                        f"SIGKILLed shard {map_index}'s task process (pid {pid}, try {ti['try_number']})"
                    )
                    return killed_at
        time.sleep(0.5)
    raise RuntimeError(f"fleet: no running task process for shard {map_index} to kill")


def run_shards(
    d: Deployment, *, items: int, shards: int, fault: str = "none", label: str = "fleet"
) -> FleetResult:
    """Upload the shards, trigger the sharded DAG, inject ``fault`` mid-run, wait, measure."""
    prefix = f"gs://{BUCKET}/{label}/shards/"
    output = f"gs://{BUCKET}/{label}/catalog"
    parts = shard_items(items, shards)
    upload_shards(parts, prefix)
    budget = round(PRICE * (items // shards + 1) * 2, 2)  # room for every image of the shard, twice
    run_id = d.trigger(
        DAG_ID, {"shards_prefix": prefix, "output_prefix": output, "budget_usd_per_shard": budget}
    )
    notes: list[str] = []
    killed_at = None
    if fault == "kill-worker":
        _wait_progress(d, items // 4)
        killed_at = kill_one_task(d, run_id, notes)
    elif fault == "redis-restart":
        _wait_progress(d, items // 4)
        assert d.redis is not None
        d.redis.restart(down_s=5.0)
        notes.append(f"redis-server killed at {_succeeded_so_far(d)} images, back (empty) 5 s later")
    state = d.wait(DAG_ID, run_id)
    result = measure(d, run_id, state, parts, output, killed_at)
    if fault == "kill-worker":
        notes.append(f"shard 0's report after its retry: {_shard_report(output, 0)}")
    result.notes = notes
    return result


def run_batch_with_triggerer_restart(d: Deployment) -> dict[str, Any]:
    """A deferred batch job while the triggerer restarts: one job created, every image once."""
    assert d.sim is not None
    from airflow_banana.storage.objects import open_storage

    prefix = f"gs://{BUCKET}/batch"
    items = [{"id": f"b-{i:03d}", "prompt": f"batch product {i}: a linen tote bag"} for i in range(20)]
    open_storage(prefix).write_bytes(
        f"{prefix}/manifest.jsonl", "".join(json.dumps(i) + "\n" for i in items).encode()
    )
    run_id = d.trigger(
        BATCH_DAG_ID,
        {"manifest": f"{prefix}/manifest.jsonl", "output_prefix": f"{prefix}/catalog", "poll_interval_s": 5},
    )
    limit = time.monotonic() + 300
    while True:
        tis = d.task_instances(BATCH_DAG_ID, run_id)
        if any(ti["state"] == "deferred" for ti in tis):
            break
        if time.monotonic() > limit or d.run_state(BATCH_DAG_ID, run_id) in ("success", "failed"):
            raise RuntimeError(f"fleet: the batch task never deferred: {tis}")
        time.sleep(1.0)
    d.restart("triggerer")
    state = d.wait(BATCH_DAG_ID, run_id)
    batch_key = d.sim.key_id("fleet-batch")
    jobs = [j for j in d.sim.ledger()["jobs"] if j["key_id"] == batch_key]
    paid = Counter(b["fingerprint"] for b in d.sim.billable() if b["key_id"] == batch_key)
    storage = open_storage(prefix)
    done = sum(
        1
        for i in items
        if storage.exists(f"{prefix}/catalog/metadata/{i['id']}.json")
        and storage.read_json(f"{prefix}/catalog/metadata/{i['id']}.json").get("status") == "succeeded"
    )
    return {
        "state": state,
        "jobs": len(jobs),
        "items": len(items),
        "succeeded": done,
        "paid_twice": sum(n - 1 for n in paid.values() if n > 1),
    }


def print_result(r: FleetResult, shards: int, fault: str) -> None:
    print(
        f"fleet: {r.items} items, {shards} shards, fault {fault}; caps {r.caps} per minute "
        f"(sum {r.sum_caps_per_min}/min), LocalExecutor parallelism 4, shared Redis state"
    )
    print(
        f"  run {r.state}: {r.succeeded} ok, {r.lost} lost, {r.paid_twice} paid twice "
        f"(+{r.in_flight_at_kill} in flight at the kill: billed, never received); "
        f"{r.requests} calls, {r.self_429} self-inflicted 429s"
    )
    print(
        f"  throughput: calls {r.call_rate_of_caps:.1%} of caps (first to last call, {r.calls_span_s:.1f} s);"
        " "
        f"images {r.of_caps:.1%} (to the last image, {r.span_s:.1f} s); "
        f"{r.of_caps_end_to_end:.1%} end to end ({r.end_to_end_s:.1f} s DAG run)"
    )
    print(f"  most requests in any 60 s window: {r.max_in_60s} (caps {r.caps}); task tries {r.tries}")
    for note in r.notes:
        print(f"  {note}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench fleet", description=__doc__)
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--fault", choices=FAULTS, default="none")
    parser.add_argument("--ledger", help="write the simulator's ledger (JSON) here, for analysis")
    args = parser.parse_args(argv)
    with Deployment(channels(), airflow_env=AIRFLOW_ENV) as d:
        print(f"deployment up in {d.work_dir} (API {d.api})", flush=True)
        if args.fault == "triggerer-restart":
            outcome = run_batch_with_triggerer_restart(d)
            print(f"fleet: deferred batch job, triggerer restarted: {outcome}")
            return (
                0
                if outcome["jobs"] == 1
                and outcome["paid_twice"] == 0
                and outcome["state"] == "success"
                and outcome["succeeded"] == outcome["items"]
                else 1
            )
        result = run_shards(d, items=args.items, shards=args.shards, fault=args.fault)
        if args.ledger:
            assert d.sim is not None
            with open(args.ledger, "w") as out:
                json.dump(d.sim.ledger(), out)
        print_result(result, args.shards, args.fault)
        return 0 if result.ok(throughput=args.fault == "none") else 1


if __name__ == "__main__":
    sys.exit(main())
