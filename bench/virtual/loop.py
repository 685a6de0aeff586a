"""An asyncio loop on virtual time: when nothing is ready, the clock jumps to the next timer.

Why not real time: the scenarios are hours of calls of 8-24 s each; on a virtual clock they run
as fast as the CPU executes the engine's and router's code, with every default left as shipped.
Why not the ``looptime`` package: it is a pytest plugin first, and the engine also reads
``time.time()`` (deadlines, claims) and hops to threads (``asyncio.to_thread``); here one object
owns all three, so a run is deterministic for its seed.

- ``VirtualLoop.time()`` is the virtual clock; ``_VirtualSelector.select(timeout)`` polls the real
  selector without blocking and, when nothing is ready, advances the clock by ``timeout`` (the
  delay to the earliest scheduled callback, as computed by asyncio itself).
- ``InlineExecutor`` runs ``to_thread`` work at once on the loop's thread: storage is in memory,
  and no thread may race the virtual clock.
- ``run_virtual`` patches ``time.time`` to the virtual wall clock for the run (the engine maps
  deadlines with it, LiteLLM's cooldowns read it) and cancels the run after a real-time cap.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import selectors
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_REAL_TIME = time.time  # the genuine function, kept before any patching


# Virtual time one turn of the loop costs (a turn of a real loop running the engine: 10-100 us).
TICK_S = 1e-6


class VirtualDeadlock(RuntimeError):
    """Nothing is ready and nothing is scheduled: in virtual time the run would wait forever."""


class RealTimeCapExceeded(RuntimeError):
    """The run used more real seconds than its cap; it was cancelled."""


class _VirtualSelector(selectors.BaseSelector):
    """Delegates registrations to a real selector; ``select`` never blocks, it moves the clock."""

    def __init__(self, loop_clock: VirtualClock) -> None:
        self._real = selectors.DefaultSelector()
        self._clock = loop_clock
        self.next_timer: Callable[[], float | None] = lambda: None
        self.has_ready: Callable[[], bool] = lambda: False
        self.on_tick: Callable[[], None] | None = None  # every loop iteration

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def get_map(self) -> Any:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if self.on_tick is not None:
            self.on_tick()
        events = self._real.select(0)
        if events or (timeout == 0 and self.has_ready()):
            # Real time never stands still: each turn of the loop costs a microsecond, so code
            # that polls "until the clock moves" (sleep(0) loops) ends here as it does for real.
            self._clock.advance_past(self._clock.now() + TICK_S - 1e-9)
            return events
        when = self.next_timer()
        if when is None:
            raise VirtualDeadlock("no callback is ready or scheduled: the run can never finish")
        # Jump just past the timer asyncio is waiting for (the loop's resolution is 0, so a timer
        # fires only once the clock is beyond it): ``now + timeout`` could land an ulp short, and
        # a caller told to wait "until t" would wake before t and be told to wait 1e-15 s again.
        self._clock.advance_past(when)
        return []


class VirtualClock:
    """Seconds since the run's start (``now``) and the matching epoch seconds (``wall``).

    It is the router's injected ``Clock`` and ``WallClock`` at once, so breakers, limiters,
    deadlines and the daily quota reset all read the same virtual time as the loop. Time is
    kept in whole nanoseconds and every advance moves it by at least one: like a real clock,
    it has moved on by the time anyone reads it again after waiting.
    """

    def __init__(self, wall_start: float) -> None:
        self.wall_start = wall_start
        self._ns = 0

    def now(self) -> float:
        return self._ns / 1e9

    def wall(self) -> float:
        return self.wall_start + self._ns / 1e9

    def advance_past(self, moment: float) -> None:
        """Move to a whole nanosecond beyond ``moment`` by at least 1 ns (and at least 1 ns on)."""
        ns = max(self._ns + 1, math.ceil(moment * 1e9) + 1)
        while ns / 1e9 <= moment:
            ns += 1
        self._ns = ns


class VirtualLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ``time()`` is a ``VirtualClock``."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.virtual_selector = _VirtualSelector(clock)
        super().__init__(self.virtual_selector)
        self.virtual_selector.next_timer = self._next_timer
        self.virtual_selector.has_ready = lambda: bool(self._ready)  # type: ignore[attr-defined]
        # a timer fires once the clock is past it, never "within the resolution" before it
        self._clock_resolution = 0.0
        self.set_default_executor(InlineExecutor())

    def time(self) -> float:
        return self.clock.now()

    def _next_timer(self) -> float | None:
        # asyncio pops cancelled timers off the heap's head before it computes the timeout
        scheduled = self._scheduled  # type: ignore[attr-defined]
        return scheduled[0].when() if scheduled else None


class InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    """Runs each submitted call immediately, on the caller's thread, and returns its done future.

    A ``ThreadPoolExecutor`` only because asyncio's ``set_default_executor`` insists on one; it
    never starts a thread.
    """

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # handed to the awaiting coroutine, as a thread pool would
            future.set_exception(err)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        return None


@contextlib.contextmanager
def virtual_wall_time(clock: VirtualClock) -> Iterator[None]:
    """``time.time()`` reads ``clock.wall()`` inside the block (modules that call ``time.time``)."""
    original = time.time
    time.time = clock.wall
    try:
        yield
    finally:
        time.time = original


def real_time() -> float:
    """Epoch seconds from the real clock, even inside ``virtual_wall_time``."""
    return _REAL_TIME()


def run_virtual(
    make: Callable[[VirtualClock], Coroutine[Any, Any, T]],
    *,
    wall_start: float,
    real_cap_s: float | None = None,
) -> T:
    """Run ``make(clock)`` to completion on a fresh virtual loop; raise ``RealTimeCapExceeded``
    (after cancelling the run, so its tasks unwind) when it takes more than ``real_cap_s``."""
    clock = VirtualClock(wall_start)
    loop = VirtualLoop(clock)
    started = time.perf_counter()
    capped = False
    task: asyncio.Task[T] | None = None

    def check_cap() -> None:
        nonlocal capped
        if real_cap_s is not None and not capped and time.perf_counter() - started > real_cap_s:
            capped = True
            if task is not None:
                task.cancel()

    loop.virtual_selector.on_tick = check_cap
    try:
        with virtual_wall_time(clock):
            task = loop.create_task(make(clock))
            try:
                result = loop.run_until_complete(task)
            except asyncio.CancelledError as err:
                if capped:
                    raise RealTimeCapExceeded(
                        f"cancelled after {real_cap_s:g} real seconds at virtual t={clock.now():.0f} s"
                    ) from err
                raise
            return result
    finally:
        with contextlib.suppress(Exception):
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                with virtual_wall_time(clock):
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()
