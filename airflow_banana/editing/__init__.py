"""Multi-turn image editing with thought signatures: session document, audit, turn engine.

Import from here: ``EditSession``, ``SessionStore``, ``audit_history``, ``EditEngine``,
``TurnSpec``, ``TurnPolicy``. The engine imports the Google channel lazily (only when used), so
importing this package stays cheap.
"""

from __future__ import annotations

from typing import Any

from airflow_banana.editing.audit import SignatureGap, audit_history, find_gaps
from airflow_banana.editing.session import (
    EditSession,
    GenerationSettings,
    SessionStore,
    TurnRecord,
    session_uri_for,
)
from airflow_banana.editing.turns import TurnPolicy, is_signature_rejection, turn_key

__all__ = [
    "EditEngine",
    "EditSession",
    "GenerationSettings",
    "SessionStore",
    "SignatureGap",
    "TurnPolicy",
    "TurnRecord",
    "TurnSpec",
    "audit_history",
    "find_gaps",
    "is_signature_rejection",
    "session_uri_for",
    "turn_key",
]


def __getattr__(name: str) -> Any:
    if name in ("EditEngine", "TurnSpec"):
        from airflow_banana.editing import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'airflow_banana.editing' has no attribute {name!r}")
