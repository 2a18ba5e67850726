"""A load worker process: one event loop, one connection pool, its share of the schedule.

Started by :mod:`inferaudit.measure.load.runner` (multiprocessing "spawn"). It receives its
:class:`~.messages.WorkerArgs`, opens its keep-alive connections, reports :class:`~.messages.Ready`,
answers pings, and on :class:`~.messages.Go` sends its positions (open loop: at their absolute
times; closed loop: its slots, taking positions from a counter shared by all workers). Each
finished request goes to the record pipe as one JSON line. Its warm-up connections, when the
epoch comes more than ``WARM_IDLE_NS`` after them, are not reused (the first requests open new
ones): a server may be closing them just then (:mod:`~inferaudit.measure.load.client`).

Open loop with a cap (``WorkerArgs.cap``): every request, due at its scheduled time, waits for
one of the worker's ``cap`` slots (:class:`~.gate.SlotGate`, first come first served); the
instant a slot became free for it is its ``slot_ns``. Its latency is still measured from the
scheduled time; its client lag (record and health sample alike) from ``max(scheduled, slot)``.

Multi-turn sessions (``WorkerArgs.think_ns`` set; the planner is a
:class:`~.plans.SessionSource`): a position is a session of ``turns(position)`` turns, sent in
order by one coroutine. Turn ``t >= 1`` is planned from the answers (``output_text``) of the
turns before it and is due ``think_ns`` after the previous turn's last byte (its ``done_ns``):
that is its scheduled time. A turn that failed or was cancelled ends its session; so does a
turn due at or after the end of a duration-bounded run's measured window, and a stop. Each
session that ends with turns left unsent counts in ``sessions_ended_early``. Open loop: the
schedule says when each session starts, later turns are extra requests of the same worker (the
cap applies per request). Closed loop: a slot runs a whole session, think time included, then
takes the next position.

How a worker ends:

* its share is done (count-bounded runs, or a duration window whose requests all finished);
* the end rule of a duration-bounded run: ``grace_ns`` after the measured window closes, every
  request still in flight is cut off and recorded as ``cancelled`` with its times so far;
* :class:`~.messages.Stop` from the parent (a signal, ``should_stop``, another worker died), or
  the parent gone (its control pipe closed): nothing new is sent, the requests in flight are cut
  off and recorded as ``cancelled``.

Then it reports :class:`~.messages.Done` with its counts (or :class:`~.messages.Failed` with one
line for a bug) and exits. A worker whose parent has gone (killed) exits quietly with status 0:
there is nobody left to tell, and no traceback is printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import resource
import signal
import traceback
from collections.abc import Awaitable, Callable, Iterator
from multiprocessing.connection import Connection
from time import perf_counter_ns
from typing import Any

from inferaudit.measure.health import HealthSampler
from inferaudit.measure.load.alarm import Alarm
from inferaudit.measure.load.client import (
    Pool,
    ReadMeter,
    Watch,
    build_body,
    execute,
    open_connections,
)
from inferaudit.measure.load.gate import SlotGate
from inferaudit.measure.load.messages import (
    Done,
    Failed,
    Go,
    Ping,
    Pong,
    Ready,
    Stop,
    WorkerArgs,
    WorkerStats,
)
from inferaudit.measure.load.plans import SessionSource
from inferaudit.measure.records import CANCELLED, Record
from inferaudit.measure.workload import RequestPlan

__all__ = ["OPEN_LOOP_CONNECTIONS", "worker_entry"]

OPEN_LOOP_CONNECTIONS = 16  # open loop: connections each worker opens before the clock
# A worker asks the OS for this scheduling priority (nice value) when it is allowed to (root or
# CAP_SYS_NICE): a load generator that shares its cores with other work is woken late otherwise,
# and its lag adds to every latency it reports. The niceness it got is recorded (WorkerInfo.nice).
CLIENT_NICE = -10
# A warm-up connection idle longer than this when the epoch comes is not reused: servers close
# idle keep-alive connections (llama.cpp's server and uvicorn after 5 s), and one closing just as
# the first measured request goes out fails it. Below the shortest common server timeout.
WARM_IDLE_NS = 2_000_000_000
_FLUSH_WAIT_S = 10.0  # at the end: the longest wait for the record pipe to drain
_NS = 1_000_000_000


def _each(offsets: Any) -> Iterator[int]:
    """The schedule's offsets as ints, a block at a time (a long run's schedule as a list of
    Python ints would cost ~36 bytes an entry for the whole run)."""
    for i in range(0, len(offsets), 4096):
        yield from offsets[i : i + 4096].tolist()


class _ParentGone(Exception):
    """The parent's end of a pipe is closed (internal)."""


def worker_entry(index: int, ctrl: Connection, rec: Connection, shared: Any) -> None:
    """The process target: run, report, exit (quietly when the parent is gone)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it tells us to stop
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by the parent
    try:
        try:
            # the arguments (schedule, plans) come over the control pipe, not the spawn pipe: a
            # large spawn payload blocks the parent for good if the child dies while starting
            args: WorkerArgs = ctrl.recv()
        except (EOFError, OSError):
            return
        nice = _raise_priority()
        try:
            import uvloop

            loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
        except ImportError:
            loop_factory = None
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            stats = runner.run(_Worker(args, ctrl, rec, shared).main())
        ctrl.send(Done(dataclasses.replace(stats, nice=nice)))
    except (_ParentGone, BrokenPipeError, ConnectionResetError, EOFError):
        return  # the parent has gone: nobody to report to
    except BaseException as exc:
        message = traceback.format_exception_only(exc)[-1].strip()
        with contextlib.suppress(OSError):
            ctrl.send(Failed(f"worker {index}: {message}"))
        raise SystemExit(1) from None
    finally:
        ctrl.close()


def _raise_priority() -> int:
    """Ask for ``CLIENT_NICE`` (refused without the privilege: then stay as is); return the
    niceness this process runs at."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if current > CLIENT_NICE:
        with contextlib.suppress(PermissionError):
            os.setpriority(os.PRIO_PROCESS, 0, CLIENT_NICE)
    return os.getpriority(os.PRIO_PROCESS, 0)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Worker:
    def __init__(self, args: WorkerArgs, ctrl: Connection, rec: Connection, shared: Any) -> None:
        self.a = args
        self.ctrl = ctrl
        self.rec = rec
        self.shared = shared
        self.epoch = 0
        self.sent = 0
        self.finished = 0
        self.cancelled = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.stopping = False
        self.stopped = asyncio.Event()  # set with ``stopping``: wakes sessions in think time
        self.turns_sent = 0
        self.sessions_ended_early = 0
        self.gate = SlotGate(args.cap) if args.cap is not None else None
        self.sessions: SessionSource | None = None
        if args.think_ns is not None:
            assert isinstance(args.planner, SessionSource), "sessions need a SessionSource"
            self.sessions = args.planner
        self.bug: BaseException | None = None  # the first exception a request task raised
        self.tasks: set[asyncio.Task[None]] = set()
        self.watches: set[Watch] = set()
        self.meter = ReadMeter()
        self.health: HealthSampler | None = None
        self.transport: asyncio.WriteTransport | None = None

    async def main(self) -> WorkerStats:
        loop = asyncio.get_running_loop()
        pipe = os.fdopen(os.dup(self.rec.fileno()), "wb", buffering=0)
        self.rec.close()
        transport, _ = await loop.connect_write_pipe(asyncio.Protocol, pipe)
        self.transport = transport
        cpu0: float | None = None
        if self.a.offsets is not None:
            connections = min(len(self.a.offsets), OPEN_LOOP_CONNECTIONS)
            if self.a.cap is not None:
                connections = min(connections, self.a.cap)
        else:  # (a slot has one request in flight: never more connections than slots)
            connections = self.a.slots
        async with Pool() as self.pool:
            if self.a.plans is None or self.a.plans:  # warm the code paths before the clock
                build_body(self._plan(0), self.a.target)
            opened = await open_connections(self.pool, self.a.target, connections)
            warmed = perf_counter_ns()
            self._send(Ready(os.getpid()))
            if self._await_go():
                # the loop was blocked waiting for Go: warm-up connections idle too long by the
                # epoch are closed when first taken (the request opens a new one), rather than
                # re-opened now, which would spend the epoch's lead or delay the first sends
                if self.epoch - warmed > WARM_IDLE_NS:
                    self.pool.retire(warmed)
                cpu0 = _cpu_s()
                await self._run(loop)
        await self._drain(transport)
        return WorkerStats(
            sent=self.sent,
            finished=self.finished,
            cancelled=self.cancelled,
            max_in_flight=self.max_in_flight,
            connections_opened=opened,
            cpu_s=_cpu_s(),
            cpu_run_s=_cpu_s() - cpu0 if cpu0 is not None else 0.0,
            turns_sent=self.turns_sent,
            sessions_ended_early=self.sessions_ended_early,
        )

    async def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        self.health = HealthSampler(
            self.a.index, self.epoch, self.a.health_window_ns, self.meter, self._send
        )
        sampler = asyncio.ensure_future(self.health.run())
        stop = asyncio.Event()
        loop.add_reader(self.ctrl.fileno(), self._on_ctrl, stop)
        body = self._open_loop() if self.a.offsets is not None else self._closed_loop()
        work = asyncio.ensure_future(body)
        end_rule = asyncio.ensure_future(self._end_rule())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait((work, stopper), return_when=asyncio.FIRST_COMPLETED)
        loop.remove_reader(self.ctrl.fileno())
        if stop.is_set():
            self._cut_off("cancelled: the run was stopped")
            await asyncio.gather(*self.tasks, return_exceptions=True)
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
        else:
            stopper.cancel()
        end_rule.cancel()
        sampler.cancel()
        await asyncio.gather(end_rule, sampler, return_exceptions=True)
        self.health.flush()
        if not stop.is_set():
            work.result()  # a bug in the worker surfaces here
        if self.bug is not None:
            raise self.bug

    async def _drain(self, transport: asyncio.WriteTransport) -> None:
        deadline = perf_counter_ns() + int(_FLUSH_WAIT_S * _NS)
        while transport.get_write_buffer_size() and not transport.is_closing():
            if perf_counter_ns() > deadline:
                break
            await asyncio.sleep(0.002)
        transport.close()

    def _send(self, msg: object) -> None:
        try:
            self.ctrl.send(msg)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise _ParentGone from exc

    def _await_go(self) -> bool:
        while True:
            try:
                msg = self.ctrl.recv()
            except EOFError:
                raise _ParentGone from None
            if isinstance(msg, Ping):
                self._send(Pong(perf_counter_ns()))
            elif isinstance(msg, Go):
                self.epoch = msg.epoch_ns
                return True
            else:
                assert isinstance(msg, Stop), f"unexpected message {msg!r}"
                return False

    def _on_ctrl(self, stop: asyncio.Event) -> None:
        try:
            msg = self.ctrl.recv()
        except (EOFError, OSError):
            msg = Stop()  # the parent is gone
        if isinstance(msg, Stop):
            stop.set()

    def _cut_off(self, message: str) -> None:
        """Stop sending; end every request in flight (each is recorded as ``cancelled``)."""
        self.stopping = True
        self.stopped.set()
        for watch in list(self.watches):
            watch.expire(CANCELLED, message)

    async def _end_rule(self) -> None:
        """Duration-bounded runs: the window, then ``grace_ns``, then cut off what runs."""
        a = self.a
        if a.duration_ns is None:
            return
        if a.window_start_ns is not None:  # open loop: known from the schedule
            start = self.epoch + a.window_start_ns
        else:  # closed loop: when the first measured position was taken (shared by workers)
            while not (start := self.shared[1]):
                await asyncio.sleep(0.01)
        end = start + a.duration_ns + a.grace_ns
        while (delay := end - perf_counter_ns()) > 0:
            await asyncio.sleep(delay / _NS)
        self._cut_off(
            f"cancelled: still running {a.grace_ns / _NS:g} s after the "
            f"{a.duration_ns / _NS:g} s window"
        )

    def _plan(self, position: int) -> RequestPlan:
        if self.a.plans is not None:
            return self.a.plans[position]
        assert self.a.planner is not None
        return self.a.planner.plan(position)

    def _window_end(self) -> int | None:
        """When the measured window of a duration-bounded run ends (perf ns), None when the run
        is bounded by count or (closed loop) its window has not started yet."""
        a = self.a
        if a.duration_ns is None:
            return None
        if a.window_start_ns is not None:
            return self.epoch + a.window_start_ns + a.duration_ns
        start: int = self.shared[1]
        return start + a.duration_ns if start else None

    async def _sleep_until(self, due: int) -> None:
        """Sleep until ``due`` (never wake early) or until the worker stops sending."""
        while not self.stopping and (delay := due - perf_counter_ns()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopped.wait(), delay / _NS)

    def _sending(self) -> bool:
        return not self.stopping

    async def _one(self, plan: RequestPlan, body: bytes, scheduled: int) -> Record | None:
        """Send ``plan`` (through the slot gate when capped); its record, or None when the
        worker stopped sending before it was sent (nothing is recorded then)."""
        if self.stopping:
            return None  # cut off before it was sent: never sent, nothing to record
        gate, slot = self.gate, None
        if gate is not None:
            slot = await gate.acquire(scheduled)
            if not self._sending():  # stopped while it waited for a slot
                gate.release()
                return None
        try:
            self.sent += 1
            self.turns_sent += bool(plan.turn)
            self.in_flight += 1
            if self.in_flight > self.max_in_flight:
                self.max_in_flight = self.in_flight
            assert self.health is not None
            # the client's lag runs from when it was due: scheduled, or its slot's time
            self.health.lag(perf_counter_ns() - (scheduled if slot is None else slot))
            try:
                rec = await execute(
                    self.pool,
                    self.a.target,
                    plan,
                    body,
                    scheduled,
                    self.epoch,
                    self.a.index,
                    slot_abs_ns=slot,
                    inflight=self.watches,
                    meter=self.meter,
                )
            finally:
                self.in_flight -= 1
        finally:
            if gate is not None:
                gate.release()
        transport = self.transport
        assert transport is not None
        if transport.is_closing():
            raise _ParentGone  # the record pipe is closed: the parent has gone
        transport.write(rec.to_line())
        self.finished += 1
        self.cancelled += rec.cancelled
        return rec

    async def _session(self, position: int, plan: RequestPlan, body: bytes, due: int) -> None:
        """The session at ``position``: turn 0 (``plan``) at ``due``, then each later turn
        ``think_ns`` after the previous turn's last byte, until a turn fails or none is left."""
        sessions, think = self.sessions, self.a.think_ns
        assert sessions is not None and think is not None
        turns = sessions.turns(position)
        answers: list[str] = []
        turn, left = 0, turns  # ``left``: turns not yet sent
        while turn < turns:
            if turn:
                end = self._window_end()
                if end is not None and due >= end:
                    break  # due after the measured window: not sent
                plan = sessions.turn_plan(position, turn, answers)
                body = build_body(plan, self.a.target)
                await self._sleep_until(due)
            rec = await self._one(plan, body, due)
            if rec is None:
                break  # stopped before it was sent
            left -= 1
            if not rec.ok:
                break  # a failed (or cancelled) turn ends its session
            assert rec.output_text is not None, "sessions keep the answers' text"
            assert rec.done_ns is not None, "every record has its end"
            answers.append(rec.output_text)
            due = self.epoch + rec.done_ns + think
            turn += 1
        self.sessions_ended_early += left > 0

    def _request(self, position: int, plan: RequestPlan, body: bytes, due: int) -> Awaitable[Any]:
        """What a position is: one request, or (multi-turn) a session."""
        if self.sessions is not None:
            return self._session(position, plan, body, due)
        return self._one(plan, body, due)

    def _spawn(self, work: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None and self.bug is None:
            self.bug = exc
            self._cut_off("cancelled: the worker hit a bug")

    async def _open_loop(self) -> None:
        assert self.a.offsets is not None
        target, epoch, tasks = self.a.target, self.epoch, self.tasks
        position = self.a.index
        alarm = Alarm(asyncio.get_running_loop())
        try:
            for offset in _each(self.a.offsets):
                plan = self._plan(position)
                body = build_body(plan, target)
                scheduled = epoch + offset
                await alarm.until(scheduled)  # never early, and without a busy wait
                if self.stopping:
                    break
                self._spawn(self._request(position, plan, body, scheduled))
                position += self.a.stride
        finally:
            alarm.close()
        while tasks:
            await asyncio.wait(tuple(tasks))

    def _take(self, scheduled: int) -> int | None:
        """The next position for a closed-loop slot free since ``scheduled``, or None when the
        run is over: ``limit`` positions taken, or the slot became free ``duration_s`` after the
        scheduled time of the first measured request (with no warm-up: the epoch)."""
        a = self.a
        if self.stopping:
            return None
        with self.shared.get_lock():
            position: int = self.shared[0]
            if a.limit is not None and position >= a.limit:
                return None
            if a.duration_ns is not None and position >= a.warmup:
                start = self.shared[1]
                if start == 0:
                    self.shared[1] = scheduled
                elif scheduled >= start + a.duration_ns:
                    return None
            self.shared[0] = position + 1
            return position

    async def _slot(self) -> None:
        scheduled = self.epoch
        while True:
            position = self._take(scheduled)
            if position is None:
                return
            plan = self._plan(position)
            body = build_body(plan, self.a.target)
            await self._spawn(self._request(position, plan, body, scheduled))
            scheduled = perf_counter_ns()  # the slot is free: the next request is due now

    async def _closed_loop(self) -> None:
        while (delay := self.epoch - perf_counter_ns()) > 0:
            await asyncio.sleep(delay / _NS)
        await asyncio.gather(*(self._slot() for _ in range(self.a.slots)))
