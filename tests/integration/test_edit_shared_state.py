"""The edit operator honours the fleet-wide channel state in Redis (issue #7: "usable by the edit operator").

Another worker's 429 on channel A closes A for everyone; an edit turn then goes to channel B
without sending anything to A, and its own attempt is recorded in the shared state.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest

from airflow_banana.channels.config import parse_channel
from airflow_banana.exceptions import ErrorClass
from airflow_banana.operators import SignatureEditOperator
from airflow_banana.routing import Outcome, RouterConfig, SystemClock, policy_for
from airflow_banana.routing.redis_state import redis_backend
from airflow_banana.testing.connections import channel_connection, conn_env_var

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_a_channel_closed_by_another_worker_is_skipped(
    sim, redis_url: str, monkeypatch, tmp_path: Path
) -> None:
    for conn_id, key in (("edit_a", "k-a"), ("edit_b", "k-b")):
        monkeypatch.setenv(
            conn_env_var(conn_id), channel_connection(sim.base_url, protocol="gemini", key=key)
        )
    parts = urlsplit(redis_url)
    monkeypatch.setenv(
        conn_env_var("fleet_redis"),
        json.dumps(
            {"conn_type": "redis", "host": parts.hostname, "port": parts.port, "extra": {"namespace": "edit"}}
        ),
    )
    # "another worker": a 429 with a 60 s retry hint on channel A, recorded in the shared state
    worker = redis_backend(redis_url, namespace="edit", rng=random.Random(1))
    for name in ("edit_a", "edit_b"):
        config = parse_channel(name, host=sim.base_url, password="k", extra={"protocol": "gemini"})
        worker.register(name, policy_for(config, RouterConfig()))
    now = SystemClock(shared=True).now()
    permit = worker.try_acquire("edit_a", now)
    worker.record(permit, Outcome(ErrorClass.RATE_LIMITED, 0.1, 0.0, closed_until=now + 60), now)  # type: ignore[arg-type]

    op = SignatureEditOperator(
        task_id="edit",
        channels=["edit_a", "edit_b"],
        output_prefix=str(tmp_path),
        session_id="mug",
        prompt="a white mug",
        redis_conn_id="fleet_redis",
    )
    ti = SimpleNamespace(dag_id="d", task_id="edit", run_id="r", map_index=-1)
    result: dict[str, Any] = op.execute({"ti": ti, "run_id": "r"})  # type: ignore[arg-type]

    assert result["applied"][0]["channel"] == "edit_b"
    assert not sim.requests(key_id=sim.key_id("k-a"))  # nothing was sent to the closed channel
    assert len(sim.billable()) == 1
    snap = worker.snapshot("edit_b", SystemClock(shared=True).now())
    assert snap.successes == 1  # the edit's own attempt is in the fleet-wide state
