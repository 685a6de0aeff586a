"""routing.silence: when a silent call is hung, not slow (pure, no clock)."""

from __future__ import annotations

import math
import random

import pytest

from airflow_banana.routing.silence import PRIOR_LOG_SIGMA, CallTimes, cut_at

BOUND = math.log(1e-4)  # DEFAULT_FALSE_ALARM


def fitted(n: int, median: float = 10.0, sigma: float = 0.5, seed: int = 1) -> CallTimes:
    rng = random.Random(seed)
    times = CallTimes()
    for _ in range(n):
        times.observe(rng.lognormvariate(math.log(median), sigma))
    return times


def test_before_any_answer_the_priors_hold() -> None:
    times = CallTimes()
    assert times.log_sigma() == pytest.approx(PRIOR_LOG_SIGMA)
    assert math.exp(times.log_median(12.0)) == pytest.approx(12.0)


def test_answers_move_the_fit_to_the_channel() -> None:
    times = fitted(2000, median=3.0, sigma=0.3)
    assert times.log_sigma() == pytest.approx(0.3, abs=0.02)
    assert math.exp(times.log_median(12.0)) == pytest.approx(3.0, rel=0.03)


def test_silence_grows_less_likely_with_age_and_with_more_calls() -> None:
    times = fitted(20)
    one = [times.log_silence([age], 12.0) for age in (5.0, 10.0, 20.0, 40.0)]
    assert one == sorted(one, reverse=True)
    assert times.log_silence([10.0], 12.0) == pytest.approx(math.log(0.5), abs=0.25)  # the median
    assert times.log_silence([20.0] * 6, 12.0) < times.log_silence([20.0], 12.0) - 5


def test_cut_at_is_the_crossing_of_the_false_alarm_bound() -> None:
    times = fitted(20)
    cut = cut_at([0.0], times, 12.0, now=1.0, latest=500.0)
    assert cut is not None
    assert times.log_silence([cut], 12.0) <= BOUND < times.log_silence([cut - 0.1], 12.0)
    assert 35.0 < cut < 80.0  # far out in a 10 s channel's tail, well before a 120 s timeout
    assert cut_at([0.0], times, 12.0, now=cut + 1, latest=500.0) == cut + 1  # past it: now
    assert cut_at([0.0], times, 12.0, now=1.0, latest=cut - 1) is None  # not silent enough in time
    assert cut_at([], times, 12.0, now=1.0, latest=500.0) is None


def test_a_burst_sent_into_an_outage_is_cut_within_a_call_or_two() -> None:
    times = fitted(20)
    alone = cut_at([12.0], times, 12.0, now=12.0, latest=500.0)
    burst = cut_at([float(s) for s in range(13)], times, 12.0, now=12.0, latest=500.0)
    assert alone is not None and burst is not None
    assert burst - 12.0 < 20.0 < alone - 12.0


def test_calls_given_up_on_stay_evidence_for_the_calls_still_out() -> None:
    """A burst of 12 calls into a hang: once 9 are cut (or time out) and leave the in-flight set,
    their silence still counts for the 3 still out, so those are cut too instead of running to
    the deadline (the integration test's race: whoever asked after the others were cut saw 3)."""
    times = CallTimes()
    three = [0.0, 0.01, 0.02]
    alone = cut_at(three, times, 2.0, now=3.1, latest=5.0)
    with_gone = cut_at(three, times, 2.0, now=3.1, latest=5.0, abandoned=[3.1] * 9)
    burst = cut_at(three + [0.0] * 9, times, 2.0, now=3.1, latest=5.0)
    assert alone is None  # three calls 3 s silent: not enough before the rescue's latest start
    assert with_gone == burst == 3.1  # as if the nine were still out: cut now


def test_a_few_fast_first_answers_do_not_make_ordinary_calls_look_hung() -> None:
    """Two quick answers (3 s, on a channel whose median is 10 s) and six calls at one to two
    medians: the median is uncertain and every silent call shares it, so no cut."""
    times = CallTimes()
    times.observe(2.9)
    times.observe(3.6)
    assert times.log_silence([17.0, 15.0, 14.0, 13.0, 12.0, 10.0], 12.0) > BOUND


@pytest.mark.parametrize("sigma", [0.35, 0.53, 0.65])
def test_on_a_healthy_channel_about_one_cut_in_ten_thousand_calls_is_a_call_that_would_answer(
    sigma: float,
) -> None:
    """The promise of ``false_alarm``: healthy calls (one at a time, after 30 answers) outlive
    their single-call cut at about that rate -- each of those cuts would pay twice."""
    rng = random.Random(7)
    times = fitted(30, sigma=sigma, seed=3)
    cut = cut_at([0.0], times, 12.0, now=0.0, latest=10_000.0)
    assert cut is not None
    n = 400_000
    outlive = sum(1 for _ in range(n) if rng.lognormvariate(math.log(10.0), sigma) > cut)
    assert outlive / n < 3e-4
