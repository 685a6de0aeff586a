"""The thought-signature audit: find, before paying, the history Google would refuse.

Gemini 3 Pro Image continues an edit only if every previous model turn comes back with its
``thoughtSignature``s. The Developer API answers a history that lost one with 400 "Image part is
missing a thought_signature in content position X, part position Y" -- after a round trip, and
on a relay possibly after billing. This module applies the same rule locally so a broken history
fails fast with the same 1-based positions Google would report.

Which parts must carry a signature (GEMINI_WIRE.md "Multi-turn editing"): in each model turn, the
first non-thought part and every non-thought image (or function-call) part. Thought parts never
carry one. A signature is opaque: locally we can only check it is present and decodes as base64
to at least one byte; whether Google accepts its bytes is the channel's answer (see
``editing.turns.is_signature_rejection``).

Pure code: no I/O, no SDK import; accepts the SDK's snake_case dump and wire camelCase alike.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from airflow_banana.exceptions import SignatureError

DOCS_HINT = "See https://ai.google.dev/gemini-api/docs/thought-signatures."


def _field(mapping: Mapping[str, Any], snake: str, camel: str) -> Any:
    value = mapping.get(snake)
    return mapping.get(camel) if value is None else value


def signature_bytes(part: Mapping[str, Any]) -> bytes | None:
    """The decoded signature of ``part``; None when absent, empty or not base64 (all equally useless)."""
    raw = _field(part, "thought_signature", "thoughtSignature")
    if raw is None or raw == "":
        return None
    if isinstance(raw, bytes | bytearray):
        return bytes(raw) or None
    text = str(raw).strip().replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded or None


def part_kind(part: Mapping[str, Any]) -> str:
    """How Google names a part in its error: ``Image``, ``Function call`` or ``Text``."""
    if (
        _field(part, "inline_data", "inlineData") is not None
        or _field(part, "file_data", "fileData") is not None
    ):
        return "Image"
    if _field(part, "function_call", "functionCall") is not None:
        return "Function call"
    return "Text"


def required_positions(parts: Sequence[Mapping[str, Any]]) -> list[int]:
    """0-based indexes of the parts of ONE model turn that must carry a signature."""
    required: list[int] = []
    first_seen = False
    for index, part in enumerate(parts):
        if part.get("thought"):
            continue
        if not first_seen:
            required.append(index)
            first_seen = True
        elif part_kind(part) in ("Image", "Function call"):
            required.append(index)
    return required


@dataclass(frozen=True)
class SignatureGap:
    """A required signature that is missing; positions are 1-based, as Google reports them."""

    content_position: int
    part_position: int
    kind: str

    @property
    def google_message(self) -> str:
        return (
            f"{self.kind} part is missing a thought_signature in content position "
            f"{self.content_position}, part position {self.part_position}."
        )


def find_gaps(contents: Sequence[Mapping[str, Any]]) -> list[SignatureGap]:
    """Every missing signature of every model turn in ``contents``, in request order."""
    gaps: list[SignatureGap] = []
    for ci, content in enumerate(contents):
        if content.get("role") != "model":
            continue
        parts = content.get("parts") or []
        for pi in required_positions(parts):
            if signature_bytes(parts[pi]) is None:
                gaps.append(SignatureGap(ci + 1, pi + 1, part_kind(parts[pi])))
    return gaps


def audit_history(contents: Sequence[Mapping[str, Any]], *, session: str) -> None:
    """Raise ``SignatureError`` for the first gap, exactly where Google would; no I/O, nothing paid.

    The session is never restarted on the caller's behalf: a fresh session would draw a new
    image instead of editing this one, which is the failure this audit exists to prevent.
    """
    gaps = find_gaps(contents)
    if not gaps:
        return
    first = gaps[0]
    more = f" ({len(gaps) - 1} more gap(s) after it)" if len(gaps) > 1 else ""
    raise SignatureError(
        f"edit session '{session}': {first.google_message}{more} Found locally before sending: "
        "nothing was sent or paid. The history lost its thought signatures (it passed through a "
        "channel that drops them, or was edited by hand), so Google would refuse it with 400. "
        "The session is NOT restarted automatically: restore the session document from a good "
        f"copy, or start a new session on purpose. {DOCS_HINT}"
    )


def audit_model_turn(content: Mapping[str, Any]) -> SignatureGap | None:
    """The first gap of one freshly received model turn (a channel that strips signatures)."""
    gaps = find_gaps([{**content, "role": "model"}])
    return gaps[0] if gaps else None
