"""A catalog that lets cheap thumbnails go to Flash Image and keeps Pro for the rest.

One feature: model tiers. Flash Image (``gemini-2.5-flash-image``, "Nano Banana") is ~3x
cheaper ($0.039 vs $0.134) and 3-4x faster than Nano Banana Pro, but draws 1K only and is weaker
at exact text. Here every item allows it as a fallback (``defaults={"fallback_models": [...]}``),
so the cost-first router sends the 1K items to Flash -- and to Pro when Flash is failing or
cannot make the deadline -- while 2K/4K items (and any item that says ``"fallback_models": []``,
e.g. a label with exact text) stay on Pro. Each item's metadata records the model that made it.

The connection declares the model tier: ``banana_gemini``'s extra has
``"models": {"gemini-2.5-flash-image": {}}`` (optionally with its own ``prices`` and ``rpm``:
Google's quotas are per model), which makes it two router channels, ``banana_gemini`` (Pro) and
``banana_gemini/gemini-2.5-flash-image``, each with its own breaker and limiter.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from airflow_banana.operators import RealtimeImageOperator

with DAG(
    dag_id="banana_tiered_catalog",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["banana", "example"],
    params={
        "manifest": Param("gs://banana-demo/manifests/tiered.jsonl", type="string"),
        "output_prefix": Param("gs://banana-demo/tiered", type="string"),
    },
) as dag:
    RealtimeImageOperator(
        task_id="generate_images",
        manifest="{{ params.manifest }}",
        output_prefix="{{ params.output_prefix }}",
        channels=["banana_gemini"],
        defaults={"fallback_models": ["gemini-2.5-flash-image"]},
        progress_interval_s=5.0,
    )
