"""Channel connections for the simulator, as ``AIRFLOW_CONN_*`` JSON: used by tests, the demo and users.

Airflow resolves ``AIRFLOW_CONN_<ID>`` environment variables without a metadata DB, so a DAG can be
pointed at the offline simulator by environment alone.
"""

from __future__ import annotations

import json
from typing import Any

OPENAI_PREFIX = "/api/v1"  # OpenRouter's shape: {base}/chat/completions


def conn_env_var(conn_id: str) -> str:
    return "AIRFLOW_CONN_" + conn_id.upper()


def channel_connection(
    base_url: str,
    *,
    protocol: str,
    key: str,
    **extra: Any,
) -> str:
    """The JSON of a ``banana`` connection to ``base_url`` (the simulator's), for ``AIRFLOW_CONN_*``.

    ``extra`` goes to the connection's extra (model, prices, rpm, ipm, max_concurrency, timeout,
    project, location …). Vertex channels default to project ``sim-project`` in ``us-central1``.
    """
    host = base_url.rstrip("/") + (OPENAI_PREFIX if protocol == "openai" else "")
    fields: dict[str, Any] = {"protocol": protocol, **{k: v for k, v in extra.items() if v is not None}}
    if protocol == "vertex":
        fields.setdefault("project", "sim-project")
        fields.setdefault("location", "us-central1")
    if protocol == "openai":
        fields.setdefault("model", "google/gemini-3-pro-image-preview")
    return json.dumps({"conn_type": "banana", "host": host, "password": key, "extra": fields})
