"""airflow-banana: an Apache Airflow provider that makes gemini-3-pro-image-preview dependable and cheap.

Importing the package stays cheap: no SDK (google-genai, google-cloud-storage) is imported until
an operator, hook or channel actually needs it, so DAG parsing is fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "RealtimeImageOperator": "airflow_banana.operators",
    "BatchImageOperator": "airflow_banana.operators",
    "SignatureEditOperator": "airflow_banana.operators",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'airflow_banana' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def get_provider_info() -> dict[str, Any]:
    """Provider metadata read by Airflow through the ``apache_airflow_provider`` entry point."""
    from airflow_banana.connection_form import provider_ui_field_behaviour

    integration = "Nano Banana Pro (Gemini image)"
    return {
        "package-name": "airflow-banana",
        "name": "Nano Banana (gemini-3-pro-image-preview)",
        "description": "Dependable, cost-aware image generation with gemini-3-pro-image-preview: "
        "multi-channel failover, Batch API, multi-turn editing, offline simulator.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": integration,
                "external-doc-url": "https://ai.google.dev/gemini-api/docs/image-generation",
                "tags": ["ai"],
            }
        ],
        "operators": [{"integration-name": integration, "python-modules": ["airflow_banana.operators"]}],
        "hooks": [
            {
                "integration-name": integration,
                "python-modules": ["airflow_banana.hooks.channel", "airflow_banana.hooks.redis"],
            }
        ],
        "triggers": [{"integration-name": integration, "python-modules": ["airflow_banana.triggers.batch"]}],
        "extra-links": ["airflow_banana.operators.publish.BatchJobLink"],
        "connection-types": [
            {
                "hook-class-name": "airflow_banana.hooks.channel.BananaChannelHook",
                "hook-name": "Nano Banana channel",
                "connection-type": "banana",
                "ui-field-behaviour": provider_ui_field_behaviour(),
                "conn-fields": {
                    "protocol": {
                        "label": "Protocol",
                        "description": "gemini (Developer API or Gemini-native relay), vertex, or openai",
                        "schema": {"type": ["string", "null"], "enum": ["gemini", "vertex", "openai", None]},
                    },
                    "model": {"label": "Model", "schema": {"type": ["string", "null"]}},
                    "rpm": {"label": "Requests per minute cap", "schema": {"type": ["number", "null"]}},
                    "ipm": {"label": "Images per minute cap", "schema": {"type": ["number", "null"]}},
                    "max_concurrency": {"label": "Max concurrency", "schema": {"type": ["integer", "null"]}},
                    "project": {"label": "Vertex project", "schema": {"type": ["string", "null"]}},
                    "location": {"label": "Vertex location", "schema": {"type": ["string", "null"]}},
                },
            }
        ],
    }
