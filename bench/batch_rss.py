"""Batch harvest memory: peak RSS while harvesting 50 vs 500 2K results must stay flat (streaming).

Each size runs in its own subprocess, so peak RSS (``ru_maxrss``) is that harvest's alone. The
parent writes a result file shaped like the Developer API's ``responsesFile`` (lines
``{"key": id, "response": GenerateContentResponse}``) with 2048x2048 PNGs (a noisy band makes
each image about half a megabyte, so the file grows by hundreds of MB between the sizes); the
child harvests it exactly as the operator does — ``Storage.iter_lines`` → ``Harvester`` →
validate (full decode) → ``OutputStore`` commit at the batch price — and reports peak RSS and
items per second. A reader that held the results would grow with the file; the ratio of the two
peaks must stay near 1 (fails above ``--max-ratio``).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
DISTINCT_IMAGES = 8


def _images(band: int) -> list[bytes]:
    from PIL import Image

    from airflow_banana.testing.render import render_image

    rng = random.Random(7)
    out = []
    for i in range(DISTINCT_IMAGES):
        with Image.open(io.BytesIO(render_image(f"seed-{i}", f"result {i}", 2048, 2048))) as base:
            img = base.convert("RGB")
        noise = Image.frombytes("RGB", (2048, band), rng.randbytes(2048 * band * 3))
        img.paste(noise, (0, 0))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def write_results(path: Path, n: int, images: list[bytes]) -> int:
    encoded = [base64.b64encode(b).decode("ascii") for b in images]
    with path.open("w", encoding="utf-8") as out:
        for i in range(n):
            response = {
                "candidates": [
                    {
                        "content": {
                            "role": "model",
                            "parts": [
                                {"text": "Here is the image you asked for."},
                                {"inlineData": {"mimeType": "image/png", "data": encoded[i % len(encoded)]}},
                            ],
                        },
                        "finishReason": "STOP",
                    }
                ],
                "usageMetadata": {
                    "promptTokenCount": 12,
                    "candidatesTokenCount": 1140,
                    "totalTokenCount": 1152,
                },
            }
            out.write(json.dumps({"key": f"item-{i}", "response": response}) + "\n")
    return path.stat().st_size


def child(n: int, results: str, out_dir: str) -> dict[str, Any]:
    """Harvest ``results`` into ``out_dir``; runs in its own process."""
    from airflow_banana.batch.results import Harvester
    from airflow_banana.channels.config import parse_channel
    from airflow_banana.models import ImageRequest
    from airflow_banana.storage.objects import open_storage
    from airflow_banana.storage.outputs import OutputStore

    config = parse_channel(
        "bench", host="http://127.0.0.1:1", password="bench-key", extra={"protocol": "gemini"}
    )
    requests = {f"item-{i}": ImageRequest(f"item-{i}", f"product {i}", "2K", "1:1") for i in range(n)}
    storage = open_storage(out_dir)
    harvester = Harvester(
        store=OutputStore(storage, out_dir), run_key="bench", requests=requests, config=config
    )
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    result = harvester.consume_text_lines(storage.iter_lines(results))
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "items": n,
        "stored": len(result.outcomes),
        "failed": len(result.failed),
        "seconds": round(elapsed, 3),
        "items_per_s": round(len(result.outcomes) / elapsed, 1) if elapsed else None,
        "baseline_rss_mb": round(baseline / 1024, 1),
        "peak_rss_mb": round(peak / 1024, 1),
    }


def run(sizes: list[int], band: int) -> dict[str, Any]:
    images = _images(band)
    rows = []
    with tempfile.TemporaryDirectory(prefix="banana-bench-rss-") as tmp:
        for n in sizes:
            results = Path(tmp) / f"results-{n}.jsonl"
            size = write_results(results, n, images)
            out_dir = Path(tmp) / f"out-{n}"
            proc = subprocess.run(
                [sys.executable, "-m", "bench.batch_rss", "--child", str(n), str(results), str(out_dir)],
                check=True,
                capture_output=True,
                text=True,
                cwd=str(ROOT),
            )
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["file_mb"] = round(size / 1e6, 1)
            rows.append(row)
            results.unlink()
    ratio = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    return {"rows": rows, "ratio": round(ratio, 3), "image_bytes": sum(map(len, images)) // len(images)}


def render(result: dict[str, Any]) -> str:
    lines = [
        "# Batch harvest: peak RSS vs number of 2K results",
        "",
        f"Average PNG size {result['image_bytes'] / 1e6:.2f} MB; each size harvested in its own process.",
        "",
        "| results | file MB | stored | failed | seconds | items/s | baseline RSS MB | peak RSS MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['items']} | {r['file_mb']} | {r['stored']} | {r['failed']} | {r['seconds']} | "
            f"{r['items_per_s']} | {r['baseline_rss_mb']} | {r['peak_rss_mb']} |"
        )
    lines += [
        "",
        f"Peak RSS ratio {result['rows'][-1]['items']} vs {result['rows'][0]['items']}: "
        f"**{result['ratio']}** (streaming keeps it near 1)",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench batch_rss", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--band", type=int, default=64, help="rows of noise per image (bigger = bigger PNGs)")
    parser.add_argument("--max-ratio", type=float, default=1.25)
    parser.add_argument("--child", nargs=3, metavar=("N", "RESULTS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1], args.child[2])))
        return 0
    result = run(sorted(args.sizes), args.band)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "batch_rss.json").write_text(json.dumps(result, indent=2) + "\n")
    text = render(result)
    (RESULTS / "batch_rss.md").write_text(text + "\n")
    print(text)
    if result["ratio"] > args.max_ratio:
        print(f"FAIL: peak RSS grew {result['ratio']}x from {args.sizes[0]} to {args.sizes[-1]} results")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
