"""The gallery page as text: escaping, inertness, thumbnails, cards, chart, links (pure parts)."""

from __future__ import annotations

import base64
import io
import json
import random
import re

import pytest
from PIL import Image

from airflow_banana.exceptions import ObjectNotFoundError
from airflow_banana.imaging import thumbnail_jpeg
from airflow_banana.models import ImageRequest
from airflow_banana.storage.gallery import (
    GalleryItem,
    browser_url,
    gallery_items,
    render_gallery,
    with_thumbnails,
)
from airflow_banana.storage.report import Attempt, ItemOutcome, build_report

EVIL = '"><script>alert(1)</script><img src=x onerror=alert(2)>'


def _png(width: int, height: int) -> bytes:
    rng = random.Random(7)
    img = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def _report(outcomes: list[ItemOutcome]) -> dict:
    return build_report(
        outcomes,
        run_key=f"run{EVIL}",
        lane="realtime",
        started_at="2026-01-01T00:00:00+00:00",
        finished_at="2026-01-01T00:01:00+00:00",
        manifest=f"gs://b/{EVIL}.jsonl",
        output_prefix="gs://b/out",
        rejects=1,
    )


def _outcomes() -> list[ItemOutcome]:
    return [
        ItemOutcome(
            "ok-1",
            "succeeded",
            "1K",
            attempts=[Attempt(f"relay{EVIL}", "overloaded", 1.0), Attempt("gemini", "success", 2.0, 0.134)],
            channel="gemini",
            cost_usd=0.134,
            image_uri="mem://ok-1.png",
        ),
        ItemOutcome(
            f"bad{EVIL}",
            "failed",
            "2K",
            attempts=[Attempt(f"relay{EVIL}", "item_terminal", 1.0)],
            reason=f"refused {EVIL}",
        ),
    ]


def _requests() -> dict[str, ImageRequest]:
    return {
        "ok-1": ImageRequest("ok-1", f"a lamp {EVIL}", aspect_ratio="4:3"),
        f"bad{EVIL}": ImageRequest(f"bad{EVIL}", "a chair"),
    }


REJECTS = json.dumps({"line": 3, "raw": json.dumps({"id": "x", "prompt": f"p {EVIL}"}), "reason": "bad size"})


def test_every_user_value_is_escaped_and_the_page_fetches_nothing():
    outcomes = _outcomes()
    page = render_gallery(_report(outcomes), gallery_items(outcomes, _requests(), rejects_jsonl=REJECTS))

    assert page.count("<script>") == 1 and "alert(" in page  # only our script; the text stays text
    assert "<img src=x" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert EVIL not in page  # nowhere unescaped: not in text, not in an attribute
    assert "default-src 'none'; img-src data:" in page  # CSP: no fetch of any kind
    assert not re.search(r"https?://", page)
    cards = re.findall(r"<article [^>]*>", page)
    assert len(cards) == 3  # two outcomes and the reject
    assert sum('class="card problem"' in c for c in cards) == 2
    assert 'data-state="rejected"' in page and "manifest line 3: bad size" in page


def test_failed_items_carry_the_channel_they_last_tried_and_the_chart_has_every_channel():
    outcomes = _outcomes()
    items = gallery_items(outcomes, _requests())
    assert items[1].channel == f"relay{EVIL}" and items[1].problem
    assert items[0].attempts == ((f"relay{EVIL}", "overloaded"), ("gemini", "success"))
    page = render_gallery(_report(outcomes), items)
    chart = page[page.index('<svg id="spend-chart"') : page.index("</svg>")]
    widths = [float(w) for w in re.findall(r'<rect [^>]*width="([0-9.]+)"', chart)]
    assert len(widths) == 2 and max(widths) == 260.0  # the top spender fills the bar
    assert "$0.1340" in chart and "relay&quot;&gt;&lt;script&gt;" in chart


def test_a_run_without_calls_says_so_instead_of_an_empty_chart():
    page = render_gallery(_report([]), [])
    assert "No channel was called" in page and "<svg" not in page and "0 of 0 shown" in page


def test_thumbnails_are_small_jpegs_and_a_missing_image_keeps_its_card():
    big = _png(1024, 1024)
    data = thumbnail_jpeg(big)
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "JPEG" and max(img.size) == 160
    assert len(data) < 20_000 < len(big)

    items = [
        GalleryItem("a", "p", "succeeded", image_uri="mem://a"),
        GalleryItem("b", "p", "succeeded", image_uri="mem://missing"),
        GalleryItem("c", "p", "failed"),
    ]

    def read(uri: str) -> bytes:
        if uri == "mem://a":
            return big
        raise ObjectNotFoundError(f"{uri} does not exist")

    out = with_thumbnails(items, read)
    assert out[0].thumbnail and out[0].thumbnail.startswith("data:image/jpeg;base64,")
    assert base64.b64decode(out[0].thumbnail.split(",", 1)[1]) == data
    assert out[1].thumbnail is None and out[2].thumbnail is None
    page = render_gallery(_report([]), out)
    assert "image at<br><code>mem://missing</code>" in page
    assert with_thumbnails(items, read, limit=0)[0].thumbnail is None  # the cap


def test_a_non_image_is_refused_by_the_thumbnailer():
    from airflow_banana.exceptions import ImageValidationError

    with pytest.raises(ImageValidationError, match="thumbnail"):
        thumbnail_jpeg(b"not an image")


def test_browser_url_of_gs_and_local_galleries(tmp_path):
    assert (
        browser_url("gs://bucket/out/runs/k y/gallery.html")
        == "https://storage.cloud.google.com/bucket/out/runs/k%20y/gallery.html"
    )
    assert browser_url(str(tmp_path / "gallery.html")) == (tmp_path / "gallery.html").resolve().as_uri()
    assert browser_url("file:///x/gallery.html") == "file:///x/gallery.html"
