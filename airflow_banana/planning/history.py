"""The batch lane the planner sees, and the turnaround history it learns from.

``batch_lane`` builds the planner's ``BatchLane`` for a connection (or a bare backend name in
dry runs): batch list prices and a turnaround, fixed or estimated from what earlier jobs took
(``planning.turnaround``). That history is kept here:

* **Turnaround records**, one JSON line per finished batch job, at
  ``{output_prefix}/_banana/turnaround/{backend}.jsonl``. Appends are read-modify-write with a
  generation precondition (create-only for the first line), retried a few times, so two
  workers finishing jobs at once cannot lose a line. A job cancelled by a rescue is recorded as
  ``censored``: its true turnaround is *at least* the recorded duration. Censored durations are
  kept as samples because a lower bound pushes the percentile up, never down — dropping the
  jobs that were too slow would make the estimate optimistic exactly when it matters.

Only storage I/O happens here (never a billable call); time is always an argument.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from airflow_banana.channels.config import ChannelConfig
from airflow_banana.exceptions import ConfigurationError, PreconditionFailedError, StorageError
from airflow_banana.planning.planner import DEFAULT_CONFIDENCE, BatchLane
from airflow_banana.planning.turnaround import DEFAULT_MIN_SAMPLES, DEFAULT_TURNAROUND
from airflow_banana.pricing import LIST_PRICES
from airflow_banana.storage.objects import Storage, join_uri

_APPEND_ATTEMPTS = 8
BATCH_LANE_PREFIX = "batch:"
BATCH_BACKENDS: tuple[str, ...] = ("developer", "vertex")

_BACKEND_BY_PROTOCOL = {"gemini": "developer", "vertex": "vertex"}


def batch_backend_of(config: ChannelConfig) -> str:
    """The batch backend a connection submits to: ``vertex`` or ``developer`` (Gemini Developer API)."""
    backend = _BACKEND_BY_PROTOCOL.get(config.protocol)
    if backend is None:
        raise ConfigurationError(
            f"channel '{config.name}': protocol {config.protocol!r} has no batch API; "
            "use a gemini (Developer) or vertex connection for the batch lane"
        )
    return backend


def batch_backend_for_protocol(protocol: str) -> str:
    """The turnaround-history backend name of a batch job record's protocol (``gemini`` → ``developer``).

    A name that is already a backend passes through, so records written either way agree.
    """
    if protocol in BATCH_BACKENDS:
        return protocol
    backend = _BACKEND_BY_PROTOCOL.get(protocol)
    if backend is None:
        raise ConfigurationError(
            f"batch job protocol {protocol!r} has no batch turnaround history; expected one of "
            f"{sorted(_BACKEND_BY_PROTOCOL)}"
        )
    return backend


def batch_lane_name(config: ChannelConfig) -> str:
    """Planner lane name for batch through this connection; differs from its realtime name."""
    return BATCH_LANE_PREFIX + config.name


def turnaround_uri(output_prefix: str, backend: str) -> str:
    if not backend or "/" in backend or backend.startswith("."):
        raise ConfigurationError(f"batch turnaround: backend name {backend!r} cannot name an object")
    return join_uri(output_prefix, "_banana", "turnaround", f"{backend}.jsonl")


@dataclass(frozen=True)
class TurnaroundRecord:
    """One finished batch job: how long from submission to its end, and how it ended."""

    backend: str
    job: str
    submitted_at: datetime
    ended_at: datetime
    items: int
    final_state: str
    censored: bool = False  # cancelled before finishing (rescued): the true turnaround is longer

    @property
    def duration_s(self) -> float:
        return (self.ended_at - self.submitted_at).total_seconds()

    def to_json(self) -> str:
        return json.dumps(
            {
                "backend": self.backend,
                "job": self.job,
                "submitted_at": self.submitted_at.isoformat(),
                "ended_at": self.ended_at.isoformat(),
                "duration_s": round(self.duration_s, 3),
                "items": self.items,
                "final_state": self.final_state,
                "censored": self.censored,
            },
            sort_keys=True,
        )


def record_turnaround(storage: Storage, output_prefix: str, record: TurnaroundRecord) -> str:
    """Append ``record`` to the backend's turnaround history; returns the history's URI.

    Safe against concurrent appenders (generation preconditions, bounded retries); a job
    recorded twice (a retried task) is not appended again.
    """
    if record.ended_at < record.submitted_at:
        raise ConfigurationError(
            f"batch turnaround for job {record.job}: ended_at is before submitted_at; not recorded"
        )
    uri = turnaround_uri(output_prefix, record.backend)
    line = record.to_json() + "\n"
    for _ in range(_APPEND_ATTEMPTS):
        stat = storage.stat(uri)
        try:
            if stat is None:
                storage.write_text(uri, line, content_type="application/x-ndjson", if_absent=True)
                return uri
            data, generation = storage.read_with_generation(uri)
            text = data.decode("utf-8")
            if any(_job_of(existing) == record.job for existing in text.splitlines()):
                return uri  # already recorded by an earlier try of the same task
            if text and not text.endswith("\n"):
                text += "\n"
            storage.write_text(
                uri, text + line, content_type="application/x-ndjson", if_generation_match=generation
            )
            return uri
        except PreconditionFailedError:
            continue  # another job's record landed first: re-read and append again
    raise StorageError(
        f"batch turnaround for job {record.job}: {uri} kept changing during {_APPEND_ATTEMPTS} append "
        "attempts; the record was not written (planning falls back to the default estimate)"
    )


def _job_of(line: str) -> str | None:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None
    return str(obj.get("job")) if isinstance(obj, dict) and obj.get("job") is not None else None


def read_turnarounds(storage: Storage, output_prefix: str, backend: str) -> list[float]:
    """Recorded durations (seconds, oldest first) for ``backend``; [] when there is no history.

    Corrupt lines become NaN, which ``estimate_turnaround`` counts as ignored rather than failing.
    """
    uri = turnaround_uri(output_prefix, backend)
    if storage.stat(uri) is None:
        return []
    out: list[float] = []
    for line in storage.iter_lines(uri):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            out.append(float(obj["duration_s"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            out.append(math.nan)
    return out


def batch_lane(
    target: ChannelConfig | str,
    *,
    storage: Storage | None = None,
    output_prefix: str | None = None,
    turnaround: timedelta | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    default: timedelta = DEFAULT_TURNAROUND,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    prices: Mapping[str, float] | None = None,
) -> BatchLane:
    """The planner's batch lane: batch list prices, turnaround at ``confidence``.

    ``target`` is the connection the batch lane submits through, or just a backend name
    (``developer`` / ``vertex``) for dry runs without connections. ``turnaround`` fixes the
    estimate (CLI ``--batch-turnaround``); otherwise it is the percentile of the backend's
    recorded history under ``output_prefix`` (the 24 h default while there are too few jobs).
    """
    if isinstance(target, ChannelConfig):
        backend, name = batch_backend_of(target), batch_lane_name(target)
    else:
        if target not in BATCH_BACKENDS:
            raise ConfigurationError(f"batch backend must be one of {BATCH_BACKENDS}, got {target!r}")
        backend, name = target, BATCH_LANE_PREFIX + target
    table = dict(prices if prices is not None else LIST_PRICES["batch"])
    if turnaround is not None:
        if turnaround <= timedelta(0):
            raise ConfigurationError(f"batch lane '{name}': turnaround must be positive, got {turnaround}")
        return BatchLane(name=name, price_by_size=table, turnaround=turnaround)
    history = read_turnarounds(storage, output_prefix, backend) if storage and output_prefix else []
    return BatchLane.from_history(
        name, table, history, confidence=confidence, min_samples=min_samples, default=default
    )
