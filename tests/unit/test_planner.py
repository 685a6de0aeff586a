"""Deadline planner and rescue decision: feasibility edges, capacity, prices, ties, boundaries.

Most tests use success rate 1, latency 0 and confidence 0.5 so every finish time is exact
arithmetic (the k-th item on a channel of cap c finishes at now + k/c minutes).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from statistics import NormalDist

import pytest

from airflow_banana.exceptions import ConfigurationError
from airflow_banana.planning.planner import (
    BatchLane,
    LaneCapacity,
    Plan,
    PlanItem,
    make_plan,
    realtime_time_needed,
    rescue_decision,
)
from airflow_banana.pricing import GOOGLE_DIRECT, LIST_PRICES

NOW = datetime(2026, 2, 15, 12, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)
EXACT = 0.5  # confidence at which z = 0: finish times are k / (cap x success rate)

BATCH = BatchLane("batch", LIST_PRICES["batch"], turnaround=24 * HOUR)


def rt(
    name: str = "google",
    ipm: float = 1.0,
    success: float = 1.0,
    prices: dict[str, float] | None = None,
    *,
    latency: timedelta = timedelta(0),
    billed: bool = False,
) -> LaneCapacity:
    return LaneCapacity(
        channel=name,
        images_per_minute=ipm,
        success_rate=success,
        price_by_size=prices if prices is not None else LIST_PRICES["gemini"],
        billed_on_failure=billed,
        latency=latency,
    )


RELAY = LIST_PRICES["openai"]  # flat $0.05, cheaper than batch


def plan(items: list[PlanItem], **kwargs: object) -> Plan:
    kwargs.setdefault("confidence", EXACT)
    return make_plan(items, now=NOW, **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- no deadline


def test_no_deadline_goes_batch_even_when_a_relay_is_cheaper() -> None:
    p = plan([PlanItem("a", "4K")], realtime=[rt("relay", 10, prices=RELAY)], batch=[BATCH])
    a = p.assignment("a")
    assert (a.kind, a.lane, a.expected_cost_usd) == ("batch", "batch", 0.12)
    assert a.expected_finish == NOW + 24 * HOUR
    assert "no deadline" in a.reason
    assert p.item_ids("realtime") == ()


def test_no_deadline_without_batch_goes_realtime_after_every_deadline_item() -> None:
    items = [PlanItem("free", "1K"), PlanItem("due", "1K", NOW + 10 * MIN)]
    p = plan(items, realtime=[rt(ipm=1)])
    assert p.assignment("due").expected_finish == NOW + MIN
    assert p.assignment("free").expected_finish == NOW + 2 * MIN
    assert p.item_ids("realtime") == ("due", "free")
    assert [a.item_id for a in p.assignments] == ["free", "due"]  # input order kept


def test_no_deadline_and_no_lane_at_all_is_infeasible_with_no_earliest_time() -> None:
    p = plan([PlanItem("free")])
    assert not p.feasible
    (bad,) = p.infeasible
    assert (bad.item_id, bad.code, bad.earliest_achievable) == ("free", "no_realtime", None)
    assert "never" in p.describe()


# --------------------------------------------------------------------------- deadline already passed


@pytest.mark.parametrize("deadline", [NOW, NOW - timedelta(microseconds=1), NOW - 3 * HOUR])
def test_deadline_at_or_before_now_is_reported_not_planned(deadline: datetime) -> None:
    p = plan([PlanItem("late", "2K", deadline)], realtime=[rt(ipm=1)], batch=[BATCH])
    assert p.assignments == ()
    (bad,) = p.infeasible
    assert bad.code == "deadline_passed"
    assert bad.earliest_achievable == NOW + MIN  # realtime beats the 24 h batch
    assert p.expected_cost_usd == 0.0


def test_passed_deadline_consumes_no_capacity_and_earliest_comes_after_the_planned_load() -> None:
    items = [PlanItem("late", "1K", NOW - MIN), PlanItem("ok", "1K", NOW + MIN)]
    p = plan(items, realtime=[rt(ipm=1)])
    assert p.assignment("ok").expected_finish == NOW + MIN
    (bad,) = p.infeasible
    assert bad.earliest_achievable == NOW + 2 * MIN


def test_passed_deadline_with_only_batch_reports_batch_turnaround_as_earliest() -> None:
    p = plan([PlanItem("late", "1K", NOW - MIN)], batch=[BATCH])
    assert p.infeasible[0].earliest_achievable == NOW + 24 * HOUR


# --------------------------------------------------------------------------- batch feasibility


def test_loose_deadline_goes_to_the_cheaper_batch_lane() -> None:
    p = plan([PlanItem("a", "2K", NOW + 30 * HOUR)], realtime=[rt(ipm=100)], batch=[BATCH])
    a = p.assignment("a")
    assert (a.kind, a.expected_cost_usd) == ("batch", 0.067)
    assert a.reason == "cheapest lane that meets the deadline"


def test_batch_boundary_is_inclusive() -> None:
    exact = plan([PlanItem("a", "1K", NOW + 24 * HOUR)], realtime=[rt(ipm=1)], batch=[BATCH])
    assert exact.assignment("a").kind == "batch"
    just_short = plan(
        [PlanItem("a", "1K", NOW + 24 * HOUR - timedelta(microseconds=1))],
        realtime=[rt(ipm=1)],
        batch=[BATCH],
    )
    a = just_short.assignment("a")
    assert (a.kind, a.lane, a.expected_cost_usd) == ("realtime", "google", 0.134)
    assert "batch cannot make the deadline" in a.reason


def test_batch_infeasible_and_no_realtime_channels() -> None:
    p = plan([PlanItem("hero", "2K", NOW + 2 * HOUR)], realtime=[], batch=[BATCH])
    (bad,) = p.infeasible
    assert bad.code == "no_realtime"
    assert "batch needs 24.00 h but only 2.00 h remain" in bad.reason
    assert bad.earliest_achievable == NOW + 24 * HOUR


def test_fastest_batch_lane_used_when_the_cheaper_one_is_too_slow() -> None:
    slow = BatchLane("dev-batch", {"1K": 0.06, "2K": 0.06, "4K": 0.06}, turnaround=24 * HOUR)
    fast = BatchLane("vertex-batch", LIST_PRICES["batch"], turnaround=2 * HOUR)
    p = plan(
        [PlanItem("soon", "1K", NOW + 3 * HOUR), PlanItem("later", "1K", NOW + 48 * HOUR)],
        realtime=[rt()],
        batch=[slow, fast],
    )
    assert p.assignment("soon").lane == "vertex-batch"
    assert p.assignment("later").lane == "dev-batch"
    assert p.assignment("soon").expected_finish == NOW + 2 * HOUR


# --------------------------------------------------------------------------- capacity


def test_capacity_bound_items_that_cannot_batch_are_infeasible_with_earliest_time() -> None:
    items = [PlanItem(f"hero-{i}", "2K", NOW + 3 * MIN) for i in range(5)]
    p = plan(items, realtime=[rt(ipm=1)], batch=[BATCH])
    assert p.item_ids("realtime") == ("hero-0", "hero-1", "hero-2")
    assert [a.expected_finish for a in p.assignments] == [NOW + MIN, NOW + 2 * MIN, NOW + 3 * MIN]
    assert [b.item_id for b in p.infeasible] == ["hero-3", "hero-4"]
    assert {b.code for b in p.infeasible} == {"capacity"}
    assert [b.earliest_achievable for b in p.infeasible] == [NOW + 4 * MIN, NOW + 5 * MIN]
    assert "busy with earlier deadlines" in p.infeasible[0].reason


def test_capacity_bound_items_spill_to_batch_when_batch_meets_the_deadline() -> None:
    fast_batch = BatchLane("batch", LIST_PRICES["batch"], turnaround=5 * MIN)
    items = [PlanItem(f"i{i}", "1K", NOW + 6 * MIN) for i in range(8)]
    p = plan(items, realtime=[rt("relay", 1, prices=RELAY)], batch=[fast_batch])
    assert p.item_ids("realtime") == tuple(f"i{i}" for i in range(6))
    assert p.item_ids("batch") == ("i6", "i7")
    assert "full" in p.assignment("i7").reason
    assert p.feasible
    assert p.expected_cost_usd == pytest.approx(6 * 0.05 + 2 * 0.067)


def test_earlier_deadlines_get_realtime_first_whatever_the_input_order() -> None:
    items = [PlanItem("late", "1K", NOW + 2 * MIN), PlanItem("early", "1K", NOW + MIN)]
    p = plan(items, realtime=[rt(ipm=1)])
    assert p.feasible
    assert p.assignment("early").expected_finish == NOW + MIN
    assert p.assignment("late").expected_finish == NOW + 2 * MIN


def test_several_channels_fill_cheapest_first_then_pricier_ones() -> None:
    items = [PlanItem(f"i{i}", "1K", NOW + MIN) for i in range(4)]
    p = plan(items, realtime=[rt("google", 2), rt("relay", 1, prices=RELAY)])
    assert p.assignment("i0").lane == "relay"
    assert [p.assignment(f"i{i}").lane for i in (1, 2)] == ["google", "google"]
    assert p.assignment("i2").expected_finish == NOW + MIN
    assert [b.item_id for b in p.infeasible] == ["i3"]
    by_lane = p.by_lane()
    assert by_lane == {"google": ("i1", "i2"), "relay": ("i0",)}


def test_too_soon_even_for_an_idle_channel() -> None:
    p = plan([PlanItem("now-ish", "1K", NOW + 30 * timedelta(seconds=1))], realtime=[rt(ipm=1)])
    (bad,) = p.infeasible
    assert bad.code == "too_soon"
    assert bad.earliest_achievable == NOW + MIN


def test_latency_delays_every_finish() -> None:
    p = plan([PlanItem("a", "1K", NOW + HOUR)], realtime=[rt(ipm=1, latency=timedelta(seconds=30))])
    assert p.assignment("a").expected_finish == NOW + MIN + timedelta(seconds=30)


def test_success_rate_scales_throughput_at_exact_confidence() -> None:
    items = [PlanItem(f"i{i}", "1K", NOW + HOUR) for i in range(2)]
    p = plan(items, realtime=[rt(ipm=2, success=0.5)])
    assert [a.expected_finish for a in p.assignments] == [NOW + MIN, NOW + 2 * MIN]


def test_higher_confidence_plans_more_attempts() -> None:
    items = [PlanItem("a", "1K", NOW + HOUR)]
    p = make_plan(items, now=NOW, realtime=[rt(ipm=2, success=0.5)], confidence=0.95)
    z = NormalDist().inv_cdf(0.95)
    attempts = 1 / 0.5 + z * (1 * 0.5) ** 0.5 / 0.5
    expected = NOW + timedelta(minutes=attempts / 2)
    assert abs(p.assignment("a").expected_finish - expected) < timedelta(milliseconds=1)
    assert p.assignment("a").expected_finish > NOW + MIN


def test_low_confidence_never_plans_fewer_attempts_than_successes() -> None:
    p = make_plan(
        [PlanItem("a", "1K", NOW + HOUR)], now=NOW, realtime=[rt(ipm=1, success=0.9)], confidence=0.01
    )
    assert p.assignment("a").expected_finish == NOW + MIN


# --------------------------------------------------------------------------- zero capacity


@pytest.mark.parametrize("lane", [rt(success=0.0), rt(ipm=0.0)])
def test_zero_success_rate_or_zero_cap_is_no_realtime_capacity(lane: LaneCapacity) -> None:
    p = plan([PlanItem("hero", "1K", NOW + HOUR)], realtime=[lane], batch=[BATCH])
    (bad,) = p.infeasible
    assert bad.code == "no_realtime"
    assert bad.earliest_achievable == NOW + 24 * HOUR
    (summary,) = [s for s in p.lanes if s.lane == "google"]
    assert summary.items == 0 and summary.last_finish is None


def test_zero_capacity_channel_is_skipped_for_a_working_one() -> None:
    p = plan([PlanItem("hero", "1K", NOW + HOUR)], realtime=[rt("dead", success=0.0), rt("alive")])
    assert p.assignment("hero").lane == "alive"


# --------------------------------------------------------------------------- prices and resolutions


def test_mixed_resolutions_cost_and_savings_against_google_direct() -> None:
    items = [PlanItem(s, s, NOW + 30 * HOUR) for s in ("1K", "2K", "4K")]
    p = plan(items, realtime=[rt()], batch=[BATCH])
    assert [a.expected_cost_usd for a in p.assignments] == [0.067, 0.067, 0.12]
    assert p.baseline_cost_usd == pytest.approx(0.134 + 0.134 + 0.24)
    assert p.expected_cost_usd == pytest.approx(0.254)
    assert p.savings_usd == pytest.approx(0.254)
    summary = p.summary()
    assert summary["batch"] == 3 and summary["realtime"] == 0
    assert summary["savings_usd"] == pytest.approx(0.254)


def test_resolution_decides_the_lane_when_prices_differ_by_size() -> None:
    # A channel cheap for 1K only: 1K items go realtime, 4K items stay batch.
    odd = rt("odd", 10, prices={"1K": 0.03, "2K": 0.2, "4K": 0.3})
    items = [PlanItem("small", "1K", NOW + 30 * HOUR), PlanItem("big", "4K", NOW + 30 * HOUR)]
    p = plan(items, realtime=[odd], batch=[BATCH])
    assert (p.assignment("small").kind, p.assignment("small").expected_cost_usd) == ("realtime", 0.03)
    assert (p.assignment("big").kind, p.assignment("big").expected_cost_usd) == ("batch", 0.12)


def test_urgent_4k_pays_the_4k_realtime_price() -> None:
    p = plan([PlanItem("hero", "4K", NOW + HOUR)], realtime=[rt()], batch=[BATCH])
    assert p.assignment("hero").expected_cost_usd == GOOGLE_DIRECT["4K"] == 0.24
    assert p.savings_usd == 0.0


def test_channel_billing_failures_costs_price_over_success_rate() -> None:
    relay = rt("relay", 10, success=0.5, prices=RELAY, billed=True)
    p = plan([PlanItem("hero", "1K", NOW + HOUR)], realtime=[relay])
    assert p.assignment("hero").expected_cost_usd == pytest.approx(0.10)
    # ... which makes it pricier than Google (not billed on failure) once failures double it.
    p2 = plan([PlanItem("hero", "1K", NOW + HOUR)], realtime=[rt("google", 10, success=0.5), relay])
    assert p2.assignment("hero").lane == "relay"
    relay_bad = rt("relay", 10, success=0.3, prices=RELAY, billed=True)
    p3 = plan([PlanItem("hero", "1K", NOW + HOUR)], realtime=[rt("google", 10, success=0.3), relay_bad])
    assert p3.assignment("hero").lane == "google"


def test_missing_price_for_a_used_size_is_a_configuration_error() -> None:
    partial = rt("partial", prices={"1K": 0.1})
    with pytest.raises(ConfigurationError, match=r"lane 'partial' has no price for 4K"):
        plan([PlanItem("a", "4K", NOW + HOUR)], realtime=[partial])
    # unused sizes may be absent
    assert plan([PlanItem("a", "1K", NOW + HOUR)], realtime=[partial]).feasible


# --------------------------------------------------------------------------- ties


def test_equal_deadlines_keep_input_order() -> None:
    items = [PlanItem(x, "1K", NOW + 5 * MIN) for x in ("c", "a", "b")]
    p = plan(items, realtime=[rt(ipm=1)])
    assert p.item_ids("realtime") == ("c", "a", "b")


def test_equal_price_channels_prefer_earliest_finish_then_declaration_order() -> None:
    items = [PlanItem(f"i{i}", "1K", NOW + HOUR) for i in range(3)]
    p = plan(items, realtime=[rt("slow", 1), rt("fast", 2)])
    # fast: 0.5 min, 1.0 min; slow: 1.0 min. i1 ties at 1.0 min between fast and slow -> declared first.
    assert [p.assignment(f"i{i}").lane for i in range(3)] == ["fast", "slow", "fast"]


def test_equal_cost_between_batch_and_realtime_goes_batch() -> None:
    same = rt("same", 10, prices=dict(LIST_PRICES["batch"]))
    p = plan([PlanItem("a", "1K", NOW + 30 * HOUR)], realtime=[same], batch=[BATCH])
    assert p.assignment("a").kind == "batch"


def test_equal_batch_lanes_prefer_shorter_turnaround_then_declaration_order() -> None:
    b1 = BatchLane("b1", LIST_PRICES["batch"], turnaround=10 * HOUR)
    b2 = BatchLane("b2", LIST_PRICES["batch"], turnaround=5 * HOUR)
    b3 = BatchLane("b3", LIST_PRICES["batch"], turnaround=5 * HOUR)
    assert plan([PlanItem("a")], batch=[b1, b2, b3]).assignment("a").lane == "b2"


def test_naive_datetimes_are_refused() -> None:
    naive = datetime(2026, 2, 15, 12)
    with pytest.raises(ConfigurationError, match="item 'a' deadline"):
        plan([PlanItem("a", "1K", naive)])
    with pytest.raises(ConfigurationError, match="now"):
        make_plan([], now=naive)


# --------------------------------------------------------------------------- input validation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"items": [PlanItem("a"), PlanItem("a")]}, "appears twice"),
        ({"items": [PlanItem("a", "8K")]}, "image_size '8K'"),
        ({"realtime": [rt("x"), rt("x")]}, "listed twice"),
        ({"realtime": [rt(success=1.5)]}, "success_rate"),
        ({"realtime": [rt(ipm=-1)]}, "images_per_minute"),
        ({"realtime": [rt(latency=-MIN)]}, "latency"),
        ({"realtime": [rt("batch")], "batch": [BATCH]}, "used twice"),
        ({"batch": [BatchLane("b", LIST_PRICES["batch"], turnaround=timedelta(0))]}, "turnaround"),
        ({"confidence": 1.0}, "confidence"),
        ({"confidence": 0.0}, "confidence"),
    ],
)
def test_bad_input_fails_before_planning(kwargs: dict[str, object], match: str) -> None:
    kwargs.setdefault("items", [PlanItem("a", "1K", NOW + HOUR)])
    items = kwargs.pop("items")
    with pytest.raises(ConfigurationError, match=match):
        plan(items, **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- output


def test_lane_summaries_list_every_declared_lane_with_totals() -> None:
    items = [PlanItem("hero", "2K", NOW + HOUR), PlanItem("cat", "2K", NOW + 30 * HOUR)]
    p = plan(items, realtime=[rt("google", 10), rt("spare", 10, prices={"2K": 1.0})], batch=[BATCH])
    lanes = {s.lane: s for s in p.lanes}
    assert list(lanes) == ["batch", "google", "spare"]
    assert (lanes["batch"].items, lanes["batch"].expected_cost_usd) == (1, 0.067)
    assert (lanes["google"].items, lanes["google"].kind) == (1, "realtime")
    assert lanes["google"].last_finish == NOW + timedelta(seconds=6)
    assert (lanes["spare"].items, lanes["spare"].last_finish) == (0, None)


def test_describe_prints_lanes_costs_savings_and_infeasible_items() -> None:
    items = [
        PlanItem("hero", "2K", NOW + HOUR),
        PlanItem("cat", "4K", NOW + 30 * HOUR),
        PlanItem("late", "1K", NOW - HOUR),
    ]
    text = plan(items, realtime=[rt("google", 10)], batch=[BATCH]).describe()
    assert "3 items - 1 batch, 1 realtime, 1 infeasible" in text
    assert "confidence 50%" in text
    assert "google" in text and "batch" in text
    assert "Expected cost $0.254" in text  # 0.134 + 0.12
    assert "Google direct list price $0.374" in text
    assert "savings $0.120 (32%)" in text
    assert "late [1K]" in text and "deadline_passed" in text
    assert "earliest achievable 2026-02-15T12:00:12+00:00" in text  # after hero's 6 s slot
    feasible = plan([PlanItem("cat", "1K", NOW + 30 * HOUR)], batch=[BATCH]).describe()
    assert "Every item meets its deadline." in feasible


def test_empty_manifest_is_an_empty_feasible_plan() -> None:
    p = plan([], realtime=[rt()], batch=[BATCH])
    assert p.feasible and p.assignments == () and p.expected_cost_usd == 0.0
    assert "savings $0.000" in p.describe()


def test_large_manifest_plans_quickly_and_respects_every_deadline() -> None:
    items = [PlanItem(f"i{i}", "2K", NOW + (i % 50 + 1) * MIN) for i in range(5000)]
    p = plan(items, realtime=[rt("google", 20), rt("relay", 10, prices=RELAY)], batch=[BATCH])
    for a in p.assignments:
        assert a.deadline is not None and a.expected_finish <= a.deadline
    # 50 minutes at 30 images/min in total
    assert len(p.assignments) == 1500
    assert len(p.infeasible) == 3500


# --------------------------------------------------------------------------- rescue


def test_realtime_time_needed_pools_channels() -> None:
    assert realtime_time_needed(0, [], confidence=EXACT) == timedelta(0)
    assert realtime_time_needed(3, [], confidence=EXACT) is None
    assert realtime_time_needed(3, [rt(ipm=0)], confidence=EXACT) is None
    assert realtime_time_needed(30, [rt("a", 10), rt("b", 20)], confidence=EXACT) == MIN
    assert realtime_time_needed(1, [rt("a", 1, latency=MIN)], confidence=EXACT) == 2 * MIN
    with pytest.raises(ConfigurationError, match="count"):
        realtime_time_needed(-1, [rt()])


def test_rescue_boundary_is_exact_and_inclusive() -> None:
    deadline = NOW + HOUR
    channels = [rt(ipm=10)]  # 20 items need 2 minutes
    margin = 5 * MIN
    rescue_at = deadline - 2 * MIN - margin
    before = rescue_decision(
        rescue_at - timedelta(microseconds=1), deadline, 20, channels, margin, confidence=EXACT
    )
    at = rescue_decision(rescue_at, deadline, 20, channels, margin, confidence=EXACT)
    assert (before.rescue_now, before.rescue_at) == (False, rescue_at)
    assert "batch still has time" in before.reason
    assert (at.rescue_now, at.rescue_at, at.realtime_needed) == (True, rescue_at, 2 * MIN)
    assert "cancel the batch" in at.reason and "20 unfinished" in at.reason
    assert "misses the deadline" not in at.reason


def test_late_rescue_still_rescues_and_says_it_will_miss() -> None:
    deadline = NOW + MIN
    d = rescue_decision(NOW, deadline, 20, [rt(ipm=10)], timedelta(0), confidence=EXACT)
    assert d.rescue_now
    assert "misses the deadline by 0:01:00" in d.reason
    past = rescue_decision(NOW + 2 * HOUR, deadline, 20, [rt(ipm=10)], timedelta(0), confidence=EXACT)
    assert past.rescue_now


def test_no_rescue_with_nothing_unfinished_or_no_realtime_capacity() -> None:
    deadline = NOW + HOUR
    done = rescue_decision(NOW + 2 * HOUR, deadline, 0, [rt()], MIN)
    assert not done.rescue_now and "nothing unfinished" in done.reason
    for channels in ([], [rt(success=0.0)]):
        d = rescue_decision(NOW + 2 * HOUR, deadline, 5, channels, MIN)
        assert not d.rescue_now and d.realtime_needed is None
        assert "cannot be rescued" in d.reason


def test_rescue_needs_more_time_for_more_items_and_higher_confidence() -> None:
    deadline = NOW + 2 * HOUR
    channels = [rt(ipm=10, success=0.6)]
    few = rescue_decision(NOW, deadline, 10, channels, MIN)
    many = rescue_decision(NOW, deadline, 500, channels, MIN)
    assert many.rescue_at < few.rescue_at
    sure = rescue_decision(NOW, deadline, 10, channels, MIN, confidence=0.99)
    loose = rescue_decision(NOW, deadline, 10, channels, MIN, confidence=EXACT)
    assert sure.rescue_at < loose.rescue_at


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((NOW, NOW + HOUR, 1, [], -MIN), "margin"),
        ((NOW, NOW + HOUR, -1, [], MIN), "unfinished"),
        ((datetime(2026, 2, 15), NOW + HOUR, 1, [], MIN), "now"),
        ((NOW, datetime(2026, 2, 16), 1, [], MIN), "deadline"),
    ],
)
def test_rescue_refuses_bad_input(args: tuple[object, ...], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        rescue_decision(*args)  # type: ignore[arg-type]
