"""Submit or reattach: at most one paid batch job per task instance and round, whatever crashed.

A retry of the task (same dag/task/run/map index) must not pay for a second job (FAULTS.md B1),
so every submit is bracketed by the job record (``batch.state``): an *intent* is written before
the create call and *submitted* (with the job's name) after it. On the next try the record says
what happened:

* ``submitted`` with the same manifest fingerprint → reattach to that job;
* ``intent`` → the earlier try crashed between create and record: adopt the job found by its
  display name, or submit the intent now if Google never got it;
* ``harvested`` → that round is done; the items still missing (if any) go in the next round;
* another fingerprint → the manifest changed: cancel the job still in flight, start fresh.

``force`` regenerates items already done; it never resubmits a job that is still in flight for
this task instance, but a retry after a forced job was harvested starts another forced job.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from airflow_banana.batch.state import (
    HARVESTED,
    INTENT,
    SUBMITTED,
    BatchJobRecord,
    JobStateStore,
    display_name_for,
    display_name_head,
)
from airflow_banana.batch.wait import cancel_quietly
from airflow_banana.exceptions import ConfigurationError
from airflow_banana.identity import RunIdentity, fingerprint_of
from airflow_banana.routing.eligibility import require_servable
from airflow_banana.storage.objects import Storage, join_uri
from airflow_banana.storage.outputs import OutputStore

if TYPE_CHECKING:
    from airflow_banana.batch.jobs import JobControl
    from airflow_banana.manifests.prepare import PreparedManifest
    from airflow_banana.realtime.engine import WorkItem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchRun:
    """One task instance's batch run: who it is, where it writes, what it generates."""

    identity: RunIdentity
    store: OutputStore
    prepared: PreparedManifest
    # Over ALL items, not only the missing ones: the set shrinks as items get done, and a retry
    # must still recognise its own job.
    fingerprint: str
    state: JobStateStore

    @property
    def key(self) -> str:
        return self.identity.run_key

    def work_by_id(self) -> dict[str, WorkItem]:
        return {w.request.item_id: w for w in self.prepared.work}


def open_run(
    storage: Storage, output_prefix: str, prepared: PreparedManifest, identity: RunIdentity
) -> BatchRun:
    """The run of a prepared manifest: its output and its job record."""
    return BatchRun(
        identity=identity,
        store=OutputStore(storage, output_prefix),
        prepared=prepared,
        fingerprint=fingerprint_of(w.request.fingerprint() for w in prepared.work),
        state=JobStateStore(storage, output_prefix, identity.run_key),
    )


@dataclass(frozen=True)
class SubmitOptions:
    """How a new job is submitted: through which connection, inline or not, staged where."""

    channel: str
    force: bool = False
    inline: bool | None = None  # Developer API: None = by size
    staging_prefix: str | None = None  # Vertex: gs:// prefix for input and output JSONL
    who: str = "batch"  # the task, as errors name it


def reattach_or_submit(jobs: JobControl, run: BatchRun, options: SubmitOptions) -> BatchJobRecord | None:
    """The job this try waits for (module docstring); None when every item is already done.

    Before anything is submitted the batch channel must be allowed to carry every item
    (``routing.eligibility``): Developer Batch and Vertex are Google's own, a Gemini-native relay
    is not and may not carry the Search tool — such items fail the task here, unsubmitted.
    """
    needs = ((w.request.item_id, w.request) for w in run.prepared.work)
    require_servable(needs, [jobs.config], who=options.who, lane="batch")
    if jobs.config.protocol == "vertex" and not (options.staging_prefix or "").startswith("gs://"):
        raise ConfigurationError(
            f"channel '{options.channel}' is vertex; set gcs_staging_prefix to a gs:// prefix for the "
            "batch input and output — nothing was submitted"
        )
    run_key = run.identity.run_key
    record = run.state.load()
    if record is not None and record.fingerprint == run.fingerprint:
        if record.status == SUBMITTED:
            log.info("run %s: reattaching to batch job %s (round %d)", run_key, record.job_name, record.round)
            return record
        if record.status == INTENT:
            orphan = jobs.find(display_name_head(record.display_name))
            if orphan is not None:
                log.warning(
                    "run %s: adopting batch job %s found by its display name (an earlier try "
                    "crashed between submit and record)",
                    run_key,
                    orphan.name,
                )
                return run.state.mark_submitted(record, orphan.name)
            log.info("run %s: an intent without a job was found; submitting it now", run_key)
            by_id = run.work_by_id()
            return _submit(jobs, run, record, [by_id[i] for i in record.item_ids if i in by_id], options)
        if record.status == HARVESTED and not options.force:
            todo = items_to_do(run.store, run.prepared, force=False)
            if not todo:
                return None
            log.info(
                "run %s: round %d was harvested; %d item(s) still missing go in round %d",
                run_key,
                record.round,
                len(todo),
                record.round + 1,
            )
            return _new_round(jobs, run, todo, record.round + 1, True, options)
    elif record is not None:
        log.warning(
            "run %s: the manifest changed since batch job %s (fingerprint differs); starting fresh",
            run_key,
            record.job_name,
        )
        if record.status == SUBMITTED and record.job_name:
            cancel_quietly(jobs, record.job_name)
    todo = items_to_do(run.store, run.prepared, force=options.force)
    if not todo:
        return None
    round_no = 1 if record is None else record.round + 1
    return _new_round(jobs, run, todo, round_no, record is not None, options)


def items_to_do(store: OutputStore, prepared: PreparedManifest, *, force: bool) -> list[WorkItem]:
    """The items a new job must generate: all with ``force``, else those not done in storage."""
    if force:
        return list(prepared.work)
    todo = []
    for w in prepared.work:
        check = store.check(w.request)
        if check.conflict is not None:
            log.error("item '%s': %s", w.request.item_id, check.conflict)  # reported as failed
        elif check.done is None:
            todo.append(w)
    if len(todo) < len(prepared.work):
        log.info(
            "%d of %d item(s) already done in storage: skipped, nothing paid",
            len(prepared.work) - len(todo),
            len(prepared.work),
        )
    return todo


def _new_round(
    jobs: JobControl,
    run: BatchRun,
    todo: Sequence[WorkItem],
    round_no: int,
    replace_existing: bool,
    options: SubmitOptions,
) -> BatchJobRecord:
    record = BatchJobRecord(
        run_key=run.identity.run_key,
        identity=run.identity.labels(),
        fingerprint=run.fingerprint,
        backend=jobs.config.protocol,
        channel=options.channel,
        display_name=display_name_for(run.identity, run.fingerprint, round_no),
        round=round_no,
        item_ids=[w.request.item_id for w in todo],
    )
    record = run.state.write_intent(record, replace_existing=replace_existing)
    return _submit(jobs, run, record, todo, options)


def _submit(
    jobs: JobControl, run: BatchRun, record: BatchJobRecord, todo: Sequence[WorkItem], options: SubmitOptions
) -> BatchJobRecord:
    staging = (
        join_uri(options.staging_prefix, record.run_key, f"r{record.round}")
        if options.staging_prefix
        else None
    )
    submitted = jobs.submit(
        [w.request for w in todo],
        display_name=record.display_name,
        staging_uri=staging,
        inline=options.inline,
        storage=run.state.storage,
    )
    return run.state.mark_submitted(
        record, submitted.snapshot.name, input_uri=submitted.input_uri, dest_uri=submitted.dest_uri
    )
