"""The Gemini Developer Batch API through google-genai: submit, get, cancel, find, harvest.

Small jobs go inline (requests in the create call, results inside the job) while the requests
stay under the 20 MB limit and the results stay small (``requests.fits_inline``); everything else
is a JSONL file uploaded through the Files API (resumable upload, written to a temporary file
first so the payload is never built in memory twice), and its results are a JSONL file that is
downloaded as a stream and harvested line by line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Sequence
from typing import Any

from airflow_banana.batch.jobs import (
    GenaiBackendBase,
    JobSnapshot,
    Submitted,
    model_of,
    sdk_error,
    snapshot_from_job,
)
from airflow_banana.batch.requests import fits_inline, inline_request, jsonl_lines
from airflow_banana.batch.results import Harvester, HarvestResult, http_lines
from airflow_banana.channels.config import DEFAULT_BASE_URLS, ChannelConfig
from airflow_banana.exceptions import BananaError, BatchJobError, ConfigurationError
from airflow_banana.models import ImageRequest

log = logging.getLogger(__name__)


class DeveloperBatchBackend(GenaiBackendBase):
    """``BatchBackend`` for a ``gemini`` connection (Developer API or a Gemini-native relay)."""

    def __init__(self, config: ChannelConfig):
        if config.protocol != "gemini":
            raise ConfigurationError(
                f"channel '{config.name}': the Developer Batch API needs protocol 'gemini', "
                f"not {config.protocol!r}"
            )
        self.config = config

    # -- submit
    def submit(
        self,
        requests: Sequence[ImageRequest],
        *,
        display_name: str,
        staging_uri: str | None,
        inline: bool | None,
    ) -> Submitted:
        model = model_of(requests, self.config)
        use_inline = fits_inline(requests) if inline is None else inline
        if use_inline:
            src: Any = [inline_request(r) for r in requests]
            input_uri = None
        else:
            input_uri = self._upload(requests, display_name)
            src = input_uri
        try:
            job = self.client.batches.create(model=model, src=src, config={"display_name": display_name})
        except BananaError:
            raise
        except Exception as err:
            raise sdk_error(self.config, f"creating batch job '{display_name}'", err) from err
        snapshot = snapshot_from_job(job)
        log.info(
            "channel %s: submitted batch job %s (%d items, %s)",
            self.config.name,
            snapshot.name,
            len(requests),
            "inline" if use_inline else f"file {input_uri}",
        )
        return Submitted(snapshot, input_uri=input_uri)

    def _upload(self, requests: Sequence[ImageRequest], display_name: str) -> str:
        fd, path = tempfile.mkstemp(prefix="banana-batch-", suffix=".jsonl")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                for line in jsonl_lines(requests):
                    out.write(line)
            try:
                uploaded = self.client.files.upload(
                    file=path, config={"display_name": display_name[:512], "mime_type": "jsonl"}
                )
            except Exception as err:
                raise sdk_error(self.config, "uploading the batch input file", err) from err
            return str(uploaded.name)
        finally:
            try:
                os.unlink(path)
            except OSError:
                log.debug("could not remove %s", path)

    def console_url(self, name: str) -> str:
        # AI Studio lists a project's batch jobs; it documents no per-job page.
        return "https://aistudio.google.com/batches"

    # -- harvest
    def harvest(
        self, snapshot: JobSnapshot, harvester: Harvester, dest_uri: str | None = None
    ) -> HarvestResult:
        if snapshot.results_file:
            with http_lines(self._download_url(snapshot.results_file), self._auth_headers()) as lines:
                return harvester.consume_text_lines(lines)
        if snapshot.has_inline_results:
            return self._harvest_inline(snapshot.name, harvester)
        # A job without results (failed, expired, cancelled before anything ran): nothing to read.
        log.info("batch job %s (%s) has no results to harvest", snapshot.name, snapshot.state.value)
        return harvester.result

    def _harvest_inline(self, name: str, harvester: Harvester) -> HarvestResult:
        # Inline results live inside the job; the job was kept small enough by fits_inline().
        try:
            job = self.client.batches.get(name=name)
        except Exception as err:
            raise sdk_error(self.config, "reading inline results", err, job=name) from err
        responses = list(getattr(getattr(job, "dest", None), "inlined_responses", None) or [])
        del job

        def dumped() -> Any:
            while responses:
                yield responses.pop(0).model_dump(mode="json", exclude_none=True)

        return harvester.consume_objects(dumped())

    def _download_url(self, file_name: str) -> str:
        base = (self.config.base_url or DEFAULT_BASE_URLS["gemini"]).rstrip("/")
        version = "v1beta"
        with contextlib.suppress(AttributeError):
            version = self.client._api_client._http_options.api_version or version
        name = file_name if file_name.startswith("files/") else f"files/{file_name}"
        if not name.startswith("files/") or "/" in name[len("files/") :]:
            raise BatchJobError(f"channel '{self.config.name}': unexpected results file name {file_name!r}")
        return f"{base}/{version}/{name}:download?alt=media"

    def _auth_headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self.config.api_key.reveal()}
