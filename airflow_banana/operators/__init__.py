"""Airflow operators: thin orchestration over the lanes (no decisions live here)."""

from __future__ import annotations

from typing import Any

__all__ = ["BatchImageOperator", "PlanImagesOperator", "RealtimeImageOperator", "SignatureEditOperator"]

# Lazy: a DAG file importing one operator does not pay for the others' imports at parse time.
_MODULES = {
    "RealtimeImageOperator": "airflow_banana.operators.realtime",
    "BatchImageOperator": "airflow_banana.operators.batch",
    "PlanImagesOperator": "airflow_banana.operators.plan",
    "SignatureEditOperator": "airflow_banana.operators.edit",
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'airflow_banana.operators' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
