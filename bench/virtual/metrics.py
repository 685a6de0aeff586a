"""What each system achieved on one scenario, from the providers' ledger (not the system's word)
and the scenario's deadline; and the summary over scenarios that the done-when of issue 11 reads.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.virtual.optimum import horizon_s
from bench.virtual.scenarios import Scenario
from bench.virtual.systems import SystemRun

SPIN_DECISIONS_PER_ITEM = 1000  # more router decisions than this per item is a spin
TIE = 0.001  # costs per on-time image within 0.1 % are a tie


@dataclass
class Score:
    system: str
    spent: float
    on_time: int
    items: int
    paid_twice: int
    calls: int
    virtual_s: float
    real_s: float
    capped: str = ""
    decisions: int = 0
    calls_by_channel: dict[str, int] = field(default_factory=dict)
    images_by_channel: dict[str, int] = field(default_factory=dict)

    @property
    def cost_per_on_time(self) -> float:
        return self.spent / self.on_time if self.on_time else math.inf

    @property
    def on_time_share(self) -> float:
        return self.on_time / self.items if self.items else 1.0

    @property
    def decisions_per_item(self) -> float:
        return self.decisions / self.items if self.items else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            cost_per_on_time=None if math.isinf(self.cost_per_on_time) else round(self.cost_per_on_time, 5),
            on_time_share=round(self.on_time_share, 5),
            spin=self.decisions_per_item > SPIN_DECISIONS_PER_ITEM,
        )
        out["spent"] = round(self.spent, 4)
        out["virtual_s"] = round(self.virtual_s, 1)
        out["real_s"] = round(self.real_s, 2)
        return out


def score(scenario: Scenario, run: SystemRun) -> Score:
    ledger = run.ledger
    done = ledger.first_success()
    # no deadline: on time = by the router's documented soft horizon, as for the optimum
    deadline = horizon_s(scenario)
    on_time = sum(1 for t in done.values() if t <= deadline)
    calls = Counter(c.channel for c in ledger.calls)
    images = Counter(c.channel for c in ledger.calls if c.outcome == "success")
    return Score(
        system=run.system,
        spent=ledger.spent(),
        on_time=on_time,
        items=scenario.items,
        paid_twice=sum(1 for n in ledger.paid_images().values() if n > 1),
        calls=len(ledger.calls),
        virtual_s=run.virtual_s,
        real_s=run.real_s,
        capped=run.capped,
        decisions=run.decisions,
        calls_by_channel=dict(sorted(calls.items())),
        images_by_channel=dict(sorted(images.items())),
    )


def _quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(q * 100) - 1]


def ratio(a: float, b: float) -> float:
    if math.isinf(a) and math.isinf(b):
        return 1.0
    if b == 0 or math.isinf(b):
        return math.inf if a > 0 else 1.0
    return a / b


def summarize(rows: Sequence[Mapping[str, Any]], systems: Sequence[str]) -> dict[str, Any]:
    """Each row: {"scenario": ..., "optimum": {...} | None, "<system>": Score.as_dict()}."""
    out: dict[str, Any] = {"scenarios": len(rows), "systems": {}}
    # A run stopped at the real-time cap says nothing about cost: it is counted, not compared.
    capped_ids = sorted({r["scenario"]["id"] for r in rows for s in systems if r.get(s) and r[s]["capped"]})
    out["capped_scenarios"] = capped_ids
    rows = [r for r in rows if r["scenario"]["id"] not in capped_ids]
    out["compared_scenarios"] = len(rows)
    for system in systems:
        present = [r for r in rows if r.get(system)]
        ratios = [
            ratio(_cpi(r[system]), r["optimum"]["cost_per_on_time"])
            for r in present
            if r.get("optimum") and r["optimum"].get("cost_per_on_time")
        ]
        finite = [x for x in ratios if not math.isinf(x)]
        out["systems"][system] = {
            "scenarios": len(present),
            "cost_over_optimum_median": _quantile(finite, 0.5) if finite else None,
            "cost_over_optimum_p95": _quantile(ratios, 0.95) if ratios else None,
            "on_time_items": sum(r[system]["on_time"] for r in present),
            "items": sum(r[system]["items"] for r in present),
            "paid_twice": sum(r[system]["paid_twice"] for r in present),
            "spins": sum(1 for r in present if r[system].get("spin")),
            "spent": round(sum(r[system]["spent"] for r in present), 2),
        }
    if "ours" in systems:
        ours = out["systems"]["ours"]
        # on time wherever the optimum is (its relaxed plan delivers every item in time)
        feasible = [r for r in rows if r.get("ours") and r.get("optimum") and r["optimum"].get("all_on_time")]
        ours["on_time_where_optimum_is"] = sum(r["ours"]["on_time"] for r in feasible) / max(
            1, sum(r["ours"]["items"] for r in feasible)
        )
        for peer in systems:
            if peer == "ours":
                continue
            both = [r for r in rows if r.get("ours") and r.get(peer)]
            cheaper = [r for r in both if _cpi(r["ours"]) < _cpi(r[peer])]
            # a tie (both at $0.05 on a healthy relay) cannot be beaten: counted apart
            not_dearer = [r for r in both if _cpi(r["ours"]) <= _cpi(r[peer]) * (1 + TIE)]
            dearer = [(ratio(_cpi(r["ours"]), _cpi(r[peer])) - 1.0, r["scenario"]["id"]) for r in both]
            # "never more than 2 % dearer at equal or better on-time": only scenarios where ours
            # is on time at least as often as the peer are counted against that bound
            at_equal = [
                (ratio(_cpi(r["ours"]), _cpi(r[peer])) - 1.0, r["scenario"]["id"])
                for r in both
                if r["ours"]["on_time"] >= r[peer]["on_time"]
            ]
            worst = max(at_equal, default=(0.0, ""))
            ours[f"vs_{peer}"] = {
                "scenarios": len(both),
                "cheaper_share": len(cheaper) / len(both) if both else None,
                "cheaper_or_tied_share": len(not_dearer) / len(both) if both else None,
                "max_dearer_pct_at_equal_or_better_on_time": round(100 * worst[0], 2),
                "worst_scenario": worst[1],
                "max_dearer_pct_any": round(100 * max(dearer, default=(0.0, ""))[0], 2),
                "ours_on_time_more": sum(1 for r in both if r["ours"]["on_time"] > r[peer]["on_time"]),
                "ours_on_time_less": sum(1 for r in both if r["ours"]["on_time"] < r[peer]["on_time"]),
            }
    return out


def _cpi(score_dict: Mapping[str, Any]) -> float:
    value = score_dict.get("cost_per_on_time")
    return math.inf if value is None else float(value)
