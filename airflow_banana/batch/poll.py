"""The poll decision for a batch job, shared by the trigger and the synchronous path.

Pure: it is given what a poll saw (a job state, or the poll's own failure) and the current time,
and answers "wait this long and poll again", "the job ended in this state", "too many polls in a
row failed" or "the wall-clock end time has come". No I/O, no sleeping, the clock is the caller's,
so B2/B3 (FAULTS.md) are unit-tested here without a server.

Backoff: after a successful poll the next one comes after ``interval_s``; after ``n`` consecutive
failed polls it comes after ``min(interval_s * 2**n, max_backoff_s)``; the ``max_poll_failures``-th
consecutive failure gives up. Any wait is cut so that the end time is never overslept.

``poll_event`` turns the final decision into the one event both waiting paths hand to
``BatchImageOperator.execute_complete``::

    {"status": "ended",    "job_name", "state"}              the job reached a final state
    {"status": "end_time", "job_name", "state"}              the wall-clock end time came first
    {"status": "error",    "job_name", "message"}            too many consecutive polls failed
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

# Google spells states JOB_STATE_* (SDK, Vertex) or BATCH_STATE_* (Developer wire JSON).
_PREFIXES = ("JOB_STATE_", "BATCH_STATE_")


class JobState(enum.StrEnum):
    """A batch job's state, the same for the Developer Batch API and Vertex batch prediction."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    CANCELLING = "CANCELLING"
    SUCCEEDED = "SUCCEEDED"
    PARTIALLY_SUCCEEDED = "PARTIALLY_SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"
    UNKNOWN = "UNKNOWN"

    @property
    def ended(self) -> bool:
        return self in ENDED_STATES

    @classmethod
    def parse(cls, value: object) -> JobState:
        """Any spelling Google uses (``JOB_STATE_RUNNING``, ``BATCH_STATE_RUNNING``, an SDK enum)."""
        text = str(getattr(value, "value", value) or "").upper()
        for prefix in _PREFIXES:
            if text.startswith(prefix):
                text = text[len(prefix) :]
        if text in ("QUEUED", "PAUSED", "UPDATING", "UNSPECIFIED"):
            # queued/paused/updating jobs have not ended: keep polling, as for pending
            return cls.PENDING if text != "UPDATING" else cls.RUNNING
        try:
            return cls(text)
        except ValueError:
            return cls.UNKNOWN


ENDED_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.PARTIALLY_SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED}
)


@dataclass(frozen=True)
class PollPolicy:
    """How to poll one job. ``end_time`` is wall-clock epoch seconds (None: no end)."""

    interval_s: float = 30.0
    max_poll_failures: int = 5
    max_backoff_s: float = 600.0
    end_time: float | None = None


def poll_policy(
    interval_s: float | str, max_poll_failures: int, *, what: str, end_time: float | None = None
) -> PollPolicy:
    """A checked ``PollPolicy`` from operator arguments (templating may render the interval as a
    string); every error names ``what`` (the task)."""
    from airflow_banana.exceptions import ConfigurationError

    try:
        interval = float(interval_s)
    except (TypeError, ValueError) as err:
        raise ConfigurationError(
            f"{what}: poll_interval_s must be a number of seconds, got {interval_s!r}"
        ) from err
    if interval <= 0:
        raise ConfigurationError(f"{what}: poll_interval_s must be positive, got {interval}")
    if max_poll_failures < 1:
        raise ConfigurationError(f"{what}: max_poll_failures must be at least 1")
    return PollPolicy(interval, max_poll_failures, end_time=end_time)


@dataclass(frozen=True)
class PollAgain:
    wait_s: float


@dataclass(frozen=True)
class JobEnded:
    state: JobState


@dataclass(frozen=True)
class PollsFailed:
    failures: int
    last_error: str


@dataclass(frozen=True)
class EndTimeReached:
    state: JobState  # the last state seen (still not ended)


PollDecision = PollAgain | JobEnded | PollsFailed | EndTimeReached


class PollTracker:
    """Consecutive-failure counting and the next decision for one job; see the module docstring."""

    def __init__(self, policy: PollPolicy):
        self.policy = policy
        self.failures = 0
        self.last_state = JobState.UNKNOWN

    def _wait(self, base: float, now: float) -> PollDecision:
        if self.policy.end_time is not None:
            left = self.policy.end_time - now
            if left <= 0:
                return EndTimeReached(self.last_state)
            base = min(base, left)
        return PollAgain(max(0.0, base))

    def start(self, now: float) -> PollDecision:
        """Before the first poll: only the end time can stop us."""
        if self.policy.end_time is not None and now >= self.policy.end_time:
            return EndTimeReached(self.last_state)
        return PollAgain(0.0)

    def observed(self, state: JobState, now: float) -> PollDecision:
        """A poll succeeded and saw ``state``."""
        self.failures = 0
        self.last_state = state
        if state.ended:
            return JobEnded(state)
        return self._wait(self.policy.interval_s, now)

    def failed(self, error: str, now: float) -> PollDecision:
        """A poll itself failed (5xx, timeout, connection reset): tolerated up to the bound (B3)."""
        self.failures += 1
        if self.failures >= self.policy.max_poll_failures:
            return PollsFailed(self.failures, error)
        backoff = min(self.policy.interval_s * (2**self.failures), self.policy.max_backoff_s)
        return self._wait(backoff, now)


def poll_event(job_name: str, decision: JobEnded | EndTimeReached | PollsFailed) -> dict[str, Any]:
    """The event of a finished wait (module docstring), the same from the trigger and the worker."""
    if isinstance(decision, JobEnded):
        return {"status": "ended", "job_name": job_name, "state": decision.state.value}
    if isinstance(decision, EndTimeReached):
        return {"status": "end_time", "job_name": job_name, "state": decision.state.value}
    return {
        "status": "error",
        "job_name": job_name,
        "message": f"{decision.failures} consecutive polls of batch job {job_name} failed; last: "
        f"{decision.last_error}. The job keeps running remotely; a retry of the task reattaches to it",
    }
