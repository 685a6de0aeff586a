"""Adapters between the pure deadline planner and the project's real inputs, and the rescue point.

``planning.planner`` decides on plain values (``PlanItem``, ``LaneCapacity``, ``BatchLane``) so it
stays pure and testable. Something has to turn manifest items, durations, channel connections
and recent run reports into those values — that is this module (the batch lane and its recorded
turnarounds are ``planning.history``). It also answers the batch lane's one deadline question:

* **Rescue points**: ``rescue_point`` is the wall-clock time at which a batch job that is still
  running must be cancelled so that realtime can finish its unfinished items by the deadline.
  ``batch_end_time`` puts it together with the job timeout and the earliest deadline into the
  one end time ``BatchImageOperator`` waits until (the job is given up there);
  ``planner.rescue_decision`` is the same decision at any ``now``, for operators of your own.

Only storage reads happen here (never a billable call); time is always an argument.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from airflow_banana.channels.config import ChannelConfig
from airflow_banana.exceptions import ConfigurationError, StorageError
from airflow_banana.manifests import ManifestItem, parse_duration, rendered_none
from airflow_banana.models import IMAGE_SIZES
from airflow_banana.planning.planner import (
    DEFAULT_CONFIDENCE,
    DEFAULT_REALTIME_LATENCY,
    LaneCapacity,
    PlanItem,
    rescue_decision,
)
from airflow_banana.routing.eligibility import refusal, restricted
from airflow_banana.storage.objects import Storage, join_uri

log = logging.getLogger(__name__)

# Used when there is no recent report for a channel: a little below 1 so that a plan never
# assumes every call succeeds (overload is the normal state of this model at peak).
DEFAULT_SUCCESS_RATE = 0.9
# Below this many recorded calls a channel's measured success rate is too noisy to plan on.
MIN_CALLS_FOR_RATE = 20
DEFAULT_RESCUE_MARGIN = timedelta(minutes=30)


# --------------------------------------------------------------------------- durations

# ``str(timedelta)``: how Airflow serializes a timedelta in a templated field ("1 day, 0:30:00").
_TIMEDELTA_STR = re.compile(r"^(?:(\d+) days?, )?(\d+):(\d{2}):(\d{2}(?:\.\d+)?)$")


def duration_of(value: str | timedelta | float | int | None, *, what: str) -> timedelta | None:
    """A duration from ``24h`` / ``+6h`` / ``PT6H`` / ``1d12h`` / ``0:30:00`` / seconds / a timedelta.

    None (or an empty rendered template) stays None.
    """
    if rendered_none(value):
        return None
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ConfigurationError(f"{what}: expected a duration such as '24h', got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ConfigurationError(f"{what}: expected a finite number of seconds, got {value!r}")
        return timedelta(seconds=float(value))
    text = str(value).strip()
    clock = _TIMEDELTA_STR.match(text)
    if clock is not None:
        days, hours, minutes, seconds = clock.groups()
        return timedelta(days=int(days or 0), hours=int(hours), minutes=int(minutes), seconds=float(seconds))
    parsed = parse_duration(text) or (parse_duration("+" + text) if not text.startswith(("+", "P")) else None)
    if parsed is None:
        raise ConfigurationError(
            f"{what}: {value!r} is not a duration; write e.g. '24h', '90m', '1d12h' or 'PT6H'"
        )
    return parsed


# --------------------------------------------------------------------------- items


def resolve_item_deadline(
    item: ManifestItem, *, logical_date: datetime, default_deadline: str | timedelta | None = None
) -> datetime | None:
    """The item's absolute deadline: its own, else ``default_deadline`` (durations from the logical date).

    Raises ``ConfigurationError`` (nothing spent) when it cannot be resolved.
    """
    if logical_date.tzinfo is None or logical_date.utcoffset() is None:
        raise ConfigurationError(
            f"item '{item.id}': the logical date {logical_date.isoformat()} has no timezone; "
            "nothing was spent"
        )
    try:
        if item.deadline is not None:
            return item.deadline_at(logical_date)
        if default_deadline is None:
            return None
        if isinstance(default_deadline, timedelta):
            return logical_date + default_deadline
        probe = replace(item, deadline=str(default_deadline))
        return probe.deadline_at(logical_date)
    except ValueError as err:
        raise ConfigurationError(
            f"item '{item.id}': deadline cannot be resolved ({err}); nothing was spent"
        ) from err


def plan_items(
    items: Iterable[ManifestItem],
    *,
    logical_date: datetime,
    default_deadline: str | timedelta | None = None,
    lanes: Mapping[str, ChannelConfig | None] | None = None,
) -> list[PlanItem]:
    """Manifest items as the planner sees them (id, size, absolute deadline), in input order.

    ``lanes`` maps planner lane names to their connection (``None``: a batch backend without one,
    which is Google's own); an item that narrows its channels (``routing.eligibility``) may use
    only the lanes allowed for it.
    """
    out = []
    for item in items:
        allowed = None
        if lanes is not None:
            ok = frozenset(
                name for name, config in lanes.items() if config is None or refusal(config, item) is None
            )
            # None: every lane (most items); a model tier narrows items only where tiers exist
            allowed = ok if restricted(item) or len(ok) < len(lanes) else None
        deadline = resolve_item_deadline(item, logical_date=logical_date, default_deadline=default_deadline)
        out.append(PlanItem(item_id=item.id, image_size=item.image_size, deadline=deadline, lanes=allowed))
    return out


def with_absolute_deadline(item: ManifestItem, deadline: datetime | None) -> ManifestItem:
    """The item with its deadline written as an ISO time, so a sub-manifest means the same in any run."""
    return replace(item, deadline=None if deadline is None else deadline.isoformat())


# --------------------------------------------------------------------------- realtime capacity


def images_per_minute(config: ChannelConfig, *, latency: timedelta = DEFAULT_REALTIME_LATENCY) -> float:
    """A channel's cap in images per minute: the lowest of ipm, rpm and concurrency / latency.

    One request yields one image here, so rpm caps images too; ``max_concurrency`` calls that
    each take ``latency`` bound throughput even on a channel without a published rate.
    """
    seconds = max(latency.total_seconds(), 1e-3)
    caps = [config.max_concurrency * 60.0 / seconds]
    caps += [float(v) for v in (config.ipm, config.rpm) if v is not None]
    return min(caps)


def lane_capacity(
    config: ChannelConfig,
    *,
    success_rate: float | None = None,
    latency: timedelta | None = None,
) -> LaneCapacity:
    """The planner's view of one realtime channel (connection): cap, success rate, prices."""
    rate = DEFAULT_SUCCESS_RATE if success_rate is None else success_rate
    if not 0.0 <= rate <= 1.0:
        raise ConfigurationError(f"channel '{config.name}': success rate must be within 0..1, got {rate}")
    lat = latency if latency is not None else DEFAULT_REALTIME_LATENCY
    return LaneCapacity(
        channel=config.name,
        images_per_minute=images_per_minute(config, latency=lat),
        success_rate=rate,
        # a size the channel's model cannot draw (Flash Image: 2K/4K) is never planned there
        price_by_size={size: config.prices.get(size, math.inf) for size in IMAGE_SIZES},
        billed_on_failure=config.billed_on_failure,
        latency=lat,
    )


def realtime_capacities(
    configs: Sequence[ChannelConfig],
    *,
    success_rates: Mapping[str, float] | None = None,
    latency: timedelta | None = None,
) -> list[LaneCapacity]:
    """``lane_capacity`` for every channel; ``success_rates`` by connection id (missing: default)."""
    rates = dict(success_rates or {})
    unknown = sorted(set(rates) - {c.name for c in configs})
    if unknown:
        raise ConfigurationError(f"success rates given for channels that are not planned: {unknown}")
    return [lane_capacity(c, success_rate=rates.get(c.name), latency=latency) for c in configs]


def recent_success_rates(
    storage: Storage,
    output_prefix: str,
    channels: Iterable[str],
    *,
    max_reports: int = 20,
    min_calls: int = MIN_CALLS_FOR_RATE,
) -> dict[str, float]:
    """Success rate per channel over the newest ``max_reports`` run reports under the prefix.

    Channels with fewer than ``min_calls`` recorded calls are left out (the caller's default
    applies). An unreadable report is logged and skipped: history only refines a plan.
    """
    wanted = set(channels)
    reports: list[tuple[str, dict[str, Any]]] = []
    for uri in storage.list(join_uri(output_prefix, "runs") + "/"):
        if not uri.endswith("/report.json"):
            continue
        try:
            report = storage.read_json(uri)
        except StorageError as err:
            log.warning("planning: skipping unreadable run report %s (%s)", uri, err)
            continue
        if isinstance(report, dict):
            reports.append((str(report.get("finished_at") or ""), report))
    reports.sort(key=lambda pair: pair[0])
    calls: dict[str, int] = {}
    successes: dict[str, int] = {}
    for _, report in reports[-max_reports:]:
        for name, stats in (report.get("channels") or {}).items():
            if name not in wanted or not isinstance(stats, dict):
                continue
            calls[name] = calls.get(name, 0) + int(stats.get("calls", 0))
            successes[name] = successes.get(name, 0) + int(stats.get("successes", 0))
    return {name: successes[name] / n for name, n in calls.items() if n >= min_calls}


# --------------------------------------------------------------------------- rescue


def rescue_point(
    deadline: datetime,
    unfinished_count: int,
    realtime: Sequence[LaneCapacity],
    *,
    margin: timedelta = DEFAULT_RESCUE_MARGIN,
    confidence: float = DEFAULT_CONFIDENCE,
) -> datetime | None:
    """When a still-running batch job must be cancelled so realtime can finish it by ``deadline``.

    ``None`` when a rescue cannot help (nothing unfinished, or no realtime capacity): wait for
    the batch. Use it as a trigger's end time (``planner.rescue_decision`` decides at any ``now``).
    """
    decision = rescue_decision(deadline, deadline, unfinished_count, realtime, margin, confidence=confidence)
    if decision.realtime_needed is None or unfinished_count == 0:
        return None
    return decision.rescue_at


def earliest_deadline(deadlines: Iterable[datetime | None]) -> datetime | None:
    """The deadline a batch job must respect: the earliest of its items' (None if none has one)."""
    present = [d for d in deadlines if d is not None]
    return min(present) if present else None


@dataclass(frozen=True)
class BatchEndTime:
    """When to stop waiting for a batch job, and the two times that could have set it."""

    at: datetime
    deadline: datetime | None  # the earliest deadline of the job's items
    rescue_point: datetime | None  # None: no rescue channels, or no capacity to rescue with


def batch_end_time(
    submitted_at: datetime,
    *,
    job_timeout: timedelta,
    deadlines: Iterable[datetime | None],
    items: int,
    rescue: Sequence[LaneCapacity] | None,
    margin: timedelta = DEFAULT_RESCUE_MARGIN,
    confidence: float = DEFAULT_CONFIDENCE,
    restricted_rescue: tuple[datetime | None, int, Sequence[LaneCapacity]] | None = None,
) -> BatchEndTime:
    """The job timeout, cut to the rescue point (``rescue``: the rescue channels' capacities) or,
    without a possible rescue, to the earliest deadline: past it the job is late anyway, so what
    it has is harvested. The point assumes all ``items`` are still unfinished (the trigger sees
    only the job's state): rescue a little early rather than late.

    ``restricted_rescue`` (official-only / grounded items: their earliest deadline, how many, and
    the capacity of the rescue channels allowed for them) gives those items their own, earlier
    point when fewer channels may rescue them."""
    end = submitted_at + job_timeout
    deadline = earliest_deadline(deadlines)
    if deadline is None:
        return BatchEndTime(end, None, None)
    point = None
    if rescue is not None:
        point = rescue_point(deadline, items, rescue, margin=margin, confidence=confidence)
    if rescue is not None and restricted_rescue is not None:
        narrow_deadline, narrow_items, narrow_capacity = restricted_rescue
        if narrow_items and narrow_deadline is not None:
            narrow = rescue_point(
                narrow_deadline, narrow_items, narrow_capacity, margin=margin, confidence=confidence
            )
            if narrow is not None:
                point = narrow if point is None else min(point, narrow)
    return BatchEndTime(min(end, point if point is not None else deadline), deadline, point)
