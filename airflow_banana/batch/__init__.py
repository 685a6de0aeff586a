"""The batch lane: Gemini Developer Batch API and Vertex batch prediction, retry-safe and streamed.

Modules: ``poll`` (the pure poll decision), ``state`` (job identity and the intent/submitted
record), ``requests`` (request lines), ``jobs`` with ``developer`` / ``vertex`` (job control:
submit, get, cancel, find — a channel config is all it needs, so the trigger holds only this),
``harvest`` (reading an ended job's results), ``results`` (committing them line by line) and
``ending`` (the run's second half: how the job ended, harvest and rescue, the turnaround record).
Nothing here imports Airflow or google-genai at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_banana.batch.jobs import JobControl
    from airflow_banana.channels.config import ChannelConfig


def job_control_for(config: ChannelConfig) -> JobControl:
    """The job control of a channel: ``gemini`` → Developer Batch API, ``vertex`` → batch prediction."""
    from airflow_banana.exceptions import ConfigurationError

    if config.protocol == "gemini":
        from airflow_banana.batch.developer import DeveloperJobControl

        return DeveloperJobControl(config)
    if config.protocol == "vertex":
        from airflow_banana.batch.vertex import VertexJobControl

        return VertexJobControl(config)
    raise ConfigurationError(
        f"channel '{config.name}': protocol {config.protocol!r} has no batch API; use a gemini or vertex "
        "connection for the batch lane (an openai relay can be a rescue channel)"
    )


def job_control_for_connection(conn_id: str) -> JobControl:
    """The job control of ``banana`` connection ``conn_id`` (blocking: reads the connection)."""
    from airflow_banana.hooks.channel import BananaChannelHook

    return job_control_for(BananaChannelHook(conn_id).get_config())
