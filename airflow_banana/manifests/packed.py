"""A compact, read-only sequence of manifest items: one JSON record per item in a single buffer.

A ManifestItem object with its strings and metadata dict costs about 1.3 KB of Python objects;
a 200k-item manifest held that way took 300-440 MB (issue 16). Packed, an item costs its JSON
(about 150 bytes for a sentence of prompt) plus 8 bytes of offset, and is rebuilt on access, so a
caller still iterates, indexes and compares ``ManifestItem`` values as before.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

from airflow_banana.manifests.model import BUILTIN_DEFAULTS, ManifestItem
from airflow_banana.models import DEFAULT_DATA_POLICY

_DEFAULT_SIZE = BUILTIN_DEFAULTS["image_size"]
_DEFAULT_RATIO = BUILTIN_DEFAULTS["aspect_ratio"]
_DEFAULT_MODEL = BUILTIN_DEFAULTS["model"]
_FIELDS = 12


def _pack(item: ManifestItem) -> bytes:
    # positional, with None for built-in defaults: the common item pays only for id and prompt
    record: list[Any] = [
        item.id,
        item.prompt,
        item.line,
        None if item.image_size == _DEFAULT_SIZE else item.image_size,
        None if item.aspect_ratio == _DEFAULT_RATIO else item.aspect_ratio,
        None if item.model == _DEFAULT_MODEL else item.model,
        list(item.reference_images) or None,
        item.deadline,
        item.metadata or None,
        None if item.data_policy == DEFAULT_DATA_POLICY else item.data_policy,
        item.grounding,
        list(item.fallback_models) or None,
    ]
    while record[-1] is None:
        record.pop()
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _unpack(data: bytes) -> ManifestItem:
    record = json.loads(data)
    record += [None] * (_FIELDS - len(record))
    item_id, prompt, line, size, ratio, model, refs, deadline, metadata, policy, grounding, fallbacks = record
    return ManifestItem(
        id=item_id,
        prompt=prompt,
        image_size=size or _DEFAULT_SIZE,
        aspect_ratio=ratio or _DEFAULT_RATIO,
        model=model or _DEFAULT_MODEL,
        reference_images=tuple(refs or ()),
        deadline=deadline,
        metadata=metadata or {},
        line=line,
        data_policy=policy or DEFAULT_DATA_POLICY,
        grounding=grounding,
        fallback_models=tuple(fallbacks or ()),
    )


class PackedItems(Sequence[ManifestItem]):
    """Items appended once, then read any number of times; equal to any sequence of equal items."""

    def __init__(self, items: Iterable[ManifestItem] = ()) -> None:
        self._buf = bytearray()
        self._ends = array("Q")
        for item in items:
            self.append(item)

    def append(self, item: ManifestItem) -> None:
        self._buf += _pack(item)
        self._ends.append(len(self._buf))

    def without(self, positions: set[int]) -> PackedItems:
        """A copy without the items at ``positions`` (0-based); ``self`` is emptied to bound memory."""
        kept = PackedItems()
        for position in range(len(self)):
            if position not in positions:
                kept._buf += self._record(position)
                kept._ends.append(len(kept._buf))
        self._buf, self._ends = bytearray(), array("Q")
        return kept

    def _record(self, position: int) -> bytes:
        start = self._ends[position - 1] if position else 0
        return bytes(self._buf[start : self._ends[position]])

    def __len__(self) -> int:
        return len(self._ends)

    @overload
    def __getitem__(self, index: int) -> ManifestItem: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[ManifestItem, ...]: ...

    def __getitem__(self, index: int | slice) -> ManifestItem | tuple[ManifestItem, ...]:
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(len(self))))
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("manifest item index out of range")
        return _unpack(self._record(index))

    def __iter__(self) -> Iterator[ManifestItem]:
        for position in range(len(self)):
            yield _unpack(self._record(position))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PackedItems({len(self)} items)"
