"""A compliance catalog: every image made through Google's own channels only, never a relay.

One feature: ``data_policy: official_only``. Healthcare, finance and government catalogs may not
let a third-party relay see their prompts and images. Set it for a whole run through the
operator's ``defaults`` (as here), in a manifest's ``defaults`` line, or per item; the strictest
level wins, so an item cannot opt out. The router then treats the relay as if it did not exist
for these items -- however cheap and healthy it is, however badly Google is overloaded -- and
fails over between Google direct and Vertex AI only. With no official channel configured the
task fails before anything is sent, naming the items. The report, report.md, the gallery and
every item's metadata say which policy applied.

A channel is official when it is Google direct (``gemini`` on ``*.googleapis.com``) or Vertex
AI; ``extra.official`` overrides that (``make demo`` sets it on its simulator channels).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from airflow_banana.operators import RealtimeImageOperator

with DAG(
    dag_id="banana_compliance_catalog",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["banana", "example"],
    params={
        "manifest": Param("gs://banana-demo/manifests/leaflets.jsonl", type="string"),
        "output_prefix": Param("gs://banana-demo/leaflets", type="string"),
    },
) as dag:
    RealtimeImageOperator(
        task_id="generate_images",
        manifest="{{ params.manifest }}",
        output_prefix="{{ params.output_prefix }}",
        # the relay stays configured for other DAGs; official-only items never reach it
        channels=["banana_relay", "banana_gemini", "banana_vertex"],
        defaults={"data_policy": "official_only"},
        progress_interval_s=5.0,
    )
