"""Adapters between the pure deadline planner and the project's real inputs, plus batch history.

``routing.planner`` decides on plain values (``PlanItem``, ``LaneCapacity``, ``BatchLane``) so it
stays pure and testable. Something has to turn manifest items, channel connections, recorded
batch turnarounds and recent run reports into those values — that is this module. It also owns
the two pieces of batch history the planner learns from:

* **Turnaround records**, one JSON line per finished batch job, at
  ``{output_prefix}/_banana/turnaround/{backend}.jsonl``. Appends are read-modify-write with a
  generation precondition (create-only for the first line), retried a few times, so two
  workers finishing jobs at once cannot lose a line. A job cancelled by a rescue is recorded as
  ``censored``: its true turnaround is *at least* the recorded duration. Censored durations are
  kept as samples because a lower bound pushes the percentile up, never down — dropping the
  jobs that were too slow would make the estimate optimistic exactly when it matters.
* **Rescue points**: ``rescue_point`` is the wall-clock time at which a batch job that is still
  running must be cancelled so that realtime can finish its unfinished items by the deadline.
  ``BatchImageOperator`` uses it as its poll end time when it has rescue channels;
  ``rescue_check`` repeats the pure decision with the then-current unfinished count.

Only storage I/O happens here (never a billable call); time is always an argument.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from airflow_banana.channels.config import ChannelConfig
from airflow_banana.exceptions import ConfigurationError, PreconditionFailedError, StorageError
from airflow_banana.manifests import ManifestItem, parse_duration
from airflow_banana.models import IMAGE_SIZES
from airflow_banana.pricing import LIST_PRICES
from airflow_banana.routing.eligibility import refusal, restricted
from airflow_banana.routing.planner import (
    DEFAULT_CONFIDENCE,
    DEFAULT_REALTIME_LATENCY,
    BatchLane,
    LaneCapacity,
    PlanItem,
    RescueDecision,
    rescue_decision,
)
from airflow_banana.routing.turnaround import DEFAULT_MIN_SAMPLES, DEFAULT_TURNAROUND
from airflow_banana.storage import Storage, join_uri

log = logging.getLogger(__name__)

# Used when there is no recent report for a channel: a little below 1 so that a plan never
# assumes every call succeeds (overload is the normal state of this model at peak).
DEFAULT_SUCCESS_RATE = 0.9
# Below this many recorded calls a channel's measured success rate is too noisy to plan on.
MIN_CALLS_FOR_RATE = 20
DEFAULT_RESCUE_MARGIN = timedelta(minutes=30)
_APPEND_ATTEMPTS = 8
BATCH_LANE_PREFIX = "batch:"
BATCH_BACKENDS: tuple[str, ...] = ("developer", "vertex")


# --------------------------------------------------------------------------- durations

# ``str(timedelta)``: how Airflow serializes a timedelta in a templated field ("1 day, 0:30:00").
_TIMEDELTA_STR = re.compile(r"^(?:(\d+) days?, )?(\d+):(\d{2}):(\d{2}(?:\.\d+)?)$")


def duration_of(value: str | timedelta | float | int | None, *, what: str) -> timedelta | None:
    """A duration from ``24h`` / ``+6h`` / ``PT6H`` / ``1d12h`` / ``0:30:00`` / seconds / a timedelta.

    None (or an empty rendered template) stays None.
    """
    if value is None or (isinstance(value, str) and value.strip() in ("", "None")):
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


# --------------------------------------------------------------------------- batch lanes


_BACKEND_BY_PROTOCOL = {"gemini": "developer", "vertex": "vertex"}


def batch_backend_of(config: ChannelConfig) -> str:
    """The batch backend a connection submits to: ``vertex`` or ``developer`` (Gemini Developer API)."""
    backend = _BACKEND_BY_PROTOCOL.get(config.protocol)
    if backend is None:
        raise ConfigurationError(
            f"channel '{config.name}': protocol {config.protocol!r} has no batch API; "
            "use a gemini (Developer) or vertex connection for the batch lane"
        )
    return backend


def batch_backend_for_protocol(protocol: str) -> str:
    """The turnaround-history backend name of a batch job record's protocol (``gemini`` → ``developer``).

    A name that is already a backend passes through, so records written either way agree.
    """
    if protocol in BATCH_BACKENDS:
        return protocol
    backend = _BACKEND_BY_PROTOCOL.get(protocol)
    if backend is None:
        raise ConfigurationError(
            f"batch job protocol {protocol!r} has no batch turnaround history; expected one of "
            f"{sorted(_BACKEND_BY_PROTOCOL)}"
        )
    return backend


def batch_lane_name(config: ChannelConfig) -> str:
    """Planner lane name for batch through this connection; differs from its realtime name."""
    return BATCH_LANE_PREFIX + config.name


def turnaround_uri(output_prefix: str, backend: str) -> str:
    if not backend or "/" in backend or backend.startswith("."):
        raise ConfigurationError(f"batch turnaround: backend name {backend!r} cannot name an object")
    return join_uri(output_prefix, "_banana", "turnaround", f"{backend}.jsonl")


@dataclass(frozen=True)
class TurnaroundRecord:
    """One finished batch job: how long from submission to its end, and how it ended."""

    backend: str
    job: str
    submitted_at: datetime
    ended_at: datetime
    items: int
    final_state: str
    censored: bool = False  # cancelled before finishing (rescued): the true turnaround is longer

    @property
    def duration_s(self) -> float:
        return (self.ended_at - self.submitted_at).total_seconds()

    def to_json(self) -> str:
        return json.dumps(
            {
                "backend": self.backend,
                "job": self.job,
                "submitted_at": self.submitted_at.isoformat(),
                "ended_at": self.ended_at.isoformat(),
                "duration_s": round(self.duration_s, 3),
                "items": self.items,
                "final_state": self.final_state,
                "censored": self.censored,
            },
            sort_keys=True,
        )


def record_turnaround(storage: Storage, output_prefix: str, record: TurnaroundRecord) -> str:
    """Append ``record`` to the backend's turnaround history; returns the history's URI.

    Safe against concurrent appenders (generation preconditions, bounded retries); a job
    recorded twice (a retried task) is not appended again.
    """
    if record.ended_at < record.submitted_at:
        raise ConfigurationError(
            f"batch turnaround for job {record.job}: ended_at is before submitted_at; not recorded"
        )
    uri = turnaround_uri(output_prefix, record.backend)
    line = record.to_json() + "\n"
    for _ in range(_APPEND_ATTEMPTS):
        stat = storage.stat(uri)
        try:
            if stat is None:
                storage.write_text(uri, line, content_type="application/x-ndjson", if_absent=True)
                return uri
            data, generation = storage.read_with_generation(uri)
            text = data.decode("utf-8")
            if any(_job_of(existing) == record.job for existing in text.splitlines()):
                return uri  # already recorded by an earlier try of the same task
            if text and not text.endswith("\n"):
                text += "\n"
            storage.write_text(
                uri, text + line, content_type="application/x-ndjson", if_generation_match=generation
            )
            return uri
        except PreconditionFailedError:
            continue  # another job's record landed first: re-read and append again
    raise StorageError(
        f"batch turnaround for job {record.job}: {uri} kept changing during {_APPEND_ATTEMPTS} append "
        "attempts; the record was not written (planning falls back to the default estimate)"
    )


def _job_of(line: str) -> str | None:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None
    return str(obj.get("job")) if isinstance(obj, dict) and obj.get("job") is not None else None


def read_turnarounds(storage: Storage, output_prefix: str, backend: str) -> list[float]:
    """Recorded durations (seconds, oldest first) for ``backend``; [] when there is no history.

    Corrupt lines become NaN, which ``estimate_turnaround`` counts as ignored rather than failing.
    """
    uri = turnaround_uri(output_prefix, backend)
    if storage.stat(uri) is None:
        return []
    out: list[float] = []
    for line in storage.iter_lines(uri):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            out.append(float(obj["duration_s"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            out.append(math.nan)
    return out


def batch_lane(
    target: ChannelConfig | str,
    *,
    storage: Storage | None = None,
    output_prefix: str | None = None,
    turnaround: timedelta | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    default: timedelta = DEFAULT_TURNAROUND,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    prices: Mapping[str, float] | None = None,
) -> BatchLane:
    """The planner's batch lane: batch list prices, turnaround at ``confidence``.

    ``target`` is the connection the batch lane submits through, or just a backend name
    (``developer`` / ``vertex``) for dry runs without connections. ``turnaround`` fixes the
    estimate (CLI ``--batch-turnaround``); otherwise it is the percentile of the backend's
    recorded history under ``output_prefix`` (the 24 h default while there are too few jobs).
    """
    if isinstance(target, ChannelConfig):
        backend, name = batch_backend_of(target), batch_lane_name(target)
    else:
        if target not in BATCH_BACKENDS:
            raise ConfigurationError(f"batch backend must be one of {BATCH_BACKENDS}, got {target!r}")
        backend, name = target, BATCH_LANE_PREFIX + target
    table = dict(prices if prices is not None else LIST_PRICES["batch"])
    if turnaround is not None:
        if turnaround <= timedelta(0):
            raise ConfigurationError(f"batch lane '{name}': turnaround must be positive, got {turnaround}")
        return BatchLane(name=name, price_by_size=table, turnaround=turnaround)
    history = read_turnarounds(storage, output_prefix, backend) if storage and output_prefix else []
    return BatchLane.from_history(
        name, table, history, confidence=confidence, min_samples=min_samples, default=default
    )


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
    the batch. Use it as a trigger's end time; at that time call ``rescue_check`` again.
    """
    decision = rescue_decision(deadline, deadline, unfinished_count, realtime, margin, confidence=confidence)
    if decision.realtime_needed is None or unfinished_count == 0:
        return None
    return decision.rescue_at


def rescue_check(
    now: datetime,
    deadline: datetime,
    unfinished_count: int,
    realtime: Sequence[LaneCapacity],
    *,
    margin: timedelta = DEFAULT_RESCUE_MARGIN,
    confidence: float = DEFAULT_CONFIDENCE,
) -> RescueDecision:
    """The planner's rescue decision (thin alias so operators import one module)."""
    return rescue_decision(now, deadline, unfinished_count, realtime, margin, confidence=confidence)


def earliest_deadline(deadlines: Iterable[datetime | None]) -> datetime | None:
    """The deadline a batch job must respect: the earliest of its items' (None if none has one)."""
    present = [d for d in deadlines if d is not None]
    return min(present) if present else None
