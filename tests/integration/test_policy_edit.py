"""Edit sessions under ``data_policy="official_only"``: SignatureEditOperator against the simulator.

The cheap Gemini-native relay is listed first; an official-only session's turns never reach it,
and the policy is kept in the session document, so a later run that does not repeat it cannot
loosen it.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_banana.exceptions import NoEligibleChannelError
from airflow_banana.operators import SignatureEditOperator
from airflow_banana.testing.connections import channel_connection, conn_env_var

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
CHEAP = {"1K": 0.02, "2K": 0.02, "4K": 0.02}


def _run(run_id: str = "run-1", **kwargs: Any) -> dict[str, Any]:
    op = SignatureEditOperator(task_id="edit", **kwargs)
    ti = SimpleNamespace(dag_id="policy_edit", task_id="edit", run_id=run_id, map_index=-1)
    return op.execute({"ti": ti, "run_id": run_id})  # type: ignore[arg-type]


@pytest.fixture
def channels(sim: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv(
        conn_env_var("e_native"),
        channel_connection(sim.base_url, protocol="gemini", key="n-key", prices=CHEAP),
    )
    monkeypatch.setenv(
        conn_env_var("e_google"),
        channel_connection(sim.base_url, protocol="gemini", key="g-key", official=True),
    )
    sim.set_faults("n-key", {"name": "native"})
    sim.set_faults("g-key", {"name": "google"})
    return sim


def test_official_only_session_never_reaches_the_relay_and_keeps_its_policy(
    channels: Any, tmp_path: Path
) -> None:
    sim = channels
    args: dict[str, Any] = dict(
        channels=["e_native", "e_google"], output_prefix=str(tmp_path), session_id="scan"
    )
    _run(prompt="an anatomical drawing of a knee", data_policy="official_only", **args)
    _run(run_id="run-2", instructions=["label the ligaments"], **args)  # no data_policy given

    posts = [r for r in sim.requests() if r["method"] == "POST"]
    assert len(posts) == 2 and {r["key_id"] for r in posts} == {"google"}
    doc = json.loads((tmp_path / "sessions" / "scan" / "session.json").read_text())
    assert doc["settings"]["data_policy"] == "official_only"
    turn = json.loads((tmp_path / "metadata" / "scan" / "turn-002.json").read_text())
    assert turn["settings"]["data_policy"] == "official_only" and turn["channel"] == "e_google"

    # a plain session through the same channels takes the cheap relay
    _run(prompt="a teapot", channels=["e_native", "e_google"], output_prefix=str(tmp_path), session_id="pot")
    assert [r["key_id"] for r in sim.requests() if r["method"] == "POST"][-1] == "native"


def test_official_only_session_without_an_official_channel_is_refused_unsent(
    channels: Any, tmp_path: Path
) -> None:
    with pytest.raises(NoEligibleChannelError, match="item 'scan' \\(data_policy official_only\\)"):
        _run(
            prompt="an anatomical drawing",
            data_policy="official_only",
            channels=["e_native"],
            output_prefix=str(tmp_path),
            session_id="scan",
        )
    assert not [r for r in channels.requests() if r["method"] == "POST"] and not channels.billable()
