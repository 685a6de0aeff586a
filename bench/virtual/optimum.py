"""The hindsight optimum of a scenario: the cheapest assignment of its items to (channel, minute)
that its ground truth allows, as a linear programme (scipy ``linprog``, HiGHS).

Variables ``x[c, w]``: images delivered by channel ``c`` from calls started in window ``w``
(one provider minute, or several when the horizon is long); ``u``: items left undelivered by
the deadline. With ``q_c`` the share of calls that fail outside outages (503 + 429 + hangs),
a window needs ``x / (1 - q_c)`` calls, and

- calls in a window <= what the provider's cap allows in the window's stretches outside outages
  and 429 bursts, counted per rolling minute (``window_calls``; the cap counts every request);
- calls before the Pacific midnight <= the channel's daily quota (and again after it);
- a window counts only if its start + the channel's median call time is before the deadline
  (no deadline: the product's documented soft horizon, one hour);
- sum x + u = items; minimise spend (successes at the billed price, plus failed calls where
  the channel bills failures) + 1,000 $ per undelivered item (on time first, then cheap).

What it relaxes, so it is a bound no real system can beat in expectation: items are
fractional; failures cost their expected count, never their variance; a call takes the
median latency and hangs, retry hints and timeouts cost no time; there is no client-side
concurrency limit; outage windows and quota ends are known in advance.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from airflow_banana.routing import DEFAULT_DEADLINE_S
from bench.virtual.scenarios import ChannelTruth, Scenario

UNSERVED_USD = 1_000.0
MAX_WINDOWS = 2_000


@dataclass(frozen=True)
class Optimum:
    spend: float
    on_time: float
    items: int
    by_channel: dict[str, float]

    @property
    def cost_per_on_time(self) -> float | None:
        return self.spend / self.on_time if self.on_time > 1e-9 else None

    @property
    def all_on_time(self) -> bool:
        return self.on_time >= self.items - 1e-6 * max(1, self.items)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        cpi = self.cost_per_on_time
        out.update(
            spend=round(self.spend, 4),
            on_time=round(self.on_time, 3),
            cost_per_on_time=None if cpi is None else round(cpi, 5),
            on_time_share=round(self.on_time / self.items, 5) if self.items else 1.0,
            all_on_time=self.all_on_time,
            by_channel={k: round(v, 2) for k, v in self.by_channel.items()},
        )
        return out


def horizon_s(scenario: Scenario) -> float:
    return scenario.deadline_s if scenario.deadline_s is not None else DEFAULT_DEADLINE_S


def _open_spans(channel: ChannelTruth, start: float, end: float) -> list[tuple[float, float]]:
    """The stretches of [start, end) outside every outage and 429 burst (which may overlap)."""
    blocked = sorted((max(start, w.start), min(end, w.end)) for w in (*channel.outages, *channel.bursts))
    spans: list[tuple[float, float]] = []
    reach = start
    for lo, hi in blocked:
        if hi <= lo:
            continue
        if lo > reach:
            spans.append((reach, lo))
        reach = max(reach, hi)
    if reach < end:
        spans.append((reach, end))
    return spans


def window_calls(channel: ChannelTruth, start: float, minutes: int) -> float:
    """The most calls ``channel`` takes from ``start`` over ``minutes`` provider minutes.

    The provider counts calls per rolling minute, so an open stretch of ``s`` seconds takes up
    to ``cap x (s / 60 + 1)``: a whole minute's cap fits in the seconds before an outage (naive
    failover sent a 50 rpm relay 33 calls in the 5 s before its outage in s11-91). Scaling the
    cap by the open share of the window instead made this bound stricter than the providers.
    """
    spans = _open_spans(channel, start, start + 60.0 * minutes)
    if not spans:
        return 0.0
    open_minutes = sum(hi - lo for lo, hi in spans) / 60.0
    return channel.cap_rpm * min(float(minutes), open_minutes + len(spans))


def solve(scenario: Scenario) -> Optimum:
    import numpy as np
    from scipy.optimize import linprog
    from scipy.sparse import lil_matrix

    horizon = horizon_s(scenario)
    minutes = max(1, math.ceil(horizon / 60.0))
    per_window = max(1, math.ceil(minutes / MAX_WINDOWS))  # minutes per window
    length = 60.0 * per_window
    windows = math.ceil(horizon / length)
    channels = scenario.channels
    index: list[tuple[int, int]] = []  # variable -> (channel, window)
    cost: list[float] = []
    rows_cap: list[tuple[int, float]] = []
    for ci, ch in enumerate(channels):
        good = 1.0 - ch.failure_rate(0.0)
        if good <= 1e-6:
            continue
        billed_fail = 0.0
        if ch.billed_on_failure:
            billed_fail = ch.billed * (ch.p503 + ch.p429) / good  # hangs are never billed
        for w in range(windows):
            start = w * length
            if start + ch.latency_median_s > horizon:
                break
            calls = window_calls(ch, start, per_window)
            if calls <= 0.0:
                continue
            index.append((ci, w))
            cost.append(ch.billed + billed_fail)
            rows_cap.append((len(index) - 1, calls * good))
    n = len(index)
    c = np.array([*cost, UNSERVED_USD])
    # upper bounds per variable carry the cap; quota rows are the only coupling besides the total
    bounds = [(0.0, cap) for _, cap in rows_cap] + [(0.0, None)]
    quota_rows: list[list[int]] = []
    quota_rhs: list[float] = []
    quota_scale: list[list[float]] = []
    for ci, ch in enumerate(channels):
        if ch.daily_quota is None:
            continue
        good = 1.0 - ch.failure_rate(0.0)
        before = [v for v, (cj, w) in enumerate(index) if cj == ci and w * length < ch.day_end_s]
        after = [v for v, (cj, w) in enumerate(index) if cj == ci and w * length >= ch.day_end_s]
        for group in (before, after):
            if group:
                quota_rows.append(group)
                quota_scale.append([1.0 / good] * len(group))
                quota_rhs.append(float(ch.daily_quota))
    a_ub = None
    b_ub = None
    if quota_rows:
        a_ub = lil_matrix((len(quota_rows), n + 1))
        for r, (group, scale) in enumerate(zip(quota_rows, quota_scale, strict=True)):
            for v, k in zip(group, scale, strict=True):
                a_ub[r, v] = k
        a_ub = a_ub.tocsr()
        b_ub = np.array(quota_rhs)
    a_eq = np.ones((1, n + 1))
    b_eq = np.array([float(scenario.items)])
    result = linprog(c, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs")
    if result.status != 0:
        raise RuntimeError(f"scenario {scenario.id}: the optimum's LP failed: {result.message}")
    x = result.x
    unserved = float(x[-1])
    spend = float(np.dot(c[:-1], x[:-1]))
    by_channel: dict[str, float] = {}
    for v, (ci, _) in enumerate(index):
        by_channel[channels[ci].name] = by_channel.get(channels[ci].name, 0.0) + float(x[v])
    return Optimum(
        spend=spend, on_time=scenario.items - unserved, items=scenario.items, by_channel=by_channel
    )
