"""Test-only DAG: what a new user writes on a first afternoon, one realtime task.

``channels`` is a templated comma-separated string (rendered from params) and bad lines are
quarantined, so the system tests can drive connections, manifests and limits through params.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from airflow_banana.operators import RealtimeImageOperator

with DAG(
    dag_id="banana_first_afternoon",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "manifest": Param("/tmp/manifest.jsonl", type="string"),
        "output_prefix": Param("/tmp/out", type="string"),
        "channels": Param("banana_gemini", type="string"),
    },
) as dag:
    RealtimeImageOperator(
        task_id="generate",
        manifest="{{ params.manifest }}",
        output_prefix="{{ params.output_prefix }}",
        channels="{{ params.channels }}",
        on_invalid="quarantine",
        progress_interval_s=5.0,
    )
