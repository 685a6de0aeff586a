"""After cancelling a late job, the batch lane waits (bounded) for it to end before harvesting.

A fake backend stands in for Google here (the pure wait loop is the unit): a job that stays
CANCELLING for a few polls, one that never leaves CANCELLING, and a poll that fails while waiting.
The end-to-end version against the simulator is in tests/integration/test_batch_operator.py.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

import pytest

from airflow_banana.batch.jobs import JobSnapshot
from airflow_banana.batch.poll import JobState
from airflow_banana.batch.wait import MAX_CANCEL_SETTLE_S, settle_after_cancel, settle_limits
from airflow_banana.exceptions import BatchJobError
from airflow_banana.operators.batch import BatchImageOperator

if TYPE_CHECKING:
    from airflow_banana.batch.jobs import JobControl


class FakeBackend:
    """Answers ``get`` from a script of states (or exceptions); the last entry repeats."""

    def __init__(self, script: list[JobState | Exception]):
        self.script = script
        self.gets = 0

    def get(self, name: str) -> JobSnapshot:
        step = self.script[min(self.gets, len(self.script) - 1)]
        self.gets += 1
        if isinstance(step, Exception):
            raise step
        return JobSnapshot(name=name, state=step)


def _operator(margin: Any = timedelta(seconds=2)) -> BatchImageOperator:
    return BatchImageOperator(
        task_id="batch",
        manifest="m.jsonl",
        output_prefix="out",
        channel="c",
        rescue_margin=margin,
        poll_interval_s="0.1",  # as a rendered template: a string
    )


def _settle(op: BatchImageOperator, backend: FakeBackend) -> JobSnapshot:
    """The operator's settle wait: its limits from its (rendered) margin and poll interval."""
    rescue, poll = op._policies()
    limit_s, step_s = settle_limits(rescue.margin.total_seconds(), poll.interval_s)
    return settle_after_cancel(cast("JobControl", backend), "batches/1", limit_s=limit_s, step_s=step_s)


def test_a_cancelling_job_is_waited_for_until_it_has_ended() -> None:
    backend = FakeBackend([JobState.RUNNING, JobState.CANCELLING, JobState.CANCELLING, JobState.CANCELLED])
    started = time.monotonic()
    snapshot = _settle(_operator(), backend)
    assert snapshot.state == JobState.CANCELLED and backend.gets == 4
    assert time.monotonic() - started < 1.0  # polled every 0.2 s, not the whole bound


def test_the_wait_is_bounded_by_half_the_margin(caplog: pytest.LogCaptureFixture) -> None:
    backend = FakeBackend([JobState.CANCELLING])
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="airflow_banana.batch.wait"):
        snapshot = _settle(_operator(margin="1s"), backend)
    elapsed = time.monotonic() - started
    assert snapshot.state == JobState.CANCELLING
    assert 0.45 <= elapsed < 0.9  # half of the 1 s margin
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("batches/1 is still CANCELLING" in w for w in warnings), caplog.records


def test_the_bound_never_exceeds_the_cap() -> None:
    op = _operator(margin=timedelta(hours=2))
    rescue, poll = op._policies()
    assert settle_limits(rescue.margin.total_seconds(), poll.interval_s)[0] == MAX_CANCEL_SETTLE_S == 300.0


def test_a_failed_poll_while_waiting_is_ridden_out_but_the_first_is_fatal() -> None:
    flaky = FakeBackend([JobState.CANCELLING, BatchJobError("503 from the poll"), JobState.CANCELLED])
    assert _settle(_operator(), flaky).state == JobState.CANCELLED
    with pytest.raises(BatchJobError, match="503"):
        _settle(_operator(), FakeBackend([BatchJobError("503 from the poll")]))


def test_an_ended_job_is_not_polled_again() -> None:
    backend = FakeBackend([JobState.CANCELLED])
    assert _settle(_operator(), backend).state == JobState.CANCELLED
    assert backend.gets == 1
