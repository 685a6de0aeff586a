"""Issue 15 through real Airflow runs (dag.test()): what a new user hits on a first afternoon.

Real simulator over HTTP, local storage, SQLite Airflow; the DAG is the test-only
``tests/system/dags/banana_first_afternoon.py`` (channels as a templated comma-separated string,
bad lines quarantined).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from airflow_banana.exceptions import BananaError, ConfigurationError
from airflow_banana.identity import RunIdentity
from airflow_banana.storage.objects import open_storage
from airflow_banana.testing import FaultProfile
from airflow_banana.testing.connections import channel_connection, conn_env_var

pytestmark = pytest.mark.system
DAGS = Path(__file__).resolve().parent / "dags"  # test-only DAGs


def _dag(name: str = "banana_first_afternoon"):
    spec = importlib.util.spec_from_file_location(name, DAGS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


@pytest.fixture
def conns(sim, monkeypatch):
    """Define ``banana_<name>`` connections on the simulator: name -> (protocol, key, extra)."""

    def define(**channels: tuple[str, str, dict[str, Any]]) -> None:
        for name, (protocol, key, extra) in channels.items():
            monkeypatch.setenv(
                conn_env_var(f"banana_{name}"),
                channel_connection(sim.base_url, protocol=protocol, key=key, timeout=10, **extra),
            )

    return define


def _manifest(tmp_path: Path, lines: list[Any]) -> str:
    path = tmp_path / "manifest.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return str(path)


def _run(tmp_path: Path, manifest: str, channels: str) -> tuple[Any, dict[str, Any], str]:
    out = tmp_path / "out"
    run = _dag().test(run_conf={"manifest": manifest, "output_prefix": str(out), "channels": channels})
    run_key = RunIdentity("banana_first_afternoon", "generate", run.run_id).run_key
    folder = out / "runs" / run_key
    done = (folder / "report.json").exists()
    report = open_storage().read_json(str(folder / "report.json")) if done else {}
    md = (folder / "report.md").read_text() if done else ""
    return run, report, md


class _TI:
    dag_id, task_id, run_id, map_index = "banana_first_afternoon", "generate", "direct", -1


def _execute(tmp_path: Path, manifest: str, channels: str) -> dict[str, Any]:
    """The same task run by hand (``op.execute``), to assert on its exception text and log lines
    (Airflow's task runner keeps its own log streams)."""
    from airflow_banana.operators import RealtimeImageOperator

    op = RealtimeImageOperator(
        task_id="generate",
        manifest=manifest,
        output_prefix=str(tmp_path / "out"),
        channels=channels,
        on_invalid="quarantine",
    )
    return op.execute({"ti": _TI(), "run_id": _TI.run_id, "logical_date": datetime.now(UTC)})  # type: ignore[arg-type]


def _task_state(run: Any) -> str:
    (ti,) = [ti for ti in run.get_task_instances() if ti.task_id == "generate"]
    return str(ti.state)


def test_a_manifest_whose_every_line_was_quarantined_fails_after_its_report(airflow_db, sim, conns, tmp_path):
    """15.2: rejected lines count; nothing valid left fails the task (default max_rejected_items)."""
    conns(gemini=("gemini", "gemini-key", {}))
    manifest = _manifest(tmp_path, [{"id": "no-prompt"}, "not json", {"id": "bad id!", "prompt": "x"}])
    run, report, md = _run(tmp_path, manifest, "banana_gemini")
    assert _task_state(run) == "failed"
    assert report["items"]["rejected_in_manifest"] == 3 and report["items"]["total"] == 0
    assert report["summary"].startswith("3 of 3 item(s) have no image") and "3 rejected" in report["summary"]
    assert "Every item has an image" not in md and "## Rejected manifest lines" in md and "line 2" in md
    assert sim.billable() == []


def test_quarantined_lines_beside_valid_ones_are_counted_and_the_run_goes_on(
    airflow_db, sim, conns, tmp_path
):
    conns(gemini=("gemini", "gemini-key", {}))
    manifest = _manifest(tmp_path, [{"id": "ok-1", "prompt": "a mug"}, {"id": "no-prompt"}])
    run, report, md = _run(tmp_path, manifest, "banana_gemini")
    assert _task_state(run) == "success"
    assert report["summary"] == (
        "1 of 2 item(s) have no image: 0 failed, 0 not attempted, "
        "1 rejected in the manifest (see rejects.jsonl)."
    )
    assert f"**{report['summary']}**" in md
    assert len(sim.billable()) == 1


def test_channels_as_a_string_and_preflight_leaves_broken_channels_out_at_the_start(
    airflow_db, sim, conns, monkeypatch, tmp_path
):
    """15.5/15.6/15.8: a templated "a, b, c, d" string names four channels; a wrong key, an unknown
    model and a relay base URL without its API prefix are left out by their free preflight call,
    before any item; the fourth channel makes every image. 15.3: every attempt has its wall-clock start."""
    sim.set_faults("wrong-key", FaultProfile(fixed_status=400))  # API_KEY_INVALID
    conns(
        badkey=("gemini", "wrong-key", {}),
        nomodel=("gemini", "gemini-key", {"model": "gemini-9-image"}),
        gemini=("gemini", "gemini-key", {}),
    )
    monkeypatch.setenv(  # the base URL a new user copies: no /api/v1
        conn_env_var("banana_noprefix"),
        json.dumps(
            {
                "conn_type": "banana",
                "host": sim.base_url,
                "password": "relay-key",
                "extra": {"protocol": "openai"},
            }
        ),
    )
    items = [{"id": f"p{i}", "prompt": f"product {i}"} for i in range(3)]
    run, report, md = _run(
        tmp_path, _manifest(tmp_path, items), "banana_noprefix, banana_badkey,banana_nomodel ,banana_gemini"
    )
    assert _task_state(run) == "success"
    left_out = report["channels_left_out"]
    assert set(left_out) == {"banana_noprefix", "banana_badkey", "banana_nomodel"}
    assert "HTTP 404" in left_out["banana_noprefix"] and "HTTP 400" in left_out["banana_badkey"]
    assert "gemini-9-image" in left_out["banana_nomodel"]
    assert set(report["channels"]) == {"banana_gemini"}  # no item ever called the broken two
    assert "## Channels left out at the start (preflight)" in md
    assert len(sim.billable()) == 3
    for item in items:
        meta = open_storage().read_json(str(tmp_path / "out" / "metadata" / f"{item['id']}.json"))
        assert all(a["started_at"].startswith(run.run_id[8:18]) for a in meta["attempts"])


@pytest.mark.parametrize("case", ["http_conn_type", "every_channel_broken"])
def test_unusable_connections_fail_the_task_before_any_spend(
    airflow_db, sim, conns, monkeypatch, tmp_path, case
):
    """15.4: a connection of another type is refused; 15.5: when no channel passes preflight the
    task fails at the start with every channel's reason."""
    if case == "http_conn_type":
        monkeypatch.setenv(
            conn_env_var("banana_gemini"),
            json.dumps({"conn_type": "http", "host": sim.base_url, "password": "gemini-key"}),
        )
        expected = "is of type 'http', not 'banana'"
    else:
        sim.set_faults("wrong-key", FaultProfile(fixed_status=401))
        conns(gemini=("gemini", "wrong-key", {}))
        expected = "no channel passed its preflight call, nothing was spent"
    manifest = _manifest(tmp_path, [{"id": "p0", "prompt": "a mug"}])
    run, report, _md = _run(tmp_path, manifest, "banana_gemini")
    assert _task_state(run) == "failed" and report == {}
    assert sim.billable() == []
    with pytest.raises(ConfigurationError, match=expected):
        _execute(tmp_path, manifest, "banana_gemini")
    assert sim.billable() == []


def test_failed_items_are_named_with_their_reasons_in_the_task_error(
    airflow_db, sim, conns, tmp_path, caplog
):
    """15.5: the task's exception carries the first reasons, not only a pointer to report.json."""
    conns(gemini=("gemini", "gemini-key", {}))
    manifest = _manifest(
        tmp_path, [{"id": "ok", "prompt": "a mug"}, {"id": "nope", "prompt": "x [sim:blocked]"}]
    )
    run, report, _md = _run(tmp_path, manifest, "banana_gemini")
    assert _task_state(run) == "failed"
    assert [f["item_id"] for f in report["failed_items"]] == ["nope"]
    with pytest.raises(BananaError, match=r"1 item\(s\) ended without an image \(first: nope: item_terminal"):
        _execute(tmp_path, manifest, "banana_gemini")
    # 15.13: the channel's error names the item once
    lines = [r.getMessage() for r in caplog.records]
    assert any("channel 'banana_gemini', item 'nope'" in line for line in lines)
    assert not any("item 'nope': channel" in line for line in lines)
    assert len(sim.billable()) == 1  # the rerun skipped 'ok'; a blocked prompt is not billed


def test_progress_lines_read_ok_and_a_rerun_reports_no_absurd_rate(sim, conns, tmp_path, caplog):
    """15.13: a healthy channel is "ok", not "closed"; a rerun that skipped everything has no rate."""
    conns(gemini=("gemini", "gemini-key", {}))
    manifest = _manifest(tmp_path, [{"id": f"p{i}", "prompt": f"product {i}"} for i in range(2)])
    caplog.set_level(logging.INFO, logger="airflow_banana")
    _execute(tmp_path, manifest, "banana_gemini")
    first = [r.getMessage() for r in caplog.records if "finished:" in r.getMessage()]
    assert len(first) == 1 and "/min)" in first[0] and "banana_gemini=ok" in first[0]
    caplog.clear()
    summary = _execute(tmp_path, manifest, "banana_gemini")
    assert summary["items"]["skipped"] == 2
    (line,) = [r.getMessage() for r in caplog.records if "finished:" in r.getMessage()]
    assert (
        line == "finished: 2/2 items done (2 already done), spent $0.0000, ETA –, channels: banana_gemini=ok"
    )


def test_a_lane_after_the_plan_with_nothing_to_do_skips(airflow_db, sim, conns, tmp_path):
    """15.10: the plan gives the batch lane nothing (no batch channel): it skips, the run is green."""
    conns(gemini=("gemini", "gemini-key", {}))
    manifest = _manifest(tmp_path, [{"id": "p0", "prompt": "a mug"}])
    run = _dag("banana_plan_without_branch").test(
        run_conf={"manifest": manifest, "output_prefix": str(tmp_path / "out")}
    )
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states == {"plan": "success", "generate_realtime": "success", "generate_batch": "skipped"}
    assert run.state == "success" and len(sim.billable()) == 1


def test_a_relay_reports_what_it_billed_and_the_configured_price_is_kept_as_the_estimate(
    airflow_db, sim, conns, tmp_path
):
    """15.3: the relay's usage.cost is the truth (cost_usd); the configured price the router ranks
    by is recorded next to it as the estimate, per attempt, per item and in the report."""
    sim.set_faults("relay-key", FaultProfile(openai_cost_usd=0.05))
    conns(relay=("openai", "relay-key", {"prices": {"1K": 0.15, "2K": 0.15, "4K": 0.15}}))
    items = [{"id": f"p{i}", "prompt": f"product {i}"} for i in range(2)]
    run, report, md = _run(tmp_path, _manifest(tmp_path, items), "banana_relay")
    assert _task_state(run) == "success"
    meta = open_storage().read_json(str(tmp_path / "out" / "metadata" / "p0.json"))
    assert meta["cost_usd"] == 0.05 and meta["estimated_cost_usd"] == 0.15
    assert meta["cost_source"] == "reported by the channel"
    (attempt,) = meta["attempts"]
    assert attempt["cost_usd"] == 0.05 and attempt["estimated_cost_usd"] == 0.15 and attempt["started_at"]
    assert report["cost"]["spent_usd"] == pytest.approx(0.10)
    assert report["cost"]["estimated_usd"] == pytest.approx(0.30)
    assert report["channels"]["banana_relay"]["estimated_usd"] == pytest.approx(0.30)
    assert "estimate at the configured prices: $0.3000" in md
