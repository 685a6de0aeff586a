"""A 3-turn edit across three separate task runs in three separate PROCESSES (FAULTS.md S6).

Each run is ``dag.test()`` of a one-task DAG in its own Python process (its own Airflow home and
SQLite DB), talking over HTTP to the real simulator with strict (Developer API) signature
validation, storing the session in gs:// through the GCS emulator. Then the same flow with the
stored signatures stripped is refused in a fourth process before any request reaches the server.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from airflow_banana.storage.objects import open_storage
from airflow_banana.testing.connections import channel_connection, conn_env_var
from airflow_banana.testing.gcs_emulator import EMULATOR_ENV, GcsEmulator
from airflow_banana.testing.server import Simulator

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

DAG_FILE = """
import os

import pendulum
from airflow.sdk import DAG, Param

from airflow_banana.operators import SignatureEditOperator

with DAG(
    "edit_across_processes",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    params={"prompt": Param("", type="string"), "instruction": Param("", type="string")},
) as dag:
    SignatureEditOperator(
        task_id="edit",
        channels=["edit_gemini"],
        output_prefix=os.environ["EDIT_OUTPUT_PREFIX"],
        session_id="red-shoe",
        prompt="{{ params.prompt }}",
        instructions="{{ params.instruction }}",
        inline_max_bytes=4096,
    )
"""

RUNNER = """
import json, runpy, sys
import pendulum
dag = runpy.run_path(sys.argv[1])["dag"]
run = dag.test(logical_date=pendulum.parse(sys.argv[2]), run_conf=json.loads(sys.argv[3]))
print("EDIT_RUN_STATE=" + str(run.state))
"""


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A separate Airflow home for the child processes, so they share nothing with this one."""
    home = tmp_path_factory.mktemp("edit-airflow-home")
    (home / "dags").mkdir()
    (home / "dags" / "edit_across_processes.py").write_text(DAG_FILE)
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        capture_output=True,
        env=_env(home, {}),
        timeout=120,
    )
    return home


def _env(home: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="True",
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
    )
    env.update(extra)
    return env


def _task_run(home: Path, env: dict[str, str], day: int, conf: dict[str, str]) -> tuple[str, str]:
    """One DAG run (one task run) in a fresh Python process; returns (state, combined output)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            RUNNER,
            str(home / "dags" / "edit_across_processes.py"),
            f"2026-02-{day:02d}T00:00:00+00:00",
            json.dumps(conf),
        ],
        capture_output=True,
        text=True,
        env=_env(home, env),
        timeout=180,
    )
    output = proc.stdout + proc.stderr
    states = [
        line.split("=", 1)[1] for line in proc.stdout.splitlines() if line.startswith("EDIT_RUN_STATE=")
    ]
    assert states, f"the child process did not finish a DAG run:\n{output[-4000:]}"
    return states[-1], output


def _parent_of(image: bytes) -> Any:
    with Image.open(io.BytesIO(image)) as img:
        return dict(getattr(img, "text", {})).get("sim:parent_sha256")


def test_three_turns_in_three_processes_then_stripped_history_refused_locally(
    airflow_home: Path, sim: Simulator, gcs_emulator: GcsEmulator, gcs_bucket: str
) -> None:
    prefix = f"gs://{gcs_bucket}/edits"
    env = {
        conn_env_var("edit_gemini"): channel_connection(sim.base_url, protocol="gemini", key="k-proc"),
        EMULATOR_ENV: gcs_emulator.endpoint,
        "EDIT_OUTPUT_PREFIX": prefix,
    }
    confs = [
        {"prompt": "a red running shoe on a white table"},
        {"instruction": "make the shoe blue"},
        {"instruction": "add white laces"},
    ]
    for day, conf in enumerate(confs, start=1):
        state, output = _task_run(airflow_home, env, day, conf)
        assert state == "success", output[-4000:]

    storage = open_storage(prefix)
    session_uri = f"{prefix}/sessions/red-shoe/session.json"
    doc = storage.read_json(session_uri)
    turns = doc["turns"]
    assert [t["instruction"] for t in turns] == [
        "a red running shoe on a white table",
        "make the shoe blue",
        "add white laces",
    ]
    assert len({t["run"]["run_id"] for t in turns}) == 3  # three different task runs
    # Images live as objects: no inline bytes in the document, only references.
    for content in doc["history"]:
        for part in content["parts"]:
            if "inline_data" in part:
                assert "data" not in part["inline_data"] and part["inline_data"]["data_ref"][
                    "uri"
                ].startswith(prefix)

    # Strict validation passed on turns 2 and 3, and each is an edit of the previous image.
    billable = sim.billable(sim.key_id("k-proc"))
    assert [b["turns"] for b in billable] == [1, 2, 3]  # the whole history was resent each time
    previous = None
    for turn, paid in zip(turns, billable, strict=True):
        image = storage.read_bytes(turn["image"]["uri"])
        sha = hashlib.sha256(image).hexdigest()
        assert sha == turn["image"]["sha256"] == paid["image_sha256"]
        assert _parent_of(image) == previous
        assert turn["parent_sha256"] == previous
        previous = sha

    # The same flow with the signatures stripped from the stored history: refused locally.
    for content in doc["history"]:
        for part in content["parts"]:
            part.pop("thought_signature", None)
    storage.write_json(session_uri, doc)
    requests_before = len(sim.requests())
    state, output = _task_run(airflow_home, env, 4, {"instruction": "add a soft shadow"})
    assert state == "failed"
    assert "SignatureError" in output
    assert "Text part is missing a thought_signature in content position 2, part position 1" in output
    assert len(sim.requests()) == requests_before  # no request reached the server
    assert len(sim.billable()) == 3
    assert len(storage.read_json(session_uri)["turns"]) == 3  # and no fresh session was started
