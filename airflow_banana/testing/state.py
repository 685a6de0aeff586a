"""The shared state of one running simulator, handed to every route module.

Route modules (generate, OpenAI-compatible, and later batch/files) get this one object so that
faults, quotas, the ledger and the signature secret are the same whichever endpoint is called.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from airflow_banana.testing.config import SimulatorConfig
from airflow_banana.testing.faults import FaultEngine
from airflow_banana.testing.ledger import Ledger
from airflow_banana.testing.signatures import SignatureIssuer


@dataclass
class SimulatorState:
    config: SimulatorConfig
    clock: Callable[[], float] = time.monotonic
    faults: FaultEngine = field(init=False)
    ledger: Ledger = field(init=False)
    signer: SignatureIssuer = field(init=False)
    # Free-form room for route modules added later (batch jobs, uploaded files...).
    extras: dict[str, Any] = field(default_factory=dict)
    # Called by ``reset`` so route modules can drop their own state (batch jobs, uploaded files).
    reset_hooks: list[Callable[[], None]] = field(default_factory=list)
    stopping: bool = False

    def __post_init__(self) -> None:
        self.faults = FaultEngine(self.config, self.clock)
        self.ledger = Ledger()
        self.signer = SignatureIssuer(self.config.signature_secret)

    def key_id(self, key: str) -> str:
        return self.faults.key_id(key)

    def reset(self, *, faults: bool = False) -> None:
        """Clear the ledger, quotas and outage clocks; with ``faults`` restore start-up profiles.

        Route modules' reset hooks run first, so nothing they do afterwards lands in the ledger.
        """
        for hook in self.reset_hooks:
            hook()
        self.ledger.clear()
        self.faults.reset(faults=faults)
