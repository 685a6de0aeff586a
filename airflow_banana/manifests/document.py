"""Stream a JSON-document manifest with ijson: an array of items, or an object with ``items``.

``json.loads`` of the whole document held every item at once (a 200k-item array peaked at 442 MB,
issue 16); ijson yields one item at a time. Its C backend (yajl2_c) is used when the wheel ships
it, else the pure-python one; both behave the same here. A single JSON value (a string, an item)
is bounded too: the stream is read through :class:`_Bounded`, which stops the parse once more
than ``limit`` bytes pass without the caller marking progress, so a 50 MB prompt inside a
document is an error, not a 50 MB string.

An object's ``manifest_version`` and ``defaults`` may come after ``items`` (``sort_keys`` puts
them there), so an object is read twice: once for its header (items skipped, not built), then
for its items.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import IO, Any

import ijson

BACKEND: Any = ijson  # the best available backend; tests swap in ijson.get_backend("python")
_BOM = b"\xef\xbb\xbf"
_READ_BYTES = 64 * 1024
_POSITION = re.compile(r" at (\d+)$")

OpenStream = Callable[[], AbstractContextManager[IO[bytes]]]


class DocumentError(Exception):
    """The document is not valid JSON (:func:`error_line` finds where, at the cost of a re-read)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ValueTooLarge(Exception):
    """One JSON value (an item, a header field) is longer than the limit; the parse was stopped."""

    def __init__(self, size: int):
        super().__init__(f"over {size} bytes")
        self.size = size


class _Bounded:
    """A read-only view of ``stream`` that ends early once ``limit`` bytes pass between two marks.

    It signals by ending (``exceeded`` set) rather than raising: an exception thrown through
    ijson's pure-python generators leaves them suspended, and closing them at garbage collection
    raises again at a random later point.
    """

    def __init__(self, stream: IO[bytes], limit: int):
        self._stream = stream
        self._limit = limit
        self._since = 0
        self._first = True
        self.exceeded = False

    def readable(self) -> bool:
        return True

    def mark(self) -> None:
        self._since = 0

    def read(self, size: int | None = -1) -> bytes:
        if size == 0 or self.exceeded:
            return b""  # ijson probes the stream's type with read(0)
        data = self._stream.read(size if size and size > 0 else _READ_BYTES)
        if self._first:
            self._first = False
            data = data.removeprefix(_BOM)  # some editors write one
        self._since += len(data)
        if self._since > self._limit + _READ_BYTES:  # one read of lookahead belongs to the next value
            self.exceeded = True
            return b""
        return data


def _json_error(err: Exception) -> DocumentError:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return DocumentError(text)


def error_line(open_stream: OpenStream) -> int | None:
    """Where a syntax error is: the pure-python backend reports a character offset; count lines.
    An error without one (the document ends early) is on the last line.

    Two more passes over the document in bounded memory; only for an error about to be raised.
    """
    python = ijson.get_backend("python")
    offset = 1 << 62
    try:
        with open_stream() as stream:
            for _ in python.basic_parse(_Bounded(stream, 1 << 62)):
                pass
    except ijson.JSONError as err:
        found = _POSITION.search(str(err))
        if found:
            offset = int(found.group(1))
    except (UnicodeDecodeError, ValueError):
        return _bad_utf8_line(open_stream)
    line, seen = 1, 0
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with open_stream() as raw:
        stream = _Bounded(raw, 1 << 62)
        while seen < offset and (data := stream.read(_READ_BYTES)):
            text = decoder.decode(data)[: offset - seen]
            line += text.count("\n")
            seen += len(text)
    return line


def _bad_utf8_line(open_stream: OpenStream) -> int | None:
    line = 1
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open_stream() as raw:
        stream = _Bounded(raw, 1 << 62)
        while data := stream.read(_READ_BYTES):
            try:
                decoder.decode(data)
            except UnicodeDecodeError as err:
                return line + data[: err.start].count(b"\n")
            line += data.count(b"\n")
    return None


def read_header(open_stream: OpenStream, limit: int) -> tuple[dict[str, Any], bool]:
    """The top-level members of a JSON object except ``items``, and whether ``items`` is an array.

    A non-array ``items`` is returned as a member, so the header schema names the problem.
    """
    header: dict[str, Any] = {}
    items_is_array = False
    try:
        with open_stream() as raw:
            stream = _Bounded(raw, limit)
            depth, key, builder = 0, "", None
            for _prefix, event, value in BACKEND.parse(stream):
                stream.mark()
                if depth == 1 and event == "map_key":
                    key = value
                    continue
                if depth == 1 and event != "end_map":
                    if key == "items" and event == "start_array":
                        items_is_array = True
                    else:
                        builder = ijson.ObjectBuilder()
                if builder is not None:
                    builder.event(event, value)
                if event in ("start_map", "start_array"):
                    depth += 1
                elif event in ("end_map", "end_array"):
                    depth -= 1
                if depth == 1 and builder is not None:
                    header[key] = builder.value
                    builder = None
            if stream.exceeded:  # the parse ended where the stream was cut: never a whole document
                raise ValueTooLarge(limit)
    except (ijson.JSONError, UnicodeDecodeError, ValueError) as err:
        if stream.exceeded:
            raise ValueTooLarge(limit) from err
        raise _json_error(err) from err
    return header, items_is_array


def iter_items(open_stream: OpenStream, prefix: str, limit: int) -> Iterator[Any]:
    """The values under ``prefix`` (``item`` for an array, ``items.item`` in an object), one at a time.

    Raises :class:`ValueTooLarge` for one over ``limit`` bytes and :class:`DocumentError`.
    """
    try:
        with open_stream() as raw:
            stream = _Bounded(raw, limit)
            for value in BACKEND.items(stream, prefix, use_float=True):
                yield value
                stream.mark()
            if stream.exceeded:
                raise ValueTooLarge(limit)
    except (ijson.JSONError, UnicodeDecodeError, ValueError) as err:
        if stream.exceeded:
            raise ValueTooLarge(limit) from err
        raise _json_error(err) from err
