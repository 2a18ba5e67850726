"""Waking a worker's loop when a request is due, without a busy wait.

uvloop's timers have millisecond resolution: ``asyncio.sleep`` of less than half a millisecond
returns on the loop's next pass, and one of 0.6 ms wakes after about 1.1 ms. Sleeping in a
loop until a request is due therefore spun the loop for the last half millisecond before each
send (measured: ~125 CPU µs a send, the whole core while idle, taken from the server and the
other workers on a small machine) and woke late by up to half a millisecond for gaps of 0.5 to
1.5 ms. :class:`Alarm` sleeps on the loop's timer to 1.5 ms before the instant (that timer
wakes up to 0.6 ms late, so 0.9 ms before at the latest), then arms ``SIGALRM``
(``setitimer``, microseconds) for the rest, and the loop wakes on the signal.
Measured against Poisson gaps of 0.4-3 ms on an idle machine: 40-100 CPU µs a send against
124-130, lateness p50 46-71 µs and p99 114-204 µs against 3-127 and 575-687 (``bench`` note in
the README). It never wakes early: it waits again while the instant is ahead.

Where a signal handler cannot be set (not the main thread, or a loop without signals) it
waits as before, on the loop's timer.
"""

from __future__ import annotations

import asyncio
import signal
from time import perf_counter_ns

__all__ = ["Alarm"]

_NS = 1_000_000_000
_COARSE_NS = 1_500_000  # further off than this: the loop's timer first, to 1.5 ms before


class Alarm:
    """Sleeps of a loop until a ``perf_counter_ns`` instant (one sleeper at a time)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiter: asyncio.Future[None] | None = None
        try:
            loop.add_signal_handler(signal.SIGALRM, self._ring)
            self.armed = True
        except (ValueError, RuntimeError, NotImplementedError):
            self.armed = False

    def _ring(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def until(self, due_ns: int) -> None:
        """Return at ``due_ns`` or soon after, never before."""
        if not self.armed:  # the loop's timer: spins for the last half millisecond
            while (delay := due_ns - perf_counter_ns()) > 0:
                await asyncio.sleep(delay / _NS)
            return
        if (delay := due_ns - perf_counter_ns()) > _COARSE_NS:
            await asyncio.sleep((delay - _COARSE_NS) / _NS)  # wakes 0.9 ms early at the least
        while (delay := due_ns - perf_counter_ns()) > 0:
            self._waiter = self._loop.create_future()
            signal.setitimer(signal.ITIMER_REAL, delay / _NS)
            try:
                await self._waiter
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                self._waiter = None

    def close(self) -> None:
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._loop.remove_signal_handler(signal.SIGALRM)
            self.armed = False
