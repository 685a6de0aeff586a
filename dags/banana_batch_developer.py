"""Catalog images through the Gemini Developer Batch API: half the realtime price, asynchronous.

One feature: ``BatchImageOperator`` on a ``gemini`` channel. Items already done are skipped, the
rest go in one batch job (inline while small, else a JSONL file uploaded through the Files API).
The task defers while Google works (target 24 h), then streams the results into
``images/`` + ``metadata/`` + a run report, billed at the batch price. A retry of the task
reattaches to the same job: it never pays for a second one.

The ``banana_gemini_batch`` connection holds the key (``make demo`` points it at the offline
simulator; point it at https://generativelanguage.googleapis.com to run it for real).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from airflow_banana.operators import BatchImageOperator

with DAG(
    dag_id="banana_batch_developer",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["banana", "example", "batch"],
    params={
        "manifest": Param("gs://banana-demo/manifests/catalog.jsonl", type="string"),
        "output_prefix": Param("gs://banana-demo/catalog-batch", type="string"),
        "poll_interval_s": Param(60, type="number"),
    },
) as dag:
    BatchImageOperator(
        task_id="generate_images_batch",
        manifest="{{ params.manifest }}",
        output_prefix="{{ params.output_prefix }}",
        channel="banana_gemini_batch",
        deferrable=True,
        poll_interval_s="{{ params.poll_interval_s }}",
    )
