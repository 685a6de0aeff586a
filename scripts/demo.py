"""`make demo`: the main job on embedded defaults, offline, leaving images a person can open.

Starts the Gemini simulator (peak-hour profile: 45 % of calls to the cheapest channel fail with
503) and fake-gcs-server, runs the example DAG ``banana_catalog_realtime`` with
``airflow dags test`` on a throwaway AIRFLOW_HOME (SQLite), prints the run summary and copies
images, metadata, the report and the gallery page to ``.demo/output`` and prints where the
gallery is. Background servers stop on exit, also on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from airflow_banana.storage.objects import open_storage
from airflow_banana.testing import FaultProfile, Simulator, SimulatorConfig
from airflow_banana.testing.connections import channel_connection, conn_env_var
from airflow_banana.testing.gcs_emulator import GcsEmulator

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
BUCKET = "banana-demo"
DAG_ID = "banana_catalog_realtime"
# Fake keys for the simulator only; real keys belong in Airflow connections, never in code.
CHANNELS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "banana_relay": ("openai", "demo-relay-key", {"prices": {"1K": 0.05, "2K": 0.05, "4K": 0.05}, "rpm": 60}),
    # the simulated Google direct and Vertex channels stand in for Google's own: official
    "banana_gemini": ("gemini", "demo-gemini-key", {"rpm": 30, "official": True}),
    "banana_vertex": ("vertex", "demo-vertex-token", {"rpm": 30, "official": True}),
}


def main() -> int:
    shutil.rmtree(DEMO, ignore_errors=True)
    (DEMO / "airflow").mkdir(parents=True)
    config = SimulatorConfig(
        keys={
            "demo-relay-key": FaultProfile.peak("relay", overload_rate=0.45, rate_limit_rate=0.0),
            "demo-gemini-key": FaultProfile(name="gemini", overload_rate=0.10, latency_ms=(50.0, 300.0)),
            "demo-vertex-token": FaultProfile(name="vertex", overload_rate=0.05, latency_ms=(50.0, 300.0)),
        }
    )
    with GcsEmulator(backend="filesystem", root=str(DEMO / "gcs")) as gcs, Simulator(config) as sim:
        gcs.create_bucket(BUCKET)
        storage = open_storage(f"gs://{BUCKET}")
        manifest = f"gs://{BUCKET}/manifests/catalog.jsonl"
        storage.write_bytes(manifest, (ROOT / "dags" / "data" / "catalog.jsonl").read_bytes())
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(DEMO / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "STORAGE_EMULATOR_HOST": gcs.endpoint,
        }
        for conn_id, (protocol, key, extra) in CHANNELS.items():
            env[conn_env_var(conn_id)] = channel_connection(sim.base_url, protocol=protocol, key=key, **extra)
        airflow = [sys.executable, "-m", "airflow"]
        print(f"simulator at {sim.base_url}, GCS emulator at {gcs.endpoint}")
        print("migrating the demo's SQLite metadata DB …", flush=True)
        subprocess.run([*airflow, "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
        print(f"running `airflow dags test {DAG_ID}` …", flush=True)
        run = subprocess.run([*airflow, "dags", "test", DAG_ID], env=env, check=False)
        out = DEMO / "output"
        copied = 0
        for uri in storage.list(f"gs://{BUCKET}/catalog/"):
            target = out / uri.removeprefix(f"gs://{BUCKET}/catalog/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(storage.read_bytes(uri))
            copied += 1
        billable = sim.billable()
    reports = sorted(out.glob("runs/*/report.json"))
    if run.returncode != 0 or not reports:
        print(f"demo FAILED (airflow exit code {run.returncode}); see the log above", file=sys.stderr)
        return 1
    report = json.loads(reports[-1].read_text())
    fingerprints = [b["fingerprint"] for b in billable]
    print("\n" + "=" * 72)
    print((reports[-1].parent / "report.md").read_text())
    print("=" * 72)
    print(f"items: {report['items']}")
    print(
        f"spent ${report['cost']['spent_usd']:.4f}; Google direct list price "
        f"${report['cost']['google_direct_list_usd']:.4f}"
    )
    print(
        f"simulator ledger: {len(billable)} billable generations, "
        f"{len(fingerprints) - len(set(fingerprints))} paid twice"
    )
    print(f"\n{copied} files copied. Open the images in: {out / 'images'}")
    print(f"per-item metadata: {out / 'metadata'}; report: {reports[-1].parent / 'report.md'}")
    gallery = reports[-1].parent / "gallery.html"
    where = gallery.resolve().as_uri() if gallery.exists() else "not written (see the log above)"
    print(f"gallery (open it in a browser): {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
