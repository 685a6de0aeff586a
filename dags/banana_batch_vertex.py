"""Catalog images through Vertex AI batch prediction: JSONL in GCS, predictions streamed back.

One feature: ``BatchImageOperator`` on a ``vertex`` channel. The input JSONL is written under
``gcs_staging_prefix`` and Vertex writes ``predictions.jsonl`` there; results are read line by
line (memory does not grow with the number of images) and stored in the same layout as the
realtime lane, billed at the batch price. Jobs that end FAILED / EXPIRED / PARTIALLY_SUCCEEDED are
harvested for whatever succeeded; the rest is reported per item.

The ``banana_vertex_batch`` connection holds project, location and credentials; GCS access uses
Application Default Credentials (or set ``gcp_conn_id``).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from airflow_banana.operators import BatchImageOperator

with DAG(
    dag_id="banana_batch_vertex",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["banana", "example", "batch"],
    params={
        "manifest": Param("gs://banana-demo/manifests/catalog.jsonl", type="string"),
        "output_prefix": Param("gs://banana-demo/catalog-vertex-batch", type="string"),
        "staging_prefix": Param("gs://banana-demo/batch-staging", type="string"),
        "poll_interval_s": Param(60, type="number"),
    },
) as dag:
    BatchImageOperator(
        task_id="generate_images_vertex_batch",
        manifest="{{ params.manifest }}",
        output_prefix="{{ params.output_prefix }}",
        channel="banana_vertex_batch",
        gcs_staging_prefix="{{ params.staging_prefix }}",
        deferrable=True,
        poll_interval_s="{{ params.poll_interval_s }}",
    )
