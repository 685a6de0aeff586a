"""Waiting for a batch job in the worker: polling until it ends, and cancelling at its end time.

Synchronous mode polls here with the same decisions (``batch.poll.PollTracker``) and the same
event (``poll_event``) as the deferred ``BatchJobTrigger``. When the wait ends at the job's end
time the job is cancelled and, before harvesting, waited for (bounded) until it has really
ended: Google keeps finishing lines while a job is CANCELLING, and an item harvested after the
rescue regenerated it would be paid twice. Blocking I/O through job control only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow_banana.batch.poll import JobState, PollAgain, PollPolicy, PollTracker, poll_event
from airflow_banana.exceptions import BananaError, BatchJobError

if TYPE_CHECKING:
    from airflow_banana.batch.jobs import JobControl, JobSnapshot

log = logging.getLogger(__name__)

# Waiting for a cancelled job to end takes at most half the rescue margin, and never longer than
# this: past it, harvesting now (and risking a duplicate) beats missing the deadline.
MAX_CANCEL_SETTLE_S = 300.0


def wait_here(jobs: JobControl, job_name: str, policy: PollPolicy) -> dict[str, Any]:
    """Synchronous mode: poll ``job_name`` until the tracker decides, sleeping in the worker."""
    tracker = PollTracker(policy)
    decision = tracker.start(time.time())
    while isinstance(decision, PollAgain):
        time.sleep(decision.wait_s)
        try:
            snapshot = jobs.get(job_name)
        except BananaError as err:
            log.warning("batch job %s: poll failed: %s", job_name, err)
            decision = tracker.failed(str(err), time.time())
            continue
        decision = tracker.observed(snapshot.state, time.time())
    return poll_event(job_name, decision)


def ended_event(event: Mapping[str, Any] | None, *, what: str) -> str:
    """The job name of an event saying the wait is over (``ended``/``end_time``); else raise."""
    if not isinstance(event, Mapping) or event.get("status") not in ("ended", "end_time"):
        message = (event or {}).get("message") if isinstance(event, Mapping) else None
        raise BatchJobError(
            f"{what}: waiting for the batch job failed: {message or event!r}; "
            "a retry reattaches to the same job (nothing is submitted twice)"
        )
    return str(event.get("job_name") or "")


def cancel_on_kill(conn_id: str, job_name: str) -> None:
    """The task is being stopped: cancel the remote job so it stops spending (never raises)."""
    from airflow_banana.batch import job_control_for_connection

    try:
        jobs = job_control_for_connection(conn_id)
    except BananaError as err:
        log.warning("on_kill: cannot build the batch client to cancel %s: %s", job_name, err)
        return
    try:
        cancel_quietly(jobs, job_name)
    finally:
        jobs.close()


def cancel_quietly(jobs: JobControl, job_name: str) -> None:
    """Cancel the job; a failure is logged (the job may run on until it ends), never raised."""
    try:
        jobs.cancel(job_name)
        log.info("batch job %s cancelled", job_name)
    except BananaError as err:
        log.warning("batch job %s: cancel failed (%s); it may keep running until it ends", job_name, err)


def settle_after_cancel(jobs: JobControl, job_name: str, *, limit_s: float, step_s: float) -> JobSnapshot:
    """Wait at most ``limit_s`` (polling every ``step_s``) until a cancelled job has really ended.

    A CANCELLING job may still finish lines; harvesting and rescuing before it ends could pay
    for those items twice (once in the batch, once through realtime). A failed poll while
    waiting is ridden out; only the first one is fatal.
    """
    give_up = time.monotonic() + limit_s
    snapshot = jobs.get(job_name)
    while not snapshot.state.ended and time.monotonic() < give_up:
        time.sleep(min(step_s, max(0.0, give_up - time.monotonic())))
        try:
            snapshot = jobs.get(job_name)
        except BananaError as err:
            log.warning("batch job %s: poll after the cancel failed (%s); retrying", job_name, err)
    if not snapshot.state.ended:
        log.warning(
            "batch job %s is still %s %.1f s after the cancel; harvesting what is done now — "
            "lines it finishes later may duplicate items rescued through realtime",
            job_name,
            snapshot.state.value,
            limit_s,
        )
    return snapshot


def settle_limits(margin_s: float, poll_interval_s: float) -> tuple[float, float]:
    """(limit, step) of the settle wait: half the rescue margin at most (the rescue keeps the
    other half), ``MAX_CANCEL_SETTLE_S`` at most; polls ten times per poll interval, 0.2-5 s."""
    return min(margin_s / 2, MAX_CANCEL_SETTLE_S), min(5.0, max(0.2, poll_interval_s / 10))


def final_snapshot(
    jobs: JobControl,
    job_name: str,
    event: Mapping[str, Any],
    *,
    end_time_means: str,
    ended_at: str,
    settle: tuple[float, float],
) -> tuple[JobSnapshot, str]:
    """The job as it ended, and a sentence for the report saying how.

    An ``end_time`` event (the job outlived its end time, ``end_time_means``) cancels the job and
    settles (``settle`` = limit and step); any other ended event just reads the job once more.
    """
    if event["status"] != "end_time":
        snapshot = jobs.get(job_name)
        ending = f"ended {snapshot.state.value}"
    else:
        log.warning(
            "batch job %s still %s at its end time; cancelling it and harvesting what is done",
            job_name,
            event.get("state"),
        )
        cancel_quietly(jobs, job_name)
        snapshot = settle_after_cancel(jobs, job_name, limit_s=settle[0], step_s=settle[1])
        ending = (
            f"still {event.get('state')} at its end time {ended_at} ({end_time_means}): cancelled, what "
            "it had finished was harvested"
        )
    if snapshot.state == JobState.FAILED and snapshot.error:
        log.warning("batch job %s failed: %s", snapshot.name, snapshot.error)
    return snapshot, ending
