"""HintHistory: the share of a channel's nominal rate that retry hints leave (pure, clock passed in)."""

from __future__ import annotations

import pytest

from airflow_banana.routing.availability import MIN_FACTOR, HintHistory


def test_a_fresh_channel_gives_its_full_rate() -> None:
    h = HintHistory(window_s=100.0)
    assert h.open_share(0.0) == 1.0 and h.answered_share(0.0) == 1.0 and h.rate_factor(0.0) == 1.0


def test_an_announced_closure_counts_at_once_and_unseen_time_counts_as_open() -> None:
    h = HintHistory(window_s=100.0)
    h.record(10.0, rate_limited=True, closed_until=40.0)
    # the window ends at the closure's end (40); 30 of its 100 s are closed, whatever is before 0
    assert h.open_share(10.0) == pytest.approx(0.7)
    assert h.open_share(40.0) == pytest.approx(0.7)
    assert h.open_share(90.0) == pytest.approx(0.7)  # [-10, 90] still holds all of it
    assert h.open_share(120.0) == pytest.approx(0.8)  # [20, 120] holds 20 s of it
    assert h.open_share(140.0) == 1.0  # gone from the window


def test_overlapping_hints_are_one_closure() -> None:
    h = HintHistory(window_s=100.0)
    h.record(0.0, rate_limited=True, closed_until=20.0)
    h.record(5.0, rate_limited=True, closed_until=20.0)  # a call in flight when the quota ran out
    h.record(10.0, rate_limited=True, closed_until=25.0)
    assert h.open_share(25.0) == pytest.approx(0.75)


def test_a_channel_closed_most_of_the_time_gives_a_small_factor() -> None:
    h = HintHistory(window_s=10.0)
    t = 0.0
    for _ in range(20):  # open 0.25 s, then a 429 closes it for 1 s, with 3 more 429s in flight
        t += 0.25
        h.record(t, rate_limited=False)
        h.record(t, rate_limited=True, closed_until=t + 1.0)
        for _ in range(3):
            h.record(t, rate_limited=True, closed_until=t + 1.0)
        t += 1.0
    assert h.open_share(t) == pytest.approx(0.2, abs=0.03)
    assert h.answered_share(t) == pytest.approx(0.2, abs=0.05)
    assert h.rate_factor(t) == pytest.approx(h.open_share(t) * h.answered_share(t))
    assert h.rate_factor(t) < 0.06


def test_the_factor_has_a_floor_and_recovers_as_answers_decay() -> None:
    h = HintHistory(window_s=10.0)
    for _ in range(50):
        h.record(0.0, rate_limited=True, closed_until=20.0)
    assert h.rate_factor(0.0) == MIN_FACTOR
    assert h.answered_share(0.0) == pytest.approx(1 / 51)  # one neutral answer of prior weight
    assert h.answered_share(100.0) == pytest.approx(1 - 50 / 1024 / (50 / 1024 + 1))  # ten half-lives
    assert h.rate_factor(200.0) > 0.99  # the closure left the window, the 429s are forgotten
