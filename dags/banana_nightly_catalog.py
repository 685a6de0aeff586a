"""Nightly catalog images: heroes realtime by the morning, the rest through Batch by the next day.

One feature: scheduled generation on the logical date's manifest
(``manifests/{{ ds }}.jsonl``). Hero items carry their own deadline in the manifest, e.g.
``"deadline": "+7h"`` (08:00 UTC for the 01:00 run), so the plan sends them to the realtime
channels; every other item gets ``default_deadline`` (``+1d23h``: by the end of the next day) and
goes to the Batch API at half price. A batch job still running when realtime would need the
rest of the time to its deadline is cancelled and its unfinished items are rescued through the
realtime channels.

Backfilling a week (``airflow backfill create --dag-id banana_nightly_catalog --from-date …
--to-date …``) regenerates only what is missing: every run writes to one output prefix, the
plan leaves out items already done with the same request fingerprint, and the lanes skip them
again. Past deadlines in a backfill are not urgent any more: ``on_infeasible="batch"`` sends
such items to the cheap lane instead of failing the run.
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
    dag_id="banana_nightly_catalog",
    schedule="0 1 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["banana", "example"],
    params={
        "manifest_prefix": Param("gs://banana-demo/manifests", type="string"),
        "output_prefix": Param("gs://banana-demo/catalog", type="string"),
        "default_deadline": Param("+1d23h", type="string"),
        "realtime_latency": Param("60s", type="string"),
        "poll_interval_s": Param(300.0, type="number"),
    },
) as dag:
    plan = PlanImagesOperator(
        task_id="plan",
        manifest="{{ params.manifest_prefix }}/{{ ds }}.jsonl",
        output_prefix="{{ params.output_prefix }}",
        channels=REALTIME_CHANNELS,
        batch_channel=BATCH_CHANNEL,
        default_deadline="{{ params.default_deadline }}",
        realtime_latency="{{ params.realtime_latency }}",
        on_infeasible="batch",
    )

    @task.branch
    def choose_lanes(summary: Any) -> list[str]:
        return lanes_to_run(summary, realtime_task_id="heroes_realtime", batch_task_id="rest_batch")

    heroes = RealtimeImageOperator(
        task_id="heroes_realtime",
        manifest="{{ ti.xcom_pull(task_ids='plan')['realtime_manifest'] }}",
        output_prefix="{{ params.output_prefix }}",
        channels=REALTIME_CHANNELS,
    )
    rest = BatchImageOperator(
        task_id="rest_batch",
        manifest="{{ ti.xcom_pull(task_ids='plan')['batch_manifest'] }}",
        output_prefix="{{ params.output_prefix }}",
        channel=BATCH_CHANNEL,
        rescue_channels=REALTIME_CHANNELS,
        rescue_latency="{{ params.realtime_latency }}",
        poll_interval_s="{{ params.poll_interval_s }}",
    )
    choose_lanes(plan.output) >> [heroes, rest]
