"""The simulator's billing ledger: every request, and every generation Google would charge for.

Tests prove "nothing lost, nothing paid twice" from it: a billable entry carries the request
fingerprint computed exactly as ``airflow_banana.models.ImageRequest.fingerprint()``. Entries name
a key only by its key id (a profile name or a short hash), never the key itself. Batch job
creations are recorded too (``jobs``), so a test can prove that a retried task made ONE paid job.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class Ledger:
    """Thread-safe, append-only (until ``clear``) record of requests and billable generations."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []
        self._billable: list[dict[str, Any]] = []
        self._jobs: list[dict[str, Any]] = []

    def record_request(
        self,
        *,
        key_id: str,
        method: str,
        path: str,
        status: int,
        latency_ms: float,
        fault: str | None,
        fingerprint: str | None = None,
        tools: list[str] | None = None,
    ) -> None:
        """One HTTP request; a generation request also names its request ``fingerprint`` and the
        ``tools`` it carried (``["googleSearch"]``), whatever the answer was."""
        entry = {
            "ts": self._clock(),
            "key_id": key_id,
            "method": method,
            "path": path,
            "status": status,
            "latency_ms": round(latency_ms, 3),
            "fault": fault,
            "fingerprint": fingerprint,
            "tools": list(tools or []),
        }
        with self._lock:
            self._requests.append(entry)

    def record_billable(
        self,
        *,
        key_id: str,
        path: str,
        model: str,
        image_size: str,
        aspect_ratio: str,
        fingerprint: str,
        price_lane: str = "realtime",
        turns: int = 1,
        image_sha256: str = "",
        response_id: str = "",
    ) -> None:
        entry = {
            "ts": self._clock(),
            "key_id": key_id,
            "path": path,
            "model": model,
            "image_size": image_size,
            "aspect_ratio": aspect_ratio,
            "price_lane": price_lane,
            "fingerprint": fingerprint,
            "turns": turns,
            "image_sha256": image_sha256,
            "response_id": response_id,
        }
        with self._lock:
            self._billable.append(entry)

    def record_job(
        self,
        *,
        key_id: str,
        surface: str,
        name: str,
        display_name: str,
        labels: dict[str, str],
        request_count: int,
        model: str,
        source: str,
    ) -> None:
        """A batch job was created (creation is not idempotent on Google's side either)."""
        entry = {
            "ts": self._clock(),
            "key_id": key_id,
            "surface": surface,
            "name": name,
            "display_name": display_name,
            "labels": dict(labels),
            "request_count": request_count,
            "model": model,
            "source": source,
        }
        with self._lock:
            self._jobs.append(entry)

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        with self._lock:
            return {
                "requests": [dict(e) for e in self._requests],
                "billable": [dict(e) for e in self._billable],
                "jobs": [dict(e) for e in self._jobs],
            }

    def jobs(self, key_id: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self._jobs if key_id is None or e["key_id"] == key_id]

    def billable(self, key_id: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self._billable if key_id is None or e["key_id"] == key_id]

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._billable.clear()
            self._jobs.clear()
