"""Bench-only DAG: one realtime task with the shipped defaults, as a new user writes it.

Nothing but what a user must give (manifest, output prefix, channels) and, when the run has
one, its deadline: no router option, no objective, so ``bench/incidents.py`` measures what users
get. The channels are a templated comma-separated list of connection ids (``AIRFLOW_CONN_*``);
``deadline`` is the operator's (a duration counts from the task's start; empty = none, the
operator's soft default horizon applies).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from airflow_banana.operators import RealtimeImageOperator

with DAG(
    dag_id="banana_incident",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "manifest": Param("/tmp/manifest.jsonl", type="string"),
        "output_prefix": Param("/tmp/out", type="string"),
        "channels": Param("banana_gemini", type="string"),
        "deadline": Param("", type="string"),
    },
) as dag:
    RealtimeImageOperator(
        task_id="generate",
        manifest="{{ params.manifest }}",
        output_prefix="{{ params.output_prefix }}",
        channels="{{ params.channels }}",
        deadline="{{ params.deadline }}",
    )
