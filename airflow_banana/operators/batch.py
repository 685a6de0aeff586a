"""``BatchImageOperator``: a manifest's images through the Gemini Batch API or Vertex batch prediction.

Half the realtime price, asynchronous. Orchestration only: each step of the lifecycle has its
module, and ``execute`` / ``execute_complete`` read as the lifecycle.

1. prepare the manifest, every check before spend                     ``manifests.prepare``
2. submit, or reattach to this task instance's job (FAULTS.md B1)      ``batch.lifecycle``
3. the end time: job timeout, rescue point or earliest deadline       ``batch.rescue``
4. wait in the triggerer (``BatchJobTrigger``) or in the worker        ``batch.wait``
5. at the end time cancel the job, and wait until it has really ended  ``batch.ending``, ``batch.wait``
6. harvest line by line, rescue the rest through realtime             ``batch.ending``, ``batch.harvest``
7. record the job's turnaround, write the report                      ``batch.ending``, ``batch.report``

Without ``rescue_channels`` the job is waited for until the earliest deadline (or
``job_timeout``). A retry of the task reattaches to the recorded job instead of paying for a
second one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import closing
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import conf

from airflow_banana.batch.poll import PollPolicy, poll_policy
from airflow_banana.batch.rescue import RealtimeRescue, RescuePolicy, job_end_time
from airflow_banana.hooks.channel import load_channel_configs
from airflow_banana.operators._common import realtime_rescue, skip_without_manifest
from airflow_banana.operators.lane import ManifestLaneOperator
from airflow_banana.operators.publish import BatchJobLink, GalleryLink, push_link
from airflow_banana.planning.inputs import DEFAULT_RESCUE_MARGIN
from airflow_banana.planning.planner import DEFAULT_CONFIDENCE

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_banana.batch.ending import JobEnding
    from airflow_banana.batch.jobs import JobControl
    from airflow_banana.batch.lifecycle import BatchRun
    from airflow_banana.batch.state import BatchJobRecord

DEFAULT_JOB_TIMEOUT = timedelta(hours=49)  # Google expires a batch after 48 h pending/running


def _is_template(value: object) -> bool:
    return isinstance(value, str) and "{{" in value


class BatchImageOperator(ManifestLaneOperator):
    """Generate every image of a manifest as one batch job on a ``banana`` connection.

    Takes the lane arguments of ``ManifestLaneOperator`` (manifest, output_prefix, gcp_conn_id,
    defaults, on_invalid, force, max_failed_items, max_rejected_items, emit_output_asset); the
    job record lives at ``{output_prefix}/runs/{run_key}/batch_job.json``. Its own:

    :param channel: connection id of type ``banana`` with protocol ``gemini`` (Developer Batch
        API) or ``vertex`` (Vertex batch prediction).
    :param gcs_staging_prefix: ``gs://`` prefix for Vertex input/output JSONL (required for vertex).
    :param inline: Developer API only: True = inline requests, False = JSONL file, None = by size.
    :param deferrable: wait in the triggerer (default from ``[operators] default_deferrable``,
        Airflow's convention, which is False unless configured) or poll in the worker.
    :param poll_interval_s: seconds between polls.
    :param max_poll_failures: consecutive failed polls tolerated (the task then fails; a retry
        reattaches).
    :param job_timeout: give up waiting this long after submit (the job is cancelled).
    :param rescue_channels: connection ids for the realtime lane; items the job did not deliver
        are generated there while their deadline allows, and the job is given up at its rescue
        point (``batch.rescue``). Without them the job is waited for until the earliest deadline.
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

    Extra links: the batch job in the console, and the run's ``gallery.html``.
    """

    template_fields: Sequence[str] = (
        *("manifest", "output_prefix", "channel", "gcs_staging_prefix", "defaults", "rescue_channels"),
        *("rescue_margin", "rescue_latency", "poll_interval_s"),
    )
    template_fields_renderers = {"defaults": "json"}
    operator_extra_links = (BatchJobLink(), GalleryLink())
    ui_color = "#f5d742"

    def __init__(
        self,
        *,
        channel: str,
        gcs_staging_prefix: str | None = None,
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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.channel = channel
        self.gcs_staging_prefix = gcs_staging_prefix
        self.inline = inline
        self.deferrable = deferrable
        self.poll_interval_s = poll_interval_s
        self.max_poll_failures = max_poll_failures
        self.job_timeout = job_timeout
        self.rescue_channels = list(rescue_channels or [])
        self.redis_conn_id = redis_conn_id
        # Templated: a string until rendered; ``_policies`` checks and converts them before use.
        self.rescue_margin: timedelta | str = rescue_margin
        self.rescue_latency: timedelta | str | None = rescue_latency
        self.rescue_confidence = rescue_confidence
        self.rescue_success_rates = dict(rescue_success_rates or {})
        self.record_turnaround = record_turnaround
        self.console_url = ""
        self._running_job: tuple[str, str] | None = None  # (conn id, job name) for on_kill
        if not any(_is_template(v) for v in (rescue_margin, rescue_latency, poll_interval_s)):
            self._policies()  # a bad literal fails when the DAG is parsed, not hours later

    def _policies(self, end_time: float | None = None) -> tuple[RescuePolicy, PollPolicy]:
        """The rescue and poll policies from the (rendered) arguments, checked."""
        what = self.task_id
        margin, latency, rates = self.rescue_margin, self.rescue_latency, self.rescue_success_rates
        rescue = RescuePolicy.from_arguments(margin, latency, self.rescue_confidence, rates, what=what)
        return rescue, poll_policy(self.poll_interval_s, self.max_poll_failures, what=what, end_time=end_time)

    def _open_run(self, context: Context) -> BatchRun:
        from airflow_banana.batch.lifecycle import open_run
        from airflow_banana.hooks.storage import storage_for
        from airflow_banana.identity import RunIdentity

        storage = storage_for(self.output_prefix, self.gcp_conn_id)
        identity = RunIdentity.from_context(context)
        return open_run(storage, self.output_prefix, self.prepare(context, storage), identity)

    def _jobs(self) -> JobControl:
        from airflow_banana.batch import job_control_for

        return job_control_for(load_channel_configs([self.channel], task_id=self.task_id)[0])

    def _rescue(self) -> RealtimeRescue | None:
        if not self.rescue_channels:
            return None
        return realtime_rescue(
            self.rescue_channels,
            self._policies()[0],
            task_id=self.task_id,
            force=self.force,
            redis_conn_id=self.redis_conn_id,
        )

    # ------------------------------------------------------------------ first half: submit and wait
    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_banana.batch.lifecycle import SubmitOptions, reattach_or_submit
        from airflow_banana.batch.wait import wait_here

        self._policies()
        skip_without_manifest(self.manifest, task_id=self.task_id)
        run = self._open_run(context)
        if run.prepared.rejects_jsonl:
            run.store.write_rejects(run.key, run.prepared.rejects_jsonl)
        with closing(self._jobs()) as jobs:
            if (rescue := self._rescue()) is not None:
                rescue.warn_unrescuable(run.prepared)
            staging = self.gcs_staging_prefix
            options = SubmitOptions(self.channel, self.force, self.inline, staging, who=self.task_id)
            record = reattach_or_submit(jobs, run, options)
            if record is None:
                self.log.info("run %s: every item is already done; nothing submitted, nothing paid", run.key)
                return self._finish(context, run, None, None)
            assert record.job_name is not None
            self.console_url = jobs.console_url(record.job_name)
            push_link(context, BatchJobLink(), self.console_url, log=self.log)
            end_time = job_end_time(record, run, job_timeout=self.job_timeout, rescue=rescue)
            _rescue, poll = self._policies(end_time)
            self._running_job = (self.channel, record.job_name)
            if self.deferrable:
                from airflow_banana.triggers.batch import BatchJobTrigger

                trigger = BatchJobTrigger.for_policy(self.channel, record.job_name, poll)
                self.defer(trigger=trigger, method_name="execute_complete")
            event = wait_here(jobs, record.job_name, poll)
        return self.execute_complete(context, event)

    # ------------------------------------------------------------------ second half: harvest and report
    def execute_complete(self, context: Context, event: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Resume after the trigger: harvest what the job delivered, rescue the rest, report."""
        from airflow_banana.batch.ending import JobEnding, turnaround_recorded

        policy, poll = self._policies()
        ending = JobEnding.from_event(event, what=self.task_id)
        run = self._open_run(context)
        record = run.state.require(ending.job_name, what=self.task_id)
        # The turnaround is recorded also when the harvest or the failed-items check raises.
        with turnaround_recorded(ending, run, record, enabled=self.record_turnaround):
            with closing(self._jobs()) as jobs:
                self.console_url = jobs.console_url(ending.job_name)
                rescuing = bool(self.rescue_channels)
                ending.settle(jobs, rescuing=rescuing, margin=policy.margin, poll_interval_s=poll.interval_s)
                ending.harvest(jobs, run, record, self._rescue())
            run.state.mark_harvested(record, ending.final_state)
            self._running_job = None
            return self._finish(context, run, record, ending)

    def _finish(
        self, context: Context, run: BatchRun, record: BatchJobRecord | None, ending: JobEnding | None
    ) -> dict[str, Any]:
        """Report every item, publish the run (gallery, asset event), apply the failure limits."""
        from airflow_banana.batch.report import batch_report

        report, items = batch_report(
            run,
            record,
            ending,
            console_url=self.console_url,
            manifest=self.manifest,
            output_prefix=self.output_prefix,
        )
        summary = self.finish_run(context, run.store, report, outcomes=items, prepared=run.prepared)
        if report["batch_job"]:
            summary["batch_job"] = {k: report["batch_job"].get(k) for k in ("name", "state")}
        return summary

    def on_kill(self) -> None:
        """The task is being stopped while it polls in the worker: cancel the remote job."""
        if self._running_job is not None:
            from airflow_banana.batch.wait import cancel_on_kill

            cancel_on_kill(*self._running_job)


__all__ = ["BatchImageOperator", "BatchJobLink"]
