"""Benchmark: 4 worker processes sharing 3 channels, shared (Redis) vs per-process routing state.

Why: per-process limiters let N workers send N times a channel's cap (issue 7). This measures
it end to end, with the real engine in separate processes against the Gemini simulator (quota
minutes compressed to 1 s): aggregate throughput as a fraction of the sum of the channels'
caps, and the count of self-inflicted 429s (the simulator's quota rejections, not injected
faults), for both kinds of state in one run. ``main()`` prints a table; ``make bench`` runs it.

The module is also the fleet worker the integration tests start (``python -m bench.redis_shared
worker SPEC.json``): one process running ``RealtimeEngine`` over its shard of one manifest,
recording every permit, denial and channel event it saw, for the parent to check.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow_banana.routing.state import (
    ChannelEvent,
    ChannelPolicy,
    ChannelSnapshot,
    ChannelStateBackend,
    Denial,
    Outcome,
    Permit,
)

ROOT = Path(__file__).resolve().parent.parent
SIM_MINUTE_S = 1.0  # one simulated quota minute lasts one real second
# Client-side limits a little under the quota: requests sent exactly 1/rpm apart arrive with
# network jitter, and a sliding-window quota counts arrivals (docs/scaling.md).
RPM_MARGIN = 0.8
# The limiter counts rpm per the simulator's minute; transit jitter and cold processes are not
# compressed, so the guard and the cold start stay in real seconds.
SIM_ROUTER = {"rate_minute_s": SIM_MINUTE_S, "rate_guard_s": 0.1, "rate_cold_start_s": 0.1}


class RecordingBackend:
    """Wraps a backend and keeps a log of what this worker was granted, denied and told."""

    def __init__(self, inner: ChannelStateBackend) -> None:
        self.inner = inner
        self.permits: list[dict[str, Any]] = []
        self.denials: Counter[str] = Counter()
        self.events: list[dict[str, Any]] = []

    def register(self, channel: str, policy: ChannelPolicy) -> None:
        self.inner.register(channel, policy)

    def try_acquire(
        self, channel: str, now: float, *, images: int = 1, urgent: bool = False
    ) -> Permit | Denial:
        result = self.inner.try_acquire(channel, now, images=images, urgent=urgent)
        if isinstance(result, Permit):
            self.permits.append(
                {
                    "channel": channel,
                    "at": now,
                    "probe": result.probe,
                    "probe_id": result.probe_id,
                    "permit_id": result.permit_id,
                }
            )
        else:
            self.denials[str(result.reason)] += 1
        return result

    def record(self, permit: Permit, outcome: Outcome, now: float) -> tuple[ChannelEvent, ...]:
        events = self.inner.record(permit, outcome, now)
        self.events.extend({"channel": permit.channel, "event": str(e), "at": now} for e in events)
        return events

    def snapshot(self, channel: str, now: float) -> ChannelSnapshot:
        return self.inner.snapshot(channel, now)

    def channels(self) -> tuple[str, ...]:
        return self.inner.channels()


def _channel_configs(spec: Mapping[str, Any]) -> list[Any]:
    from airflow_banana.channels.config import parse_channel

    return [
        parse_channel(
            c["name"],
            host=spec["base_url"],
            password=c["key"],
            extra={
                "protocol": "gemini",
                "rpm": c["rpm"],
                "max_concurrency": c.get("max_concurrency", 4),
                "timeout": c.get("timeout", 5),
                "prices": {"1K": c.get("price", 0.134)},
            },
        )
        for c in spec["channels"]
    ]


def _warm_up(spec: Mapping[str, Any]) -> None:
    """One real call per process on a throwaway key, before the start line.

    A cold google-genai client spends its first call (about a second) in lazy imports and
    connection setup; a permit taken then reaches the server long after its slot and bunches up
    with later ones. Measured here: state sharing, not interpreter warm-up.
    """
    from airflow_banana.channels import build_channel
    from airflow_banana.channels.config import parse_channel
    from airflow_banana.models import ImageRequest

    config = parse_channel(
        f"warmup-{spec['worker']}",
        host=spec["base_url"],
        password=f"warmup-{spec['worker']}",
        extra={"protocol": "gemini"},
    )

    async def call() -> None:
        channel = build_channel(config)
        try:
            await channel.generate(ImageRequest("warmup", "warm up"))
        finally:
            await channel.aclose()

    asyncio.run(call())


async def _run_engine(
    spec: Mapping[str, Any], backend: RecordingBackend, configs: Sequence[Any]
) -> dict[str, Any]:
    from airflow_banana.channels import build_channel
    from airflow_banana.models import ImageRequest
    from airflow_banana.realtime.engine import RealtimeEngine, RealtimeSettings, WorkItem
    from airflow_banana.routing import BreakerConfig, RetryBudgetConfig, RouterConfig, SystemClock, router_for
    from airflow_banana.storage.objects import open_storage
    from airflow_banana.storage.outputs import OutputStore

    router_options = dict(spec.get("router") or {})
    router_options.setdefault("retry_budget", RetryBudgetConfig(ratio=10.0, min_retries=1000))
    router_options.setdefault("timeout_grace_s", 1.0)
    breaker = BreakerConfig(**spec["breaker"]) if spec.get("breaker") else None
    channels = {c.name: build_channel(c) for c in configs}
    rng = random.Random(spec.get("seed"))
    router = router_for(
        configs,
        SystemClock(shared=True),
        rng,
        backend,
        config=RouterConfig(**router_options),
        breaker=breaker,
    )
    out = spec["out_dir"]
    store = OutputStore(open_storage(out), out)
    deadline = None
    if spec.get("item_deadline_s") is not None:
        deadline = datetime.now(UTC) + timedelta(seconds=float(spec["item_deadline_s"]))
    work = [WorkItem(ImageRequest(item_id, f"fleet {item_id}"), deadline) for item_id in spec["items"]]
    engine = RealtimeEngine(
        channels=channels,
        router=router,
        store=store,
        run_key=f"fleet-{spec['worker']}",
        settings=RealtimeSettings(progress_interval_s=3600.0),
    )
    started = time.time()
    try:
        result = await engine.run(work)
    finally:
        for channel in channels.values():
            await channel.aclose()
    return {
        "started": started,
        "finished": time.time(),
        "statuses": dict(Counter(o.status for o in result.outcomes)),
    }


def run_worker(spec_path: str) -> int:
    """The worker process: build state, wait for the go signal, run the shard, write the result."""
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    spec = json.loads(Path(spec_path).read_text())
    from airflow_banana.routing.redis_state import redis_backend
    from airflow_banana.routing.state import InMemoryStateBackend

    inner: Any
    if spec.get("redis_url"):
        inner = redis_backend(
            spec["redis_url"], namespace=spec.get("namespace", "bench"), rng=random.Random(spec.get("seed"))
        )
    else:
        inner = InMemoryStateBackend(random.Random(spec.get("seed")))
    backend = RecordingBackend(inner)
    import airflow_banana.realtime.engine  # noqa: F401  (pay the imports before the start line)

    _warm_up(spec)
    configs = _channel_configs(spec)
    Path(spec["ready_file"]).touch()
    go = Path(spec["go_file"])
    limit = time.monotonic() + 60
    while not go.exists() and time.monotonic() < limit:
        time.sleep(0.005)
    summary = asyncio.run(_run_engine(spec, backend, configs))
    summary.update(
        worker=spec["worker"],
        permits=backend.permits,
        denials=dict(backend.denials),
        events=backend.events,
        shared=getattr(inner, "shared", False),
    )
    Path(spec["result_file"]).write_text(json.dumps(summary))
    return 0


# ---------------------------------------------------------------- the parent side


@dataclass
class Fleet:
    """Worker processes started and finished together; results and stderr per worker."""

    processes: list[subprocess.Popen[bytes]]
    specs: list[dict[str, Any]]
    go_file: Path
    started_at: float = 0.0

    def go(self, timeout_s: float = 60.0) -> float:
        limit = time.monotonic() + timeout_s
        while not all(Path(s["ready_file"]).exists() for s in self.specs):
            if time.monotonic() > limit or any(p.poll() not in (None, 0) for p in self.processes):
                self.kill()
                raise RuntimeError(f"fleet workers did not get ready: {self.stderr()}")
            time.sleep(0.01)
        self.started_at = time.time()
        self.go_file.touch()
        return self.started_at

    def wait(self, timeout_s: float = 120.0) -> list[dict[str, Any]]:
        for process in self.processes:
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        failed = [i for i, p in enumerate(self.processes) if p.returncode != 0]
        if failed:
            raise RuntimeError(f"fleet workers {failed} failed: {self.stderr()}")
        return [json.loads(Path(s["result_file"]).read_text()) for s in self.specs]

    def stderr(self) -> list[str]:
        return [
            Path(s["stderr_file"]).read_text() if Path(s["stderr_file"]).exists() else "" for s in self.specs
        ]

    def kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def start_fleet(
    work_dir: Path,
    *,
    base_url: str,
    channels: Sequence[Mapping[str, Any]],
    shards: Sequence[Sequence[str]],
    redis_url: str | None,
    namespace: str = "bench",
    **common: Any,
) -> Fleet:
    """Start one worker process per shard; they wait for ``Fleet.go()`` to begin together."""
    work_dir.mkdir(parents=True, exist_ok=True)
    go_file = work_dir / "go"
    go_file.unlink(missing_ok=True)
    specs, processes = [], []
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    for i, items in enumerate(shards):
        spec = {
            "worker": i,
            "seed": i,
            "base_url": base_url,
            "channels": list(channels),
            "items": list(items),
            "redis_url": redis_url,
            "namespace": namespace,
            "out_dir": str(work_dir / "out"),
            "ready_file": str(work_dir / f"ready-{i}"),
            "go_file": str(go_file),
            "result_file": str(work_dir / f"result-{i}.json"),
            "stderr_file": str(work_dir / f"stderr-{i}.log"),
            **common,
        }
        for name in ("ready_file", "result_file"):
            Path(spec[name]).unlink(missing_ok=True)
        spec_path = work_dir / f"spec-{i}.json"
        spec_path.write_text(json.dumps(spec))
        with open(spec["stderr_file"], "wb") as stderr:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "bench.redis_shared", "worker", str(spec_path)],
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                )
            )
        specs.append(spec)
    return Fleet(processes, specs, go_file)


def _scenario(
    label: str, work_dir: Path, sim: Any, redis_url: str | None, caps: Mapping[str, int], per_worker: int
) -> dict[str, Any]:
    from airflow_banana.testing import FaultProfile

    sim.reset(faults=True)
    channels = []
    for name, cap in caps.items():
        key = f"bench-{name}"
        sim.set_faults(key, FaultProfile(name=name, rpm=cap, latency_ms=(30.0, 120.0)))
        # every worker is told the channel's full cap: per-process state has no way to know better
        channels.append(
            {
                "name": name,
                "key": key,
                "rpm": RPM_MARGIN * cap,  # per the simulator's minute (SIM_ROUTER)
                "max_concurrency": 4,
                "price": 0.134,
            }
        )
    shards = [[f"w{w}-{i:03d}" for i in range(per_worker)] for w in range(4)]
    fleet = start_fleet(
        work_dir / label,
        base_url=sim.base_url,
        channels=channels,
        shards=shards,
        redis_url=redis_url,
        namespace=f"bench-{int(time.time() * 1000)}",
        router=SIM_ROUTER,
    )
    started = fleet.go()
    results = fleet.wait()
    finished = max(r["finished"] for r in results)
    succeeded = sum(r["statuses"].get("succeeded", 0) for r in results)
    keys = {sim.key_id(c["key"]) for c in channels}
    requests = [e for e in sim.requests() if e["key_id"] in keys and e["path"].endswith(":generateContent")]
    self_429 = sum(1 for e in requests if e["status"] == 429 and e["fault"] == "quota")
    elapsed = finished - started
    return {
        "state": label,
        "items": len(shards) * per_worker,
        "succeeded": succeeded,
        "seconds": elapsed,
        "throughput": succeeded / elapsed if elapsed > 0 else 0.0,
        "fraction_of_caps": (succeeded / elapsed) / (sum(caps.values()) / SIM_MINUTE_S),
        "requests": len(requests),
        "self_429": self_429,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_shared", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    worker = sub.add_parser("worker", help="(internal) run one fleet worker from a spec file")
    worker.add_argument("spec")
    parser.add_argument("--items-per-worker", type=int, default=15)
    args = parser.parse_args(argv)
    if args.command == "worker":
        return run_worker(args.spec)

    from airflow_banana.testing import Simulator, SimulatorConfig
    from airflow_banana.testing.redis_fixtures import RedisServer, redis_server_binary

    binary = redis_server_binary()
    if binary is None:
        print("bench.redis_shared: redis-server not found (apt-get install redis-server)", file=sys.stderr)
        return 2
    caps = {"relay": 6, "gemini": 4, "vertex": 3}  # requests per (simulated) minute
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="banana-bench-") as tmp,
        RedisServer(binary) as server,
        Simulator(SimulatorConfig(minute_s=SIM_MINUTE_S, day_s=3600.0)) as sim,
    ):
        for label, url in (("shared (redis)", server.url), ("per-process", None)):
            rows.append(_scenario(label.split()[0], Path(tmp), sim, url, caps, args.items_per_worker))
    print(f"4 processes, 3 channels, caps {caps} per {SIM_MINUTE_S:g} s (sum {sum(caps.values())}/s)")
    columns = (("state", "<12"), ("items", ">5"), ("ok", ">4"), ("seconds", ">8"), ("img/s", ">6"),
               ("of caps", ">8"), ("calls", ">6"), ("self 429", ">8"))  # fmt: skip
    header = " ".join(f"{name:{fmt}}" for name, fmt in columns)
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['state']:<12} {r['items']:>5} {r['succeeded']:>4} {r['seconds']:>8.2f} "
            f"{r['throughput']:>6.2f} {r['fraction_of_caps']:>8.0%} {r['requests']:>6} {r['self_429']:>8}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
