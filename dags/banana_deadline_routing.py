"""Deadline routing: urgent items through realtime channels, the rest through Batch at half price.

One feature: the plan step (``PlanImagesOperator``) splits the manifest by each item's deadline,
the channels' capacity and the prices — items that only realtime can finish in time go to the
realtime lane, everything else to the Batch API (50 % cheaper, ~24 h). Items no lane can make
are reported before anything is spent. A branch runs only the lanes that have work.

The batch lane is ``BatchImageOperator`` with ``rescue_channels``: if the job is still running
at (earliest deadline − the time realtime needs for its items − a margin), it cancels the job,
keeps what finished and generates the rest through the realtime channels — nothing is paid
twice. Each job's turnaround is recorded under the output prefix, so later plans use the
backend's real turnaround.

Channels are Airflow connections of type ``banana`` (keys live only there); ``make demo`` points
them at the offline simulator and the GCS emulator.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_banana.operators import BatchImageOperator, PlanImagesOperator, RealtimeImageOperator
from airflow_banana.planning.manifest import lanes_to_run

REALTIME_CHANNELS = ["banana_gemini", "banana_vertex"]
BATCH_CHANNEL = "banana_gemini"

with DAG(
    dag_id="banana_deadline_routing",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["banana", "example"],
    params={
        "manifest": Param("gs://banana-demo/manifests/catalog.jsonl", type="string"),
        "output_prefix": Param("gs://banana-demo/catalog", type="string"),
        # Items without a deadline of their own: due this long after the logical date.
        "default_deadline": Param("+36h", type="string"),
        # Empty: the recorded turnaround history's p95 (24 h until enough jobs are recorded).
        "batch_turnaround": Param("", type="string"),
        "realtime_latency": Param("60s", type="string"),
        "rescue_margin": Param("30m", type="string"),
        "poll_interval_s": Param(60.0, type="number"),
        # Empty: plan as of the wall clock. An ISO time replays a plan as of that moment.
        "plan_now": Param("", type="string"),
    },
) as dag:
    plan = PlanImagesOperator(
        task_id="plan",
        manifest="{{ params.manifest }}",
        output_prefix="{{ params.output_prefix }}",
        channels=REALTIME_CHANNELS,
        batch_channel=BATCH_CHANNEL,
        default_deadline="{{ params.default_deadline }}",
        batch_turnaround="{{ params.batch_turnaround }}",
        realtime_latency="{{ params.realtime_latency }}",
        on_infeasible="fail",
        now="{{ params.plan_now }}",
    )

    @task.branch
    def choose_lanes(summary: Any) -> list[str]:
        return lanes_to_run(summary, realtime_task_id="generate_realtime", batch_task_id="generate_batch")

    realtime = RealtimeImageOperator(
        task_id="generate_realtime",
        manifest="{{ ti.xcom_pull(task_ids='plan')['realtime_manifest'] }}",
        output_prefix="{{ params.output_prefix }}",
        channels=REALTIME_CHANNELS,
        progress_interval_s=5.0,
    )
    batch = BatchImageOperator(
        task_id="generate_batch",
        manifest="{{ ti.xcom_pull(task_ids='plan')['batch_manifest'] }}",
        output_prefix="{{ params.output_prefix }}",
        channel=BATCH_CHANNEL,
        rescue_channels=REALTIME_CHANNELS,
        rescue_margin="{{ params.rescue_margin }}",
        rescue_latency="{{ params.realtime_latency }}",
        poll_interval_s="{{ params.poll_interval_s }}",
    )
    choose_lanes(plan.output) >> [realtime, batch]
