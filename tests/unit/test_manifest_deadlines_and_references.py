"""Deadline parsing/resolution and reference-image checks (local files)."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image

from airflow_banana.exceptions import ReferenceImageError
from airflow_banana.manifests import (
    ManifestItem,
    ManifestLimits,
    deadline_problem,
    load_reference_images,
    parse_duration,
    rendered_none,
    resolve_deadline,
)
from airflow_banana.storage.objects import open_storage

BASE = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
STORAGE = open_storage()


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, True), ("", True), (" None ", True), ("none", False), ("0", False), (0, False), ("PT6H", False)],
)
def test_rendered_none(value: object, expected: bool) -> None:
    """What a template renders None or nothing as counts as not given, everywhere it is read."""
    assert rendered_none(value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("PT6H", timedelta(hours=6)),
        ("+PT6H", timedelta(hours=6)),
        ("P1DT2H30M", timedelta(days=1, hours=2, minutes=30)),
        ("PT90S", timedelta(seconds=90)),
        ("PT0.5S", timedelta(seconds=0.5)),
        ("P2W", timedelta(weeks=2)),
        ("+6h", timedelta(hours=6)),
        ("+90m", timedelta(minutes=90)),
        ("+1d12h", timedelta(days=1, hours=12)),
        ("+30s", timedelta(seconds=30)),
    ],
)
def test_durations(value: str, expected: timedelta) -> None:
    assert parse_duration(value) == expected
    assert deadline_problem(value) is None
    assert resolve_deadline(value, BASE) == BASE + expected


@pytest.mark.parametrize("value", ["P", "PT", "P1M", "P1Y", "6h", "+6", "+h", "PT6", "-6h", "soon"])
def test_not_durations(value: str) -> None:
    assert parse_duration(value) is None
    assert deadline_problem(value) is not None


def test_absolute_deadlines_need_a_timezone() -> None:
    assert resolve_deadline("2026-12-01T18:00:00Z", BASE) == datetime(2026, 12, 1, 18, tzinfo=UTC)
    plus_one = timezone(timedelta(hours=1))
    assert resolve_deadline("2026-12-01T18:00:00+01:00", BASE) == datetime(2026, 12, 1, 18, tzinfo=plus_one)
    assert "no timezone" in (deadline_problem("2026-12-01T18:00:00") or "")
    with pytest.raises(ValueError, match="no timezone"):
        resolve_deadline("2026-12-01T18:00:00", BASE)
    with pytest.raises(ValueError, match="timezone-aware base"):
        resolve_deadline("+6h", datetime(2026, 1, 1))


def test_item_deadline_at() -> None:
    assert ManifestItem(id="a", prompt="p").deadline_at(BASE) is None
    assert ManifestItem(id="a", prompt="p", deadline="PT6H").deadline_at(BASE) == BASE + timedelta(hours=6)


def _image(fmt: str, size: tuple[int, int] = (8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 100, 50)).save(buf, format=fmt)
    return buf.getvalue()


def _item(*refs: str) -> ManifestItem:
    return ManifestItem(id="item-7", prompt="p", reference_images=refs)


def test_loads_png_jpeg_webp_in_order(tmp_path: Path) -> None:
    paths = []
    for name, fmt in (("a.png", "PNG"), ("b.jpg", "JPEG"), ("c.webp", "WEBP")):
        (tmp_path / name).write_bytes(_image(fmt))
        paths.append(str(tmp_path / name))
    refs = load_reference_images(_item(*paths), STORAGE)
    assert [r.mime_type for r in refs] == ["image/png", "image/jpeg", "image/webp"]
    assert [r.uri for r in refs] == paths
    assert refs[0].data == (tmp_path / "a.png").read_bytes()
    request = _item(*paths).to_request(refs)
    assert request.reference_images == refs


def test_declared_extension_does_not_matter_bytes_do(tmp_path: Path) -> None:
    (tmp_path / "liar.png").write_bytes(_image("JPEG"))
    (ref,) = load_reference_images(_item(str(tmp_path / "liar.png")), STORAGE)
    assert ref.mime_type == "image/jpeg"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "does not exist"),
        (b"hello, not an image", "not an image"),
        (_image("PNG")[:40], "does not decode"),
        (_image("GIF"), "image/gif is not accepted"),
    ],
)
def test_bad_reference_is_rejected_naming_item_and_uri(
    tmp_path: Path, content: bytes | None, reason: str
) -> None:
    path = tmp_path / "ref.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ReferenceImageError, match=reason) as info:
        load_reference_images(_item(str(path)), STORAGE)
    assert info.value.item_id == "item-7" and info.value.uri == str(path)
    assert str(info.value).startswith(f"item 'item-7': reference image {path}")
    assert "before any spend" in str(info.value)


def test_size_limits_per_image_and_for_the_whole_request(tmp_path: Path) -> None:
    big = _image("PNG", (64, 64))
    (tmp_path / "big.png").write_bytes(big)
    with pytest.raises(ReferenceImageError, match="over the 100-byte limit for one inline image"):
        load_reference_images(
            _item(str(tmp_path / "big.png")), STORAGE, limits=ManifestLimits(max_reference_bytes=100)
        )
    (tmp_path / "two.png").write_bytes(big)
    refs = (str(tmp_path / "big.png"), str(tmp_path / "two.png"))
    item = _item(*refs)
    two = ManifestLimits().request_bytes(len(item.prompt), 2 * len(big), 2)
    with pytest.raises(ReferenceImageError, match=f"request would be {two} bytes") as info:
        load_reference_images(item, STORAGE, limits=ManifestLimits(max_request_bytes=two - 1))
    assert info.value.uri == refs[1] and "2 image(s) base64-encoded" in str(info.value)
    assert "BANANA_MAX_REQUEST_BYTES" in str(info.value)
    assert len(load_reference_images(item, STORAGE, limits=ManifestLimits(max_request_bytes=two))) == 2


def test_the_request_limit_counts_the_prompt_and_is_checked_before_downloading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = _image("PNG", (8, 8))
    (tmp_path / "a.png").write_bytes(small)
    item = ManifestItem(id="long", prompt="é" * 1000, reference_images=(str(tmp_path / "a.png"),))
    need = ManifestLimits().request_bytes(2000, len(small), 1)  # é is two bytes of UTF-8
    assert need == 1024 + 2000 + 4 * -(-len(small) // 3) + 2 * 128
    storage = open_storage()

    def no_download(uri: str) -> bytes:
        raise AssertionError(f"{uri} was downloaded")  # the limit must hold from stat alone

    monkeypatch.setattr(storage, "read_bytes", no_download)
    with pytest.raises(ReferenceImageError, match="request would be"):
        load_reference_images(item, storage, limits=ManifestLimits(max_request_bytes=need - 1))
    assert len(load_reference_images(item, STORAGE, limits=ManifestLimits(max_request_bytes=need))) == 1


def test_more_than_fourteen_references(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_image("PNG"))
    refs = tuple(str(tmp_path / "a.png") + f"?{n}" for n in range(15))
    with pytest.raises(ReferenceImageError, match="at most 14"):
        load_reference_images(_item(*refs), STORAGE)
