"""Property-based: whatever bytes a manifest holds, the reader answers with items and rejects or one
ManifestError, within its memory bound, and every rejection names a line (issue 16).

Small limits make every limit reachable with small inputs; a few inputs carry one line of
several megabytes, which an unbounded reader would hold two or three times over.
"""

from __future__ import annotations

import json
import tempfile
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ijson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_banana.exceptions import ManifestError
from airflow_banana.manifests import ManifestLimits, read_manifest
from airflow_banana.manifests import document as document_module
from airflow_banana.manifests.reader import _CHUNK_BYTES
from airflow_banana.storage.objects import open_storage

STORAGE = open_storage()
LIMITS = ManifestLimits(
    max_line_bytes=4096, max_input_tokens=64, max_metadata_bytes=512, max_metadata_depth=6
)
# what the reader may hold at once: a read chunk and its remainder, a line, and the packed items
MEMORY_BOUND = 3 * _CHUNK_BYTES + 16 * LIMITS.max_line_bytes + 2 * 1024 * 1024
BIG = 6 * 1024 * 1024  # > MEMORY_BOUND: holding that line once is already over it

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
items = st.fixed_dictionaries(
    {"id": st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True) | st.text(max_size=5), "prompt": st.text()},
    optional={
        "image_size": st.sampled_from(["1K", "2K", "4k", "8K"]),
        "metadata": json_values,
        "reference_images": st.lists(st.text(min_size=1, max_size=10), max_size=3),
        "deadline": st.sampled_from(["+6h", "PT1H", "2026-12-01T10:00:00Z", "soon"]),
        "extra": json_values,
    },
)
headers = st.fixed_dictionaries(
    {"manifest_version": st.sampled_from([1, 2])}, optional={"defaults": json_values | items}
)


def _dumps(value: Any, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only)


def _big_line(size: int, kind: str) -> bytes:
    filler = "x" * size
    if kind == "prompt":
        return b'{"id": "big", "prompt": "' + filler.encode() + b'"}'
    if kind == "key":
        return b'{"id": "big", "prompt": "p", "' + filler.encode() + b'": 1}'
    return ("[" * (size // 2) + "]" * (size // 2)).encode()  # nesting as deep as the line is long


lines = st.one_of(
    st.binary(max_size=64),
    st.builds(_dumps, json_values, st.booleans()).map(str.encode),
    st.builds(_dumps, items, st.booleans()).map(str.encode),
    st.builds(_big_line, st.sampled_from([3000, 5000, BIG]), st.sampled_from(["prompt", "key", "nest"])),
)


@st.composite
def manifests(draw: st.DrawFn) -> bytes:
    shape = draw(st.sampled_from(["jsonl", "array", "object", "bytes"]))
    if shape == "bytes":
        return draw(st.binary(max_size=512))
    if shape == "jsonl":
        body = draw(st.lists(lines, max_size=6))
        if draw(st.booleans()):
            body.insert(0, json.dumps(draw(headers)).encode())
        return draw(st.sampled_from([b"\n", b"\r\n"])).join(body)
    entries = draw(st.lists(items | json_values, max_size=6))
    if draw(st.booleans()):
        entries.append({"id": "big", "prompt": "y" * draw(st.sampled_from([100, 5000, BIG]))})
    doc: Any = entries if shape == "array" else {**draw(headers), "items": entries}
    text = json.dumps(doc, indent=draw(st.sampled_from([None, 1])), sort_keys=draw(st.booleans())).encode()
    cut = draw(st.integers(0, 3))  # sometimes cut short: a broken document
    return text[: len(text) - cut] if cut else text


@contextmanager
def backend(name: str) -> Iterator[None]:
    previous = document_module.BACKEND
    document_module.BACKEND = ijson.get_backend(name)
    try:
        yield
    finally:
        document_module.BACKEND = previous


def _read(path: Path) -> tuple[int, Any]:
    """(traced peak bytes, result or ManifestError) of one quarantine read."""
    tracemalloc.start()
    try:
        try:
            outcome: Any = read_manifest(str(path), STORAGE, on_invalid="quarantine", limits=LIMITS)
        except ManifestError as err:
            outcome = err
        return tracemalloc.get_traced_memory()[1], outcome
    finally:
        tracemalloc.stop()


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(data=manifests())
def test_any_manifest_is_read_or_refused_within_bounds(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.jsonl"
        path.write_bytes(data)
        for name in ("yajl2_c", "python"):
            with backend(name):
                peak, outcome = _read(path)
            assert peak < MEMORY_BOUND, f"{name}: {peak} bytes traced for {len(data)} bytes of manifest"
            if isinstance(outcome, ManifestError):
                # a broken header or document: it still says where
                assert outcome.line is not None or outcome.field is not None, str(outcome)
                assert str(outcome).startswith(str(path))
                continue
            for reject in outcome.rejects:
                assert reject.line >= 1 and reject.reason
                assert len(reject.raw) <= 8192 + 40
            for item in outcome.items:
                assert item.line >= 1
                assert len(item.prompt) <= LIMITS.max_prompt_chars(len(item.reference_images))
                meta = json.dumps(item.metadata, ensure_ascii=False, separators=(",", ":"))
                assert len(meta.encode()) <= LIMITS.max_metadata_bytes
