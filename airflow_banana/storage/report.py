"""Run reports: what a run did, what it cost, and what is left — as JSON and as Markdown.

Pure: built from the per-item outcomes every lane produces, rendered to text; the caller writes
it to ``runs/{run_key}/report.json`` and ``report.md``. A person reading report.md should learn
without tooling whether every image is there, what it cost, and why anything failed.
"""

from __future__ import annotations

import itertools
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_banana.models import DEFAULT_DATA_POLICY, OFFICIAL_ONLY
from airflow_banana.pricing import GOOGLE_DIRECT

SUCCEEDED = "succeeded"
FAILED = "failed"
SKIPPED = "skipped"  # already done in storage with the same request fingerprint
NOT_ATTEMPTED = "not_attempted"  # budget or deadline ran out before the item got a turn


@dataclass(frozen=True)
class Attempt:
    """One call to one channel for one item."""

    channel: str
    outcome: str  # "success" or an ErrorClass value
    latency_s: float
    cost_usd: float = 0.0
    billed: bool = False
    status_code: int | None = None
    reason: str = ""
    started_at: str = ""
    # The configured price of this attempt, what the router ranks by; ``cost_usd`` is the billed
    # figure (the truth). None: the same as ``cost_usd``.
    estimated_cost_usd: float | None = None

    @property
    def estimate(self) -> float:
        return self.cost_usd if self.estimated_cost_usd is None else self.estimated_cost_usd


@dataclass
class ItemOutcome:
    """Where one item ended up; the report and the per-item metadata are built from it."""

    item_id: str
    status: str
    image_size: str
    attempts: list[Attempt] = field(default_factory=list)
    channel: str | None = None
    cost_usd: float = 0.0
    reason: str = ""
    image_uri: str | None = None
    size_matches: bool | None = None
    latency_s: float | None = None  # first attempt start to success
    cost_source: str | None = None  # "reported by the channel" or "configured price"
    data_policy: str = DEFAULT_DATA_POLICY  # "official_only": only official Google channels were used
    grounding: str | None = None  # "google_search": the request carried the Search tool
    model: str | None = None  # the model that made the image (its channel's model tier)

    @property
    def estimated_cost_usd(self) -> float:
        """The item's attempts at configured prices (``cost_usd`` is what was billed)."""
        return sum(a.estimate for a in self.attempts) if self.attempts else self.cost_usd

    @property
    def failovers(self) -> int:
        channels = [a.channel for a in self.attempts]
        return sum(1 for a, b in itertools.pairwise(channels) if a != b)


ALREADY_DONE = "already done with the same request fingerprint"


def skipped_outcome(
    item_id: str, image_size: str, record: Mapping[str, Any], reason: str = ALREADY_DONE
) -> ItemOutcome:
    """The outcome of an item a committed success already covers (``record``: its metadata, as
    ``OutputStore.done_record`` answers it): skipped, nothing spent, the stored image reported."""
    return ItemOutcome(
        item_id,
        SKIPPED,
        image_size,
        image_uri=(record.get("image") or {}).get("uri"),
        channel=record.get("channel"),
        reason=reason,
    )


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def build_report(
    outcomes: Iterable[ItemOutcome],
    *,
    run_key: str,
    lane: str,
    started_at: str,
    finished_at: str,
    manifest: str | None = None,
    output_prefix: str | None = None,
    budget_usd: float | None = None,
    breaker_openings: Mapping[str, int] | None = None,
    rejects: int = 0,
    reject_reasons: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Aggregate per-item outcomes into the report dict written as report.json."""
    items = list(outcomes)
    counts = Counter(o.status for o in items)
    paid = [o for o in items if o.status != SKIPPED]
    spent = round(sum(o.cost_usd for o in paid), 6)
    succeeded = [o for o in items if o.status == SUCCEEDED]
    sizes = Counter(o.image_size for o in succeeded)
    direct = sum(GOOGLE_DIRECT[s] * n for s, n in sizes.items())

    channels: dict[str, dict[str, Any]] = {}
    for outcome in paid:
        for a in outcome.attempts:
            ch = channels.setdefault(
                a.channel,
                {
                    "calls": 0,
                    "successes": 0,
                    "failures": 0,
                    "spend_usd": 0.0,
                    "estimated_usd": 0.0,
                    "errors": Counter(),
                },
            )
            ch["calls"] += 1
            ch["spend_usd"] += a.cost_usd
            ch["estimated_usd"] += a.estimate
            if a.outcome == "success":
                ch["successes"] += 1
            else:
                ch["failures"] += 1
                ch["errors"][a.outcome] += 1
    for name, ch in channels.items():
        ch["spend_usd"] = round(ch["spend_usd"], 6)
        ch["estimated_usd"] = round(ch["estimated_usd"], 6)
        ch["errors"] = dict(ch["errors"])
        ch["breaker_openings"] = (breaker_openings or {}).get(name, 0)
    for name, n in (breaker_openings or {}).items():
        if name not in channels:
            channels[name] = {
                "calls": 0,
                "successes": 0,
                "failures": 0,
                "spend_usd": 0.0,
                "estimated_usd": 0.0,
                "errors": {},
                "breaker_openings": n,
            }

    latencies = sorted(o.latency_s for o in succeeded if o.latency_s is not None)
    calls = sum(len(o.attempts) for o in paid)
    report: dict[str, Any] = {
        "run_key": run_key,
        "lane": lane,
        "manifest": manifest,
        "output_prefix": output_prefix,
        "started_at": started_at,
        "finished_at": finished_at,
        "items": {
            "total": len(items),
            SUCCEEDED: counts[SUCCEEDED],
            SKIPPED: counts[SKIPPED],
            FAILED: counts[FAILED],
            NOT_ATTEMPTED: counts[NOT_ATTEMPTED],
            "rejected_in_manifest": rejects,
        },
        "cost": {
            "spent_usd": spent,  # billed: a channel's reported cost where it reports one
            "estimated_usd": round(sum(o.estimated_cost_usd for o in paid), 6),  # at configured prices
            "budget_usd": budget_usd,
            "cost_per_success_usd": round(spent / len(succeeded), 6) if succeeded else None,
            "google_direct_list_usd": round(direct, 6),
            "savings_vs_direct_usd": round(direct - spent, 6),
        },
        "calls": {
            "total": calls,
            "per_success": round(calls / len(succeeded), 3) if succeeded else None,
            "failovers": sum(o.failovers for o in paid),
        },
        "latency_s": {"p50": _percentile(latencies, 50), "p95": _percentile(latencies, 95)},
        "channels": channels,
        # images made per model tier (Pro, Flash Image): which model made each is in its metadata
        "models": dict(Counter(o.model for o in succeeded if o.model)),
        "size_mismatches": sorted(o.item_id for o in succeeded if o.size_matches is False),
        "failed_items": [
            {"item_id": o.item_id, "status": o.status, "reason": o.reason}
            for o in items
            if o.status in (FAILED, NOT_ATTEMPTED)
        ],
        "rejected_lines": list(reject_reasons),
        # where each item's image is (made now or found done): what downstream tasks read
        "images": {o.item_id: o.image_uri for o in items if o.image_uri and o.status in (SUCCEEDED, SKIPPED)},
    }
    report["policies"] = policy_summary(items)
    report["summary"] = summary_line(report)
    if extra:
        report.update(extra)
    return report


def policy_summary(items: Sequence[ItemOutcome]) -> dict[str, Any]:
    """Which data policy and grounding applied, and the channels that served each restricted group.

    The channels are those of every attempt (not only the successful one), so the report shows
    that no official-only item was ever sent to a relay, not even for a failed call.
    """

    def channels(group: Sequence[ItemOutcome]) -> list[str]:
        return sorted({a.channel for o in group for a in o.attempts})

    official = [o for o in items if o.data_policy == OFFICIAL_ONLY]
    grounded = [o for o in items if o.grounding]
    return {
        "data_policy": {
            DEFAULT_DATA_POLICY: len(items) - len(official),
            OFFICIAL_ONLY: len(official),
        },
        "official_only_channels": channels(official),
        "grounded": len(grounded),
        "grounded_channels": channels(grounded),
    }


def summary_line(report: Mapping[str, Any]) -> str:
    """One sentence: whether every manifest line has an image, else how many do not and why."""
    items = report["items"]
    rejected = items.get("rejected_in_manifest", 0)
    missing = items[FAILED] + items[NOT_ATTEMPTED] + rejected
    if not missing:
        return "Every item has an image."
    parts = [f"{items[FAILED]} failed", f"{items[NOT_ATTEMPTED]} not attempted"]
    parts.append(f"{rejected} rejected in the manifest" + (" (see rejects.jsonl)" if rejected else ""))
    have = items[SUCCEEDED] + items[SKIPPED]
    return f"{missing} of {have + missing} item(s) have no image: " + ", ".join(parts) + "."


def _money(value: float | None) -> str:
    return "–" if value is None else f"${value:,.4f}"


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} s"


def render_markdown(report: Mapping[str, Any]) -> str:
    """A human-readable report.md from the report dict."""
    items, cost, calls, lat = report["items"], report["cost"], report["calls"], report["latency_s"]
    lines = [
        f"# Image run `{report['run_key']}` ({report['lane']})",
        "",
        f"- Manifest: `{report.get('manifest') or '–'}`",
        f"- Output: `{report.get('output_prefix') or '–'}`",
        f"- Started {report['started_at']}, finished {report['finished_at']}",
        "",
        f"**{report.get('summary') or summary_line(report)}**",
        "",
        "## Items",
        "",
        "| total | succeeded | skipped (already done) | failed | not attempted | rejected in manifest |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {items['total']} | {items[SUCCEEDED]} | {items[SKIPPED]} | {items[FAILED]} | "
        f"{items[NOT_ATTEMPTED]} | {items['rejected_in_manifest']} |",
        "",
        "## Cost",
        "",
        f"- Spent: **{_money(cost['spent_usd'])}**"
        + (f" of a {_money(cost['budget_usd'])} budget" if cost.get("budget_usd") is not None else "")
        + f" (billed; estimate at the configured prices: {_money(cost.get('estimated_usd'))})",
        f"- Cost per successful image: {_money(cost['cost_per_success_usd'])}",
        f"- Google direct list price for the same images: {_money(cost['google_direct_list_usd'])}"
        f" (saved {_money(cost['savings_vs_direct_usd'])})",
        f"- Calls: {calls['total']} ({calls['per_success'] or '–'} per success), "
        f"failovers: {calls['failovers']}",
        f"- Latency per image: p50 {_seconds(lat['p50'])}, p95 {_seconds(lat['p95'])}",
    ]
    if len(report.get("models") or {}) > 1:  # said only when more than one model tier drew images
        lines.append(
            "- Images per model: " + ", ".join(f"{m}: {n}" for m, n in sorted(report["models"].items()))
        )
    lines.append("")
    if report["channels"]:
        lines += [
            "## Channels",
            "",
            "| channel | calls | successes | failures | billed | estimate | breaker openings | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for name, ch in sorted(report["channels"].items()):
            errors = ", ".join(f"{k}: {v}" for k, v in sorted(ch["errors"].items())) or "–"
            lines.append(
                f"| {name} | {ch['calls']} | {ch['successes']} | {ch['failures']} | "
                f"{_money(ch['spend_usd'])} | {_money(ch.get('estimated_usd'))} | "
                f"{ch['breaker_openings']} | {errors} |"
            )
        lines.append("")
    lines += _policy_lines(report.get("policies") or {})
    if report.get("batch_job"):
        lines += _batch_lines(report["batch_job"])
    if report.get("channels_left_out"):
        lines += ["## Channels left out at the start (preflight)", ""]
        lines += [f"- `{name}`: {why}" for name, why in sorted(report["channels_left_out"].items())]
        lines.append("")
    if report["size_mismatches"]:
        lines += ["## Pixel size mismatches", "", *[f"- `{i}`" for i in report["size_mismatches"]], ""]
    if report["failed_items"]:
        lines += ["## Items without an image", "", "| item | status | reason |", "|---|---|---|"]
        lines += [f"| `{f['item_id']}` | {f['status']} | {f['reason']} |" for f in report["failed_items"]]
        lines.append("")
    if report.get("rejected_lines"):
        shown = len(report["rejected_lines"])
        more = items["rejected_in_manifest"] - shown
        lines += ["## Rejected manifest lines", "", *[f"- {r}" for r in report["rejected_lines"]]]
        lines += [f"- … and {more} more"] if more > 0 else []
        lines += ["", "All of them are in `rejects.jsonl` next to this report.", ""]
    return "\n".join(lines)


def _policy_lines(policies: Mapping[str, Any]) -> list[str]:
    """The data-policy section: shown when any item was official-only or grounded."""
    official = (policies.get("data_policy") or {}).get(OFFICIAL_ONLY, 0)
    grounded = policies.get("grounded", 0)
    if not official and not grounded:
        return []
    lines = ["## Data policy and grounding", ""]
    if official:
        used = ", ".join(f"`{c}`" for c in policies.get("official_only_channels") or []) or "none"
        lines.append(
            f"- {official} item(s) `official_only`: sent only to official Google channels "
            f"(channels called for them: {used})"
        )
    if grounded:
        used = ", ".join(f"`{c}`" for c in policies.get("grounded_channels") or []) or "none"
        lines.append(f"- {grounded} item(s) grounded with Google Search (channels called: {used})")
    return [*lines, ""]


def _batch_lines(job: Mapping[str, Any]) -> list[str]:
    """What happened to the batch job: how it ended, what it delivered, what realtime rescued."""
    lines = ["## Batch job", "", f"- `{job.get('name') or '–'}` ({job.get('backend') or '–'}): "]
    lines[-1] += str(job.get("ending") or job.get("state") or "state unknown")
    if "harvested" in job:
        lines.append(
            f"- {job['harvested']} image(s) harvested from the job ({_money(job.get('harvested_usd'))}), "
            f"{job.get('missing_from_job', 0)} item(s) it did not deliver"
        )
    if "rescued" in job:
        lines.append(
            f"- {job['rescued']} of them rescued through realtime ({_money(job.get('rescued_usd'))})"
        )
    return [*lines, ""]


def attempt_dicts(attempts: Iterable[Attempt]) -> list[dict[str, Any]]:
    return [asdict(a) for a in attempts]
