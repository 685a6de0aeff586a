"""What a plan saves: all-realtime vs all-batch vs the deadline plan, for the CLI's ``estimate``.

Built on a ``ComputedPlan`` (``planning.manifest``) and the same pure planner, so the estimate
and the plan a DAG would run cannot disagree. Nothing is written and nothing is paid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow_banana.planning.manifest import ComputedPlan, iso_seconds
from airflow_banana.planning.planner import PlanItem, make_plan
from airflow_banana.pricing import GOOGLE_DIRECT


def estimate_scenarios(computed: ComputedPlan) -> dict[str, Any]:
    """All-realtime vs all-batch vs the deadline plan: cost, last finish, deadline misses.

    All realtime is priced at Google's direct list price and timed on the given channels (no
    channels: finish unknown); all batch at the batch list price, finishing at now + turnaround.
    """
    plan = computed.plan
    now = plan.now
    planned = list(computed.planned) or [
        PlanItem(item_id, computed.items[item_id].image_size, computed.deadlines[item_id])
        for item_id in computed.items
    ]
    sizes: dict[str, int] = {}
    for p in planned:
        sizes[p.image_size] = sizes.get(p.image_size, 0) + 1
    scenarios: list[dict[str, Any]] = []

    rt_cost = sum(GOOGLE_DIRECT[p.image_size] for p in planned)
    rt: dict[str, Any] = {
        "name": "all realtime",
        "cost_usd": round(rt_cost, 6),
        "finish": None,
        "misses": None,
    }
    if computed.realtime and planned:
        only_rt = make_plan(planned, now=now, realtime=computed.realtime, confidence=plan.confidence)
        rt["finish"] = iso_seconds(max((a.expected_finish for a in only_rt.assignments), default=None))
        rt["misses"] = len(only_rt.infeasible)
    scenarios.append(rt)

    if computed.batch is not None:
        lane = computed.batch
        done_at = now + lane.turnaround
        scenarios.append(
            {
                "name": f"all batch ({lane.name}, turnaround {lane.turnaround.total_seconds() / 3600:g} h)",
                "cost_usd": round(sum(lane.price_by_size[p.image_size] for p in planned), 6),
                "finish": iso_seconds(done_at) if planned else None,
                "misses": sum(1 for p in planned if p.deadline is not None and p.deadline < done_at),
            }
        )
    scenarios.append(
        {
            "name": "deadline plan",
            "cost_usd": round(plan.expected_cost_usd, 6),
            "finish": iso_seconds(max((a.expected_finish for a in plan.assignments), default=None)),
            "misses": len(plan.infeasible),
            "realtime": len(plan.item_ids("realtime")),
            "batch": len(plan.item_ids("batch")),
        }
    )
    return {
        "now": now.isoformat(),
        "items": len(planned),
        "skipped_done": len(computed.skipped_done),
        "sizes": sizes,
        # items priced only on the lanes that may carry them (routing.eligibility)
        "restricted": sum(1 for p in planned if p.lanes is not None),
        "scenarios": scenarios,
        "plan_savings_vs_all_realtime_usd": round(plan.savings_usd, 6),
        "lanes": plan.summary()["lanes"],
    }


def render_estimate(estimate: Mapping[str, Any]) -> str:
    """``estimate_scenarios`` as a table for a terminal."""
    sizes = ", ".join(f"{n} x {size}" for size, n in sorted(estimate["sizes"].items())) or "none"
    lines = [
        f"Estimate at {estimate['now']}: {estimate['items']} item(s) to generate ({sizes})"
        + (f"; {estimate['skipped_done']} already done" if estimate["skipped_done"] else ""),
        "",
        f"{'scenario':<52} {'cost USD':>10}  {'last expected finish':<26} {'deadline misses':>15}",
    ]
    for row in estimate["scenarios"]:
        finish = row["finish"] or "unknown (no channels)"
        misses = "-" if row["misses"] is None else str(row["misses"])
        lines.append(f"{row['name']:<52} {row['cost_usd']:>10.3f}  {finish:<26} {misses:>15}")
    lines += [
        "",
        f"The deadline plan saves ${estimate['plan_savings_vs_all_realtime_usd']:.3f} against all realtime "
        "at Google's direct list price (for the items it can plan).",
    ]
    if estimate.get("restricted"):
        lines.append(
            f"{estimate['restricted']} item(s) are official-only or grounded, or limited to some model tiers"
            ": priced and timed only on the lanes that may carry them."
        )
    lanes = estimate.get("lanes") or {}
    if lanes:
        lines += ["", "Per lane in the plan:"]
        for name, lane in lanes.items():
            lines.append(
                f"  {name:<30} {lane['kind']:<9} {lane['items']:>6} items  ${lane['expected_cost_usd']:.3f}"
            )
    return "\n".join(lines)
