"""The I/O side of an edit turn: audit, send the full history, fail over, store, commit.

Decisions are ``editing.turns.TurnPolicy``'s; this module carries them out on one asyncio loop:

1. a turn whose key the session already lists is skipped: a retried task never pays twice;
2. the history plus the new user turn is audited locally (``audit_history``): a history that
   lost its signatures fails here, before any call, with Google's positions;
3. the whole history goes to the policy's channel; a channel that rejects the signatures (or
   answers without them) is recorded and the next one is tried. A fresh session is never
   started behind the caller's back;
4. the image is validated and written (``images/{session}/turn-NNN-{sha12}.{ext}``), then the
   session is saved with a generation precondition -- that save is the turn's commit -- then
   the per-turn metadata (``metadata/{session}/turn-NNN.json``) is written from it.

A crash between paying and step 4's save loses that one turn's image (it is paid once, stored
nowhere the session points at); the retry pays for that turn again. No other window exists.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from airflow_banana.channels.config import ChannelConfig
from airflow_banana.channels.gemini import resolve_model
from airflow_banana.editing.audit import audit_history, audit_model_turn
from airflow_banana.editing.session import (
    EditSession,
    SessionStore,
    TurnRecord,
    image_part,
    text_part,
)
from airflow_banana.editing.turns import (
    DENIED,
    INVALID_IMAGE,
    SIGNATURES_DROPPED,
    SUCCESS,
    StopTurn,
    TryChannel,
    TurnAttempt,
    TurnPolicy,
    WaitFor,
    outcome_of,
)
from airflow_banana.exceptions import (
    BananaError,
    BudgetExceededError,
    ChannelError,
    ConfigurationError,
    ErrorClass,
    ImageValidationError,
    PreconditionFailedError,
    SignatureError,
)
from airflow_banana.imaging import inspect_image
from airflow_banana.models import INPUT_IMAGE_TOKENS, GenerationResult, ImageRequest, ReferenceImage
from airflow_banana.routing.state import ChannelStateBackend, Denial, Outcome, Permit
from airflow_banana.storage.objects import join_uri, utcnow_iso

log = logging.getLogger(__name__)

# Input tokens are billed on top of the image price, and an edit resends the whole history:
# $2 per million input tokens for gemini-3-pro-image-preview (PRICING.md).
INPUT_USD_PER_TOKEN = 2.0 / 1_000_000
SIGNATURE_PROTOCOLS = ("gemini", "vertex")


class HistoryChannel(Protocol):
    """A channel that can send a whole multi-turn history (``GeminiChannel`` is one)."""

    config: ChannelConfig

    @property
    def name(self) -> str: ...

    async def generate_contents(
        self, contents: Sequence[Mapping[str, Any]], *, request: ImageRequest
    ) -> tuple[GenerationResult, dict[str, Any]]: ...

    async def aclose(self) -> None: ...


def refuse_signature_droppers(configs: Sequence[ChannelConfig], *, who: str) -> None:
    """Refuse, before any spend, every channel known to drop thought signatures (FAULTS.md S7)."""
    for config in configs:
        if config.protocol not in SIGNATURE_PROTOCOLS or not config.signatures:
            why = (
                f"protocol {config.protocol!r} (OpenAI-format relays drop thought signatures)"
                if config.protocol not in SIGNATURE_PROTOCOLS
                else "its connection says it drops thought signatures (extra.drops_signatures)"
            )
            raise ConfigurationError(
                f"{who}: channel '{config.name}' cannot carry an edit session: {why}. Multi-turn "
                "editing needs every previous model turn sent back with its signatures; use "
                f"only {' / '.join(SIGNATURE_PROTOCOLS)} channels. Nothing was sent or paid"
            )


def channels_for_model(configs: Sequence[ChannelConfig], model: str, *, who: str) -> list[ChannelConfig]:
    """The channels that serve ``model`` under that exact name; the others are left out.

    A session is tied to its model: another model cannot continue the same thought chain.
    """
    serving = [c for c in configs if resolve_model(model, c.model) == model]
    skipped = [c.name for c in configs if c not in serving]
    if skipped:
        log.warning("%s: channel(s) %s do not serve model %s; not used for this session", who, skipped, model)
    if not serving:
        raise ConfigurationError(
            f"{who}: none of the channels {[c.name for c in configs]} serves model {model!r}, the "
            "session's model; add a channel for that model. Nothing was sent or paid"
        )
    return serving


@dataclass(frozen=True)
class TurnSpec:
    """One turn to apply. ``images`` go after the text: a base image first, then references."""

    key: str
    instruction: str
    images: tuple[ReferenceImage, ...] = ()
    reference_uris: tuple[str, ...] = ()
    parent_sha256: str | None = None
    run: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TurnOutcome:
    record: TurnRecord
    skipped: bool
    metadata_uri: str
    spent_usd: float


def estimate_turn_usd(session: EditSession, spec: TurnSpec, image_price: float) -> float:
    """The image price plus the input tokens of the whole history and the new turn."""
    images = len(spec.images)
    text_chars = len(spec.instruction)
    for content in session.history:
        for part in content.get("parts") or []:
            if "inline_data" in part or "inlineData" in part:
                images += 1
            elif isinstance(part.get("text"), str) and not part.get("thought"):
                text_chars += len(part["text"])
    tokens = images * INPUT_IMAGE_TOKENS + text_chars // 4
    return image_price + tokens * INPUT_USD_PER_TOKEN


class EditEngine:
    """Applies turns to sessions through history-capable channels (already filtered and ordered)."""

    def __init__(
        self,
        *,
        channels: Mapping[str, HistoryChannel],
        store: SessionStore,
        output_prefix: str,
        policy: TurnPolicy | None = None,
        budget_usd: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        state: ChannelStateBackend | None = None,
        state_clock: Callable[[], float] | None = None,
    ):
        if not channels:
            raise ConfigurationError("edit engine: no channel to send turns to")
        self.channels = dict(channels)
        self.store = store
        self.output_prefix = output_prefix.rstrip("/")
        self.policy = policy or TurnPolicy(tuple(self.channels))
        self.budget_usd = budget_usd
        self.spent_usd = 0.0
        self._clock = clock
        self._sleep = sleep
        # Optional fleet-wide channel state (breakers, rate limits, 429 closures), shared with
        # the realtime lane; ``state_clock`` must be the timebase every worker agrees on.
        self._state = state
        self._state_clock = state_clock or clock

    # -- layout
    def image_uri(self, session_id: str, index: int, sha256: str, extension: str) -> str:
        return join_uri(
            self.output_prefix, "images", session_id, f"turn-{index:03d}-{sha256[:12]}.{extension}"
        )

    def metadata_uri(self, session_id: str, index: int) -> str:
        return join_uri(self.output_prefix, "metadata", session_id, f"turn-{index:03d}.json")

    def _order(self, session: EditSession) -> tuple[str, ...]:
        # Stay on the channel the session last used while it works: same project, same caches.
        names = [n for n in self.policy.channels if n in self.channels]
        if session.channel in names:
            names.remove(session.channel)
            names.insert(0, session.channel)
        return tuple(names)

    # -- one turn
    async def run_turn(self, session: EditSession, spec: TurnSpec) -> tuple[EditSession, TurnOutcome]:
        """Apply ``spec`` to ``session``; returns the saved session and what happened."""
        done = session.turn_by_key(spec.key)
        if done is not None:
            metadata_uri = self.metadata_uri(session.session_id, done.index)
            if not self.store.storage.exists(metadata_uri):
                self._write_metadata(session, done, metadata_uri)
            log.info(
                "edit session %s: turn %d already stored (%s); skipped, not paid again",
                session.session_id,
                done.index,
                done.image.get("uri"),
            )
            return session, TurnOutcome(done, True, metadata_uri, 0.0)

        index = len(session.turns) + 1
        who = f"edit session '{session.session_id}', turn {index}"
        user: dict[str, Any] = {
            "parts": [text_part(spec.instruction)] + [image_part(i.data, i.mime_type) for i in spec.images],
            "role": "user",
        }
        contents = [*session.history_copy(), user]
        audit_history(contents, session=session.session_id)
        self.store.verify(session)

        order = self._order(session)
        policy = TurnPolicy(
            order,
            max_attempts=self.policy.max_attempts,
            backoff_s=self.policy.backoff_s,
            max_backoff_s=self.policy.max_backoff_s,
            max_wait_s=self.policy.max_wait_s,
        )
        if self.budget_usd is not None:
            price = self.channels[order[0]].config.prices.get(session.settings.image_size, 0.0)
            estimate = estimate_turn_usd(session, spec, price)
            if self.spent_usd + estimate > self.budget_usd + 1e-9:
                raise BudgetExceededError(
                    f"{who}: the turn would cost about ${estimate:.4f}; ${self.spent_usd:.4f} of the "
                    f"${self.budget_usd:.4f} budget is spent. Nothing more was sent; the session is "
                    f"saved up to turn {index - 1} and a run with more budget continues it"
                )

        request = ImageRequest(
            item_id=f"{session.session_id}-turn{index}",
            prompt=spec.instruction,
            image_size=session.settings.image_size,
            aspect_ratio=session.settings.aspect_ratio,
            model=session.model,
            reference_images=spec.images,
            include_thoughts=session.settings.include_thoughts,
            data_policy=session.settings.data_policy,
        )
        attempts: list[TurnAttempt] = []
        while True:
            action = policy.next_action(attempts, self._clock())
            if isinstance(action, WaitFor):
                log.info("%s: waiting %.1fs before the next attempt", who, action.seconds)
                await self._sleep(action.seconds)
                continue
            if isinstance(action, StopTurn):
                self.spent_usd += sum(a.cost_usd for a in attempts)
                raise self._stop_error(who, action, attempts)
            assert isinstance(action, TryChannel)
            attempt, result, content = await self._attempt(action.channel, contents, request, who)
            attempts.append(attempt)
            if result is not None and content is not None:
                break

        record = self._record(session, spec, index, request, attempts, result, content)
        image_uri = record.image["uri"]
        self.store.storage.write_bytes(
            image_uri, result.image, content_type=result.mime_type, if_absent=False
        )
        session.history.extend([user, content])
        session.turns.append(record)
        session.channel = result.channel
        try:
            session = self.store.save(session, known_objects={result.sha256: image_uri})
        except PreconditionFailedError:
            self.spent_usd += record.cost_usd
            raise
        self.spent_usd += record.cost_usd
        metadata_uri = self.metadata_uri(session.session_id, index)
        self._write_metadata(session, record, metadata_uri)
        log.info(
            "%s: %s on %s in %.1fs, $%.4f -> %s",
            who,
            "edited" if record.parent_sha256 else "generated",
            record.channel,
            record.latency_s,
            record.cost_usd,
            image_uri,
        )
        return session, TurnOutcome(record, False, metadata_uri, record.cost_usd)

    async def _attempt(
        self, name: str, contents: list[dict[str, Any]], request: ImageRequest, who: str
    ) -> tuple[TurnAttempt, GenerationResult | None, dict[str, Any] | None]:
        channel = self.channels[name]
        permit: Permit | None = None
        if self._state is not None:
            gate = self._state.try_acquire(name, self._state_clock())
            if isinstance(gate, Denial):
                return self._denied(name, gate, who), None, None
            permit = gate
        started = self._clock()
        try:
            result, content = await channel.generate_contents(contents, request=request)
        except ChannelError as err:
            now = self._clock()
            cost = channel.config.prices.get(request.image_size, 0.0) if err.billed else 0.0
            outcome = outcome_of(err)
            log.warning("%s: channel %s: %s", who, name, err)
            self._record_state(permit, err, now - started, cost)
            return (
                TurnAttempt(name, outcome, now, err.reason, now - started, cost, err.retry_after),
                None,
                None,
            )
        now = self._clock()
        self._record_state(permit, None, now - started, result.cost_usd)
        latency = result.latency_s or (now - started)
        gap = audit_model_turn(content) if content else None
        if not content or gap is not None:
            why = gap.google_message if gap else "the answer carried no model content"
            log.warning(
                "%s: channel %s answered without the signatures the next turn needs: %s", who, name, why
            )
            return TurnAttempt(name, SIGNATURES_DROPPED, now, why, latency, result.cost_usd), None, None
        try:
            inspect_image(result.image)
        except ImageValidationError as err:
            return TurnAttempt(name, INVALID_IMAGE, now, str(err)[:200], latency, result.cost_usd), None, None
        return TurnAttempt(name, SUCCESS, now, "", latency, result.cost_usd), result, content

    def _denied(self, name: str, denial: Denial, who: str) -> TurnAttempt:
        """The shared state keeps ``name`` closed (breaker, rate limit, 429 hint): not a call."""
        now = self._state_clock()
        if denial.retry_at is None:
            wait: float | None = 1.0  # blocked by concurrency: look again after a moment
        elif math.isinf(denial.retry_at):
            wait = None
        else:
            wait = max(0.0, denial.retry_at - now)
        log.info("%s: channel %s is closed by the shared state (%s)", who, name, denial.reason)
        outcome = ErrorClass.CHANNEL_FATAL.value if wait is None else DENIED
        return TurnAttempt(name, outcome, self._clock(), f"shared state: {denial.reason}", 0.0, 0.0, wait)

    def _record_state(
        self, permit: Permit | None, err: ChannelError | None, latency: float, cost: float
    ) -> None:
        if self._state is None or permit is None:
            return
        now = self._state_clock()
        if err is None:
            outcome = Outcome(None, latency, cost)
        else:
            closed = None
            if err.error_class in (ErrorClass.RATE_LIMITED, ErrorClass.QUOTA_EXHAUSTED):
                closed = now + (err.retry_after if err.retry_after is not None else self.policy.backoff_s)
            outcome = Outcome(err.error_class, latency, cost, closed, detail=err.reason)
        try:
            self._state.record(permit, outcome, now)
        except BananaError as state_err:  # shared state helps; it never fails a turn
            log.warning("recording the attempt in the shared channel state failed: %s", state_err)

    def _record(
        self,
        session: EditSession,
        spec: TurnSpec,
        index: int,
        request: ImageRequest,
        attempts: Sequence[TurnAttempt],
        result: GenerationResult,
        content: Mapping[str, Any],
    ) -> TurnRecord:
        info = inspect_image(result.image)
        input_usd = round(result.usage.prompt_tokens * INPUT_USD_PER_TOKEN, 6)
        image_usd = round(sum(a.cost_usd for a in attempts), 6)
        parent = spec.parent_sha256 if spec.parent_sha256 is not None else session.last_image_sha256
        user_pos = len(session.history)
        return TurnRecord(
            index=index,
            key=spec.key,
            instruction=spec.instruction,
            reference_images=spec.reference_uris,
            channel=result.channel,
            model=session.model,
            image={
                "uri": self.image_uri(session.session_id, index, result.sha256, info.extension),
                "sha256": result.sha256,
                "mime_type": info.mime_type,
                "declared_mime_type": result.declared_mime_type,
                "width": info.width,
                "height": info.height,
                "bytes": len(result.image),
            },
            contents=(user_pos, user_pos + 1),
            parent_sha256=parent,
            cost_usd=round(image_usd + input_usd, 6),
            image_usd=image_usd,
            input_usd=input_usd,
            latency_s=round(attempts[-1].latency_s, 3),
            tokens=result.usage.as_dict(),
            attempts=tuple(a.as_dict() for a in attempts),
            run=dict(spec.run),
            finished_at=utcnow_iso(),
        )

    def _write_metadata(self, session: EditSession, record: TurnRecord, uri: str) -> None:
        body = {
            "session_id": session.session_id,
            "session_uri": session.uri,
            "model": session.model,
            "settings": session.settings.as_dict(),
            "status": "succeeded",
            **record.as_dict(),
        }
        self.store.storage.write_json(uri, body)

    @staticmethod
    def _stop_error(who: str, action: StopTurn, attempts: Sequence[TurnAttempt]) -> Exception:
        if action.signatures:
            return SignatureError(
                f"{who}: every channel refused or dropped the history's thought signatures "
                f"({action.reason}). The session was NOT restarted (a new session would draw a new "
                "image, not edit this one). Add a channel of the project that issued the "
                "signatures, or start a new session on purpose"
            )
        last = attempts[-1] if attempts else None
        try:
            error_class = ErrorClass(last.outcome) if last else ErrorClass.RETRYABLE
        except ValueError:
            error_class = ErrorClass.RETRYABLE
        return ChannelError(
            f"{who} failed: {action.reason}. The session is saved up to the previous turn; a "
            "retry continues from there and does not pay again for stored turns",
            channel=last.channel if last else "-",
            error_class=error_class,
            item_id=None,
        )


async def run_turns(
    session: EditSession,
    specs: Sequence[TurnSpec],
    configs: Sequence[ChannelConfig],
    *,
    store: SessionStore,
    output_prefix: str,
    budget_usd: float | None,
    max_attempts: int,
    max_wait_s: float,
    state_for: Callable[[], ChannelStateBackend | None] = lambda: None,
    who: str,
) -> dict[str, Any]:
    """Apply ``specs`` to ``session`` in order through ``configs`` (checked, filtered, ordered):
    the channels are built here and closed at the end; the answer is the run's XCom summary.

    ``state_for`` answers the fleet-wide channel state (e.g. Redis), or None for per-process
    state; it is called once the turn policy is checked. With such a state each channel is
    registered with the realtime lane's policy, so edit turns and realtime items share breakers,
    limits and 429 closures; that needs the clock every worker agrees on
    (``SystemClock(shared=True)``).
    """
    from airflow_banana.channels import build_channel, close_channels
    from airflow_banana.routing import RouterConfig, SystemClock, policy_for

    channels: dict[str, HistoryChannel] = {c.name: build_channel(c) for c in configs}  # type: ignore[misc]
    try:
        policy = TurnPolicy(tuple(channels), max_attempts=int(max_attempts), max_wait_s=float(max_wait_s))
    except (TypeError, ValueError) as err:
        raise ConfigurationError(f"{who}: {err}; nothing was sent") from err
    state = state_for()
    if state is not None:
        router_config = RouterConfig()
        for config in configs:
            state.register(config.name, policy_for(config, router_config))
    engine = EditEngine(
        channels=channels,
        store=store,
        output_prefix=output_prefix,
        policy=policy,
        budget_usd=budget_usd,
        state=state,
        state_clock=SystemClock(shared=True).now,
    )
    applied: list[dict[str, Any]] = []
    try:
        for spec in specs:
            session, outcome = await engine.run_turn(session, spec)
            applied.append(
                {
                    "turn": outcome.record.index,
                    "skipped": outcome.skipped,
                    "channel": outcome.record.channel,
                    "image_uri": outcome.record.image["uri"],
                    "cost_usd": 0.0 if outcome.skipped else outcome.record.cost_usd,
                    "metadata_uri": outcome.metadata_uri,
                }
            )
    finally:
        await close_channels(channels.values())
    latest = session.turns[-1].image["uri"] if session.turns else None
    return {
        "session_id": session.session_id,
        "session_uri": session.uri,
        "turns": len(session.turns),
        "applied": applied,
        "spent_usd": round(engine.spent_usd, 6),
        "session_spent_usd": session.spent_usd,
        "latest_image_uri": latest,
    }
