"""Streaming harvest of a batch job's results: one line in, one committed image (or reason) out.

Results arrive as JSONL from GCS (Vertex ``predictions.jsonl``) or the Files API (Developer
``responsesFile``), or as the inline responses of a small Developer job. Whatever the source,
lines are consumed one at a time: decoded, checked exactly as the realtime lane checks an answer
(``channels.gemini.parse_generate_response`` + ``result_from_parsed``, then
``imaging.inspect_image``), and committed through the ``OutputStore`` with lane ``batch`` and the
batch price — then dropped. Only a small ``ItemOutcome`` per item stays in memory, so memory does
not grow with the number or size of the images (FAULTS.md B7); a per-line error is recorded for
its item and the others go on (B6).

The three line shapes (GEMINI_WIRE.md)::

    Developer file   {"key": id, "response": {...}}  |  {"key": id, "error": {"code", "message"}}
    Developer inline {"response": {...}, "metadata": {"key": id}}  |  {"error": {...}, "metadata": {...}}
    Vertex           {"key": id, "status": "" | "<error text>", "request": {...}, "response": {...}}
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from airflow_banana.channels.config import ChannelConfig
from airflow_banana.channels.gemini import parse_generate_response, result_from_parsed
from airflow_banana.exceptions import ChannelError, ImageValidationError, StorageError
from airflow_banana.imaging import inspect_image
from airflow_banana.models import ImageRequest, expected_pixels
from airflow_banana.pricing import LIST_PRICES
from airflow_banana.storage.objects import split_lines
from airflow_banana.storage.outputs import OutputStore
from airflow_banana.storage.report import FAILED, SUCCEEDED, Attempt, ItemOutcome

log = logging.getLogger(__name__)
LANE = "batch"


@dataclass(frozen=True)
class ResultLine:
    """One decoded result: the item key and either a response body or an error text."""

    key: str | None
    response: Mapping[str, Any] | None
    error: str | None


def _error_text(error: Any) -> str:
    if isinstance(error, Mapping):
        code = error.get("code")
        message = error.get("message") or error.get("status") or "error"
        return f"{code}: {message}" if code else str(message)
    return str(error)


def decode_line(obj: Mapping[str, Any]) -> ResultLine:
    """Any of the three result shapes (module docstring) as a ``ResultLine``."""
    metadata = obj.get("metadata")
    key = obj.get("key")
    if key is None and isinstance(metadata, Mapping):
        key = metadata.get("key")
    error = obj.get("error")
    status = obj.get("status")
    if error:
        return ResultLine(str(key) if key is not None else None, None, _error_text(error))
    if isinstance(status, str) and status.strip():
        return ResultLine(str(key) if key is not None else None, None, status.strip())
    response = obj.get("response")
    if not isinstance(response, Mapping):
        return ResultLine(str(key) if key is not None else None, None, "result line has no response")
    return ResultLine(str(key) if key is not None else None, response, None)


def batch_config(config: ChannelConfig) -> ChannelConfig:
    """The channel's config priced at the batch list price (50 % of realtime; PRICING.md)."""
    return replace(config, prices=dict(LIST_PRICES["batch"]), billed_on_failure=False)


@dataclass
class HarvestResult:
    """What a harvest produced. ``outcomes`` hold no image bytes; ``missing`` had no result line."""

    outcomes: dict[str, ItemOutcome] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # item id -> reason (per-line errors)
    lines: int = 0
    unreadable_lines: int = 0
    unknown_keys: int = 0

    def missing(self, item_ids: Iterable[str]) -> list[str]:
        return [i for i in item_ids if i not in self.outcomes and i not in self.failed]


class Harvester:
    """Consumes result lines for one job and commits each item; see the module docstring.

    ``requests`` maps item id to its request (the same objects that were submitted: the key is
    the item id). Items already committed with the same request fingerprint (an earlier try of
    this task harvested them) are counted as succeeded without writing again.
    """

    def __init__(
        self,
        *,
        store: OutputStore,
        run_key: str,
        requests: Mapping[str, ImageRequest],
        config: ChannelConfig,
        item_metadata: Mapping[str, Mapping[str, Any]] | None = None,
        on_progress: Callable[[int], None] | None = None,
        submitted_at: str = "",
    ):
        self.store = store
        # A batch line has no start of its own: its attempt started when the job was submitted.
        self.submitted_at = submitted_at
        self.run_key = run_key
        self.requests = requests
        self.config = batch_config(config)
        self.item_metadata = item_metadata or {}
        self.on_progress = on_progress
        self.result = HarvestResult()

    # -- sources
    def consume_text_lines(self, lines: Iterable[str | bytes]) -> HarvestResult:
        """JSONL lines (str or bytes), e.g. ``Storage.iter_lines`` or :func:`iter_stream_lines`."""
        for raw in lines:
            if not raw or not raw.strip():
                continue
            self.result.lines += 1
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                self.result.unreadable_lines += 1
                log.warning("batch result line %d is not JSON (%s); skipped", self.result.lines, err)
                continue
            if not isinstance(obj, Mapping):
                self.result.unreadable_lines += 1
                continue
            self.consume_one(obj)
        return self.result

    def consume_objects(self, objects: Iterable[Mapping[str, Any]]) -> HarvestResult:
        """Already-decoded result objects (inline responses dumped to JSON dicts)."""
        for obj in objects:
            self.result.lines += 1
            self.consume_one(obj)
        return self.result

    # -- one line
    def consume_one(self, obj: Mapping[str, Any]) -> None:
        line = decode_line(obj)
        request = self.requests.get(line.key) if line.key is not None else None
        if request is None:
            self.result.unknown_keys += 1
            log.warning("batch result for unknown key %r (not in this job's items); ignored", line.key)
            return
        item_id = request.item_id
        if item_id in self.result.outcomes:
            log.warning("item '%s': a second result line in the job output; the first one stands", item_id)
            return
        if line.error is not None:
            self._failed(request, line.error)
        else:
            assert line.response is not None
            self._succeeded(request, line.response)
        if self.on_progress is not None and self.result.lines % 50 == 0:
            self.on_progress(self.result.lines)

    def _failed(self, request: ImageRequest, reason: str) -> None:
        # Failed lines are not billed by Google; the item may still be rescued by realtime.
        self.result.failed[request.item_id] = reason
        log.info("item '%s': batch line failed: %s", request.item_id, reason)

    def _succeeded(self, request: ImageRequest, response: Mapping[str, Any]) -> None:
        config = self.config
        price = config.prices[request.image_size]
        done = self.store.done_record(request.item_id, request.fingerprint())
        if done is not None:
            self.result.outcomes[request.item_id] = ItemOutcome(
                request.item_id,
                SUCCEEDED,
                request.image_size,
                channel=config.name,
                cost_usd=price,
                image_uri=(done.get("image") or {}).get("uri"),
                reason="harvested by an earlier try of this task",
                attempts=[
                    Attempt(
                        channel=config.name,
                        outcome="success",
                        latency_s=0.0,
                        cost_usd=price,
                        billed=True,
                        started_at=self.submitted_at,
                    )
                ],
                size_matches=(done.get("image") or {}).get("size_matches"),
            )
            return
        try:
            parsed = parse_generate_response(response)
            result = result_from_parsed(parsed, config=config, request=request, latency_s=0.0)
            info = inspect_image(result.image)
        except ChannelError as err:
            self._failed(request, err.reason)
            return
        except ValueError as err:  # parse_generate_response: malformed shape
            self._failed(request, f"malformed response: {err}")
            return
        except ImageValidationError as err:
            self._failed(request, f"image does not decode: {err}")
            return
        size_matches = (info.width, info.height) == expected_pixels(request.image_size, request.aspect_ratio)
        outcome = ItemOutcome(
            request.item_id,
            SUCCEEDED,
            request.image_size,
            channel=config.name,
            cost_usd=result.cost_usd,
            attempts=[
                Attempt(
                    channel=config.name,
                    outcome="success",
                    latency_s=0.0,
                    started_at=self.submitted_at,
                    cost_usd=result.cost_usd,
                    billed=True,
                )
            ],
            size_matches=size_matches,
        )
        image_uri, won = self.store.commit_success(
            request,
            result,
            info,
            outcome,
            lane=LANE,
            run_key=self.run_key,
            item_metadata=self.item_metadata.get(request.item_id),
        )
        outcome.image_uri = image_uri
        if not won:
            outcome.reason = "another worker committed this item first; its image was kept"
        self.result.outcomes[request.item_id] = outcome

    def failure_outcome(self, item_id: str, reason: str, *, status: str = FAILED) -> ItemOutcome:
        request = self.requests[item_id]
        return ItemOutcome(
            item_id,
            status,
            request.image_size,
            reason=reason,
            attempts=[
                Attempt(
                    channel=self.config.name,
                    outcome="failed",
                    latency_s=0.0,
                    reason=reason,
                    started_at=self.submitted_at,
                )
            ],
        )


class _IterStream:
    """A read()-able view over an iterator of byte chunks (an HTTP body), for ``split_lines``."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks

    def read(self, size: int = -1) -> bytes:
        for chunk in self._chunks:
            if chunk:
                return chunk
        return b""


def iter_stream_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines from a stream of byte chunks, holding at most one chunk plus the longest line."""
    stream: Any = _IterStream(iter(chunks))
    return split_lines(stream)


@contextlib.contextmanager
def http_lines(
    url: str, headers: Mapping[str, str], *, timeout_s: float = 300.0
) -> Iterator[Iterator[bytes]]:
    """Stream a downloaded result file line by line (the SDK's download reads it whole in 2.x).

    Error texts are scrubbed of the header values (the key) in case a server echoes them.
    """
    import httpx

    from airflow_banana.secrets import scrub

    where = url.split("?")[0]
    try:
        with (
            httpx.Client(timeout=httpx.Timeout(timeout_s, connect=30.0)) as client,
            client.stream("GET", url, headers=dict(headers)) as response,
        ):
            if response.status_code != 200:
                response.read()
                raise StorageError(
                    f"downloading batch results {where} failed with HTTP "
                    f"{response.status_code}: {scrub(response.text[:200], headers.values())}; "
                    "a retry downloads again"
                )
            yield iter_stream_lines(response.iter_bytes(1024 * 1024))
    except httpx.HTTPError as err:
        raise StorageError(
            f"downloading batch results {where} failed ({type(err).__name__}); a retry downloads again"
        ) from err
