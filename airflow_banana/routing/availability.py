"""How much of a channel's nominal rate it really gives while providers keep sending retry hints.

The backend's success rate leaves 429s out on purpose: a retry hint says nothing about the
channel's health and must not change which channel is cheapest per image. But a channel that a
shared quota keeps closing (429 + ``RetryInfo``) delivers far fewer images than its rate limit
suggests: it is shut for most of each hint, and the calls already in flight when the quota ran
out come back as 429s too. A deadline plan that assumed the nominal rate would keep items
waiting for it until they could no longer make their deadline elsewhere.

``HintHistory`` is this router's own record (pure, clock passed in, no I/O) of the hint closures
and 429 answers it has seen on one channel, over a trailing window:

* ``open_share`` = 1 - closed seconds / ``window_s``, over the window that ends at
  ``max(now, end of the latest closure)`` -- a closure already announced counts at once, not
  only as it elapses, and time not yet observed counts as open (one 30 s hint at the start
  of a run is one 30 s hint in five minutes, not a channel that is always shut);
* ``answered_share`` = share of recent answers that were not 429s (exponentially decayed with
  half-life ``window_s``, one neutral answer of prior weight so a single 429 does not read as 0);
* ``rate_factor`` = their product, floored at ``MIN_FACTOR``: the fraction of the nominal call
  rate that turns into real attempts. The router divides the channel's service interval by it.

It is local to one router: in a fleet sharing state through Redis each task learns it from its
own calls, which is enough for its own plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MIN_FACTOR = 0.02


@dataclass
class HintHistory:
    window_s: float
    _closed: list[tuple[float, float]] = field(default_factory=list)  # merged, in time order
    _answers: float = 0.0
    _limited: float = 0.0
    _decayed_at: float | None = None

    def record(self, now: float, *, rate_limited: bool, closed_until: float | None = None) -> None:
        """One answer from the channel; a 429 may close it until ``closed_until``."""
        self._decay(now)
        self._answers += 1.0
        if rate_limited:
            self._limited += 1.0
        if closed_until is not None and closed_until > now:
            self._close(now, closed_until)

    def _close(self, start: float, end: float) -> None:
        if self._closed and start <= self._closed[-1][1]:
            first, last = self._closed[-1]
            self._closed[-1] = (first, max(last, end))
        else:
            # keep the list to one window even when nobody asks for the share (no deadlines)
            self._closed = [(a, b) for a, b in self._closed if b > start - self.window_s]
            self._closed.append((start, end))

    def _decay(self, now: float) -> None:
        if self._decayed_at is not None and now > self._decayed_at:
            factor = 0.5 ** ((now - self._decayed_at) / self.window_s)
            self._answers *= factor
            self._limited *= factor
        if self._decayed_at is None or now > self._decayed_at:
            self._decayed_at = now

    def open_share(self, now: float) -> float:
        hi = max([now, *(b for _, b in self._closed[-1:])])
        lo = hi - self.window_s
        self._closed = [(a, b) for a, b in self._closed if b > lo]
        closed = sum(min(b, hi) - max(a, lo) for a, b in self._closed)
        return max(0.0, 1.0 - closed / self.window_s)

    def answered_share(self, now: float) -> float:
        factor = 1.0
        if self._decayed_at is not None and now > self._decayed_at:
            factor = 0.5 ** ((now - self._decayed_at) / self.window_s)
        answers, limited = self._answers * factor, self._limited * factor
        return 1.0 - limited / (answers + 1.0)

    def rate_factor(self, now: float) -> float:
        return max(MIN_FACTOR, self.open_share(now) * self.answered_share(now))
