"""Offline Gemini: a real HTTP simulator of the Gemini image API for tests, benchmarks and DAG dev.

``Simulator`` serves Developer, Vertex and OpenAI-compatible paths that the unmodified google-genai
SDK talks to, with per-key faults, quotas and a billing ledger. Importing this package is cheap:
uvicorn/starlette load only when a name is first used, and google-genai never.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_banana.testing.config import BatchProfile, FaultProfile, SimulatorConfig
    from airflow_banana.testing.server import Simulator

__all__ = ["BatchProfile", "FaultProfile", "Simulator", "SimulatorConfig"]

_LAZY = {
    "Simulator": "airflow_banana.testing.server",
    "SimulatorConfig": "airflow_banana.testing.config",
    "FaultProfile": "airflow_banana.testing.config",
    "BatchProfile": "airflow_banana.testing.config",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'airflow_banana.testing' has no attribute {name!r}")
