"""Vertex AI batch prediction through google-genai (``vertexai=True``): JSONL in, JSONL out, in GCS.

The input JSONL is written to ``{staging}/input.jsonl`` and the job writes its predictions under
``{staging}/output/`` (``prediction-model-<timestamp>/predictions*.jsonl``). Results are read
with ``Storage.iter_lines`` — streamed in bounded chunks, never loaded whole (FAULTS.md B7).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from airflow_banana.batch.jobs import (
    GenaiBackendBase,
    JobSnapshot,
    Submitted,
    model_of,
    sdk_error,
    snapshot_from_job,
)
from airflow_banana.batch.requests import jsonl_lines
from airflow_banana.batch.results import Harvester, HarvestResult
from airflow_banana.channels.config import ChannelConfig
from airflow_banana.exceptions import BananaError, ConfigurationError
from airflow_banana.models import ImageRequest
from airflow_banana.storage import Storage, join_uri

log = logging.getLogger(__name__)


class VertexBatchBackend(GenaiBackendBase):
    """``BatchBackend`` for a ``vertex`` connection; ``storage`` reads and writes the GCS staging area."""

    def __init__(self, config: ChannelConfig, storage: Storage):
        if config.protocol != "vertex":
            raise ConfigurationError(
                f"channel '{config.name}': Vertex batch prediction needs protocol 'vertex', "
                f"not {config.protocol!r}"
            )
        self.config = config
        self.storage = storage

    def submit(
        self,
        requests: Sequence[ImageRequest],
        *,
        display_name: str,
        staging_uri: str | None,
        inline: bool | None,
    ) -> Submitted:
        if not staging_uri or not staging_uri.startswith("gs://"):
            raise ConfigurationError(
                f"channel '{self.config.name}': Vertex batch needs a gs:// staging prefix (operator argument "
                f"gcs_staging_prefix), got {staging_uri!r}; nothing was submitted"
            )
        model = model_of(requests, self.config)
        input_uri = join_uri(staging_uri, "input.jsonl")
        dest_uri = join_uri(staging_uri, "output") + "/"
        self.storage.write_text(
            input_uri, "".join(jsonl_lines(requests)), content_type="application/x-ndjson"
        )
        try:
            job = self.client.batches.create(
                model=model, src=input_uri, config={"display_name": display_name, "dest": dest_uri}
            )
        except BananaError:
            raise
        except Exception as err:
            raise sdk_error(self.config, f"creating batch prediction job '{display_name}'", err) from err
        snapshot = snapshot_from_job(job)
        log.info(
            "channel %s: submitted batch prediction job %s (%d items, input %s)",
            self.config.name,
            snapshot.name,
            len(requests),
            input_uri,
        )
        return Submitted(snapshot, input_uri=input_uri, dest_uri=dest_uri)

    def console_url(self, name: str) -> str:
        job_id = name.rsplit("/", 1)[-1]
        return (
            f"https://console.cloud.google.com/vertex-ai/locations/{self.config.location}/batch-predictions/"
            f"{job_id}?project={self.config.project}"
        )

    def result_uris(self, snapshot: JobSnapshot, dest_uri: str | None) -> list[str]:
        """Every predictions JSONL of the job (a job may shard its output)."""
        folder = snapshot.output_dir or dest_uri
        if not folder:
            return []
        found = [
            uri
            for uri in self.storage.list(folder.rstrip("/") + "/")
            if uri.rsplit("/", 1)[-1].startswith("predictions") and uri.endswith(".jsonl")
        ]
        return sorted(found)

    def harvest(
        self, snapshot: JobSnapshot, harvester: Harvester, dest_uri: str | None = None
    ) -> HarvestResult:
        uris = self.result_uris(snapshot, dest_uri)
        if not uris:
            log.info(
                "batch prediction job %s (%s) has no predictions to harvest",
                snapshot.name,
                snapshot.state.value,
            )
        for uri in uris:
            harvester.consume_text_lines(self.storage.iter_lines(uri))
        return harvester.result
