"""``BatchImageOperator``: a manifest's images through the Gemini Batch API or Vertex batch prediction.

Half the realtime price, asynchronous. Orchestration only: the retry-safe job record is
``batch.state``, the poll decision ``batch.poll``, job control ``batch.developer`` /
``batch.vertex``, the streaming harvest ``batch.harvest`` and ``batch.results``, the optional
realtime rescue the realtime lane's ``RealtimeEngine``, the rescue point and turnaround history
``planning``.

Flow: prepare the manifest (every check before spend) → skip items already done in storage →
record the intent → submit → record "submitted" → defer to ``BatchJobTrigger`` (or poll here in
synchronous mode) until the job ends or its end time comes → harvest line by line → rescue
failed/missing items through realtime if channels are given and the deadline allows → record
the job's turnaround → report. A retry of the task (same dag/task/run/map index) reattaches to
the recorded job instead of paying for a second one (FAULTS.md B1).

The end time, with ``rescue_channels``, is the issue's rescue point

    earliest deadline - time the rescue channels need for the job's items - rescue_margin

(``planning.inputs.rescue_point``: the channels' caps and success rates at a confidence), so a big job
is given up early enough for realtime to finish it and a small one may wait longer. The trigger
reports only a job *state*, not how many lines are done, so the point assumes every item is
still unfinished: rescue a little early rather than late. At the end time the job is cancelled
and, before harvesting, waited for (bounded) until it has really ended — Google keeps finishing
lines while a job is CANCELLING, and an item harvested after the rescue regenerated it would be
paid twice. Items the batch delivered are committed by the harvest and never regenerated.

Each harvested job's turnaround (submit → end) is appended to the backend's history under the
output prefix (``planning.history.record_turnaround``) so later plans learn the real turnaround; a job
cancelled at its end time is recorded as censored (at least that long). A failure to record is
logged, never raised: history only refines later plans.

``force=True`` regenerates items already done; it never resubmits a job that is still in flight
for this task instance, but a retry after a forced job was harvested starts another forced job.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, BaseOperatorLink, conf

from airflow_banana.exceptions import BananaError, BatchJobError, ConfigurationError
from airflow_banana.hooks.channel import load_channel_configs
from airflow_banana.identity import RunIdentity, fingerprint_of
from airflow_banana.operators._common import (
    checked_max_rejected,
    enforce_item_limits,
    logical_date_of,
    run_realtime_lane,
    skip_without_manifest,
)
from airflow_banana.operators.publish import GalleryLink, add_output_outlet, publish_run
from airflow_banana.planning.inputs import DEFAULT_RESCUE_MARGIN, duration_of
from airflow_banana.planning.planner import DEFAULT_CONFIDENCE

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.types import TaskInstanceKey

    from airflow_banana.batch.jobs import JobControl, JobSnapshot
    from airflow_banana.batch.state import BatchJobRecord, JobStateStore
    from airflow_banana.outputs import OutputStore
    from airflow_banana.prepare import PreparedManifest
    from airflow_banana.realtime import WorkItem
    from airflow_banana.report import ItemOutcome

DEFAULT_JOB_TIMEOUT = timedelta(hours=49)  # Google expires a batch after 48 h pending/running
# Waiting for a cancelled job to end takes at most half the rescue margin, and never longer than
# this: past it, harvesting now (and risking a duplicate) beats missing the deadline.
MAX_CANCEL_SETTLE_S = 300.0


def _is_template(value: object) -> bool:
    return isinstance(value, str) and "{{" in value


class BatchJobLink(BaseOperatorLink):
    """The batch job in the Google console (Vertex) or AI Studio's batch list (Developer API)."""

    name = "Batch job"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return str(getattr(operator, "console_url", "") or "")


class BatchImageOperator(BaseOperator):
    """Generate every image of a manifest as one batch job on a ``banana`` connection.

    :param manifest: URI of the prompt manifest (``gs://…`` or a local path), JSONL or JSON.
    :param output_prefix: URI under which ``images/``, ``metadata/`` and ``runs/`` are written
        (the job record lives at ``runs/{run_key}/batch_job.json``).
    :param channel: connection id of type ``banana`` with protocol ``gemini`` (Developer Batch
        API) or ``vertex`` (Vertex batch prediction).
    :param gcp_conn_id: connection with GCS credentials; default: Application Default Credentials.
    :param gcs_staging_prefix: ``gs://`` prefix for Vertex input/output JSONL (required for vertex).
    :param defaults: item field defaults (below the manifest's own defaults).
    :param on_invalid: ``reject`` or ``quarantine`` bad manifest lines.
    :param force: regenerate items already done, and replace another request's image under the
        same id (see the module docstring for retries).
    :param inline: Developer API only: True = inline requests, False = JSONL file, None = by size.
    :param deferrable: wait in the triggerer (default from ``[operators] default_deferrable``,
        Airflow's convention, which is False unless configured) or poll in the worker.
    :param poll_interval_s: seconds between polls.
    :param max_poll_failures: consecutive failed polls tolerated (the task then fails; a retry
        reattaches).
    :param job_timeout: give up waiting this long after submit (the job is cancelled).
    :param rescue_channels: connection ids for the realtime lane; items the job did not deliver
        are generated there while their deadline allows, and the job is given up at its rescue
        point (module docstring). Without them the job is waited for until the earliest deadline.
    :param redis_conn_id: a ``redis`` connection through which the rescue shares breakers,
        limits and quotas with every other worker (also read from a rescue channel's extra).
    :param rescue_margin: safety margin of the rescue point *after* the time realtime needs
        (templated; a timedelta, a number of seconds or a duration such as ``"30m"``, ``"PT30M"``).
    :param rescue_latency: dispatch-to-image time of the rescue channels to plan with
        (templated duration; default 60 s); with their caps it sets how long realtime needs.
    :param rescue_confidence: probability that the rescue finishes by the deadline.
    :param rescue_success_rates: channel id -> success rate (default: recent run reports under
        the output prefix, else 0.9).
    :param record_turnaround: append each harvested job's turnaround to the backend's history
        under the output prefix (``_banana/turnaround/{developer|vertex}.jsonl``).
    :param max_failed_items: the task fails when more items end without an image.
    :param emit_output_asset: add the output prefix's Asset to the outlets (an alias when the
        prefix is templated; ``airflow_banana.assets``); every outlet's event
        gets the run's counts, spend, report and gallery URIs as ``extra`` (recorded by Airflow
        when the task succeeds). Other ``outlets`` may be given too.

    Extra links: the batch job in the console, and the run's ``gallery.html`` (docs/gallery.md).
    :param max_rejected_items: the task fails when more manifest lines were rejected (quarantine);
        default ``None``: any number while something valid is left, none when all were rejected.
    """

    template_fields: Sequence[str] = (
        "manifest",
        "output_prefix",
        "channel",
        "gcs_staging_prefix",
        "defaults",
        "rescue_channels",
        "rescue_margin",
        "rescue_latency",
        "poll_interval_s",
    )
    template_fields_renderers = {"defaults": "json"}
    operator_extra_links = (BatchJobLink(), GalleryLink())
    ui_color = "#f5d742"

    def __init__(
        self,
        *,
        manifest: str,
        output_prefix: str,
        channel: str,
        gcp_conn_id: str | None = None,
        gcs_staging_prefix: str | None = None,
        defaults: Mapping[str, Any] | None = None,
        on_invalid: str = "reject",
        force: bool = False,
        inline: bool | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval_s: float | str = 60.0,
        max_poll_failures: int = 5,
        job_timeout: timedelta = DEFAULT_JOB_TIMEOUT,
        rescue_channels: Sequence[str] | None = None,
        redis_conn_id: str | None = None,
        rescue_margin: timedelta | str = DEFAULT_RESCUE_MARGIN,
        rescue_latency: timedelta | str | None = None,
        rescue_confidence: float = DEFAULT_CONFIDENCE,
        rescue_success_rates: Mapping[str, float] | None = None,
        record_turnaround: bool = True,
        max_failed_items: int = 0,
        emit_output_asset: bool = True,
        max_rejected_items: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if emit_output_asset:
            add_output_outlet(self, output_prefix)
        self.gallery_uri: str | None = None
        self.manifest = manifest
        self.output_prefix = output_prefix
        self.channel = channel
        self.gcp_conn_id = gcp_conn_id
        self.gcs_staging_prefix = gcs_staging_prefix
        self.defaults = dict(defaults or {})
        self.on_invalid = on_invalid
        self.force = force
        self.inline = inline
        self.deferrable = deferrable
        self.poll_interval_s = poll_interval_s
        self.max_poll_failures = max_poll_failures
        self.job_timeout = job_timeout
        self.rescue_channels = list(rescue_channels or [])
        self.redis_conn_id = redis_conn_id
        # Templated: a string until rendered; ``_coerce`` makes them timedeltas before use.
        self.rescue_margin: timedelta | str = rescue_margin
        self.rescue_latency: timedelta | str | None = rescue_latency
        self.rescue_confidence = rescue_confidence
        self.rescue_success_rates = dict(rescue_success_rates or {})
        self.record_turnaround = record_turnaround
        self.max_failed_items = max_failed_items
        self.max_rejected_items = checked_max_rejected(max_rejected_items, task_id=self.task_id)
        self.console_url = ""
        self._running_job: tuple[str, str] | None = None  # (conn id, job name) for on_kill
        if on_invalid not in ("reject", "quarantine"):
            raise ConfigurationError(
                f"{self.task_id}: on_invalid must be 'reject' or 'quarantine', got {on_invalid!r}"
            )
        if max_poll_failures < 1:
            raise ConfigurationError(f"{self.task_id}: max_poll_failures must be at least 1")
        if not 0.0 < rescue_confidence < 1.0:
            raise ConfigurationError(
                f"{self.task_id}: rescue_confidence must be between 0 and 1, got {rescue_confidence}"
            )
        if not (_is_template(rescue_margin) or _is_template(rescue_latency)):
            self._coerce()  # a bad literal fails when the DAG is parsed, not hours later

    def _coerce(self) -> None:
        """Rendered templates arrive as strings; turn the durations into timedeltas (idempotent)."""
        margin = duration_of(self.rescue_margin, what=f"{self.task_id}: rescue_margin")
        margin = margin if margin is not None else timedelta(0)
        if margin < timedelta(0):
            raise ConfigurationError(f"{self.task_id}: rescue_margin must not be negative, got {margin}")
        self.rescue_margin = margin
        latency = duration_of(self.rescue_latency, what=f"{self.task_id}: rescue_latency")
        if latency is not None and latency <= timedelta(0):
            raise ConfigurationError(f"{self.task_id}: rescue_latency must be positive, got {latency}")
        self.rescue_latency = latency

    def _margin(self) -> timedelta:
        self._coerce()
        assert isinstance(self.rescue_margin, timedelta)
        return self.rescue_margin

    # ------------------------------------------------------------------ setup shared by both halves
    def _setup(self, context: Context) -> tuple[RunIdentity, Any, OutputStore, PreparedManifest, str]:
        from airflow_banana.hooks.storage import storage_for
        from airflow_banana.outputs import OutputStore
        from airflow_banana.prepare import prepare_manifest

        identity = RunIdentity.from_context(context)
        storage = storage_for(self.output_prefix, self.gcp_conn_id)
        store = OutputStore(storage, self.output_prefix)
        prepared = prepare_manifest(
            self.manifest,
            storage,
            on_invalid=self.on_invalid,  # type: ignore[arg-type]
            defaults=self.defaults,
            logical_date=logical_date_of(context),
        )
        # Over ALL items, not only the missing ones: the set shrinks as items get done, and a
        # retry must still recognise its own job.
        fingerprint = fingerprint_of(w.request.fingerprint() for w in prepared.work)
        return identity, storage, store, prepared, fingerprint

    def _backend(self) -> JobControl:
        from airflow_banana.batch import job_control_for

        config = load_channel_configs([self.channel], task_id=self.task_id)[0]
        if config.protocol == "vertex" and not (self.gcs_staging_prefix or "").startswith("gs://"):
            raise ConfigurationError(
                f"{self.task_id}: channel '{self.channel}' is vertex; set gcs_staging_prefix to a gs:// "
                "prefix"
                " for the batch input and output — nothing was submitted"
            )
        return job_control_for(config)

    # ------------------------------------------------------------------ first half
    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_banana.batch.state import JobStateStore

        self._coerce()
        skip_without_manifest(self.manifest, task_id=self.task_id)
        identity, storage, store, prepared, fingerprint = self._setup(context)
        if prepared.rejects_jsonl:
            store.write_rejects(identity.run_key, prepared.rejects_jsonl)
        backend = self._backend()
        state = JobStateStore(storage, self.output_prefix, identity.run_key)
        try:
            record = self._reattach_or_submit(backend, state, store, identity, prepared, fingerprint)
            if record is None:
                self.log.info(
                    "run %s: every item is already done; nothing submitted, nothing paid", identity.run_key
                )
                return self._finish(context, identity, store, prepared, None, None, {})
            self.console_url = backend.console_url(record.job_name or "")
            self._push_link(context)
            assert record.job_name is not None
            end_time = self._end_time(record, prepared)
            self._running_job = (self.channel, record.job_name)
            if self.deferrable:
                from airflow_banana.triggers.batch import BatchJobTrigger

                self.defer(
                    trigger=BatchJobTrigger(
                        conn_id=self.channel,
                        job_name=record.job_name,
                        poll_interval_s=self._interval(),
                        max_poll_failures=self.max_poll_failures,
                        end_time=end_time,
                    ),
                    method_name="execute_complete",
                )
            event = self._poll_here(backend, record.job_name, end_time)
        finally:
            backend.close()
        return self.execute_complete(context, event)

    def _reattach_or_submit(
        self,
        backend: JobControl,
        state: JobStateStore,
        store: OutputStore,
        identity: RunIdentity,
        prepared: PreparedManifest,
        fingerprint: str,
    ) -> BatchJobRecord | None:
        from airflow_banana.batch.state import HARVESTED, INTENT, SUBMITTED, display_name_head

        record = state.load()
        if record is not None and record.fingerprint == fingerprint:
            if record.status == SUBMITTED:
                self.log.info(
                    "run %s: reattaching to batch job %s (round %d)",
                    identity.run_key,
                    record.job_name,
                    record.round,
                )
                return record
            if record.status == INTENT:
                orphan = backend.find(display_name_head(record.display_name))
                if orphan is not None:
                    self.log.warning(
                        "run %s: adopting batch job %s found by its display name (an earlier try "
                        "crashed between submit and record)",
                        identity.run_key,
                        orphan.name,
                    )
                    return state.mark_submitted(record, orphan.name)
                self.log.info(
                    "run %s: an intent without a job was found; submitting it now", identity.run_key
                )
                by_id = {w.request.item_id: w for w in prepared.work}
                return self._submit(backend, state, record, [by_id[i] for i in record.item_ids if i in by_id])
            if record.status == HARVESTED and not self.force:
                todo = self._todo(store, prepared)
                if not todo:
                    return None
                self.log.info(
                    "run %s: round %d was harvested; %d item(s) still missing go in round %d",
                    identity.run_key,
                    record.round,
                    len(todo),
                    record.round + 1,
                )
                return self._new_round(backend, state, identity, fingerprint, todo, record.round + 1, True)
        elif record is not None:
            self.log.warning(
                "run %s: the manifest changed since batch job %s (fingerprint differs); starting fresh",
                identity.run_key,
                record.job_name,
            )
            if record.status == SUBMITTED and record.job_name:
                self._cancel_quietly(backend, record.job_name)
        todo = self._todo(store, prepared)
        if not todo:
            return None
        round_no = 1 if record is None else record.round + 1
        return self._new_round(backend, state, identity, fingerprint, todo, round_no, record is not None)

    def _todo(self, store: OutputStore, prepared: PreparedManifest) -> list[WorkItem]:
        if self.force:
            return list(prepared.work)
        todo = []
        for w in prepared.work:
            check = store.check(w.request)
            if check.conflict is not None:
                self.log.error("item '%s': %s", w.request.item_id, check.conflict)  # reported as failed
            elif check.done is None:
                todo.append(w)
        if len(todo) < len(prepared.work):
            self.log.info(
                "%d of %d item(s) already done in storage: skipped, nothing paid",
                len(prepared.work) - len(todo),
                len(prepared.work),
            )
        return todo

    def _new_round(
        self,
        backend: JobControl,
        state: JobStateStore,
        identity: RunIdentity,
        fingerprint: str,
        todo: Sequence[WorkItem],
        round_no: int,
        replace_existing: bool,
    ) -> BatchJobRecord:
        from airflow_banana.batch.state import BatchJobRecord, display_name_for

        record = BatchJobRecord(
            run_key=identity.run_key,
            identity=identity.labels(),
            fingerprint=fingerprint,
            backend=backend.config.protocol,
            channel=self.channel,
            display_name=display_name_for(identity, fingerprint, round_no),
            round=round_no,
            item_ids=[w.request.item_id for w in todo],
        )
        record = state.write_intent(record, replace_existing=replace_existing)
        return self._submit(backend, state, record, todo)

    def _submit(
        self,
        backend: JobControl,
        state: JobStateStore,
        record: BatchJobRecord,
        todo: Sequence[WorkItem],
    ) -> BatchJobRecord:
        from airflow_banana.storage import join_uri

        staging = (
            join_uri(self.gcs_staging_prefix, record.run_key, f"r{record.round}")
            if self.gcs_staging_prefix
            else None
        )
        submitted = backend.submit(
            [w.request for w in todo],
            display_name=record.display_name,
            staging_uri=staging,
            inline=self.inline,
            storage=state.storage,
        )
        return state.mark_submitted(
            record, submitted.snapshot.name, input_uri=submitted.input_uri, dest_uri=submitted.dest_uri
        )

    def _end_time(self, record: BatchJobRecord, prepared: PreparedManifest) -> float:
        """When to stop waiting: the job timeout, cut to the rescue point or the earliest deadline."""
        from airflow_banana.planning.inputs import earliest_deadline

        submitted = datetime.fromisoformat(record.submitted_at) if record.submitted_at else datetime.now(UTC)
        end = submitted + self.job_timeout
        in_job = set(record.item_ids)
        deadline = earliest_deadline(w.deadline for w in prepared.work if w.request.item_id in in_job)
        if deadline is None:
            return end.timestamp()
        point = self._rescue_point(deadline, len(in_job)) if self.rescue_channels else None
        # No rescue possible: past the deadline the job is late anyway, so harvest what it has.
        return min(end, point if point is not None else deadline).timestamp()

    def _rescue_point(self, deadline: datetime, items: int) -> datetime | None:
        """``planning.inputs.rescue_point`` for the rescue channels; None when they have no capacity."""
        from airflow_banana.planning.inputs import realtime_capacities, rescue_point

        margin = self._margin()
        configs = load_channel_configs(self.rescue_channels, task_id=self.task_id)
        latency = self.rescue_latency if isinstance(self.rescue_latency, timedelta) else None
        rates = {**self._measured_rates([c.name for c in configs]), **self.rescue_success_rates}
        capacity = realtime_capacities(configs, success_rates=rates, latency=latency)
        point = rescue_point(deadline, items, capacity, margin=margin, confidence=self.rescue_confidence)
        if point is None:
            self.log.info(
                "rescue channels %s have no capacity to rescue with; waiting for the batch job until "
                "the earliest deadline %s",
                self.rescue_channels,
                deadline.isoformat(timespec="seconds"),
            )
            return None
        self.log.info(
            "rescue point %s: earliest deadline %s minus what realtime needs for %d item(s) minus margin %s",
            point.isoformat(timespec="seconds"),
            deadline.isoformat(timespec="seconds"),
            items,
            margin,
        )
        return point

    def _measured_rates(self, channels: Sequence[str]) -> dict[str, float]:
        """Recent success rates from run reports under the output prefix; {} if unreadable."""
        from airflow_banana.hooks.storage import storage_for
        from airflow_banana.planning.inputs import recent_success_rates

        try:
            storage = storage_for(self.output_prefix, self.gcp_conn_id)
            return recent_success_rates(storage, self.output_prefix, channels)
        except BananaError as err:
            self.log.warning("recent success rates unavailable (planning with the default): %s", err)
            return {}

    def _interval(self) -> float:
        """Seconds between polls; templating may have rendered the argument as a string."""
        try:
            interval = float(self.poll_interval_s)
        except (TypeError, ValueError) as err:
            raise ConfigurationError(
                f"{self.task_id}: poll_interval_s must be a number of seconds, got {self.poll_interval_s!r}"
            ) from err
        if interval <= 0:
            raise ConfigurationError(f"{self.task_id}: poll_interval_s must be positive, got {interval}")
        return interval

    def _poll_here(self, backend: JobControl, job_name: str, end_time: float) -> dict[str, Any]:
        """Synchronous mode: the same decisions as the trigger, sleeping in the worker."""
        from airflow_banana.batch.poll import PollAgain, PollPolicy, PollTracker, poll_event

        tracker = PollTracker(PollPolicy(self._interval(), self.max_poll_failures, end_time=end_time))
        decision = tracker.start(time.time())
        while isinstance(decision, PollAgain):
            time.sleep(decision.wait_s)
            try:
                snapshot = backend.get(job_name)
            except BananaError as err:
                self.log.warning("batch job %s: poll failed: %s", job_name, err)
                decision = tracker.failed(str(err), time.time())
                continue
            decision = tracker.observed(snapshot.state, time.time())
        return poll_event(job_name, decision)

    # ------------------------------------------------------------------ second half
    def execute_complete(self, context: Context, event: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Resume after the trigger: harvest what the job delivered, rescue the rest, report."""
        from airflow_banana.batch.poll import JobState
        from airflow_banana.batch.state import JobStateStore

        self._coerce()
        ended_at = datetime.now(UTC)
        if not isinstance(event, Mapping) or event.get("status") not in ("ended", "end_time"):
            message = (event or {}).get("message") if isinstance(event, Mapping) else None
            raise BatchJobError(
                f"{self.task_id}: waiting for the batch job failed: {message or event!r}; "
                "a retry reattaches to the same job (nothing is submitted twice)"
            )
        identity, storage, store, prepared, _fingerprint = self._setup(context)
        state = JobStateStore(storage, self.output_prefix, identity.run_key)
        record = state.load()
        if record is None or record.job_name != event.get("job_name"):
            raise BatchJobError(
                f"{self.task_id}: the job record at {state.uri} does not name job {event.get('job_name')}; "
                "it was changed under this task — a retry reattaches to whatever it names now"
            )
        final_state = str(event.get("state") or "")
        try:
            backend = self._backend()
            try:
                self.console_url = backend.console_url(record.job_name or "")
                story: dict[str, Any] = {}
                if event["status"] == "end_time":
                    point = (
                        "its rescue point" if self.rescue_channels else "the earliest deadline or job_timeout"
                    )
                    at = ended_at.isoformat(timespec="seconds")
                    story["ending"] = (
                        f"still {event.get('state')} at its end time {at} ({point}): cancelled, what it "
                        "had finished was harvested"
                    )
                    self.log.warning(
                        "batch job %s still %s at its end time; cancelling it and harvesting what is done",
                        record.job_name,
                        event.get("state"),
                    )
                    self._cancel_quietly(backend, record.job_name or "")
                    snapshot = self._settle_after_cancel(backend, record.job_name or "")
                else:
                    snapshot = backend.get(record.job_name or "")
                final_state = snapshot.state.value
                story.setdefault("ending", f"ended {final_state}")
                if snapshot.state == JobState.FAILED and snapshot.error:
                    self.log.warning("batch job %s failed: %s", snapshot.name, snapshot.error)
                outcomes = self._harvest(backend, snapshot, record, store, identity, prepared, story)
            finally:
                backend.close()
            state.mark_harvested(record, snapshot.state.value)
            self._running_job = None
            return self._finish(context, identity, store, prepared, record, snapshot, outcomes, story)
        finally:
            # Also when the harvest or the failed-items check raises: the job has ended either way.
            if self.record_turnaround:
                self._record_turnaround(
                    storage, record, final_state, ended_at, cancelled=event["status"] == "end_time"
                )

    def _record_turnaround(
        self,
        storage: Any,
        record: BatchJobRecord,
        final_state: str,
        ended_at: datetime,
        *,
        cancelled: bool,
    ) -> None:
        """Append the job's turnaround to the backend's history; log, never raise, on failure."""
        from airflow_banana.planning.history import (
            TurnaroundRecord,
            batch_backend_for_protocol,
            record_turnaround,
        )

        if not record.job_name or not record.submitted_at:
            return
        try:
            uri = record_turnaround(
                storage,
                self.output_prefix,
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
            self.log.info("batch turnaround of %s recorded in %s", record.job_name, uri)
        except (BananaError, ValueError, KeyError) as err:
            self.log.warning("could not record the batch turnaround (later plans use the default): %s", err)

    def _harvest(
        self,
        backend: JobControl,
        snapshot: JobSnapshot,
        record: BatchJobRecord,
        store: OutputStore,
        identity: RunIdentity,
        prepared: PreparedManifest,
        story: dict[str, Any],
    ) -> dict[str, ItemOutcome]:
        """Commit what the job delivered, rescue the rest; ``story`` gets the counts for the report."""
        from airflow_banana.batch.harvest import harvest_job
        from airflow_banana.batch.results import Harvester

        by_id = {w.request.item_id: w for w in prepared.work}
        in_job = [i for i in record.item_ids if i in by_id]
        harvester = Harvester(
            store=store,
            run_key=identity.run_key,
            requests={i: by_id[i].request for i in in_job},
            config=backend.config,
            item_metadata={i: by_id[i].item_metadata for i in in_job},
            on_progress=lambda n: self.log.info("harvested %d result line(s) of job %s", n, snapshot.name),
            submitted_at=record.submitted_at or "",
        )
        result = harvest_job(backend, snapshot, harvester, storage=store.storage, dest_uri=record.dest_uri)
        self.log.info(
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
        if left and self.rescue_channels:
            rescued = self._rescue(store, identity, [by_id[i] for i in left], left)
            outcomes.update(rescued)
            story.update(
                rescued=sum(1 for o in rescued.values() if o.status == "succeeded"),
                rescued_usd=round(sum(o.cost_usd for o in rescued.values()), 6),
            )
        for item_id, reason in left.items():
            if item_id in outcomes:
                continue
            outcome = harvester.failure_outcome(item_id, reason)
            store.commit_failure(
                by_id[item_id].request,
                outcome,
                lane="batch",
                run_key=identity.run_key,
                item_metadata=by_id[item_id].item_metadata,
            )
            outcomes[item_id] = outcome
        return outcomes

    def _rescue(
        self, store: OutputStore, identity: RunIdentity, work: Sequence[WorkItem], reasons: Mapping[str, str]
    ) -> dict[str, ItemOutcome]:
        """Items the job did not deliver, through the realtime lane (its own deadline checks apply)."""
        from airflow_banana.realtime import RealtimeSettings

        now = datetime.now(UTC)
        alive = [w for w in work if w.deadline is None or w.deadline > now]
        if not alive:
            self.log.warning(
                "%d item(s) missing from the batch, but their deadline has passed: no rescue", len(work)
            )
            return {}
        self.log.info("rescuing %d item(s) through realtime channels %s", len(alive), self.rescue_channels)
        configs = load_channel_configs(self.rescue_channels, task_id=self.task_id)

        result = asyncio.run(
            run_realtime_lane(
                configs,
                alive,
                store=store,
                run_key=identity.run_key,
                task_id=self.task_id,
                settings=RealtimeSettings(lane="batch-rescue", force=self.force),
                redis_conn_id=self.redis_conn_id,
            )
        )
        out: dict[str, ItemOutcome] = {}
        for outcome in result.outcomes:
            if outcome.status != "succeeded":
                outcome.reason = (
                    f"batch: {reasons.get(outcome.item_id, '')}; realtime rescue: {outcome.reason}"
                )
            out[outcome.item_id] = outcome
        return out

    def _finish(
        self,
        context: Context,
        identity: RunIdentity,
        store: OutputStore,
        prepared: PreparedManifest,
        record: BatchJobRecord | None,
        snapshot: JobSnapshot | None,
        outcomes: Mapping[str, ItemOutcome],
        story: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        from airflow_banana.outputs import utcnow_iso
        from airflow_banana.report import FAILED, NOT_ATTEMPTED, SKIPPED, ItemOutcome, build_report

        items: list[ItemOutcome] = []
        for w in prepared.work:
            request = w.request
            if request.item_id in outcomes:
                items.append(outcomes[request.item_id])
                continue
            check = store.check(request)
            done = check.done
            if check.conflict is not None:
                items.append(ItemOutcome(request.item_id, FAILED, request.image_size, reason=check.conflict))
            elif done is not None:
                items.append(
                    ItemOutcome(
                        request.item_id,
                        SKIPPED,
                        request.image_size,
                        image_uri=(done.get("image") or {}).get("uri"),
                        channel=done.get("channel"),
                        reason="already done with the same request fingerprint",
                    )
                )
            else:
                items.append(
                    ItemOutcome(
                        request.item_id,
                        NOT_ATTEMPTED,
                        request.image_size,
                        reason="not part of the batch job and not done",
                    )
                )
        job_info: dict[str, Any] = {}
        if record is not None:
            job_info = {
                "name": record.job_name,
                "round": record.round,
                "backend": record.backend,
                "channel": record.channel,
                "display_name": record.display_name,
                "submitted_at": record.submitted_at,
                "console_url": self.console_url,
            }
        if snapshot is not None:
            job_info.update(
                state=snapshot.state.value, error=snapshot.error or None, stats=dict(snapshot.stats)
            )
        job_info.update(story or {})
        now = utcnow_iso()
        report = build_report(
            items,
            run_key=identity.run_key,
            lane="batch",
            started_at=(record.submitted_at if record is not None and record.submitted_at else now),
            finished_at=now,
            manifest=self.manifest,
            output_prefix=self.output_prefix,
            rejects=prepared.rejected,
            reject_reasons=prepared.reject_reasons,
            extra={"batch_job": job_info},
        )
        report_uri = store.write_report(identity.run_key, report)
        self.log.info("%s report: %s", report["summary"], report_uri)
        summary = publish_run(
            self,
            context,
            store,
            report=report,
            report_uri=report_uri,
            outcomes=items,
            prepared=prepared,
            output_prefix=self.output_prefix,
        )
        if job_info:
            summary["batch_job"] = {"name": job_info.get("name"), "state": job_info.get("state")}
        enforce_item_limits(
            report,
            report_uri,
            task_id=self.task_id,
            max_failed_items=self.max_failed_items,
            max_rejected_items=self.max_rejected_items,
        )
        return summary

    # ------------------------------------------------------------------ links and kill
    def _push_link(self, context: Context) -> None:
        """Show the link while the task is deferred (Airflow pushes it again when the task ends)."""
        try:
            context["ti"].xcom_push(key=BatchJobLink().xcom_key, value=self.console_url)
        except Exception:  # a link is a convenience; it never fails the task
            self.log.debug("could not push the batch job link", exc_info=True)

    def _settle_after_cancel(self, backend: JobControl, job_name: str) -> JobSnapshot:
        """Wait (bounded) until a cancelled job has really ended before harvesting it.

        A CANCELLING job may still finish lines; harvesting and rescuing before it ends could
        pay for those items twice (once in the batch, once through realtime). The wait takes at
        most half the rescue margin (``MAX_CANCEL_SETTLE_S`` at most), so the rescue keeps the
        other half. A failed poll while waiting is ridden out; only the first one is fatal.
        """
        limit = min(self._margin().total_seconds() / 2, MAX_CANCEL_SETTLE_S)
        step = min(5.0, max(0.2, self._interval() / 10))
        give_up = time.monotonic() + limit
        snapshot = backend.get(job_name)
        while not snapshot.state.ended and time.monotonic() < give_up:
            time.sleep(min(step, max(0.0, give_up - time.monotonic())))
            try:
                snapshot = backend.get(job_name)
            except BananaError as err:
                self.log.warning("batch job %s: poll after the cancel failed (%s); retrying", job_name, err)
        if not snapshot.state.ended:
            self.log.warning(
                "batch job %s is still %s %.1f s after the cancel; harvesting what is done now — "
                "lines it finishes later may duplicate items rescued through realtime",
                job_name,
                snapshot.state.value,
                limit,
            )
        return snapshot

    def _cancel_quietly(self, backend: JobControl, job_name: str) -> None:
        try:
            backend.cancel(job_name)
            self.log.info("batch job %s cancelled", job_name)
        except BananaError as err:
            self.log.warning(
                "batch job %s: cancel failed (%s); it may keep running until it ends", job_name, err
            )

    def on_kill(self) -> None:
        """The task is being stopped while it polls in the worker: cancel the remote job."""
        if self._running_job is None:
            return
        from airflow_banana.batch import job_control_for
        from airflow_banana.hooks.channel import BananaChannelHook

        conn_id, job_name = self._running_job
        try:
            backend = job_control_for(BananaChannelHook(conn_id).get_config())
        except BananaError as err:
            self.log.warning("on_kill: cannot build the batch client to cancel %s: %s", job_name, err)
            return
        try:
            self._cancel_quietly(backend, job_name)
        finally:
            backend.close()


__all__ = ["BatchImageOperator", "BatchJobLink"]
