"""The gallery of a real realtime run (simulator, three channels), opened in headless Chromium.

The run has a failed item (the simulator blocks its prompt), a quarantined manifest line and a
prompt that tries HTML injection. The page must load without a console message, show one card
per item and per reject, filter by state and channel through the URL hash, sort by cost, and
a screenshot is kept under .test-artifacts/.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import headless
import pytest
from realtime_sim import FAST_ROUTER, KEYS, PROTOCOLS, RELAY, RELAY_PRICES

from airflow_banana.testing import FaultProfile
from airflow_banana.testing.connections import channel_connection, conn_env_var

pytestmark = pytest.mark.integration
INJECTION = "</script><img src=x onerror=console.error('injected')> a <b>bold</b> lamp"
ROWS: list[Any] = [
    {"id": "lamp-1", "prompt": INJECTION},
    {"id": "chair-2", "prompt": "an oak chair on white [sim:blocked]"},
    {"id": "mug-3", "prompt": "a blue mug, studio light", "aspect_ratio": "4:3"},
    {"id": "desk-4", "prompt": "a standing desk", "aspect_ratio": "16:9"},
    {"id": "sofa-5", "prompt": "a green sofa", "image_size": "8K"},  # quarantined: no such size
]


class _TI:
    dag_id = "gallery_dag"
    task_id = "generate"
    run_id = "manual__gallery"
    map_index = -1


def _cards(dom: str) -> list[str]:
    return re.findall(r"<article [^>]*>", dom)


def _attr(card: str, name: str) -> str:
    match = re.search(rf'{name}="([^"]*)"', card)
    assert match, card
    return match.group(1)


def _visible(dom: str) -> list[str]:
    return [_attr(c, "data-id") for c in _cards(dom) if " hidden" not in c]


def _run(sim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], Any]:
    from airflow_banana.operators import RealtimeImageOperator

    sim.set_faults(KEYS[RELAY], FaultProfile(name="relay", overload_rate=0.3))
    ids = []
    for name in ("relay", "gemini"):
        conn_id = f"banana_gallery_{name}"
        prices = RELAY_PRICES if PROTOCOLS[name] == "openai" else None
        monkeypatch.setenv(
            conn_env_var(conn_id),
            channel_connection(sim.base_url, protocol=PROTOCOLS[name], key=KEYS[name], prices=prices),
        )
        ids.append(conn_id)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    op = RealtimeImageOperator(
        task_id="generate",
        manifest=str(manifest),
        output_prefix=str(tmp_path / "out"),
        channels=ids,
        on_invalid="quarantine",
        max_failed_items=1,
        router_options={**FAST_ROUTER},
    )
    context = {"ti": _TI(), "run_id": _TI.run_id, "logical_date": datetime.now(UTC)}
    return op.execute(context), op  # type: ignore[arg-type]


def test_gallery_of_a_real_run_loads_cleanly_filters_sorts_and_is_screenshotted(sim, tmp_path, monkeypatch):
    from airflow_banana.operators.publish import GalleryLink

    summary, op = _run(sim, tmp_path, monkeypatch)
    run_dir = tmp_path / "out" / "runs" / "gallery_dag__generate__manual__gallery"
    gallery = run_dir / "gallery.html"
    assert summary["gallery_uri"] == str(gallery) and (run_dir / "report.md").exists()
    url = GalleryLink().get_link(op, ti_key=None)  # type: ignore[arg-type]
    assert url == gallery.resolve().as_uri()
    html = gallery.read_text()
    assert "<img src=x" not in html and "<b>bold</b>" not in html  # escaped, not markup
    assert "&lt;img src=x onerror=" in html
    assert len(html) < 200_000  # thumbnails, not the images (each stored PNG alone is larger)

    page = headless.load(url)
    assert page.console == []  # no error, no CSP violation, the injected handler never ran
    cards = _cards(page.dom)
    assert sorted(_attr(c, "data-id") for c in cards) == sorted(r["id"] for r in ROWS)
    states = {_attr(c, "data-id"): _attr(c, "data-state") for c in cards}
    assert states == {
        "lamp-1": "succeeded",
        "chair-2": "failed",
        "mug-3": "succeeded",
        "desk-4": "succeeded",
        "sofa-5": "rejected",
    }
    problems = {_attr(c, "data-id") for c in cards if 'class="card problem"' in c}
    assert problems == {"chair-2", "sofa-5"}
    assert page.dom.count('src="data:image/jpeg;base64,') == 3  # a thumbnail per image
    assert 'id="spend-chart"' in page.dom and "banana_gallery_gemini" in page.dom
    assert len(_visible(page.dom)) == len(ROWS) and f"{len(ROWS)} of {len(ROWS)} shown" in page.dom

    failed = headless.load(url + "#state=problem")
    assert failed.console == [] and sorted(_visible(failed.dom)) == ["chair-2", "sofa-5"]
    assert "2 of 5 shown" in failed.dom
    channel = {_attr(c, "data-id"): _attr(c, "data-channel") for c in cards}
    some = next(ch for ch in channel.values() if ch)
    by_channel = headless.load(url + f"#channel={some}")
    assert sorted(_visible(by_channel.dom)) == sorted(i for i, ch in channel.items() if ch == some)
    by_cost = headless.load(url + "#sort=cost")
    costs = [float(_attr(c, "data-cost")) for c in _cards(by_cost.dom)]
    assert costs == sorted(costs, reverse=True) and costs[0] > 0

    shot = headless.screenshot(url, "gallery-realtime.png")
    assert shot.stat().st_size > 10_000


def test_the_console_check_catches_a_page_error(tmp_path):
    """The guard above can fail: a page that logs or throws is reported."""
    page = tmp_path / "broken.html"
    page.write_text(
        "<html><body><script>console.error('bad'); throw new Error('boom');</script></body></html>"
    )
    loaded = headless.load(page.as_uri())
    assert any("bad" in m for m in loaded.console) and any("boom" in m for m in loaded.console)
