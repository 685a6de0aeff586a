"""Result harvest of an ended batch job: where each backend keeps its results, read as a stream.

Apart from job control (``batch.jobs``) because only the worker harvests: the trigger and
``on_kill`` never read results, so they never import storage or the result parser. The Developer
API's results are the job's inline responses or a results file downloaded over HTTP line by line;
Vertex's are the ``predictions*.jsonl`` files under the job's output folder in GCS, read with
``Storage.iter_lines`` in bounded chunks, never loaded whole (FAULTS.md B7). Every line goes to
the ``Harvester`` (``batch.results``), which commits what it can; ``harvest_and_rescue`` then
sends what is still missing to the realtime rescue (``batch.rescue``) and records the rest as
failed, so every item of the job ends with an outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from airflow_banana.batch.developer import DeveloperJobControl
from airflow_banana.batch.jobs import JobControl, JobSnapshot
from airflow_banana.batch.results import Harvester, HarvestResult, http_lines
from airflow_banana.storage.objects import Storage

if TYPE_CHECKING:
    from airflow_banana.batch.lifecycle import BatchRun
    from airflow_banana.batch.state import BatchJobRecord
    from airflow_banana.realtime.engine import WorkItem
    from airflow_banana.storage.report import ItemOutcome

log = logging.getLogger(__name__)

# Items the job did not deliver (with why) in, their realtime outcomes out (``batch.rescue``).
Rescue = Callable[[Sequence["WorkItem"], Mapping[str, str]], Mapping[str, "ItemOutcome"]]


def harvest_and_rescue(
    jobs: JobControl,
    snapshot: JobSnapshot,
    record: BatchJobRecord,
    run: BatchRun,
    story: dict[str, Any],
    *,
    rescue: Rescue | None = None,
) -> dict[str, ItemOutcome]:
    """Commit what the job delivered, rescue the rest, fail what is left; ``story`` gets the
    counts for the report. Returns an outcome for every item of the job."""
    by_id = run.work_by_id()
    in_job = [i for i in record.item_ids if i in by_id]
    harvester = Harvester(
        store=run.store,
        run_key=run.identity.run_key,
        requests={i: by_id[i].request for i in in_job},
        config=jobs.config,
        item_metadata={i: by_id[i].item_metadata for i in in_job},
        on_progress=lambda n: log.info("harvested %d result line(s) of job %s", n, snapshot.name),
        submitted_at=record.submitted_at or "",
    )
    result = harvest_job(jobs, snapshot, harvester, storage=run.store.storage, dest_uri=record.dest_uri)
    log.info(
        "job %s (%s): %d line(s), %d image(s) stored, %d failed, %d unreadable, %d unknown key(s)",
        snapshot.name,
        snapshot.state.value,
        result.lines,
        len(result.outcomes),
        len(result.failed),
        result.unreadable_lines,
        result.unknown_keys,
    )
    left: dict[str, str] = dict(result.failed)
    for item_id in result.missing(in_job):
        left[item_id] = f"batch job ended {snapshot.state.value} without a result for this item"
    outcomes = dict(result.outcomes)
    story.update(
        harvested=len(result.outcomes),
        harvested_usd=round(sum(o.cost_usd for o in result.outcomes.values()), 6),
        missing_from_job=len(left),
    )
    if left and rescue is not None:
        rescued = rescue([by_id[i] for i in left], left)
        outcomes.update(rescued)
        story.update(
            rescued=sum(1 for o in rescued.values() if o.status == "succeeded"),
            rescued_usd=round(sum(o.cost_usd for o in rescued.values()), 6),
        )
    for item_id, reason in left.items():
        if item_id in outcomes:
            continue
        outcome = harvester.failure_outcome(item_id, reason)
        run.store.commit_failure(
            by_id[item_id].request,
            outcome,
            lane="batch",
            run_key=run.identity.run_key,
            item_metadata=by_id[item_id].item_metadata,
        )
        outcomes[item_id] = outcome
    return outcomes


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
