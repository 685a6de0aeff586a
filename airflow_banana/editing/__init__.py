"""Multi-turn image editing with thought signatures: session document, audit, turn engine.

The modules, in the order a run uses them: ``prepare`` (every check before spend: the session,
its settings, each turn's images and key), ``engine`` (``run_turns``: channels, one
``EditEngine`` turn after another, the run's summary), ``turns`` (the pure decision of one
turn), ``audit`` (the signatures a history must carry), ``session`` (the stored document).

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
