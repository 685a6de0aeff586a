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

BACKEND: Any = ijson  # the best available backend; tests swap in PYTHON_BACKEND
PYTHON_BACKEND: Any = ijson.get_backend("python")
_BOM = b"\xef\xbb\xbf"
# ijson's C backend turns each read into a list of events before yielding any: 16 KiB of "[[[["
# is 16k events (~1.5 MB), so reads stay small
_READ_BYTES = 16 * 1024
_POSITION = re.compile(r" at (\d+)$")
_DEPTH_SLACK = 64  # levels past an item's limit before a document is given up as broken
_OPEN = frozenset({"start_map", "start_array"})
_CLOSE = frozenset({"end_map", "end_array"})

OpenStream = Callable[[], AbstractContextManager[IO[bytes]]]


class DocumentError(Exception):
    """The document is not valid JSON (:func:`error_line` finds where, at the cost of a re-read)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ValueTooLarge(Exception):
    """One JSON value (an item, a header field) is longer than the limit; the parse was stopped.

    ``item`` is the 1-based position of the item it is in, when it is in one.
    """

    def __init__(self, size: int, item: int | None = None, member: str | None = None):
        super().__init__(f"over {size} bytes")
        self.size = size
        self.item = item
        self.member = member  # the top-level member it is in, outside the items


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
        self.newlines = 0  # in the bytes read so far

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
        self.newlines += data.count(b"\n")
        if self._since > self._limit + _READ_BYTES:  # one read of lookahead belongs to the next value
            self.exceeded = True
            return b""
        return data


def _closing(events: Any) -> Iterator[Any]:
    """``events``, closed however the loop over it ends (a suspended parser is not left to GC)."""
    try:
        yield from events
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()


def _json_error(err: Exception) -> DocumentError:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return DocumentError(text)


def error_line(open_stream: OpenStream, limit: int, max_depth: int) -> int | None:
    """Where a syntax error is: the pure-python backend reports a character offset; count lines.
    An error without one (the document ends early) is on the last line. Past ``max_depth``
    levels, or a value over ``limit`` bytes, it stops and names the line it reached (to within
    one read): the document is invalid there already, and its state would grow without bound.

    Two more passes over the document in bounded memory; only for an error about to be raised.
    """
    python = PYTHON_BACKEND
    offset = 1 << 62
    try:
        with open_stream() as raw:
            stream = _Bounded(raw, limit)
            depth = 0
            for event, _value in _closing(python.basic_parse(stream, buf_size=_READ_BYTES)):
                stream.mark()
                depth += (event in _OPEN) - (event in _CLOSE)
                if depth > max_depth + 1:
                    return 1 + stream.newlines
    except ijson.JSONError as err:
        if stream.exceeded:
            return 1 + stream.newlines
        found = _POSITION.search(str(err))
        if found:
            offset = int(found.group(1))
    except (UnicodeDecodeError, ValueError):
        return _bad_utf8_line(open_stream)
    line, seen = 1, 0
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with open_stream() as raw:
        whole = _Bounded(raw, 1 << 62)
        while seen < offset and (data := whole.read(_READ_BYTES)):
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


class TooDeep:
    """Stands for a value nested deeper than allowed: it was skipped, not built."""

    def __init__(self, depth: int):
        self.depth = depth


def _values(
    open_stream: OpenStream,
    limit: int,
    max_depth: int,
    *,
    in_object: bool,
    build_items: bool,
    backend: Any = None,
) -> Iterator[tuple[str, Any, Any]]:
    """``("member", key, value)`` for each top-level member of an object but an ``items`` array,
    ``("items", None, None)`` where that array starts, and ``("item", position, value)`` for each
    item, in document order. Members are built when items are not (``build_items``), and the
    other kind is None.

    Built from ijson's ``basic_parse`` (no prefix strings: those grow with the square of the
    nesting depth); a value nested deeper than ``max_depth`` levels stops being built and is
    yielded as :class:`TooDeep`. Raises :class:`ValueTooLarge` (``item`` set when in one) and
    :class:`DocumentError`.
    """
    depth, key, position = 0, "", 0
    items_depth = 2 if in_object else 1  # the depth at which an item starts
    in_items = not in_object
    start: int | None = None  # the depth at which the value being read started
    kind, builder, deepest = "", None, 0
    give_up = items_depth + max_depth + _DEPTH_SLACK
    try:
        with open_stream() as raw:
            stream = _Bounded(raw, limit)
            events = (backend or BACKEND).basic_parse(stream, use_float=True, buf_size=_READ_BYTES)
            for event, value in _closing(events):
                stream.mark()
                if in_object and depth == 1 and event == "map_key":
                    key = value
                    continue
                if start is None:
                    if in_object and depth == 1 and event != "end_map":
                        if key == "items" and event == "start_array":
                            in_items = True
                            depth += 1
                            yield "items", None, None
                            continue
                        start, kind = 1, "member"
                    elif in_items and depth == items_depth and event not in _CLOSE:
                        position += 1
                        start, kind = items_depth, "item"
                    if start is not None:
                        build = build_items == (kind == "item")
                        builder, deepest = (ijson.ObjectBuilder() if build else None), 0
                if event in _OPEN:
                    depth += 1
                    if depth > give_up:  # the parser's own state grows with depth: stop here
                        raise DocumentError(f"it nests deeper than {give_up} levels")
                elif event in _CLOSE:
                    depth -= 1
                    if in_object and in_items and start is None and depth == 1:
                        in_items = False  # the items array ended
                if start is None:
                    continue
                deepest = max(deepest, depth - start)
                if builder is not None and deepest <= max_depth:
                    builder.event(event, value)
                if depth == start:  # a scalar, or the container closed: the value is complete
                    done = TooDeep(deepest) if deepest > max_depth else getattr(builder, "value", None)
                    yield kind, key if kind == "member" else position, done
                    start, builder = None, None
            if stream.exceeded:  # the parse ended where the stream was cut: never a whole document
                raise _too_large(limit, in_items, start, kind, position, key)
    except (ijson.JSONError, UnicodeDecodeError, ValueError) as err:
        if stream.exceeded:
            raise _too_large(limit, in_items, start, kind, position, key) from err
        raise _json_error(err) from err


def _too_large(
    limit: int, in_items: bool, start: int | None, kind: str, position: int, key: str
) -> ValueTooLarge:
    """Where the stream was cut: in an item, in a member, or in a scalar item with no event yet."""
    if start is not None:
        return ValueTooLarge(limit, position if kind == "item" else None, key if kind == "member" else None)
    return ValueTooLarge(limit, position + 1 if in_items else None, None if in_items else key or None)


def read_header(open_stream: OpenStream, limit: int, max_depth: int) -> tuple[dict[str, Any], bool]:
    """The top-level members of a JSON object except ``items``, and whether ``items`` is an array.

    A non-array ``items`` is returned as a member, so the header schema names the problem.
    """
    for backend in (BACKEND, PYTHON_BACKEND):
        header: dict[str, Any] = {}
        items_is_array = False
        values = _values(open_stream, limit, max_depth, in_object=True, build_items=False, backend=backend)
        try:
            for kind, key, value in values:
                if kind == "member":
                    header[key] = value
                elif kind == "items":
                    items_is_array = True
        except DocumentError as err:
            if "integer overflow" in err.message and backend is not PYTHON_BACKEND:
                continue  # yajl takes integers below 2**63 only; json and the python backend take any
            raise
        break
    return header, items_is_array


def iter_items(
    open_stream: OpenStream, limit: int, max_depth: int, *, in_object: bool, backend: Any = None
) -> Iterator[Any]:
    """The items of an array document, or of an object's ``items`` array, one at a time."""
    for kind, _position, value in _values(
        open_stream, limit, max_depth, in_object=in_object, build_items=True, backend=backend
    ):
        if kind == "item":
            yield value
