"""``PlanImagesOperator``: the plan step as a classic operator (templated fields).

Orchestration only: ``planning.manifest.plan_manifest`` reads the manifest, plans it and writes
the sub-manifests (module docstring there); this operator renders its arguments, names the run
folder after the task instance and records the plan's figures on its outlets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from airflow.sdk import BaseOperator

from airflow_banana.exceptions import ConfigurationError
from airflow_banana.planning.manifest import ON_INFEASIBLE, OnInfeasible, plan_manifest
from airflow_banana.planning.planner import DEFAULT_CONFIDENCE

if TYPE_CHECKING:
    from airflow.sdk import Context


class PlanImagesOperator(BaseOperator):
    """Split a manifest into realtime and batch sub-manifests by deadline, capacity and price.

    :param manifest: URI of the prompt manifest (``gs://…`` or a local path).
    :param output_prefix: output prefix of the lanes; the plan goes to ``runs/{run_key}/plan/``.
    :param channels: realtime channel connection ids (type ``banana``).
    :param batch_channel: connection id the batch lane submits through (gemini or vertex);
        ``None`` plans realtime only.
    :param default_deadline: deadline for items without one: a duration from the logical date
        (``"+6h"``, ``"PT6H"``) or an ISO time with timezone.
    :param batch_turnaround: fixed batch turnaround (``"24h"``); default: the recorded history's
        percentile at ``confidence`` (24 h until enough jobs are recorded).
    :param confidence: probability with which planned deadlines are met (0..1).
    :param on_infeasible: ``fail`` (default: the task fails before any spend), ``skip``, or
        ``realtime`` / ``batch`` (that lane, best effort, without a deadline).
    :param shard_size: split each sub-manifest into shards of this many items (for mapping).
    :param skip_done: leave out items already done with the same request fingerprint.
    :param success_rates: channel id -> success rate to plan with (else recent reports, else 0.9).
    :param realtime_latency: the channels' dispatch-to-image time to plan with (``"60s"``).
    :param now: planning time (ISO string or datetime); default the wall clock. For tests.

    No outlet by default: a plan writes sub-manifests, not images, so it must not tell the
    output prefix's consumers that new images landed. Outlets given (``outlets=[Asset(...)]``)
    get the plan's figures (items per lane, expected cost, plan.md URI) as the event's extra.
    """

    template_fields: Sequence[str] = (
        "manifest",
        "output_prefix",
        "channels",
        "batch_channel",
        "default_deadline",
        "batch_turnaround",
        "now",
        "defaults",
        "realtime_latency",
    )
    template_fields_renderers = {"defaults": "json"}
    ui_color = "#fff3a0"

    def __init__(
        self,
        *,
        manifest: str,
        output_prefix: str,
        channels: Sequence[str],
        batch_channel: str | None = None,
        default_deadline: str | None = None,
        batch_turnaround: str | None = None,
        confidence: float = DEFAULT_CONFIDENCE,
        on_infeasible: OnInfeasible = "fail",
        shard_size: int | None = None,
        skip_done: bool = True,
        success_rates: Mapping[str, float] | None = None,
        defaults: Mapping[str, Any] | None = None,
        on_invalid: Literal["reject", "quarantine"] = "reject",
        gcp_conn_id: str | None = None,
        now: str | datetime | None = None,
        realtime_latency: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if on_infeasible not in ON_INFEASIBLE:
            raise ConfigurationError(
                f"{self.task_id}: on_infeasible must be one of {ON_INFEASIBLE}, got {on_infeasible!r}"
            )
        self.manifest = manifest
        self.output_prefix = output_prefix
        self.channels = channels
        self.batch_channel = batch_channel
        self.default_deadline = default_deadline
        self.batch_turnaround = batch_turnaround
        self.confidence = confidence
        self.on_infeasible: OnInfeasible = on_infeasible
        self.shard_size = shard_size
        self.skip_done = skip_done
        self.success_rates = dict(success_rates or {})
        self.defaults = dict(defaults or {})
        self.on_invalid: Literal["reject", "quarantine"] = on_invalid
        self.gcp_conn_id = gcp_conn_id
        self.now = now
        self.realtime_latency = realtime_latency

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_banana.identity import RunIdentity
        from airflow_banana.operators._common import logical_date_of

        identity = RunIdentity.from_context(context)
        summary = plan_manifest(
            self.manifest,
            self.output_prefix,
            self.channels,
            run_key=identity.run_key,
            logical_date=logical_date_of(context),
            batch_channel=self.batch_channel or None,
            now=self.now,
            default_deadline=self.default_deadline or None,
            batch_turnaround=self.batch_turnaround or None,
            confidence=self.confidence,
            on_infeasible=self.on_infeasible,
            shard_size=self.shard_size,
            skip_done=self.skip_done,
            success_rates=self.success_rates,
            defaults=self.defaults,
            on_invalid=self.on_invalid,
            gcp_conn_id=self.gcp_conn_id,
            realtime_latency=self.realtime_latency or None,
        )
        self.log.info(
            "plan: %d realtime, %d batch, %d infeasible, %d already done; expected $%.3f (savings $%.3f); %s",
            summary["realtime_items"],
            summary["batch_items"],
            summary["infeasible"],
            summary["skipped_done"],
            summary["expected_cost_usd"],
            summary["savings_usd"],
            summary["plan_md_uri"],
        )
        from airflow_banana.operators.assets import record_run_event, scalar_fields

        record_run_event(
            context,
            self.outlets,
            output_prefix=self.output_prefix,
            extra={**scalar_fields(summary), "lane": "plan", "output_prefix": self.output_prefix},
        )
        return summary


__all__ = ["PlanImagesOperator"]
