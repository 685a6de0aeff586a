"""Catalog images through three channels with failover, on time and at the lowest cost.

One feature: ``RealtimeImageOperator`` over a prompt manifest with three channels — a
flat-price OpenAI-compatible relay (cheapest), Google direct (Gemini Developer API) and Vertex
AI. The router orders them by expected cost per successful image, opens a channel's breaker
when it overloads, honours 429 retry hints and fails over; items already done are skipped.

Channels are Airflow connections of type ``banana`` (API keys live only there). ``make demo``
defines them as ``AIRFLOW_CONN_*`` variables pointing at the offline simulator and the GCS
emulator; point them at real endpoints to run it for real.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from airflow_banana.operators import RealtimeImageOperator

with DAG(
    dag_id="banana_catalog_realtime",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["banana", "example"],
    params={
        "manifest": Param("gs://banana-demo/manifests/catalog.jsonl", type="string"),
        "output_prefix": Param("gs://banana-demo/catalog", type="string"),
        "budget_usd": Param(5.0, type="number"),
    },
) as dag:
    RealtimeImageOperator(
        task_id="generate_images",
        manifest="{{ params.manifest }}",
        output_prefix="{{ params.output_prefix }}",
        channels=["banana_relay", "banana_gemini", "banana_vertex"],
        budget_usd="{{ params.budget_usd }}",
        progress_interval_s=5.0,
    )
