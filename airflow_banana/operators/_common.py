"""Pieces every operator needs: the realtime lane (and the batch lane's rescue through it), XCom
summaries, deadlines and failure limits, metrics. Channel configs from connections are
``hooks.channel.load_channel_configs``."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow_banana.channels.config import ChannelConfig
from airflow_banana.exceptions import BananaError, ConfigurationError, ManifestError
from airflow_banana.manifests.model import rendered_none

if TYPE_CHECKING:
    from airflow_banana.batch.lifecycle import BatchRun
    from airflow_banana.batch.rescue import RealtimeRescue, RescuePolicy
    from airflow_banana.realtime.engine import RealtimeSettings, RunResult, WorkItem
    from airflow_banana.routing import ChannelStateBackend, RouterConfig
    from airflow_banana.storage.outputs import OutputStore

log = logging.getLogger(__name__)


def shared_state_for(
    configs: Sequence[ChannelConfig], redis_conn_id: str | None, *, task_id: str, rng: random.Random
) -> ChannelStateBackend | None:
    """The fleet-wide channel state when a Redis connection is named (operator arg or channel
    extra), else None (in-process state). Shared state needs ``SystemClock(shared=True)``."""
    from airflow_banana.hooks.redis import BananaRedisHook, redis_conn_id_for

    conn_ids = list(dict.fromkeys(c.conn_id for c in configs))
    shared = redis_conn_id_for(redis_conn_id, conn_ids, task_id=task_id)
    return BananaRedisHook(shared).get_backend(rng) if shared else None


async def run_realtime_lane(
    configs: Sequence[ChannelConfig],
    work: Sequence[WorkItem],
    *,
    store: OutputStore,
    run_key: str,
    task_id: str,
    settings: RealtimeSettings,
    router_config: RouterConfig | None = None,
    redis_conn_id: str | None = None,
) -> RunResult:
    """Route ``work`` through ``configs`` with the realtime engine; every operator's one way in.

    With a Redis connection (the operator's ``redis_conn_id`` or a channel's extra) breakers,
    limits and quotas are shared by every worker; that needs a clock all workers agree on.
    Channels whose free preflight call says they cannot work are left out (``realtime.preflight``).
    """
    from airflow_banana.channels import build_channel, close_channels
    from airflow_banana.realtime.engine import RealtimeEngine
    from airflow_banana.realtime.preflight import unusable_channels
    from airflow_banana.routing import SystemClock, router_for

    rng = random.Random()
    backend = shared_state_for(configs, redis_conn_id, task_id=task_id, rng=rng)
    channels = {c.name: build_channel(c) for c in configs}
    try:
        unusable = await unusable_channels(channels) if work else {}
        usable = [c for c in configs if c.name not in unusable]
        if not usable:
            raise ConfigurationError(
                f"{task_id}: no channel passed its preflight call, nothing was spent: "
                + "; ".join(unusable.values())
            )
        router = router_for(
            usable, SystemClock(shared=backend is not None), rng, backend, config=router_config
        )
        engine = RealtimeEngine(
            channels={c.name: channels[c.name] for c in usable},
            router=router,
            store=store,
            run_key=run_key,
            settings=settings,
            metrics=AirflowMetrics(),
        )
        result = await engine.run(work)
        result.channels_left_out = unusable
        return result
    finally:
        await close_channels(channels.values())


def realtime_rescue(
    channels: Sequence[str], policy: RescuePolicy, *, task_id: str, force: bool, redis_conn_id: str | None
) -> RealtimeRescue:
    """The batch lane's rescue through realtime ``channels`` (``batch.rescue``), run with
    ``run_realtime_lane``; the connections are read when the rescue first needs them."""
    from airflow_banana.batch.rescue import RealtimeRescue
    from airflow_banana.hooks.channel import load_channel_configs
    from airflow_banana.realtime.engine import RealtimeSettings

    settings = RealtimeSettings(lane="batch-rescue", force=force)

    def run_lane(configs: Sequence[ChannelConfig], alive: Sequence[WorkItem], run: BatchRun) -> RunResult:
        lane = run_realtime_lane(
            configs,
            alive,
            store=run.store,
            run_key=run.key,
            task_id=task_id,
            settings=settings,
            redis_conn_id=redis_conn_id,
        )
        return asyncio.run(lane)

    return RealtimeRescue(lambda: load_channel_configs(channels, task_id=task_id), policy, run_lane)


def skip_without_manifest(manifest: object, *, task_id: str) -> None:
    """Skip the task when its manifest rendered to nothing: a plan gave this lane no items.

    ``PlanImagesOperator`` pushes ``realtime_manifest``/``batch_manifest`` = None for a lane with
    nothing to do (or a sharded plan: map over ``*_manifests`` then); a lane wired straight after
    it must end skipped, not failed on a manifest called "None".
    """
    if rendered_none(manifest):
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException(
            f"{task_id}: no manifest to generate (the plan gave this lane no items, or it was sharded: "
            "map over realtime_manifests/batch_manifests); skipped, nothing spent"
        )


def budget_from(value: object, *, task_id: str) -> float | None:
    """A USD budget from an argument that templating may have rendered as a string."""
    if rendered_none(value):
        return None
    try:
        budget = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as err:
        raise ConfigurationError(f"{task_id}: budget_usd must be a number of USD, got {value!r}") from err
    if budget < 0:
        raise ConfigurationError(f"{task_id}: budget_usd must not be negative, got {budget}")
    return budget


def run_deadline(
    deadline: object, *, started: datetime, execution_timeout: timedelta | None, task_id: str
) -> datetime | None:
    """The deadline of a run's items that carry none of their own, or None (the router's default).

    In order: the operator's ``deadline`` (a timezone-aware datetime, a timedelta, or a string:
    ISO-8601 date-time with offset, or a duration such as ``PT2H`` / ``+2h``; a duration counts
    from ``started``, the task's start); else the task's ``execution_timeout`` less the time the
    report needs (a tenth of it, at most a minute): Airflow kills the task at its timeout, so
    waiting past it would lose the items; else None, and the router plans within its soft
    default horizon (``routing.DEFAULT_DEADLINE_S``).
    """
    from airflow_banana.manifests.model import resolve_deadline

    if rendered_none(deadline):
        deadline = None
    if deadline is None:
        if execution_timeout is None:
            return None
        return started + execution_timeout - min(execution_timeout / 10, timedelta(minutes=1))
    if isinstance(deadline, timedelta):
        if deadline <= timedelta(0):
            raise ConfigurationError(f"{task_id}: deadline must be a positive duration, got {deadline}")
        return started + deadline
    if isinstance(deadline, datetime):
        if deadline.tzinfo is None:
            raise ConfigurationError(
                f"{task_id}: deadline {deadline.isoformat()} has no timezone; pass an aware datetime"
            )
        return deadline
    if isinstance(deadline, str):
        try:
            return resolve_deadline(deadline.strip(), started)
        except ValueError as err:
            raise ConfigurationError(f"{task_id}: {err} (nothing was spent)") from err
    raise ConfigurationError(
        f"{task_id}: deadline must be a datetime, a timedelta or a string, got {type(deadline).__name__}"
    )


def logical_date_of(context: Mapping[str, Any]) -> datetime:
    """The run's logical date (relative deadlines count from it); now for runs without one."""
    value = context.get("logical_date") or context.get("data_interval_start")
    if value is None:
        return datetime.now(UTC)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def summary_for_xcom(report: Mapping[str, Any], report_uri: str) -> dict[str, Any]:
    """Secret-free, no image bytes: counts, spend, where the report is and where each image is."""
    return {
        "report_uri": report_uri,
        "run_key": report["run_key"],
        "output_prefix": report.get("output_prefix"),
        "summary": report.get("summary"),
        "items": dict(report["items"]),
        "spent_usd": report["cost"]["spent_usd"],
        "cost_per_success_usd": report["cost"]["cost_per_success_usd"],
        "images": dict(report.get("images", {})),
    }


def checked_max_rejected(value: int | None, *, task_id: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ConfigurationError(
            f"{task_id}: max_rejected_items must be a whole number >= 0 or None, got {value!r}"
        )
    return value


def enforce_item_limits(
    report: Mapping[str, Any],
    report_uri: str,
    *,
    task_id: str,
    max_failed_items: int,
    max_rejected_items: int | None,
) -> None:
    """Fail the task (after its report is written) when too many items have no image.

    ``max_rejected_items=None`` tolerates quarantined lines while something valid is left; a
    manifest whose every line was rejected fails (a green run that made nothing misleads).
    """
    items = report["items"]
    rejected = items["rejected_in_manifest"]
    valid = items["total"]
    limit = max_rejected_items if max_rejected_items is not None else (0 if valid == 0 else None)
    if limit is not None and rejected > limit:
        why = "every manifest line was rejected" if valid == 0 else f"more than max_rejected_items={limit}"
        reasons = "; ".join(report.get("rejected_lines", [])[:3])
        raise ManifestError(
            f"{task_id}: {rejected} line(s) rejected, {why} (first: {reasons}; all in "
            f"{report_uri.rsplit('/', 1)[0]}/rejects.jsonl); nothing was spent on them — fix the lines "
            "and rerun, finished items are skipped",
            manifest=str(report.get("manifest") or "manifest"),
        )
    failed = items["failed"] + items["not_attempted"]
    if failed > max_failed_items:
        raise failed_items_error(task_id, failed, report_uri, report.get("failed_items", []))


def failed_items_error(
    task_id: str, failed: int, report_uri: str, failed_items: Sequence[Mapping[str, Any]] = ()
) -> BananaError:
    first = "; ".join(f"{f['item_id']}: {str(f['reason'])[:300]}" for f in failed_items[:3])
    return BananaError(
        f"{task_id}: {failed} item(s) ended without an image"
        + (f" (first: {first})" if first else "")
        + f"; all reasons in {report_uri}; a retry regenerates only those — finished items are "
        "skipped and not paid again"
    )


class AirflowMetrics:
    """Airflow's Stats (statsd/otel as configured); a metrics failure never fails the task."""

    def incr(self, name: str, count: int = 1) -> None:
        try:
            from airflow.sdk.observability.stats import Stats

            Stats.incr(name, count)
        except Exception:
            log.debug("metrics: incr %s failed", name, exc_info=True)

    def timing(self, name: str, seconds: float) -> None:
        try:
            from airflow.sdk.observability.stats import Stats

            Stats.timing(name, seconds * 1000.0)
        except Exception:
            log.debug("metrics: timing %s failed", name, exc_info=True)
