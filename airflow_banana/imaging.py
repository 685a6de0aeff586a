"""Image checks: sniff the true type from magic bytes and read pixel sizes.

Channels have declared ``image/png`` over JPEG bytes (FAULTS.md R12), so nothing downstream
trusts a declared MIME type.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from airflow_banana.exceptions import ImageValidationError

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"RIFF", "image/webp"),  # confirmed below by the WEBP tag
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


def sniff_mime(data: bytes) -> str | None:
    """The MIME type the bytes really are, or None when they are no image we know."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            if mime == "image/webp" and data[8:12] != b"WEBP":
                continue
            return mime
    return None


@dataclass(frozen=True)
class ImageInfo:
    mime_type: str
    width: int
    height: int

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.mime_type]


def inspect_image(data: bytes) -> ImageInfo:
    """Decode ``data`` fully and return its true type and size; raise if it is not an image."""
    from PIL import Image  # pillow is heavy-ish; keep package import cheap

    mime = sniff_mime(data)
    if mime is None:
        raise ImageValidationError(f"bytes are not a known image type (starts with {data[:8]!r})")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # a truncated image fails here, not at open()
            width, height = img.size
    except Exception as err:
        raise ImageValidationError(f"{mime} bytes do not decode: {err}") from err
    return ImageInfo(mime_type=mime, width=width, height=height)


def thumbnail_jpeg(data: bytes, *, max_px: int = 160, quality: int = 70) -> bytes:
    """A small JPEG of ``data`` (longest side ``max_px``) for pages that show many images.

    JPEG sources are decoded at a reduced scale (``draft``), so a 4K image costs little memory.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (max_px, max_px))
            small = img.convert("RGB")
            small.thumbnail((max_px, max_px))
            out = io.BytesIO()
            small.save(out, format="JPEG", quality=quality, optimize=True)
    except Exception as err:
        raise ImageValidationError(f"image bytes do not decode for a thumbnail: {err}") from err
    return out.getvalue()
