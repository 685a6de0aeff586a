"""Manifest reading memory: peak RSS reading a 200k-item manifest, as JSONL and as a JSON array.

Each format is read in its own subprocess, so peak RSS (``ru_maxrss``) is that read's alone: the
parent writes the manifest to a temporary folder, the child imports the reader (the baseline),
calls ``read_manifest`` exactly as ``prepare_manifest`` does and reports peak RSS, the number of
items and the seconds taken. Fails when either peak is over ``--max-rss-mb`` (100 MB, issue 16).
The suite asserts the same bound on a smaller manifest
(``tests/unit/test_manifest_limits.py::test_peak_rss_reading_a_manifest_is_bounded``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
FORMATS = ("jsonl", "json")


def item(i: int) -> dict[str, Any]:
    """A realistic catalogue item: a sentence of prompt and a little metadata."""
    return {
        "id": f"sku-{i:07d}",
        "prompt": f"Studio photo of product {i} on a white background, soft light, 45 degree angle",
        "metadata": {"sku": f"SKU-{i}", "collection": "fall"},
    }


def write_manifest(path: Path, n: int, fmt: str) -> int:
    """``n`` items as JSONL (one per line) or as one JSON array (one item per line, pretty-ish)."""
    with path.open("w", encoding="utf-8") as out:
        if fmt == "jsonl":
            for i in range(n):
                out.write(json.dumps(item(i)) + "\n")
        else:
            out.write("[\n")
            for i in range(n):
                out.write(("," if i else "") + json.dumps(item(i)) + "\n")
            out.write("]\n")
    return path.stat().st_size


def child(uri: str, step: str) -> dict[str, Any]:
    """Read ``uri`` with ``read_manifest`` (``step="read"``) or, as the operators do, with
    ``prepare_manifest`` (``"prepare"``: the reader plus one WorkItem per item); own process."""
    from datetime import UTC, datetime

    from airflow_banana.manifests import read_manifest
    from airflow_banana.manifests.prepare import prepare_manifest
    from airflow_banana.storage.objects import open_storage

    storage = open_storage(uri)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    if step == "read":
        result = read_manifest(uri, storage)
        count, fmt = len(result.items), result.format
    else:
        prepared = prepare_manifest(uri, storage, logical_date=datetime(2026, 12, 1, tzinfo=UTC))
        count, fmt = len(prepared.work), ("json" if uri.endswith(".json") else "jsonl")
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "step": step,
        "items": count,
        "format": fmt,
        "seconds": round(elapsed, 2),
        "baseline_rss_mb": round(baseline / 1024, 1),
        "peak_rss_mb": round(peak / 1024, 1),
    }


def measure(path: Path, step: str) -> dict[str, Any]:
    """Peak RSS of one read (or prepare) of ``path`` in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.manifest_rss", "--child", str(path), step],
        check=True,
        capture_output=True,
        text=True,
        cwd=str(ROOT),
    )
    row: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return row


def run(n: int, steps: list[str]) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="banana-bench-manifest-") as tmp:
        for fmt in FORMATS:
            path = Path(tmp) / f"manifest.{fmt}"
            size = write_manifest(path, n, fmt)
            for step in steps:
                row = measure(path, step)
                row["file_mb"] = round(size / 1e6, 1)
                rows.append(row)
            path.unlink()
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Manifest reading: peak RSS",
        "",
        "| step | format | items | file MB | seconds | baseline RSS MB | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['step']} | {r['format']} | {r['items']} | {r['file_mb']} | {r['seconds']} | "
            f"{r['baseline_rss_mb']} | {r['peak_rss_mb']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench manifest_rss", description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--max-rss-mb", type=float, default=100.0, help="bound for the read step")
    parser.add_argument(
        "--prepare", action="store_true", help="also measure prepare_manifest (reader + WorkItems)"
    )
    parser.add_argument("--child", nargs=2, metavar=("URI", "STEP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    rows = run(args.items, ["read", "prepare"] if args.prepare else ["read"])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "manifest_rss.json").write_text(json.dumps(rows, indent=2) + "\n")
    text = render(rows)
    (RESULTS / "manifest_rss.md").write_text(text + "\n")
    print(text)
    over = [r for r in rows if r["step"] == "read" and r["peak_rss_mb"] > args.max_rss_mb]
    if over:
        print(f"FAIL: peak RSS over {args.max_rss_mb} MB for {', '.join(r['format'] for r in over)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
