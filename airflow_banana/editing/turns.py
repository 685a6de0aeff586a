"""Pure decisions of one edit turn: which channel next, wait, or stop -- and the turn's identity.

A session may only fail over to channels that keep signatures (``gemini``/``vertex``) and serve
the session's model, and every attempt resends the full history. The rules, per attempt outcome:

    success                      -> done
    signature_rejected           -> the channel refused the history's signatures (e.g. they were
                                    issued by another project): never try it again this session
                                    turn; try the next. NEVER start a fresh session instead.
    signatures_dropped           -> the channel answered without the signatures the next turn
                                    needs: its answer is unusable; try the next
    channel_fatal, quota_exhausted -> drop the channel for this turn; try the next
    item_terminal (blocked, 400) -> stop: the same model refuses it on every channel
    retryable, timeout, rate_limited, no_image, invalid_image, shared_state_denied
                                 -> try the next untried channel; when every channel has been
                                    tried, retry the one available soonest after a backoff of
                                    ``backoff_s * 2**(tries on it - 1)`` (capped at ``max_backoff_s``)
                                    or its 429 retry hint, whichever is longer

Caps: ``max_attempts`` calls per turn (a shared-state denial is no call), and a single wait
longer than ``max_wait_s`` stops the turn rather than holding a worker slot. Clock injected:
``now`` is passed in; no I/O.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from airflow_banana.exceptions import ChannelError, ErrorClass

SUCCESS = "success"
SIGNATURE_REJECTED = "signature_rejected"
SIGNATURES_DROPPED = "signatures_dropped"
INVALID_IMAGE = "invalid_image"
DENIED = "shared_state_denied"  # the fleet-wide state kept the channel closed; no call was made
# Outcomes after which a channel is not tried again within the turn.
_EXCLUDING = frozenset(
    {SIGNATURE_REJECTED, SIGNATURES_DROPPED, ErrorClass.CHANNEL_FATAL.value, ErrorClass.QUOTA_EXHAUSTED.value}
)
_SIGNATURE_WORDS = re.compile(r"thought[ _]?signature", re.IGNORECASE)


def is_signature_rejection(err: ChannelError) -> bool:
    """True when a channel refused the request because of the history's thought signatures.

    The general classifier calls any 400 ``item_terminal`` (the prompt is at fault everywhere);
    a signature 400 is about THIS channel and these signatures, so it must not end the turn.
    """
    return (err.status_code in (None, 400)) and bool(_SIGNATURE_WORDS.search(err.reason or str(err)))


def outcome_of(err: ChannelError) -> str:
    """The attempt outcome for a failed call (a signature rejection beats the error class)."""
    return SIGNATURE_REJECTED if is_signature_rejection(err) else err.error_class.value


def turn_key(
    *,
    session_id: str,
    scope: str,
    instruction: str,
    reference_sha256: Sequence[str] = (),
) -> str:
    """The idempotency key of a turn: a retried task computes the same key and skips the turn.

    ``scope`` is what makes two requests "the same purchase": the start fingerprint for a
    session's first turn, or the run identity plus the instruction's position for later turns
    (so a retry skips, while another DAG run asking the same edit again gets a new turn).
    """
    body = "\x1f".join([session_id, scope, instruction, *reference_sha256])
    return hashlib.sha256(body.encode("utf-8")).hexdigest()[:32]


def start_fingerprint(
    *,
    prompt: str,
    base_image_sha256: str | None,
    reference_sha256: Sequence[str],
    model: str,
    settings: dict[str, Any],
) -> str:
    """What a session was started from: restarting with another start is refused, not merged."""
    parts = [prompt, base_image_sha256 or "", *reference_sha256, model]
    parts += [f"{k}={settings[k]}" for k in sorted(settings)]
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TurnAttempt:
    """One attempt of a turn on one channel; ``at`` = when it ended, on the injected clock."""

    channel: str
    outcome: str
    at: float
    reason: str = ""
    latency_s: float = 0.0
    cost_usd: float = 0.0
    retry_after_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "outcome": self.outcome,
            "reason": self.reason,
            "latency_s": round(self.latency_s, 3),
            "cost_usd": self.cost_usd,
        }


@dataclass(frozen=True)
class TryChannel:
    channel: str


@dataclass(frozen=True)
class WaitFor:
    seconds: float


@dataclass(frozen=True)
class StopTurn:
    """Give up this turn. ``signatures`` = every channel refused or dropped the signatures."""

    reason: str
    signatures: bool = False
    terminal: bool = False


Action = TryChannel | WaitFor | StopTurn


@dataclass(frozen=True)
class TurnPolicy:
    """Failover order and caps for one turn; ``channels`` are already signature-capable, same model."""

    channels: tuple[str, ...]
    max_attempts: int = 6
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    max_wait_s: float = 120.0

    def __post_init__(self) -> None:
        if not self.channels:
            raise ValueError("a turn needs at least one channel")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")

    def next_action(self, attempts: Sequence[TurnAttempt], now: float) -> Action:
        if attempts and attempts[-1].outcome == SUCCESS:
            raise ValueError("the turn already succeeded")
        if attempts and attempts[-1].outcome == ErrorClass.ITEM_TERMINAL.value:
            last = attempts[-1]
            return StopTurn(
                f"channel '{last.channel}' refused the turn ({last.reason}); the same model behind "
                "every channel would refuse it too",
                terminal=True,
            )
        excluded = {a.channel for a in attempts if a.outcome in _EXCLUDING}
        usable = [c for c in self.channels if c not in excluded]
        if not usable:
            signature_only = all(
                a.outcome in (SIGNATURE_REJECTED, SIGNATURES_DROPPED)
                for a in attempts
                if a.channel in excluded
            )
            return StopTurn(
                "no channel is left: " + _summary(attempts),
                signatures=signature_only,
            )
        calls = sum(1 for a in attempts if a.outcome != DENIED)
        if calls >= self.max_attempts:
            return StopTurn(f"{calls} attempts made (max_attempts): " + _summary(attempts))
        tried = {a.channel for a in attempts}
        for channel in usable:
            if channel not in tried:
                return TryChannel(channel)
        ready_at = {c: self._ready_at(c, attempts) for c in usable}
        channel = min(usable, key=lambda c: (ready_at[c], self.channels.index(c)))
        wait = ready_at[channel] - now
        if wait <= 0:
            return TryChannel(channel)
        if wait > self.max_wait_s:
            return StopTurn(
                f"the next try would be in {wait:.0f}s, over max_wait_s={self.max_wait_s:.0f}: "
                + _summary(attempts)
            )
        return WaitFor(wait)

    def _ready_at(self, channel: str, attempts: Sequence[TurnAttempt]) -> float:
        mine = [a for a in attempts if a.channel == channel]
        last = mine[-1]
        backoff = min(self.max_backoff_s, self.backoff_s * 2 ** (len(mine) - 1))
        return last.at + max(backoff, last.retry_after_s or 0.0)


def _summary(attempts: Sequence[TurnAttempt]) -> str:
    if not attempts:
        return "no attempt was made"
    return "; ".join(f"{a.channel}: {a.outcome}" + (f" ({a.reason})" if a.reason else "") for a in attempts)
