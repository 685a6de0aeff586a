"""Airflow Assets for the lanes' outputs, so catalog DAGs downstream run when new images land.

Each image operator updates, by default, one Asset per successful run: its output prefix
(``output_asset(prefix)``), with ``extra`` = what the run did (item counts, spend, the report
and gallery URIs). A DAG scheduled on ``output_asset(prefix)`` then runs after every such run
and reads those figures from ``triggering_asset_events`` instead of listing the bucket.

A DAG's outlets are fixed when it is parsed, but a templated output prefix is known only at run
time. Then the default outlet is an ``AssetAlias`` (``banana-output:{dag_id}.{task_id}``)
through which the run adds the event for its rendered prefix; the consumer side is the same
``output_asset(prefix)`` either way. Airflow records outlet events only when the task succeeds,
so a run that fails (more items without an image than ``max_failed_items``) updates nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import Asset, AssetAlias

ALIAS_PREFIX = "banana-output:"

__all__ = ["ALIAS_PREFIX", "default_outlets", "output_asset", "record_run_event", "scalar_fields"]


def output_asset(output_prefix: str) -> Asset:
    """The Asset of an output prefix, as producers emit it and consumers schedule on it.

    One spelling per prefix (no trailing slash; local paths as absolute ``file://`` URIs) and
    name = URI, so ``gs://b/catalog/`` and ``gs://b/catalog`` are the same Asset.
    """
    prefix = output_prefix.strip()
    uri = prefix.rstrip("/") if prefix.startswith(("gs://", "file://")) else Path(prefix).resolve().as_uri()
    return Asset(uri=uri, name=uri)


def is_templated(value: str) -> bool:
    return "{{" in value or "{%" in value


def default_outlets(output_prefix: str, *, dag_id: str | None, task_id: str) -> list[Asset | AssetAlias]:
    """The output prefix's Asset, or an alias to add it through when the prefix is templated."""
    if is_templated(output_prefix):
        owner = f"{dag_id}.{task_id}" if dag_id else task_id
        return [AssetAlias(name=ALIAS_PREFIX + owner)]
    return [output_asset(output_prefix)]


def record_run_event(
    context: Mapping[str, Any], outlets: Sequence[Any], *, output_prefix: str, extra: Mapping[str, Any]
) -> None:
    """Attach ``extra`` to this run's event on every Asset outlet; through every alias outlet,
    add the event for ``output_prefix`` (rendered by now). Airflow sends them when the task
    succeeds. Without ``outlet_events`` (``op.execute(context)`` in a unit test) nothing is done.
    """
    events = context.get("outlet_events")
    if events is None:
        return
    for outlet in outlets:
        if isinstance(outlet, AssetAlias):
            events[outlet].add(output_asset(output_prefix), extra=dict(extra))
        elif isinstance(outlet, Asset):
            events[outlet].extra.update(extra)


def scalar_fields(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The flat fields of an operator summary: small enough for an event's extra, lists left out."""
    return {k: v for k, v in summary.items() if v is None or isinstance(v, str | int | float | bool)}
