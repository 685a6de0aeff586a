"""Plan a manifest: split it into a realtime and a batch sub-manifest by deadline and price.

Users otherwise pick one lane by hand. ``compute_plan`` runs the pure planner
(``planning.planner.make_plan``) on the manifest's items; ``write_plan`` writes one sub-manifest
per lane under the run folder and returns a small dict downstream tasks branch or map on.
Everything happens before the first paid call: a manifest that is invalid, or items no lane can
finish by their deadline, are reported here — with ``on_infeasible="fail"`` the plan fails and
nothing is spent.

Ways in, one code path:

* ``PlanImagesOperator`` (``operators.plan``, classic operator, templated fields),
* ``plan_manifest(...)``, a plain function to call from ``@task`` (TaskFlow) or a script, and
* ``dry_run_plan(...)``, which writes nothing (the CLI's ``plan`` and ``estimate``;
  ``planning.estimate`` compares the plan with all-realtime and all-batch).

Files written under ``{output_prefix}/runs/{run_key}/plan/``: ``realtime.jsonl`` and
``batch.jsonl`` (or ``…-NNNN.jsonl`` shards with ``shard_size``), ``plan.json`` (one row per
item: lane, expected cost, expected finish, reason), ``plan.md`` (the human-readable plan) and
``infeasible.jsonl``. Sub-manifest deadlines are absolute ISO times, so they mean the same thing
whichever task reads them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from airflow_banana.channels.config import ChannelConfig
from airflow_banana.exceptions import ConfigurationError
from airflow_banana.manifests import ManifestItem, rendered_none, write_manifest
from airflow_banana.planning.history import BATCH_LANE_PREFIX, batch_lane, batch_lane_name
from airflow_banana.planning.inputs import (
    duration_of,
    earliest_deadline,
    plan_items,
    realtime_capacities,
    recent_success_rates,
    with_absolute_deadline,
)
from airflow_banana.planning.planner import (
    DEFAULT_CONFIDENCE,
    BatchLane,
    LaneCapacity,
    Plan,
    PlanItem,
    make_plan,
)
from airflow_banana.storage.objects import Storage, join_uri

if TYPE_CHECKING:
    from airflow_banana.manifests.prepare import PreparedManifest
    from airflow_banana.storage.outputs import OutputStore

OnInfeasible = Literal["fail", "skip", "realtime", "batch"]
ON_INFEASIBLE: tuple[str, ...] = ("fail", "skip", "realtime", "batch")
# The XCom lists at most this many infeasible items; infeasible.jsonl has them all.
MAX_INFEASIBLE_IN_XCOM = 20


@dataclass(frozen=True)
class ComputedPlan:
    """A plan with the manifest items it covers and their resolved deadlines."""

    plan: Plan
    items: dict[str, ManifestItem]
    deadlines: dict[str, datetime | None]
    skipped_done: tuple[str, ...] = ()
    realtime: tuple[LaneCapacity, ...] = ()
    batch: BatchLane | None = None
    planned: tuple[PlanItem, ...] = ()  # as planned: with the lanes each item may use


def parse_now(value: datetime | str | None) -> datetime:
    """``now`` from an aware datetime or an ISO string (tests and dry runs); default: the wall clock."""
    if value is None or rendered_none(value):
        return datetime.now(UTC)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError as err:
            raise ConfigurationError(f"now: {value!r} is not an ISO-8601 date-time") from err
    if value.tzinfo is None or value.utcoffset() is None:
        raise ConfigurationError(f"now: {value.isoformat()} has no timezone; add 'Z' or an offset")
    return value


def compute_plan(
    items: Sequence[ManifestItem],
    *,
    configs: Sequence[ChannelConfig],
    batch: ChannelConfig | str | None,
    now: datetime,
    logical_date: datetime,
    default_deadline: str | timedelta | None = None,
    batch_turnaround: str | timedelta | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    success_rates: Mapping[str, float] | None = None,
    storage: Storage | None = None,
    output_prefix: str | None = None,
    skip: Sequence[str] = (),
    realtime_latency: str | timedelta | None = None,
) -> ComputedPlan:
    """Plan ``items`` (minus ``skip``, e.g. already done) over the channels and the batch lane.

    ``batch`` is the batch lane's connection, a backend name (``developer``/``vertex``) for dry
    runs, or ``None`` (realtime only). ``realtime_latency`` is the channels' dispatch-to-image
    time (default 60 s); with ``max_concurrency`` it also bounds their throughput.

    Success rates not given are read from recent run reports under ``output_prefix``; the
    batch turnaround, unless fixed, from the backend's recorded history there.
    """
    skipped = set(skip)
    todo = [item for item in items if item.id not in skipped]
    # official-only and grounded items are priced on the lanes that may carry them only
    lane_configs: dict[str, ChannelConfig | None] = {c.name: c for c in configs}
    if isinstance(batch, ChannelConfig):
        lane_configs[batch_lane_name(batch)] = batch
    elif batch is not None:
        lane_configs[BATCH_LANE_PREFIX + batch] = None  # a Google batch backend: official, grounds
    planned = plan_items(
        todo, logical_date=logical_date, default_deadline=default_deadline, lanes=lane_configs
    )
    rates = dict(success_rates or {})
    if storage is not None and output_prefix:
        measured = recent_success_rates(storage, output_prefix, [c.name for c in configs])
        rates = {**measured, **rates}
    latency = duration_of(realtime_latency, what="realtime_latency")
    realtime = realtime_capacities(configs, success_rates=rates, latency=latency)
    lanes = []
    if batch is not None:
        lanes.append(
            batch_lane(
                batch,
                storage=storage,
                output_prefix=output_prefix,
                turnaround=duration_of(batch_turnaround, what="batch_turnaround"),
                confidence=confidence,
            )
        )
    plan = make_plan(planned, now=now, realtime=realtime, batch=lanes, confidence=confidence)
    return ComputedPlan(
        plan=plan,
        items={item.id: item for item in todo},
        deadlines={p.item_id: p.deadline for p in planned},
        skipped_done=tuple(item.id for item in items if item.id in skipped),
        realtime=tuple(realtime),
        batch=lanes[0] if lanes else None,
        planned=tuple(planned),
    )


def _shards(items: Sequence[ManifestItem], shard_size: int | None) -> list[list[ManifestItem]]:
    if not items:
        return []
    if not shard_size:
        return [list(items)]
    return [list(items[i : i + shard_size]) for i in range(0, len(items), shard_size)]


def iso_seconds(moment: datetime | None) -> str | None:
    """An ISO time to the second (plan files, estimates), or None."""
    return None if moment is None else moment.isoformat(timespec="seconds")


def write_plan(
    computed: ComputedPlan,
    storage: Storage,
    *,
    output_prefix: str,
    run_key: str,
    on_infeasible: OnInfeasible = "fail",
    shard_size: int | None = None,
) -> dict[str, Any]:
    """Write the sub-manifests and plan files; return the small XCom-able summary.

    ``on_infeasible``: ``fail`` raises ``ConfigurationError`` after writing the plan files (nothing
    spent); ``skip`` leaves infeasible items out; ``realtime`` / ``batch`` send them to that lane
    without a deadline (best effort: they will be late; ``batch`` suits backfills of past dates).
    """
    if on_infeasible not in ON_INFEASIBLE:
        raise ConfigurationError(f"on_infeasible must be one of {ON_INFEASIBLE}, got {on_infeasible!r}")
    if shard_size is not None and shard_size < 1:
        raise ConfigurationError(f"shard_size must be at least 1 (or None), got {shard_size}")
    plan = computed.plan
    folder = join_uri(output_prefix, "runs", run_key, "plan")
    lanes: dict[str, list[ManifestItem]] = {"realtime": [], "batch": []}
    for kind in ("realtime", "batch"):
        for item_id in plan.item_ids(kind):  # dispatch order: earliest finish first
            item = computed.items[item_id]
            lanes[kind].append(with_absolute_deadline(item, computed.deadlines[item_id]))
    if on_infeasible in ("realtime", "batch"):
        if on_infeasible == "batch" and computed.batch is None:
            raise ConfigurationError(
                f"plan for run {run_key}: on_infeasible='batch' but no batch lane is planned; "
                "give a batch channel or choose another policy (nothing was spent)"
            )
        lanes[on_infeasible] += [
            with_absolute_deadline(computed.items[bad.item_id], None) for bad in plan.infeasible
        ]

    uris: dict[str, list[str]] = {}
    for kind, items in lanes.items():
        shards = _shards(items, shard_size)
        uris[kind] = []
        for index, shard in enumerate(shards):
            name = f"{kind}.jsonl" if shard_size is None else f"{kind}-{index:04d}.jsonl"
            uri = join_uri(folder, name)
            write_manifest(uri, shard, storage)
            uris[kind].append(uri)

    rows = [
        {
            "item_id": a.item_id,
            "image_size": a.image_size,
            "lane": a.lane,
            "kind": a.kind,
            "expected_cost_usd": round(a.expected_cost_usd, 6),
            "expected_finish": iso_seconds(a.expected_finish),
            "deadline": iso_seconds(a.deadline),
            "reason": a.reason,
        }
        for a in plan.assignments
    ]
    infeasible = [
        {
            "item_id": bad.item_id,
            "image_size": bad.image_size,
            "deadline": iso_seconds(bad.deadline),
            "code": bad.code,
            "reason": bad.reason,
            "earliest_achievable": iso_seconds(bad.earliest_achievable),
        }
        for bad in plan.infeasible
    ]
    plan_uri = join_uri(folder, "plan.json")
    storage.write_json(
        plan_uri,
        {
            "summary": plan.summary(),
            "skipped_done": list(computed.skipped_done),
            "on_infeasible": on_infeasible,
            "assignments": rows,
            "infeasible": infeasible,
        },
    )
    markdown = plan_markdown(plan, run_key=run_key, skipped_done=len(computed.skipped_done))
    storage.write_text(join_uri(folder, "plan.md"), markdown, content_type="text/markdown; charset=utf-8")
    infeasible_uri = join_uri(folder, "infeasible.jsonl")
    storage.write_text(
        infeasible_uri,
        "".join(json.dumps(row, sort_keys=True) + "\n" for row in infeasible),
        content_type="application/x-ndjson",
    )
    batch_deadlines = [computed.deadlines[i] for i in plan.item_ids("batch")]
    summary: dict[str, Any] = {
        **plan.summary(),
        "plan_uri": plan_uri,
        "plan_md_uri": join_uri(folder, "plan.md"),
        "infeasible_uri": infeasible_uri,
        "realtime_manifest": uris["realtime"][0] if len(uris["realtime"]) == 1 else None,
        "batch_manifest": uris["batch"][0] if len(uris["batch"]) == 1 else None,
        "realtime_manifests": uris["realtime"],
        "batch_manifests": uris["batch"],
        "realtime_items": len(lanes["realtime"]),
        "batch_items": len(lanes["batch"]),
        "batch_deadline": iso_seconds(earliest_deadline(batch_deadlines)),
        "skipped_done": len(computed.skipped_done),
        "on_infeasible": on_infeasible,
        "infeasible_items": infeasible[:MAX_INFEASIBLE_IN_XCOM],
    }
    if plan.infeasible and on_infeasible == "fail":
        shown = "; ".join(
            f"{bad.item_id}: {bad.code} (earliest {iso_seconds(bad.earliest_achievable) or 'never'})"
            for bad in plan.infeasible[:5]
        )
        more = f" and {len(plan.infeasible) - 5} more" if len(plan.infeasible) > 5 else ""
        raise ConfigurationError(
            f"plan for run {run_key}: {len(plan.infeasible)} item(s) cannot meet their deadline on any "
            f"lane: {shown}{more}. Nothing was spent; see {join_uri(folder, 'plan.md')}. Relax the "
            "deadlines, add channels, or set on_infeasible='skip' or 'realtime' to go on"
        )
    return summary


def plan_markdown(plan: Plan, *, run_key: str, skipped_done: int = 0) -> str:
    """``plan.md``: the plan as Markdown (``Plan.describe`` is the terminal's fixed-width text)."""
    n_batch = sum(1 for a in plan.assignments if a.kind == "batch")
    n_rt = len(plan.assignments) - n_batch
    lines = [
        f"# Plan `{run_key}`",
        "",
        f"As of {iso_seconds(plan.now)}, confidence {plan.confidence:.0%}: "
        f"**{len(plan.assignments) + len(plan.infeasible)} items** — {n_batch} batch, {n_rt} realtime, "
        f"{len(plan.infeasible)} infeasible.",
        "",
        "| lane | kind | items | expected cost | last expected finish |",
        "|---|---|---:|---:|---|",
    ]
    lines += [
        f"| {s.lane} | {s.kind} | {s.items} | ${s.expected_cost_usd:.3f} | "
        f"{iso_seconds(s.last_finish) or '–'} |"
        for s in plan.lanes
    ]
    baseline = plan.baseline_cost_usd
    pct = f" ({plan.savings_usd / baseline:.0%})" if baseline > 0 else ""
    lines += [
        "",
        f"Expected cost **${plan.expected_cost_usd:.3f}**; all realtime at the Google direct list price "
        f"${baseline:.3f}; savings ${plan.savings_usd:.3f}{pct}.",
        "",
    ]
    if plan.infeasible:
        lines += [
            f"## Infeasible ({len(plan.infeasible)}; nothing will be spent on them)",
            "",
            "| item | size | deadline | why | earliest achievable |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| `{bad.item_id}` | {bad.image_size} | {iso_seconds(bad.deadline) or 'none'} | {bad.code}: "
            f"{bad.reason} | {iso_seconds(bad.earliest_achievable) or 'never (no lane)'} |"
            for bad in plan.infeasible
        ]
        lines.append("")
    else:
        lines += ["Every item meets its deadline.", ""]
    if skipped_done:
        lines += [f"Already done (skipped, not paid again): {skipped_done} item(s).", ""]
    return "\n".join(lines)


def plan_manifest(
    manifest: str,
    output_prefix: str,
    channels: Sequence[str] | str,
    *,
    run_key: str,
    logical_date: datetime,
    batch_channel: str | None = None,
    now: datetime | str | None = None,
    default_deadline: str | timedelta | None = None,
    batch_turnaround: str | timedelta | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    on_infeasible: OnInfeasible = "fail",
    shard_size: int | None = None,
    skip_done: bool = True,
    success_rates: Mapping[str, float] | None = None,
    defaults: Mapping[str, Any] | None = None,
    on_invalid: Literal["reject", "quarantine"] = "reject",
    gcp_conn_id: str | None = None,
    realtime_latency: str | timedelta | None = None,
) -> dict[str, Any]:
    """Plan a manifest and write its sub-manifests; the TaskFlow-friendly form of the plan step.

    ``channels`` are realtime connection ids; ``batch_channel`` the connection the batch lane
    submits through (``None``: realtime only). ``run_key`` names the run folder
    (``RunIdentity.from_context(context).run_key`` in a task). Items already done with the same
    request fingerprint are left out when ``skip_done`` (a backfill pays only for what is
    missing). Returns the summary of ``write_plan``.
    """
    from airflow_banana.hooks.channel import load_channel_configs
    from airflow_banana.hooks.storage import storage_for
    from airflow_banana.storage.outputs import OutputStore

    task = f"plan {run_key}"
    configs = load_channel_configs(channels, task_id=task)
    batch_config = load_channel_configs([batch_channel], task_id=task)[0] if batch_channel else None
    storage = storage_for(output_prefix, gcp_conn_id)
    store = OutputStore(storage, output_prefix)
    prepared, done = _prepare_skipping_done(
        manifest,
        storage,
        store if skip_done else None,
        logical_date=logical_date,
        on_invalid=on_invalid,
        defaults=dict(defaults or {}),
    )
    if prepared.rejects_jsonl:
        store.write_rejects(run_key, prepared.rejects_jsonl)
    computed = compute_plan(
        prepared.items,
        configs=configs,
        batch=batch_config,
        now=parse_now(now),
        logical_date=logical_date,
        default_deadline=default_deadline,
        batch_turnaround=batch_turnaround,
        confidence=confidence,
        success_rates=success_rates,
        storage=storage,
        output_prefix=output_prefix,
        skip=done,
        realtime_latency=realtime_latency,
    )
    summary = write_plan(
        computed,
        storage,
        output_prefix=output_prefix,
        run_key=run_key,
        on_infeasible=on_infeasible,
        shard_size=shard_size,
    )
    summary["manifest"] = manifest
    summary["rejected"] = prepared.rejected
    return summary


def dry_run_plan(
    manifest: str,
    channels: Sequence[str],
    *,
    batch_channel: str | None = None,
    batch_backend: str | None = "developer",
    now: datetime | str | None = None,
    logical_date: datetime | str | None = None,
    batch_turnaround: str | timedelta | None = None,
    output_prefix: str | None = None,
    default_deadline: str | timedelta | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    gcp_conn_id: str | None = None,
    realtime_latency: str | timedelta | None = None,
) -> ComputedPlan:
    """Plan a manifest without writing anything (the CLI's ``plan`` and ``estimate``).

    Reads the manifest and its reference images (so bad input shows up now), the batch history
    and recent reports under ``output_prefix`` when given, and leaves out items already done there.
    """
    from airflow_banana.hooks.channel import load_channel_configs
    from airflow_banana.hooks.storage import storage_for
    from airflow_banana.storage.outputs import OutputStore

    at = parse_now(now)
    anchor = parse_now(logical_date) if logical_date else at
    configs = load_channel_configs(channels, task_id="plan") if channels else []
    batch: ChannelConfig | str | None = batch_backend
    if batch_channel:
        batch = load_channel_configs([batch_channel], task_id="plan")[0]
    storage = storage_for(manifest, gcp_conn_id)
    store = OutputStore(storage, output_prefix) if output_prefix else None
    prepared, done = _prepare_skipping_done(manifest, storage, store, logical_date=anchor)
    return compute_plan(
        prepared.items,
        configs=configs,
        batch=batch,
        now=at,
        logical_date=anchor,
        default_deadline=default_deadline,
        batch_turnaround=batch_turnaround,
        confidence=confidence,
        storage=storage if output_prefix else None,
        output_prefix=output_prefix,
        skip=done,
        realtime_latency=realtime_latency,
    )


def _prepare_skipping_done(
    manifest: str,
    storage: Storage,
    store: OutputStore | None,
    *,
    logical_date: datetime,
    on_invalid: Literal["reject", "quarantine"] = "reject",
    defaults: Mapping[str, Any] | None = None,
) -> tuple[PreparedManifest, list[str]]:
    """The manifest prepared (every check before spend) and the ids of its items already done in
    ``store`` with the same request fingerprint (none without a store): a backfill plans, and
    pays, only for what is missing."""
    from airflow_banana.manifests.prepare import prepare_manifest

    prepared = prepare_manifest(
        manifest, storage, on_invalid=on_invalid, defaults=defaults, logical_date=logical_date
    )
    if store is None:
        return prepared, []
    done = [
        w.request.item_id
        for w in prepared.work
        if store.done_record(w.request.item_id, w.request.fingerprint())
    ]
    return prepared, done


def lanes_to_run(
    summary: Mapping[str, Any], *, realtime_task_id: str | None = None, batch_task_id: str | None = None
) -> list[str]:
    """Task ids to follow from a plan summary: for ``@task.branch`` / ``BranchPythonOperator``."""
    out = []
    if realtime_task_id and summary.get("realtime_manifests"):
        out.append(realtime_task_id)
    if batch_task_id and summary.get("batch_manifests"):
        out.append(batch_task_id)
    return out
