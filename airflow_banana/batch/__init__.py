"""The batch lane: Gemini Developer Batch API and Vertex batch prediction, retry-safe and streamed.

Modules: ``poll`` (the pure poll decision), ``state`` (job identity and the intent/submitted
record), ``requests`` (request lines), ``developer`` / ``vertex`` (the two backends),
``results`` (streaming harvest). Nothing here imports Airflow or google-genai at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_banana.batch.jobs import BatchBackend
    from airflow_banana.channels.config import ChannelConfig
    from airflow_banana.storage import Storage


def backend_for(config: ChannelConfig, storage: Storage) -> BatchBackend:
    """The batch backend of a channel: ``gemini`` → Developer Batch API, ``vertex`` → batch prediction."""
    from airflow_banana.exceptions import ConfigurationError

    if config.protocol == "gemini":
        from airflow_banana.batch.developer import DeveloperBatchBackend

        return DeveloperBatchBackend(config)
    if config.protocol == "vertex":
        from airflow_banana.batch.vertex import VertexBatchBackend

        return VertexBatchBackend(config, storage)
    raise ConfigurationError(
        f"channel '{config.name}': protocol {config.protocol!r} has no batch API; use a gemini or vertex "
        "connection for the batch lane (an openai relay can be a rescue channel)"
    )
