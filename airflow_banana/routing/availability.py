"""How much of a channel's nominal rate it really gives while providers keep sending retry hints.

The backend's success rate leaves 429s out on purpose: a retry hint says nothing about the
channel's health and must not change which channel is cheapest per image. But a channel that a
shared quota keeps closing (429 + ``RetryInfo``) delivers fewer images than its rate limit
suggests: it is shut for part of every window. A deadline plan that assumed the nominal rate
would keep items waiting for it until they could no longer make their deadline elsewhere.

``HintHistory`` is this router's own record (pure, clock passed in, no I/O) of the hint closures
it has seen on one channel. ``open_share`` = 1 - closed seconds / ``window_s`` over the trailing
window that ends at ``max(now, end of the latest closure)``: a closure already announced counts
at once, and time not yet observed counts as open. The router divides the channel's service
interval by it (floored at ``MIN_SHARE``).

Only time counts, not the number of 429 answers: a burst of hints at the start of a run (five
calls answered "retry in 1 s") closes the channel for about one second of a five-minute window,
so it still plans with ~100 % of the rate once the hint has ended. Counting the answers instead
read that burst as "this channel gives ~0 % of its rate" for half-lives. A quota that really
keeps the channel shut shows as closed time, window after window.

It is local to one router: in a fleet sharing state through Redis each task learns it from its
own calls, which is enough for its own plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MIN_SHARE = 0.02


@dataclass
class HintHistory:
    window_s: float
    _closed: list[tuple[float, float]] = field(default_factory=list)  # merged, in time order

    def record(self, now: float, closed_until: float) -> None:
        """A retry hint closed the channel from ``now`` until ``closed_until``."""
        if closed_until <= now:
            return
        if self._closed and now <= self._closed[-1][1]:
            first, last = self._closed[-1]
            self._closed[-1] = (first, max(last, closed_until))
        else:
            # keep the list to one window even when nobody asks for the share
            self._closed = [(a, b) for a, b in self._closed if b > now - self.window_s]
            self._closed.append((now, closed_until))

    def open_share(self, now: float) -> float:
        hi = max([now, *(b for _, b in self._closed[-1:])])
        lo = hi - self.window_s
        self._closed = [(a, b) for a, b in self._closed if b > lo]
        closed = sum(min(b, hi) - max(a, lo) for a, b in self._closed)
        return max(MIN_SHARE, 1.0 - closed / self.window_s)
