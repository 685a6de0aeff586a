"""Load and check an item's reference images before any money is spent (FAULTS.md S3).

A missing object, bytes that are not an image Gemini accepts, or an image too big to send inline
would otherwise fail at Google -- after planning, possibly after paying for other attempts -- so
the item is rejected here with the reason, naming the item and the URI.

Limits (:mod:`.limits`): one inline image up to ``max_reference_bytes`` (7 MiB, Google's per-file
inline limit), and the whole request -- prompt, every image base64-encoded (4/3 larger), the JSON
around them -- up to ``max_request_bytes`` (the API's 20 MB inline request limit). Both are
checked from the objects' sizes before anything is downloaded, and again on the bytes read.
"""

from __future__ import annotations

from airflow_banana.exceptions import (
    ImageValidationError,
    ObjectNotFoundError,
    ReferenceImageError,
)
from airflow_banana.imaging import inspect_image, sniff_mime
from airflow_banana.manifests.limits import ManifestLimits, env_name, limits_from_env
from airflow_banana.manifests.model import ManifestItem
from airflow_banana.models import MAX_REFERENCE_IMAGES, ReferenceImage
from airflow_banana.storage.objects import Storage

# What Gemini accepts as image input; GIF is sniffed by imaging but not accepted by the API.
ACCEPTED_MIME_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})


def load_reference_images(
    item: ManifestItem, storage: Storage, *, limits: ManifestLimits | None = None
) -> tuple[ReferenceImage, ...]:
    """The item's reference images, read and fully decoded, in manifest order.

    Raises :class:`ReferenceImageError` (item and URI named) for a missing object, an image over
    ``limits.max_reference_bytes`` or a request over ``limits.max_request_bytes`` (both checked
    before downloading), or bytes that are not a decodable PNG/JPEG/WebP. Other storage failures
    propagate as :class:`StorageError` and are safe to retry. ``limits`` defaults to
    :func:`~airflow_banana.manifests.limits.limits_from_env`.
    """
    limits = limits or limits_from_env()
    if len(item.reference_images) > MAX_REFERENCE_IMAGES:
        raise ReferenceImageError(
            f"{len(item.reference_images)} reference images, Google accepts at most "
            f"{MAX_REFERENCE_IMAGES}; the item is rejected before any spend",
            item_id=item.id,
            uri=item.reference_images[MAX_REFERENCE_IMAGES],
        )
    prompt_bytes = len(item.prompt.encode("utf-8"))
    sizes = [_stat_checked(item, uri, storage, limits.max_reference_bytes) for uri in item.reference_images]
    running = 0
    for count, (uri, size) in enumerate(zip(item.reference_images, sizes, strict=True), start=1):
        running += size
        _check_request(item, uri, prompt_bytes, running, count, limits)
    loaded: list[ReferenceImage] = []
    total = 0
    for uri in item.reference_images:
        data = _read_checked(item, uri, storage, limits.max_reference_bytes)
        total += len(data)
        _check_request(item, uri, prompt_bytes, total, len(loaded) + 1, limits)  # it may have grown
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


def _check_request(
    item: ManifestItem, uri: str, prompt_bytes: int, image_bytes: int, images: int, limits: ManifestLimits
) -> None:
    size = limits.request_bytes(prompt_bytes, image_bytes, images)
    if size > limits.max_request_bytes:
        raise ReferenceImageError(
            f"with this image the request would be {size} bytes (prompt, {images} image(s) base64-"
            f"encoded, JSON), over the {limits.max_request_bytes}-byte limit for one inline request; "
            f"the item is rejected before any spend (limit: {env_name('max_request_bytes')})",
            item_id=item.id,
            uri=uri,
        )


def _stat_checked(item: ManifestItem, uri: str, storage: Storage, max_bytes: int) -> int:
    found = storage.stat(uri)
    if found is None:
        raise ReferenceImageError(
            "the object does not exist; the item is rejected before any spend", item_id=item.id, uri=uri
        )
    if found.size > max_bytes:
        raise ReferenceImageError(
            f"{found.size} bytes is over the {max_bytes}-byte limit for one inline image; "
            f"the item is rejected before any spend (limit: {env_name('max_reference_bytes')})",
            item_id=item.id,
            uri=uri,
        )
    return found.size


def _read_checked(item: ManifestItem, uri: str, storage: Storage, max_bytes: int) -> bytes:
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
