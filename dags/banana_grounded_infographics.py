"""Infographics grounded in Google Search: the request carries the Search tool.

One feature: ``grounding: google_search`` (per item, or in ``defaults`` as here). The request
carries ``types.Tool(google_search=types.GoogleSearch())``, so the model can draw current facts
from Google Search; what it searched and which sources it used (``web_search_queries``,
``sources`` with uri and title, Google's ``search_entry_point`` HTML) are stored in each item's
metadata under ``grounding_metadata``. Only channels that carry the tool are candidates: Google
direct and Vertex AI, Gemini-native relays whose connection says ``supports_grounding``, never
an OpenAI-compatible relay. An item no channel can ground is refused before anything is spent.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from airflow_banana.operators import RealtimeImageOperator

with DAG(
    dag_id="banana_grounded_infographics",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["banana", "example"],
    params={
        "manifest": Param("gs://banana-demo/manifests/infographics.jsonl", type="string"),
        "output_prefix": Param("gs://banana-demo/infographics", type="string"),
    },
) as dag:
    RealtimeImageOperator(
        task_id="generate_infographics",
        manifest="{{ params.manifest }}",
        output_prefix="{{ params.output_prefix }}",
        channels=["banana_relay", "banana_gemini", "banana_vertex"],
        defaults={"grounding": "google_search", "image_size": "2K", "aspect_ratio": "3:4"},
        progress_interval_s=5.0,
    )
