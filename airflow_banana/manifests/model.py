"""The manifest item model, safe ids and deadlines: pure code, no I/O.

An item id becomes part of object names (``images/{id}.png``), so it is checked here with
reasons a person can act on ("contains '/'") rather than a bare regex mismatch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from airflow_banana.models import (
    DEFAULT_DATA_POLICY,
    DEFAULT_MODEL,
    OFFICIAL_ONLY,
    ImageRequest,
    ReferenceImage,
)

MAX_ID_LENGTH = 128
BUILTIN_DEFAULTS: dict[str, Any] = {"image_size": "1K", "aspect_ratio": "1:1", "model": DEFAULT_MODEL}
_ID_CHARS = re.compile(r"^[A-Za-z0-9._-]+$")
_ISO_DURATION = re.compile(
    r"^\+?P(?=\d|T\d)(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?=\d)(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)
_SHORT_DURATION = re.compile(r"^\+((?:\d+[wdhms])+)$")
_SHORT_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def id_problem(item_id: object) -> str | None:
    """Why ``item_id`` cannot name output objects, or None when it is safe."""
    if not isinstance(item_id, str):
        return f"id must be a string, got {type(item_id).__name__}"
    if not item_id:
        return "id is empty"
    if len(item_id) > MAX_ID_LENGTH:
        return f"id is {len(item_id)} characters long, the limit is {MAX_ID_LENGTH}"
    if "/" in item_id or "\\" in item_id:
        return "id contains a path separator ('/' or '\\')"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in item_id):
        return "id contains a control character"
    if ".." in item_id:
        return "id contains '..'"
    if item_id.startswith("."):
        return "id starts with '.' (hidden file name)"
    if not _ID_CHARS.match(item_id):
        bad = sorted({ch for ch in item_id if not _ID_CHARS.match(ch)})
        return f"id contains {''.join(bad)!r}; only A-Z a-z 0-9 . _ - are allowed"
    return None


def rendered_none(value: object) -> bool:
    """True for None and for what a template renders None or nothing as: ``""`` or ``"None"``.

    A templated operator argument arrives as a string: ``{{ ti.xcom_pull(...) }}`` of a None is
    ``"None"``; an empty template is ``""`` (whitespace around either is ignored).
    """
    return value is None or (isinstance(value, str) and value.strip() in ("", "None"))


def strictest_policy(*policies: object) -> str:
    """The data policy that applies when several levels set one: ``official_only`` if any does.

    Compliance only tightens: an item cannot opt out of an ``official_only`` the manifest's or
    the operator's defaults require (a loosening override would be a silent leak).
    """
    return OFFICIAL_ONLY if OFFICIAL_ONLY in policies else DEFAULT_DATA_POLICY


def parse_duration(value: str) -> timedelta | None:
    """``PT6H`` / ``P1DT2H`` / ``+6h`` / ``+1d12h`` as a timedelta; None when it is no duration."""
    iso = _ISO_DURATION.match(value)
    if iso:
        parts = {k: float(v) for k, v in iso.groupdict().items() if v}
        return timedelta(
            weeks=parts.get("w", 0),
            days=parts.get("d", 0),
            hours=parts.get("h", 0),
            minutes=parts.get("m", 0),
            seconds=parts.get("s", 0),
        )
    short = _SHORT_DURATION.match(value)
    if short:
        total = timedelta()
        for amount, unit in re.findall(r"(\d+)([wdhms])", short.group(1)):
            total += timedelta(**{_SHORT_UNITS[unit]: int(amount)})
        return total
    return None


def deadline_problem(value: str) -> str | None:
    """Why ``value`` is not a usable deadline, or None."""
    if parse_duration(value) is not None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return (
            f"deadline {value!r} is neither an ISO-8601 date-time with timezone "
            "(2026-12-01T18:00:00Z) nor a duration ('PT6H', '+6h')"
        )
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        return f"deadline {value!r} has no timezone; add 'Z' or an offset such as '+01:00'"
    return None


def resolve_deadline(value: str, base: datetime) -> datetime:
    """The absolute deadline: a duration counts from ``base`` (the run's logical date).

    ``base`` must be timezone-aware, so a naive wall-clock time can never be mistaken for UTC.
    """
    if base.tzinfo is None or base.utcoffset() is None:
        raise ValueError("resolve_deadline needs a timezone-aware base time")
    duration = parse_duration(value)
    if duration is not None:
        return base + duration
    problem = deadline_problem(value)
    if problem:
        raise ValueError(problem)
    return datetime.fromisoformat(value)


@dataclass(frozen=True)
class ManifestItem:
    """One validated manifest item with every default applied.

    ``line`` is the 1-based line in a JSONL manifest; in a JSON document it is the 1-based
    position in the item array. ``reference_images`` are URIs, already resolved against the
    manifest's folder when they were relative.
    """

    id: str
    prompt: str
    image_size: str = BUILTIN_DEFAULTS["image_size"]
    aspect_ratio: str = BUILTIN_DEFAULTS["aspect_ratio"]
    model: str = BUILTIN_DEFAULTS["model"]
    reference_images: tuple[str, ...] = ()
    deadline: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    line: int = 0
    data_policy: str = DEFAULT_DATA_POLICY
    grounding: str | None = None
    fallback_models: tuple[str, ...] = ()

    def to_request(self, reference_images: tuple[ReferenceImage, ...] = ()) -> ImageRequest:
        """The request to send; pass the loaded images (``load_reference_images``) if it has any."""
        if len(reference_images) != len(self.reference_images):
            raise ValueError(
                f"item '{self.id}' names {len(self.reference_images)} reference image(s) but "
                f"{len(reference_images)} were passed; load them with load_reference_images()"
            )
        return ImageRequest(
            item_id=self.id,
            prompt=self.prompt,
            image_size=self.image_size,
            aspect_ratio=self.aspect_ratio,
            model=self.model,
            reference_images=reference_images,
            data_policy=self.data_policy,
            grounding=self.grounding,
            fallback_models=self.fallback_models,
        )

    def deadline_at(self, base: datetime) -> datetime | None:
        """The absolute deadline given the run's logical date, or None when the item has none."""
        return None if self.deadline is None else resolve_deadline(self.deadline, base)

    def to_dict(self) -> dict[str, Any]:
        """The item as a self-contained manifest line (all defaults applied, no line number)."""
        out: dict[str, Any] = {
            "id": self.id,
            "prompt": self.prompt,
            "image_size": self.image_size,
            "aspect_ratio": self.aspect_ratio,
            "model": self.model,
        }
        if self.fallback_models:
            out["fallback_models"] = list(self.fallback_models)
        if self.reference_images:
            out["reference_images"] = list(self.reference_images)
        if self.deadline is not None:
            out["deadline"] = self.deadline
        if self.data_policy != DEFAULT_DATA_POLICY:
            out["data_policy"] = self.data_policy
        if self.grounding:
            out["grounding"] = self.grounding
        if self.metadata:
            out["metadata"] = self.metadata
        return out
