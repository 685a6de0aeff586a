"""BatchJobTrigger with an in-memory backend: one event, bounded poll failures, ids only, on_kill."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from airflow_banana.batch.jobs import JobSnapshot
from airflow_banana.batch.poll import JobState
from airflow_banana.exceptions import BatchJobError
from airflow_banana.triggers import batch as trigger_module
from airflow_banana.triggers.batch import BatchJobTrigger


class FakeBackend:
    def __init__(self, states: list[Any]):
        self.states = states
        self.gets = 0
        self.cancelled: list[str] = []
        self.closed = 0

    def get(self, name: str) -> JobSnapshot:
        self.gets += 1
        item = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        if isinstance(item, Exception):
            raise item
        return JobSnapshot(name=name, state=item)

    def cancel(self, name: str) -> None:
        self.cancelled.append(name)

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> FakeBackend:
    fake = FakeBackend([JobState.PENDING])
    monkeypatch.setattr(trigger_module, "_job_control", lambda conn_id: fake)
    return fake


async def _events(trigger: BatchJobTrigger) -> list[dict[str, Any]]:
    return [e.payload async for e in trigger.run()]


def test_serializes_only_ids() -> None:
    trigger = BatchJobTrigger(conn_id="gem", job_name="batches/1", poll_interval_s=5, end_time=123.0)
    path, kwargs = trigger.serialize()
    assert path == "airflow_banana.triggers.batch.BatchJobTrigger"
    assert kwargs == {
        "conn_id": "gem",
        "job_name": "batches/1",
        "poll_interval_s": 5.0,
        "max_poll_failures": 5,
        "end_time": 123.0,
    }
    assert BatchJobTrigger(**kwargs).serialize() == (path, kwargs)


def test_one_event_when_the_job_ends(backend: FakeBackend) -> None:
    backend.states = [JobState.PENDING, JobState.RUNNING, JobState.PARTIALLY_SUCCEEDED]
    events = asyncio.run(_events(BatchJobTrigger(conn_id="c", job_name="j", poll_interval_s=0.01)))
    assert events == [{"status": "ended", "job_name": "j", "state": "PARTIALLY_SUCCEEDED"}]
    assert backend.gets == 3 and backend.closed == 1 and backend.cancelled == []


def test_poll_failures_tolerated_then_error_event(backend: FakeBackend) -> None:
    """B3: two failed polls are ridden out; a run of max_poll_failures gives one error event."""
    backend.states = [BatchJobError("503"), BatchJobError("503"), JobState.SUCCEEDED]
    trigger = BatchJobTrigger(conn_id="c", job_name="j", poll_interval_s=0.001, max_poll_failures=3)
    assert asyncio.run(_events(trigger))[0]["state"] == "SUCCEEDED"
    backend.states = [BatchJobError("boom")]
    events = asyncio.run(
        _events(BatchJobTrigger(conn_id="c", job_name="j", poll_interval_s=0.001, max_poll_failures=3))
    )
    assert (
        len(events) == 1 and events[0]["status"] == "error" and "3 consecutive polls" in events[0]["message"]
    )


def test_end_time_event(backend: FakeBackend) -> None:
    import time

    backend.states = [JobState.RUNNING]
    trigger = BatchJobTrigger(conn_id="c", job_name="j", poll_interval_s=10, end_time=time.time() + 0.05)
    assert asyncio.run(_events(trigger)) == [{"status": "end_time", "job_name": "j", "state": "RUNNING"}]


def test_two_copies_only_poll(backend: FakeBackend) -> None:
    """B2: two copies of the trigger each yield one event and never create or cancel anything."""
    backend.states = [JobState.RUNNING, JobState.RUNNING, JobState.SUCCEEDED]

    async def both() -> list[list[dict[str, Any]]]:
        t1 = BatchJobTrigger(conn_id="c", job_name="j", poll_interval_s=0.01)
        t2 = BatchJobTrigger(conn_id="c", job_name="j", poll_interval_s=0.01)
        return list(await asyncio.gather(_events(t1), _events(t2)))

    first, second = asyncio.run(both())
    assert first == second == [{"status": "ended", "job_name": "j", "state": "SUCCEEDED"}]
    assert backend.cancelled == []


def test_on_kill_cancels_but_cleanup_and_cancellation_do_not(backend: FakeBackend) -> None:
    trigger = BatchJobTrigger(conn_id="c", job_name="batches/9", poll_interval_s=10)

    async def restart() -> None:
        task = asyncio.create_task(_events(trigger))
        await asyncio.sleep(0.05)
        task.cancel()  # what a triggerer restart does
        with pytest.raises(asyncio.CancelledError):
            await task
        await trigger.cleanup()

    asyncio.run(restart())
    assert backend.cancelled == []
    asyncio.run(trigger.on_kill())
    assert backend.cancelled == ["batches/9"]


def test_logs_state_changes_not_every_identical_poll(backend: FakeBackend) -> None:
    """Issue 15.12: a long job polled often logs each state once."""
    from structlog.testing import capture_logs

    backend.states = [JobState.PENDING] * 3 + [JobState.RUNNING] * 4 + [JobState.SUCCEEDED]
    trigger = BatchJobTrigger(conn_id="c", job_name="j", poll_interval_s=0.001)
    with capture_logs() as logs:
        asyncio.run(_events(trigger))
    lines = [e["event"] for e in logs if e["event"].startswith("batch job j: ")]
    assert lines == ["batch job j: PENDING", "batch job j: RUNNING", "batch job j: SUCCEEDED"]
    assert backend.gets == 8


_TRIGGER_PATH_SCRIPT = r"""
import asyncio, json, os, sys
from airflow_banana.testing.connections import channel_connection, conn_env_var

# Nothing listens on port 9: every poll and cancel fails fast, after the whole client path ran.
for conn_id, protocol in (("dead_gem", "gemini"), ("dead_vtx", "vertex")):
    os.environ[conn_env_var(conn_id)] = channel_connection(
        "http://127.0.0.1:9", protocol=protocol, key="k", timeout=2
    )
from airflow_banana.triggers.batch import BatchJobTrigger

async def main():
    events = []
    for conn_id in ("dead_gem", "dead_vtx"):
        trigger = BatchJobTrigger(
            conn_id=conn_id, job_name="batches/1", poll_interval_s=0.01, max_poll_failures=1
        )
        events += [e.payload async for e in trigger.run()]
        await trigger.on_kill()
    return events

events = asyncio.run(main())
loaded = sorted(
    m for m in sys.modules
    if m in ("airflow_banana.batch.results", "airflow_banana.batch.harvest", "airflow_banana.hooks.storage")
    or m.startswith(("airflow_banana.storage", "google.cloud.storage"))
)
print(json.dumps({"events": [e["status"] for e in events], "loaded": loaded}))
"""


def test_the_trigger_path_imports_no_storage_module() -> None:
    """The triggerer polls and cancels with job control only: no storage client, no harvest code.

    A fresh interpreter runs the trigger (both protocols, poll and on_kill) against a closed
    port and then lists what it imported.
    """
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _TRIGGER_PATH_SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["events"] == ["error", "error"], done.stderr[-2000:]
    assert seen["loaded"] == []
