"""The load runner: spreads a run's requests over worker processes and records every one.

    1. The parent builds the request plans' source (reading any dataset once), the target and,
       for open loop, the full arrival schedule (``schedule.arrival_offsets_ns``).
    2. It spawns ``spec.workers`` processes (fewer when there is less work than workers). Each
       runs its own event loop (uvloop where installed) and one aiohttp session, opens its
       keep-alive connections (closed loop: one per slot; open loop: up to
       ``OPEN_LOOP_CONNECTIONS``) with ``GET /models``, and reports ready; the parent
       measures each worker's clock offset (ping/pong on ``perf_counter_ns``; on one host
       CLOCK_MONOTONIC is shared, so the offset is recorded, never applied).
    3. The parent fixes the epoch (a ``perf_counter_ns`` value shortly ahead) and sends it.
       Open loop: worker ``w`` sends schedule positions ``w, w + W, ...`` at their absolute
       times. Closed loop: each worker runs its share of the slots; a slot takes the next
       position from a counter shared by all workers and its scheduled time is when the slot
       became free. Positions ``< load.warmup`` are the warm-up phase.
    4. A worker writes each record, as it finishes, as one JSON line to a pipe; the parent is the
       one writer of ``records.jsonl`` (``RecordWriter``, flushed per line) and calls
       ``on_record`` with each record dict for progress.
    5. SIGINT/SIGTERM (or ``should_stop()`` returning True): the parent tells the workers to stop;
       they stop scheduling, cancel requests in flight (not recorded) and flush what finished.
       Workers start with SIGINT blocked and then ignore it, so a Ctrl-C to the process group
       is handled once, by the parent, even while the workers are still starting.

Workers are started with multiprocessing's "spawn" method (no fork of a threaded parent), so a
script calling :func:`run_load` needs the usual ``if __name__ == "__main__":`` guard.

Positions are request ids: ``plan(i)`` of the spec's ``workload.Planner``, or
``plans[i]`` of an explicit list (whose records keep each plan's own id, phase and tag).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import resource
import signal
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait
from pathlib import Path
from time import perf_counter_ns
from typing import Any

import numpy as np
import orjson

from inferaudit.measure.load.client import (
    Target,
    api_key_for,
    build_body,
    execute,
    make_session,
    open_connections,
)
from inferaudit.measure.load.schedule import arrival_offsets_ns, split_concurrency
from inferaudit.measure.protocol import RunSpec
from inferaudit.measure.records import RecordWriter
from inferaudit.measure.workload import Planner, RequestPlan

__all__ = ["LoadResult", "WorkerInfo", "run_load"]

EPOCH_LEAD_NS = 50_000_000  # the epoch is set this far ahead of "go" so every worker has it
OPEN_LOOP_CONNECTIONS = 16  # open loop: connections each worker opens before the clock
START_TIMEOUT_S = 120.0
STOP_GRACE_S = 30.0  # after a stop, workers that have not ended by then are terminated
_POLL_S = 0.05


@dataclass(frozen=True)
class WorkerInfo:
    index: int
    pid: int
    sent: int  # requests started
    finished: int  # records written
    cancelled: int  # in flight when the run was stopped (no record)
    max_in_flight: int
    connections_opened: int  # keep-alive connections opened before the epoch
    cpu_s: float  # user + system CPU of the worker process, start-up included
    cpu_run_s: float  # the part of it spent from the epoch to the end
    clock_offset_ns: int  # worker perf_counter_ns minus parent's, measured at start
    clock_rtt_ns: int  # round trip of the best offset measurement
    exitcode: int | None


@dataclass(frozen=True)
class LoadResult:
    """What happened, beside the records: counts, interruption, the epoch and the workers."""

    records_path: Path
    epoch_ns: int  # perf_counter_ns value of the run's time zero
    epoch_wall_ns: int  # the same instant on the wall clock (time.time_ns)
    mode: str  # "open" | "closed"
    planned: int | None  # requests the schedule holds (None: closed loop bounded by duration)
    sent: int
    finished: int  # records written
    cancelled: int
    interrupted: bool
    elapsed_s: float  # from the epoch to the last worker's end
    workers: tuple[WorkerInfo, ...] = field(default_factory=tuple)

    @property
    def epoch_wall(self) -> str:
        seconds, ns = divmod(self.epoch_wall_ns, 1_000_000_000)
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ns:09d}Z"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["records_path"] = str(self.records_path)
        data["epoch_wall"] = self.epoch_wall
        # ns since 1970 / since boot exceed JSON's exact-integer range (2^53): evidence keeps
        # the wall-clock epoch as text and record times are relative to the epoch anyway.
        del data["epoch_wall_ns"], data["epoch_ns"]
        data["workers"] = [asdict(w) for w in self.workers]
        return data


class _WorkerLost(Exception):
    """A worker process ended before it was ready (internal)."""


@dataclass(frozen=True)
class _WorkerArgs:
    index: int
    stride: int  # open loop: this worker sends positions index, index + stride, ...
    target: Target
    planner: Planner | None
    plans: tuple[RequestPlan, ...] | None
    offsets: np.ndarray | None  # open loop: offsets (ns) of this worker's positions
    slots: int  # closed loop: concurrent requests of this worker
    limit: int | None  # closed loop: positions available (None: until duration)
    warmup: int
    duration_ns: int | None  # closed loop: measured window from the first measured position


def run_load(
    spec: RunSpec,
    records_path: Path,
    *,
    api_key: str | None = None,
    plans: Sequence[RequestPlan] | None = None,
    injected: Mapping[int, RequestPlan] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> LoadResult:
    """Run ``spec``'s load, appending one record per finished request to ``records_path``.

    ``api_key``: sent as ``Authorization: Bearer``; None reads the variable named by
    ``spec.endpoint.api_key_env`` (if any). It travels to the workers in memory only.
    ``plans``: send exactly these (in order, under ``spec.load``'s pattern) instead of the
    workload; ``requests``/``duration_s`` are then ignored. ``injected``: plans that replace the
    workload's at their ids. ``on_record`` is called in this process with each record dict as it
    is written; ``should_stop`` is polled every 50 ms. Returns when every worker has ended.
    """
    load = spec.load
    plan_list = tuple(plans) if plans is not None else None
    planner = None if plan_list is not None else Planner.from_spec(spec, injected=injected)
    if api_key is None:
        api_key = api_key_for(spec.endpoint)
    target = Target.of(spec.endpoint, api_key, spec.workload, load.timeout_s)
    shared = None
    ctx = mp.get_context("spawn")
    args: list[_WorkerArgs] = []
    if load.concurrency is not None:
        mode = "closed"
        slots = [s for s in split_concurrency(load.concurrency, spec.workers) if s > 0]
        if plan_list is not None:
            limit: int | None = len(plan_list)
        elif load.requests is not None:
            limit = load.warmup + load.requests
        else:
            limit = None
        duration_ns = (
            None if plan_list is not None or load.duration_s is None else int(load.duration_s * 1e9)
        )
        planned = limit
        shared = ctx.Array("q", 2)  # [next position, measured-window start (perf ns, 0: none)]
        for w, n in enumerate(slots):
            args.append(
                _WorkerArgs(
                    w, len(slots), target, planner, plan_list, None, n, limit, load.warmup,
                    duration_ns,
                )
            )  # fmt: skip
    else:
        mode = "open"
        count = len(plan_list) if plan_list is not None else None
        offsets = arrival_offsets_ns(load, spec.seed, count)
        planned = len(offsets)
        n_workers = max(1, min(spec.workers, planned))
        for w in range(n_workers):
            args.append(
                _WorkerArgs(
                    w, n_workers, target, planner, plan_list, offsets[w::n_workers], 0, None,
                    load.warmup, None,
                )
            )  # fmt: skip
    return _Parent(ctx, args, shared, records_path, mode, planned, on_record, should_stop).run()


class _Parent:
    def __init__(
        self,
        ctx: Any,
        args: list[_WorkerArgs],
        shared: Any,
        records_path: Path,
        mode: str,
        planned: int | None,
        on_record: Callable[[dict[str, Any]], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> None:
        self.ctx = ctx
        self.args = args
        self.shared = shared
        self.records_path = records_path
        self.mode = mode
        self.planned = planned
        self.on_record = on_record
        self.should_stop = should_stop
        self.interrupted = False
        self.stop_sent = False
        self.stats: dict[int, dict[str, Any]] = {}
        self.errors: list[str] = []
        self.finished = 0

    def _signal(self, signum: int, frame: object) -> None:
        self.interrupted = True

    def run(self) -> LoadResult:
        old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, self._signal)
        procs: list[Any] = []
        ctrls: list[Connection] = []
        recs: list[Connection] = []
        if old:  # children start with SIGINT blocked: a Ctrl-C to the group is ours to handle
            resource_tracker.ensure_running()  # starting it later would unblock SIGINT here
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            # (2): spawn the workers, ship their arguments, wait for ready, measure clocks
            for a in self.args:
                ctrl_parent, ctrl_child = self.ctx.Pipe(duplex=True)
                rec_read, rec_write = self.ctx.Pipe(duplex=False)
                p = self.ctx.Process(
                    target=_worker_entry,
                    args=(a.index, ctrl_child, rec_write, self.shared),
                    name=f"inferaudit-load-{a.index}",
                    daemon=True,
                )
                p.start()
                ctrl_child.close()
                rec_write.close()
                procs.append(p)
                ctrls.append(ctrl_parent)
                recs.append(rec_read)
            if old:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            try:
                for a, c in zip(self.args, ctrls, strict=True):
                    c.send(a)
                clocks = self._handshake(procs, ctrls)
            except (_WorkerLost, OSError) as exc:
                if not self.interrupted:  # a worker died on its own: a bug, or the host
                    raise RuntimeError(f"load worker failed to start: {exc}") from None
                # interrupted while starting (a Ctrl-C to the process group): nothing was sent
                self.stop_sent = True
                clocks = [(0, 0)] * len(procs)
            # (3): the epoch
            epoch = perf_counter_ns() + EPOCH_LEAD_NS
            epoch_wall = time.time_ns() + (epoch - perf_counter_ns())
            with RecordWriter(self.records_path) as writer:
                if not self.stop_sent:
                    go = ("stop",) if self.interrupted else ("go", epoch)
                    self.stop_sent = go[0] == "stop"
                    for c in ctrls:
                        c.send(go)
                    self._collect(writer, ctrls, recs)  # (4) and (5)
            end = perf_counter_ns()
        finally:
            if old:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            self._stop(ctrls)
            for proc in procs:
                proc.join(timeout=10)
                if proc.exitcode is None:
                    proc.terminate()
                    proc.join(timeout=5)
            for c in ctrls + recs:
                c.close()
            for signum, handler in old.items():
                signal.signal(signum, handler)
        if self.errors:
            raise RuntimeError(f"load worker failed: {self.errors[0]}")
        infos = tuple(self._info(a.index, procs[a.index], clocks[a.index]) for a in self.args)
        return LoadResult(
            records_path=self.records_path,
            epoch_ns=epoch,
            epoch_wall_ns=epoch_wall,
            mode=self.mode,
            planned=self.planned,
            sent=sum(i.sent for i in infos),
            finished=self.finished,
            cancelled=sum(i.cancelled for i in infos),
            interrupted=self.interrupted,
            elapsed_s=max(0, end - epoch) / 1e9,
            workers=infos,
        )

    def _info(self, index: int, proc: Any, clock: tuple[int, int]) -> WorkerInfo:
        s = self.stats.get(index, {})
        return WorkerInfo(
            index=index,
            pid=proc.pid,
            sent=s.get("sent", 0),
            finished=s.get("finished", 0),
            cancelled=s.get("cancelled", 0),
            max_in_flight=s.get("max_in_flight", 0),
            connections_opened=s.get("connections_opened", 0),
            cpu_s=s.get("cpu_s", 0.0),
            cpu_run_s=s.get("cpu_run_s", 0.0),
            clock_offset_ns=clock[0],
            clock_rtt_ns=clock[1],
            exitcode=proc.exitcode,
        )

    def _handshake(self, procs: list[Any], ctrls: list[Connection]) -> list[tuple[int, int]]:
        """Wait for every worker's "ready", then measure its clock offset (best of 5 pings)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        for p, c in zip(procs, ctrls, strict=True):
            while not c.poll(_POLL_S):
                if not p.is_alive() or time.monotonic() > deadline:
                    raise _WorkerLost(f"{p.name} did not start (exit code {p.exitcode})")
            try:
                msg = c.recv()
            except EOFError:
                raise _WorkerLost(f"{p.name} exited while starting") from None
            if msg[0] == "error":
                raise _WorkerLost(msg[1])
            assert msg[0] == "ready", f"unexpected worker message {msg!r}"
        clocks = []
        for c in ctrls:
            best = (0, 1 << 62)
            for _ in range(5):
                t0 = perf_counter_ns()
                c.send(("ping",))
                t1 = c.recv()[1]
                t2 = perf_counter_ns()
                if t2 - t0 < best[1]:
                    best = (t1 - (t0 + t2) // 2, t2 - t0)
            clocks.append(best)
        return clocks

    def _collect(
        self, writer: RecordWriter, ctrls: list[Connection], recs: list[Connection]
    ) -> None:
        """Write records as they arrive until every worker has closed its pipes."""
        open_recs: dict[Connection, bytes] = dict.fromkeys(recs, b"")
        open_ctrls = set(ctrls)
        index = {c: i for i, c in enumerate(ctrls)}
        on_record = self.on_record
        stop_deadline: float | None = None
        while open_recs or open_ctrls:
            if stop_deadline is not None and time.monotonic() > stop_deadline:
                self.errors.append(f"workers still running {STOP_GRACE_S:g} s after stop")
                return  # the caller terminates them
            for conn in wait([*open_recs, *open_ctrls], timeout=_POLL_S):
                assert isinstance(conn, Connection)
                if conn in open_recs:
                    data = os.read(conn.fileno(), 1 << 20)
                    if not data:
                        assert not open_recs.pop(conn), "a worker left a partial record line"
                        continue
                    lines = (open_recs[conn] + data).split(b"\n")
                    open_recs[conn] = lines.pop()
                    for line in lines:
                        writer.write_raw(line)
                        self.finished += 1
                        if on_record is not None:
                            on_record(orjson.loads(line))
                else:
                    try:
                        msg = conn.recv()
                    except EOFError:
                        open_ctrls.discard(conn)
                        continue
                    if msg[0] == "stats":
                        self.stats[index[conn]] = msg[1]
                    elif msg[0] == "error":
                        self.errors.append(msg[1])
            if self.should_stop is not None and not self.interrupted and self.should_stop():
                self.interrupted = True
            if self.interrupted and stop_deadline is None:
                self._stop(ctrls)
                stop_deadline = time.monotonic() + STOP_GRACE_S

    def _stop(self, ctrls: list[Connection]) -> None:
        if self.stop_sent:
            return
        self.stop_sent = True
        for c in ctrls:
            with contextlib.suppress(OSError):  # that worker has already ended
                c.send(("stop",))


# --- worker process -------------------------------------------------------------------------


def _worker_entry(index: int, ctrl: Connection, rec: Connection, shared: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it tells us to stop
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by the parent
    try:
        # the arguments (schedule, plans) come over the control pipe, not the spawn pipe: a
        # large spawn payload blocks the parent for good if the child dies while starting
        args: _WorkerArgs = ctrl.recv()
        try:
            import uvloop

            loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
        except ImportError:
            loop_factory = None
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            stats = runner.run(_Worker(args, ctrl, rec, shared).main())
        stats["cpu_s"] = _cpu_s()
        ctrl.send(("stats", stats))
    except BaseException as exc:
        tb = traceback.format_exception_only(exc)[-1].strip()
        with contextlib.suppress(OSError):  # the parent is gone
            ctrl.send(("error", f"worker {index}: {tb}"))
        raise
    finally:
        ctrl.close()


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Worker:
    def __init__(self, args: _WorkerArgs, ctrl: Connection, rec: Connection, shared: Any) -> None:
        self.a = args
        self.ctrl = ctrl
        self.rec = rec
        self.shared = shared
        self.epoch = 0
        self.sent = 0
        self.finished = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.transport: asyncio.WriteTransport | None = None

    async def main(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        pipe = os.fdopen(os.dup(self.rec.fileno()), "wb", buffering=0)
        self.rec.close()
        transport, _ = await loop.connect_write_pipe(asyncio.Protocol, pipe)
        self.transport = transport
        cancelled = 0
        cpu0: float | None = None
        if self.a.offsets is not None:
            limit, connections = 0, min(len(self.a.offsets), OPEN_LOOP_CONNECTIONS)
        else:
            limit = connections = self.a.slots
        async with make_session(limit) as self.session:
            if self.a.plans is None or self.a.plans:  # warm the code paths before the clock
                build_body(self._plan(0), self.a.target)
            opened = await open_connections(self.session, self.a.target, connections)
            self.ctrl.send(("ready", os.getpid()))
            if self._await_go():
                cpu0 = _cpu_s()
                stop = asyncio.Event()
                loop.add_reader(self.ctrl.fileno(), self._on_ctrl, stop)
                body = self._open_loop() if self.a.offsets is not None else self._closed_loop()
                work = asyncio.ensure_future(body)
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait((work, stopper), return_when=asyncio.FIRST_COMPLETED)
                loop.remove_reader(self.ctrl.fileno())
                if stop.is_set():
                    work.cancel()
                    for t in self.tasks:
                        t.cancel()
                    await asyncio.gather(work, *self.tasks, return_exceptions=True)
                    cancelled = self.sent - self.finished  # started, never recorded
                else:
                    stopper.cancel()
                    work.result()  # a bug in the worker surfaces here
        while transport.get_write_buffer_size():
            await asyncio.sleep(0.002)
        transport.close()
        return {
            "cpu_run_s": _cpu_s() - cpu0 if cpu0 is not None else 0.0,
            "sent": self.sent,
            "finished": self.finished,
            "cancelled": cancelled,
            "max_in_flight": self.max_in_flight,
            "connections_opened": opened,
        }

    def _await_go(self) -> bool:
        while True:
            msg = self.ctrl.recv()
            if msg[0] == "ping":
                self.ctrl.send(("pong", perf_counter_ns()))
            elif msg[0] == "go":
                self.epoch = msg[1]
                return True
            else:
                return False

    def _on_ctrl(self, stop: asyncio.Event) -> None:
        try:
            msg = self.ctrl.recv()
        except EOFError:
            msg = ("stop",)  # the parent is gone
        if msg[0] == "stop":
            stop.set()

    def _plan(self, position: int) -> RequestPlan:
        if self.a.plans is not None:
            return self.a.plans[position]
        assert self.a.planner is not None
        return self.a.planner.plan(position)

    async def _one(self, plan: RequestPlan, body: bytes, scheduled: int) -> None:
        self.sent += 1
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        try:
            rec = await execute(
                self.session, self.a.target, plan, body, scheduled, self.epoch, self.a.index
            )
        finally:
            self.in_flight -= 1
        assert self.transport is not None
        self.transport.write(orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE))
        self.finished += 1

    async def _open_loop(self) -> None:
        assert self.a.offsets is not None
        target, epoch, tasks = self.a.target, self.epoch, self.tasks
        position = self.a.index
        for offset in self.a.offsets.tolist():
            plan = self._plan(position)
            position += self.a.stride
            body = build_body(plan, target)
            scheduled = epoch + offset
            # loop: uvloop's millisecond timers may wake a little early; never send early
            while (delay := scheduled - perf_counter_ns()) > 0:
                await asyncio.sleep(delay / 1e9)
            task = asyncio.ensure_future(self._one(plan, body, scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.wait(tuple(tasks))

    def _take(self, scheduled: int) -> int | None:
        """The next position for a closed-loop slot free since ``scheduled``, or None when the
        run is over: ``limit`` positions taken, or the slot became free ``duration_s`` after the
        scheduled time of the first measured request (with no warm-up: the epoch)."""
        a = self.a
        with self.shared.get_lock():
            position = self.shared[0]
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
            task = asyncio.ensure_future(
                self._one(plan, build_body(plan, self.a.target), scheduled)
            )
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            await task
            scheduled = perf_counter_ns()  # the slot is free: the next request is due now

    async def _closed_loop(self) -> None:
        while (delay := self.epoch - perf_counter_ns()) > 0:
            await asyncio.sleep(delay / 1e9)
        await asyncio.gather(*(self._slot() for _ in range(self.a.slots)))
