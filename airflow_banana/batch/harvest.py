"""Result harvest of an ended batch job: where each backend keeps its results, read as a stream.

Apart from job control (``batch.jobs``) because only the worker harvests: the trigger and
``on_kill`` never read results, so they never import storage or the result parser. The Developer
API's results are the job's inline responses or a results file downloaded over HTTP line by line;
Vertex's are the ``predictions*.jsonl`` files under the job's output folder in GCS, read with
``Storage.iter_lines`` in bounded chunks, never loaded whole (FAULTS.md B7). Every line goes to
the ``Harvester`` (``batch.results``), which commits what it can.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, cast

from airflow_banana.batch.developer import DeveloperJobControl
from airflow_banana.batch.jobs import JobControl, JobSnapshot
from airflow_banana.batch.results import Harvester, HarvestResult, http_lines
from airflow_banana.storage import Storage

log = logging.getLogger(__name__)


def harvest_job(
    control: JobControl,
    snapshot: JobSnapshot,
    harvester: Harvester,
    *,
    storage: Storage,
    dest_uri: str | None = None,
) -> HarvestResult:
    """Feed every result line of the ended job ``snapshot`` to ``harvester``; ``dest_uri`` is the
    output folder recorded at submit (Vertex, when the job does not name one)."""
    if control.config.protocol == "gemini":
        # By protocol, not isinstance: wrappers around a control (tests, instrumentation) pass too.
        return _developer(cast(DeveloperJobControl, control), snapshot, harvester)
    return _vertex(storage, snapshot, harvester, dest_uri)


def _developer(control: DeveloperJobControl, snapshot: JobSnapshot, harvester: Harvester) -> HarvestResult:
    if snapshot.results_file:
        with http_lines(control.download_url(snapshot.results_file), control.auth_headers()) as lines:
            return harvester.consume_text_lines(lines)
    if snapshot.has_inline_results:
        responses = control.inline_responses(snapshot.name)

        def dumped() -> Iterator[Any]:
            # Popped one by one: each response's image is freed once it is committed.
            while responses:
                yield responses.pop(0).model_dump(mode="json", exclude_none=True)

        return harvester.consume_objects(dumped())
    # A job without results (failed, expired, cancelled before anything ran): nothing to read.
    log.info("batch job %s (%s) has no results to harvest", snapshot.name, snapshot.state.value)
    return harvester.result


def result_uris(storage: Storage, snapshot: JobSnapshot, dest_uri: str | None) -> list[str]:
    """Every predictions JSONL of a Vertex job (a job may shard its output)."""
    folder = snapshot.output_dir or dest_uri
    if not folder:
        return []
    found = [
        uri
        for uri in storage.list(folder.rstrip("/") + "/")
        if uri.rsplit("/", 1)[-1].startswith("predictions") and uri.endswith(".jsonl")
    ]
    return sorted(found)


def _vertex(
    storage: Storage, snapshot: JobSnapshot, harvester: Harvester, dest_uri: str | None
) -> HarvestResult:
    uris = result_uris(storage, snapshot, dest_uri)
    if not uris:
        log.info(
            "batch prediction job %s (%s) has no predictions to harvest", snapshot.name, snapshot.state.value
        )
    for uri in uris:
        harvester.consume_text_lines(storage.iter_lines(uri))
    return harvester.result
