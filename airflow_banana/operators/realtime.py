"""``RealtimeImageOperator``: a manifest's images through several channels, with failover.

Thin by design: it resolves connections and storage, prepares the manifest (all checks before
any spend), hands the items to the ``RealtimeEngine`` and writes the run report. XCom gets a
small summary and the report URI — never image bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow_banana.exceptions import ConfigurationError
from airflow_banana.hooks.channel import load_channel_configs
from airflow_banana.identity import RunIdentity
from airflow_banana.operators._common import (
    budget_from,
    run_deadline,
    run_realtime_lane,
    skip_without_manifest,
)
from airflow_banana.operators.lane import ManifestLaneOperator
from airflow_banana.operators.publish import GalleryLink
from airflow_banana.realtime.claims import DEFAULT_TTL_S as DEFAULT_CLAIM_TTL_S

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_banana.realtime.engine import RealtimeSettings


class RealtimeImageOperator(ManifestLaneOperator):
    """Generate every image of a manifest through the given channels (Airflow connection ids).

    Takes the lane arguments of ``ManifestLaneOperator`` (manifest, output_prefix, gcp_conn_id,
    defaults, on_invalid, force, max_failed_items, max_rejected_items, emit_output_asset). Its own:

    :param channels: connection ids of type ``banana``, one per channel.
    :param budget_usd: stop before spending more than this; unfinished items are reported.
    :param priority: optional fixed channel order (connection ids) before cost order.
    :param progress_interval_s: seconds between progress lines in the task log.
    :param failover_alert_threshold: failovers per rolling hour above which to alert.
    :param on_failover_alert: a notifier or callable, called with the task context plus
        ``banana_alert`` (failovers in the last hour, channel, run key).
    :param deadline: when the items that carry no ``deadline`` of their own must be done: a
        timezone-aware datetime, a timedelta, or a string (ISO-8601 date-time with offset, or a
        duration such as ``PT2H`` / ``+2h`` counted from the task's start); templated. Default:
        the task's ``execution_timeout`` (less a tenth, at most a minute, for the report), else
        a soft one-hour horizon (docs/realtime.md "The objective"). Items past a deadline given
        here fail; the soft horizon only plans.
    :param objective: ``"cheapest"`` (default): the least expected spend that meets every
        deadline — items wait for a cheaper channel while that still leaves time;
        ``"fastest"``: every image as soon as the channels allow, cheapest free channel first.
    :param router_options: advanced ``routing.RouterConfig`` fields by name; the ones worth
        touching: ``max_attempts_per_item`` (10), ``default_deadline_s`` (the soft horizon,
        3600 s), ``deadline_margin_s`` (10 s), ``default_latency_s`` (the latency prior, 12 s),
        ``quota_day_length_s`` (the simulator's compressed day). The rest are the router's
        mechanics (``RouterConfig``'s docstring); an unknown name fails before any call.
    :param redis_conn_id: a ``redis`` connection through which every worker shares breakers,
        rate limits and quotas (also accepted as ``redis_conn_id`` in a channel's extra);
        default: per-process state. If Redis is unreachable the task goes on with local state.
    :param claim_ttl_s: how long an item's claim (taken before its first call, so two runs over
        the same items buy each image once; docs/realtime.md "Two workers, one item") lasts
        before another run may take it over; keep it above the longest gap between two attempts
        of one item. ``None`` turns claims off: only when nothing else writes ``output_prefix``.

    The ``Gallery`` extra link opens ``runs/{run_key}/gallery.html`` (docs/gallery.md).
    """

    template_fields: Sequence[str] = (
        "manifest",
        "output_prefix",
        "channels",
        "defaults",
        "budget_usd",
        "priority",
        "deadline",
    )
    template_fields_renderers = {"defaults": "json"}
    operator_extra_links = (GalleryLink(),)
    ui_color = "#ffe135"

    def __init__(
        self,
        *,
        channels: Sequence[str],
        budget_usd: float | None = None,
        priority: Sequence[str] | None = None,
        progress_interval_s: float = 30.0,
        failover_alert_threshold: int = 3,
        on_failover_alert: Callable[..., Any] | None = None,
        deadline: datetime | timedelta | str | None = None,
        objective: str = "cheapest",
        router_options: Mapping[str, Any] | None = None,
        redis_conn_id: str | None = None,
        claim_ttl_s: float | None = DEFAULT_CLAIM_TTL_S,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.channels = channels
        self.budget_usd = budget_usd
        self.priority = list(priority or [])
        self.progress_interval_s = progress_interval_s
        self.failover_alert_threshold = failover_alert_threshold
        self.on_failover_alert = on_failover_alert
        self.deadline = deadline
        self.objective = objective
        self.router_options = dict(router_options or {})
        self.redis_conn_id = redis_conn_id
        self.claim_ttl_s = claim_ttl_s
        if claim_ttl_s is not None and not claim_ttl_s > 0:
            raise ConfigurationError(
                f"{self.task_id}: claim_ttl_s must be a positive number of seconds (or None to turn "
                f"claims off), got {claim_ttl_s!r}"
            )
        if objective not in ("cheapest", "fastest"):
            raise ConfigurationError(
                f"{self.task_id}: objective must be 'cheapest' or 'fastest', got {objective!r}"
            )

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_banana.hooks.storage import storage_for
        from airflow_banana.routing.eligibility import require_servable
        from airflow_banana.storage.outputs import OutputStore
        from airflow_banana.storage.report import build_report

        skip_without_manifest(self.manifest, task_id=self.task_id)
        identity = RunIdentity.from_context(context)
        started = datetime.now(UTC)
        self.budget_usd = budget_from(self.budget_usd, task_id=self.task_id)
        due = run_deadline(
            self.deadline, started=started, execution_timeout=self.execution_timeout, task_id=self.task_id
        )
        configs = load_channel_configs(self.channels, task_id=self.task_id)
        storage = storage_for(self.output_prefix, self.gcp_conn_id)
        store = OutputStore(storage, self.output_prefix)
        prepared = self.prepare(context, storage)
        if prepared.rejects_jsonl:
            store.write_rejects(identity.run_key, prepared.rejects_jsonl)
        # an official-only or grounded item that no channel may carry fails the task now, unpaid
        needs = ((w.request.item_id, w.request) for w in prepared.work)
        require_servable(needs, configs, who=self.task_id, lane="realtime")
        work = [
            w if w.deadline is not None or due is None else replace(w, deadline=due) for w in prepared.work
        ]
        self.log.info(
            "run %s: %d item(s) from %s through channels %s; objective %s, items without a deadline due %s",
            identity.run_key,
            len(work),
            self.manifest,
            ", ".join(c.name for c in configs),
            self.objective,
            due.isoformat(timespec="seconds") if due else "within the default one-hour horizon (soft)",
        )
        result = asyncio.run(self._run(configs, store, identity, work, context))
        report = build_report(
            result.outcomes,
            run_key=identity.run_key,
            lane="realtime",
            started_at=result.started_at,
            finished_at=result.finished_at,
            manifest=self.manifest,
            output_prefix=self.output_prefix,
            budget_usd=self.budget_usd,
            breaker_openings=result.breaker_openings,
            rejects=prepared.rejected,
            reject_reasons=prepared.reject_reasons,
            extra={"channels_left_out": result.channels_left_out},
        )
        return self.finish_run(context, store, report, outcomes=result.outcomes, prepared=prepared)

    async def _run(
        self, configs: Sequence[Any], store: Any, identity: RunIdentity, work: Any, context: Context
    ) -> Any:
        from airflow_banana.routing import RouterConfig

        try:
            options: dict[str, Any] = {
                "objective": self.objective,
                "priority": tuple(self.priority),
                "budget_usd": self.budget_usd,
                "failover_alert_threshold": self.failover_alert_threshold,
            }
            config = RouterConfig(**{**options, **self.router_options})
        except TypeError as err:
            raise ConfigurationError(f"{self.task_id}: unknown router option: {err}") from err
        return await run_realtime_lane(
            configs,
            work,
            store=store,
            run_key=identity.run_key,
            task_id=self.task_id,
            settings=self._settings(context),
            router_config=config,
            redis_conn_id=self.redis_conn_id,
        )

    def _settings(self, context: Context) -> RealtimeSettings:
        from airflow_banana.realtime.engine import RealtimeSettings

        return RealtimeSettings(
            force=self.force,
            progress_interval_s=self.progress_interval_s,
            on_failover_alert=self._alert_callback(context),
            claims=self.claim_ttl_s is not None,
            claim_ttl_s=self.claim_ttl_s or DEFAULT_CLAIM_TTL_S,
        )

    def _alert_callback(self, context: Context) -> Callable[[Mapping[str, Any]], None] | None:
        notifier = self.on_failover_alert
        if notifier is None:
            return None

        def call(info: Mapping[str, Any]) -> None:
            notifier({**context, "banana_alert": dict(info)})

        return call
