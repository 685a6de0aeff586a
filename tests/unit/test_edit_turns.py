"""The turn policy's decisions (pure, clock passed in) and the identity of turns."""

from __future__ import annotations

import pytest

from airflow_banana.editing.turns import (
    SIGNATURE_REJECTED,
    SIGNATURES_DROPPED,
    StopTurn,
    TryChannel,
    TurnAttempt,
    TurnPolicy,
    WaitFor,
    is_signature_rejection,
    outcome_of,
    start_fingerprint,
    turn_key,
)
from airflow_banana.exceptions import ChannelError, ErrorClass

SIG_400 = (
    "HTTP 400 INVALID_ARGUMENT: Image part is missing a thought_signature in content position 2, "
    "part position 2."
)


def _err(
    reason: str, error_class: ErrorClass = ErrorClass.ITEM_TERMINAL, status: int | None = 400
) -> ChannelError:
    return ChannelError(reason, channel="c", error_class=error_class, status_code=status, reason=reason)


def test_signature_rejection_is_told_apart_from_other_400s() -> None:
    assert is_signature_rejection(_err(SIG_400))
    assert outcome_of(_err(SIG_400)) == SIGNATURE_REJECTED
    assert not is_signature_rejection(_err("HTTP 400 INVALID_ARGUMENT: bad aspect ratio"))
    assert outcome_of(_err("HTTP 400: bad aspect ratio")) == "item_terminal"
    assert not is_signature_rejection(_err("thought signature", ErrorClass.RETRYABLE, status=503))
    assert outcome_of(_err("overloaded", ErrorClass.RETRYABLE, 503)) == "retryable"


def test_rejected_signatures_fail_over_and_never_come_back() -> None:
    policy = TurnPolicy(("a", "b", "c"))
    assert policy.next_action([], 0.0) == TryChannel("a")
    attempts = [TurnAttempt("a", SIGNATURE_REJECTED, 1.0)]
    assert policy.next_action(attempts, 1.0) == TryChannel("b")
    attempts.append(TurnAttempt("b", SIGNATURES_DROPPED, 2.0))
    assert policy.next_action(attempts, 2.0) == TryChannel("c")
    attempts.append(TurnAttempt("c", SIGNATURE_REJECTED, 3.0))
    stop = policy.next_action(attempts, 3.0)
    assert isinstance(stop, StopTurn) and stop.signatures and "a: signature_rejected" in stop.reason


def test_a_refused_prompt_stops_at_once_and_fatal_channels_are_dropped() -> None:
    policy = TurnPolicy(("a", "b"))
    stop = policy.next_action([TurnAttempt("a", "item_terminal", 1.0, "blocked")], 1.0)
    assert isinstance(stop, StopTurn) and stop.terminal and not stop.signatures
    attempts = [TurnAttempt("a", "channel_fatal", 1.0), TurnAttempt("b", "quota_exhausted", 2.0)]
    stop = policy.next_action(attempts, 2.0)
    assert isinstance(stop, StopTurn) and not stop.signatures


def test_transient_failures_cycle_with_backoff_and_retry_hints() -> None:
    policy = TurnPolicy(("a", "b"), max_attempts=5, backoff_s=1.0, max_wait_s=30.0)
    attempts = [
        TurnAttempt("a", "retryable", 10.0),
        TurnAttempt("b", "rate_limited", 10.5, retry_after_s=20.0),
    ]
    # Both tried: a is ready at 11.0 (1 s backoff), b at 30.5 (its 429 hint).
    assert policy.next_action(attempts, 10.5) == WaitFor(0.5)
    assert policy.next_action(attempts, 11.0) == TryChannel("a")
    attempts.append(TurnAttempt("a", "timeout", 12.0))
    assert policy.next_action(attempts, 12.0) == WaitFor(2.0)  # second failure on a: 2 s
    attempts.append(TurnAttempt("a", "retryable", 14.0))
    assert policy.next_action(attempts, 14.0) == WaitFor(4.0)
    attempts.append(TurnAttempt("a", "retryable", 18.0))
    stop = policy.next_action(attempts, 18.0)
    assert isinstance(stop, StopTurn) and "max_attempts" in stop.reason


def test_a_wait_longer_than_max_wait_stops_the_turn() -> None:
    policy = TurnPolicy(("a",), max_wait_s=5.0)
    stop = policy.next_action([TurnAttempt("a", "rate_limited", 0.0, retry_after_s=26.0)], 0.0)
    assert isinstance(stop, StopTurn) and "max_wait_s" in stop.reason


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        TurnPolicy(())
    with pytest.raises(ValueError):
        TurnPolicy(("a",)).next_action([TurnAttempt("a", "success", 0.0)], 0.0)


def test_turn_keys_and_start_fingerprints() -> None:
    key = turn_key(
        session_id="s", scope="dag__t__run__m3#0", instruction="make it blue", reference_sha256=["x"]
    )
    assert key == turn_key(
        session_id="s", scope="dag__t__run__m3#0", instruction="make it blue", reference_sha256=["x"]
    )
    assert key != turn_key(
        session_id="s", scope="dag__t__run__m3#1", instruction="make it blue", reference_sha256=["x"]
    )
    assert key != turn_key(session_id="s", scope="dag__t__run__m3#0", instruction="make it blue")
    settings = {"image_size": "1K", "aspect_ratio": "1:1", "include_thoughts": False}
    fp = start_fingerprint(
        prompt="p", base_image_sha256=None, reference_sha256=[], model="m", settings=settings
    )
    assert fp != start_fingerprint(
        prompt="p",
        base_image_sha256=None,
        reference_sha256=[],
        model="m",
        settings={**settings, "image_size": "2K"},
    )
