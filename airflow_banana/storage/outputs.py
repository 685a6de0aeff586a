"""The output layout and its commit protocol, shared by the realtime, batch and editing lanes.

Layout under an output prefix::

    images/{id}.{png|jpg}        the image, stored with its TRUE type (sniffed, not declared)
    metadata/{id}.json           the commit record: request fingerprint, attempts, cost, image facts
    claims/{id}.json             who is generating the item right now (``airflow_banana.realtime.claims``)
    runs/{run_key}/report.json   the run report (+ report.md, rejects.jsonl)

The metadata object is the commit record: an item counts as done only when its metadata says
``succeeded`` for the same request fingerprint and the image it names exists. Image and metadata
are written with generation preconditions, so two workers racing on one item cannot both win;
the loser learns it and records the other's result instead of overwriting it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_banana.exceptions import PreconditionFailedError
from airflow_banana.imaging import ImageInfo
from airflow_banana.models import GenerationResult, ImageRequest, expected_pixels
from airflow_banana.storage.objects import ObjectStat, Storage, join_uri, utcnow_iso
from airflow_banana.storage.report import FAILED, SUCCEEDED, ItemOutcome, attempt_dicts, render_markdown

log = logging.getLogger(__name__)
METADATA_VERSION = 1


@dataclass(frozen=True)
class ItemCheck:
    """An item id under a prefix: ``done`` (same request, its record), ``conflict`` (why another
    request's image holds the id) or neither (to generate). An id names one image per prefix."""

    done: dict[str, Any] | None = None
    conflict: str | None = None


class OutputStore:
    """Reads and writes one output prefix; every lane goes through it."""

    def __init__(self, storage: Storage, prefix: str):
        self.storage = storage
        self.prefix = prefix.rstrip("/")

    def image_uri(self, item_id: str, extension: str) -> str:
        return join_uri(self.prefix, "images", f"{item_id}.{extension}")

    def metadata_uri(self, item_id: str) -> str:
        return join_uri(self.prefix, "metadata", f"{item_id}.json")

    def claim_uri(self, item_id: str) -> str:
        return join_uri(self.prefix, "claims", f"{item_id}.json")

    def run_uri(self, run_key: str, name: str) -> str:
        return join_uri(self.prefix, "runs", run_key, name)

    # -- idempotency
    def check(self, request: ImageRequest) -> ItemCheck:
        """What the prefix already holds for ``request``'s id: its image, another request's, or nothing."""
        fingerprint = request.fingerprint()
        record = self._committed_success(request.item_id)
        if record is None:
            return ItemCheck()
        if record.get("request_fingerprint") == fingerprint:
            return ItemCheck(done=record)
        return ItemCheck(conflict=self.conflict_reason(request, record))

    def done_record(self, item_id: str, fingerprint: str) -> dict[str, Any] | None:
        """The item's committed metadata when it already succeeded for ``fingerprint``, else None."""
        record = self._committed_success(item_id)
        if record is None or record.get("request_fingerprint") != fingerprint:
            return None
        return record

    def conflict_reason(self, request: ImageRequest, other: Mapping[str, Any]) -> str:
        """Why ``request`` is not generated: its id already names another request's image."""
        where = (other.get("image") or {}).get("uri") or self.metadata_uri(request.item_id)
        by = other.get("run_key") or other.get("owner") or "another run"
        return (
            f"id '{request.item_id}' already names a different image under {self.prefix} ({where}, "
            f"from {by}, request fingerprint {str(other.get('request_fingerprint'))[:12]}; this "
            f"request's is {request.fingerprint()[:12]}): not generated, nothing spent — give the item "
            "its own id, or set force=True to replace that image"
        )

    def _committed_success(self, item_id: str) -> dict[str, Any] | None:
        """The item's metadata when it records a success whose image exists, else None."""
        stat = self.storage.stat(self.metadata_uri(item_id))
        if stat is None:
            return None
        record = self.storage.read_json(self.metadata_uri(item_id))
        if record.get("status") != SUCCEEDED:
            return None
        image = (record.get("image") or {}).get("uri")
        if not image or not self.storage.exists(image):
            return None
        return dict(record)

    # -- commits
    def commit_success(
        self,
        request: ImageRequest,
        result: GenerationResult,
        info: ImageInfo,
        outcome: ItemOutcome,
        *,
        lane: str,
        run_key: str,
        item_metadata: Mapping[str, Any] | None = None,
    ) -> tuple[str, bool]:
        """Write image then metadata; returns (image uri, whether this call won the commit).

        Losing the race means another worker committed the same item first: its record stands
        and ours is reported as a duplicate instead of overwriting a good image. The metadata
        write is conditioned on the metadata generation seen *before* the image was written,
        so a commit that lands meanwhile makes ours lose rather than overwrite it.
        """
        metadata_uri = self.metadata_uri(request.item_id)
        image_uri = self.image_uri(request.item_id, info.extension)
        seen = self.storage.stat(metadata_uri)
        if seen is not None and self.done_record(request.item_id, request.fingerprint()) is not None:
            log.warning("item '%s': already committed by another worker; keeping theirs", request.item_id)
            return image_uri, False
        try:
            image_generation = self._replace(image_uri, result.image, content_type=info.mime_type)
        except PreconditionFailedError:
            log.warning(
                "item '%s': another worker wrote %s first; keeping theirs", request.item_id, image_uri
            )
            return image_uri, False
        record = self._success_record(
            request, result, info, outcome, lane=lane, run_key=run_key, item_metadata=item_metadata
        )
        record["image"]["generation"] = image_generation
        try:
            self.storage.write_json(metadata_uri, record, **_expect(seen))
        except PreconditionFailedError:
            log.warning("item '%s': another worker committed its metadata first", request.item_id)
            return image_uri, False
        self._describe_stored_image(request, image_uri, image_generation, record)
        return image_uri, True

    def _success_record(
        self,
        request: ImageRequest,
        result: GenerationResult,
        info: ImageInfo,
        outcome: ItemOutcome,
        *,
        lane: str,
        run_key: str,
        item_metadata: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        width, height = expected_pixels(request.image_size, request.aspect_ratio)
        record = self._record(request, outcome, lane=lane, run_key=run_key, item_metadata=item_metadata)
        record.update(
            status=SUCCEEDED,
            channel=result.channel,
            finish_reason=result.finish_reason,
            tokens=result.usage.as_dict(),
            text=result.text,
            image={
                "uri": self.image_uri(request.item_id, info.extension),
                "sha256": result.sha256,
                "mime_type": info.mime_type,
                "declared_mime_type": result.declared_mime_type,
                "width": info.width,
                "height": info.height,
                "expected_width": width,
                "expected_height": height,
                "size_matches": (info.width, info.height) == (width, height),
                "bytes": len(result.image),
            },
        )
        if request.grounding:
            # what the image was grounded in: search queries, sources (uri + title), entry point
            record["grounding_metadata"] = result.grounding
        return record

    def _describe_stored_image(
        self, request: ImageRequest, image_uri: str, generation: int, record: dict[str, Any]
    ) -> None:
        """If a racing writer replaced the image after ours, make the metadata describe what is stored."""
        stat = self.storage.stat(image_uri)
        if stat is None or stat.generation == generation:
            return
        data, current = self.storage.read_with_generation(image_uri)
        record["image"].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), generation=current)
        log.warning(
            "item '%s': %s was replaced by a concurrent worker; metadata updated", request.item_id, image_uri
        )
        meta = self.storage.stat(self.metadata_uri(request.item_id))
        try:
            self.storage.write_json(self.metadata_uri(request.item_id), record, **_expect(meta))
        except PreconditionFailedError:
            log.warning(
                "item '%s': metadata changed again while describing the image; left as is", request.item_id
            )

    def commit_failure(
        self,
        request: ImageRequest,
        outcome: ItemOutcome,
        *,
        lane: str,
        run_key: str,
        item_metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Record why an item has no image — unless a success is already committed for it."""
        if self.done_record(request.item_id, request.fingerprint()) is not None:
            return
        record = self._record(request, outcome, lane=lane, run_key=run_key, item_metadata=item_metadata)
        record.update(status=outcome.status if outcome.status != SUCCEEDED else FAILED, reason=outcome.reason)
        try:
            self._replace(self.metadata_uri(request.item_id), record, json_value=True)
        except PreconditionFailedError:
            log.info("item '%s': metadata changed while recording a failure; leaving it", request.item_id)

    def write_report(self, run_key: str, report: Mapping[str, Any]) -> str:
        """report.json + report.md under runs/{run_key}/; returns the report.json URI."""
        uri = self.run_uri(run_key, "report.json")
        self.storage.write_json(uri, dict(report))
        self.storage.write_text(
            self.run_uri(run_key, "report.md"),
            render_markdown(report),
            content_type="text/markdown; charset=utf-8",
        )
        return uri

    def write_rejects(self, run_key: str, jsonl: str) -> str:
        uri = self.run_uri(run_key, "rejects.jsonl")
        self.storage.write_text(uri, jsonl, content_type="application/x-ndjson")
        return uri

    # -- helpers
    @staticmethod
    def _record(
        request: ImageRequest,
        outcome: ItemOutcome,
        *,
        lane: str,
        run_key: str,
        item_metadata: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        return {
            "metadata_version": METADATA_VERSION,
            "item_id": request.item_id,
            "request_fingerprint": request.fingerprint(),
            "prompt": request.prompt,
            "image_size": request.image_size,
            "aspect_ratio": request.aspect_ratio,
            # the model that made the image (a model tier's channel may be another than asked)
            "model": outcome.model or request.model,
            "requested_models": list(request.allowed_models),
            "reference_images": [r.uri for r in request.reference_images],
            # which policy applied: official_only items went to official Google channels only
            "data_policy": request.data_policy,
            "grounding": request.grounding,
            "lane": lane,
            "run_key": run_key,
            # billed (the truth); the estimate is what the router ranked by (configured prices)
            "cost_usd": round(outcome.cost_usd, 6),
            "estimated_cost_usd": round(outcome.estimated_cost_usd, 6),
            "cost_source": outcome.cost_source,
            "attempts": attempt_dicts(outcome.attempts),
            "latency_s": outcome.latency_s,
            "written_at": utcnow_iso(),
            "item_metadata": dict(item_metadata or {}),
        }

    def _replace(
        self, uri: str, value: Any, *, content_type: str | None = None, json_value: bool = False
    ) -> int:
        """Write ``uri`` only over the generation we saw (or only if absent): no blind overwrite."""
        kwargs = _expect(self.storage.stat(uri))
        if json_value:
            return self.storage.write_json(uri, value, **kwargs)
        return self.storage.write_bytes(uri, value, content_type=content_type, **kwargs)


def _expect(stat: ObjectStat | None) -> dict[str, Any]:
    """Write-precondition kwargs: create-only when absent, else replace exactly that generation."""
    return {"if_absent": True} if stat is None else {"if_generation_match": stat.generation}
