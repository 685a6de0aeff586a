"""Test-only DAG: a plan followed straight by both lanes, no branch (what users write first).

Planned realtime only (no batch channel), so the batch lane gets no manifest and must skip.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from airflow_banana.operators import BatchImageOperator, PlanImagesOperator, RealtimeImageOperator

with DAG(
    dag_id="banana_plan_without_branch",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "manifest": Param("/tmp/m.jsonl", type="string"),
        "output_prefix": Param("/tmp/o", type="string"),
    },
) as dag:
    plan = PlanImagesOperator(
        task_id="plan",
        manifest="{{ params.manifest }}",
        output_prefix="{{ params.output_prefix }}",
        channels=["banana_gemini"],
        batch_channel=None,
        default_deadline="+1h",
    )
    realtime = RealtimeImageOperator(
        task_id="generate_realtime",
        manifest="{{ ti.xcom_pull(task_ids='plan')['realtime_manifest'] }}",
        output_prefix="{{ params.output_prefix }}",
        channels=["banana_gemini"],
    )
    batch = BatchImageOperator(
        task_id="generate_batch",
        manifest="{{ ti.xcom_pull(task_ids='plan')['batch_manifest'] }}",
        output_prefix="{{ params.output_prefix }}",
        channel="banana_gemini",
    )
    plan >> [realtime, batch]
