"""``RescueBatchOperator``: the batch lane with a deadline-aware rescue point and turnaround history.

``BatchImageOperator`` already knows how to stop waiting at an end time, cancel the job, harvest
what finished and send the rest through realtime channels (``rescue_channels``). What it does
not know is *when* to stop: a fixed margin before the earliest deadline is too late for a big
job and too early for a small one. The issue's rule is

    rescue at  deadline - (time realtime needs for the job's unfinished items) - margin

with the realtime time taken from the channels' caps and success rates at a confidence
(``routing.planner.realtime_time_needed``). This subclass computes that point (``planning.
rescue_point``) and uses it as the poll end time. The trigger only reports a job *state*, not
how many lines are done, so the rescue point assumes every item of the job is still unfinished:
the conservative choice (rescue a little early rather than late). Nothing is paid twice — items
the batch delivered are committed by the harvest and skipped by the realtime lane.

It also records how long each job took (``planning.record_turnaround``) so later plans learn the
backend's turnaround; a job cancelled by a rescue is recorded as censored (at least that long).
A failure to record is logged, never raised: history only refines later plans.

It is a subclass in its own module so that the batch lane's operator stays untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow_banana.exceptions import BananaError, ConfigurationError
from airflow_banana.operators._common import load_channel_configs
from airflow_banana.operators.batch import BatchImageOperator
from airflow_banana.planning import (
    DEFAULT_RESCUE_MARGIN,
    TurnaroundRecord,
    duration_of,
    earliest_deadline,
    realtime_capacities,
    recent_success_rates,
    record_turnaround,
    rescue_point,
)
from airflow_banana.routing.planner import DEFAULT_CONFIDENCE

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_banana.batch.state import BatchJobRecord
    from airflow_banana.prepare import PreparedManifest

_BACKEND_BY_PROTOCOL = {"gemini": "developer", "vertex": "vertex"}


class RescueBatchOperator(BatchImageOperator):
    """``BatchImageOperator`` that cancels and rescues a late job in time for the earliest deadline.

    Takes every ``BatchImageOperator`` argument. ``rescue_margin`` (templated; a timedelta or a
    duration such as ``"10m"``) is the safety margin *after* the time realtime needs.

    :param rescue_latency: dispatch-to-image time of the rescue channels to plan with
        (default 60 s); with their caps it sets how long realtime needs.
    :param rescue_confidence: probability that the rescue finishes by the deadline.
    :param rescue_success_rates: channel id -> success rate (default: recent run reports under
        the output prefix, else 0.9).
    :param record_turnaround: append the job's turnaround to the backend's history under the
        output prefix (``_banana/turnaround/{backend}.jsonl``).
    """

    template_fields: Sequence[str] = tuple(
        dict.fromkeys((*BatchImageOperator.template_fields, "rescue_margin", "rescue_latency"))
    )

    def __init__(
        self,
        *,
        rescue_margin: timedelta | str = DEFAULT_RESCUE_MARGIN,
        rescue_latency: timedelta | str | None = None,
        rescue_confidence: float = DEFAULT_CONFIDENCE,
        rescue_success_rates: Mapping[str, float] | None = None,
        record_turnaround: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(rescue_margin=rescue_margin, **kwargs)  # type: ignore[arg-type]
        self.rescue_latency = rescue_latency
        self.rescue_confidence = rescue_confidence
        self.rescue_success_rates = dict(rescue_success_rates or {})
        self.record_turnaround = record_turnaround

    def _coerce(self) -> None:
        # Templated values arrive as strings; the base operator needs a timedelta.
        margin = duration_of(self.rescue_margin, what=f"{self.task_id}: rescue_margin")
        self.rescue_margin = margin if margin is not None else timedelta(0)
        if self.rescue_margin < timedelta(0):
            raise ConfigurationError(f"{self.task_id}: rescue_margin must not be negative")
        self.rescue_latency = duration_of(self.rescue_latency, what=f"{self.task_id}: rescue_latency")

    def execute(self, context: Context) -> dict[str, Any]:
        self._coerce()
        return super().execute(context)

    def execute_complete(self, context: Context, event: Mapping[str, Any] | None = None) -> dict[str, Any]:
        self._coerce()
        ended_at = datetime.now(UTC)
        try:
            return super().execute_complete(context, event)
        finally:
            if (
                self.record_turnaround
                and isinstance(event, Mapping)
                and event.get("status") in ("ended", "end_time")
            ):
                self._record(context, event, ended_at)

    def _end_time(self, record: BatchJobRecord, prepared: PreparedManifest) -> float:
        end = super()._end_time(record, prepared)
        if not self.rescue_channels:
            return end
        in_job = set(record.item_ids)
        deadline = earliest_deadline(w.deadline for w in prepared.work if w.request.item_id in in_job)
        if deadline is None:
            return end
        configs = load_channel_configs(self.rescue_channels, task_id=self.task_id)
        latency = self.rescue_latency if isinstance(self.rescue_latency, timedelta) else None
        rates = {**self._measured_rates([c.name for c in configs]), **self.rescue_success_rates}
        capacity = realtime_capacities(configs, success_rates=rates, latency=latency)
        point = rescue_point(
            deadline, len(in_job), capacity, margin=self.rescue_margin, confidence=self.rescue_confidence
        )
        if point is None:
            self.log.info("no realtime capacity to rescue with; waiting for the batch job")
            return end
        self.log.info(
            "rescue point %s: earliest deadline %s minus what realtime needs for %d item(s) minus margin %s",
            point.isoformat(timespec="seconds"),
            deadline.isoformat(timespec="seconds"),
            len(in_job),
            self.rescue_margin,
        )
        return min(end, point.timestamp())

    def _measured_rates(self, channels: Sequence[str]) -> dict[str, float]:
        """Recent success rates from run reports under the output prefix; {} if unreadable."""
        from airflow_banana.hooks.storage import storage_for

        try:
            storage = storage_for(self.output_prefix, self.gcp_conn_id)
            return recent_success_rates(storage, self.output_prefix, channels)
        except BananaError as err:
            self.log.warning("recent success rates unavailable (planning with the default): %s", err)
            return {}

    def _record(self, context: Context, event: Mapping[str, Any], ended_at: datetime) -> None:
        from airflow_banana.batch.state import JobStateStore
        from airflow_banana.hooks.storage import storage_for
        from airflow_banana.identity import RunIdentity

        try:
            identity = RunIdentity.from_context(context)
            storage = storage_for(self.output_prefix, self.gcp_conn_id)
            record = JobStateStore(storage, self.output_prefix, identity.run_key).load()
            if record is None or not record.job_name or not record.submitted_at:
                return
            backend = _BACKEND_BY_PROTOCOL.get(record.backend, record.backend)
            uri = record_turnaround(
                storage,
                self.output_prefix,
                TurnaroundRecord(
                    backend=backend,
                    job=record.job_name,
                    submitted_at=datetime.fromisoformat(record.submitted_at),
                    ended_at=ended_at,
                    items=len(record.item_ids),
                    final_state=str(event.get("state") or record.final_state or ""),
                    censored=event.get("status") == "end_time",
                ),
            )
            self.log.info("batch turnaround of %s recorded in %s", record.job_name, uri)
        except (BananaError, ValueError, KeyError) as err:
            self.log.warning("could not record the batch turnaround (later plans use the default): %s", err)


__all__ = ["RescueBatchOperator"]
