"""Job control of the Gemini Developer Batch API through google-genai: submit, get, cancel, find.

Small jobs go inline (requests in the create call, results inside the job) while the requests
stay under the 20 MB limit and the results stay small (``requests.fits_inline``); everything else
is a JSONL file uploaded through the Files API (resumable upload, written to a temporary file
first so the payload is never built in memory twice). Where the results are (the inline
responses, the results file's download URL) is answered here; reading them is ``batch.harvest``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_banana.batch.jobs import (
    GenaiJobControl,
    Submitted,
    model_of,
    sdk_error,
    snapshot_from_job,
)
from airflow_banana.batch.requests import fits_inline, inline_request, jsonl_lines
from airflow_banana.channels.config import DEFAULT_BASE_URLS, ChannelConfig
from airflow_banana.exceptions import BananaError, BatchJobError, ConfigurationError
from airflow_banana.models import ImageRequest

if TYPE_CHECKING:
    from airflow_banana.storage.objects import Storage

log = logging.getLogger(__name__)


class DeveloperJobControl(GenaiJobControl):
    """``JobControl`` for a ``gemini`` connection (Developer API or a Gemini-native relay)."""

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
        storage: Storage | None = None,
    ) -> Submitted:
        # staging_uri and storage are Vertex's: a file here goes through the Files API.
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

    # -- where the results are (read by batch.harvest)
    def inline_responses(self, name: str) -> list[Any]:
        """The job's inline responses (SDK objects); the job was kept small by ``fits_inline``."""
        try:
            job = self.client.batches.get(name=name)
        except Exception as err:
            raise sdk_error(self.config, "reading inline results", err, job=name) from err
        return list(getattr(getattr(job, "dest", None), "inlined_responses", None) or [])

    def download_url(self, file_name: str) -> str:
        """The media URL of a results file (``files/…``), on the channel's API version."""
        base = (self.config.base_url or DEFAULT_BASE_URLS["gemini"]).rstrip("/")
        version = "v1beta"
        with contextlib.suppress(AttributeError):
            version = self.client._api_client._http_options.api_version or version
        name = file_name if file_name.startswith("files/") else f"files/{file_name}"
        if not name.startswith("files/") or "/" in name[len("files/") :]:
            raise BatchJobError(f"channel '{self.config.name}': unexpected results file name {file_name!r}")
        return f"{base}/{version}/{name}:download?alt=media"

    def auth_headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self.config.api_key.reveal()}
