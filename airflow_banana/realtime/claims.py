"""Item claims: one worker generates an item at a time, so nobody pays twice for one image.

The commit protocol in ``storage.outputs`` stops two workers from both *writing* an item, but by then
both have already paid the model. Tasks whose manifests overlap (a backfill next to the
scheduled run, two mapped shards sharing an id, a re-trigger while the first run still goes)
would each see "not done" and each call a channel. A claim is taken *before* the first call:

    {prefix}/claims/{id}.json   {"owner", "request_fingerprint", "claimed_at", "expires_at", ...}

It is written create-only, so exactly one worker gets it; the others wait for that worker's
result instead of buying their own. A claim is a lease, not a lock: it expires after a TTL, so a
worker that died mid-item holds it up for at most that long. The owner is the task instance's
run key, which survives Airflow retries, so a retry re-takes its own dead attempt's claims at
once instead of waiting them out. Replacing a claim (ours, or an expired one) is conditioned on
the generation just read: of two workers taking over the same expired claim, one wins.

Times are epoch seconds from ``now`` (shared across workers, unlike a monotonic clock), plus
ISO copies for people reading the bucket. A claim holds no secret: an owner is a run key.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from airflow_banana.exceptions import ObjectNotFoundError, PreconditionFailedError, StorageError
from airflow_banana.storage.outputs import OutputStore

log = logging.getLogger(__name__)

# Longer than any item takes (attempt timeouts + backoff + queueing), or a slow item's claim
# expires under it and another run buys the image too.
DEFAULT_TTL_S = 900.0

# A take loops only while the claim vanishes between our failed create and our read (its holder
# released it meanwhile); more than a few rounds means something keeps deleting it.
_TAKE_ROUNDS = 5


def iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ClaimHeld:
    """Another worker holds the item's claim: who, and until when (epoch seconds)."""

    owner: str
    expires_at: float
    # What the holder is generating: another request under the same id is a conflict, not a wait.
    fingerprint: str = field(default="", compare=False)

    @property
    def expires_iso(self) -> str:
        return iso(self.expires_at)


@dataclass(frozen=True)
class _Claim:
    owner: str
    expires_at: float
    generation: int
    record: dict[str, Any]

    def held(self) -> ClaimHeld:
        return ClaimHeld(self.owner, self.expires_at, str(self.record.get("request_fingerprint") or ""))


class ItemClaims:
    """Take, renew and release item claims under an ``OutputStore``'s prefix.

    Synchronous (storage calls block); the realtime engine calls it through ``asyncio.to_thread``.
    ``now`` returns epoch seconds; tests inject a fake one instead of sleeping.
    """

    def __init__(self, store: OutputStore, *, now: Callable[[], float] = time.time):
        self.store = store
        self.storage = store.storage
        self.now = now

    # ------------------------------------------------------------------ operations
    def take(self, item_id: str, fingerprint: str, *, owner: str, ttl_s: float) -> ClaimHeld | None:
        """Claim ``item_id`` for ``owner``: None when we hold it now, else who holds it.

        Our own claim (a retry of the same task instance) and an expired one are replaced at
        once; a live claim of another owner is left alone. Raises :class:`StorageError` when
        the claim cannot be read or written (the caller must then not generate the item).
        """
        uri = self.store.claim_uri(item_id)
        for _ in range(_TAKE_ROUNDS):
            now = self.now()
            record = self._record(owner, fingerprint, claimed_at=now, expires_at=now + ttl_s)
            try:
                self.storage.write_json(uri, record, if_absent=True)
                return None
            except PreconditionFailedError:
                pass
            current = self._read(uri)
            if current is None:
                continue  # released between our create and our read: try to create again
            if current.owner != owner and current.expires_at > now:
                return current.held()
            if current.owner != owner:
                log.info(
                    "item '%s': claim of %s expired at %s; taking it over",
                    item_id,
                    current.owner,
                    iso(current.expires_at),
                )
            try:
                self.storage.write_json(uri, record, if_generation_match=current.generation)
                return None
            except PreconditionFailedError:
                # Another worker replaced it first (it took over the same expired claim).
                after = self._read(uri)
                if after is None:
                    continue
                return after.held()
        raise StorageError(
            f"item '{item_id}': its claim {uri} kept disappearing while being taken "
            f"({_TAKE_ROUNDS} rounds); the item is not generated in this run so it cannot be paid "
            "twice, a retry picks it up"
        )

    def holder(self, item_id: str) -> ClaimHeld | None:
        """Who holds the item's claim as stored (expired or not), or None when there is none."""
        current = self._read(self.store.claim_uri(item_id))
        return None if current is None else current.held()

    def renew(self, item_id: str, *, owner: str, ttl_s: float) -> float | None:
        """Extend our claim to now + ``ttl_s``; the new expiry, or None when it was not renewed.

        Never raises: a claim that is no longer ours (another worker took it over after ours
        expired) or a storage error is logged, and the item goes on; both workers may then pay,
        which is what the TTL must be long enough to prevent.
        """
        uri = self.store.claim_uri(item_id)
        try:
            current = self._read(uri)
            if current is None or current.owner != owner:
                self._lost(item_id, current)
                return None
            now = self.now()
            record = dict(current.record)
            record.update(expires_at=now + ttl_s, expires_at_iso=iso(now + ttl_s), renewed_at=now)
            self.storage.write_json(uri, record, if_generation_match=current.generation)
            return now + ttl_s
        except PreconditionFailedError:
            try:
                self._lost(item_id, self._read(uri))
            except StorageError:
                self._lost(item_id, None)
            return None
        except StorageError as err:
            log.warning(
                "item '%s': renewing its claim failed (%s); going on, the claim may expire early",
                item_id,
                err,
            )
            return None

    def release(self, item_id: str, *, owner: str) -> None:
        """Delete the item's claim if it is still ours; best effort, never raises.

        An expired claim of ours is left alone: another worker may be taking it over right now,
        and deleting theirs would let a third one in. It costs nothing, being expired.
        """
        uri = self.store.claim_uri(item_id)
        try:
            current = self._read(uri)
            if current is None or current.owner != owner or current.expires_at <= self.now():
                return
            self.storage.delete(uri)
        except ObjectNotFoundError:
            return
        except StorageError as err:
            log.warning(
                "item '%s': releasing its claim failed (%s); it expires on its own, other workers "
                "wait for it until then",
                item_id,
                err,
            )

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _record(owner: str, fingerprint: str, *, claimed_at: float, expires_at: float) -> dict[str, Any]:
        return {
            "owner": owner,
            "request_fingerprint": fingerprint,
            "claimed_at": claimed_at,
            "claimed_at_iso": iso(claimed_at),
            "expires_at": expires_at,
            "expires_at_iso": iso(expires_at),
        }

    def _read(self, uri: str) -> _Claim | None:
        try:
            data, generation = self.storage.read_with_generation(uri)
        except ObjectNotFoundError:
            return None
        try:
            record = json.loads(data)
            return _Claim(str(record["owner"]), float(record["expires_at"]), generation, dict(record))
        except (ValueError, KeyError, TypeError):
            # Writes are atomic, so this is not half a claim; whatever it is, treating it as
            # expired lets a worker replace it (generation-matched) instead of waiting forever.
            log.warning("%s is not a valid claim; treating it as expired", uri)
            return _Claim("", 0.0, generation, {})

    def _lost(self, item_id: str, current: _Claim | None) -> None:
        who = "nobody holds it now" if current is None else f"{current.owner or 'unknown'} holds it now"
        log.warning(
            "item '%s': its claim is no longer ours (%s; ours expired and was taken over or removed); "
            "going on with this attempt",
            item_id,
            who,
        )
