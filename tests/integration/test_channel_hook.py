"""BananaChannelHook.test_connection against the real simulator: free calls only, secret-free messages."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from airflow_banana.hooks import BananaChannelHook
from airflow_banana.models import ImageRequest
from airflow_banana.testing import FaultProfile, Simulator
from airflow_banana.testing.connections import channel_connection, conn_env_var

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def set_conn(monkeypatch: pytest.MonkeyPatch, sim: Simulator, conn_id: str, key: str, protocol: str) -> None:
    extra: dict[str, object] = {"timeout": 5}
    if protocol == "vertex":
        extra.update(project="banana-test", location="us-central1")
    if protocol == "openai":
        extra["model"] = "google/gemini-3-pro-image-preview"
    monkeypatch.setenv(
        conn_env_var(conn_id), channel_connection(sim.base_url, protocol=protocol, key=key, **extra)
    )


@pytest.mark.parametrize("protocol", ["gemini", "vertex", "openai"])
def test_test_connection_succeeds_without_billing(
    monkeypatch: pytest.MonkeyPatch, sim: Simulator, protocol: str
) -> None:
    key = f"hook-{uuid.uuid4().hex[:10]}"
    set_conn(monkeypatch, sim, "banana_probe", key, protocol)
    ok, message = BananaChannelHook("banana_probe").test_connection()
    assert ok is True, message
    assert "gemini-3-pro-image-preview" in message
    assert key not in message
    # the simulator runs on 127.0.0.1: not Google's host, so no channel here is official
    assert "not an official Google channel (official_only items never use it)" in message
    requests = sim.requests(sim.key_id(key))
    assert len(requests) == 1 and requests[0]["method"] == "GET"
    assert sim.billable() == []


@pytest.mark.parametrize("protocol", ["gemini", "vertex", "openai"])
@pytest.mark.parametrize("status", [401, 404])
def test_test_connection_reports_failures(
    monkeypatch: pytest.MonkeyPatch, sim: Simulator, protocol: str, status: int
) -> None:
    key = f"hook-{uuid.uuid4().hex[:10]}"
    sim.set_faults(key, FaultProfile(fixed_status=status))
    set_conn(monkeypatch, sim, "banana_bad", key, protocol)
    ok, message = BananaChannelHook("banana_bad").test_connection()
    assert ok is False
    assert f"HTTP {status}" in message and "channel 'banana_bad'" in message
    assert key not in message


def test_hook_channel_generates_from_env_connection(monkeypatch: pytest.MonkeyPatch, sim: Simulator) -> None:
    key = f"hook-{uuid.uuid4().hex[:10]}"
    set_conn(monkeypatch, sim, "banana_gen", key, "gemini")

    async def main() -> str:
        channel = BananaChannelHook("banana_gen").get_channel()
        try:
            return (await channel.generate(ImageRequest("h1", "a pineapple"))).mime_type
        finally:
            await channel.aclose()

    assert asyncio.run(main()) == "image/png"
    assert len(sim.billable(sim.key_id(key))) == 1


def test_test_connection_inside_a_running_loop(monkeypatch: pytest.MonkeyPatch, sim: Simulator) -> None:
    """The UI calls it synchronously, but an async caller must not deadlock or crash either."""
    key = f"hook-{uuid.uuid4().hex[:10]}"
    set_conn(monkeypatch, sim, "banana_loop", key, "openai")

    async def main() -> tuple[bool, str]:
        return BananaChannelHook("banana_loop").test_connection()

    ok, message = asyncio.run(main())
    assert ok is True, message
