"""Read a prompt manifest (gs:// or local) into validated items, before anything is spent.

Formats: JSONL streamed line by line (blank lines ignored; an optional first line
``{"manifest_version": 1, "defaults": {...}}``), or a JSON document -- an array of items or
``{"manifest_version": 1, "defaults": {...}, "items": [...]}`` -- streamed item by item
(:mod:`.document`). Every problem names the manifest, the line (for a JSON document: the item's
position) and the field. Sizes are bounded (:mod:`.limits`): a line, a prompt, an item's metadata
and (with its reference images) its request; accepted items are kept packed (:mod:`.packed`), so
memory grows by about the manifest's own size, not by a Python object graph per item.

Precedence of item fields: item > manifest ``defaults`` > the caller's (operator's) defaults >
built-ins (1K, 1:1, gemini-3-pro-image-preview). ``metadata`` is merged key by key in the same
order. ``data_policy`` is the exception: the strictest level wins (``official_only`` anywhere
makes the item official-only), since compliance may only tighten. Relative reference-image
paths resolve against the manifest's folder.

Policy ``on_invalid``: ``"reject"`` raises one :class:`ManifestError` listing the problems (up to
``max_problems``) after reading the whole manifest; ``"quarantine"`` returns the good items plus
the rejects, which the caller writes to ``rejects.jsonl`` (:meth:`ManifestReadResult.rejects_jsonl`).
Duplicate ids are ambiguous (which prompt did the author mean?), so every copy is rejected.
A bad header or bad caller defaults affect every item and always raise.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import re
from array import array
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from itertools import chain
from typing import IO, Any, Literal

from jsonschema import Draft202012Validator

from airflow_banana.exceptions import ConfigurationError, ManifestError, ObjectNotFoundError
from airflow_banana.manifests import document
from airflow_banana.manifests.limits import ManifestLimits, env_name, limits_from_env
from airflow_banana.manifests.model import (
    BUILTIN_DEFAULTS,
    ManifestItem,
    deadline_problem,
    id_problem,
    strictest_policy,
)
from airflow_banana.manifests.packed import PackedItems
from airflow_banana.models import IMAGE_SIZES, sizes_of
from airflow_banana.storage.objects import Storage, TruncatedLine, join_uri, parent_uri, split_lines

OnInvalid = Literal["reject", "quarantine"]
SCHEMA_FILE = "manifest.v1.schema.json"
MANIFEST_VERSION = 1
_MAX_MESSAGE = 300
_MAX_FIELD_NAME = 100
_CHUNK_BYTES = 1024 * 1024  # read at a time: with the line limit, what a JSONL pass holds
_MAX_LINE_PROBLEMS = 10  # per line: a line with 100k unknown keys gets ten, and a count
_MAX_RAW_CHARS = 8192  # of a rejected line kept in rejects.jsonl; the rest is summarised
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class ManifestReject:
    """One line that was not accepted, as written to ``rejects.jsonl``."""

    line: int
    raw: str
    reason: str
    field: str | None = None
    item_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "item_id": self.item_id,
            "field": self.field,
            "reason": self.reason,
            "raw": self.raw,
        }


@dataclass(frozen=True)
class ManifestReadResult:
    uri: str
    items: Sequence[ManifestItem]  # packed (PackedItems); iterate, index or compare like a tuple
    rejects: tuple[ManifestReject, ...] = ()
    format: Literal["jsonl", "json"] = "jsonl"

    def rejects_jsonl(self) -> str:
        """The rejects as JSONL text (empty string when there are none)."""
        return "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in self.rejects)


@cache
def manifest_schema() -> dict[str, Any]:
    """The item schema shipped as package data (draft 2020-12)."""
    text = resources.files("airflow_banana.manifests").joinpath(SCHEMA_FILE).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _validator(definition: str | None = None) -> Draft202012Validator:
    schema = manifest_schema()
    if definition is not None:
        # a sub-schema that still resolves "#/$defs/..." against the whole document
        schema = {"$ref": f"#/$defs/{definition}", "$defs": schema["$defs"]}
    return Draft202012Validator(schema)


def _short(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _dotted(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        name = str(part)
        if len(name) > _MAX_FIELD_NAME:
            name = name[: _MAX_FIELD_NAME - 3] + "..."
        out += f"[{part}]" if isinstance(part, int) else (f".{name}" if out else name)
    return out


def _schema_problems(validator: Draft202012Validator, obj: Any) -> list[tuple[str | None, str]]:
    """(field, reason) for every schema violation, in field order; messages meant for people."""
    problems: list[tuple[str | None, str]] = []
    is_item = isinstance(obj, dict) and "prompt" in validator.schema.get("properties", {})
    for err in sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path]):
        path = list(err.absolute_path)
        here = err.instance
        if is_item and path and path[0] in ("id", "deadline") and isinstance(here, str):
            continue  # reported by id_problem / deadline_problem with a clearer reason
        if err.validator == "required" and isinstance(here, dict):
            for name in err.validator_value:
                if name not in here:
                    problems.append((_dotted([*path, name]), "is required"))
        elif err.validator == "additionalProperties" and isinstance(here, dict):
            known = sorted(err.schema.get("properties", {}))
            unknown = sorted(set(here) - set(known))
            for name in unknown[:_MAX_LINE_PROBLEMS]:
                # difflib indexes the word it is given: never a megabyte-long key
                hint = difflib.get_close_matches(str(name), known, n=1) if len(name) <= 64 else []
                suggestion = f"; did you mean '{hint[0]}'?" if hint else f"; allowed: {', '.join(known)}"
                problems.append((_dotted([*path, name]), f"unknown field{suggestion}"))
            if len(unknown) > _MAX_LINE_PROBLEMS:
                problems.append((None, f"... and {len(unknown) - _MAX_LINE_PROBLEMS} more unknown fields"))
        elif path[-1:] == ["prompt"] and err.validator in ("minLength", "pattern"):
            problems.append(("prompt", "prompt is empty or only whitespace"))
        else:
            reason = err.message
            if err.validator == "enum" and isinstance(here, str) and here.upper() in IMAGE_SIZES:
                reason += f" (sizes are uppercase: use '{here.upper()}'; Google rejects '{here}')"
            problems.append((_dotted(path) or None, _short(reason)))
        if len(problems) > _MAX_LINE_PROBLEMS:
            break
    return problems


def _field_problems(obj: dict[str, Any], *, is_item: bool) -> list[tuple[str | None, str]]:
    problems = _schema_problems(_validator() if is_item else _validator("defaults"), obj)
    if is_item and "id" in obj:
        reason = id_problem(obj["id"])
        if reason:
            problems.insert(0, ("id", reason))
    deadline = obj.get("deadline")
    if isinstance(deadline, str):
        reason = deadline_problem(deadline)
        if reason:
            problems.append(("deadline", reason))
    refs = obj.get("reference_images")
    if isinstance(refs, list):
        for i, ref in enumerate(refs):
            if isinstance(ref, str) and _URI_SCHEME.match(ref) and not ref.startswith(("gs://", "file://")):
                problems.append(
                    (f"reference_images[{i}]", f"{ref!r}: only gs://, file:// and local paths are supported")
                )
    return problems


def _join_problems(problems: list[tuple[str | None, str]], *, label_single: bool = False) -> str:
    if len(problems) == 1 and not label_single:
        return problems[0][1]  # the field is reported separately
    return "; ".join(f"field '{field}': {reason}" if field else reason for field, reason in problems)


def validate_defaults(defaults: dict[str, Any] | None, *, source: str) -> dict[str, Any]:
    """Check caller (operator) defaults; a bad one is a configuration error, not a manifest one."""
    if not defaults:
        return {}
    if not isinstance(defaults, dict):
        raise ConfigurationError(f"{source}: defaults must be an object, got {type(defaults).__name__}")
    problems = _field_problems(defaults, is_item=False)
    if problems:
        raise ConfigurationError(
            f"{source}: invalid defaults ({_join_problems(problems, label_single=True)}); "
            "nothing was read or spent"
        )
    return dict(defaults)


class _Reader:
    """One pass over one manifest; collects items and problems."""

    def __init__(
        self,
        uri: str,
        operator_defaults: dict[str, Any],
        fmt: Literal["jsonl", "json"],
        limits: ManifestLimits,
    ):
        self.uri = uri
        self.base = parent_uri(uri)
        self.operator_defaults = operator_defaults
        self.manifest_defaults: dict[str, Any] = {}
        self.format = fmt
        self.limits = limits
        self.max_depth = max_item_depth(limits)
        self.items = PackedItems()
        self.rejects: list[ManifestReject] = []
        # hash of each accepted item's lower-case id, by position: 8 bytes an item, checked at the end
        self.id_hashes = array("q")

    def where(self, line: int) -> str:
        return f"line {line}" if self.format == "jsonl" else f"item {line}"

    def reject(
        self, line: int, raw: str | None, reason: str, field: str | None, item_id: Any = None, obj: Any = None
    ) -> None:
        if raw is None:  # a document item: its JSON, only when it is rejected
            raw = "(nested too deeply to show)" if isinstance(obj, document.TooDeep) else _json_text(obj)
        if len(raw) > _MAX_RAW_CHARS:
            raw = raw[:_MAX_RAW_CHARS] + f"... ({len(raw)} characters in all)"
        self.rejects.append(
            ManifestReject(
                line=line,
                raw=raw,
                reason=reason,
                field=field,
                item_id=item_id if isinstance(item_id, str) else None,
            )
        )

    def too_long(self, line: int, head: bytes, length: int) -> None:
        """A line (or document item) over ``max_line_bytes``: rejected without being read whole."""
        limit = self.limits.max_line_bytes
        self.reject(
            line,
            head.decode("utf-8", "replace"),
            f"{'line' if self.format == 'jsonl' else 'item'} is {length} bytes long, over the {limit}-byte "
            f"limit for one manifest item (a prompt may have up to {self.limits.max_prompt_chars()} "
            f"characters); it was not read (limit: {env_name('max_line_bytes')})",
            None,
        )

    def header(self, obj: dict[str, Any], line: int) -> None:
        try:
            problems = _schema_problems(_validator("header"), obj)
            if not problems and isinstance(obj.get("defaults"), dict):
                problems = [
                    (f"defaults.{f}" if f else "defaults", r)
                    for f, r in _field_problems(obj["defaults"], is_item=False)
                ]
        except RecursionError:
            problems = [(None, "the header is nested too deeply to check")]
        if problems:
            field, _ = problems[0]
            raise ManifestError(
                f"invalid manifest header ({_join_problems(problems)}); it applies to every item, "
                "so nothing was accepted and nothing was spent",
                manifest=self.uri,
                line=line if self.format == "jsonl" else None,
                field=field,
            )
        self.manifest_defaults = dict(obj.get("defaults") or {})

    def resolve_ref(self, ref: str) -> str:
        if ref.startswith(("gs://", "file://", "/")) or self.base == ".":
            return ref
        return join_uri(self.base, ref)

    def size_problems(self, merged: dict[str, Any], metadata: dict[str, Any]) -> list[tuple[str | None, str]]:
        """The limits a schema-valid item can still break: prompt length, metadata size, and an
        image size its model cannot draw."""
        problems: list[tuple[str | None, str]] = []
        images = len(merged.get("reference_images", ()))
        max_chars = self.limits.max_prompt_chars(images)
        if len(merged["prompt"]) > max_chars:
            beside = f" beside {images} reference image(s)" if images else ""
            problems.append(
                (
                    "prompt",
                    f"prompt is {len(merged['prompt'])} characters, over the {max_chars} that fit{beside} "
                    f"in the model's {self.limits.max_input_tokens}-token input limit (~4 characters "
                    f"a token); Google would refuse it (limit: {env_name('max_input_tokens')})",
                )
            )
        if merged["image_size"] not in sizes_of(merged["model"]):
            # the model itself cannot draw it (Flash Image: 1K only): Google would answer 400
            problems.append(
                (
                    "image_size",
                    f"{merged['model']} draws {'/'.join(sizes_of(merged['model']))} only, not "
                    f"{merged['image_size']}; use gemini-3-pro-image-preview for 2K/4K (it may allow "
                    "the Flash model as a fallback_models entry for 1K)",
                )
            )
        if metadata:
            size = len(json.dumps(metadata, ensure_ascii=False, separators=(",", ":"), default=str).encode())
            if size > self.limits.max_metadata_bytes:
                problems.append(
                    (
                        "metadata",
                        f"metadata is {size} bytes as JSON, over the {self.limits.max_metadata_bytes}-byte "
                        f"limit (limit: {env_name('max_metadata_bytes')})",
                    )
                )
        return problems

    def item(self, obj: Any, line: int, raw: str | None) -> None:
        depth = obj.depth if isinstance(obj, document.TooDeep) else _depth(obj)
        if depth > self.max_depth:
            self.reject(
                line,
                raw,
                f"the item nests {depth} levels deep, over the {self.max_depth} an item with metadata "
                f"{self.limits.max_metadata_depth} levels deep needs "
                f"(limit: {env_name('max_metadata_depth')})",
                None,
                obj=obj,
            )
            return
        if not isinstance(obj, dict):
            self.reject(line, raw, f"an item must be a JSON object, got {type(obj).__name__}", None, obj=obj)
            return
        if "manifest_version" in obj:
            self.reject(
                line, raw, "a manifest header is only allowed as the first line", "manifest_version", obj=obj
            )
            return
        try:
            problems = _field_problems(obj, is_item=True)
        except RecursionError:  # a message quoting a value thousands of levels deep
            problems = [(None, "the item is nested too deeply to check")]
        if problems:
            self.reject(line, raw, _join_problems(problems), problems[0][0], obj.get("id"), obj=obj)
            return
        merged: dict[str, Any] = {
            **BUILTIN_DEFAULTS,
            **self.operator_defaults,
            **self.manifest_defaults,
            **obj,
        }
        metadata: dict[str, Any] = {
            **self.operator_defaults.get("metadata", {}),
            **self.manifest_defaults.get("metadata", {}),
            **obj.get("metadata", {}),
        }
        problems = self.size_problems(merged, metadata)
        if problems:
            self.reject(line, raw, _join_problems(problems), problems[0][0], obj.get("id"), obj=obj)
            return
        item = ManifestItem(
            id=merged["id"],
            prompt=merged["prompt"],
            image_size=merged["image_size"],
            aspect_ratio=merged["aspect_ratio"],
            model=merged["model"],
            reference_images=tuple(self.resolve_ref(r) for r in merged.get("reference_images", ())),
            deadline=merged.get("deadline"),
            metadata=metadata,
            line=line,
            data_policy=strictest_policy(
                self.operator_defaults.get("data_policy"),
                self.manifest_defaults.get("data_policy"),
                obj.get("data_policy"),
            ),
            grounding=None if merged.get("grounding") in (None, "none") else merged["grounding"],
            fallback_models=tuple(m for m in merged.get("fallback_models", ()) if m != merged["model"]),
        )
        # ids differing only in case collide on case-insensitive disks (macOS, Windows)
        self.id_hashes.append(hash(item.id.lower()))
        self.items.append(item)

    def drop_duplicates(self) -> None:
        counts: dict[int, int] = {}
        previous = None
        for value in sorted(self.id_hashes):  # equal hashes are neighbours; most ids have none
            if value == previous:
                counts[value] = counts.get(value, 1) + 1
            previous = value
        if not counts:
            return
        lines_by_id: dict[str, list[int]] = {}
        by_position: dict[int, ManifestItem] = {}
        for position, value in enumerate(self.id_hashes):
            if value in counts:
                item = self.items[position]
                by_position[position] = item
                lines_by_id.setdefault(item.id.lower(), []).append(item.line)
        dropped: set[int] = set()
        for position, item in by_position.items():
            lines = lines_by_id[item.id.lower()]
            if len(lines) < 2:
                continue  # a hash collision, not a duplicate
            dropped.add(position)
            listed = ", ".join(self.where(n) for n in lines if n != item.line)
            self.reject(
                item.line,
                None,
                f"duplicate id '{item.id}' (also on {listed}; ids are compared ignoring case); "
                "every copy is rejected because it is unclear which one is meant",
                "id",
                item.id,
                obj=item.to_dict(),
            )
        if dropped:
            self.items = self.items.without(dropped)
            self.id_hashes = array("q", (h for p, h in enumerate(self.id_hashes) if p not in dropped))
        self.rejects.sort(key=lambda r: r.line)


def max_item_depth(limits: ManifestLimits) -> int:
    """How deeply an item may nest: its own object, then its metadata's levels."""
    return limits.max_metadata_depth + 1


def _json_text(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=str)


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion (it may be thousands of levels deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        current, level = stack.pop()
        if isinstance(current, dict | list):
            deepest = max(deepest, level)
            children = current.values() if isinstance(current, dict) else current
            stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return deepest


def _decode(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _read_jsonl(reader: _Reader, lines: Iterator[tuple[int, bytes]]) -> None:
    first = True
    for number, raw_bytes in lines:
        if isinstance(raw_bytes, TruncatedLine):
            reader.too_long(number, raw_bytes, raw_bytes.length)
            first = False
            continue
        text = _decode(raw_bytes)
        if text is None:
            reader.reject(number, raw_bytes.decode("utf-8", "replace"), "line is not valid UTF-8", None)
            first = False
            continue
        if not text.strip():
            continue
        text = text.lstrip("\ufeff") if first else text  # a BOM from some editors
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as err:
            reason = (
                f"line is not JSON: {err.msg} at column {err.colno}"
                if isinstance(err, json.JSONDecodeError)
                else "line is not JSON: nested too deeply"
            )
            reader.reject(number, text, reason, None)
            first = False
            continue
        if first and isinstance(obj, dict) and "manifest_version" in obj:
            reader.header(obj, number)
        else:
            reader.item(obj, number, text)
        first = False


def _read_document(
    reader: _Reader, storage: Storage, uri: str, header: tuple[dict[str, Any], bool] | None, backend: Any
) -> None:
    """Stream the document's items into ``reader``; ``header`` is an object's (None: an array)."""
    if header is not None:
        members, has_items = header
        if not has_items and "items" not in members:
            raise ManifestError(
                "a JSON manifest object needs an 'items' array; nothing was accepted",
                manifest=reader.uri,
                field="items",
            )
        deep = next((k for k, v in members.items() if isinstance(v, document.TooDeep)), None)
        if deep is not None:
            raise ManifestError(
                f"invalid manifest header ('{deep}' nests deeper than {reader.max_depth} levels); it "
                "applies to every item, so nothing was accepted and nothing was spent",
                manifest=reader.uri,
                field=deep,
            )
        reader.header({**members, "items": []} if has_items else members, 1)
    position = 0
    limits = reader.limits
    entries = document.iter_items(
        lambda: storage.open_read(uri),
        limits.max_line_bytes,
        reader.max_depth,
        in_object=header is not None,
        backend=backend,
    )
    try:
        for position, entry in enumerate(entries, 1):
            reader.item(entry, position, None)
    except document.ValueTooLarge as err:
        # the parse cannot resume inside a value it stopped reading, so this always raises
        at = err.item or position + 1
        raise ManifestError(
            f"item {at} is over the {err.size}-byte limit for one item, so the document cannot be read "
            f"past it; nothing was accepted (limit: {env_name('max_line_bytes')})",
            manifest=reader.uri,
            field=f"items[{at - 1}]",
        ) from err


def read_manifest(
    uri: str,
    storage: Storage,
    *,
    on_invalid: OnInvalid = "reject",
    defaults: dict[str, Any] | None = None,
    max_problems: int = 20,
    limits: ManifestLimits | None = None,
) -> ManifestReadResult:
    """Validate the manifest at ``uri``; see the module docstring for formats and policies.

    ``limits`` defaults to :func:`~airflow_banana.manifests.limits.limits_from_env`. Raises
    :class:`ManifestError` (reject policy, or a broken header / document) and
    :class:`ConfigurationError` (bad ``defaults``, policy or limits). Nothing here spends money.
    """
    if on_invalid not in ("reject", "quarantine"):
        raise ConfigurationError(f"on_invalid must be 'reject' or 'quarantine', got {on_invalid!r}")
    operator_defaults = validate_defaults(defaults, source=f"defaults for manifest {uri}")
    limits = limits or limits_from_env()
    try:
        reader = _scan(uri, storage, operator_defaults, limits)
    except ObjectNotFoundError as err:
        raise ManifestError("the manifest does not exist; nothing was spent", manifest=uri) from err
    reader.drop_duplicates()
    if reader.rejects and on_invalid == "reject":
        _raise_all(reader, max_problems)
    return ManifestReadResult(
        uri=uri, items=reader.items, rejects=tuple(reader.rejects), format=reader.format
    )


def _scan(uri: str, storage: Storage, operator_defaults: dict[str, Any], limits: ManifestLimits) -> _Reader:
    """JSONL or a JSON document, decided by the first non-blank line; JSONL streams in this pass."""
    with storage.open_read(uri) as stream, contextlib.closing(_lines(stream, limits)) as raw_lines:
        lines = enumerate(raw_lines, start=1)  # closed on leaving: a document frees its chunk
        buffered: list[tuple[int, bytes]] = []
        for number, raw in lines:
            buffered.append((number, raw))
            if isinstance(raw, TruncatedLine) or raw.strip():
                break
        first = buffered[-1][1].lstrip().removeprefix(b"\xef\xbb\xbf").lstrip() if buffered else b""
        is_array = first.startswith(b"[")
        maybe_object = False
        if first.startswith(b"{"):
            if isinstance(buffered[-1][1], TruncatedLine):
                maybe_object = True  # a whole document on one line, or one over-long JSONL line
            else:
                try:
                    parsed = json.loads(first)
                    maybe_object = isinstance(parsed, dict) and "items" in parsed
                except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                    maybe_object = True  # a pretty-printed object spans lines; JSONL if that fails too
        if not (is_array or maybe_object):
            reader = _Reader(uri, operator_defaults, "jsonl", limits)
            _read_jsonl(reader, chain(buffered, lines))
            return reader
    header = None
    if not is_array:
        try:  # this pass reads the whole object, so JSONL is known before any item is taken
            header = document.read_header(
                lambda: storage.open_read(uri), limits.max_line_bytes, max_item_depth(limits)
            )
        except (document.DocumentError, document.ValueTooLarge) as err:
            if isinstance(err, document.ValueTooLarge) and not isinstance(buffered[-1][1], TruncatedLine):
                # a pretty-printed document (its first line is short) with one value too long
                raise ManifestError(
                    f"a value of the JSON document is over the {err.size}-byte limit for one item, so it "
                    f"cannot be read past it; nothing was accepted (limit: {env_name('max_line_bytes')})",
                    manifest=uri,
                    field=f"items[{err.item - 1}]" if err.item is not None else err.member or "items",
                ) from err
            # no document: JSONL whose first line did not parse or is over-long, reported line by line
            reader = _Reader(uri, operator_defaults, "jsonl", limits)
            with storage.open_read(uri) as stream:
                _read_jsonl(reader, enumerate(_lines(stream, limits), 1))
            return reader
    backend = document.BACKEND
    while True:
        reader = _Reader(uri, operator_defaults, "json", limits)
        try:
            _read_document(reader, storage, uri, header, backend)
            return reader
        except document.DocumentError as err:
            if "integer overflow" in err.message and backend is not document.PYTHON_BACKEND:
                backend = document.PYTHON_BACKEND  # yajl takes integers below 2**63 only; json takes any
                continue
            error = err
            break
    raise ManifestError(
        f"the JSON document is invalid ({error.message}); nothing was accepted",
        manifest=uri,
        line=document.error_line(
            lambda: storage.open_read(uri), limits.max_line_bytes, max_item_depth(limits)
        ),
    ) from error


def _lines(stream: IO[bytes], limits: ManifestLimits) -> Generator[bytes, None, None]:
    return split_lines(stream, chunk_size=_CHUNK_BYTES, max_line_bytes=limits.max_line_bytes)


def _raise_all(reader: _Reader, max_problems: int) -> None:
    rejects = reader.rejects
    if len(rejects) == 1:
        only = rejects[0]
        raise ManifestError(
            f"{only.reason}; nothing was generated or spent (fix it, or use on_invalid='quarantine')",
            manifest=reader.uri,
            line=only.line if reader.format == "jsonl" else None,
            field=only.field if reader.format == "jsonl" else _doc_field(only),
        )
    shown = [
        f"  {reader.where(r.line)}" + (f" field '{r.field}'" if r.field else "") + f": {r.reason}"
        for r in rejects[:max_problems]
    ]
    more = len(rejects) - len(shown)
    if more > 0:
        shown.append(f"  ... and {more} more")
    raise ManifestError(
        f"{len(rejects)} invalid items; nothing was generated or spent (fix them, or use "
        "on_invalid='quarantine' to run the valid items and write the rest to rejects.jsonl):\n"
        + "\n".join(shown),
        manifest=reader.uri,
    )


def _doc_field(reject: ManifestReject) -> str:
    return f"items[{reject.line - 1}]" + (f".{reject.field}" if reject.field else "")


def write_manifest(
    uri: str, items: Iterable[ManifestItem], storage: Storage, *, if_absent: bool = False
) -> int:
    """Write ``items`` as a self-contained JSONL manifest (header + resolved items).

    Returns the new object generation. Used for sub-manifests (e.g. items handed to another lane).
    """
    lines = [json.dumps({"manifest_version": MANIFEST_VERSION}) + "\n"]
    lines += [json.dumps(item.to_dict(), ensure_ascii=False) + "\n" for item in items]
    return storage.write_text(uri, "".join(lines), content_type="application/x-ndjson", if_absent=if_absent)
