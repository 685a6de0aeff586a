"""Deadline planner: send each item through Batch or a realtime channel, and decide batch rescues.

Users otherwise pick one lane by hand and either overpay (everything realtime) or miss deadlines
(everything batch, 24 h target, jobs occasionally stuck far longer). The planner assigns every
item to the cheapest lane that meets its deadline with a stated confidence, and reports the
items no lane can make *before* anything is spent, with the reason and the earliest time that is
achievable.

Model (deliberately simple and documented, so a plan can be checked by hand):

* Batch lanes have unlimited capacity, a per-size price and a turnaround already taken at the
  confidence percentile (``BatchLane.from_history`` derives it from recorded job durations).
  An item fits a batch lane when ``now + turnaround <= deadline``.
* Realtime channels are finite: channel *i* serves successes at ``cap_i x success_rate_i`` per
  minute. The *k*-th success on a channel completes at ``now + latency + A(k) / cap`` where
  ``A(k)`` is the number of attempts needed for *k* successes at the stated confidence (normal
  approximation of the negative binomial: ``k/p + z_c * sqrt(k(1-p))/p``; exactly ``k/p`` at
  confidence 0.5 and ``k`` when ``p == 1``).
* Items are taken in deadline order (EDF, ties in input order). Each goes to the cheapest lane
  meeting its deadline; on an equal price batch wins because it uses no finite realtime
  capacity. Items with no deadline go to the cheapest batch lane even where a realtime channel
  (a flat-price relay) is cheaper: they leave realtime capacity to items that need it. Only
  without any batch lane do they go realtime, after every item with a deadline. An item no
  lane can serve in time is infeasible and consumes no capacity. Because a slot that meets an earlier deadline
  also meets every later one (the slot times of a channel do not depend on which item fills
  them), taking items in EDF order and giving each any slot that fits plans the largest possible
  number of items; giving each the cheapest such slot is then a greedy cost heuristic.
* Expected cost: the batch price; on realtime the channel price, divided by the success rate
  where the channel bills failed calls. Savings are against Google's direct list price.

Rescue: a batch job is cancelled (finished items harvested, the rest sent realtime) once
``now >= deadline - time realtime needs for the unfinished items - margin``.

Pure: no I/O, no Airflow, ``now`` is always an argument.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from statistics import NormalDist
from typing import Literal

from airflow_banana.exceptions import ConfigurationError
from airflow_banana.models import IMAGE_SIZES
from airflow_banana.planning.turnaround import (
    DEFAULT_MIN_SAMPLES,
    DEFAULT_TURNAROUND,
    TurnaroundEstimate,
    estimate_turnaround,
)
from airflow_banana.pricing import GOOGLE_DIRECT

DEFAULT_CONFIDENCE = 0.95
# Time from dispatch to a finished image on a healthy channel; conservative so that a plan
# with no measured latency does not promise sub-minute finishes.
DEFAULT_REALTIME_LATENCY = timedelta(seconds=60)

LaneKind = Literal["batch", "realtime"]
# Why an item cannot be planned: its deadline is at or before now; realtime could make it when
# idle but not under this load; even an idle realtime channel is too slow; there is no realtime
# capacity at all and batch is too slow (or absent).
# No lane at all may carry the item (its data policy or grounding; ``routing.eligibility``).
InfeasibleCode = Literal["deadline_passed", "capacity", "too_soon", "no_realtime", "no_eligible_lane"]


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class PlanItem:
    """One manifest item as the planner sees it; ``deadline`` is absolute and timezone-aware.

    Relative deadlines (e.g. "+6h" after the logical date) are resolved by the caller, see
    ``planning.inputs.resolve_item_deadline``.
    """

    item_id: str
    image_size: str = "1K"
    deadline: datetime | None = None
    # The lanes (realtime channel or batch lane names) the item may use -- ``routing.eligibility``
    # for official-only and grounded items; None: every lane.
    lanes: frozenset[str] | None = None

    def may_use(self, lane: str) -> bool:
        return self.lanes is None or lane in self.lanes


@dataclass(frozen=True)
class LaneCapacity:
    """A realtime channel's capacity and prices, as the planner needs them.

    ``images_per_minute`` is the channel's cap (its ``ipm``/``rpm``), ``success_rate`` the recent
    fraction of attempts that returned an image (0..1), ``latency`` the dispatch-to-image time.
    """

    channel: str
    images_per_minute: float
    success_rate: float
    price_by_size: Mapping[str, float]
    billed_on_failure: bool = False
    latency: timedelta = DEFAULT_REALTIME_LATENCY

    @property
    def effective_per_minute(self) -> float:
        """Successes per minute at the cap: the throughput the planner schedules against."""
        return self.images_per_minute * self.success_rate

    def expected_cost(self, image_size: str) -> float:
        """Expected USD per finished image: failed attempts cost only where the channel bills them."""
        price = self.price_by_size[image_size]
        if self.billed_on_failure and self.success_rate > 0:
            return price / self.success_rate
        return price


@dataclass(frozen=True)
class BatchLane:
    """A batch backend: per-size prices and the turnaround to plan with (at the confidence)."""

    name: str
    price_by_size: Mapping[str, float]
    turnaround: timedelta = DEFAULT_TURNAROUND
    estimate: TurnaroundEstimate | None = None

    @classmethod
    def from_history(
        cls,
        name: str,
        price_by_size: Mapping[str, float],
        durations_s: Iterable[float],
        *,
        confidence: float = DEFAULT_CONFIDENCE,
        min_samples: int = DEFAULT_MIN_SAMPLES,
        default: timedelta = DEFAULT_TURNAROUND,
    ) -> BatchLane:
        """A lane whose turnaround is the ``confidence`` percentile of earlier jobs' durations."""
        _check_confidence(confidence)
        estimate = estimate_turnaround(
            durations_s, percentile=confidence * 100.0, min_samples=min_samples, default=default
        )
        return cls(name=name, price_by_size=price_by_size, turnaround=estimate.duration, estimate=estimate)


# --------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class Assignment:
    """Where one item goes, what it is expected to cost, when it is expected to finish, and why."""

    item_id: str
    image_size: str
    lane: str
    kind: LaneKind
    expected_cost_usd: float
    expected_finish: datetime
    deadline: datetime | None
    reason: str


@dataclass(frozen=True)
class Infeasible:
    """An item no lane can finish by its deadline; nothing will be spent on it.

    ``earliest_achievable`` is when it could finish on the best lane after the planned load
    (``None`` when there is no lane at all).
    """

    item_id: str
    image_size: str
    deadline: datetime | None
    code: InfeasibleCode
    reason: str
    earliest_achievable: datetime | None


@dataclass(frozen=True)
class LaneSummary:
    """Totals for one lane in a plan (lanes with no items are listed too: unused capacity)."""

    lane: str
    kind: LaneKind
    items: int
    expected_cost_usd: float
    last_finish: datetime | None


@dataclass(frozen=True)
class Plan:
    """The planner's answer. ``assignments`` are in input order; infeasible items are separate."""

    now: datetime
    confidence: float
    assignments: tuple[Assignment, ...]
    infeasible: tuple[Infeasible, ...]
    lanes: tuple[LaneSummary, ...]

    @property
    def expected_cost_usd(self) -> float:
        return sum(a.expected_cost_usd for a in self.assignments)

    @property
    def baseline_cost_usd(self) -> float:
        """The planned items at Google's direct list price: what "all realtime" would cost."""
        return sum(GOOGLE_DIRECT[a.image_size] for a in self.assignments)

    @property
    def savings_usd(self) -> float:
        return self.baseline_cost_usd - self.expected_cost_usd

    @property
    def feasible(self) -> bool:
        return not self.infeasible

    def assignment(self, item_id: str) -> Assignment:
        for a in self.assignments:
            if a.item_id == item_id:
                return a
        raise KeyError(item_id)

    def item_ids(self, kind: LaneKind) -> tuple[str, ...]:
        """Item ids of one kind in dispatch order (expected finish, then deadline, then input order)."""
        chosen = [a for a in self.assignments if a.kind == kind]
        chosen.sort(key=lambda a: (a.expected_finish, a.deadline is None, a.deadline or a.expected_finish))
        return tuple(a.item_id for a in chosen)

    def by_lane(self) -> dict[str, tuple[str, ...]]:
        """Lane name -> item ids in dispatch order; every declared lane appears."""
        out: dict[str, list[Assignment]] = {s.lane: [] for s in self.lanes}
        for a in self.assignments:
            out.setdefault(a.lane, []).append(a)
        return {
            lane: tuple(a.item_id for a in sorted(items, key=lambda a: a.expected_finish))
            for lane, items in out.items()
        }

    def summary(self) -> dict[str, object]:
        """A small JSON-able summary for XCom or a CLI: counts and money, no per-item rows."""
        return {
            "now": self.now.isoformat(),
            "confidence": self.confidence,
            "items": len(self.assignments) + len(self.infeasible),
            "batch": sum(1 for a in self.assignments if a.kind == "batch"),
            "realtime": sum(1 for a in self.assignments if a.kind == "realtime"),
            "infeasible": len(self.infeasible),
            "expected_cost_usd": round(self.expected_cost_usd, 6),
            "baseline_cost_usd": round(self.baseline_cost_usd, 6),
            "savings_usd": round(self.savings_usd, 6),
            "lanes": {
                s.lane: {"kind": s.kind, "items": s.items, "expected_cost_usd": round(s.expected_cost_usd, 6)}
                for s in self.lanes
            },
        }

    def describe(self) -> str:
        """A human-readable plan, for the CLI dry run."""
        n_batch = sum(1 for a in self.assignments if a.kind == "batch")
        n_rt = len(self.assignments) - n_batch
        lines = [
            f"Plan at {_fmt(self.now)} (confidence {self.confidence:.0%}): "
            f"{len(self.assignments) + len(self.infeasible)} items - {n_batch} batch, {n_rt} realtime, "
            f"{len(self.infeasible)} infeasible",
            "",
            f"{'lane':<24} {'kind':<9} {'items':>6} {'cost USD':>10}  last expected finish",
        ]
        for s in self.lanes:
            last = _fmt(s.last_finish) if s.last_finish else "-"
            lines.append(f"{s.lane:<24} {s.kind:<9} {s.items:>6} {s.expected_cost_usd:>10.3f}  {last}")
        baseline = self.baseline_cost_usd
        pct = f" ({self.savings_usd / baseline:.0%})" if baseline > 0 else ""
        lines += [
            "",
            f"Expected cost ${self.expected_cost_usd:.3f}; all realtime at Google direct list price "
            f"${baseline:.3f}; savings ${self.savings_usd:.3f}{pct}",
        ]
        if self.infeasible:
            lines += ["", f"Infeasible ({len(self.infeasible)}; nothing will be spent on them):"]
            for bad in self.infeasible:
                earliest = _fmt(bad.earliest_achievable) if bad.earliest_achievable else "never (no lane)"
                deadline = _fmt(bad.deadline) if bad.deadline else "none"
                lines.append(
                    f"  {bad.item_id} [{bad.image_size}] deadline {deadline}: {bad.code}: {bad.reason}; "
                    f"earliest achievable {earliest}"
                )
        else:
            lines += ["", "Every item meets its deadline."]
        return "\n".join(lines)


@dataclass(frozen=True)
class RescueDecision:
    """Whether to cancel a batch job now and finish its unfinished items through realtime.

    ``realtime_needed`` is the time realtime channels need for the unfinished items at the
    confidence (``None`` when there is no realtime capacity, so no rescue is possible).
    """

    rescue_now: bool
    rescue_at: datetime
    reason: str
    realtime_needed: timedelta | None = None


# --------------------------------------------------------------------------- validation


def _fmt(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def _check_aware(moment: datetime, what: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ConfigurationError(
            f"planner: {what} {moment.isoformat()} has no timezone; give an aware datetime"
        )


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ConfigurationError(f"planner: confidence must be strictly between 0 and 1, got {confidence}")


def _check_prices(table: Mapping[str, float], sizes: set[str], lane: str) -> None:
    for size in sorted(sizes):
        if size not in table:
            raise ConfigurationError(
                f"planner: lane '{lane}' has no price for {size} images; add it to its prices"
            )
        if not table[size] >= 0:
            raise ConfigurationError(
                f"planner: lane '{lane}' price for {size} must be >= 0, got {table[size]}"
            )


def _check_realtime(lanes: Sequence[LaneCapacity], sizes: set[str]) -> None:
    seen: set[str] = set()
    for lane in lanes:
        if lane.channel in seen:
            raise ConfigurationError(f"planner: realtime channel '{lane.channel}' is listed twice")
        seen.add(lane.channel)
        if not 0.0 <= lane.success_rate <= 1.0:
            raise ConfigurationError(
                f"planner: channel '{lane.channel}' success_rate must be within 0..1, got {lane.success_rate}"
            )
        if not (math.isfinite(lane.images_per_minute) and lane.images_per_minute >= 0):
            raise ConfigurationError(
                f"planner: channel '{lane.channel}' images_per_minute must be a number >= 0, "
                f"got {lane.images_per_minute}"
            )
        if lane.latency < timedelta(0):
            raise ConfigurationError(
                f"planner: channel '{lane.channel}' latency must be >= 0, got {lane.latency}"
            )
        _check_prices(lane.price_by_size, sizes, lane.channel)


def _check_batch(lanes: Sequence[BatchLane], sizes: set[str], realtime: Sequence[LaneCapacity]) -> None:
    seen = {lane.channel for lane in realtime}
    for lane in lanes:
        if lane.name in seen:
            raise ConfigurationError(
                f"planner: lane name '{lane.name}' is used twice (batch and realtime names share)"
            )
        seen.add(lane.name)
        if lane.turnaround <= timedelta(0):
            raise ConfigurationError(f"planner: batch lane '{lane.name}' turnaround must be positive")
        _check_prices(lane.price_by_size, sizes, lane.name)


def _check_items(items: Sequence[PlanItem]) -> None:
    seen: set[str] = set()
    for item in items:
        if item.item_id in seen:
            raise ConfigurationError(f"planner: item '{item.item_id}' appears twice; item ids must be unique")
        seen.add(item.item_id)
        if item.image_size not in IMAGE_SIZES:
            raise ConfigurationError(
                f"planner: item '{item.item_id}' image_size {item.image_size!r} is not one of {IMAGE_SIZES}"
            )
        if item.deadline is not None:
            _check_aware(item.deadline, f"item '{item.item_id}' deadline")


# --------------------------------------------------------------------------- realtime simulation


def _attempts_needed(successes: int, success_rate: float, z: float) -> float:
    """Attempts after which ``successes`` successes have happened with the planning confidence."""
    if success_rate >= 1.0:
        return float(successes)
    mean = successes / success_rate
    spread = math.sqrt(successes * (1.0 - success_rate)) / success_rate
    return max(float(successes), mean + z * spread)


class _Queues:
    """Per-channel success counters: the finish time of the next item on each realtime channel."""

    def __init__(self, now: datetime, lanes: Sequence[LaneCapacity], z: float) -> None:
        self.now = now
        self.z = z
        # A channel with no effective throughput can never finish anything: leave it out.
        self.lanes = [lane for lane in lanes if lane.effective_per_minute > 0]
        self.counts = [0] * len(self.lanes)

    def finish_of(self, index: int, nth: int) -> datetime:
        lane = self.lanes[index]
        minutes = _attempts_needed(nth, lane.success_rate, self.z) / lane.images_per_minute
        return self.now + lane.latency + timedelta(minutes=minutes)

    def next_finish(self, index: int) -> datetime:
        return self.finish_of(index, self.counts[index] + 1)

    def take(self, index: int) -> datetime:
        self.counts[index] += 1
        return self.finish_of(index, self.counts[index])

    def idle_best(self) -> datetime | None:
        return min((self.finish_of(i, 1) for i in range(len(self.lanes))), default=None)

    def copy(self) -> _Queues:
        clone = _Queues(self.now, (), self.z)
        clone.lanes = list(self.lanes)
        clone.counts = list(self.counts)
        return clone


# --------------------------------------------------------------------------- planning


def _cheapest_batch(
    lanes: Sequence[BatchLane], size: str, now: datetime, deadline: datetime | None
) -> BatchLane | None:
    fits = [lane for lane in lanes if deadline is None or now + lane.turnaround <= deadline]
    if not fits:
        return None
    # min() keeps the first of equals, so declaration order breaks the last tie.
    return min(fits, key=lambda lane: (lane.price_by_size[size], lane.turnaround))


def _hours(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 3600:.2f} h"


def _schedule(
    items: Sequence[PlanItem],
    *,
    now: datetime,
    realtime: Sequence[LaneCapacity],
    batch: Sequence[BatchLane],
    z: float,
) -> tuple[dict[str, Assignment], list[tuple[PlanItem, InfeasibleCode, str]], _Queues]:
    queues = _Queues(now, realtime, z)
    assigned: dict[str, Assignment] = {}
    failed: list[tuple[PlanItem, InfeasibleCode, str]] = []
    fastest_batch = min((lane.turnaround for lane in batch), default=None)
    idle_best = queues.idle_best()

    for item in items:
        size, deadline = item.image_size, item.deadline
        item_batch = [lane for lane in batch if item.may_use(lane.name)]
        restricted = item.lanes is not None and (batch or queues.lanes)
        if restricted and not item_batch and not any(item.may_use(lane.channel) for lane in queues.lanes):
            failed.append(
                (item, "no_eligible_lane", "no planned lane may carry it (its data policy or grounding)")
            )
            continue
        batch_lane = _cheapest_batch(item_batch, size, now, deadline)
        batch_cost = batch_lane.price_by_size[size] if batch_lane else math.inf

        candidates: list[tuple[float, datetime, int]] = []
        cheaper_but_late = False
        # An item with no deadline has no use for finite realtime capacity: batch whenever there is one.
        realtime_lanes = queues.lanes if deadline is not None or batch_lane is None else []
        for index, lane in enumerate(realtime_lanes):
            if not item.may_use(lane.channel):
                continue  # a filter, not a price: the lane does not exist for this item
            cost = lane.expected_cost(size)
            if cost >= batch_cost:
                continue  # batch is as cheap and uses no finite capacity
            finish = queues.next_finish(index)
            if deadline is None or finish <= deadline:
                candidates.append((cost, finish, index))
            else:
                cheaper_but_late = True

        if candidates:
            cost, _, index = min(candidates)  # cheapest, then earliest finish, then declaration order
            lane = queues.lanes[index]
            finish = queues.take(index)
            if deadline is None:
                why = "no deadline and no batch lane: cheapest realtime channel, after all deadline items"
            elif batch_lane is None:
                why = "batch cannot make the deadline; cheapest realtime channel that can"
            else:
                why = f"realtime ${cost:.3f} is cheaper than batch '{batch_lane.name}' ${batch_cost:.3f}"
            assigned[item.item_id] = Assignment(
                item.item_id, size, lane.channel, "realtime", cost, finish, deadline, why
            )
        elif batch_lane is not None:
            if deadline is None:
                why = "no deadline: cheapest batch lane"
            elif cheaper_but_late:
                why = "realtime channels are full before the deadline; batch makes it"
            else:
                why = "cheapest lane that meets the deadline"
            assigned[item.item_id] = Assignment(
                item.item_id,
                size,
                batch_lane.name,
                "batch",
                batch_cost,
                now + batch_lane.turnaround,
                deadline,
                why,
            )
        else:
            if deadline is None:
                # Only reachable with no batch lane and no usable realtime channel.
                failed.append((item, "no_realtime", "no batch lane and no realtime capacity"))
                continue
            batch_part = (
                f"batch needs {_hours(fastest_batch)} but only {_hours(deadline - now)} remain"
                if fastest_batch is not None
                else "no batch lane"
            )
            if idle_best is None:
                code: InfeasibleCode = "no_realtime"
                why = f"no realtime capacity (no channel with a cap and a success rate above 0); {batch_part}"
            elif idle_best > deadline:
                code = "too_soon"
                why = f"even an idle realtime channel finishes only at {_fmt(idle_best)}; {batch_part}"
            else:
                code = "capacity"
                why = f"realtime channels are busy with earlier deadlines past this one; {batch_part}"
            failed.append((item, code, why))

    return assigned, failed, queues


def _earliest_for_infeasible(
    failed: Sequence[tuple[PlanItem, InfeasibleCode, str]],
    queues: _Queues,
    batch: Sequence[BatchLane],
    now: datetime,
) -> list[Infeasible]:
    # Each infeasible item is appended after the planned load, in order, on whichever lane
    # finishes it first: "if you relax the deadline to this, it fits without displacing others".
    queues = queues.copy()
    out = []
    for item, code, why in failed:
        if code == "no_eligible_lane":
            out.append(Infeasible(item.item_id, item.image_size, item.deadline, code, why, None))
            continue
        fastest = min((lane.turnaround for lane in batch if item.may_use(lane.name)), default=None)
        by_batch = now + fastest if fastest is not None else None
        usable = [i for i, lane in enumerate(queues.lanes) if item.may_use(lane.channel)]
        best_rt = min(usable, key=queues.next_finish, default=None)
        by_rt = queues.next_finish(best_rt) if best_rt is not None else None
        earliest: datetime | None
        if by_rt is not None and (by_batch is None or by_rt < by_batch):
            assert best_rt is not None
            earliest = queues.take(best_rt)
        else:
            earliest = by_batch
        out.append(Infeasible(item.item_id, item.image_size, item.deadline, code, why, earliest))
    return out


def make_plan(
    items: Sequence[PlanItem],
    *,
    now: datetime,
    realtime: Sequence[LaneCapacity] = (),
    batch: Sequence[BatchLane] = (),
    confidence: float = DEFAULT_CONFIDENCE,
) -> Plan:
    """Assign each item to the cheapest lane that meets its deadline with ``confidence``.

    Raises ``ConfigurationError`` (nothing spent) on bad input: naive datetimes, duplicate ids,
    unknown sizes, missing prices, out-of-range rates. Infeasible items are not an error: they are
    reported in ``Plan.infeasible`` so the caller can stop or proceed before spending.
    """
    _check_aware(now, "now")
    _check_confidence(confidence)
    _check_items(items)
    sizes = {item.image_size for item in items}
    _check_realtime(realtime, sizes)
    _check_batch(batch, sizes, realtime)
    z = NormalDist().inv_cdf(confidence)

    passed: list[tuple[PlanItem, InfeasibleCode, str]] = []
    to_schedule: list[PlanItem] = []
    for item in items:
        if item.deadline is not None and item.deadline <= now:
            ago = now - item.deadline
            passed.append((item, "deadline_passed", f"the deadline passed {_hours(ago)} before planning"))
        else:
            to_schedule.append(item)
    # EDF; sorted() is stable, so equal deadlines keep input order; no deadline goes last.
    to_schedule.sort(key=lambda i: (i.deadline is None, i.deadline or now))

    assigned, failed, queues = _schedule(to_schedule, now=now, realtime=realtime, batch=batch, z=z)

    # Report passed deadlines first (they are the most urgent to fix), then in EDF order.
    infeasible = _earliest_for_infeasible([*passed, *failed], queues, batch, now)
    assignments = tuple(assigned[item.item_id] for item in items if item.item_id in assigned)
    return Plan(
        now, confidence, assignments, tuple(infeasible), _lane_summaries(assignments, realtime, batch)
    )


def _lane_summaries(
    assignments: Sequence[Assignment], realtime: Sequence[LaneCapacity], batch: Sequence[BatchLane]
) -> tuple[LaneSummary, ...]:
    declared: list[tuple[str, LaneKind]] = [(lane.name, "batch") for lane in batch]
    declared += [(lane.channel, "realtime") for lane in realtime]
    out = []
    for name, kind in declared:
        mine = [a for a in assignments if a.lane == name]
        out.append(
            LaneSummary(
                name,
                kind,
                len(mine),
                sum(a.expected_cost_usd for a in mine),
                max((a.expected_finish for a in mine), default=None),
            )
        )
    return tuple(out)


# --------------------------------------------------------------------------- rescue


def realtime_time_needed(
    count: int, realtime: Sequence[LaneCapacity], *, confidence: float = DEFAULT_CONFIDENCE
) -> timedelta | None:
    """Time all realtime channels together need to finish ``count`` items at ``confidence``.

    Items go to whichever channel finishes its next one first. ``None``: no usable capacity.
    """
    _check_confidence(confidence)
    if count < 0:
        raise ConfigurationError(f"planner: item count must be >= 0, got {count}")
    _check_realtime(realtime, set())
    if count == 0:
        return timedelta(0)
    epoch = datetime(2000, 1, 1, tzinfo=UTC)
    queues = _Queues(epoch, realtime, NormalDist().inv_cdf(confidence))
    if not queues.lanes:
        return None
    heap = [(queues.next_finish(i), i) for i in range(len(queues.lanes))]
    heapq.heapify(heap)
    last = epoch
    for _ in range(count):
        _, index = heapq.heappop(heap)
        last = queues.take(index)
        heapq.heappush(heap, (queues.next_finish(index), index))
    return last - epoch


def rescue_decision(
    now: datetime,
    deadline: datetime,
    unfinished_count: int,
    realtime_capacity: Sequence[LaneCapacity],
    margin: timedelta,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
) -> RescueDecision:
    """Decide whether to cancel a batch job now and finish its unfinished items on realtime.

    Rescue when ``now >= deadline - realtime_needed(unfinished) - margin`` (inclusive). With
    nothing unfinished, or no realtime capacity, there is nothing a rescue could do.
    """
    _check_aware(now, "now")
    _check_aware(deadline, "deadline")
    if margin < timedelta(0):
        raise ConfigurationError(f"planner: rescue margin must be >= 0, got {margin}")
    if unfinished_count < 0:
        raise ConfigurationError(f"planner: unfinished item count must be >= 0, got {unfinished_count}")
    if unfinished_count == 0:
        return RescueDecision(
            False, deadline, "nothing unfinished in the batch: no rescue needed", timedelta(0)
        )
    needed = realtime_time_needed(unfinished_count, realtime_capacity, confidence=confidence)
    if needed is None:
        return RescueDecision(
            False,
            deadline,
            f"no realtime capacity (no channel with a cap and a success rate above 0): "
            f"{unfinished_count} unfinished items cannot be rescued; waiting for the batch",
            None,
        )
    rescue_at = deadline - needed - margin
    basis = (
        f"deadline {_fmt(deadline)} - {needed} realtime needs for {unfinished_count} unfinished items "
        f"- margin {margin} = {_fmt(rescue_at)}"
    )
    if now < rescue_at:
        return RescueDecision(False, rescue_at, f"batch still has time; rescue point is {basis}", needed)
    reason = (
        f"rescue point reached ({basis}): cancel the batch, harvest finished items, "
        f"generate the {unfinished_count} unfinished through realtime"
    )
    finish = now + needed
    if finish > deadline:
        reason += (
            f"; expected finish {_fmt(finish)} misses the deadline by {finish - deadline}, still the earliest"
        )
    return RescueDecision(True, rescue_at, reason, needed)
