"""The plan step against real storage (local and the GCS emulator): sub-manifests, history, CLI dry runs."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from airflow_banana.cli import main as cli_main
from airflow_banana.exceptions import ConfigurationError
from airflow_banana.manifests import read_manifest
from airflow_banana.planning.history import (
    TurnaroundRecord,
    batch_lane,
    read_turnarounds,
    record_turnaround,
    turnaround_uri,
)
from airflow_banana.planning.inputs import recent_success_rates
from airflow_banana.planning.manifest import plan_manifest
from airflow_banana.storage.objects import open_storage
from airflow_banana.testing.connections import channel_connection, conn_env_var

T0 = datetime(2026, 11, 27, 0, 0, tzinfo=UTC)
ITEMS = [
    {"id": "hero-1", "prompt": "hero one", "deadline": "+2h"},
    {"id": "hero-2", "prompt": "hero two", "deadline": "+2h", "image_size": "4K"},
    {"id": "bulk-1", "prompt": "bulk one", "deadline": "+48h"},
    {"id": "bulk-2", "prompt": "bulk two"},
    {"id": "bulk-3", "prompt": "bulk three"},
]


@pytest.fixture
def connections(monkeypatch):
    # Only parsed here: nothing listens on port 9 and the plan step makes no call.
    monkeypatch.setenv(
        conn_env_var("banana_gemini"),
        channel_connection("http://127.0.0.1:9", protocol="gemini", key="gemini-key", rpm=30),
    )
    monkeypatch.setenv(
        conn_env_var("banana_vertex"),
        channel_connection("http://127.0.0.1:9", protocol="vertex", key="vertex-token"),
    )


def _write_manifest(path: Path, items=ITEMS) -> str:
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return str(path)


def _plan(tmp_path: Path, **kwargs):
    args = {
        "run_key": "dag__plan__run1",
        "logical_date": T0,
        "batch_channel": "banana_gemini",
        "now": T0,
    }
    args.update(kwargs)
    return plan_manifest(
        _write_manifest(tmp_path / "m.jsonl"),
        str(tmp_path / "out"),
        ["banana_gemini", "banana_vertex"],
        **args,  # type: ignore[arg-type]
    )


def test_plan_writes_two_self_contained_sub_manifests(tmp_path, connections):
    summary = _plan(tmp_path)
    storage = open_storage()
    assert summary["realtime_items"] == 2 and summary["batch_items"] == 3 and summary["infeasible"] == 0
    rt = read_manifest(summary["realtime_manifest"], storage).items
    batch = read_manifest(summary["batch_manifest"], storage).items
    assert [i.id for i in rt] == ["hero-1", "hero-2"]
    assert {i.id for i in batch} == {"bulk-1", "bulk-2", "bulk-3"}
    # Deadlines are absolute, so the lanes read the same deadline whatever their logical date.
    assert rt[0].deadline == (T0 + timedelta(hours=2)).isoformat()
    assert {i.deadline for i in batch} == {(T0 + timedelta(hours=48)).isoformat(), None}
    assert summary["batch_deadline"] == (T0 + timedelta(hours=48)).isoformat()
    assert summary["expected_cost_usd"] == pytest.approx(0.134 + 0.24 + 3 * 0.067)
    assert summary["savings_usd"] == pytest.approx(3 * 0.067)
    plan = storage.read_json(summary["plan_uri"])
    assert {row["item_id"]: row["kind"] for row in plan["assignments"]}["hero-2"] == "realtime"
    assert "Every item meets its deadline" in storage.read_text(summary["plan_md_uri"])
    json.dumps(summary)  # XCom-able


def test_infeasible_items_fail_the_step_before_any_spend_but_the_plan_is_written(tmp_path, connections):
    items = [*ITEMS, {"id": "too-late", "prompt": "late", "deadline": "2026-11-26T00:00:00Z"}]
    _write_manifest(tmp_path / "m.jsonl", items)
    with pytest.raises(ConfigurationError, match=r"1 item\(s\) cannot meet.*too-late: deadline_passed"):
        plan_manifest(
            str(tmp_path / "m.jsonl"),
            str(tmp_path / "out"),
            ["banana_gemini"],
            run_key="r",
            logical_date=T0,
            now=T0,
        )
    storage = open_storage()
    folder = tmp_path / "out" / "runs" / "r" / "plan"
    bad = [json.loads(line) for line in (folder / "infeasible.jsonl").read_text().splitlines()]
    assert [(b["item_id"], b["code"]) for b in bad] == [("too-late", "deadline_passed")]
    md = storage.read_text(str(folder / "plan.md"))
    # Issue 15.12: real Markdown (a heading and tables), not the terminal's fixed-width text
    assert md.startswith("# Plan `r`") and "| lane | kind | items | expected cost |" in md
    assert "## Infeasible (1; nothing will be spent on them)" in md and "| `too-late` |" in md


@pytest.mark.parametrize(("policy", "rt", "batch"), [("skip", 2, 3), ("realtime", 3, 3), ("batch", 2, 4)])
def test_infeasible_policies_go_on(tmp_path, connections, policy, rt, batch):
    items = [*ITEMS, {"id": "too-late", "prompt": "late", "deadline": "2026-11-26T00:00:00Z"}]
    _write_manifest(tmp_path / "m.jsonl", items)
    summary = plan_manifest(
        str(tmp_path / "m.jsonl"),
        str(tmp_path / "out"),
        ["banana_gemini"],
        run_key="r",
        logical_date=T0,
        now=T0,
        batch_channel="banana_gemini",
        on_infeasible=policy,
    )
    assert (summary["realtime_items"], summary["batch_items"]) == (rt, batch)
    assert summary["infeasible_items"][0]["item_id"] == "too-late"
    if policy != "skip":
        lane = read_manifest(summary[f"{policy}_manifest"], open_storage()).items
        assert next(i for i in lane if i.id == "too-late").deadline is None  # best effort


def test_shards_for_mapping(tmp_path, connections):
    summary = _plan(tmp_path, shard_size=2)
    assert summary["batch_manifest"] is None and len(summary["batch_manifests"]) == 2
    storage = open_storage()
    sizes = [len(read_manifest(u, storage).items) for u in summary["batch_manifests"]]
    assert sizes == [2, 1]


def test_done_items_are_left_out_so_a_backfill_pays_only_for_what_is_missing(tmp_path, connections):
    manifest = _write_manifest(tmp_path / "m.jsonl")
    storage = open_storage()
    out = tmp_path / "out"
    done = next(i for i in read_manifest(manifest, storage).items if i.id == "bulk-1")
    (out / "images").mkdir(parents=True)
    (out / "metadata").mkdir()
    (out / "images" / "bulk-1.png").write_bytes(b"\x89PNG fake")
    record = {
        "status": "succeeded",
        "request_fingerprint": done.to_request().fingerprint(),
        "image": {"uri": str(out / "images" / "bulk-1.png")},
    }
    (out / "metadata" / "bulk-1.json").write_text(json.dumps(record))
    summary = _plan(tmp_path)
    assert summary["skipped_done"] == 1 and summary["batch_items"] == 2
    assert "bulk-1" not in {i.id for i in read_manifest(summary["batch_manifest"], storage).items}
    # A changed prompt is a different purchase: not skipped.
    record["request_fingerprint"] = "0" * 64
    (out / "metadata" / "bulk-1.json").write_text(json.dumps(record))
    assert _plan(tmp_path)["skipped_done"] == 0


def test_recent_success_rates_come_from_run_reports(tmp_path):
    storage = open_storage()
    prefix = str(tmp_path / "out")
    for n, (calls, ok) in enumerate([(10, 5), (30, 27)]):
        storage.write_json(
            f"{prefix}/runs/run{n}/report.json",
            {
                "finished_at": f"2026-11-2{n}T00:00:00Z",
                "channels": {"a": {"calls": calls, "successes": ok}, "tiny": {"calls": 2, "successes": 2}},
            },
        )
    (tmp_path / "out" / "runs" / "broken").mkdir()
    (tmp_path / "out" / "runs" / "broken" / "report.json").write_text("{not json")
    rates = recent_success_rates(storage, prefix, ["a", "tiny", "absent"])
    assert rates == {"a": pytest.approx(32 / 40)}  # "tiny" has too few calls to trust
    assert recent_success_rates(storage, prefix, ["a"], max_reports=1) == {"a": pytest.approx(27 / 30)}


def _record(job: str, hours: float, *, censored: bool = False) -> TurnaroundRecord:
    return TurnaroundRecord(
        "developer", job, T0, T0 + timedelta(hours=hours), 10, "SUCCEEDED", censored=censored
    )


def test_turnaround_history_refines_the_batch_estimate_on_gcs(gcs_bucket, connections):
    storage = open_storage()
    prefix = f"gs://{gcs_bucket}/out"
    assert read_turnarounds(storage, prefix, "developer") == []
    for n, hours in enumerate([2, 3, 4, 5]):
        record_turnaround(storage, prefix, _record(f"batches/{n}", hours))
    record_turnaround(storage, prefix, _record("batches/3", 5))  # a retried task: not twice
    assert read_turnarounds(storage, prefix, "developer") == [7200, 10800, 14400, 18000]
    assert batch_lane("developer", storage=storage, output_prefix=prefix).turnaround == timedelta(hours=24)
    # A rescued (cancelled) job counts as at least its duration: it pushes the estimate up.
    record_turnaround(storage, prefix, _record("batches/slow", 9, censored=True))
    lane = batch_lane("developer", storage=storage, output_prefix=prefix, confidence=0.95)
    assert lane.turnaround == timedelta(hours=9) and lane.estimate and lane.estimate.source == "history"
    assert batch_lane(
        "developer", storage=storage, output_prefix=prefix, confidence=0.5
    ).turnaround == timedelta(hours=4)
    storage.write_text(
        turnaround_uri(prefix, "developer"),
        storage.read_text(turnaround_uri(prefix, "developer")) + "garbage\n",
    )
    assert batch_lane("developer", storage=storage, output_prefix=prefix).estimate.ignored == 1  # type: ignore[union-attr]


def test_concurrent_appends_lose_no_record(tmp_path):
    storage = open_storage()
    prefix = str(tmp_path / "out")
    errors: list[BaseException] = []

    def append(n: int) -> None:
        try:
            record_turnaround(storage, prefix, _record(f"batches/{n}", 1 + n))
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=append, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(read_turnarounds(storage, prefix, "developer")) == [3600.0 * (1 + n) for n in range(6)]


def test_cli_plan_and_estimate_are_dry_runs(tmp_path, connections, capsys):
    manifest = _write_manifest(tmp_path / "m.jsonl")
    out = tmp_path / "out"
    code = cli_main(
        [
            "plan",
            manifest,
            "--channels",
            "banana_gemini,banana_vertex",
            "--now",
            "2026-11-27T00:00:00Z",
            "--output-prefix",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    assert "5 items - 3 batch, 2 realtime, 0 infeasible" in text
    assert "savings $0.201" in text and "nothing was spent" in text
    assert not out.exists()  # read only: nothing written

    code = cli_main(
        ["plan", manifest, "--channels", "banana_gemini", "--now", "2026-11-27T00:00:00Z", "--json"]
    )
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["batch"] == 3 and summary["realtime"] == 2

    code = cli_main(["plan", manifest, "--channels", "banana_gemini", "--batch-turnaround", "1h", "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["realtime"] == 0

    code = cli_main(["estimate", manifest, "--now", "2026-11-27T00:00:00Z", "--batch-turnaround", "24h"])
    text = capsys.readouterr().out
    assert code == 0
    assert "all realtime" in text and "all batch" in text and "deadline plan" in text
    assert "unknown (no channels)" in text

    code = cli_main(
        ["estimate", manifest, "--channels", "banana_gemini", "--realtime-latency", "5s", "--json"]
    )
    estimate = json.loads(capsys.readouterr().out)
    assert code == 0 and estimate["scenarios"][0]["finish"] is not None
    assert [row["misses"] for row in estimate["scenarios"]] == [0, 2, 0]

    late = _write_manifest(
        tmp_path / "late.jsonl", [{"id": "x", "prompt": "p", "deadline": "2020-01-01T00:00:00Z"}]
    )
    assert cli_main(["plan", late, "--channels", "banana_gemini"]) == 1
    assert "deadline_passed" in capsys.readouterr().out
    assert cli_main(["plan", manifest, "--channels", "nope_conn"]) == 2
    assert "nope_conn" in capsys.readouterr().err


def test_plan_operator_puts_its_figures_on_the_outlets_it_is_given(tmp_path, connections):
    from airflow.sdk import Asset
    from airflow.sdk.execution_time.context import OutletEventAccessors

    from airflow_banana.operators import PlanImagesOperator

    class TI:
        dag_id, task_id, run_id, map_index = "dag", "plan", "run1", -1

    plans = Asset(uri="gs://b/plans", name="plans")
    op = PlanImagesOperator(
        task_id="plan",
        manifest=_write_manifest(tmp_path / "m.jsonl"),
        output_prefix=str(tmp_path / "out"),
        channels=["banana_gemini", "banana_vertex"],
        batch_channel="banana_gemini",
        now=T0.isoformat(),
        outlets=[plans],
    )
    events = OutletEventAccessors()
    summary = op.execute({"ti": TI(), "run_id": "run1", "logical_date": T0, "outlet_events": events})
    extra = events[plans].extra
    assert extra["lane"] == "plan" and extra["realtime_items"] == 2 and extra["batch_items"] == 3
    assert extra["plan_md_uri"] == summary["plan_md_uri"]
    assert all(not isinstance(v, list | dict) for v in extra.values())
