"""Deterministic images for the simulator: real PNGs at Google's exact pixel sizes, quickly.

A gradient whose colours derive from a hash of the request, with the prompt drawn on it, so two
identical requests give byte-identical images and a human can see which prompt made which file.
Built from PIL primitives (no numpy) and PNG ``compress_level=1`` so a 4K image costs well under
a second; an LRU cache makes repeats free. Edits paint the new instruction over the parent image.
Whatever the text, at most :data:`MAX_TEXT_CHARS` of it reach the wrapper and the cache, so one
request with a megabyte-long word cannot hold a worker for long (``textwrap`` is quadratic on a
long word; an unbounded prompt once took over an hour) nor fill the cache with megabytes.
"""

from __future__ import annotations

import hashlib
import io
import textwrap
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

MAX_LINES = 12
# More than 12 lines of the widest image hold (6336 px at ~67 px a character); the rest is not drawn.
MAX_TEXT_CHARS = 2048


def _colour(digest: bytes, offset: int) -> tuple[int, int, int]:
    return digest[offset], digest[offset + 1], digest[offset + 2]


def _gradient(size: tuple[int, int], digest: bytes) -> Image.Image:
    """A diagonal-ish two-colour gradient: one 256x256 ramp per channel, resized once."""
    w, h = size
    start, end = _colour(digest, 0), _colour(digest, 3)
    ramp = Image.linear_gradient("L")
    if digest[6] & 1:
        ramp = ramp.rotate(90)
    bands = [ramp.point(lambda v, a=a, b=b: a + (b - a) * v // 255) for a, b in zip(start, end, strict=True)]
    small = Image.merge("RGB", bands)
    return small.resize((w, h), Image.Resampling.BILINEAR)


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except Exception:  # pillow without FreeType: the bitmap font still marks the image
        return ImageFont.load_default()


def _draw_text(img: Image.Image, text: str, *, band: bool) -> None:
    w, h = img.size
    size = max(12, min(w, h) // 24)
    font = _font(size)
    width = max(10, int(w / (size * 0.6)))
    lines = textwrap.wrap(text[: width * MAX_LINES], width=width)[:MAX_LINES] or [""]
    draw = ImageDraw.Draw(img)
    top = h // 10
    if band:
        # Edits get a dark band so the new instruction is readable over any parent image.
        draw.rectangle(
            (0, top - size // 2, w, top + int(len(lines) * size * 1.3) + size // 2), fill=(20, 20, 20)
        )
    for i, line in enumerate(lines):
        draw.text((w // 20, top + int(i * size * 1.3)), line, fill=(255, 255, 255), font=font)


def _encode(img: Image.Image, fmt: str, text_chunks: tuple[tuple[str, str], ...]) -> bytes:
    buf = io.BytesIO()
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        for k, v in text_chunks:
            info.add_text(k, v)
        img.save(buf, format="PNG", compress_level=1, pnginfo=info)
    else:
        img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def render_image(
    seed: str,
    text: str,
    width: int,
    height: int,
    *,
    fmt: str = "PNG",
    chunks: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """PNG (or JPEG) bytes of ``width`` x ``height``, deterministic in every argument."""
    return _render_image(seed, text[:MAX_TEXT_CHARS], width, height, fmt=fmt, chunks=chunks)


@lru_cache(maxsize=64)
def _render_image(
    seed: str,
    text: str,
    width: int,
    height: int,
    *,
    fmt: str,
    chunks: tuple[tuple[str, str], ...],
) -> bytes:
    digest = hashlib.sha256(seed.encode()).digest()
    img = _gradient((width, height), digest)
    _draw_text(img, text, band=False)
    return _encode(img, fmt, chunks)


def render_edit(
    parent: bytes,
    text: str,
    width: int,
    height: int,
    *,
    fmt: str = "PNG",
    chunks: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """The parent image resized to the requested size with ``text`` painted over it."""
    return _render_edit(parent, text[:MAX_TEXT_CHARS], width, height, fmt=fmt, chunks=chunks)


@lru_cache(maxsize=32)
def _render_edit(
    parent: bytes,
    text: str,
    width: int,
    height: int,
    *,
    fmt: str,
    chunks: tuple[tuple[str, str], ...],
) -> bytes:
    with Image.open(io.BytesIO(parent)) as src:
        img = src.convert("RGB")
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    _draw_text(img, text, band=True)
    return _encode(img, fmt, chunks)


def png_text(data: bytes) -> dict[str, str]:
    """The tEXt chunks of a PNG (tests read ``sim:fingerprint`` / ``sim:parent_sha256``)."""
    with Image.open(io.BytesIO(data)) as img:
        return {str(k): str(v) for k, v in getattr(img, "text", {}).items()}
