"""Everything checked before the first paid call: manifest, reference images, deadlines.

Every lane starts here, so bad input fails (or is quarantined) before any money is spent:
schema and id problems come from the manifest reader, reference-image problems (missing, not an
image, too large) are found by loading every reference image up front.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from airflow_banana.exceptions import ManifestError, ReferenceImageError
from airflow_banana.manifests import (
    ManifestItem,
    ManifestLimits,
    OnInvalid,
    limits_from_env,
    load_reference_images,
    read_manifest,
)
from airflow_banana.manifests.packed import PackedItems
from airflow_banana.realtime.engine import WorkItem
from airflow_banana.storage.objects import Storage

log = logging.getLogger(__name__)
MAX_REASONS = 20  # rejects quoted in reports; every one is in rejects.jsonl


@dataclass(frozen=True)
class PreparedManifest:
    uri: str
    work: list[WorkItem]
    items: Sequence[ManifestItem]  # packed: the realtime and batch lanes only need ``work``
    rejects_jsonl: str  # empty when nothing was quarantined
    rejected: int
    # "line N (item 'x') field 'f': why" for the first rejected lines (errors and reports quote them)
    reject_reasons: tuple[str, ...] = ()


def prepare_manifest(
    uri: str,
    storage: Storage,
    *,
    on_invalid: OnInvalid = "reject",
    defaults: Mapping[str, Any] | None = None,
    logical_date: datetime,
    limits: ManifestLimits | None = None,
) -> PreparedManifest:
    """Read and check the manifest at ``uri`` and load every reference image; raise or quarantine.

    ``limits`` (sizes of lines, prompts, metadata, requests) default to the ``BANANA_*``
    environment overrides of the built-in defaults (``manifests.limits``).
    """
    limits = limits or limits_from_env()
    result = read_manifest(uri, storage, on_invalid=on_invalid, defaults=dict(defaults or {}), limits=limits)
    rejects = [result.rejects_jsonl()] if result.rejects else []
    rejected = len(result.rejects)
    reasons = [_reject_reason(r.line, r.item_id, r.field, r.reason) for r in result.rejects[:MAX_REASONS]]
    work: list[WorkItem] = []
    items = PackedItems()
    problems: list[str] = []
    for item in result.items:
        try:
            refs = load_reference_images(item, storage, limits=limits)
        except ReferenceImageError as err:
            if on_invalid == "reject":
                problems.append(str(err))
                continue
            rejected += 1
            if len(reasons) < MAX_REASONS:  # err already names the item
                reasons.append(_reject_reason(item.line, None, "reference_images", str(err)))
            rejects.append(
                json.dumps(
                    {"line": item.line, "item_id": item.id, "reason": str(err), "field": "reference_images"}
                )
                + "\n"
            )
            continue
        items.append(item)
        work.append(
            WorkItem(
                request=item.to_request(refs),
                deadline=item.deadline_at(logical_date),
                item_metadata=item.metadata,
            )
        )
    if problems:
        raise ManifestError(
            "reference images cannot be used, nothing was spent: " + "; ".join(problems[:20]), manifest=uri
        )
    if rejected:
        log.warning("%s: %d item(s) quarantined; see rejects.jsonl in the run folder", uri, rejected)
    log.info("%s: %d item(s) ready", uri, len(work))
    return PreparedManifest(
        uri=uri,
        work=work,
        items=items,
        rejects_jsonl="".join(rejects),
        rejected=rejected,
        reject_reasons=tuple(reasons),
    )


def _reject_reason(line: int, item_id: str | None, field: str | None, reason: str) -> str:
    where = f"line {line}" + (f" (item '{item_id}')" if item_id else "")
    return f"{where}{f' field {field!r}' if field else ''}: {reason}"
