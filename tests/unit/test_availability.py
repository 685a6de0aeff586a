"""HintHistory: the share of a channel's nominal rate that retry hints leave (pure, clock passed in)."""

from __future__ import annotations

import pytest

from airflow_banana.routing.availability import MIN_SHARE, HintHistory


def test_a_fresh_channel_gives_its_full_rate() -> None:
    assert HintHistory(window_s=100.0).open_share(0.0) == 1.0


def test_an_announced_closure_counts_at_once_and_unseen_time_counts_as_open() -> None:
    h = HintHistory(window_s=100.0)
    h.record(10.0, 40.0)
    # the window ends at the closure's end (40); 30 of its 100 s are closed, whatever is before 0
    assert h.open_share(10.0) == pytest.approx(0.7)
    assert h.open_share(40.0) == pytest.approx(0.7)
    assert h.open_share(90.0) == pytest.approx(0.7)  # [-10, 90] still holds all of it
    assert h.open_share(120.0) == pytest.approx(0.8)  # [20, 120] holds 20 s of it
    assert h.open_share(140.0) == 1.0  # gone from the window


def test_overlapping_hints_are_one_closure() -> None:
    h = HintHistory(window_s=100.0)
    h.record(0.0, 20.0)
    h.record(5.0, 20.0)  # a call in flight when the quota ran out
    h.record(10.0, 25.0)
    assert h.open_share(25.0) == pytest.approx(0.75)


def test_an_early_burst_of_hints_does_not_mark_the_channel_useless() -> None:
    """The new-user incident: the first five calls answer 429 + RetryInfo 1 s."""
    h = HintHistory(window_s=300.0)
    for k in range(5):
        h.record(0.01 * k, 1.0 + 0.01 * k)
    assert h.open_share(1.1) > 0.99
    assert h.open_share(30.0) > 0.99


def test_a_channel_closed_most_of_the_time_gives_a_small_share() -> None:
    h = HintHistory(window_s=10.0)
    t = 0.0
    for _ in range(20):  # open 0.25 s, then a 429 closes it for 1 s, with 3 more 429s in flight
        t += 0.25
        for _ in range(4):
            h.record(t, t + 1.0)
        t += 1.0
    assert h.open_share(t) == pytest.approx(0.2, abs=0.03)


def test_the_share_has_a_floor_and_recovers_when_the_closure_leaves_the_window() -> None:
    h = HintHistory(window_s=10.0)
    h.record(0.0, 20.0)
    assert h.open_share(0.0) == MIN_SHARE
    assert h.open_share(200.0) == 1.0
    h.record(5.0, 4.0)  # a hint already over changes nothing
    assert h.open_share(200.0) == 1.0
