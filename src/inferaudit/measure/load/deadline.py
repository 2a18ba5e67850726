"""The timeouts of one request, and the way the client cuts a request off and still records it.

A :class:`Watch` is armed when a request is sent and closed when it ends. It enforces, on one
timer that is re-armed rarely (never per read):

  timeout             ``load.timeout_s`` from the *scheduled* send to the last byte;
  first_byte_timeout  no byte of the response body within ``load.first_byte_timeout_s`` of the
                      actual send (headers alone do not count; SSE comments do);
  stall_timeout       no byte for ``load.stall_timeout_s`` after the last one.

The read loop only stores the time of each read in ``Watch.last``. The timer fires at the
earliest date that could expire and, when nothing has expired, re-arms for the next such date
(at most one firing per ``stall_timeout_s`` while reads keep coming).

:meth:`Watch.expire` ends the request from outside (the end rule of a run, a stop, a signal):
the request's task is cancelled and ``execute`` turns that cancellation into a record with the
error class it was given (``cancelled``) and every time stamp it had so far. A cancellation that
did not come through :meth:`Watch.expire` propagates as usual.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import MutableSet
from dataclasses import dataclass
from time import perf_counter_ns

__all__ = ["Timeouts", "Watch"]

_NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Timeouts:
    """A request's three limits in seconds (``total_s`` may be infinite: no total limit)."""

    total_s: float = 600.0
    first_byte_s: float = 60.0
    stall_s: float = 30.0


class Watch:
    """The timer of one in-flight request (see the module docstring)."""

    __slots__ = (
        "_end",
        "_first_by",
        "_handle",
        "_inflight",
        "_loop",
        "_stall_ns",
        "_task",
        "expired",
        "last",
        "message",
        "timeouts",
    )

    def __init__(
        self,
        timeouts: Timeouts,
        scheduled_ns: int,
        sent_ns: int,
        inflight: MutableSet[Watch] | None = None,
    ) -> None:
        task = asyncio.current_task()
        assert task is not None, "a Watch belongs to the task of its request"
        self._task = task
        self._loop = asyncio.get_running_loop()
        self.timeouts = timeouts
        total = timeouts.total_s
        self._end = scheduled_ns + int(total * _NS) if math.isfinite(total) else None
        self._first_by = sent_ns + int(timeouts.first_byte_s * _NS)
        self._stall_ns = int(timeouts.stall_s * _NS)
        self.last: int | None = None  # perf_counter_ns of the latest body read
        self.expired: str | None = None  # the error class it ended with
        self.message: str | None = None
        self._inflight = inflight
        if inflight is not None:
            inflight.add(self)
        self._handle: asyncio.TimerHandle | None = None
        self._arm(sent_ns)

    def _arm(self, now: int) -> None:
        if self.last is None:  # wake by stall_s from now too, so a first read's stall is seen
            due = min(self._first_by, now + self._stall_ns)
        else:
            due = self.last + self._stall_ns
        if self._end is not None:
            due = min(due, self._end)
        self._handle = self._loop.call_later(max(0, due - now) / _NS, self._fire)

    def _fire(self) -> None:
        now = perf_counter_ns()
        t = self.timeouts
        if self._end is not None and now >= self._end:
            self.expire("timeout", f"no complete response within {t.total_s:g} s of the schedule")
        elif self.last is None and now >= self._first_by:
            self.expire(
                "first_byte_timeout", f"no response byte within {t.first_byte_s:g} s of the send"
            )
        elif self.last is not None and now >= self.last + self._stall_ns:
            self.expire("stall_timeout", f"the stream stalled: no byte for {t.stall_s:g} s")
        else:
            self._arm(now)

    def expire(self, error_class: str, message: str) -> None:
        """End the request now; it is recorded with ``error_class`` and its times so far."""
        if self.expired is not None:
            return
        self.expired = error_class
        self.message = message
        self.close()
        self._task.cancel()

    def absorb(self) -> bool:
        """In ``execute``'s ``except CancelledError``: True when this watch caused it (the
        request is to be recorded), False when the cancellation came from elsewhere."""
        return self.expired is not None and self._task.uncancel() == 0

    def close(self) -> None:
        """The request has ended: no more timer, out of the in-flight set."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._inflight is not None:
            self._inflight.discard(self)
            self._inflight = None
