"""When a silent call is hung, not slow: the moment to abandon it so a rescue still meets the deadline.

A hung call (FAULTS R6: accepted, never answered) is known only at its attempt timeout, and near a
hard deadline the timeout is the deadline itself: the item is late without a second try. Cutting
a call that was only slow pays twice (the provider bills the image it finishes). So a call is
cut only on evidence a healthy channel gives at most ``false_alarm`` of the time: its channel's
calls sent since its last answer -- this one among them -- are all still out, and under the
channel's own call-time distribution (lognormal) that silence has a likelihood at most
``false_alarm`` (one in ten thousand: a missed deadline costs one item, a paid-twice breaks the
promise). One silent call alone crosses that far out in its tail; a dozen calls sent into an
outage cross it within a call or two. ``false_alarm`` is then the share of cuts that may pay twice.
The median is uncertain after a few answers and every silent call shares it, so the likelihood
is averaged over it: a few fast first answers do not make ordinary calls look hung.

Pure: the router holds one ``CallTimes`` per channel and asks ``cut_at``; no clock, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# The seed's calls: median ~10 s, p95 ~24 s, so ln(24 / 10) / 1.645 = 0.53 -- the spread assumed
# until a channel's own answers say otherwise; the prior median is the router's latency prior.
# Both weigh as much as this many answers.
PRIOR_LOG_SIGMA = 0.53
PRIOR_WEIGHT = 5.0
DEFAULT_FALSE_ALARM = 1e-4
# The median is uncertain (a few answers), and every silent call shares it: the likelihood of
# the silence is averaged over it, on this grid of standard errors (a normal, +-4 sd).
_GRID = tuple(k / 2 for k in range(-8, 9))
_GRID_WEIGHTS = tuple(math.exp(-(g**2) / 2) for g in _GRID)


@dataclass
class CallTimes:
    """One channel's call times as a lognormal fitted to its answers (Welford on ln latency),
    each moment pulled towards its prior by ``PRIOR_WEIGHT`` answers' worth."""

    answers: int = 0
    _mean: float = 0.0
    _m2: float = 0.0

    def observe(self, latency_s: float) -> None:
        if latency_s <= 0:
            return
        x = math.log(latency_s)
        self.answers += 1
        delta = x - self._mean
        self._mean += delta / self.answers
        self._m2 += delta * (x - self._mean)

    def log_sigma(self) -> float:
        prior = PRIOR_WEIGHT * PRIOR_LOG_SIGMA**2
        return math.sqrt((self._m2 + prior) / (max(0, self.answers - 1) + PRIOR_WEIGHT))

    def log_median(self, prior_median_s: float) -> float:
        n = self.answers
        return (n * self._mean + PRIOR_WEIGHT * math.log(prior_median_s)) / (n + PRIOR_WEIGHT)

    def log_silence(self, ages_s: Sequence[float], prior_median_s: float) -> float:
        """ln P(a healthy channel leaves calls of these ages all unanswered)."""
        sigma = self.log_sigma()
        mu = self.log_median(prior_median_s)
        se = sigma / math.sqrt(self.answers + PRIOR_WEIGHT)
        logs = [math.log(a) for a in ages_s if a > 0]
        terms = []
        for g in _GRID:
            m = mu + g * se
            terms.append(sum(_log_tail((x - m) / sigma) for x in logs))
        top = max(terms)
        mass = sum(w * math.exp(t - top) for w, t in zip(_GRID_WEIGHTS, terms, strict=True))
        return top + math.log(mass / sum(_GRID_WEIGHTS))


def _log_tail(z: float) -> float:
    return math.log(max(0.5 * math.erfc(z / math.sqrt(2)), 1e-300))


def cut_at(
    started: Iterable[float],
    times: CallTimes,
    prior_median_s: float,
    *,
    now: float,
    latest: float,
    false_alarm: float = DEFAULT_FALSE_ALARM,
    abandoned: Sequence[float] = (),
) -> float | None:
    """The earliest moment in ``[now, latest]`` at which calls sent at ``started`` (all still
    unanswered, nothing heard from their channel since the first) are silent beyond
    ``false_alarm`` for a healthy channel; None if they are not by ``latest``. ``abandoned``:
    how long calls given up on since then (timed out or cut) were silent; evidence that stays."""
    starts = list(started)
    gone = list(abandoned)
    if not starts or latest < now:
        return None
    bound = math.log(false_alarm)

    def evidence(t: float) -> float:
        return times.log_silence([t - s for s in starts] + gone, prior_median_s)

    if evidence(latest) > bound:
        return None
    if evidence(now) <= bound:
        return now
    lo, hi = now, latest  # the silence grows less likely as time passes: bisect for the crossing
    while hi - lo > 0.05:
        mid = (lo + hi) / 2
        if evidence(mid) <= bound:
            hi = mid
        else:
            lo = mid
    return hi
