"""planning/ beyond the pure planner: items, capacity, batch lanes, rescue points, plans, estimates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from airflow_banana.channels.config import parse_channel
from airflow_banana.exceptions import ConfigurationError
from airflow_banana.manifests import ManifestItem
from airflow_banana.planning.estimate import estimate_scenarios, render_estimate
from airflow_banana.planning.history import TurnaroundRecord, batch_backend_of, batch_lane, turnaround_uri
from airflow_banana.planning.inputs import (
    DEFAULT_SUCCESS_RATE,
    duration_of,
    earliest_deadline,
    images_per_minute,
    lane_capacity,
    plan_items,
    realtime_capacities,
    rescue_point,
    resolve_item_deadline,
    with_absolute_deadline,
)
from airflow_banana.planning.manifest import compute_plan, lanes_to_run, parse_now
from airflow_banana.planning.planner import LaneCapacity, realtime_time_needed, rescue_decision
from airflow_banana.pricing import LIST_PRICES

T0 = datetime(2026, 11, 27, 0, 0, tzinfo=UTC)


def _config(name: str = "banana_g", protocol: str = "gemini", **extra: object):
    return parse_channel(
        name, host="http://127.0.0.1:9", password="key-12345", extra={"protocol": protocol, **extra}
    )


def _item(item_id: str, deadline: str | None = None, size: str = "1K") -> ManifestItem:
    return ManifestItem(id=item_id, prompt=f"prompt {item_id}", image_size=size, deadline=deadline)


# --------------------------------------------------------------------------- durations and deadlines


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("24h", timedelta(hours=24)),
        ("+6h", timedelta(hours=6)),
        ("PT90M", timedelta(minutes=90)),
        ("1d12h", timedelta(days=1, hours=12)),
        (30, timedelta(seconds=30)),
        (1.5, timedelta(seconds=1.5)),
        (timedelta(minutes=3), timedelta(minutes=3)),
        (None, None),
        ("", None),
        ("None", None),
    ],
)
def test_duration_of_accepts_the_usual_spellings(value, expected):
    assert duration_of(value, what="x") == expected


@pytest.mark.parametrize("value", ["soon", "24", "h24", True, float("inf")])
def test_duration_of_rejects_what_is_no_duration(value):
    with pytest.raises(ConfigurationError, match="x:"):
        duration_of(value, what="x")


def test_deadlines_resolve_against_the_logical_date_with_item_before_default():
    own_relative = _item("a", "+2h")
    own_absolute = _item("b", "2026-11-28T09:00:00+01:00")
    none = _item("c")
    assert resolve_item_deadline(own_relative, logical_date=T0, default_deadline="+9h") == T0 + timedelta(
        hours=2
    )
    assert resolve_item_deadline(own_absolute, logical_date=T0) == datetime(2026, 11, 28, 8, tzinfo=UTC)
    assert resolve_item_deadline(none, logical_date=T0) is None
    assert resolve_item_deadline(none, logical_date=T0, default_deadline="+9h") == T0 + timedelta(hours=9)
    assert resolve_item_deadline(
        none, logical_date=T0, default_deadline=timedelta(hours=1)
    ) == T0 + timedelta(hours=1)
    assert resolve_item_deadline(none, logical_date=T0, default_deadline="2026-12-01T00:00:00Z") == datetime(
        2026, 12, 1, tzinfo=UTC
    )


def test_bad_deadlines_fail_before_any_spend_and_name_the_item():
    with pytest.raises(ConfigurationError, match=r"item .c.*nothing was spent"):
        resolve_item_deadline(_item("c"), logical_date=T0, default_deadline="tomorrow")
    with pytest.raises(ConfigurationError, match="no timezone"):
        resolve_item_deadline(_item("c"), logical_date=datetime(2026, 1, 1))


def test_plan_items_keep_order_size_and_resolved_deadline():
    items = [_item("x", "+1h", "4K"), _item("y")]
    planned = plan_items(items, logical_date=T0, default_deadline="+30h")
    assert [(p.item_id, p.image_size, p.deadline) for p in planned] == [
        ("x", "4K", T0 + timedelta(hours=1)),
        ("y", "1K", T0 + timedelta(hours=30)),
    ]


def test_sub_manifest_items_carry_absolute_deadlines():
    item = with_absolute_deadline(_item("x", "+1h"), T0 + timedelta(hours=1))
    assert item.deadline == "2026-11-27T01:00:00+00:00"
    assert item.deadline_at(datetime(2030, 1, 1, tzinfo=UTC)) == T0 + timedelta(hours=1)
    assert with_absolute_deadline(_item("x", "+1h"), None).deadline is None


# --------------------------------------------------------------------------- capacity


def test_images_per_minute_is_the_lowest_cap():
    assert images_per_minute(_config(max_concurrency=4)) == 4.0  # 4 calls x 60 s each
    assert images_per_minute(_config(max_concurrency=4), latency=timedelta(seconds=10)) == 24.0
    assert (
        images_per_minute(_config(max_concurrency=50, rpm=30, ipm=20), latency=timedelta(seconds=10)) == 20.0
    )
    assert images_per_minute(_config(max_concurrency=50, rpm=10), latency=timedelta(seconds=10)) == 10.0


def test_lane_capacity_takes_prices_and_failure_billing_from_the_connection():
    relay = _config("relay", "openai", prices={"1K": 0.05, "2K": 0.05, "4K": 0.05}, billed_on_failure=True)
    lane = lane_capacity(relay, success_rate=0.5, latency=timedelta(seconds=6))
    assert lane.channel == "relay" and lane.billed_on_failure
    assert lane.images_per_minute == 40.0
    assert lane.expected_cost("1K") == pytest.approx(0.10)
    assert lane_capacity(_config()).success_rate == DEFAULT_SUCCESS_RATE
    assert lane_capacity(_config()).price_by_size == LIST_PRICES["gemini"]
    with pytest.raises(ConfigurationError, match="banana_g"):
        lane_capacity(_config(), success_rate=1.5)


def test_success_rates_must_name_planned_channels():
    caps = realtime_capacities([_config("a"), _config("b")], success_rates={"b": 0.5})
    assert [c.success_rate for c in caps] == [DEFAULT_SUCCESS_RATE, 0.5]
    with pytest.raises(ConfigurationError, match="zzz"):
        realtime_capacities([_config("a")], success_rates={"zzz": 0.5})


# --------------------------------------------------------------------------- batch lanes


def test_batch_backend_follows_the_protocol():
    assert batch_backend_of(_config()) == "developer"
    assert batch_backend_of(_config("v", "vertex", project="p", location="us-central1")) == "vertex"
    with pytest.raises(ConfigurationError, match=r"relay.*no batch API"):
        batch_backend_of(_config("relay", "openai"))


def test_batch_lane_uses_batch_prices_and_a_fixed_or_default_turnaround():
    fixed = batch_lane(_config(), turnaround=timedelta(hours=3))
    assert fixed.name == "batch:banana_g" and fixed.turnaround == timedelta(hours=3)
    assert fixed.price_by_size == LIST_PRICES["batch"]
    default = batch_lane("vertex")
    assert default.name == "batch:vertex" and default.turnaround == timedelta(hours=24)
    assert default.estimate is not None and default.estimate.source == "default"
    with pytest.raises(ConfigurationError, match="backend"):
        batch_lane("nope")
    with pytest.raises(ConfigurationError, match="positive"):
        batch_lane("developer", turnaround=timedelta(0))


def test_turnaround_record_serializes_duration_and_censoring():
    rec = TurnaroundRecord(
        "developer", "batches/1", T0, T0 + timedelta(hours=2), 10, "CANCELLED", censored=True
    )
    assert rec.duration_s == 7200.0
    assert '"censored": true' in rec.to_json() and '"duration_s": 7200.0' in rec.to_json()
    assert turnaround_uri("gs://b/out/", "developer") == "gs://b/out/_banana/turnaround/developer.jsonl"
    with pytest.raises(ConfigurationError):
        turnaround_uri("gs://b/out", "../x")


# --------------------------------------------------------------------------- rescue


def test_rescue_point_is_deadline_minus_realtime_time_minus_margin():
    caps = [LaneCapacity("rt", 10.0, 1.0, LIST_PRICES["gemini"], latency=timedelta(seconds=30))]
    deadline = T0 + timedelta(hours=6)
    margin = timedelta(minutes=10)
    needed = realtime_time_needed(40, caps)
    assert needed is not None and needed > timedelta(minutes=4)
    point = rescue_point(deadline, 40, caps, margin=margin)
    assert point == deadline - needed - margin
    # More unfinished items need more realtime time: the point moves earlier.
    later = rescue_point(deadline, 4, caps, margin=margin)
    assert later is not None and later > point
    assert rescue_decision(point - timedelta(seconds=1), deadline, 40, caps, margin).rescue_now is False
    assert rescue_decision(point, deadline, 40, caps, margin).rescue_now is True


def test_no_rescue_point_without_work_or_capacity():
    caps = [LaneCapacity("rt", 10.0, 1.0, LIST_PRICES["gemini"])]
    assert rescue_point(T0, 0, caps) is None
    assert rescue_point(T0, 5, []) is None
    assert rescue_point(T0, 5, [LaneCapacity("rt", 10.0, 0.0, LIST_PRICES["gemini"])]) is None


def test_earliest_deadline_ignores_items_without_one():
    assert earliest_deadline([None, T0 + timedelta(hours=2), T0 + timedelta(hours=1)]) == T0 + timedelta(
        hours=1
    )
    assert earliest_deadline([None, None]) is None


# --------------------------------------------------------------------------- the plan step, pure half


def _mixed_items() -> list[ManifestItem]:
    return [
        _item("hero-1", "+2h"),
        _item("hero-4k", "+2h", "4K"),
        _item("bulk-1", "+48h"),
        _item("bulk-2"),
        _item("late", "2026-11-26T00:00:00Z"),
        _item("done-already", "+1h"),
    ]


def _computed(**kwargs: object):
    args: dict[str, object] = {
        "configs": [_config(rpm=30)],
        "batch": "developer",
        "now": T0,
        "logical_date": T0,
        "skip": ["done-already"],
    }
    args.update(kwargs)
    return compute_plan(_mixed_items(), **args)  # type: ignore[arg-type]


def test_compute_plan_routes_urgent_items_realtime_and_the_rest_batch():
    computed = _computed()
    plan = computed.plan
    assert plan.item_ids("realtime") == ("hero-1", "hero-4k")
    assert set(plan.item_ids("batch")) == {"bulk-1", "bulk-2"}
    assert [bad.item_id for bad in plan.infeasible] == ["late"]
    assert plan.infeasible[0].code == "deadline_passed"
    assert computed.skipped_done == ("done-already",)
    assert "done-already" not in computed.items
    assert plan.expected_cost_usd == pytest.approx(0.134 + 0.24 + 2 * 0.067)


def test_compute_plan_batch_turnaround_decides_what_batch_can_make():
    # A 1 h batch turnaround makes the heroes' 2 h deadline reachable at half price.
    plan = _computed(batch_turnaround="1h").plan
    assert plan.item_ids("realtime") == ()
    assert set(plan.item_ids("batch")) == {"hero-1", "hero-4k", "bulk-1", "bulk-2"}
    # Without a batch lane, everything with time left goes realtime.
    only_rt = _computed(batch=None).plan
    assert set(only_rt.item_ids("realtime")) == {"hero-1", "hero-4k", "bulk-1", "bulk-2"}


def test_compute_plan_is_capacity_bound_with_slow_channels():
    items = [_item(f"hero-{i}", "+10m") for i in range(20)]
    computed = compute_plan(
        items,
        configs=[_config(max_concurrency=2)],
        batch="developer",
        now=T0,
        logical_date=T0,
        success_rates={"banana_g": 1.0},
        realtime_latency="60s",
    )
    # 2 images a minute, first after 60 s: about 19 fit in 10 minutes, the rest cannot.
    plan = computed.plan
    assert 0 < len(plan.infeasible) < 20
    assert {bad.code for bad in plan.infeasible} == {"capacity"}
    assert all(a.expected_finish <= T0 + timedelta(minutes=10) for a in plan.assignments)


def test_estimate_compares_all_realtime_all_batch_and_the_plan():
    estimate = estimate_scenarios(_computed())
    rows = {row["name"].split(" (")[0]: row for row in estimate["scenarios"]}
    assert estimate["items"] == 5 and estimate["skipped_done"] == 1
    assert estimate["sizes"] == {"1K": 4, "4K": 1}
    assert rows["all realtime"]["cost_usd"] == pytest.approx(4 * 0.134 + 0.24)
    assert rows["all realtime"]["misses"] == 1  # only the passed deadline
    assert rows["all batch"]["cost_usd"] == pytest.approx(4 * 0.067 + 0.12)
    assert rows["all batch"]["misses"] == 3  # heroes and the passed one
    assert rows["deadline plan"]["misses"] == 1
    assert rows["deadline plan"]["realtime"] == 2 and rows["deadline plan"]["batch"] == 2
    assert estimate["plan_savings_vs_all_realtime_usd"] == pytest.approx(2 * (0.134 - 0.067))
    text = render_estimate(estimate)
    assert "all batch" in text and "deadline plan" in text and "saves $0.134" in text


def test_estimate_without_channels_leaves_realtime_finish_unknown():
    estimate = estimate_scenarios(_computed(configs=[]))
    realtime = estimate["scenarios"][0]
    assert realtime["finish"] is None and realtime["misses"] is None
    assert "unknown (no channels)" in render_estimate(estimate)


def test_lanes_to_run_follows_only_lanes_with_work():
    both = {"realtime_manifests": ["a"], "batch_manifests": ["b"]}
    assert lanes_to_run(both, realtime_task_id="rt", batch_task_id="bt") == ["rt", "bt"]
    assert lanes_to_run(
        {"realtime_manifests": [], "batch_manifests": ["b"]}, realtime_task_id="rt", batch_task_id="bt"
    ) == ["bt"]
    assert lanes_to_run({"realtime_manifests": [], "batch_manifests": []}, realtime_task_id="rt") == []


def test_parse_now():
    assert parse_now("2026-11-27T00:00:00Z") == T0
    assert parse_now(T0) == T0
    assert parse_now(None).tzinfo is not None
    with pytest.raises(ConfigurationError, match="timezone"):
        parse_now("2026-11-27T00:00:00")
    with pytest.raises(ConfigurationError, match="ISO"):
        parse_now("yesterday")
