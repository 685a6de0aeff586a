"""The ``airflow-banana`` console script: a small argparse dispatcher, one subcommand per tool.

Subcommands register through ``SUBCOMMANDS`` (name -> (add_arguments, run)) so other tools can be
added without touching the dispatcher. Heavy imports happen inside each ``run``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

AddArgs = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


def _simulator_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8089, help="port to listen on (0 = any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    parser.add_argument(
        "--config",
        help="simulator config JSON: fault profiles per API key, quotas, models (docs/simulator.md)",
    )
    parser.add_argument("--profile", choices=["peak"], help="apply a preset fault profile to every key")


def _simulator_run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from airflow_banana.exceptions import ConfigurationError
    from airflow_banana.testing.config import FaultProfile, SimulatorConfig
    from airflow_banana.testing.foreground import wait_for_stop
    from airflow_banana.testing.server import Simulator

    try:
        config = SimulatorConfig.load(args.config) if args.config else SimulatorConfig()
    except ConfigurationError as err:
        print(f"airflow-banana simulator: {err}", file=sys.stderr)
        return 2
    config = replace(config, host=args.host, port=args.port)
    if args.profile == "peak":
        config = replace(
            config,
            default=FaultProfile.peak(),
            keys={k: FaultProfile.peak(name=p.name) for k, p in config.keys.items()},
        )
    try:
        sim = Simulator(config).start()
    except ConfigurationError as err:
        print(f"airflow-banana simulator: {err}", file=sys.stderr)
        return 2
    try:
        line = f"Gemini simulator listening on {sim.base_url} (Ctrl-C to stop)"
        wait_for_stop(lambda: print(line, flush=True))
    finally:
        sim.stop()
    print("Gemini simulator stopped", flush=True)
    return 0


def _plan_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", help="manifest URI (gs://… or a local path), JSONL or JSON")
    parser.add_argument("--now", help="plan as of this ISO time with timezone (default: now)")
    parser.add_argument(
        "--logical-date", help="relative deadlines ('+6h') count from this ISO time (default: --now)"
    )
    parser.add_argument(
        "--batch-turnaround",
        help="batch turnaround to plan with, e.g. 24h (default: recorded history at --confidence, else 24h)",
    )
    parser.add_argument(
        "--output-prefix",
        help="read batch turnaround history and recent success rates here, and leave out items "
        "already done there (read only; nothing is written)",
    )
    parser.add_argument("--default-deadline", help="deadline of items without one, e.g. +6h or an ISO time")
    parser.add_argument("--confidence", type=float, default=0.95, help="deadline confidence (default 0.95)")
    parser.add_argument(
        "--batch-backend",
        choices=["developer", "vertex", "none"],
        default="developer",
        help="batch backend when --batch-channel is not given (none: realtime only)",
    )
    parser.add_argument("--batch-channel", help="connection id the batch lane submits through")
    parser.add_argument(
        "--realtime-latency", help="dispatch-to-image time of the realtime channels, e.g. 30s (default 60s)"
    )
    parser.add_argument("--gcp-conn-id", help="Airflow connection with GCS credentials (default: ADC)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of text")


def _plan_args(parser: argparse.ArgumentParser) -> None:
    _plan_common_args(parser)
    parser.add_argument(
        "--channels", required=True, help="comma-separated realtime channel connection ids (type banana)"
    )


def _estimate_args(parser: argparse.ArgumentParser) -> None:
    _plan_common_args(parser)
    parser.add_argument(
        "--channels",
        default="",
        help="comma-separated realtime channel connection ids (else realtime finish times are unknown)",
    )


def _dry_run(args: argparse.Namespace) -> Any:
    """Read the manifest and compute the plan; nothing is written and nothing is spent."""
    from airflow_banana.hooks.channel import channel_ids
    from airflow_banana.planning.manifest import dry_run_plan

    channels = channel_ids(args.channels)
    return dry_run_plan(
        args.manifest,
        channels,
        batch_channel=args.batch_channel,
        batch_backend=None if args.batch_backend == "none" else args.batch_backend,
        now=args.now,
        logical_date=args.logical_date,
        batch_turnaround=args.batch_turnaround,
        output_prefix=args.output_prefix,
        default_deadline=args.default_deadline,
        confidence=args.confidence,
        gcp_conn_id=args.gcp_conn_id,
        realtime_latency=args.realtime_latency,
    )


def _plan_run(args: argparse.Namespace) -> int:
    import json

    from airflow_banana.exceptions import BananaError

    try:
        computed = _dry_run(args)
    except BananaError as err:
        print(f"airflow-banana plan: {err}", file=sys.stderr)
        return 2
    plan = computed.plan
    if args.json:
        print(json.dumps({**plan.summary(), "skipped_done": len(computed.skipped_done)}, indent=2))
    else:
        print(plan.describe())
        if computed.skipped_done:
            print(f"\nAlready done under the output prefix (left out): {len(computed.skipped_done)} item(s)")
        print("\nDry run: nothing was written and nothing was spent.")
    return 0 if plan.feasible else 1


def _estimate_run(args: argparse.Namespace) -> int:
    import json

    from airflow_banana.exceptions import BananaError
    from airflow_banana.planning.estimate import estimate_scenarios, render_estimate

    try:
        computed = _dry_run(args)
        scenarios = estimate_scenarios(computed)
    except BananaError as err:
        print(f"airflow-banana estimate: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(scenarios, indent=2))
    else:
        print(render_estimate(scenarios))
        print("\nDry run: nothing was written and nothing was spent.")
    return 0


def _validate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", help="manifest URI (gs://… or a local path), JSONL or JSON")
    parser.add_argument(
        "--defaults", help='item field defaults as a JSON object, e.g. \'{"image_size": "2K"}\''
    )
    parser.add_argument("--json", action="store_true", help="print every problem as a JSON line")


def _validate_run(args: argparse.Namespace) -> int:
    """Every check the lanes make before spending, in one pass: schema, ids, duplicates, deadlines,
    reference images (each line's problems, not only the first). Reads only; no connection."""
    import json
    import logging
    from datetime import UTC, datetime

    from airflow_banana.exceptions import BananaError
    from airflow_banana.manifests.prepare import prepare_manifest
    from airflow_banana.storage.objects import open_storage

    try:
        defaults = json.loads(args.defaults) if args.defaults else {}
        if not isinstance(defaults, dict):
            raise ValueError("not a JSON object")
    except ValueError as err:
        print(f"airflow-banana validate: --defaults: {err}", file=sys.stderr)
        return 2
    # its "N quarantined; see rejects.jsonl in the run folder" is for runs: here there is no folder
    logging.getLogger("airflow_banana.manifests.prepare").setLevel(logging.ERROR)
    try:
        prepared = prepare_manifest(
            args.manifest,
            open_storage(args.manifest),
            on_invalid="quarantine",  # collect every problem instead of stopping at the first
            defaults=defaults,
            logical_date=datetime.now(UTC),
        )
    except BananaError as err:
        print(f"airflow-banana validate: {err}", file=sys.stderr)
        return 2
    problems = [json.loads(line) for line in prepared.rejects_jsonl.splitlines() if line.strip()]
    problems.sort(key=lambda p: int(p["line"]))  # reference-image problems are found after the schema
    for problem in problems:
        if args.json:
            print(json.dumps({k: v for k, v in problem.items() if k != "raw"}))
        else:
            field = f" field '{problem['field']}'" if problem.get("field") else ""
            item = f" (item '{problem['item_id']}')" if problem.get("item_id") else ""
            print(f"{args.manifest}:{problem['line']}{item}{field}: {problem['reason']}")
    verdict = f"{len(prepared.work)} item(s) valid, {len(problems)} line(s) with problems"
    print(verdict if not args.json else json.dumps({"valid": len(prepared.work), "invalid": len(problems)}))
    return 1 if problems else 0


SUBCOMMANDS: dict[str, tuple[str, AddArgs, Run]] = {
    "validate": (
        "check a manifest (schema, ids, duplicates, reference images); no connection, no spend",
        _validate_args,
        _validate_run,
    ),
    "simulator": ("serve the offline Gemini simulator in the foreground", _simulator_args, _simulator_run),
    "plan": ("dry run: route a manifest by deadline (realtime vs batch), no spend", _plan_args, _plan_run),
    "estimate": (
        "dry run: cost and finish times of all-realtime, all-batch and the deadline plan",
        _estimate_args,
        _estimate_run,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="airflow-banana", description="airflow-banana tools")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_args, _run) in SUBCOMMANDS.items():
        add_args(sub.add_parser(name, help=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return SUBCOMMANDS[args.command][2](args)


if __name__ == "__main__":
    sys.exit(main())
