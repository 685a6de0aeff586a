"""Pure parts of the simulated batch engine: the job schedule, display-name markers, profiles.

No server here: these pin down the timing and harvest rules the HTTP tests rely on (how many
lines a FAILED job completes, when a stuck job stops, which lines PARTIALLY_SUCCEEDED fails).
"""

from __future__ import annotations

import pytest

from airflow_banana.exceptions import ConfigurationError
from airflow_banana.testing.batch_jobs import Schedule, apply_markers, line_fails, model_name
from airflow_banana.testing.config import BatchProfile, FaultProfile, SimulatorConfig


def test_lines_complete_evenly_between_pending_and_turnaround() -> None:
    s = Schedule(4, BatchProfile(turnaround_s=2.0, pending_s=1.0))
    assert [s.lines_due(t) for t in (0.0, 0.99, 1.0, 1.25, 1.5, 1.99, 2.0, 9.0)] == [0, 0, 0, 1, 2, 3, 4, 4]
    assert [s.state(t, s.lines_due(t)) for t in (0.5, 1.1, 2.0)] == ["PENDING", "RUNNING", "SUCCEEDED"]
    # The final state waits for the work: a job whose lines lag stays RUNNING.
    assert s.state(5.0, 3) == "RUNNING"


@pytest.mark.parametrize("final", ["FAILED", "EXPIRED", "CANCELLED"])
def test_short_states_complete_only_their_fraction(final: str) -> None:
    s = Schedule(10, BatchProfile(turnaround_s=1.0, pending_s=0.0, final_state=final, completed_fraction=0.3))
    assert s.limit == 3
    assert s.lines_due(100.0) == 3
    assert s.state(1.0, 3) == final


def test_stuck_job_runs_its_fraction_then_never_ends() -> None:
    s = Schedule(4, BatchProfile(turnaround_s=1.0, pending_s=0.0, stuck=True, completed_fraction=0.5))
    assert s.lines_due(1e6) == 2
    assert s.state(1e6, 2) == "RUNNING"
    assert s.next_event_in(10.0, 2) is None


def test_next_event_points_at_the_next_due_line_then_the_end() -> None:
    s = Schedule(2, BatchProfile(turnaround_s=2.0, pending_s=1.0))
    assert s.next_event_in(0.25, 0) == pytest.approx(0.75)
    assert s.next_event_in(1.0, 0) == pytest.approx(0.5)
    assert s.next_event_in(1.6, 1) == pytest.approx(0.4)
    assert s.next_event_in(3.0, 2) == 0.0


def test_markers_in_display_name_override_the_profile() -> None:
    base = BatchProfile()
    p = apply_markers("run-1 [sim:failed] [sim:done=0.25] [sim:poll_errors=2] [sim:turnaround=0.5]", base)
    assert (p.final_state, p.completed_fraction, p.poll_errors, p.turnaround_s) == ("FAILED", 0.25, 2, 0.5)
    assert apply_markers("[sim:stuck] [sim:line_errors=0.5] [sim:nonsense]", base).stuck is True
    assert apply_markers("plain name", base) is base
    with pytest.raises(ConfigurationError):
        apply_markers("[sim:line_errors=3]", base)


def test_partially_succeeded_fails_every_fourth_line_by_default() -> None:
    partial = BatchProfile(final_state="PARTIALLY_SUCCEEDED")
    assert [line_fails(0, "batches/x", i, partial) for i in range(6)] == [
        False,
        True,
        False,
        False,
        False,
        True,
    ]
    rate = BatchProfile(line_error_rate=0.5)
    picks = [line_fails(0, "batches/x", i, rate) for i in range(400)]
    assert picks == [line_fails(0, "batches/x", i, rate) for i in range(400)]  # deterministic
    assert 150 < sum(picks) < 250


def test_profiles_round_trip_and_validate() -> None:
    prof = FaultProfile.from_dict(
        {"name": "b", "batch": {"final_state": "job_state_expired", "turnaround_s": "3s"}}
    )
    assert prof.batch == BatchProfile(final_state="EXPIRED", turnaround_s=3.0)
    assert FaultProfile.from_dict(prof.to_dict()) == prof
    assert SimulatorConfig.from_dict({"batch": {"stuck": True}}).batch.stuck
    for bad in ({"final_state": "DONE"}, {"completed_fraction": 2}, {"poll_errors": -1}, {"speed": 1}):
        with pytest.raises(ConfigurationError):
            BatchProfile.from_dict(bad)


def test_model_names_are_reduced_to_the_model_id() -> None:
    assert model_name("models/gemini-3-pro-image-preview") == "gemini-3-pro-image-preview"
    assert model_name("publishers/google/models/m") == "m"
    assert model_name("m") == "m"
