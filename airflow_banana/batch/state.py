"""The batch job's identity and its state record in storage: what makes the batch lane retry-safe.

A batch job is paid for when it is created, and creation is not idempotent, so the record of a
job must exist before the job does (FAULTS.md B1). One JSON object per task instance, at
``{output_prefix}/runs/{run_key}/batch_job.json``, moves through::

    intent     written create-only BEFORE submitting (or generation-matched over a finished round)
    submitted  written generation-matched AFTER the job exists; carries the job name
    harvested  the job ended and its results were stored

``run_key`` comes from dag_id, task_id, run_id and map_index (never try_number) and the record
carries the fingerprint of the manifest's requests, so an Airflow retry finds the same record and
reattaches. A crash between submit and ``submitted`` leaves an intent: the job then carries the
record's ``display_name`` (identity hash + round), so it is found with ``batches.list`` and
adopted instead of submitting twice. A new round (after a harvested job, for the items still
missing, or after a fingerprint change) has a new display name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from airflow_banana.exceptions import BatchJobError, PreconditionFailedError
from airflow_banana.identity import RunIdentity
from airflow_banana.storage.objects import Storage, join_uri, utcnow_iso

STATE_FILE = "batch_job.json"
RECORD_VERSION = 1
INTENT = "intent"
SUBMITTED = "submitted"
HARVESTED = "harvested"
DISPLAY_PREFIX = "banana-"
_DISPLAY_NAME_MAX = 128  # Vertex's limit; the Developer API allows more


def job_key(identity: RunIdentity, fingerprint: str) -> str:
    """A short stable hash of (task instance identity, request set)."""
    body = f"{identity.run_key}|{fingerprint}"
    return hashlib.sha256(body.encode()).hexdigest()[:20]


def display_name_for(identity: RunIdentity, fingerprint: str, round_no: int) -> str:
    """The job's display name: machine-matchable head (``banana-<key>-r<round>``), then the run key."""
    head = f"{DISPLAY_PREFIX}{job_key(identity, fingerprint)}-r{round_no}"
    return f"{head} {identity.run_key}"[:_DISPLAY_NAME_MAX]


def display_name_head(display_name: str) -> str:
    return display_name.split(" ", 1)[0]


@dataclass(frozen=True)
class BatchJobRecord:
    """One round of a task instance's batch job, as stored in ``batch_job.json``."""

    run_key: str
    identity: dict[str, str]
    fingerprint: str
    backend: str  # "gemini" | "vertex"
    channel: str  # the banana connection id (never its key)
    display_name: str
    round: int = 1
    status: str = INTENT
    job_name: str | None = None
    item_ids: list[str] = field(default_factory=list)
    input_uri: str | None = None  # Files API name or gs:// JSONL
    dest_uri: str | None = None  # Vertex output prefix
    final_state: str | None = None
    created_at: str = field(default_factory=utcnow_iso)
    submitted_at: str | None = None
    harvested_at: str | None = None
    version: int = RECORD_VERSION

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchJobRecord:
        known = {f for f in cls.__dataclass_fields__}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as err:
            raise BatchJobError(
                f"batch job record is not readable ({err}); delete it or rerun with force"
            ) from err


class JobStateStore:
    """Reads and writes one task instance's ``batch_job.json`` with generation preconditions."""

    def __init__(self, storage: Storage, output_prefix: str, run_key: str):
        self.storage = storage
        self.uri = join_uri(output_prefix.rstrip("/"), "runs", run_key, STATE_FILE)
        self._generation: int | None = None

    def load(self) -> BatchJobRecord | None:
        """The stored record (remembering its generation for the next write), or None."""
        stat = self.storage.stat(self.uri)
        if stat is None:
            self._generation = None
            return None
        data, generation = self.storage.read_with_generation(self.uri)
        self._generation = generation
        import json

        try:
            return BatchJobRecord.from_dict(json.loads(data.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BatchJobError(
                f"{self.uri} is not valid JSON; refusing to guess whether a job was submitted — "
                "inspect it, then delete it to start fresh"
            ) from err

    def _write(self, record: BatchJobRecord, *, create: bool) -> BatchJobRecord:
        try:
            if create:
                generation = self.storage.write_json(self.uri, record.as_dict(), if_absent=True)
            else:
                if self._generation is None:
                    raise BatchJobError(
                        f"{self.uri}: no generation known; load() the record before updating it"
                    )
                generation = self.storage.write_json(
                    self.uri, record.as_dict(), if_generation_match=self._generation
                )
        except PreconditionFailedError as err:
            raise BatchJobError(
                f"{self.uri} was changed by another worker while this one wrote '{record.status}' for "
                f"run {record.run_key}; nothing more is submitted here — a retry reattaches to the stored job"
            ) from err
        self._generation = generation
        return record

    def require(self, job_name: str, *, what: str) -> BatchJobRecord:
        """The stored record, which must name ``job_name`` (the job the wait was for)."""
        record = self.load()
        if record is None or not job_name or record.job_name != job_name:
            raise BatchJobError(
                f"{what}: the job record at {self.uri} does not name job {job_name or None}; it was "
                "changed under this task — a retry reattaches to whatever it names now"
            )
        return record

    def write_intent(self, record: BatchJobRecord, *, replace_existing: bool) -> BatchJobRecord:
        """The intent, before paying: create-only, or over the exact generation we loaded."""
        return self._write(replace(record, status=INTENT, job_name=None), create=not replace_existing)

    def mark_submitted(self, record: BatchJobRecord, job_name: str, **changes: Any) -> BatchJobRecord:
        return self._write(
            replace(record, status=SUBMITTED, job_name=job_name, submitted_at=utcnow_iso(), **changes),
            create=False,
        )

    def mark_harvested(self, record: BatchJobRecord, final_state: str) -> BatchJobRecord:
        return self._write(
            replace(record, status=HARVESTED, final_state=final_state, harvested_at=utcnow_iso()),
            create=False,
        )
