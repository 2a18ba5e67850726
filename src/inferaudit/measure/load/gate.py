"""The slot gate of an open loop with ``max_concurrency``: at most ``n`` requests in flight.

A request due at ``due`` (its scheduled time, ``perf_counter_ns``) calls :meth:`SlotGate.acquire`
and gets back its *slot time*: when a slot became free for it. That is ``due`` itself when a slot
had been free since before it was due, else the instant the slot it takes was released (the end
of the request that held it), never earlier than ``due``. Waiters are served first come, first
served; a released slot goes straight to the longest waiter. Free slots are handed out in the
order they were freed, so the slot time is the earliest the request could have been sent.

The wait ``slot - due`` is the protocol's (the cap is part of the load pattern); the client's
own lag is measured from ``max(due, slot)`` (``Record.lag_ns``). Single event loop only.
"""

from __future__ import annotations

import asyncio
from collections import deque
from time import perf_counter_ns

__all__ = ["SlotGate"]


class SlotGate:
    """``n`` slots; :meth:`acquire` returns the slot time, :meth:`release` frees a slot."""

    def __init__(self, n: int) -> None:
        assert n >= 1, "a gate needs a slot"
        self._free: deque[int] = deque([0] * n)  # when each free slot was freed (0: from start)
        self._waiters: deque[asyncio.Future[int]] = deque()
        self.held = 0  # slots held now (at most n)

    async def acquire(self, due: int) -> int:
        """Wait for a slot; return when it became free for this request (>= ``due``)."""
        if self._free and not self._waiters:
            self.held += 1
            return max(due, self._free.popleft())
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            freed = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed a slot, then cancelled
                self.held += 1
                self.release()
            raise
        self.held += 1
        return max(due, freed)

    def release(self) -> None:
        """Free one slot now: the longest waiter gets it, else it waits for the next request."""
        assert self.held > 0, "release without acquire"
        self.held -= 1
        now = perf_counter_ns()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(now)
                return
        self._free.append(now)
