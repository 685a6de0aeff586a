"""A run's gallery: one self-contained HTML page next to report.md, for review by eye.

People check a generated catalog by looking at it. ``runs/{run_key}/gallery.html`` shows every
item of the run as a card (small thumbnail, id, prompt, size, channel, model, attempts, cost,
state), failures and manifest rejects highlighted, filterable by state and channel and sortable,
with the run's cost summary and a chart of spend per channel.

Self-contained and inert on purpose: thumbnails are small JPEG ``data:`` URIs (never the full
images), the script and styles are inline, and the page's Content-Security-Policy forbids every
fetch, so it opens the same from a bucket, a laptop or an artifact store. Prompts are user text:
every value is HTML-escaped and the script reads only ``data-`` attributes and never writes HTML.

``render_gallery`` is pure; ``write_gallery`` does the I/O (reads each stored image once, in a
few threads) and never fails a run whose images and report are already written.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow_banana.exceptions import BananaError
from airflow_banana.imaging import thumbnail_jpeg
from airflow_banana.storage.report import FAILED, NOT_ATTEMPTED, ItemOutcome

if TYPE_CHECKING:
    from airflow_banana.models import ImageRequest
    from airflow_banana.storage.outputs import OutputStore

log = logging.getLogger(__name__)

GALLERY_NAME = "gallery.html"
REJECTED = "rejected"  # a manifest line quarantined before any spend (rejects.jsonl)
PROBLEM_STATES = frozenset({FAILED, NOT_ATTEMPTED, REJECTED})
THUMBNAIL_PX = 160
# Past this many thumbnails the page would weigh megabytes; later cards show their image's URI.
MAX_THUMBNAILS = 2000
_READERS = 8


@dataclass(frozen=True)
class GalleryItem:
    """One card: what a reviewer needs to judge an item without opening its metadata."""

    item_id: str
    prompt: str
    state: str
    image_size: str = ""
    aspect_ratio: str = ""
    channel: str | None = None
    model: str | None = None
    attempts: tuple[tuple[str, str], ...] = ()  # (channel, outcome) in call order
    policy: str = ""  # "official_only", "google_search", both, or "" (no channel restriction)
    cost_usd: float = 0.0
    reason: str = ""
    image_uri: str | None = None
    thumbnail: str | None = None  # a data: URI

    @property
    def problem(self) -> bool:
        return self.state in PROBLEM_STATES


def gallery_items(
    outcomes: Iterable[ItemOutcome],
    requests: Mapping[str, ImageRequest],
    *,
    rejects_jsonl: str = "",
) -> list[GalleryItem]:
    """Cards in run order from the lane's outcomes, then one per quarantined manifest line."""
    items = []
    for o in outcomes:
        request = requests.get(o.item_id)
        items.append(
            GalleryItem(
                item_id=o.item_id,
                prompt=request.prompt if request else "",
                state=o.status,
                image_size=o.image_size,
                aspect_ratio=request.aspect_ratio if request else "",
                # the channel that made the image, else the last one tried (so filters find failures)
                channel=o.channel or (o.attempts[-1].channel if o.attempts else None),
                model=o.model or (request.model if request else None),
                attempts=tuple((a.channel, a.outcome) for a in o.attempts),
                policy=_policy_of(request),
                cost_usd=o.cost_usd,
                reason=o.reason,
                image_uri=o.image_uri,
            )
        )
    for n, line in enumerate(rejects_jsonl.splitlines(), start=1):
        if not line.strip():
            continue
        reject = json.loads(line)
        raw = reject.get("raw") or ""
        items.append(
            GalleryItem(
                item_id=reject.get("item_id") or f"line {reject.get('line', n)}",
                prompt=_prompt_of(raw),
                state=REJECTED,
                reason=f"manifest line {reject.get('line', n)}: {reject.get('reason', '')}",
            )
        )
    return items


def _policy_of(request: ImageRequest | None) -> str:
    """The card's policy line: what narrowed the item's channels (official only, grounding)."""
    if request is None:
        return ""
    parts = ["official_only"] if request.official_only else []
    parts += [request.grounding] if request.grounding else []
    return ", ".join(parts)


def _prompt_of(raw: str) -> str:
    """The prompt of a rejected line when it still parses, else the raw line (both escaped later)."""
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    if isinstance(value, dict) and isinstance(value.get("prompt"), str):
        return value["prompt"]
    return raw


def with_thumbnails(
    items: Sequence[GalleryItem], read: Any, *, limit: int = MAX_THUMBNAILS
) -> list[GalleryItem]:
    """``items`` with a thumbnail for each stored image (the first ``limit``); ``read(uri) -> bytes``.

    An image that cannot be read or decoded keeps its card without a thumbnail: the page is a
    review aid and must not hide the rest of the run.
    """
    wanted = [i for i, item in enumerate(items) if item.image_uri][: max(0, limit)]

    def thumb(index: int) -> str | None:
        uri = items[index].image_uri
        assert uri is not None
        try:
            data = thumbnail_jpeg(read(uri), max_px=THUMBNAIL_PX)
        except BananaError as err:
            log.warning(
                "gallery: item '%s': no thumbnail (%s); its card shows the URI", items[index].item_id, err
            )
            return None
        return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")

    with ThreadPoolExecutor(max_workers=_READERS) as pool:
        thumbs = dict(zip(wanted, pool.map(thumb, wanted), strict=True))
    return [item if i not in thumbs else replace(item, thumbnail=thumbs[i]) for i, item in enumerate(items)]


def write_gallery(
    store: OutputStore,
    run_key: str,
    report: Mapping[str, Any],
    outcomes: Iterable[ItemOutcome],
    requests: Iterable[ImageRequest],
    *,
    rejects_jsonl: str = "",
) -> str | None:
    """Write ``runs/{run_key}/gallery.html``; its URI, or None when it could not be written.

    Runs after the report is written, so a storage failure here is logged and the task goes on:
    the images, metadata and report.md already hold every fact the page shows.
    """
    uri = store.run_uri(run_key, GALLERY_NAME)
    try:
        items = gallery_items(outcomes, {r.item_id: r for r in requests}, rejects_jsonl=rejects_jsonl)
        items = with_thumbnails(items, store.storage.read_bytes)
        store.storage.write_text(uri, render_gallery(report, items), content_type="text/html; charset=utf-8")
    except BananaError as err:
        log.warning("run %s: gallery not written (%s); report.md has the same facts", run_key, err)
        return None
    log.info("gallery: %s", uri)
    return uri


def browser_url(uri: str) -> str:
    """Where a person opens ``uri``: a ``gs://`` object's authenticated URL, a local file's URL.

    ``https://storage.cloud.google.com/...`` is the console's "Authenticated URL": it opens for
    anyone with read access to the object and carries no credential. A signed URL would be a
    bearer token stored in XCom for days, so the link never is one.
    """
    if uri.startswith("gs://"):
        bucket, _, name = uri[len("gs://") :].partition("/")
        return f"https://storage.cloud.google.com/{quote(bucket)}/{quote(name)}"
    if uri.startswith("file://"):
        return uri
    return Path(uri).resolve().as_uri()


# --------------------------------------------------------------------------------- rendering

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _money(value: float | None) -> str:
    return "–" if value is None else f"${value:,.4f}"


def render_gallery(report: Mapping[str, Any], items: Sequence[GalleryItem]) -> str:
    """The whole page as one string; every report and item value is escaped."""
    states = sorted({i.state for i in items})
    channels = sorted({i.channel for i in items if i.channel})
    problems = sum(1 for i in items if i.problem)
    state_options = "".join(f'<option value="{_e(s)}">{_e(s)}</option>' for s in states)
    channel_options = "".join(f'<option value="{_e(c)}">{_e(c)}</option>' for c in channels)
    title = f"Run {report.get('run_key', '')} ({report.get('lane', '')})"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)} – gallery</title>
<style>{_STYLE}</style>
</head>
<body>
<header>
<h1>{_e(title)}</h1>
<p class="meta">Manifest <code>{_e(report.get("manifest") or "–")}</code> · output
<code>{_e(report.get("output_prefix") or "–")}</code> · started {_e(report.get("started_at"))},
finished {_e(report.get("finished_at"))}</p>
</header>
<section class="summary">
{_summary(report, problems)}
{_spend_chart(report)}
</section>
<nav class="controls">
<label>State <select id="f-state"><option value="">all</option>
<option value="problem">needs a look ({problems})</option>{state_options}</select></label>
<label>Channel <select id="f-channel"><option value="">all</option>{channel_options}</select></label>
<label>Sort <select id="f-sort"><option value="order">run order</option><option value="id">item id</option>
<option value="cost">cost, highest first</option><option value="attempts">attempts, most first</option>
<option value="state">state</option></select></label>
<span id="shown" aria-live="polite">{len(items)} of {len(items)} shown</span>
</nav>
<main id="cards">
{"".join(_card(n, item) for n, item in enumerate(items))}
</main>
<script>{_SCRIPT}</script>
</body>
</html>
"""


def _summary(report: Mapping[str, Any], problems: int) -> str:
    items = report.get("items", {})
    cost = report.get("cost", {})
    calls = report.get("calls", {})
    budget = cost.get("budget_usd")
    rows = [
        (
            "Items",
            f"{items.get('total', 0)} ({items.get('succeeded', 0)} generated, "
            f"{items.get('skipped', 0)} already done)",
        ),
        (
            "Need a look",
            f"{problems} ({items.get('failed', 0)} failed, {items.get('not_attempted', 0)} "
            f"not attempted, {items.get('rejected_in_manifest', 0)} rejected in the manifest)",
        ),
        (
            "Spent",
            _money(cost.get("spent_usd")) + (f" of a {_money(budget)} budget" if budget is not None else ""),
        ),
        ("Per successful image", _money(cost.get("cost_per_success_usd"))),
        (
            "Google direct list price",
            f"{_money(cost.get('google_direct_list_usd'))} "
            f"(saved {_money(cost.get('savings_vs_direct_usd'))})",
        ),
        ("Calls", f"{calls.get('total', 0)}, failovers {calls.get('failovers', 0)}"),
    ]
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<table class="cost" id="cost-summary">{body}</table>'


def _spend_chart(report: Mapping[str, Any]) -> str:
    """Horizontal bars of spend per channel, as inline SVG (no chart library, nothing fetched)."""
    spend = sorted(
        ((name, float(ch.get("spend_usd") or 0.0)) for name, ch in (report.get("channels") or {}).items()),
        key=lambda pair: (-pair[1], pair[0]),
    )
    if not spend:
        return '<p class="chart-empty">No channel was called in this run.</p>'
    top = max(v for _, v in spend) or 1.0
    label_w, bar_w, row_h = 150, 260, 22
    height = row_h * len(spend) + 24
    rows = []
    for n, (name, value) in enumerate(spend):
        y = 20 + n * row_h
        w = max(1.0, bar_w * value / top) if value else 0.0
        rows.append(
            f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">{_e(name)}</text>'
            f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{row_h - 6}" rx="2"></rect>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + 14}">{_e(_money(value))}</text>'
        )
    return (
        f'<svg id="spend-chart" role="img" aria-label="Spend per channel" width="{label_w + bar_w + 90}" '
        f'height="{height}" viewBox="0 0 {label_w + bar_w + 90} {height}">'
        f'<text x="0" y="12" class="chart-title">Spend per channel</text>{"".join(rows)}</svg>'
    )


def _card(order: int, item: GalleryItem) -> str:
    if item.thumbnail:
        picture = f'<img src="{_e(item.thumbnail)}" alt="{_e(item.item_id)}" loading="lazy">'
    elif item.image_uri:
        picture = f'<div class="noimg">image at<br><code>{_e(item.image_uri)}</code></div>'
    else:
        picture = f'<div class="noimg">{_e(item.state.replace("_", " "))}</div>'
    trail = " → ".join(f"{c}: {o}" for c, o in item.attempts)
    size = " · ".join(v for v in (item.image_size, item.aspect_ratio) if v)
    reason = f'<p class="reason">{_e(item.reason)}</p>' if item.problem and item.reason else ""
    return (
        f'<article class="card{" problem" if item.problem else ""}" data-order="{order}" '
        f'data-id="{_e(item.item_id)}" data-state="{_e(item.state)}" data-channel="{_e(item.channel or "")}" '
        f'data-cost="{item.cost_usd:.6f}" data-attempts="{len(item.attempts)}" '
        f'data-problem="{1 if item.problem else 0}">'
        f'<div class="pic">{picture}</div>'
        f'<h2 title="{_e(item.item_id)}">{_e(item.item_id)}</h2>'
        f'<span class="state s-{_e(item.state)}">{_e(item.state.replace("_", " "))}</span>'
        f'<p class="prompt" title="{_e(item.prompt)}">{_e(item.prompt)}</p>'
        f"<dl><dt>size</dt><dd>{_e(size or '–')}</dd>"
        f'<dt>channel</dt><dd title="{_e(item.channel)}">{_e(item.channel or "–")}</dd>'
        f'<dt>model</dt><dd title="{_e(item.model)}">{_e(item.model or "–")}</dd>'
        f'<dt>attempts</dt><dd title="{_e(trail)}">{len(item.attempts)}</dd>'
        f"<dt>policy</dt><dd>{_e(item.policy or 'any channel')}</dd>"
        f"<dt>cost</dt><dd>{_e(_money(item.cost_usd))}</dd></dl>{reason}</article>\n"
    )


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 1.5rem 2rem;color:#1d1d1f;background:#fafaf7}
h1{font-size:1.3rem;margin:1rem 0 .2rem}.meta{color:#555;margin:0 0 1rem}code{font-size:.85em}
.summary{display:flex;flex-wrap:wrap;gap:2rem;align-items:flex-start;margin-bottom:1rem}
table.cost th{text-align:left;padding-right:1rem;font-weight:600;color:#444}
#spend-chart text{font-size:12px;fill:#333}#spend-chart rect{fill:#e0b400}
#spend-chart .chart-title{font-weight:600}
.controls{display:flex;gap:1.2rem;align-items:center;padding:.6rem 0;border-top:1px solid #ddd;
border-bottom:1px solid #ddd;margin-bottom:1rem;position:sticky;top:0;background:#fafaf7}
#cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:12px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;overflow:hidden}
.card[hidden]{display:none}.card.problem{border:2px solid #c62828;background:#fff5f5}
.pic{height:160px;display:flex;align-items:center;justify-content:center;background:#f0f0ec}
.pic img{max-width:100%;max-height:160px}
.noimg{color:#a33;font-weight:600;text-align:center;font-size:.85em;word-break:break-all}
.card h2{font-size:.95rem;margin:.4rem 0 .1rem;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.state{display:inline-block;font-size:.75rem;padding:0 .4rem;border-radius:3px;background:#e8f5e9}
.s-failed,.s-not_attempted,.s-rejected{background:#c62828;color:#fff}.s-skipped{background:#e3f2fd}
.prompt{display:-webkit-box;-webkit-line-clamp:3;-webkit-box-orient:vertical;overflow:hidden;
margin:.3rem 0;color:#333}
dl{display:grid;grid-template-columns:auto 1fr;gap:0 .6rem;margin:0;font-size:.8rem}
dt{color:#777}dd{margin:0;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.reason{color:#a00;font-size:.8rem;margin:.3rem 0 0;word-break:break-word}
"""

# Filters hide cards (the hidden attribute), sorting re-appends them; the URL hash
# (#state=failed&channel=x&sort=cost) sets the controls, so a filtered view can be shared.
_SCRIPT = """
(function () {
  "use strict";
  var grid = document.getElementById("cards");
  var cards = Array.prototype.slice.call(grid.querySelectorAll(".card"));
  var state = document.getElementById("f-state");
  var channel = document.getElementById("f-channel");
  var sort = document.getElementById("f-sort");
  var shown = document.getElementById("shown");
  var numeric = {order: "order", cost: "cost", attempts: "attempts"};
  function pick(select, value) {
    for (var i = 0; i < select.options.length; i++) {
      if (select.options[i].value === value) { select.value = value; return; }
    }
  }
  function fromHash() {
    var params = new URLSearchParams(window.location.hash.slice(1));
    pick(state, params.get("state") || "");
    pick(channel, params.get("channel") || "");
    pick(sort, params.get("sort") || "order");
  }
  function matches(card) {
    var s = state.value;
    var stateOk = s === "" || (s === "problem" ? card.dataset.problem === "1" : card.dataset.state === s);
    return stateOk && (channel.value === "" || card.dataset.channel === channel.value);
  }
  function compare(by) {
    return function (a, b) {
      if (numeric[by]) {
        var d = parseFloat(a.dataset[by]) - parseFloat(b.dataset[by]);
        if (by !== "order") { d = -d; }
        return d || parseFloat(a.dataset.order) - parseFloat(b.dataset.order);
      }
      var x = a.dataset[by], y = b.dataset[by];
      return x < y ? -1 : x > y ? 1 : parseFloat(a.dataset.order) - parseFloat(b.dataset.order);
    };
  }
  function apply() {
    var n = 0;
    cards.forEach(function (card) {
      var ok = matches(card);
      card.hidden = !ok;
      if (ok) { n += 1; }
    });
    cards.slice().sort(compare(sort.value)).forEach(function (card) { grid.appendChild(card); });
    shown.textContent = n + " of " + cards.length + " shown";
  }
  [state, channel, sort].forEach(function (el) { el.addEventListener("change", apply); });
  window.addEventListener("hashchange", function () { fromHash(); apply(); });
  fromHash();
  apply();
})();
"""
