"""Rolling count of failovers, for the "failovers per hour above a threshold" alert.

A failover is an item's next attempt going to a different channel than the one that just
failed it. The engine alerts (callback, notifier, warning) when the count over the last
``window_s`` (3600 s) exceeds ``threshold`` (3); ``record`` says when to alert, at most once per
window, so a long outage pages once an hour rather than on every item.
"""

from __future__ import annotations

from collections import deque

from airflow_banana.exceptions import ConfigurationError


class FailoverCounter:
    def __init__(self, *, threshold: int = 3, window_s: float = 3600.0) -> None:
        if threshold < 0 or window_s <= 0:
            raise ConfigurationError(
                f"failover alert needs threshold >= 0 and window_s > 0, got {threshold}, {window_s}"
            )
        self.threshold = threshold
        self.window_s = window_s
        self.total = 0
        self._times: deque[float] = deque()
        self._last_alert: float | None = None

    def _prune(self, now: float) -> None:
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()

    def count(self, now: float) -> int:
        """Failovers within ``(now - window_s, now]``."""
        self._prune(now)
        return len(self._times)

    def record(self, now: float) -> bool:
        """Count one failover; True when the engine should alert now."""
        self.total += 1
        self._times.append(now)
        if self.count(now) <= self.threshold:
            return False
        if self._last_alert is not None and now - self._last_alert < self.window_s:
            return False
        self._last_alert = now
        return True
