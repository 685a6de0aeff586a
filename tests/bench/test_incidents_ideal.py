"""The pure parts of ``bench/incidents.py``: the ideal's greedy bound and its ground truth."""

from __future__ import annotations

import pytest

from bench.incidents import Cell, ChannelTruth, all_cells, channel_truths, ideal_cost, timeline


def test_ideal_fills_the_cheapest_channel_first_up_to_what_it_can_finish() -> None:
    cheap = ChannelTruth("cheap", 0.05, opens_at_s=3.0, mean_call_s=1.0, success_rate=0.5, concurrency=4)
    dear = ChannelTruth("dear", 0.134, opens_at_s=0.0, mean_call_s=1.0, success_rate=1.0, concurrency=4)
    # 13 s horizon: the cheap one serves 10 s x 4 slots x 50 % = 20 images, the dear one the rest
    spend, plan = ideal_cost(30, 13.0, [dear, cheap])
    assert plan == {"cheap": 20, "dear": 10}
    assert spend == pytest.approx(20 * 0.05 + 10 * 0.134)
    # an hour: the cheap one alone
    assert ideal_cost(30, 3600.0, [dear, cheap]) == (pytest.approx(1.5), {"cheap": 30})
    # no time at all: nothing can be made (the caller reports the shortfall)
    assert ideal_cost(30, 0.0, [dear, cheap]) == (0.0, {})


def test_ground_truth_of_the_incidents_from_profiles_and_the_ledger() -> None:
    requests = [
        {"ts": 100.5, "key_id": "cheap", "method": "GET", "path": "/v1/models/x", "status": 503},
        {"ts": 100.2, "key_id": "google", "method": "GET", "path": "/v1/models/x", "status": 200},
    ]
    down = {t.name: t for t in channel_truths(Cell("down_3s", "fast", "none"), requests, 100.0, 4)}
    assert down["cheap"].opens_at_s == pytest.approx(3.5)  # its clock began at its first request
    assert down["cheap"].success_rate == 1.0
    assert down["google"].success_rate == pytest.approx(0.55)
    assert down["google"].opens_at_s == pytest.approx(0.2)
    assert down["openai"].price == 0.20 and down["openai"].mean_call_s == pytest.approx(0.010)
    burst = {t.name: t for t in channel_truths(Cell("429_burst", "slow", "90s"), requests, 100.0, 4)}
    assert burst["cheap"].opens_at_s == pytest.approx(1.5)  # + the burst's 1 s hint
    assert burst["cheap"].mean_call_s == pytest.approx(0.6)
    blip = {t.name: t for t in channel_truths(Cell("503_10pct", "fast", "none"), requests, 100.0, 4)}
    assert blip["cheap"].success_rate == pytest.approx(0.9)


def test_cells_and_timeline() -> None:
    assert len(all_cells()) == 12 and Cell.parse("down_3s/slow/90s") == Cell("down_3s", "slow", "90s")
    with pytest.raises(SystemExit):
        Cell.parse("down_9s/slow/90s")
    gen = "/v1/models/gemini-3-pro-image-preview:generateContent"
    requests = [
        {"ts": 10.1, "key_id": "cheap", "method": "POST", "path": gen, "status": 503},
        {"ts": 10.2, "key_id": "cheap", "method": "POST", "path": gen, "status": 503},
        {"ts": 11.5, "key_id": "cheap", "method": "POST", "path": gen, "status": 200},
        {"ts": 10.0, "key_id": "cheap", "method": "GET", "path": "/v1/models/x", "status": 200},  # free
    ]
    assert timeline(requests, 10.0) == {"cheap": "t+0s 503x2; t+1s 200x1"}
