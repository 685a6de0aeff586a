"""Bucketed sliding-window counters shared by the breaker and the adaptive throttle.

Exact per-event timestamps would grow with traffic and are awkward to keep in Redis; fixed-size
buckets are a handful of integers per channel (in Redis, part of the channel's record:
``redis_state.py``). Bucket ``i`` covers ``[i * bucket_s, (i + 1) * bucket_s)``; the window at
time ``t`` is the ``n = ceil(window_s / bucket_s)`` buckets ending with the one holding ``t``,
so it spans between ``window_s - bucket_s`` and ``window_s`` seconds of history. Pick
``bucket_s`` small against ``window_s`` for precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class WindowCounts:
    """Counters per bucket: bucket index -> a list of ``arity`` integers (e.g. calls, failures)."""

    arity: int
    buckets: dict[int, list[int]] = field(default_factory=dict)


def _span(bucket_s: float, window_s: float) -> int:
    return max(1, math.ceil(window_s / bucket_s))


def window_prune(counts: WindowCounts, now: float, *, bucket_s: float, window_s: float) -> None:
    """Drop buckets that have left the window (keeps the record small)."""
    oldest = math.floor(now / bucket_s) - _span(bucket_s, window_s) + 1
    for index in [i for i in counts.buckets if i < oldest]:
        del counts.buckets[index]


def window_add(
    counts: WindowCounts, now: float, slot: int, amount: int = 1, *, bucket_s: float, window_s: float
) -> None:
    """Add ``amount`` to counter ``slot`` in the bucket holding ``now``."""
    window_prune(counts, now, bucket_s=bucket_s, window_s=window_s)
    bucket = counts.buckets.setdefault(math.floor(now / bucket_s), [0] * counts.arity)
    bucket[slot] += amount


def window_totals(counts: WindowCounts, now: float, *, bucket_s: float, window_s: float) -> list[int]:
    """Sum of each counter over the window ending at ``now`` (read-only)."""
    newest = math.floor(now / bucket_s)
    oldest = newest - _span(bucket_s, window_s) + 1
    totals = [0] * counts.arity
    for index, values in counts.buckets.items():
        if oldest <= index <= newest:
            for slot, value in enumerate(values):
                totals[slot] += value
    return totals


def window_clear(counts: WindowCounts) -> None:
    counts.buckets.clear()
