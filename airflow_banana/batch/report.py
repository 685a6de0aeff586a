"""What a finished batch run leaves behind: the run report and the job's turnaround record.

The report covers every item of the manifest, not only the job's: items outside the job are
``skipped`` (already done with the same request fingerprint), ``failed`` (another request's
image under the same id) or ``not_attempted``. Each harvested job's turnaround (submit → end) is
appended to the backend's history under the output prefix (``planning.history``) so later plans
learn the real turnaround; a job cancelled at its end time is recorded as censored (at least
that long). A failure to record is logged, never raised: history only refines later plans.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow_banana.exceptions import BananaError
from airflow_banana.planning.history import TurnaroundRecord, batch_backend_for_protocol, record_turnaround
from airflow_banana.storage.objects import utcnow_iso
from airflow_banana.storage.report import FAILED, NOT_ATTEMPTED, ItemOutcome, build_report, skipped_outcome

if TYPE_CHECKING:
    from airflow_banana.batch.ending import JobEnding
    from airflow_banana.batch.jobs import JobSnapshot
    from airflow_banana.batch.lifecycle import BatchRun
    from airflow_banana.batch.state import BatchJobRecord
    from airflow_banana.storage.objects import Storage

log = logging.getLogger(__name__)


def every_item(run: BatchRun, outcomes: Mapping[str, ItemOutcome]) -> list[ItemOutcome]:
    """An outcome for every manifest item, in manifest order (module docstring)."""
    items: list[ItemOutcome] = []
    for w in run.prepared.work:
        request = w.request
        if request.item_id in outcomes:
            items.append(outcomes[request.item_id])
            continue
        check = run.store.check(request)
        done = check.done
        if check.conflict is not None:
            items.append(ItemOutcome(request.item_id, FAILED, request.image_size, reason=check.conflict))
        elif done is not None:
            items.append(skipped_outcome(request.item_id, request.image_size, done))
        else:
            items.append(
                ItemOutcome(
                    request.item_id,
                    NOT_ATTEMPTED,
                    request.image_size,
                    reason="not part of the batch job and not done",
                )
            )
    for w, outcome in zip(run.prepared.work, items, strict=True):
        # the report says which policy applied to every item
        outcome.data_policy = w.request.data_policy
        outcome.grounding = w.request.grounding
    return items


def job_info(
    record: BatchJobRecord | None,
    snapshot: JobSnapshot | None,
    *,
    console_url: str,
    story: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report's ``batch_job`` section: which job, how it ended, what the harvest counted."""
    info: dict[str, Any] = {}
    if record is not None:
        info = {
            "name": record.job_name,
            "round": record.round,
            "backend": record.backend,
            "channel": record.channel,
            "display_name": record.display_name,
            "submitted_at": record.submitted_at,
            "console_url": console_url,
        }
    if snapshot is not None:
        info.update(state=snapshot.state.value, error=snapshot.error or None, stats=dict(snapshot.stats))
    info.update(story or {})
    return info


def batch_report(
    run: BatchRun,
    record: BatchJobRecord | None,
    ending: JobEnding | None,
    *,
    console_url: str,
    manifest: str,
    output_prefix: str,
) -> tuple[dict[str, Any], list[ItemOutcome]]:
    """The run report (``storage.report.build_report`` with the job's ``batch_job`` section) and the
    outcome of every item; ``record``/``ending`` None: nothing was submitted."""
    snapshot, story = (ending.snapshot, ending.story) if ending is not None else (None, None)
    items = every_item(run, ending.outcomes if ending is not None else {})
    now = utcnow_iso()
    report = build_report(
        items,
        run_key=run.identity.run_key,
        lane="batch",
        started_at=(record.submitted_at if record is not None and record.submitted_at else now),
        finished_at=now,
        manifest=manifest,
        output_prefix=output_prefix,
        rejects=run.prepared.rejected,
        reject_reasons=run.prepared.reject_reasons,
        extra={"batch_job": job_info(record, snapshot, console_url=console_url, story=story)},
    )
    return report, items


def record_job_turnaround(
    storage: Storage,
    output_prefix: str,
    record: BatchJobRecord,
    final_state: str,
    ended_at: datetime,
    *,
    cancelled: bool,
) -> None:
    """Append the job's turnaround to the backend's history; log, never raise, on failure."""
    if not record.job_name or not record.submitted_at:
        return
    try:
        uri = record_turnaround(
            storage,
            output_prefix,
            TurnaroundRecord(
                backend=batch_backend_for_protocol(record.backend),
                job=record.job_name,
                submitted_at=datetime.fromisoformat(record.submitted_at),
                ended_at=ended_at,
                items=len(record.item_ids),
                final_state=final_state or record.final_state or "",
                # Cancelled before it finished: its true turnaround is longer than recorded.
                # A cancel that lost the race to a normal end is a complete sample.
                censored=cancelled and final_state not in ("SUCCEEDED", "PARTIALLY_SUCCEEDED"),
            ),
        )
        log.info("batch turnaround of %s recorded in %s", record.job_name, uri)
    except (BananaError, ValueError, KeyError) as err:
        log.warning("could not record the batch turnaround (later plans use the default): %s", err)
