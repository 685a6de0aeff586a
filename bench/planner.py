"""Deadline-routing benchmark: the planner + rescue against all-realtime and all-batch.

A pure simulation with a simulated clock (no servers): one mixed-deadline manifest, many trials,
each with a batch job turnaround drawn from a heavy-tailed distribution that includes stuck
jobs. Three strategies per trial:

* ``all realtime`` — every item through the realtime channels at their caps (Google direct
  price), in deadline order;
* ``all batch``    — every item in one batch job, no rescue (half price, whenever it ends);
* ``plan+rescue``  — ``make_plan`` routes each item; the batch job is cancelled at
  ``planning.inputs.rescue_point`` if it has not ended, its finished lines are harvested and the rest
  go through realtime (``rescue_decision`` decides, as the operator does).

Realtime is simulated attempt by attempt: channel *i* dispatches one attempt every
``1/cap_i`` minutes, each succeeds with probability ``p_i`` after ``latency``. Batch lines
complete evenly over the job's turnaround; a stuck job completes ``stuck_fraction`` of its lines
and then never ends. The planner's turnaround estimate comes from 40 earlier jobs drawn from the
same distribution (``BatchLane.from_history``, p95), as it would from recorded history.

Reported per strategy: mean cost, deadline misses among the items the plan called feasible
(must be 0 for plan+rescue), the worst trial, and how often a rescue fired. Outputs:
``bench/results/planner.json`` and ``planner.md``.

Run: ``.venv/bin/python -m bench planner [--items N] [--trials T] [--seed S]``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow_banana.planning.inputs import DEFAULT_RESCUE_MARGIN, rescue_point
from airflow_banana.planning.planner import (
    BatchLane,
    LaneCapacity,
    Plan,
    PlanItem,
    make_plan,
    rescue_decision,
)
from airflow_banana.pricing import GOOGLE_DIRECT, LIST_PRICES

RESULTS = Path(__file__).resolve().parent / "results"
NOW = datetime(2026, 11, 27, 1, 0, tzinfo=UTC)
LATENCY = timedelta(seconds=40)
# Channels as a user would configure them: Google direct and Vertex, 20 images/min each.
CHANNELS = (
    LaneCapacity("google", 20.0, 0.85, GOOGLE_DIRECT, latency=LATENCY),
    LaneCapacity("vertex", 20.0, 0.90, LIST_PRICES["vertex"], latency=LATENCY),
)


@dataclass(frozen=True)
class Turnaround:
    """Batch job turnaround: lognormal around ``median_h`` (p95 ~ ``p95_h``), stuck with ``stuck_p``."""

    median_h: float = 5.0
    p95_h: float = 18.0
    stuck_p: float = 0.08
    stuck_fraction: float = 0.4

    def draw(self, rng: random.Random) -> float | None:
        """Hours until the job ends, or None when it is stuck (never ends on its own)."""
        if rng.random() < self.stuck_p:
            return None
        sigma = math.log(self.p95_h / self.median_h) / 1.645
        return min(rng.lognormvariate(math.log(self.median_h), sigma), 48.0)


def manifest(n: int, rng: random.Random) -> list[PlanItem]:
    """Heroes due in 2 h, a share due by the morning, most due the next day, some open-ended."""
    items = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.08:
            deadline: datetime | None = NOW + timedelta(hours=2)
        elif roll < 0.25:
            deadline = NOW + timedelta(hours=7)
        elif roll < 0.85:
            deadline = NOW + timedelta(hours=rng.choice([36, 47]))
        else:
            deadline = None
        size = rng.choices(["1K", "2K", "4K"], weights=[6, 3, 1])[0]
        items.append(PlanItem(f"item-{i:05d}", size, deadline))
    return items


class RealtimePool:
    """Successful completions of the channels, attempt by attempt, in time order."""

    def __init__(self, lanes: Sequence[LaneCapacity], start: datetime, rng: random.Random):
        self.lanes = lanes
        self.rng = rng
        self.next_dispatch = [start for _ in lanes]

    def restart_at(self, moment: datetime) -> None:
        self.next_dispatch = [max(t, moment) for t in self.next_dispatch]

    def finishes(self, count: int) -> list[datetime]:
        """When the next ``count`` images finish (successes only; failures use a slot)."""
        heap = [(t, i) for i, t in enumerate(self.next_dispatch) if self.lanes[i].images_per_minute > 0]
        heapq.heapify(heap)
        out: list[datetime] = []
        while len(out) < count and heap:
            dispatched, i = heapq.heappop(heap)
            lane = self.lanes[i]
            if self.rng.random() < lane.success_rate:
                out.append(dispatched + lane.latency)
            following = dispatched + timedelta(minutes=1.0 / lane.images_per_minute)
            self.next_dispatch[i] = following
            heapq.heappush(heap, (following, i))
        return out


def _misses(finish: dict[str, datetime | None], items: Sequence[PlanItem], feasible: set[str]) -> int:
    missed = 0
    for item in items:
        if item.item_id not in feasible or item.deadline is None:
            continue
        done = finish.get(item.item_id)
        if done is None or done > item.deadline:
            missed += 1
    return missed


def _edf(items: Sequence[PlanItem]) -> list[PlanItem]:
    return sorted(items, key=lambda i: (i.deadline is None, i.deadline or NOW))


def all_realtime(items: Sequence[PlanItem], rng: random.Random) -> tuple[float, dict[str, datetime | None]]:
    ordered = _edf(items)
    times = RealtimePool(CHANNELS, NOW, rng).finishes(len(ordered))
    cost = sum(GOOGLE_DIRECT[i.image_size] for i in items)
    return cost, {item.item_id: t for item, t in zip(ordered, times, strict=False)}


def all_batch(items: Sequence[PlanItem], job_h: float | None) -> tuple[float, dict[str, datetime | None]]:
    cost = sum(LIST_PRICES["batch"][i.image_size] for i in items)
    done = None if job_h is None else NOW + timedelta(hours=job_h)
    return cost, {i.item_id: done for i in items}


def plan_and_rescue(
    plan: Plan, items: Sequence[PlanItem], job_h: float | None, turnaround: Turnaround, rng: random.Random
) -> tuple[float, dict[str, datetime | None], bool]:
    by_id = {i.item_id: i for i in items}
    finish: dict[str, datetime | None] = {}
    cost = 0.0
    pool = RealtimePool(CHANNELS, NOW, rng)
    realtime_items = _edf([by_id[i] for i in plan.item_ids("realtime")])
    for item, t in zip(realtime_items, pool.finishes(len(realtime_items)), strict=False):
        finish[item.item_id] = t
        cost += GOOGLE_DIRECT[item.image_size]

    batch_items = _edf([by_id[i] for i in plan.item_ids("batch")])
    if not batch_items:
        return cost, finish, False
    deadlines = [i.deadline for i in batch_items if i.deadline is not None]
    point = (
        rescue_point(min(deadlines), len(batch_items), CHANNELS, margin=DEFAULT_RESCUE_MARGIN)
        if deadlines
        else None
    )
    ends = None if job_h is None else NOW + timedelta(hours=job_h)
    if point is None or (ends is not None and ends <= point):
        # The job ends before the rescue point (or nothing can rescue it): every line harvested.
        for item in batch_items:
            finish[item.item_id] = ends
            cost += LIST_PRICES["batch"][item.image_size]
        return cost, finish, False

    # At the rescue point the job is still running: the operator asks the planner and cancels.
    assert rescue_decision(
        point, min(deadlines), len(batch_items), CHANNELS, DEFAULT_RESCUE_MARGIN
    ).rescue_now
    elapsed_h = (point - NOW).total_seconds() / 3600
    if job_h is None:
        done_fraction = turnaround.stuck_fraction * min(1.0, elapsed_h / turnaround.median_h)
    else:
        done_fraction = elapsed_h / job_h
    harvested = int(len(batch_items) * done_fraction)
    for item in batch_items[:harvested]:  # lines complete in input order; EDF order here
        finish[item.item_id] = point
        cost += LIST_PRICES["batch"][item.image_size]
    rest = batch_items[harvested:]
    pool.restart_at(point)
    for item, t in zip(rest, pool.finishes(len(rest)), strict=False):
        finish[item.item_id] = t
        cost += GOOGLE_DIRECT[item.image_size]
    return cost, finish, True


def run(n_items: int, trials: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    turnaround = Turnaround()
    items = manifest(n_items, rng)
    history = [h * 3600 for h in (turnaround.draw(rng) for _ in range(40)) if h is not None]
    lane = BatchLane.from_history("batch", LIST_PRICES["batch"], history, confidence=0.95)
    started = time.perf_counter()
    plan = make_plan(items, now=NOW, realtime=CHANNELS, batch=[lane], confidence=0.95)
    plan_ms = (time.perf_counter() - started) * 1000
    feasible = {a.item_id for a in plan.assignments}

    rows: dict[str, dict[str, list[float]]] = {
        name: {"cost": [], "misses": []} for name in ("all realtime", "all batch", "plan+rescue")
    }
    rescues = 0
    stuck = 0
    for _ in range(trials):
        job_h = turnaround.draw(rng)
        stuck += job_h is None
        for name, (cost, finish) in (
            ("all realtime", all_realtime(items, rng)),
            ("all batch", all_batch(items, job_h)),
        ):
            rows[name]["cost"].append(cost)
            rows[name]["misses"].append(_misses(finish, items, feasible))
        cost, finish, rescued = plan_and_rescue(plan, items, job_h, turnaround, rng)
        rescues += rescued
        rows["plan+rescue"]["cost"].append(cost)
        rows["plan+rescue"]["misses"].append(_misses(finish, items, feasible))

    summary = {
        name: {
            "mean_cost_usd": round(statistics.fmean(r["cost"]), 3),
            "mean_misses": round(statistics.fmean(r["misses"]), 2),
            "worst_trial_misses": int(max(r["misses"])),
            "trials_with_misses": sum(1 for m in r["misses"] if m),
        }
        for name, r in rows.items()
    }
    return {
        "items": n_items,
        "trials": trials,
        "seed": seed,
        "stuck_jobs": stuck,
        "rescues": rescues,
        "plan_ms": round(plan_ms, 1),
        "turnaround_estimate": lane.estimate.describe() if lane.estimate else str(lane.turnaround),
        "plan": plan.summary(),
        "infeasible": len(plan.infeasible),
        "strategies": summary,
    }


def render(result: dict[str, Any]) -> str:
    plan = result["plan"]
    lines = [
        f"Deadline routing, {result['items']} items, {result['trials']} trials (seed {result['seed']}): "
        f"{result['stuck_jobs']} stuck batch jobs, {result['rescues']} rescues; "
        f"plan in {result['plan_ms']} ms",
        f"Plan: {plan['realtime']} realtime, {plan['batch']} batch, {result['infeasible']} infeasible "
        f"(reported before spend); batch turnaround planned at {result['turnaround_estimate']}",
        "",
        "| strategy | mean cost USD | mean deadline misses | worst trial | trials with misses |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in result["strategies"].items():
        lines.append(
            f"| {name} | {row['mean_cost_usd']:.2f} | {row['mean_misses']:.2f} | "
            f"{row['worst_trial_misses']} | {row['trials_with_misses']} |"
        )
    lines += ["", "Misses count only items the plan called feasible."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench planner", description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    result = run(args.items, args.trials, args.seed)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "planner.json").write_text(json.dumps(result, indent=2) + "\n")
    text = render(result)
    (RESULTS / "planner.md").write_text(text + "\n")
    print(text)
    misses = result["strategies"]["plan+rescue"]["worst_trial_misses"]
    if misses:
        print(f"FAIL: plan+rescue missed {misses} feasible deadline(s) in its worst trial")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
