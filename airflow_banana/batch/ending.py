"""The second half of a batch run: how the job ended, its harvest and rescue, its turnaround.

The wait (trigger or worker) ends with an event: the job ended, or it outlived its end time. A
``JobEnding`` collects what the operator learns from then on, step by step: the job as it
ended (cancelled and settled first at its end time, ``batch.wait``), then the items harvested
and rescued (``batch.harvest``). The job's turnaround is recorded with the final state known
*so far* whatever step fails after it (``turnaround_recorded``): the job has ended either way,
and later plans learn from it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow_banana.batch.harvest import harvest_and_rescue
from airflow_banana.batch.report import record_job_turnaround
from airflow_banana.batch.wait import ended_event, final_snapshot, settle_limits

if TYPE_CHECKING:
    from airflow_banana.batch.jobs import JobControl, JobSnapshot
    from airflow_banana.batch.lifecycle import BatchRun
    from airflow_banana.batch.rescue import RealtimeRescue
    from airflow_banana.batch.state import BatchJobRecord
    from airflow_banana.storage.report import ItemOutcome


@dataclass
class JobEnding:
    """What is known about the job's end so far (mutable on purpose: filled step by step)."""

    job_name: str
    event: Mapping[str, Any]
    ended_at: datetime
    snapshot: JobSnapshot | None = None  # the job as it ended, once read
    outcomes: dict[str, ItemOutcome] = field(default_factory=dict)
    story: dict[str, Any] = field(default_factory=dict)  # the report's words on how it ended

    @classmethod
    def from_event(cls, event: Mapping[str, Any] | None, *, what: str) -> JobEnding:
        """The ending an event announces (``ended`` or ``end_time``); any other event raises."""
        ended_at = datetime.now(UTC)
        job_name = ended_event(event, what=what)
        assert event is not None
        return cls(job_name, event, ended_at)

    @property
    def cancelled(self) -> bool:
        """The wait ended at the job's end time, so the job is cancelled (not ended by itself)."""
        return self.event["status"] == "end_time"

    @property
    def final_state(self) -> str:
        """The job's state as last read: the snapshot's once read, else the event's."""
        if self.snapshot is not None:
            return self.snapshot.state.value
        return str(self.event.get("state") or "")

    def settle(self, jobs: JobControl, *, rescuing: bool, margin: timedelta, poll_interval_s: float) -> None:
        """Read the job as it ended; at its end time (its rescue point when ``rescuing``, else the
        earliest deadline or job timeout) cancel it and wait until it has ended (``final_snapshot``,
        at most half the rescue ``margin``)."""
        self.snapshot, ending = final_snapshot(
            jobs,
            self.job_name,
            self.event,
            end_time_means="its rescue point" if rescuing else "the earliest deadline or job_timeout",
            ended_at=self.ended_at.isoformat(timespec="seconds"),
            settle=settle_limits(margin.total_seconds(), poll_interval_s),
        )
        self.story = {"ending": ending}

    def harvest(
        self, jobs: JobControl, run: BatchRun, record: BatchJobRecord, rescue: RealtimeRescue | None
    ) -> None:
        """Harvest the settled job line by line and rescue what it did not deliver (``rescue``)."""
        assert self.snapshot is not None, "settle() first"
        step = rescue.for_run(run) if rescue is not None else None
        self.outcomes = harvest_and_rescue(jobs, self.snapshot, record, run, self.story, rescue=step)


@contextmanager
def turnaround_recorded(
    ending: JobEnding, run: BatchRun, record: BatchJobRecord, *, enabled: bool
) -> Iterator[None]:
    """Record the job's turnaround when the block ends, also when it raises (the job has ended)."""
    try:
        yield
    finally:
        if enabled:
            record_job_turnaround(
                run.state.storage,
                run.store.prefix,
                record,
                ending.final_state,
                ending.ended_at,
                cancelled=ending.cancelled,
            )
