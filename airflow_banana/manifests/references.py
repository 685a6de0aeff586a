"""Load and check an item's reference images before any money is spent (FAULTS.md S3).

A missing object, bytes that are not an image Gemini accepts, or an image too big to send inline
would otherwise fail at Google -- after planning, possibly after paying for other attempts -- so
the item is rejected here with the reason, naming the item and the URI.

Limits: Gemini takes inline data up to about 20 MB per request, and inline bytes travel base64
encoded (4/3 larger), so the default total of 14 MiB of raw image bytes leaves room for the
prompt and the JSON around it. 7 MiB per image is Google's documented per-file inline limit.
"""

from __future__ import annotations

from airflow_banana.exceptions import (
    ImageValidationError,
    ObjectNotFoundError,
    ReferenceImageError,
)
from airflow_banana.imaging import inspect_image, sniff_mime
from airflow_banana.manifests.model import ManifestItem
from airflow_banana.models import MAX_REFERENCE_IMAGES, ReferenceImage
from airflow_banana.storage import Storage

DEFAULT_MAX_BYTES = 7 * 1024 * 1024
DEFAULT_MAX_TOTAL_BYTES = 14 * 1024 * 1024
# What Gemini accepts as image input; GIF is sniffed by imaging but not accepted by the API.
ACCEPTED_MIME_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})


def load_reference_images(
    item: ManifestItem,
    storage: Storage,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
) -> tuple[ReferenceImage, ...]:
    """The item's reference images, read and fully decoded, in manifest order.

    Raises :class:`ReferenceImageError` (item and URI named) for a missing object, a size over
    ``max_bytes`` (checked before downloading), a running total over ``max_total_bytes``, or
    bytes that are not a decodable PNG/JPEG/WebP. Other storage failures propagate as
    :class:`StorageError` and are safe to retry.
    """
    if len(item.reference_images) > MAX_REFERENCE_IMAGES:
        raise ReferenceImageError(
            f"{len(item.reference_images)} reference images, Google accepts at most "
            f"{MAX_REFERENCE_IMAGES}; the item is rejected before any spend",
            item_id=item.id,
            uri=item.reference_images[MAX_REFERENCE_IMAGES],
        )
    loaded: list[ReferenceImage] = []
    total = 0
    for uri in item.reference_images:
        data = _read_checked(item, uri, storage, max_bytes)
        total += len(data)
        if total > max_total_bytes:
            raise ReferenceImageError(
                f"reference images add up to {total} bytes, over the {max_total_bytes}-byte total "
                "that fits in one inline request; the item is rejected before any spend",
                item_id=item.id,
                uri=uri,
            )
        mime = sniff_mime(data)
        if mime is None:
            raise ReferenceImageError(
                f"not an image (starts with {data[:8]!r}); the item is rejected before any spend",
                item_id=item.id,
                uri=uri,
            )
        if mime not in ACCEPTED_MIME_TYPES:
            raise ReferenceImageError(
                f"{mime} is not accepted by Gemini (use PNG, JPEG or WebP); "
                "the item is rejected before any spend",
                item_id=item.id,
                uri=uri,
            )
        try:
            inspect_image(data)
        except ImageValidationError as err:
            raise ReferenceImageError(
                f"the image does not decode ({err}); the item is rejected before any spend",
                item_id=item.id,
                uri=uri,
            ) from err
        loaded.append(ReferenceImage(data=data, mime_type=mime, uri=uri))
    return tuple(loaded)


def _read_checked(item: ManifestItem, uri: str, storage: Storage, max_bytes: int) -> bytes:
    found = storage.stat(uri)
    if found is None:
        raise ReferenceImageError(
            "the object does not exist; the item is rejected before any spend", item_id=item.id, uri=uri
        )
    if found.size > max_bytes:
        raise ReferenceImageError(
            f"{found.size} bytes is over the {max_bytes}-byte limit for one inline image; "
            "the item is rejected before any spend",
            item_id=item.id,
            uri=uri,
        )
    try:
        data = storage.read_bytes(uri)
    except ObjectNotFoundError as err:
        raise ReferenceImageError(
            "the object vanished while being read; the item is rejected before any spend",
            item_id=item.id,
            uri=uri,
        ) from err
    if len(data) > max_bytes:  # it was replaced by something bigger between stat and read
        raise ReferenceImageError(
            f"{len(data)} bytes is over the {max_bytes}-byte limit for one inline image; "
            "the item is rejected before any spend",
            item_id=item.id,
            uri=uri,
        )
    return data
