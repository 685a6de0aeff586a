"""The realtime lane's engine: drives items through the router and the channels, concurrently.

All decisions (which channel, wait, give up) are the pure router's; this module only does the
I/O around them on one asyncio loop: it calls channels, validates the image, commits it through
the ``OutputStore`` and logs progress. Because no ``await`` happens inside a router call, every
decision is atomic with respect to the other items in flight.

Before an item's first call the engine takes the item's claim (``airflow_banana.realtime.claims``); when
another worker holds it, the item waits outside the concurrency slots for that worker's result
instead of paying for its own, and is skipped when that result lands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from airflow_banana.channels.base import Channel
from airflow_banana.exceptions import ChannelError, ErrorClass, ImageValidationError, StorageError
from airflow_banana.imaging import ImageInfo, inspect_image
from airflow_banana.models import GenerationResult, ImageRequest, expected_pixels
from airflow_banana.pricing import attempt_cost
from airflow_banana.realtime.claims import DEFAULT_TTL_S as CLAIM_TTL_S
from airflow_banana.realtime.claims import ClaimHeld, ItemClaims
from airflow_banana.routing import Attempt as AttemptDecision
from airflow_banana.routing import (
    AttemptRecord,
    ChannelEvent,
    GiveUp,
    ItemProgress,
    Objective,
    Router,
    Wait,
    describe,
)
from airflow_banana.storage.objects import utcnow_iso
from airflow_banana.storage.outputs import ItemCheck, OutputStore
from airflow_banana.storage.report import (
    FAILED,
    NOT_ATTEMPTED,
    SUCCEEDED,
    Attempt,
    ItemOutcome,
    skipped_outcome,
)

log = logging.getLogger(__name__)

_ROUTINE_EVENTS = (ChannelEvent.RETRY_HINT, ChannelEvent.BREAKER_CLOSED)
_EVENT_NEXT = {
    ChannelEvent.BREAKER_OPENED: "its traffic moves to the other channels until a probe succeeds",
    ChannelEvent.BREAKER_REOPENED: "the probe failed; closed longer before the next probe",
    ChannelEvent.BREAKER_CLOSED: "the probe succeeded; back in the rotation",
    ChannelEvent.RETRY_HINT: "no calls until the provider's retry delay ends",
    ChannelEvent.BENCHED: "no calls until its daily quota resets",
    ChannelEvent.DISABLED: "not used again in this run",
}


class _SilentCut(TimeoutError):
    """The router judged a silent call hung (``Router.silence_cut_at``): abandoned before its timeout."""


class Metrics(Protocol):
    """What the engine emits; the operator adapts Airflow's Stats. Failures here never fail a run."""

    def incr(self, name: str, count: int = 1) -> None: ...

    def timing(self, name: str, seconds: float) -> None: ...


@dataclass(frozen=True)
class WorkItem:
    """One item ready to send: the request (reference images loaded) and its absolute deadline."""

    request: ImageRequest
    deadline: datetime | None = None
    item_metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class RealtimeSettings:
    lane: str = "realtime"
    force: bool = False
    # Items in progress at once, task-wide. Default: every item for "cheapest" (the plan sees
    # them all; channel limits bound the calls), the channels' summed concurrency for "fastest".
    max_in_flight: int | None = None
    progress_interval_s: float = 30.0
    on_failover_alert: Callable[[Mapping[str, Any]], None] | None = None
    # Claims (see airflow_banana.realtime.claims): off only when nothing else can generate these items.
    claims: bool = True
    claim_ttl_s: float = CLAIM_TTL_S
    claim_poll_s: float = 10.0  # how often an item held by another worker checks for its result


@dataclass
class _OwnClaim:
    """The claim this engine holds on one item; the expiry we wrote, so renewals need no read."""

    item_id: str
    expires_at: float
    lost: bool = False


@dataclass
class RunResult:
    outcomes: list[ItemOutcome]
    breaker_openings: dict[str, int]
    started_at: str
    finished_at: str
    channels_left_out: dict[str, str] = field(default_factory=dict)  # by preflight: name -> why


class RealtimeEngine:
    """Generates ``WorkItem``s through ``channels`` as the ``router`` decides; see the module docstring."""

    def __init__(
        self,
        *,
        channels: Mapping[str, Channel],
        router: Router,
        store: OutputStore,
        run_key: str,
        settings: RealtimeSettings | None = None,
        metrics: Metrics | None = None,
    ):
        self.channels = channels
        self.router = router
        self.store = store
        self.run_key = run_key
        self.settings = settings or RealtimeSettings()
        self.metrics = metrics
        self.clock = router.clock
        self.claims = ItemClaims(store)
        # Each waiting item sleeps on its own event: set when its Wait asked to wake on a permit
        # release and one came back, or when the router says the queue it heads moved.
        self._wakers: dict[str, asyncio.Event] = {}
        self._sent: dict[str, asyncio.Event] = {}  # per channel: set at its next send (_call)
        self._on_release: set[str] = set()
        self._done = 0
        self._skipped_at_start = 0  # found done in storage: not part of the generation rate
        self._total = 0
        self._spent = 0.0
        self._started = self.clock.now()
        self._started_wall = time.time()
        # Under force: each item's success as stored at the start, which this run replaces.
        self._replaced: dict[str, dict[str, Any] | None] = {}

    # ------------------------------------------------------------------ public
    async def run(self, work: Sequence[WorkItem]) -> RunResult:
        started = utcnow_iso()
        self._started = self.clock.now()
        self._started_wall = time.time()
        self._total = len(work)
        outcomes: list[ItemOutcome | None] = [None] * len(work)
        todo: list[int] = []
        checks = await asyncio.gather(*(asyncio.to_thread(self.store.check, w.request) for w in work))
        for i, (w, check) in enumerate(zip(work, checks, strict=True)):
            if check.done is not None and not self.settings.force:
                outcomes[i] = skipped_outcome(w.request.item_id, w.request.image_size, check.done)
                self._done += 1
                self._skipped_at_start += 1
            elif check.conflict is not None and not self.settings.force:
                outcomes[i] = self._conflict(w, check.conflict)
            else:
                if check.conflict is not None:
                    log.warning("item '%s': force=True: replacing another request's image", w.request.item_id)
                todo.append(i)
        if self.settings.force and self.settings.claims:
            records = await asyncio.gather(*(self._done_record(work[i].request) for i in todo))
            self._replaced = {work[i].request.item_id: r for i, r in zip(todo, records, strict=True)}
        if len(todo) < len(work):
            log.info(
                "%d of %d items already done in storage: skipped, nothing paid",
                len(work) - len(todo),
                len(work),
            )

        limit = self.settings.max_in_flight or sum(c.config.max_concurrency for c in self.channels.values())
        slots = asyncio.Semaphore(max(1, limit))
        progress = asyncio.create_task(self._progress_loop())
        try:
            results = await asyncio.gather(*(self._bounded(slots, work[i]) for i in todo))
        finally:
            progress.cancel()
            await asyncio.gather(progress, return_exceptions=True)
        for i, outcome in zip(todo, results, strict=True):
            outcomes[i] = outcome
        for w, done in zip(work, outcomes, strict=True):
            if done is not None:  # the report says which policy applied to every item
                done.data_policy, done.grounding = w.request.data_policy, w.request.grounding
        self._log_progress(final=True)
        return RunResult(
            outcomes=[o for o in outcomes if o is not None],
            breaker_openings=self._breaker_openings(),
            started_at=started,
            finished_at=utcnow_iso(),
        )

    # ------------------------------------------------------------------ per item
    def _attempt_view(self, record: AttemptRecord, image_size: str) -> Attempt:
        """An attempt as recorded: billed cost, the configured price as the estimate, wall-clock start."""
        outcome = (
            "cancelled"
            if record.cancelled
            else (record.error_class.value if record.error_class else "success")
        )
        config = self.channels[record.channel].config
        estimate = attempt_cost(
            config.prices, image_size, succeeded=record.ok, billed_on_failure=config.billed_on_failure
        )
        # The router's clock may be monotonic: shift it by the offset measured at the run's start.
        started = record.started_at + (self._started_wall - self._started)
        return Attempt(
            channel=record.channel,
            outcome=outcome,
            latency_s=round(record.latency_s, 3),
            cost_usd=record.cost_usd,
            billed=record.billed,
            status_code=record.status_code,
            reason=record.reason,
            started_at=datetime.fromtimestamp(started, UTC).isoformat(timespec="milliseconds"),
            estimated_cost_usd=estimate,
        )

    async def _bounded(self, slots: asyncio.Semaphore, w: WorkItem) -> ItemOutcome:
        # The cost-first router plans over every waiting item (queue places decide who waits
        # for the cheap channel and who spills now), so these items must all be visible to it;
        # channel permits bound the calls, queue places spread the wake-ups. An explicit
        # ``max_in_flight`` still bounds the items in progress.
        unbounded = self.router.config.objective is Objective.CHEAPEST and self.settings.max_in_flight is None
        if not self.settings.claims:
            async with contextlib.nullcontext() if unbounded else slots:
                return await self._generate(w)
        announced = False
        while True:
            # The claim is taken inside the slot, right before generating, so a claim is held
            # only by an item that is about to call; waiting for another worker happens outside
            # the slot, so held items do not starve the ones this engine could generate now.
            async with contextlib.nullcontext() if unbounded else slots:
                taken = await self._take_claim(w)
                if isinstance(taken, _OwnClaim):
                    try:
                        return await self._generate(w, taken)
                    finally:
                        await asyncio.to_thread(self.claims.release, w.request.item_id, owner=self.run_key)
            if isinstance(taken, ItemOutcome):
                return taken
            if taken.fingerprint not in ("", w.request.fingerprint()) and not self.settings.force:
                return self._conflict(w, self._claim_conflict(w.request, taken))
            outcome = await self._wait_for_holder(w, taken, announce=not announced)
            announced = True
            if outcome is not None:
                return outcome

    async def _take_claim(self, w: WorkItem) -> _OwnClaim | ClaimHeld | ItemOutcome:
        """Our claim to generate with, who else holds it, or the item's outcome: SKIPPED when a
        success landed meanwhile, NOT_ATTEMPTED when the claim storage fails."""
        request = w.request
        ttl = self.settings.claim_ttl_s
        # Computed before the write, so the in-memory expiry is never later than the stored one.
        expires_at = self.claims.now() + ttl
        try:
            held, check = await asyncio.to_thread(self._take_and_recheck, request, ttl)
        except StorageError as err:
            # Without a claim another worker may be paying for this item right now; generating
            # anyway could buy it twice, and the item is not lost: a retry picks it up.
            return self._not_attempted(
                w,
                f"its claim could not be taken ({err}); not generated so it cannot be paid twice; "
                "a retry picks it up",
            )
        if held is not None:
            return held
        if check.conflict is not None and not self.settings.force:
            # another request's image landed under this id since the run started
            await asyncio.to_thread(self.claims.release, request.item_id, owner=self.run_key)
            return self._conflict(w, check.conflict)
        record = check.done
        if record is not None and self._landed_meanwhile(request, record):
            await asyncio.to_thread(self.claims.release, request.item_id, owner=self.run_key)
            return self._skipped(
                w,
                record,
                f"generated by another worker ({record.get('run_key')}) before this run got to it; "
                "not paid twice",
            )
        return _OwnClaim(request.item_id, expires_at)

    def _take_and_recheck(self, request: ImageRequest, ttl: float) -> tuple[ClaimHeld | None, ItemCheck]:
        """Take the claim and, when it is ours, read what is committed under the item's id.

        A claim is free again exactly when its holder has committed, so a success may have
        landed since the run started. One thread hop for both: at the start every item takes
        its claim at once, and a second hop would queue each item's re-check behind all the
        other items' claims, delaying the first calls by the whole burst.
        """
        held = self.claims.take(request.item_id, request.fingerprint(), owner=self.run_key, ttl_s=ttl)
        if held is not None:
            return held, ItemCheck()
        try:
            return None, self.store.check(request)
        except StorageError as err:
            log.info("item '%s': checking for another worker's result failed (%s)", request.item_id, err)
            return None, ItemCheck()

    async def _wait_for_holder(self, w: WorkItem, held: ClaimHeld, *, announce: bool) -> ItemOutcome | None:
        """Wait for the worker holding the item's claim; None when the claim is free to take again."""
        request = w.request
        item_id = request.item_id
        if announce:
            log.info(
                "item '%s': being generated by %s (claim until %s); waiting for its result instead of "
                "paying twice",
                item_id,
                held.owner,
                held.expires_iso,
            )
            self._incr("claim_waits")
        poll = self.settings.claim_poll_s
        deadline = self._wall_deadline(w)
        while True:
            give_up_at = deadline if deadline is not None else held.expires_at + poll
            now = self.claims.now()
            if now >= give_up_at:
                why = "its deadline passed" if deadline is not None else "its claim was not released"
                return self._not_attempted(
                    w,
                    f"{why} while {held.owner} was generating it (claim until {held.expires_iso}); "
                    "not generated here so it is not paid twice; a retry picks it up",
                )
            await asyncio.sleep(min(poll, give_up_at - now))
            record = await self._new_success(request)
            if record is not None:
                return self._skipped(
                    w,
                    record,
                    f"generated by another worker ({held.owner}) while this run waited; not paid twice",
                )
            try:
                current = await asyncio.to_thread(self.claims.holder, item_id)
            except StorageError as err:
                log.info("item '%s': reading its claim failed (%s); polling again", item_id, err)
                continue
            if current is None or current.owner == self.run_key or current.expires_at <= self.claims.now():
                return None
            held = current

    async def _new_success(self, request: ImageRequest) -> dict[str, Any] | None:
        """A success for the item committed by someone else since this run started, else None."""
        record = await self._done_record(request)
        return record if self._landed_meanwhile(request, record) else None

    def _landed_meanwhile(self, request: ImageRequest, record: Mapping[str, Any] | None) -> bool:
        # under force, the success we were told to replace does not count
        return record is not None and record != self._replaced.get(request.item_id)

    async def _done_record(self, request: ImageRequest) -> dict[str, Any] | None:
        """``done_record`` off the loop; a failed read is logged and means "nothing yet"."""
        try:
            return await asyncio.to_thread(self.store.done_record, request.item_id, request.fingerprint())
        except StorageError as err:
            log.info("item '%s': checking for another worker's result failed (%s)", request.item_id, err)
            return None

    def _skipped(self, w: WorkItem, record: Mapping[str, Any], reason: str) -> ItemOutcome:
        self._done += 1
        return skipped_outcome(w.request.item_id, w.request.image_size, record, reason)

    def _conflict(self, w: WorkItem, reason: str) -> ItemOutcome:
        """An item whose id holds another request's image: failed before any call, and no
        metadata written, since that record describes the image that stays."""
        request = w.request
        log.error("item '%s': %s", request.item_id, reason)
        self._done += 1
        self._incr("id_conflicts")
        return ItemOutcome(request.item_id, FAILED, request.image_size, reason=reason)

    def _claim_conflict(self, request: ImageRequest, held: ClaimHeld) -> str:
        """Another worker is generating a different request under this id right now."""
        return (
            f"id '{request.item_id}' is being generated right now by {held.owner} for a different "
            f"request (claim {self.store.claim_uri(request.item_id)}, request fingerprint "
            f"{held.fingerprint[:12]}; this request's is {request.fingerprint()[:12]}): not generated, "
            "nothing spent — an id names one image per output prefix; give the item its own id"
        )

    @staticmethod
    def _wall_deadline(w: WorkItem) -> float | None:
        """The item's hard deadline in epoch seconds; the router's default horizon is not one."""
        return None if w.deadline is None else w.deadline.timestamp()

    def _not_attempted(self, w: WorkItem, reason: str) -> ItemOutcome:
        """An item this run leaves to another worker (or a retry); no metadata is written for it.

        The other worker may be committing the item right now: a failure record written here
        could make its success commit lose, leaving its paid image without a record.
        """
        request = w.request
        outcome = ItemOutcome(request.item_id, NOT_ATTEMPTED, request.image_size, reason=reason)
        log.warning("item '%s': no image (%s)", request.item_id, outcome.reason)
        self._done += 1
        self._incr("items_failed")
        return outcome

    def _deadline_on_clock(self, deadline: datetime | None) -> float | None:
        if deadline is None:
            return None
        return self.clock.now() + (deadline.timestamp() - time.time())

    async def _generate(self, w: WorkItem, claim: _OwnClaim | None = None) -> ItemOutcome:
        request = w.request
        item = ItemProgress.for_request(request, deadline=self._deadline_on_clock(w.deadline))
        try:
            return await self._drive(w, item, claim)
        finally:
            self.router.forget(item)  # a cancelled item must not hold a queue place
            self._wakers.pop(item.item_id, None)
            self._wake(self.router.wakeups())

    async def _drive(self, w: WorkItem, item: ItemProgress, claim: _OwnClaim | None = None) -> ItemOutcome:
        request = w.request
        first_start: float | None = None
        while True:
            action = self.router.next_action(item)
            self._wake(self.router.wakeups())
            if isinstance(action, GiveUp):
                return await self._fail(w, item, action)
            if claim is not None:
                # Also before a wait: a deadline-aware item may queue for a cheap channel longer
                # than the TTL, and a claim lost before the first call is one paid twice.
                await self._renew_if_due(claim)
            if isinstance(action, Wait):
                # Woken only to renew the claim: the same wait goes on. Deciding again at every
                # renewal made a long queue cost a router decision per item per half TTL.
                while (
                    await self._wait(item.item_id, action, self._renewal_due_in(claim)) and claim is not None
                ):
                    await self._renew_if_due(claim)
                continue
            first_start = first_start if first_start is not None else self.clock.now()
            answer = await self._attempt(item, request, action)
            if answer is None:
                continue
            latency = self.clock.now() - first_start
            return await self._commit(w, item, *answer, latency)

    async def _renew_if_due(self, claim: _OwnClaim) -> None:
        """Extend our claim once less than half its TTL is left; no storage call before that."""
        ttl = self.settings.claim_ttl_s
        # ">": renewal is due at exactly half the TTL, the moment _renewal_due_in wakes us for
        if claim.lost or claim.expires_at - self.claims.now() > ttl / 2:
            return
        renewed = await asyncio.to_thread(self.claims.renew, claim.item_id, owner=self.run_key, ttl_s=ttl)
        if renewed is None:
            claim.lost = True  # logged by renew; trying again before every call would only repeat it
        else:
            claim.expires_at = renewed

    def _renewal_due_in(self, claim: _OwnClaim | None) -> float | None:
        """Seconds until ``claim`` needs renewing: a wait for a cheap channel may be far longer
        than the claim's TTL, and a claim lapsing during it could be taken and paid for twice."""
        if claim is None or claim.lost:
            return None
        return max(0.0, claim.expires_at - self.settings.claim_ttl_s / 2 - self.claims.now())

    async def _wait(self, item_id: str, action: Wait, at_most: float | None = None) -> bool:
        """Sleep until ``action.until``, a wake-up, or ``at_most`` seconds; True when only
        ``at_most`` ended it (the wait itself is not over and nothing woke the item)."""
        remaining = max(0.0, action.until - self.clock.now())
        delay = remaining if at_most is None else min(remaining, at_most)
        if delay <= 0:
            await asyncio.sleep(0)  # let the others run; then decide again
            return False
        event = self._wakers.setdefault(item_id, asyncio.Event())
        event.clear()
        if action.on_release:
            self._on_release.add(item_id)
        try:
            await asyncio.wait_for(event.wait(), timeout=delay)
        except TimeoutError:
            return delay < remaining
        finally:
            self._on_release.discard(item_id)
        return False

    def _wake(self, item_ids: Iterable[str]) -> None:
        for item_id in item_ids:
            event = self._wakers.get(item_id)
            if event is not None:
                event.set()

    async def _attempt(
        self, item: ItemProgress, request: ImageRequest, action: AttemptDecision
    ) -> tuple[GenerationResult, ImageInfo] | None:
        """One call; returns the result and its decoded image facts, or None after reporting the failure."""
        channel = self.channels[action.channel]
        if action.failover:
            self._incr("failovers")
        if action.alert_failovers:
            self._alert(action.channel)
        events: tuple[ChannelEvent, ...] = ()
        started = self.clock.now()
        try:
            result = await self._call(channel, item, request, action)
            info = await asyncio.to_thread(self._validate, request, result)
        except TimeoutError as err:
            if isinstance(err, _SilentCut):
                log.warning(
                    "item '%s': channel '%s' silent for %.1f s, as a hung channel is and a healthy one "
                    "almost never; abandoned before its timeout so a rescue still meets the deadline",
                    request.item_id,
                    action.channel,
                    self.clock.now() - started,
                )
            else:
                log.warning(
                    "item '%s': channel '%s' gave no answer within %.1f s; failing over",
                    request.item_id,
                    action.channel,
                    action.timeout_s,
                )
            events = self.router.report_timeout(item, action.permit)
            return None
        except ChannelError as err:
            if err.item_id:  # the error already names the item
                log.info("%s", err)
            else:
                log.info("item '%s': %s", request.item_id, err)
            events = self.router.report_failure(item, action.permit, err)
            self._incr(f"errors.{err.error_class.value}")
            return None
        except asyncio.CancelledError:
            self.router.report_cancelled(item, action.permit)
            raise
        finally:
            self._after_report(action.channel, events)
        events = self.router.report_success(
            item, action.permit, cost_usd=result.cost_usd, latency_s=result.latency_s
        )
        self._after_report(action.channel, events)
        self._spent += result.cost_usd
        return result, info

    async def _call(
        self, channel: Channel, item: ItemProgress, request: ImageRequest, action: AttemptDecision
    ) -> GenerationResult:
        """The channel's answer; TimeoutError at ``action.timeout_s``, ``_SilentCut`` earlier
        when the router judges the call hung while a rescue still fits (``silence_cut_at``)."""
        call = asyncio.ensure_future(channel.generate(request))
        ends = self.clock.now() + action.timeout_s
        # A call sent on the channel is more silence to judge by: wake the calls that wait on it.
        sent = self._sent.pop(action.channel, None)
        if sent is not None:
            sent.set()
        try:
            while True:
                now = self.clock.now()
                if now >= ends:
                    raise TimeoutError
                cut = self.router.silence_cut_at(item, action.permit, now)
                if cut is not None and cut <= now:
                    raise _SilentCut
                if cut is None:  # the timeout leaves time for a rescue: nothing to judge
                    await asyncio.wait({call}, timeout=ends - now)
                else:  # asked again at the cut (an answer may move it later) or at the next send
                    next_send = self._sent.setdefault(action.channel, asyncio.Event())
                    more = asyncio.ensure_future(next_send.wait())
                    try:
                        await asyncio.wait(
                            {call, more}, timeout=min(ends, cut) - now, return_when=asyncio.FIRST_COMPLETED
                        )
                    finally:
                        more.cancel()
                if call.done():
                    return call.result()
        finally:
            if not call.done():
                call.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await call

    def _validate(self, request: ImageRequest, result: GenerationResult) -> ImageInfo:
        """Never store what does not decode (FAULTS R8/R12); a wrong size is recorded, not fatal."""
        try:
            return inspect_image(result.image)
        except ImageValidationError as err:
            raise ChannelError(
                f"returned image is unusable ({err}); retrying",
                channel=result.channel,
                item_id=request.item_id,
                error_class=ErrorClass.RETRYABLE,
                reason="image does not decode",
                billed=result.cost_usd > 0,
            ) from err

    async def _commit(
        self, w: WorkItem, item: ItemProgress, result: GenerationResult, info: ImageInfo, latency: float
    ) -> ItemOutcome:
        request = w.request
        outcome = ItemOutcome(
            request.item_id,
            SUCCEEDED,
            request.image_size,
            attempts=[self._attempt_view(a, request.image_size) for a in item.attempts],
            channel=result.channel,
            model=result.model or None,
            cost_usd=item.cost_usd,
            latency_s=round(latency, 3),
            size_matches=(info.width, info.height)
            == expected_pixels(request.image_size, request.aspect_ratio),
            cost_source="reported by the channel" if result.cost_reported else "configured price",
        )
        if outcome.size_matches is False:
            log.warning(
                "item '%s': image is %dx%d, expected %s; stored and recorded as a size mismatch",
                request.item_id,
                info.width,
                info.height,
                expected_pixels(request.image_size, request.aspect_ratio),
            )
        image_uri, won = await asyncio.to_thread(
            self.store.commit_success,
            request,
            result,
            info,
            outcome,
            lane=self.settings.lane,
            run_key=self.run_key,
            item_metadata=w.item_metadata,
        )
        outcome.image_uri = image_uri
        if not won:
            outcome.reason = "another worker committed this item first; its image was kept"
        self._done += 1
        self._incr("images")
        self._timing("image_latency", latency)
        return outcome

    async def _fail(self, w: WorkItem, item: ItemProgress, action: GiveUp) -> ItemOutcome:
        request = w.request
        status = NOT_ATTEMPTED if not item.attempts else FAILED
        outcome = ItemOutcome(
            request.item_id,
            status,
            request.image_size,
            attempts=[self._attempt_view(a, request.image_size) for a in item.attempts],
            cost_usd=item.cost_usd,
            reason=f"{action.reason.value}: {action.detail}",
        )
        log.warning("item '%s': no image (%s)", request.item_id, outcome.reason)
        await asyncio.to_thread(
            self.store.commit_failure,
            request,
            outcome,
            lane=self.settings.lane,
            run_key=self.run_key,
            item_metadata=w.item_metadata,
        )
        self._done += 1
        self._incr("items_failed")
        return outcome

    # ------------------------------------------------------------------ observability
    def _after_report(self, channel: str, events: tuple[ChannelEvent, ...]) -> None:
        # a permit came back: items waiting on a release may go, and so may each queue's head
        self._wake([*self._on_release, *self.router.wakeups()])
        for event in events:
            self._incr(f"channel_events.{event.value}")
            # A channel leaving or rejoining the rotation is what a person reading the log needs
            # to explain cost and latency; per-call retry hints stay at INFO (they can be many).
            level = logging.INFO if event in _ROUTINE_EVENTS else logging.WARNING
            log.log(level, "channel '%s': %s; %s", channel, event.value, _EVENT_NEXT[event])

    def _breaker_openings(self) -> dict[str, int]:
        return {name: snap.openings for name, snap in self.router.states(self.clock.now()).items()}

    async def _progress_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.progress_interval_s)
            self._log_progress()

    def _log_progress(self, *, final: bool = False) -> None:
        try:
            now = self.clock.now()
            states = describe(self.router.states(now), now)
            elapsed = max(now - self._started, 1e-9)
            # Items found done at the start took no time: counting them would report thousands
            # per minute for a rerun that generated nothing.
            worked = self._done - self._skipped_at_start
            rate = worked / elapsed * 60
            left = self._total - self._done
            eta = f"{left / (rate / 60):.0f} s" if rate > 0 and left else "–"
            log.info(
                "%s %d/%d items done (%s), spent $%.4f, ETA %s, channels: %s",
                "finished:" if final else "progress:",
                self._done,
                self._total,
                f"{rate:.1f}/min" if worked else f"{self._skipped_at_start} already done",
                self._spent,
                eta,
                states,
            )
        except Exception:  # observability never fails the run
            log.exception("progress logging failed")

    def _alert(self, channel: str) -> None:
        count = self.router.failovers_in_window()
        log.warning("failover alert: %d failovers in the last hour (latest to channel '%s')", count, channel)
        callback = self.settings.on_failover_alert
        if callback is None:
            return
        try:
            callback({"failovers_last_hour": count, "channel": channel, "run_key": self.run_key})
        except Exception:
            log.exception("failover alert callback failed; the run goes on")

    def _incr(self, name: str) -> None:
        if self.metrics is None:
            return
        try:
            self.metrics.incr(f"banana.{name}")
        except Exception:
            log.debug("metrics incr failed", exc_info=True)

    def _timing(self, name: str, seconds: float) -> None:
        if self.metrics is None:
            return
        try:
            self.metrics.timing(f"banana.{name}", seconds)
        except Exception:
            log.debug("metrics timing failed", exc_info=True)
