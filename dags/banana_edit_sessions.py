"""Edit a mapped set of product photos over several turns, keeping Gemini's thought signatures.

One feature: ``SignatureEditOperator`` under dynamic task mapping. ``photograph`` starts one edit
session per product (text to image); ``edit`` — another task, another process, possibly another
day — restores each session from storage byte-identical and applies three templated edit
instructions, each one a real edit of the previous image (not a fresh generation). A retried
task skips every turn already stored, so nothing is paid twice.

Sessions only run on channels that keep signatures (``gemini``/``vertex``) and serve the same
model; an OpenAI-format relay would be refused before anything is sent. ``make demo`` defines
the connections as ``AIRFLOW_CONN_*`` variables pointing at the offline simulator.
"""

from __future__ import annotations

import re
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_banana.operators import SignatureEditOperator

PRODUCTS = [
    f"{color} {item}"
    for color in ("red", "teal", "amber", "ivory")
    for item in (
        "sneaker",
        "handbag",
        "wristwatch",
        "desk lamp",
        "ceramic mug",
        "sunglasses",
        "backpack",
        "headphones",
        "water bottle",
        "armchair",
        "umbrella",
        "notebook",
        "scarf",
        "teapot",
        "bicycle helmet",
        "table clock",
        "candle",
        "vase",
        "wallet",
        "hoodie",
        "keyboard",
        "skateboard",
        "rain boot",
        "kettle",
        "camera",
    )
]  # 100 products
CHANNELS = ["banana_gemini", "banana_vertex"]


def continue_session(start: dict[str, str]) -> dict[str, str]:
    """The edit task continues a session by id alone: its start is already stored."""
    return {"session_id": start["session_id"]}


with DAG(
    dag_id="banana_edit_sessions",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["banana", "example"],
    params={
        "output_prefix": Param("gs://banana-demo/edits", type="string"),
        "products": Param(PRODUCTS, type="array"),
        "background": Param("a seamless pale-grey studio sweep", type="string"),
        "budget_usd": Param(2.0, type="number", description="per mapped task (one session)"),
    },
) as dag:

    @task
    def plan(params: dict[str, Any] | None = None) -> list[dict[str, str]]:
        """One session per product: its id (safe for object names) and its opening prompt."""
        assert params is not None
        starts = []
        for product in params["products"]:
            session_id = re.sub(r"[^A-Za-z0-9._-]+", "-", str(product)).strip("-.").lower()
            starts.append({"session_id": session_id, "prompt": f"A catalog photo of a {product}, centred."})
        return starts

    starts = plan()

    photograph = SignatureEditOperator.partial(
        task_id="photograph",
        channels=CHANNELS,
        output_prefix="{{ params.output_prefix }}",
        image_size="1K",
        aspect_ratio="4:5",
        budget_usd="{{ params.budget_usd }}",
    ).expand_kwargs(starts)

    edit = SignatureEditOperator.partial(
        task_id="edit",
        channels=CHANNELS,
        output_prefix="{{ params.output_prefix }}",
        instructions=[
            "Replace the background with {{ params.background }}.",
            "Add a soft contact shadow under the product.",
            "Warm the colour temperature slightly; keep the product unchanged.",
        ],
        budget_usd="{{ params.budget_usd }}",
    ).expand_kwargs(starts.map(continue_session))

    photograph >> edit
