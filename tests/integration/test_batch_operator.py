"""BatchImageOperator against the simulator over HTTP: retry safety (B1), bad endings (B3-B6), rescue.

The task runs in-process in synchronous mode with a minimal task-instance context (the
identity is dag/task/run/map index, as in Airflow); the example DAG tests cover the deferred
path under dag.test().
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_banana.batch.jobs import JobSnapshot
from airflow_banana.batch.poll import JobState
from airflow_banana.batch.state import JobStateStore
from airflow_banana.exceptions import BananaError
from airflow_banana.hooks.channel import BananaChannelHook
from airflow_banana.models import ImageRequest
from airflow_banana.operators.batch import BatchImageOperator
from airflow_banana.planning.inputs import realtime_capacities
from airflow_banana.planning.planner import realtime_time_needed
from airflow_banana.pricing import LIST_PRICES
from airflow_banana.storage.objects import open_storage
from airflow_banana.testing.connections import channel_connection, conn_env_var

ROOT = Path(__file__).resolve().parents[2]
N = 6


def _context(run_id: str = "manual__1") -> Any:
    pushed: dict[str, Any] = {}
    ti = SimpleNamespace(
        dag_id="dag_b",
        task_id="batch",
        run_id=run_id,
        map_index=-1,
        xcom_push=lambda key, value: pushed.__setitem__(key, value),
    )
    return {"ti": ti, "run_id": run_id, "logical_date": datetime(2026, 3, 1, tzinfo=UTC), "pushed": pushed}


def _manifest(tmp_path: Path, n: int = N, deadline: str | None = None) -> str:
    path = tmp_path / f"manifest-{n}{'-deadline' if deadline else ''}.jsonl"
    lines = []
    for i in range(n):
        item: dict[str, Any] = {"id": f"it-{i}", "prompt": f"product {i}", "image_size": "1K"}
        if deadline:
            item["deadline"] = deadline
        lines.append(json.dumps(item))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _fingerprints(n: int = N) -> set[str]:
    return {ImageRequest(f"it-{i}", f"product {i}", "1K", "1:1").fingerprint() for i in range(n)}


@pytest.fixture
def gemini(sim: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv(conn_env_var("b_gem"), channel_connection(sim.base_url, protocol="gemini", key="bkey"))
    monkeypatch.setenv(
        conn_env_var("b_rescue"), channel_connection(sim.base_url, protocol="gemini", key="rkey")
    )
    sim.set_faults("bkey", {"name": "b", "batch": {"turnaround_s": 0.6, "pending_s": 0.05}})
    return sim


def _operator(tmp_path: Path, **kw: Any) -> BatchImageOperator:
    args: dict[str, Any] = dict(
        task_id="batch",
        output_prefix=str(tmp_path / "out"),
        channel="b_gem",
        deferrable=False,
        poll_interval_s=0.1,
    )
    args.update(kw)
    args.setdefault("manifest", _manifest(tmp_path))
    return BatchImageOperator(**args)


def _creates(sim: Any) -> list[dict[str, Any]]:
    return [
        r for r in sim.requests() if r["method"] == "POST" and r["path"].endswith(":batchGenerateContent")
    ]


def _record(tmp_path: Path) -> Any:
    return JobStateStore(open_storage(str(tmp_path)), str(tmp_path / "out"), "dag_b__batch__manual__1").load()


def _turnarounds(tmp_path: Path) -> list[dict[str, Any]]:
    history = tmp_path / "out/_banana/turnaround/developer.jsonl"
    return [json.loads(line) for line in history.read_text().splitlines()]


def test_success_stores_everything_at_batch_price(gemini: Any, tmp_path: Path) -> None:
    summary = _operator(tmp_path).execute(_context())
    assert summary["items"]["succeeded"] == N and summary["spent_usd"] == pytest.approx(
        N * LIST_PRICES["batch"]["1K"]
    )
    assert summary["batch_job"]["state"] == "SUCCEEDED"
    assert {b["fingerprint"] for b in gemini.billable()} == _fingerprints() and len(gemini.billable()) == N
    report = json.loads((tmp_path / "out/runs/dag_b__batch__manual__1/report.json").read_text())
    assert report["lane"] == "batch" and "bkey" not in json.dumps(report)
    assert "bkey" not in (tmp_path / "out/runs/dag_b__batch__manual__1/batch_job.json").read_text()
    # The job's turnaround refines later plans; it ran to its end, so it is a complete sample.
    (history,) = _turnarounds(tmp_path)
    assert history["job"] == summary["batch_job"]["name"] and history["censored"] is False
    assert history["final_state"] == "SUCCEEDED" and history["items"] == N and history["duration_s"] > 0


def test_b1_crash_between_submit_and_record_adopts_the_orphan(
    gemini: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt("worker killed right after the job was created")

    with monkeypatch.context() as patch:
        patch.setattr(JobStateStore, "mark_submitted", crash)
        with pytest.raises(KeyboardInterrupt):
            _operator(tmp_path).execute(_context())
    assert _record(tmp_path).status == "intent" and len(_creates(gemini)) == 1

    summary = _operator(tmp_path).execute(_context())  # the Airflow retry: same dag/task/run
    assert summary["items"]["succeeded"] == N
    assert len(_creates(gemini)) == 1  # the orphan was found by its display name and adopted
    assert len(gemini.billable()) == N and {b["fingerprint"] for b in gemini.billable()} == _fingerprints()


def test_b1_worker_killed_after_submit_reattaches(gemini: Any, tmp_path: Path) -> None:
    """The task runs in a subprocess that is SIGKILLed once the job is recorded; the retry reattaches."""
    manifest = _manifest(tmp_path)
    gemini.set_faults("bkey", {"name": "b", "batch": {"turnaround_s": 2.0, "pending_s": 0.05}})
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_batch_operator import _context
        from airflow_banana.operators.batch import BatchImageOperator
        op = BatchImageOperator(task_id="batch", manifest={manifest!r},
                                output_prefix={str(tmp_path / "out")!r},
                                channel="b_gem", deferrable=False, poll_interval_s=30)
        op.execute(_context())
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy(), cwd=str(ROOT))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            record = _record(tmp_path)
            if record is not None and record.status == "submitted":
                break
            assert proc.poll() is None, "the task process ended before submitting"
            time.sleep(0.05)
        else:
            pytest.fail("the job was never recorded as submitted")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert len(_creates(gemini)) == 1

    summary = _operator(tmp_path, manifest=manifest).execute(_context())
    assert summary["items"]["succeeded"] == N
    assert len(_creates(gemini)) == 1
    assert len(gemini.billable()) == N and {b["fingerprint"] for b in gemini.billable()} == _fingerprints()

    again = _operator(tmp_path, manifest=manifest).execute(_context())  # a third try: all done, nothing paid
    assert again["items"]["succeeded"] + again["items"]["skipped"] == N
    assert len(_creates(gemini)) == 1 and len(gemini.billable()) == N


@pytest.mark.parametrize("final_state", ["FAILED", "EXPIRED", "CANCELLED"])
def test_b4_bad_endings_harvest_what_was_paid_and_report_the_rest(
    gemini: Any, tmp_path: Path, final_state: str
) -> None:
    gemini.set_faults(
        "bkey",
        {
            "name": "b",
            "batch": {
                "turnaround_s": 0.6,
                "pending_s": 0.05,
                "final_state": final_state,
                "completed_fraction": 0.5,
            },
        },
    )
    with pytest.raises(BananaError, match="ended without an image"):
        _operator(tmp_path).execute(_context())
    report = json.loads((tmp_path / "out/runs/dag_b__batch__manual__1/report.json").read_text())
    paid = len(gemini.billable())
    assert paid > 0 and report["items"]["succeeded"] == paid  # everything paid for was harvested
    assert report["items"]["failed"] == N - paid
    assert all(final_state in f["reason"] for f in report["failed_items"])
    assert _record(tmp_path).status == "harvested"


def test_b4_rescue_through_realtime(gemini: Any, tmp_path: Path) -> None:
    gemini.set_faults(
        "bkey",
        {
            "name": "b",
            "batch": {
                "turnaround_s": 0.6,
                "pending_s": 0.05,
                "final_state": "FAILED",
                "completed_fraction": 0.5,
            },
        },
    )
    summary = _operator(tmp_path, rescue_channels=["b_rescue"]).execute(_context())
    assert summary["items"]["succeeded"] == N
    lanes = sorted(b["price_lane"] for b in gemini.billable())
    assert len(lanes) == N and "batch" in lanes and "realtime" in lanes
    assert {b["fingerprint"] for b in gemini.billable()} == _fingerprints()  # nothing paid twice


def test_b5_stuck_job_near_the_deadline_is_cancelled_and_rescued(gemini: Any, tmp_path: Path) -> None:
    gemini.set_faults(
        "bkey",
        {
            "name": "b",
            "batch": {"turnaround_s": 0.3, "pending_s": 0.05, "stuck": True, "completed_fraction": 0.5},
        },
    )
    deadline = (datetime.now(UTC) + timedelta(seconds=16)).isoformat()
    started = time.monotonic()
    summary = _operator(
        tmp_path,
        manifest=_manifest(tmp_path, deadline=deadline),
        rescue_channels=["b_rescue"],
        # Rescue point: 16 s - ~3 s one channel needs for 6 items at 1 s each - 10 s ≈ +3 s,
        # long after the job stalled with half its lines done.
        rescue_margin="10s",
        rescue_latency="1s",
    ).execute(_context())
    assert 2.0 <= time.monotonic() - started < 12  # waited for the rescue point, not longer
    assert summary["items"]["succeeded"] == N
    assert {b["fingerprint"] for b in gemini.billable()} == _fingerprints() and len(gemini.billable()) == N
    # The half the stuck job finished was harvested at the batch price, only the rest rescued.
    lanes = [b["price_lane"] for b in gemini.billable()]
    assert lanes.count("batch") == N // 2 and lanes.count("realtime") == N - N // 2
    cancels = [r for r in gemini.requests() if r["path"].endswith(":cancel")]
    assert cancels, "the stuck job was not cancelled"
    (history,) = _turnarounds(tmp_path)
    assert history["censored"] is True and history["final_state"] == "CANCELLED"


class _SlowCancel:
    """A real backend whose cancel, like Google's, takes effect only after a while.

    Until then the job reads CANCELLING and the simulator keeps completing (and billing) lines;
    the simulator itself cancels instantly, so the delay is added here, around real HTTP calls.
    """

    def __init__(self, inner: Any, sim: Any, delay_s: float):
        self.inner = inner
        self.config = inner.config
        self.sim = sim
        self.delay_s = delay_s
        self.timer: threading.Timer | None = None
        self.batch_paid_at_cancel: int | None = None
        self.cancelling_polls = 0

    def cancel(self, name: str) -> None:
        self.batch_paid_at_cancel = sum(1 for b in self.sim.billable() if b["price_lane"] == "batch")
        self.timer = threading.Timer(self.delay_s, self.inner.cancel, args=(name,))
        self.timer.start()

    def get(self, name: str) -> JobSnapshot:
        snapshot: JobSnapshot = self.inner.get(name)
        if self.timer is not None and not snapshot.state.ended:
            self.cancelling_polls += 1
            return replace(snapshot, state=JobState.CANCELLING)
        return snapshot

    def close(self) -> None:
        if self.timer is not None:
            self.timer.join()
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_lines_finished_while_cancelling_are_harvested_not_paid_twice(
    gemini: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One line every ~0.66 s; the end time comes ~1.2 s after the start and the cancel takes
    # 1.2 s more, during which the job finishes at least one more line.
    gemini.set_faults("bkey", {"name": "b", "batch": {"turnaround_s": 4.0, "pending_s": 0.05}})
    latency, margin = timedelta(seconds=1), timedelta(seconds=4)  # the wait may take margin / 2
    caps = realtime_capacities([BananaChannelHook("b_rescue").get_config()], latency=latency)
    needed = realtime_time_needed(N, caps)
    assert needed is not None
    deadline = datetime.now(UTC) + timedelta(seconds=1.2) + needed + margin
    wrappers: list[_SlowCancel] = []
    real_jobs = BatchImageOperator._jobs

    def slow_cancel_jobs(self: BatchImageOperator) -> Any:
        wrappers.append(_SlowCancel(real_jobs(self), gemini, delay_s=1.2))
        return wrappers[-1]

    monkeypatch.setattr(BatchImageOperator, "_jobs", slow_cancel_jobs)
    summary = _operator(
        tmp_path,
        manifest=_manifest(tmp_path, deadline=deadline.isoformat()),
        rescue_channels=["b_rescue"],
        rescue_margin=margin,
        rescue_latency=latency,
    ).execute(_context())

    assert summary["items"]["succeeded"] == N and summary["batch_job"]["state"] == "CANCELLED"
    cancelled = next(w for w in wrappers if w.batch_paid_at_cancel is not None)
    assert cancelled.cancelling_polls >= 1, "the operator harvested without waiting for the cancel"
    billable = gemini.billable()
    batch_paid = sum(1 for b in billable if b["price_lane"] == "batch")
    assert cancelled.batch_paid_at_cancel is not None and batch_paid > cancelled.batch_paid_at_cancel
    assert batch_paid < N  # the job really was cut short; the rest came through realtime
    assert {b["fingerprint"] for b in billable} == _fingerprints() and len(billable) == N  # none twice


def test_b3_b6_poll_errors_tolerated_and_line_errors_recorded(gemini: Any, tmp_path: Path) -> None:
    gemini.set_faults(
        "bkey",
        {
            "name": "b",
            "batch": {"turnaround_s": 0.6, "pending_s": 0.05, "poll_errors": 2},
        },
    )
    # Lines 1 and 4 fail by their prompt marker: deterministic, unlike a rate keyed by the job id.
    manifest = tmp_path / "manifest-line-errors.jsonl"
    manifest.write_text(
        "".join(
            json.dumps(
                {"id": f"it-{i}", "prompt": f"product {i}" + (" [sim:line_error]" if i in (1, 4) else "")}
            )
            + "\n"
            for i in range(N)
        )
    )
    with pytest.raises(BananaError, match="ended without an image"):
        _operator(tmp_path, manifest=str(manifest), max_poll_failures=3, inline=False).execute(_context())
    assert sum(1 for r in gemini.requests() if r["status"] == 503) == 2  # two failed polls were ridden out
    report = json.loads((tmp_path / "out/runs/dag_b__batch__manual__1/report.json").read_text())
    assert report["items"]["failed"] == 2 and report["items"]["succeeded"] == N - 2
    assert report["items"]["succeeded"] == len(gemini.billable())
    for failed in report["failed_items"]:
        meta = json.loads((tmp_path / f"out/metadata/{failed['item_id']}.json").read_text())
        assert meta["status"] == "failed" and meta["reason"]


def test_fingerprint_change_starts_fresh_and_only_pays_for_new_items(gemini: Any, tmp_path: Path) -> None:
    _operator(tmp_path).execute(_context())
    bigger = _manifest(tmp_path, n=N + 2)
    summary = _operator(tmp_path, manifest=bigger).execute(_context())
    assert summary["items"]["skipped"] == N and summary["items"]["succeeded"] == 2
    assert len(_creates(gemini)) == 2 and len(gemini.billable()) == N + 2


def test_b4_vertex_partially_succeeded_harvests_from_gcs(
    sim: Any, gcs_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        conn_env_var("b_vtx"), channel_connection(sim.base_url, protocol="vertex", key="vtoken")
    )
    sim.set_faults(
        "vtoken",
        {
            "name": "v",
            "batch": {"turnaround_s": 0.6, "pending_s": 0.05, "final_state": "PARTIALLY_SUCCEEDED"},
        },
    )
    prefix = f"gs://{gcs_bucket}/out"
    op = _operator(
        tmp_path,
        channel="b_vtx",
        output_prefix=prefix,
        gcs_staging_prefix=f"gs://{gcs_bucket}/stage",
        max_failed_items=N,
    )
    summary = op.execute(_context())
    paid = len(sim.billable())
    assert 0 < paid < N and summary["items"]["succeeded"] == paid and summary["items"]["failed"] == N - paid
    assert summary["batch_job"]["state"] == "PARTIALLY_SUCCEEDED"
    assert op.console_url.startswith("https://console.cloud.google.com/vertex-ai/")
    storage = open_storage(prefix)
    report = storage.read_json(f"{prefix}/runs/dag_b__batch__manual__1/report.json")
    assert all(f["reason"] for f in report["failed_items"])
    assert "vtoken" not in json.dumps(report)


def test_on_kill_cancels_the_running_job_and_force_regenerates(gemini: Any, tmp_path: Path) -> None:
    gemini.set_faults(
        "bkey",
        {
            "name": "b",
            "batch": {"turnaround_s": 0.3, "pending_s": 0.05, "stuck": True, "completed_fraction": 0.0},
        },
    )
    op = _operator(tmp_path)
    from airflow_banana.batch import job_control_for
    from airflow_banana.hooks.channel import BananaChannelHook

    backend = job_control_for(BananaChannelHook("b_gem").get_config())
    submitted = backend.submit(
        [ImageRequest("x", "p")], display_name="banana-kill-r1 k", staging_uri=None, inline=True
    )
    op._running_job = ("b_gem", submitted.snapshot.name)
    op.on_kill()
    assert backend.get(submitted.snapshot.name).state.value == "CANCELLED"
    backend.close()

    gemini.set_faults("bkey", {"name": "b", "batch": {"turnaround_s": 0.3, "pending_s": 0.05}})
    _operator(tmp_path).execute(_context())
    paid = len(gemini.billable())
    forced = _operator(tmp_path, force=True).execute(_context("manual__2"))
    assert forced["items"]["succeeded"] == N and len(gemini.billable()) == paid + N


def test_b2_two_triggers_over_http_poll_only(gemini: Any) -> None:
    import asyncio

    from airflow_banana.batch import job_control_for
    from airflow_banana.hooks.channel import BananaChannelHook
    from airflow_banana.triggers.batch import BatchJobTrigger

    backend = job_control_for(BananaChannelHook("b_gem").get_config())
    job = backend.submit(
        [ImageRequest("x", "p")], display_name="banana-b2-r1 k", staging_uri=None, inline=True
    )
    backend.close()

    async def both() -> list[list[dict[str, Any]]]:
        async def events(t: BatchJobTrigger) -> list[dict[str, Any]]:
            return [e.payload async for e in t.run()]

        triggers = [
            BatchJobTrigger(conn_id="b_gem", job_name=job.snapshot.name, poll_interval_s=0.1)
            for _ in range(2)
        ]
        return list(await asyncio.gather(*(events(t) for t in triggers)))

    first, second = asyncio.run(both())
    assert first == second == [{"status": "ended", "job_name": job.snapshot.name, "state": "SUCCEEDED"}]
    assert len(_creates(gemini)) == 1 and len(gemini.billable()) == 1
    assert not [r for r in gemini.requests() if ":download" in r["path"] or r["path"].endswith(":cancel")]
