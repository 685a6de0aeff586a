"""The batch lane's realtime rescue: when to give a job up, and the items it did not deliver.

With ``rescue_channels`` a batch job is waited for until its rescue point (the issue's)

    earliest deadline - time the rescue channels need for the job's items - rescue_margin

(``planning.inputs.batch_end_time``: the channels' caps and success rates at a confidence), so a
big job is given up early enough for realtime to finish it and a small one may wait longer.
Success rates not given are measured from recent run reports under the output prefix. After the
harvest, items still missing whose deadline has not passed go through the realtime lane (its
own deadline checks apply); the operator hands in how to run that lane, so this package never
imports an operator.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from airflow_banana.exceptions import BananaError, ConfigurationError
from airflow_banana.planning.inputs import (
    DEFAULT_RESCUE_MARGIN,
    batch_end_time,
    duration_of,
    earliest_deadline,
    realtime_capacities,
    recent_success_rates,
)
from airflow_banana.planning.planner import DEFAULT_CONFIDENCE
from airflow_banana.routing.eligibility import refusal, restricted

if TYPE_CHECKING:
    from airflow_banana.batch.harvest import Rescue
    from airflow_banana.batch.lifecycle import BatchRun
    from airflow_banana.batch.state import BatchJobRecord
    from airflow_banana.channels.config import ChannelConfig
    from airflow_banana.manifests.prepare import PreparedManifest
    from airflow_banana.models import ImageRequest
    from airflow_banana.planning.planner import LaneCapacity
    from airflow_banana.realtime.engine import RunResult, WorkItem
    from airflow_banana.storage.objects import Storage
    from airflow_banana.storage.report import ItemOutcome

log = logging.getLogger(__name__)

# How the realtime lane is run for one rescue: the items, in; the run's result, out.
RunLane = Callable[[Sequence["WorkItem"]], "RunResult"]


@dataclass(frozen=True)
class RescuePolicy:
    """The rescue's planning inputs (operator arguments, already rendered and checked)."""

    margin: timedelta = DEFAULT_RESCUE_MARGIN
    latency: timedelta | None = None  # None: the planner's default dispatch-to-image time
    confidence: float = DEFAULT_CONFIDENCE
    success_rates: Mapping[str, float] = field(default_factory=dict)  # override the measured ones

    @classmethod
    def from_arguments(
        cls,
        margin: timedelta | str | None,
        latency: timedelta | str | None,
        confidence: float,
        success_rates: Mapping[str, float],
        *,
        what: str,
    ) -> RescuePolicy:
        """The policy from operator arguments; rendered templates arrive as strings, and every
        error names ``what`` (the task)."""
        checked_margin = duration_of(margin, what=f"{what}: rescue_margin") or timedelta(0)
        if checked_margin < timedelta(0):
            raise ConfigurationError(f"{what}: rescue_margin must not be negative, got {checked_margin}")
        checked_latency = duration_of(latency, what=f"{what}: rescue_latency")
        if checked_latency is not None and checked_latency <= timedelta(0):
            raise ConfigurationError(f"{what}: rescue_latency must be positive, got {checked_latency}")
        if not 0.0 < confidence < 1.0:
            raise ConfigurationError(f"{what}: rescue_confidence must be between 0 and 1, got {confidence}")
        return cls(checked_margin, checked_latency, confidence, dict(success_rates))


def rescue_capacity(
    configs: Sequence[ChannelConfig],
    policy: RescuePolicy,
    *,
    storage: Storage,
    output_prefix: str,
    needs: Sequence[ImageRequest] = (),
) -> list[LaneCapacity]:
    """The rescue channels (those allowed for every one of ``needs``) as planner lanes, at
    measured (or given) success rates."""
    configs = [c for c in configs if all(refusal(c, n) is None for n in needs)]
    try:
        measured = recent_success_rates(storage, output_prefix, [c.name for c in configs])
    except BananaError as err:
        log.warning("recent success rates unavailable (planning with the default): %s", err)
        measured = {}
    rates = {**measured, **policy.success_rates}
    return realtime_capacities(configs, success_rates=rates, latency=policy.latency)


@dataclass(frozen=True)
class RealtimeRescue:
    """A batch task's rescue through realtime: its channels (read when first needed), its
    policy, and how the task runs the realtime lane over given channels, items and run."""

    configs: Callable[[], Sequence[ChannelConfig]]
    policy: RescuePolicy
    run_lane: Callable[[Sequence[ChannelConfig], Sequence[WorkItem], BatchRun], RunResult]

    def capacity(
        self, storage: Storage, output_prefix: str, needs: Sequence[ImageRequest] = ()
    ) -> list[LaneCapacity]:
        return rescue_capacity(
            self.configs(), self.policy, storage=storage, output_prefix=output_prefix, needs=needs
        )

    def warn_unrescuable(self, prepared: PreparedManifest) -> None:
        """Say before submitting which items no rescue channel may carry (official-only or
        grounded): if the batch job does not deliver them, they are not rescued."""
        configs = self.configs()
        stuck = [
            w.request.item_id
            for w in prepared.work
            if restricted(w.request) and all(refusal(c, w.request) is not None for c in configs)
        ]
        if stuck:
            log.warning(
                "%d item(s) (official-only or grounded, e.g. %s) may go to none of the rescue channels "
                "%s: if the batch job does not deliver them, they are not rescued (never sent to a relay)",
                len(stuck),
                ", ".join(stuck[:5]),
                [c.name for c in configs],
            )

    def for_run(self, run: BatchRun) -> Rescue:
        """The harvest's ``rescue`` step (``batch.harvest.harvest_and_rescue``) for ``run``."""
        return lambda work, reasons: rescue_items(
            work, reasons, lambda alive: self.run_lane(self.configs(), alive, run)
        )


def job_end_time(
    record: BatchJobRecord, run: BatchRun, *, job_timeout: timedelta, rescue: RealtimeRescue | None
) -> float:
    """Epoch seconds at which waiting for the job stops (``planning.inputs.batch_end_time``).

    The rescue channels' capacities (with success rates measured from the run's recent reports)
    are read only when an item of the job has a deadline.
    """
    prepared, storage, output_prefix = run.prepared, run.state.storage, run.store.prefix
    submitted = datetime.fromisoformat(record.submitted_at) if record.submitted_at else datetime.now(UTC)
    in_job = set(record.item_ids)
    work = [w for w in prepared.work if w.request.item_id in in_job]
    deadlines = [w.deadline for w in work]
    has_deadline = any(d is not None for d in deadlines)
    policy = rescue.policy if rescue is not None else RescuePolicy()
    # Official-only / grounded items can be rescued only on the channels allowed for them.
    narrow = [w for w in work if restricted(w.request)]
    narrow_deadline = earliest_deadline(w.deadline for w in narrow)
    restricted_rescue = None
    if rescue is not None and narrow and narrow_deadline is not None:
        capacity = rescue.capacity(storage, output_prefix, needs=[w.request for w in narrow])
        restricted_rescue = (narrow_deadline, len(narrow), capacity)
    end = batch_end_time(
        submitted,
        job_timeout=job_timeout,
        deadlines=deadlines,
        items=len(in_job),
        rescue=rescue.capacity(storage, output_prefix) if rescue is not None and has_deadline else None,
        margin=policy.margin,
        confidence=policy.confidence,
        restricted_rescue=restricted_rescue,
    )
    if end.deadline is not None and rescue is not None:
        if end.rescue_point is None:
            log.info(
                "the rescue channels have no capacity to rescue with; waiting for the batch job until "
                "the earliest deadline %s",
                end.deadline.isoformat(timespec="seconds"),
            )
        else:
            log.info(
                "rescue point %s: earliest deadline %s minus what realtime needs for %d item(s) minus "
                "margin %s",
                end.rescue_point.isoformat(timespec="seconds"),
                end.deadline.isoformat(timespec="seconds"),
                len(in_job),
                policy.margin,
            )
    return end.at.timestamp()


def rescue_items(
    work: Sequence[WorkItem], reasons: Mapping[str, str], run_lane: RunLane
) -> dict[str, ItemOutcome]:
    """Items the job did not deliver, through the realtime lane while their deadline allows."""
    now = datetime.now(UTC)
    alive = [w for w in work if w.deadline is None or w.deadline > now]
    if not alive:
        log.warning("%d item(s) missing from the batch, but their deadline has passed: no rescue", len(work))
        return {}
    log.info("rescuing %d item(s) through realtime", len(alive))
    out: dict[str, ItemOutcome] = {}
    for outcome in run_lane(alive).outcomes:
        if outcome.status != "succeeded":
            outcome.reason = f"batch: {reasons.get(outcome.item_id, '')}; realtime rescue: {outcome.reason}"
        out[outcome.item_id] = outcome
    return out
