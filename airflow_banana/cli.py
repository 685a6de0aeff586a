"""The ``airflow-banana`` console script: a small argparse dispatcher, one subcommand per tool.

Subcommands register through ``SUBCOMMANDS`` (name -> (add_arguments, run)) so other tools can be
added without touching the dispatcher. Heavy imports happen inside each ``run``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Sequence

AddArgs = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


def _simulator_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8089, help="port to listen on (0 = any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    parser.add_argument(
        "--config", help="simulator config JSON (see airflow_banana/testing/peak_profile.json)"
    )
    parser.add_argument("--profile", choices=["peak"], help="apply a preset fault profile to every key")


def _simulator_run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from airflow_banana.testing.config import FaultProfile, SimulatorConfig
    from airflow_banana.testing.server import Simulator

    config = SimulatorConfig.load(args.config) if args.config else SimulatorConfig()
    config = replace(config, host=args.host, port=args.port)
    if args.profile == "peak":
        config = replace(
            config,
            default=FaultProfile.peak(),
            keys={k: FaultProfile.peak(name=p.name) for k, p in config.keys.items()},
        )
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    with Simulator(config) as sim:
        print(f"Gemini simulator listening on {sim.base_url} (Ctrl-C to stop)", flush=True)
        stop.wait()
    print("Gemini simulator stopped", flush=True)
    return 0


SUBCOMMANDS: dict[str, tuple[str, AddArgs, Run]] = {
    "simulator": ("serve the offline Gemini simulator in the foreground", _simulator_args, _simulator_run),
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
