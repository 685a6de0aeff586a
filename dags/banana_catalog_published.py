"""Publish the catalog whenever new images land: a DAG scheduled on the image lane's Asset.

One feature: data-aware scheduling. ``banana_catalog_realtime`` (and every image operator)
updates the Asset of its output prefix when its run succeeds, with the run's figures as the
event's ``extra``; this DAG is scheduled on that Asset (``output_asset(prefix)``), so it runs
after each such run and reads counts, spend, report and gallery from the triggering events
instead of listing the bucket. Unpause it to have the scheduler trigger it.
"""

from __future__ import annotations

import logging
from typing import Any

import pendulum
from airflow.sdk import DAG, task

from airflow_banana.operators.assets import output_asset

log = logging.getLogger(__name__)
CATALOG = output_asset("gs://banana-demo/catalog")

with DAG(
    dag_id="banana_catalog_published",
    schedule=[CATALOG],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["banana", "example", "assets"],
) as dag:

    @task(inlets=[CATALOG])
    def publish(*, triggering_asset_events: Any = None) -> list[dict[str, Any]]:
        """One line per image run that triggered this one; a real DAG would refresh a CDN or
        a product feed here, and could stop when ``items.failed`` is not 0."""
        runs = []
        for event in (triggering_asset_events or {}).get(CATALOG, []):
            extra = event.extra or {}
            runs.append(
                {
                    "run_key": extra.get("run_key"),
                    "items": extra.get("items"),
                    "spent_usd": extra.get("spent_usd"),
                    "report_uri": extra.get("report_uri"),
                    "gallery_uri": extra.get("gallery_uri"),
                }
            )
            log.info(
                "new images in %s: %s; report %s", CATALOG.uri, extra.get("items"), extra.get("report_uri")
            )
        return runs

    publish()
