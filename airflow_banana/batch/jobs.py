"""Job control of a batch job (Developer Batch API or Vertex batch prediction): submit, get, cancel, find.

Built from a channel config alone, so the trigger (which only polls) and ``on_kill`` (which only
cancels) carry no storage and no harvest code; reading an ended job's results is
``batch.harvest``. Every method is blocking I/O: the trigger runs them with
``asyncio.to_thread``, the operator calls them directly. A job control holds one google-genai
client; ``close()`` releases it. SDK errors come out as ``BatchJobError`` naming the job and what
happens next, with the cause chained and the key scrubbed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from airflow_banana.batch.poll import JobState
from airflow_banana.channels.config import ChannelConfig, config_secrets
from airflow_banana.exceptions import BatchJobError, ConfigurationError
from airflow_banana.models import ImageRequest
from airflow_banana.secrets import scrub, scrub_exception

if TYPE_CHECKING:
    from airflow_banana.storage.objects import Storage


@dataclass(frozen=True)
class JobSnapshot:
    """A job as last seen: enough to decide (state) and to harvest (where the results are)."""

    name: str
    state: JobState
    display_name: str = ""
    error: str = ""
    results_file: str | None = None  # Developer: files/… (responsesFile)
    has_inline_results: bool = False  # Developer: inlinedResponses in the job itself
    output_dir: str | None = None  # Vertex: gs://…/prediction-model-…
    stats: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Submitted:
    snapshot: JobSnapshot
    input_uri: str | None = None
    dest_uri: str | None = None


class JobControl(Protocol):
    """Submit, poll, cancel and find one channel's batch jobs (``job_control_for`` builds one)."""

    config: ChannelConfig

    def submit(
        self,
        requests: Sequence[ImageRequest],
        *,
        display_name: str,
        staging_uri: str | None,
        inline: bool | None,
        storage: Storage | None = None,
    ) -> Submitted:
        """Create the job. Vertex writes its input JSONL under ``staging_uri`` through ``storage``;
        the Developer API sends requests inline or uploads them through its Files API."""
        ...

    def get(self, name: str) -> JobSnapshot: ...

    def cancel(self, name: str) -> None: ...

    def find(self, display_name_head: str) -> JobSnapshot | None: ...

    def console_url(self, name: str) -> str: ...

    def close(self) -> None: ...


LIST_SCAN_LIMIT = 1000  # jobs looked at when searching for an orphan (newest first)


class GenaiJobControl:
    """The google-genai client a job control talks through (built on first use, closed once), and
    the calls both APIs share: get, cancel, find."""

    config: ChannelConfig
    _client: Any = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(channel={self.config.name!r})"

    @property
    def client(self) -> Any:
        if self._client is None:
            from airflow_banana.channels.clients import genai_client

            self._client = genai_client(self.config)
        return self._client

    def close(self) -> None:
        from airflow_banana.channels.clients import close_client

        client, self._client = self._client, None
        if client is not None:
            close_client(client)

    def get(self, name: str) -> JobSnapshot:
        try:
            return snapshot_from_job(self.client.batches.get(name=name))
        except Exception as err:
            raise sdk_error(self.config, "polling", err, job=name) from err

    def cancel(self, name: str) -> None:
        try:
            self.client.batches.cancel(name=name)
        except Exception as err:
            raise sdk_error(self.config, "cancelling", err, job=name) from err

    def find(self, display_name_head: str) -> JobSnapshot | None:
        """The job whose display name starts with ``display_name_head`` (an orphan to adopt)."""
        try:
            for i, job in enumerate(self.client.batches.list(config={"page_size": 100})):
                if i >= LIST_SCAN_LIMIT:
                    break
                name = str(getattr(job, "display_name", "") or "")
                if name.split(" ", 1)[0] == display_name_head:
                    return snapshot_from_job(job)
        except Exception as err:
            raise sdk_error(self.config, f"listing batch jobs to find '{display_name_head}'", err) from err
        return None


def model_of(requests: Sequence[ImageRequest], config: ChannelConfig) -> str:
    """The one model of a job (a batch job has exactly one); mixed models are a configuration error."""
    from airflow_banana.channels.gemini import resolve_model

    models = {resolve_model(r.model, config.model) for r in requests}
    if len(models) != 1:
        raise ConfigurationError(
            f"channel '{config.name}': a batch job runs one model, the items name {sorted(models)}; "
            "split the manifest per model — nothing was submitted"
        )
    return models.pop()


def snapshot_from_job(job: Any) -> JobSnapshot:
    """A ``JobSnapshot`` from the SDK's ``BatchJob`` (2.x and 3.x share these fields)."""
    dest = getattr(job, "dest", None)
    output_info = getattr(job, "output_info", None)
    error = getattr(job, "error", None)
    stats = getattr(job, "completion_stats", None)
    return JobSnapshot(
        name=str(job.name or ""),
        state=JobState.parse(getattr(job, "state", None)),
        display_name=str(getattr(job, "display_name", "") or ""),
        error=str(getattr(error, "message", "") or "") if error is not None else "",
        results_file=getattr(dest, "file_name", None) if dest is not None else None,
        has_inline_results=bool(getattr(dest, "inlined_responses", None)) if dest is not None else False,
        output_dir=getattr(output_info, "gcs_output_directory", None) if output_info is not None else None,
        stats={
            k: int(v)
            for k in ("successful_count", "failed_count", "incomplete_count")
            if stats is not None and (v := getattr(stats, k, None)) is not None
        },
    )


def sdk_error(config: ChannelConfig, action: str, err: Exception, *, job: str | None = None) -> BatchJobError:
    """A ``BatchJobError`` for a failed SDK call: what, which job/channel, what a retry does."""
    secrets = config_secrets(config)
    scrub_exception(err, secrets)
    code = getattr(err, "code", None)
    detail = scrub(f"{type(err).__name__}{f' {code}' if code else ''}: {err}"[:300], secrets)
    subject = f"channel '{config.name}'" + (f", job {job}" if job else "")
    return BatchJobError(
        f"{subject}: {action} failed ({detail}); a retry of the task reattaches to the stored job"
    )
