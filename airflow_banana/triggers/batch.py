"""``BatchJobTrigger``: waits for a Gemini / Vertex batch job to end, and does nothing else.

It only polls (``batches.get``): it never submits, never downloads, so a triggerer restart or two
copies of the trigger (FAULTS.md B2) cannot create a job or pay. Every SDK call runs in a thread,
off the triggerer's event loop. It serializes only ids — the connection id, the job name, the
backend and the polling policy — never a key; the key is read from the connection when it runs.
The decision of what a poll means is ``batch.poll.PollTracker``, shared with the operator's
synchronous mode, and so is the one event it yields (``batch.poll.poll_event``): the job ended,
its end time came first, or too many polls in a row failed.

Cancellation: Airflow 3.3 calls ``on_kill()`` only when a user stops the task (mark failed /
success, clear); a triggerer restart or redistribution calls only ``cleanup()``. So the remote
job is cancelled in ``on_kill`` and never in ``cleanup`` or on ``CancelledError``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_banana.batch.poll import PollAgain, PollPolicy, PollTracker, poll_event
from airflow_banana.exceptions import BananaError

if TYPE_CHECKING:
    from airflow_banana.batch.jobs import JobControl

ON_KILL_TIMEOUT_S = 30.0


def _job_control(conn_id: str) -> JobControl:
    """The job's control from the connection (blocking: call it in a thread); no storage needed."""
    from airflow_banana.batch import job_control_for_connection

    return job_control_for_connection(conn_id)


class BatchJobTrigger(BaseTrigger):
    """Poll batch job ``job_name`` on connection ``conn_id`` until it ends; see the module docstring.

    :param conn_id: the ``banana`` connection (gemini or vertex) the job was created with.
    :param job_name: ``batches/…`` or ``projects/…/batchPredictionJobs/…``.
    :param poll_interval_s: seconds between polls while the job runs.
    :param max_poll_failures: consecutive failed polls tolerated before giving up (B3).
    :param end_time: wall-clock epoch seconds after which the trigger stops waiting (None: never).
    """

    def __init__(
        self,
        *,
        conn_id: str,
        job_name: str,
        poll_interval_s: float = 60.0,
        max_poll_failures: int = 5,
        end_time: float | None = None,
    ):
        super().__init__()
        self.conn_id = conn_id
        self.job_name = job_name
        self.poll_interval_s = float(poll_interval_s)
        self.max_poll_failures = int(max_poll_failures)
        self.end_time = None if end_time is None else float(end_time)

    @classmethod
    def for_policy(cls, conn_id: str, job_name: str, policy: PollPolicy) -> BatchJobTrigger:
        """The trigger that polls as ``policy`` says (the operator's synchronous mode uses it too)."""
        return cls(
            conn_id=conn_id,
            job_name=job_name,
            poll_interval_s=policy.interval_s,
            max_poll_failures=policy.max_poll_failures,
            end_time=policy.end_time,
        )

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "conn_id": self.conn_id,
                "job_name": self.job_name,
                "poll_interval_s": self.poll_interval_s,
                "max_poll_failures": self.max_poll_failures,
                "end_time": self.end_time,
            },
        )

    def _policy(self) -> PollPolicy:
        return PollPolicy(
            interval_s=self.poll_interval_s, max_poll_failures=self.max_poll_failures, end_time=self.end_time
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        tracker = PollTracker(self._policy())
        jobs: JobControl | None = None
        try:
            try:
                jobs = await asyncio.to_thread(_job_control, self.conn_id)
            except BananaError as err:
                yield TriggerEvent({"status": "error", "job_name": self.job_name, "message": str(err)})
                return
            decision = tracker.start(time.time())
            last_state: Any = None
            while isinstance(decision, PollAgain):
                if decision.wait_s > 0:
                    await asyncio.sleep(decision.wait_s)
                try:
                    snapshot = await asyncio.to_thread(jobs.get, self.job_name)
                except BananaError as err:
                    self.log.warning(
                        "batch job %s: poll failed (%d in a row): %s",
                        self.job_name,
                        tracker.failures + 1,
                        err,
                    )
                    decision = tracker.failed(str(err), time.time())
                    continue
                decision = tracker.observed(snapshot.state, time.time())
                # A day-long job polled every minute would log 1,440 identical lines: log changes.
                if snapshot.state != last_state:
                    self.log.info("batch job %s: %s", self.job_name, snapshot.state.value)
                    last_state = snapshot.state
            yield TriggerEvent(poll_event(self.job_name, decision))
        finally:
            if jobs is not None:
                await asyncio.to_thread(jobs.close)

    async def on_kill(self) -> None:
        """The user stopped the task: cancel the remote job so it stops spending (bounded time)."""

        def cancel() -> None:
            jobs = _job_control(self.conn_id)
            try:
                jobs.cancel(self.job_name)
            finally:
                jobs.close()

        try:
            await asyncio.wait_for(asyncio.to_thread(cancel), timeout=ON_KILL_TIMEOUT_S)
            self.log.info("batch job %s cancelled because the task was stopped", self.job_name)
        except (BananaError, TimeoutError) as err:
            self.log.warning("batch job %s: cancelling on kill failed: %s", self.job_name, err)
