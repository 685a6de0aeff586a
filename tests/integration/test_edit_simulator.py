"""SignatureEditOperator against the real simulator over HTTP (strict signature validation).

Each ``_run`` is one task execution: the operator loads the session from storage, so every call
is a fresh restore. Covers: retries not paying twice (ledger), failover when a channel rejects
the history's signatures, relays refused up front, images stored as objects and restored
byte-identical, model filtering, budget, and refusing to silently restart a session.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from airflow_banana.editing import SessionStore
from airflow_banana.editing.session import history_sha256
from airflow_banana.exceptions import BudgetExceededError, ConfigurationError, SignatureError
from airflow_banana.operators import SignatureEditOperator
from airflow_banana.storage.objects import open_storage
from airflow_banana.testing import FaultProfile
from airflow_banana.testing.config import SimulatorConfig
from airflow_banana.testing.connections import channel_connection, conn_env_var
from airflow_banana.testing.server import Simulator

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _run(task_id: str = "edit", run_id: str = "run-1", map_index: int = -1, **kwargs: Any) -> dict[str, Any]:
    op = SignatureEditOperator(task_id=task_id, **kwargs)
    ti = SimpleNamespace(dag_id="edit_tests", task_id=task_id, run_id=run_id, map_index=map_index)
    return op.execute({"ti": ti, "run_id": run_id})  # type: ignore[arg-type]


def _conn(monkeypatch: pytest.MonkeyPatch, conn_id: str, base_url: str, key: str, **extra: Any) -> None:
    protocol = extra.pop("protocol", "gemini")
    monkeypatch.setenv(
        conn_env_var(conn_id), channel_connection(base_url, protocol=protocol, key=key, **extra)
    )


def _parent_of(image: bytes) -> Any:
    with Image.open(io.BytesIO(image)) as img:
        return dict(getattr(img, "text", {})).get("sim:parent_sha256")


@pytest.fixture
def gemini(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> Simulator:
    _conn(monkeypatch, "edit_a", sim.base_url, "k-a")
    return sim


@pytest.fixture
def other_project() -> Iterator[Simulator]:
    """A second 'Google project': its signatures differ, so it rejects ours (strict)."""
    modules = ["airflow_banana.testing.admin", "airflow_banana.testing.gemini_routes"]
    config = SimulatorConfig(signature_secret="another-project", minute_s=1.0, day_s=10.0)
    with Simulator(config, modules=modules) as other:
        yield other


def test_retried_task_does_not_pay_again_for_stored_turns(gemini: Simulator, tmp_path: Path) -> None:
    args: dict[str, Any] = {
        "channels": ["edit_a"],
        "output_prefix": str(tmp_path),
        "session_id": "mug",
        "prompt": "a white ceramic mug",
        "instructions": ["make it matte black", "add steam"],
    }
    first = _run(**args)
    assert [a["skipped"] for a in first["applied"]] == [False, False, False]
    assert len(gemini.billable()) == 3

    retry = _run(**args)  # the same task instance again (an Airflow retry)
    assert [a["skipped"] for a in retry["applied"]] == [True, True, True]
    assert retry["spent_usd"] == 0.0
    assert len(gemini.billable()) == 3

    # A retry after a crash between turns: the task instance now also has a third instruction.
    grown = _run(**{**args, "instructions": [*args["instructions"], "put it on a wooden table"]})
    assert [a["skipped"] for a in grown["applied"]] == [True, True, True, False]
    assert len(gemini.billable()) == 4
    assert grown["turns"] == 4

    # Metadata lost after the commit (crash right after the session save) is rewritten, unpaid.
    (tmp_path / "metadata" / "mug" / "turn-002.json").unlink()
    _run(**args)
    meta = json.loads((tmp_path / "metadata" / "mug" / "turn-002.json").read_text())
    assert meta["instruction"] == "make it matte black" and meta["cost_usd"] > 0.134
    assert len(gemini.billable()) == 4

    # Another DAG run asking an edit again gets (and pays for) a new turn: that is a new purchase.
    _run(
        run_id="run-2",
        channels=["edit_a"],
        output_prefix=str(tmp_path),
        session_id="mug",
        instructions="add steam",
    )
    assert len(gemini.billable()) == 5


def test_a_channel_rejecting_the_signatures_is_recorded_and_the_next_one_used(
    gemini: Simulator, other_project: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _conn(monkeypatch, "edit_other", other_project.base_url, "k-other")
    _conn(monkeypatch, "edit_b", gemini.base_url, "k-b")
    _run(channels=["edit_a"], output_prefix=str(tmp_path), session_id="lamp", prompt="a brass desk lamp")

    out = _run(
        run_id="run-2",
        channels=["edit_other", "edit_b"],
        output_prefix=str(tmp_path),
        session_id="lamp",
        instructions=["turn the lamp on"],
    )
    turn = out["applied"][0]
    assert turn["channel"] == "edit_b"
    meta = json.loads(Path(turn["metadata_uri"]).read_text())
    assert [a["outcome"] for a in meta["attempts"]] == ["signature_rejected", "success"]
    assert "thought_signature" in meta["attempts"][0]["reason"]
    assert other_project.billable() == [] and len(other_project.requests()) == 1
    image = Path(turn["image_uri"]).read_bytes()
    first_image = json.loads((tmp_path / "metadata" / "lamp" / "turn-001.json").read_text())["image"][
        "sha256"
    ]
    assert _parent_of(image) == first_image  # continued the session, not a fresh one

    # When every channel rejects the signatures the turn fails: no fresh session behind our back.
    session_file = tmp_path / "sessions" / "lamp" / "session.json"
    before = session_file.read_bytes()
    with pytest.raises(SignatureError, match="NOT restarted"):
        _run(
            run_id="run-3",
            channels=["edit_other"],
            output_prefix=str(tmp_path),
            session_id="lamp",
            instructions=["add a shade"],
        )
    assert session_file.read_bytes() == before
    assert other_project.billable() == []


@pytest.mark.parametrize(
    ("protocol", "extra"),
    [("openai", {}), ("gemini", {"drops_signatures": True})],
    ids=["openai-relay", "declared-dropper"],
)
def test_channels_that_drop_signatures_are_refused_up_front(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, protocol: str, extra: dict[str, Any]
) -> None:
    _conn(monkeypatch, "edit_good", sim.base_url, "k-good")
    _conn(monkeypatch, "edit_relay", sim.base_url, "k-relay", protocol=protocol, **extra)
    with pytest.raises(ConfigurationError, match="channel 'edit_relay' cannot carry an edit session"):
        _run(channels=["edit_good", "edit_relay"], output_prefix=str(tmp_path), session_id="s", prompt="x")
    assert sim.requests() == [] and sim.billable() == []
    assert not (tmp_path / "sessions").exists()


def test_history_images_are_objects_and_restore_byte_identical_on_gcs(
    gemini: Simulator, gcs_bucket: str
) -> None:
    from google.genai import types

    prefix = f"gs://{gcs_bucket}/edits"
    common: dict[str, Any] = {"channels": ["edit_a"], "output_prefix": prefix, "session_id": "hat"}
    _run(**common, prompt="a straw hat", include_thoughts=True, inline_max_bytes=1024)
    _run(run_id="run-2", **common, instructions="add a red ribbon", inline_max_bytes=1024)
    _run(run_id="run-3", **common, instructions="tilt it to the left", inline_max_bytes=1024)

    storage = open_storage(prefix)
    uri = f"{prefix}/sessions/hat/session.json"
    doc = storage.read_json(uri)
    session = SessionStore(storage).load(uri)
    assert session is not None
    assert history_sha256(session.history) == doc["history_sha256"]
    # Each content is exactly what the SDK dumps: validating and dumping again changes nothing.
    for content in session.history:
        assert types.Content.model_validate(content).model_dump(mode="json", exclude_none=True) == content
    # The result images are stored once: the history points at the turn's output image.
    model_refs = [
        part["inline_data"]["data_ref"]["uri"]
        for content in doc["history"]
        if content["role"] == "model"
        for part in content["parts"]
        if "inline_data" in part and not part.get("thought")
    ]
    assert model_refs == [t["image"]["uri"] for t in doc["turns"]]
    # Thought parts (the draft images) are kept, unsigned, and strict validation accepted them.
    assert any(p.get("thought") for c in session.history for p in c["parts"])
    shas = [t["image"]["sha256"] for t in doc["turns"]]
    assert [_parent_of(storage.read_bytes(t["image"]["uri"])) for t in doc["turns"]] == [None, *shas[:2]]

    # An object under the history changed: the restore refuses instead of sending other bytes.
    storage.write_bytes(model_refs[0], storage.read_bytes(model_refs[1]))
    with pytest.raises(Exception, match="no longer holds the image"):
        SessionStore(storage).load(uri)


def test_only_channels_serving_the_session_model_are_used(
    gemini: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _conn(monkeypatch, "edit_flash", gemini.base_url, "k-flash", model="gemini-2.5-flash-image")
    gemini.set_faults("k-a", FaultProfile(name="a-overloaded", fixed_status=503))
    common: dict[str, Any] = {"output_prefix": str(tmp_path), "session_id": "vase", "max_wait_s": 0.5}
    with pytest.raises(Exception, match="failed"):
        _run(channels=["edit_a", "edit_flash"], prompt="a glass vase", max_attempts_per_turn=2, **common)
    assert {r["key_id"] for r in gemini.requests()} == {"a-overloaded"}  # never the flash channel
    with pytest.raises(ConfigurationError, match="serves model"):
        _run(channels=["edit_flash"], prompt="a glass vase", model="gemini-3-pro-image-preview", **common)


def test_budget_and_a_different_start_are_refused_before_spending(gemini: Simulator, tmp_path: Path) -> None:
    common: dict[str, Any] = {"channels": ["edit_a"], "output_prefix": str(tmp_path), "session_id": "clock"}
    with pytest.raises(BudgetExceededError, match="saved up to turn 1"):
        _run(**common, prompt="a table clock", instructions=["make it gold"], budget_usd=0.2)
    assert len(gemini.billable()) == 1
    with pytest.raises(ConfigurationError, match="started from a different prompt"):
        _run(**common, prompt="a wall clock")
    with pytest.raises(ConfigurationError, match="image_size='1K'"):
        _run(**common, instructions=["make it gold"], image_size="2K")
    assert len(gemini.billable()) == 1
    stored = _run(**common, prompt="a table clock")  # the same start: recognised, not paid again
    assert stored["applied"][0]["skipped"] is True and len(gemini.billable()) == 1


def test_start_from_a_base_image_with_reference_images(gemini: Simulator, tmp_path: Path) -> None:
    base = tmp_path / "in" / "base.png"
    base.parent.mkdir()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(base)
    ref = tmp_path / "in" / "logo.png"
    Image.new("RGB", (32, 32), (0, 0, 200)).save(ref)
    out = _run(
        channels=["edit_a"],
        output_prefix=str(tmp_path / "out"),
        session_id="bag",
        base_image=str(base),
        instructions=[{"text": "put this logo on the bag", "reference_images": [str(ref)]}],
    )
    assert out["turns"] == 1
    meta = json.loads(Path(out["applied"][0]["metadata_uri"]).read_text())
    assert meta["parent_sha256"] == hashlib.sha256(base.read_bytes()).hexdigest()
    assert meta["reference_images"] == [str(base), str(ref)]
    assert meta["tokens"]["prompt_tokens"] >= 2 * 560  # both images were sent
    with pytest.raises(Exception, match="at most 14"):
        _run(
            channels=["edit_a"],
            output_prefix=str(tmp_path / "out"),
            session_id="bag2",
            base_image=str(base),
            prompt="x",
            reference_images=[str(ref)] * 14,
        )


def test_an_instruction_over_the_input_limit_is_refused_before_any_turn(
    gemini: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args: dict[str, Any] = {"channels": ["edit_a"], "output_prefix": str(tmp_path), "session_id": "mug"}
    with pytest.raises(ConfigurationError, match="a turn's text is 262145 characters, over the 262144"):
        _run(**args, prompt="a mug", instructions=["x" * 262_145])
    monkeypatch.setenv("BANANA_MAX_INPUT_TOKENS", "4")  # the same limit, lowered for this process
    with pytest.raises(ConfigurationError, match="BANANA_MAX_INPUT_TOKENS"):
        _run(**args, prompt="a white ceramic mug")
    assert gemini.requests() == [] and gemini.billable() == []
