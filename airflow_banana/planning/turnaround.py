"""How long a batch job takes, estimated from how long earlier ones took.

Google targets 24 h for the Batch API and some jobs have stayed stuck far longer (GEMINI_WIRE.md),
so the planner must not trust a single optimistic number. This module turns the recorded
durations of earlier jobs on one backend (stored by ``planning.history``; here just a list of seconds, oldest
first) into a conservative percentile. With too few samples it falls back to a default (24 h),
and never to less than the slowest job it has actually seen.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from airflow_banana.exceptions import ConfigurationError

DEFAULT_TURNAROUND = timedelta(hours=24)
DEFAULT_PERCENTILE = 95.0
DEFAULT_MIN_SAMPLES = 5
DEFAULT_WINDOW = 100

TurnaroundSource = Literal["history", "default", "observed-max"]


@dataclass(frozen=True)
class TurnaroundEstimate:
    """A batch turnaround at a percentile, and what it was derived from.

    ``source`` is ``history`` (percentile of enough samples), ``default`` (too few samples), or
    ``observed-max`` (too few samples, but one of them was slower than the default).
    """

    duration: timedelta
    percentile: float
    samples: int
    ignored: int
    source: TurnaroundSource

    def describe(self) -> str:
        hours = self.duration.total_seconds() / 3600
        if self.source == "history":
            basis = f"p{self.percentile:g} of {self.samples} recorded jobs"
        elif self.source == "observed-max":
            basis = f"slowest of only {self.samples} recorded jobs (above the default)"
        else:
            basis = f"default; only {self.samples} recorded jobs"
        if self.ignored:
            basis += f", {self.ignored} unusable records ignored"
        return f"{hours:.2f} h ({basis})"


def _nearest_rank(sorted_values: list[float], percentile: float) -> float:
    # Nearest-rank never interpolates below an observed value: an estimate is always a duration
    # some job really took, which keeps it on the conservative side for small samples.
    rank = max(1, math.ceil(percentile / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def estimate_turnaround(
    durations_s: Iterable[float],
    *,
    percentile: float = DEFAULT_PERCENTILE,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    default: timedelta = DEFAULT_TURNAROUND,
    window: int | None = DEFAULT_WINDOW,
) -> TurnaroundEstimate:
    """Estimate a backend's batch turnaround from earlier jobs' durations (seconds, oldest first).

    Uses the ``window`` most recent valid samples and takes their ``percentile`` (nearest rank).
    With fewer than ``min_samples`` valid samples the result is ``default``, or the slowest
    sample when that is slower. Negative, NaN or infinite durations are corrupt records: they are
    ignored and counted in ``ignored`` rather than failing the plan.
    """
    if not 0.0 < percentile <= 100.0:
        raise ConfigurationError(
            f"batch turnaround: percentile must be in (0, 100], got {percentile}; planning stopped"
        )
    if min_samples < 1:
        raise ConfigurationError(f"batch turnaround: min_samples must be at least 1, got {min_samples}")
    if window is not None and window < 1:
        raise ConfigurationError(f"batch turnaround: window must be at least 1 or None, got {window}")
    if default <= timedelta(0):
        raise ConfigurationError(f"batch turnaround: default must be positive, got {default}")

    valid: list[float] = []
    ignored = 0
    for raw in durations_s:
        value = float(raw)
        if math.isfinite(value) and value >= 0.0:
            valid.append(value)
        else:
            ignored += 1
    if window is not None:
        valid = valid[-window:]

    if len(valid) < min_samples:
        slowest = max(valid, default=0.0)
        if slowest > default.total_seconds():
            return TurnaroundEstimate(
                timedelta(seconds=slowest), percentile, len(valid), ignored, "observed-max"
            )
        return TurnaroundEstimate(default, percentile, len(valid), ignored, "default")

    value = _nearest_rank(sorted(valid), percentile)
    return TurnaroundEstimate(timedelta(seconds=value), percentile, len(valid), ignored, "history")
