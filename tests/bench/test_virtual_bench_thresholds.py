"""Issue 11's done-when on the virtual bench's CI-sized sample (fixed seed, shipped defaults).

Ours against the hindsight optimum and the peers; the thresholds are the issue's and are not
to be lowered to make a run pass: a failure here is a finding about the router.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from bench.virtual.metrics import summarize
from bench.virtual_bench import CI_SEED, available_systems, ci_sample, run_all

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    systems = [s for s in ("ours", "naive", "litellm") if s in available_systems()]
    rows = run_all(CI_SEED, ci_sample(), systems, jobs=2, cap_s=120.0)
    return {"rows": rows, "summary": summarize(rows, systems), "systems": systems}


def _show(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=1, default=str)


def test_no_run_was_stopped_and_nothing_spun(result: dict[str, Any]) -> None:
    summary = result["summary"]
    assert not summary["capped_scenarios"], _show(summary)
    assert all(s["spins"] == 0 for s in summary["systems"].values()), _show(summary)


def test_nothing_is_paid_twice(result: dict[str, Any]) -> None:
    assert result["summary"]["systems"]["ours"]["paid_twice"] == 0


def test_ours_median_cost_per_on_time_image_is_near_the_optimum(result: dict[str, Any]) -> None:
    ours = result["summary"]["systems"]["ours"]
    assert ours["cost_over_optimum_median"] <= 1.03, _show(result["summary"])


# Not met yet (issue 11 stays open): strict xfails, so the day the router meets them this file
# fails until the mark is removed. Measured on this sample on 2026-12-06 (seed 11, 23 scenarios,
# the router of that evening): p95 1.20, on time 99.5 % where the optimum is (s11-13: items
# behind a queue that spilled late). "Never more than 2 % dearer than naive" is met since billed
# 429s count in a channel's price per image (s11-30 was 27.4 % dearer: paid 429s on OpenRouter).
NOT_MET = pytest.mark.xfail(strict=True, reason="issue 11 threshold not met yet; see docs/benchmarks.md")


@NOT_MET
def test_ours_p95_cost_per_on_time_image_is_near_the_optimum(result: dict[str, Any]) -> None:
    ours = result["summary"]["systems"]["ours"]
    assert ours["cost_over_optimum_p95"] <= 1.10, _show(result["summary"])


@NOT_MET
def test_ours_is_on_time_wherever_the_optimum_is(result: dict[str, Any]) -> None:
    assert result["summary"]["systems"]["ours"]["on_time_where_optimum_is"] >= 0.999


def _versus(result: dict[str, Any], peer: str) -> dict[str, Any]:
    if peer not in result["systems"]:
        pytest.fail(f"{peer} is not installed in this venv (make bench-venv installs it)")
    return result["summary"]["systems"]["ours"][f"vs_{peer}"]


@pytest.mark.parametrize("peer", ["naive", "litellm"])
def test_ours_is_never_more_than_2_percent_dearer_than_a_peer(result: dict[str, Any], peer: str) -> None:
    versus = _versus(result, peer)
    assert versus["max_dearer_pct_at_equal_or_better_on_time"] <= 2.0, _show(versus)
    assert not math.isnan(versus["cheaper_share"])


@pytest.mark.parametrize("peer", ["naive", "litellm"])
def test_ours_is_cheaper_than_the_peers_in_95_percent(result: dict[str, Any], peer: str) -> None:
    # "cheaper in >= 95 % of scenarios": a tie within 0.1 % (both at the optimum) counts as
    # not lost; the strict share is in the summary beside it
    versus = _versus(result, peer)
    assert versus["cheaper_or_tied_share"] >= 0.95, _show(versus)
