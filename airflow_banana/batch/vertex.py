"""Job control of Vertex AI batch prediction through google-genai (``vertexai=True``).

JSONL in, JSONL out, in GCS: ``submit`` writes the input JSONL to ``{staging}/input.jsonl``
through the storage it is given, and the job writes its predictions under ``{staging}/output/``
(``prediction-model-<timestamp>/predictions*.jsonl``), which ``batch.harvest`` reads. Polling,
cancelling and finding need no storage, so this module imports none at import time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from airflow_banana.batch.jobs import (
    GenaiJobControl,
    Submitted,
    model_of,
    sdk_error,
    snapshot_from_job,
)
from airflow_banana.batch.requests import jsonl_lines
from airflow_banana.channels.config import ChannelConfig
from airflow_banana.exceptions import BananaError, ConfigurationError
from airflow_banana.models import ImageRequest

if TYPE_CHECKING:
    from airflow_banana.storage.objects import Storage

log = logging.getLogger(__name__)


class VertexJobControl(GenaiJobControl):
    """``JobControl`` for a ``vertex`` connection."""

    def __init__(self, config: ChannelConfig):
        if config.protocol != "vertex":
            raise ConfigurationError(
                f"channel '{config.name}': Vertex batch prediction needs protocol 'vertex', "
                f"not {config.protocol!r}"
            )
        self.config = config

    def submit(
        self,
        requests: Sequence[ImageRequest],
        *,
        display_name: str,
        staging_uri: str | None,
        inline: bool | None,
        storage: Storage | None = None,
    ) -> Submitted:
        from airflow_banana.storage.objects import join_uri

        if storage is None:
            raise ConfigurationError(
                f"channel '{self.config.name}': Vertex batch writes its input to GCS and was given no "
                "storage to write with; nothing was submitted"
            )
        if not staging_uri or not staging_uri.startswith("gs://"):
            raise ConfigurationError(
                f"channel '{self.config.name}': Vertex batch needs a gs:// staging prefix (operator argument "
                f"gcs_staging_prefix), got {staging_uri!r}; nothing was submitted"
            )
        model = model_of(requests, self.config)
        input_uri = join_uri(staging_uri, "input.jsonl")
        dest_uri = join_uri(staging_uri, "output") + "/"
        storage.write_text(input_uri, "".join(jsonl_lines(requests)), content_type="application/x-ndjson")
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
