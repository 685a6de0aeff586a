"""Thought signatures: issue them where Google does, and validate a history the way the API does.

A signature is opaque to clients. Ours are ``b"simsig1:" + payload + mac``, the MAC being an HMAC
of the simulator secret over the payload (response id + part index), so validation needs no
server-side memory and survives restarts; a history edited by hand, or signed elsewhere, fails.
Checks compare DECODED bytes, since the SDK sends URL-safe base64 and Google answers standard.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PREFIX = b"simsig1:"
MAC_LEN = 16
# Google documents these as accepted in place of a real signature.
BYPASS_VALUES = frozenset({b"context_engineering_is_the_way_to_go", b"skip_thought_signature_validator"})
DOCS_HINT = "For more information, see https://ai.google.dev/gemini-api/docs/thought-signatures."


def b64decode_any(value: str) -> bytes:
    """Decode standard or URL-safe base64, padded or not."""
    text = value.strip().replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    return base64.b64decode(text, validate=True)


def b64encode_std(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class SignatureIssuer:
    """Issues and recognises this simulator's signatures."""

    def __init__(self, secret: str):
        self._secret = secret.encode()

    def issue(self, response_id: str, part_index: int) -> bytes:
        payload = f"{response_id}/{part_index}".encode()
        mac = hmac.new(self._secret, payload, hashlib.sha256).digest()[:MAC_LEN]
        return PREFIX + payload + b":" + mac

    def is_valid(self, signature: bytes) -> bool:
        if signature in BYPASS_VALUES:
            return True
        if not signature.startswith(PREFIX) or len(signature) < len(PREFIX) + MAC_LEN + 2:
            return False
        payload, mac = signature[len(PREFIX) : -MAC_LEN - 1], signature[-MAC_LEN:]
        if signature[-MAC_LEN - 1 : -MAC_LEN] != b":":
            return False
        expected = hmac.new(self._secret, payload, hashlib.sha256).digest()[:MAC_LEN]
        return hmac.compare_digest(mac, expected)


@dataclass(frozen=True)
class MissingSignature:
    """Where a required signature is missing (1-based, as Google reports it)."""

    content_position: int
    part_position: int
    kind: str  # "Image" | "Text" | "Function call"

    @property
    def message(self) -> str:
        return (
            f"{self.kind} part is missing a thought_signature in content position {self.content_position}, "
            f"part position {self.part_position}. {DOCS_HINT}"
        )


def _signature_of(part: Mapping[str, Any]) -> bytes | None:
    raw = part.get("thoughtSignature")
    if not raw:
        return None
    try:
        return b64decode_any(str(raw))
    except (binascii.Error, ValueError):
        return b""


def required_positions(parts: Sequence[Mapping[str, Any]]) -> list[int]:
    """Indexes (0-based) of the parts of one model turn that must carry a signature.

    The first non-thought part and every non-thought image part; thought parts never.
    """
    required: list[int] = []
    first_seen = False
    for i, part in enumerate(parts):
        if part.get("thought"):
            continue
        if not first_seen:
            required.append(i)
            first_seen = True
        elif "inlineData" in part or "functionCall" in part:
            required.append(i)
    return required


def check_history(contents: Sequence[Mapping[str, Any]], issuer: SignatureIssuer) -> MissingSignature | None:
    """The first model part lacking a valid signature, or None when the history would pass."""
    for ci, content in enumerate(contents):
        if content.get("role") != "model":
            continue
        parts = content.get("parts") or []
        for pi in required_positions(parts):
            sig = _signature_of(parts[pi])
            if sig is not None and issuer.is_valid(sig):
                continue
            part = parts[pi]
            kind = "Image" if "inlineData" in part else "Function call" if "functionCall" in part else "Text"
            return MissingSignature(ci + 1, pi + 1, kind)
    return None
