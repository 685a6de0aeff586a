"""Run identity: which task instance a piece of work belongs to, stable across Airflow retries.

Retry safety hangs on this key: dag_id, task_id, run_id and map_index — never try_number, which
changes on every retry — plus a fingerprint of the inputs. XCom is cleared on retry, so recovery
state lives in storage under this key.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")


@dataclass(frozen=True)
class RunIdentity:
    dag_id: str
    task_id: str
    run_id: str
    map_index: int = -1

    @classmethod
    def from_context(cls, context: Mapping[str, Any]) -> RunIdentity:
        ti = context["ti"]
        run_id = context.get("run_id") or ti.run_id
        map_index = getattr(ti, "map_index", -1)
        return cls(ti.dag_id, ti.task_id, str(run_id), -1 if map_index is None else int(map_index))

    @property
    def run_key(self) -> str:
        """A storage-safe, human-readable key: ``dag__task__run[__mN]``."""
        parts = [self.dag_id, self.task_id, self.run_id]
        if self.map_index >= 0:
            parts.append(f"m{self.map_index}")
        return "__".join(_UNSAFE.sub("_", p) for p in parts)

    def labels(self) -> dict[str, str]:
        """The identity as string labels (for remote jobs' labels/display names)."""
        return {
            "dag_id": self.dag_id,
            "task_id": self.task_id,
            "run_id": self.run_id,
            "map_index": str(self.map_index),
        }


def fingerprint_of(fingerprints: Iterable[str]) -> str:
    """One hash over a set of request fingerprints (order-independent)."""
    body = json.dumps(sorted(fingerprints), separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()
