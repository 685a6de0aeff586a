"""A large catalog split into manifest shards: one mapped realtime task per shard.

One feature: dynamic task mapping. ``list_shards`` lists the ``*.jsonl`` manifests under a
prefix, and ``RealtimeImageOperator.partial(...).expand(manifest=...)`` runs one task instance
per shard, in parallel, all writing into the same output prefix. An id names one image under
the prefix: a shard whose request for an id differs from the image already there fails that
item before any call (give each image its own id). Each mapped instance has its own
run identity (``map_index`` is part of it), so each writes its own report under
``runs/{dag}__{task}__{run}__m{N}/``, a retried shard skips what it already finished, and
``budget_usd`` caps each shard separately.

Channels are the same three ``banana`` connections as ``banana_catalog_realtime``: the
relay, Google direct and Vertex AI. Within a task the router shares per-channel limits across
that shard's items only; share them across shards through Redis (``redis_conn_id``,
docs/scaling.md), or keep each channel's ``rpm``/``max_concurrency`` at its share of the
provider's cap (cap / number of shards running at once).
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_banana.operators import RealtimeImageOperator

with DAG(
    dag_id="banana_catalog_sharded",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["banana", "example"],
    params={
        "shards_prefix": Param("gs://banana-demo/manifests/shards/", type="string"),
        "output_prefix": Param("gs://banana-demo/catalog", type="string"),
        "budget_usd_per_shard": Param(5.0, type="number"),
    },
) as dag:

    @task
    def list_shards(**context: Any) -> list[str]:
        """Every ``*.jsonl`` manifest under the prefix, sorted, so map indexes are stable."""
        from airflow_banana.hooks.storage import storage_for

        prefix = str(context["params"]["shards_prefix"])
        storage = storage_for(prefix)
        shards = sorted(uri for uri in storage.list(prefix) if uri.endswith(".jsonl"))
        if not shards:
            raise ValueError(f"no *.jsonl manifest shards under {prefix}; nothing to generate")
        return shards

    RealtimeImageOperator.partial(
        task_id="generate_shard",
        output_prefix="{{ params.output_prefix }}",
        channels=["banana_relay", "banana_gemini", "banana_vertex"],
        budget_usd="{{ params.budget_usd_per_shard }}",
        progress_interval_s=5.0,
    ).expand(manifest=list_shards())
