"""Read a prompt manifest (gs:// or local) into validated items, before anything is spent.

Formats: JSONL streamed line by line (blank lines ignored; an optional first line
``{"manifest_version": 1, "defaults": {...}}``), or a JSON document -- an array of items or
``{"manifest_version": 1, "defaults": {...}, "items": [...]}`` -- which is read whole and so is
capped at :data:`MAX_DOCUMENT_BYTES`. Every problem names the manifest, the line (for a JSON
document: the item's position) and the field.

Precedence of item fields: item > manifest ``defaults`` > the caller's (operator's) defaults >
built-ins (1K, 1:1, gemini-3-pro-image-preview). ``metadata`` is merged key by key in the same
order. Relative reference-image paths resolve against the manifest's folder.

Policy ``on_invalid``: ``"reject"`` raises one :class:`ManifestError` listing the problems (up to
``max_problems``) after reading the whole manifest; ``"quarantine"`` returns the good items plus
the rejects, which the caller writes to ``rejects.jsonl`` (:meth:`ManifestReadResult.rejects_jsonl`).
Duplicate ids are ambiguous (which prompt did the author mean?), so every copy is rejected.
A bad header or bad caller defaults affect every item and always raise.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from itertools import chain
from typing import Any, Literal

from jsonschema import Draft202012Validator

from airflow_banana.exceptions import ConfigurationError, ManifestError, ObjectNotFoundError
from airflow_banana.manifests.model import (
    BUILTIN_DEFAULTS,
    ManifestItem,
    deadline_problem,
    id_problem,
)
from airflow_banana.models import IMAGE_SIZES
from airflow_banana.storage import Storage, join_uri, parent_uri, split_lines

OnInvalid = Literal["reject", "quarantine"]
SCHEMA_FILE = "manifest.v1.schema.json"
MANIFEST_VERSION = 1
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
_MAX_MESSAGE = 300
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
    items: tuple[ManifestItem, ...]
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
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
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
            for name in sorted(set(here) - set(known)):
                hint = difflib.get_close_matches(str(name), known, n=1)
                suggestion = f"; did you mean '{hint[0]}'?" if hint else f"; allowed: {', '.join(known)}"
                problems.append((_dotted([*path, name]), f"unknown field{suggestion}"))
        elif path[-1:] == ["prompt"] and err.validator in ("minLength", "pattern"):
            problems.append(("prompt", "prompt is empty or only whitespace"))
        else:
            reason = err.message
            if err.validator == "enum" and isinstance(here, str) and here.upper() in IMAGE_SIZES:
                reason += f" (sizes are uppercase: use '{here.upper()}'; Google rejects '{here}')"
            problems.append((_dotted(path) or None, _short(reason)))
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

    def __init__(self, uri: str, operator_defaults: dict[str, Any], fmt: Literal["jsonl", "json"]):
        self.uri = uri
        self.base = parent_uri(uri)
        self.operator_defaults = operator_defaults
        self.manifest_defaults: dict[str, Any] = {}
        self.format = fmt
        self.items: list[ManifestItem] = []
        self.rejects: list[ManifestReject] = []
        self.raw_by_line: dict[int, str] = {}
        self.lines_by_id: dict[str, list[int]] = {}

    def where(self, line: int) -> str:
        return f"line {line}" if self.format == "jsonl" else f"item {line}"

    def reject(self, line: int, raw: str, reason: str, field: str | None, item_id: Any = None) -> None:
        self.rejects.append(
            ManifestReject(
                line=line,
                raw=raw,
                reason=reason,
                field=field,
                item_id=item_id if isinstance(item_id, str) else None,
            )
        )

    def header(self, obj: dict[str, Any], line: int) -> None:
        problems = _schema_problems(_validator("header"), obj)
        if not problems and isinstance(obj.get("defaults"), dict):
            problems = [
                (f"defaults.{f}" if f else "defaults", r)
                for f, r in _field_problems(obj["defaults"], is_item=False)
            ]
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

    def item(self, obj: Any, line: int, raw: str) -> None:
        if not isinstance(obj, dict):
            self.reject(line, raw, f"an item must be a JSON object, got {type(obj).__name__}", None)
            return
        if "manifest_version" in obj:
            self.reject(line, raw, "a manifest header is only allowed as the first line", "manifest_version")
            return
        problems = _field_problems(obj, is_item=True)
        if problems:
            self.reject(line, raw, _join_problems(problems), problems[0][0], obj.get("id"))
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
        )
        # ids differing only in case collide on case-insensitive disks (macOS, Windows)
        self.lines_by_id.setdefault(item.id.lower(), []).append(line)
        self.raw_by_line[line] = raw
        self.items.append(item)

    def drop_duplicates(self) -> None:
        dup_lines = {n for lines in self.lines_by_id.values() if len(lines) > 1 for n in lines}
        if not dup_lines:
            return
        kept: list[ManifestItem] = []
        for item in self.items:
            if item.line not in dup_lines:
                kept.append(item)
                continue
            others = [n for n in self.lines_by_id[item.id.lower()] if n != item.line]
            listed = ", ".join(self.where(n) for n in others)
            self.reject(
                item.line,
                self.raw_by_line[item.line],
                f"duplicate id '{item.id}' (also on {listed}; ids are compared ignoring case); "
                "every copy is rejected because it is unclear which one is meant",
                "id",
                item.id,
            )
        self.items = kept
        self.rejects.sort(key=lambda r: r.line)


def _decode(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _read_jsonl(reader: _Reader, lines: Iterator[tuple[int, bytes]]) -> None:
    first = True
    for number, raw_bytes in lines:
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
        except json.JSONDecodeError as err:
            reader.reject(number, text, f"line is not JSON: {err.msg} at column {err.colno}", None)
            first = False
            continue
        if first and isinstance(obj, dict) and "manifest_version" in obj:
            reader.header(obj, number)
        else:
            reader.item(obj, number, text)
        first = False


def _read_document(reader: _Reader, obj: Any) -> None:
    if isinstance(obj, dict):
        reader.header(obj, 1)
        if "items" not in obj:
            raise ManifestError(
                "a JSON manifest object needs an 'items' array; nothing was accepted",
                manifest=reader.uri,
                field="items",
            )
        entries = obj["items"]
    else:
        entries = obj
    for position, entry in enumerate(entries, start=1):
        reader.item(entry, position, json.dumps(entry, ensure_ascii=False))


def read_manifest(
    uri: str,
    storage: Storage,
    *,
    on_invalid: OnInvalid = "reject",
    defaults: dict[str, Any] | None = None,
    max_problems: int = 20,
) -> ManifestReadResult:
    """Validate the manifest at ``uri``; see the module docstring for formats and policies.

    Raises :class:`ManifestError` (reject policy, or a broken header / document) and
    :class:`ConfigurationError` (bad ``defaults`` or policy). Nothing here spends money.
    """
    if on_invalid not in ("reject", "quarantine"):
        raise ConfigurationError(f"on_invalid must be 'reject' or 'quarantine', got {on_invalid!r}")
    operator_defaults = validate_defaults(defaults, source=f"defaults for manifest {uri}")
    try:
        with storage.open_read(uri) as stream:
            lines = enumerate(split_lines(stream), start=1)
            reader = _scan(uri, operator_defaults, lines)
    except ObjectNotFoundError as err:
        raise ManifestError("the manifest does not exist; nothing was spent", manifest=uri) from err
    reader.drop_duplicates()
    if reader.rejects and on_invalid == "reject":
        _raise_all(reader, max_problems)
    return ManifestReadResult(
        uri=uri, items=tuple(reader.items), rejects=tuple(reader.rejects), format=reader.format
    )


def _scan(uri: str, operator_defaults: dict[str, Any], lines: Iterator[tuple[int, bytes]]) -> _Reader:
    buffered: list[tuple[int, bytes]] = []
    for number, raw in lines:
        buffered.append((number, raw))
        if raw.strip():
            break
    first = buffered[-1][1].lstrip().lstrip(b"\xef\xbb\xbf") if buffered else b""
    maybe_document = first.startswith(b"[")
    if first.startswith(b"{"):
        try:
            parsed = json.loads(first)
            maybe_document = isinstance(parsed, dict) and "items" in parsed
        except (json.JSONDecodeError, UnicodeDecodeError):
            maybe_document = True  # a pretty-printed object spans lines; JSONL if that fails too
    if maybe_document:
        size = sum(len(raw) + 1 for _, raw in buffered)
        for number, raw in lines:
            buffered.append((number, raw))
            size += len(raw) + 1
            if size > MAX_DOCUMENT_BYTES:
                if first.startswith(b"["):
                    raise ManifestError(
                        f"a JSON-array manifest is read whole and this one exceeds {MAX_DOCUMENT_BYTES} "
                        "bytes; write it as JSONL (one item per line) instead",
                        manifest=uri,
                    )
                break  # too big for a document: treat as JSONL, streaming the rest
        else:
            text = b"\n".join(raw for _, raw in buffered)
            try:
                document = json.loads(text.decode("utf-8-sig"))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                if first.startswith(b"["):
                    line = getattr(err, "lineno", None)
                    raise ManifestError(
                        f"the JSON document is invalid ({getattr(err, 'msg', err)}); nothing was accepted",
                        manifest=uri,
                        line=line,
                    ) from err
            else:
                reader = _Reader(uri, operator_defaults, "json")
                _read_document(reader, document)
                return reader
    reader = _Reader(uri, operator_defaults, "jsonl")
    _read_jsonl(reader, chain(buffered, lines))
    return reader


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
