"""How a ``banana`` connection looks in the Airflow UI: one place, read without importing Airflow.

Airflow >= 3.2 reads it declaratively from the provider info (``ui-field-behaviour``); older
versions ask the hook's ``get_ui_field_behaviour()``. Both come from here.
"""

from __future__ import annotations

import json
from typing import Any

EXTRA_EXAMPLE: dict[str, Any] = {
    "protocol": "gemini",
    "model": "gemini-3-pro-image-preview",
    "rpm": 10,
    "prices": {"1K": 0.134},
}

UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden_fields": ["schema", "login", "port"],
    "relabeling": {"password": "API Key", "host": "Base URL"},
    "placeholders": {
        "host": "https://generativelanguage.googleapis.com (empty = the protocol's default; "
        "https://openrouter.ai/api/v1 for openai)",
        "password": "API key (vertex: optional OAuth access token; else extra.credentials or ADC)",
        "extra": json.dumps(EXTRA_EXAMPLE),
    },
}


def provider_ui_field_behaviour() -> dict[str, Any]:
    """The same, with the provider-info (kebab-case) keys."""
    return {
        "hidden-fields": list(UI_FIELD_BEHAVIOUR["hidden_fields"]),
        "relabeling": dict(UI_FIELD_BEHAVIOUR["relabeling"]),
        "placeholders": dict(UI_FIELD_BEHAVIOUR["placeholders"]),
    }
