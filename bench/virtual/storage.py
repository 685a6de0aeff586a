"""In-memory object storage behind the project's ``Storage``: the engine's commits, claims and
metadata reads run unchanged, with no disk I/O and no thread (virtual time stays deterministic).

Same semantics as the GCS and local backends: generations, create-only writes and
generation-matched replaces that raise ``PreconditionFailedError`` for the loser.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import BinaryIO

from airflow_banana.exceptions import ObjectNotFoundError, PreconditionFailedError
from airflow_banana.storage.objects import ObjectStat, Storage, _Backend


class _MemoryBackend(_Backend):
    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, int, str | None]] = {}
        self._generation = 0

    def read_bytes(self, uri: str) -> tuple[bytes, int]:
        try:
            data, generation, _ = self.objects[uri]
        except KeyError as err:
            raise ObjectNotFoundError(f"{uri} does not exist") from err
        return data, generation

    @contextlib.contextmanager
    def open_read(self, uri: str) -> Iterator[BinaryIO]:
        yield io.BytesIO(self.read_bytes(uri)[0])

    def stat(self, uri: str) -> ObjectStat | None:
        found = self.objects.get(uri)
        if found is None:
            return None
        return ObjectStat(uri=uri, size=len(found[0]), generation=found[1], content_type=found[2])

    def write_bytes(
        self,
        uri: str,
        data: bytes,
        *,
        content_type: str | None,
        if_absent: bool,
        if_generation_match: int | None,
    ) -> int:
        current = self.objects.get(uri)
        if (if_absent or if_generation_match == 0) and current is not None:
            raise PreconditionFailedError(f"{uri} already exists (another writer created it first)")
        if if_generation_match not in (None, 0) and (current is None or current[1] != if_generation_match):
            raise PreconditionFailedError(f"{uri} changed since generation {if_generation_match}")
        self._generation += 1
        self.objects[uri] = (data, self._generation, content_type)
        return self._generation

    def list(self, prefix_uri: str) -> Iterator[str]:
        yield from sorted(u for u in self.objects if u.startswith(prefix_uri))

    def delete(self, uri: str) -> None:
        if self.objects.pop(uri, None) is None:
            raise ObjectNotFoundError(f"{uri} does not exist, nothing deleted")


class MemoryStorage(Storage):
    """``Storage`` with every URI scheme served from one in-memory backend."""

    def __init__(self) -> None:
        self.memory = _MemoryBackend()

    def __repr__(self) -> str:
        return "MemoryStorage()"

    def _backend(self, uri: str) -> _Backend:
        return self.memory
