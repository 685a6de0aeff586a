"""Serve in the foreground until Ctrl-C or SIGTERM, then return so ``with`` blocks clean up.

Python's default SIGTERM handling kills the process without unwinding: a helper started under a
process manager (or ``kill``) would leave its children (fake-gcs-server) running and its port
taken. The simulator CLI and the GCS emulator helper both wait here.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable


def wait_for_stop(on_ready: Callable[[], None] = lambda: None) -> int:
    """Call ``on_ready`` (print the address) once the handlers are in place, then block until
    SIGINT or SIGTERM; returns the signal number (main thread only). Whoever reads the address
    may signal at once: before the handlers, that signal would kill us without cleanup."""
    stop = threading.Event()
    received: list[int] = []

    def _on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    on_ready()
    stop.wait()
    return received[0]
