"""The one exception hierarchy of airflow_banana.

Every error says what happened, to which item or channel, and what happens next. Callers catch
the narrowest class they can act on; the router decides failover purely from ``ErrorClass``::

    BananaError
    ├── ConfigurationError            bad operator argument or connection; nothing was spent
    │   ├── InsecureBaseUrlError      plain http to a non-loopback host
    │   └── NoEligibleChannelError    an item's data policy / grounding fits no configured channel
    ├── ManifestError                 a manifest line or field is invalid (manifest, line, field)
    ├── ReferenceImageError           a reference image is missing / not an image / too large
    ├── StorageError                  reading or writing an object failed
    │   ├── ObjectNotFoundError
    │   └── PreconditionFailedError   another writer got there first (generation mismatch)
    ├── ChannelError                  one attempt on one channel failed; carries ErrorClass
    ├── ImageValidationError          the bytes are not a decodable image
    ├── BudgetExceededError           the task's USD budget would be exceeded
    ├── SignatureError                an edit history lacks a required thought signature
    ├── BatchJobError                 a batch job ended badly or cannot be reattached
    └── RoutingStateConflictError     workers raced too often for one channel's shared state
"""

from __future__ import annotations

import enum


class BananaError(Exception):
    """Base of every error raised by airflow_banana."""


class ConfigurationError(BananaError):
    """An operator argument or a channel connection is invalid. Nothing has been spent."""


class InsecureBaseUrlError(ConfigurationError):
    """A channel's base URL is plain http to a host that is not loopback."""


class NoEligibleChannelError(ConfigurationError):
    """Items whose ``data_policy`` or ``grounding`` no configured channel can serve; names them.

    Raised before any call, so nothing was spent on any item of the run.
    """

    def __init__(self, message: str, *, item_ids: tuple[str, ...]):
        super().__init__(message)
        self.item_ids = item_ids


class ManifestError(BananaError):
    """A manifest is invalid; names the manifest, the line (1-based) and the field."""

    def __init__(self, message: str, *, manifest: str, line: int | None = None, field: str | None = None):
        where = manifest if line is None else f"{manifest}:{line}"
        if field:
            where += f" field '{field}'"
        super().__init__(f"{where}: {message}")
        self.manifest = manifest
        self.line = line
        self.field = field
        self.reason = message


class ReferenceImageError(BananaError):
    """A reference image cannot be used; the item is rejected before any spend."""

    def __init__(self, message: str, *, item_id: str, uri: str):
        super().__init__(f"item '{item_id}': reference image {uri}: {message}")
        self.item_id = item_id
        self.uri = uri


class StorageError(BananaError):
    """Reading or writing an object failed."""


class ObjectNotFoundError(StorageError):
    """The object does not exist."""


class PreconditionFailedError(StorageError):
    """A create-only or generation-matched write lost the race to another writer."""


class ErrorClass(enum.StrEnum):
    """How the router treats a failed attempt."""

    RETRYABLE = "retryable"  # 5xx, 408, resets, malformed bodies: retry / fail over
    RATE_LIMITED = "rate_limited"  # 429: close the channel until the retry hint
    QUOTA_EXHAUSTED = "quota_exhausted"  # 429 with a per-day quota: bench until the daily reset
    TIMEOUT = "timeout"  # no answer within the attempt timeout: fail over at once
    NO_IMAGE = "no_image"  # 200 without an image: retry a bounded number of times
    CHANNEL_FATAL = "channel_fatal"  # 401/403/404: disable the channel for the run
    ITEM_TERMINAL = "item_terminal"  # 400, blocked prompt, IMAGE_SAFETY: same model everywhere


class ChannelError(BananaError):
    """One attempt on one channel failed.

    ``error_class`` drives the router; ``retry_after`` (seconds) is Google's ``RetryInfo`` hint;
    ``billed`` is True when the channel charges for failed calls (some relays do).
    """

    def __init__(
        self,
        message: str,
        *,
        channel: str,
        error_class: ErrorClass,
        item_id: str | None = None,
        status_code: int | None = None,
        retry_after: float | None = None,
        reason: str | None = None,
        billed: bool = False,
    ):
        subject = f"channel '{channel}'" + (f", item '{item_id}'" if item_id else "")
        super().__init__(f"{subject}: {message} [{error_class.value}]")
        self.channel = channel
        self.item_id = item_id
        self.error_class = error_class
        self.status_code = status_code
        self.retry_after = retry_after
        self.reason = reason or message
        self.billed = billed


class ImageValidationError(BananaError):
    """The returned bytes are not a decodable image."""


class BudgetExceededError(BananaError):
    """Spending more would exceed the task's USD budget."""


class SignatureError(BananaError):
    """A multi-turn history lacks a thought signature that Google requires."""


class BatchJobError(BananaError):
    """A batch job failed, expired, was cancelled, or cannot be reattached."""


class RoutingStateConflictError(BananaError):
    """Too many workers raced for one channel's shared state (Redis); the caller asks again later."""
