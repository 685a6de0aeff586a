"""Run-wide budgets: how many retries a task may make, and how many dollars it may spend.

Retry budget (per task run, in process): a retry is allowed only while
``retries + 1 <= ratio * first_attempts + min_retries``. Per-call retry caps multiply spend by
the cap during a storm; a run-wide ratio bounds it. Only retries after a failure that was paid
for (billed) or may have been (a timeout) count: a retry after a free failure (a 503 or 429 on
Google) costs time, which the item's deadline bounds, and load, which each channel's limiter,
breaker and adaptive throttle bound. The default ratio is 1.0 paid retries per item;
``min_retries`` (10) lets small runs retry at all.

Spend budget: "stop before exceeding it". Every attempt reserves its full price when it is
dispatched; the reservation becomes ``spent`` (billed) or ``uncertain`` (a timeout or
cancellation: the provider may still have generated and billed the image) or is released
(a failure the channel does not bill). An attempt is affordable iff
``spent + uncertain + reserved + price <= limit``, so concurrent attempts can never together
overshoot.
"""

from __future__ import annotations

from dataclasses import dataclass

from airflow_banana.exceptions import ConfigurationError

_EPS = 1e-9  # float sums of prices like 0.134 must not lose the last affordable image


@dataclass(frozen=True)
class RetryBudgetConfig:
    ratio: float = 1.0
    min_retries: int = 10

    def __post_init__(self) -> None:
        if self.ratio < 0 or self.min_retries < 0:
            raise ConfigurationError(f"retry budget ratio and min_retries must be >= 0: {self}")


class RetryBudget:
    """Counts first attempts and retries of one task run."""

    def __init__(self, config: RetryBudgetConfig | None = None) -> None:
        self.config = config or RetryBudgetConfig()
        self.first_attempts = 0
        self.retries = 0

    def can_retry(self) -> bool:
        return self.retries + 1 <= self.config.ratio * self.first_attempts + self.config.min_retries

    def record(self, *, retry: bool) -> None:
        if retry:
            self.retries += 1
        else:
            self.first_attempts += 1


class SpendBudget:
    """USD budget with per-attempt reservations; ``limit_usd=None`` means unlimited."""

    def __init__(self, limit_usd: float | None = None) -> None:
        if limit_usd is not None and limit_usd < 0:
            raise ConfigurationError(f"budget_usd must be >= 0, got {limit_usd}")
        self.limit_usd = limit_usd
        self.spent_usd = 0.0
        self.uncertain_usd = 0.0
        self._reservations: dict[str, float] = {}

    @property
    def reserved_usd(self) -> float:
        return sum(self._reservations.values())

    @property
    def committed_usd(self) -> float:
        """Everything that counts against the limit now."""
        return self.spent_usd + self.uncertain_usd + self.reserved_usd

    @property
    def remaining_usd(self) -> float | None:
        return None if self.limit_usd is None else max(0.0, self.limit_usd - self.committed_usd)

    def can_afford(self, amount: float) -> bool:
        return self.limit_usd is None or self.committed_usd + amount <= self.limit_usd + _EPS

    def reserve(self, key: str, amount: float) -> bool:
        """Reserve ``amount`` for attempt ``key``; False (nothing reserved) if it does not fit."""
        if not self.can_afford(amount):
            return False
        self._reservations[key] = self._reservations.get(key, 0.0) + amount
        return True

    def settle(self, key: str, *, spent: float = 0.0, uncertain: float = 0.0) -> None:
        """Replace attempt ``key``'s reservation by what it really cost (idempotent per key)."""
        if self._reservations.pop(key, None) is None:
            return
        self.spent_usd += spent
        self.uncertain_usd += uncertain
