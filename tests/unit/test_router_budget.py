"""Run-wide retry and spend budgets, and the rolling failover counter."""

from __future__ import annotations

import pytest

from airflow_banana.exceptions import ConfigurationError
from airflow_banana.routing import FailoverCounter, RetryBudget, RetryBudgetConfig, SpendBudget


def test_retry_budget_is_ratio_times_first_attempts_plus_minimum() -> None:
    budget = RetryBudget(RetryBudgetConfig(ratio=0.5, min_retries=2))
    assert budget.can_retry()
    budget.record(retry=True)
    budget.record(retry=True)
    assert not budget.can_retry()  # 3 > 0.5 * 0 + 2
    budget.record(retry=False)
    assert not budget.can_retry()  # 3 > 0.5 * 1 + 2
    budget.record(retry=False)
    assert budget.can_retry()  # 3 <= 0.5 * 2 + 2
    assert (budget.first_attempts, budget.retries) == (2, 2)


def test_default_retry_budget_survives_the_peak_profile() -> None:
    # 45 % failures retried until success: ~0.82 retries per item, inside the default ratio 1.0
    budget = RetryBudget()
    for _ in range(1000):
        budget.record(retry=False)
    for _ in range(820):
        assert budget.can_retry()
        budget.record(retry=True)


def test_spend_budget_reserves_settles_and_never_overshoots() -> None:
    spend = SpendBudget(0.3)
    assert spend.reserve("a", 0.134) and spend.reserve("b", 0.134)
    assert not spend.can_afford(0.134) and not spend.reserve("c", 0.134)
    assert spend.reserved_usd == pytest.approx(0.268)
    spend.settle("a", spent=0.134)
    spend.settle("a", spent=0.134)  # settling twice changes nothing
    spend.settle("b", uncertain=0.134)
    assert spend.spent_usd == pytest.approx(0.134) and spend.uncertain_usd == pytest.approx(0.134)
    assert spend.remaining_usd == pytest.approx(0.032)
    assert spend.can_afford(0.032) and not spend.can_afford(0.0321)


def test_float_sums_do_not_lose_the_last_affordable_image() -> None:
    spend = SpendBudget(0.3)
    for i in range(3):
        assert spend.reserve(str(i), 0.1)
        spend.settle(str(i), spent=0.1)
    assert not spend.can_afford(0.1)  # 0.3 spent (as 0.30000000000000004): nothing more fits
    exact = SpendBudget(0.3)
    for i in range(2):
        exact.reserve(str(i), 0.1)
        exact.settle(str(i), spent=0.1)
    assert exact.can_afford(0.1)


def test_unlimited_budget() -> None:
    spend = SpendBudget(None)
    assert spend.reserve("a", 1e9) and spend.remaining_usd is None
    with pytest.raises(ConfigurationError):
        SpendBudget(-1)
    with pytest.raises(ConfigurationError):
        RetryBudgetConfig(ratio=-0.1)


def test_failover_counter_rolls_over_an_hour_and_alerts_once_per_window() -> None:
    counter = FailoverCounter(threshold=3, window_s=3600)
    assert [counter.record(t) for t in (0, 10, 20)] == [False, False, False]
    assert counter.record(30) is True  # 4 > 3
    assert counter.record(40) is False  # already alerted this window
    assert counter.count(3600) == 4  # the one at t=0 left the window: (0, 3600]
    assert counter.count(3650) == 0
    assert [counter.record(t) for t in (3700, 3710, 3720, 3730)] == [False, False, False, True]
    assert counter.total == 9
    with pytest.raises(ConfigurationError):
        FailoverCounter(window_s=0)
