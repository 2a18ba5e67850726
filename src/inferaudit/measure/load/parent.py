"""The parent side of the load runner: start the workers, write what they send, stop them.

See :mod:`inferaudit.measure.load.runner` for the protocol (steps 2-7). Everything a worker
sends crosses a boundary here: a record line is validated before it is written, a control
message must be one of :mod:`~.messages`' types, and a worker failure becomes a
:class:`~inferaudit.errors.WorkerError` with one line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait
from pathlib import Path
from time import perf_counter_ns
from typing import Any

import orjson
from pydantic import ValidationError

from inferaudit.errors import WorkerError
from inferaudit.measure.health import HealthRecorder, HealthSample, HealthWindow
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
from inferaudit.measure.load.worker import worker_entry
from inferaudit.measure.protocol import RunSpec
from inferaudit.measure.records import Record, RecordWriter

__all__ = ["EPOCH_LEAD_NS", "Parent", "ParentOutcome", "WorkerInfo", "dispatch_control"]

EPOCH_LEAD_NS = 50_000_000  # the epoch is set this far ahead of "go" so every worker has it
START_TIMEOUT_S = 120.0
STOP_GRACE_S = 30.0  # after a stop, workers that have not ended by then are terminated
_POLL_S = 0.05


@dataclass(frozen=True)
class WorkerInfo:
    index: int
    pid: int
    sent: int  # requests started
    finished: int  # records written (cancelled ones included)
    cancelled: int  # of which cut off by the end rule or a stop
    max_in_flight: int
    connections_opened: int  # keep-alive connections opened before the epoch
    cpu_s: float  # user + system CPU of the worker process, start-up included
    cpu_run_s: float  # the part of it spent from the epoch to the end
    clock_offset_ns: int  # worker perf_counter_ns minus parent's, measured at start
    clock_rtt_ns: int  # round trip of the best offset measurement
    exitcode: int | None
    nice: int | None = None  # scheduling niceness the worker ran at (None: it did not report)
    turns_sent: int = 0  # of ``sent``: session turns after the first (turn >= 1)
    sessions_ended_early: int = 0  # sessions that ended with turns left unsent


@dataclass(frozen=True)
class ParentOutcome:
    epoch_ns: int
    epoch_wall_ns: int
    finished: int
    cancelled: int
    interrupted: bool
    elapsed_s: float
    workers: tuple[WorkerInfo, ...]
    health: tuple[HealthWindow, ...]


class _WorkerLost(Exception):
    """A worker process ended before it was ready (internal)."""


def dispatch_control(
    msg: object,
    w: int,
    recorder: HealthRecorder,
    stats: dict[int, WorkerStats],
    reported: set[int],
) -> str | None:
    """Act on one control message from worker ``w`` after its Go (the local parent and the Ray
    driver alike): a health sample goes to ``recorder``; ``Done`` keeps its ``stats`` and marks
    ``w`` as ``reported`` and ended; ``Failed`` marks it so too. Returns the line that ends the
    run (``Failed``, or a message of no known type), else None."""
    if isinstance(msg, HealthSample):
        recorder.sample(msg)
        return None
    if isinstance(msg, Done):
        stats[w] = msg.stats
        reported.add(w)
        recorder.worker_ended(w)
        return None
    if isinstance(msg, Failed):
        reported.add(w)
        recorder.worker_ended(w)
        return f"load {msg.message}"
    return f"load worker {w} sent an unknown message {type(msg).__name__}"


def exit_text(code: int | None) -> str:
    """``exit code 3`` / ``killed by SIGKILL`` / ``still running``."""
    if code is None:
        return "still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"exit code {code} (killed by {signal.Signals(-code).name})"
    return f"exit code {code}"


class Parent:
    def __init__(
        self,
        ctx: Any,
        args: list[WorkerArgs],
        shared: Any,
        records_path: Path,
        spec: RunSpec,
        on_record: Callable[[Record], None] | None,
        should_stop: Callable[[], bool] | None,
        health_path: Path | None,
        health_ns: int,
        health_phase: str = "measure",
    ) -> None:
        self.ctx = ctx
        self.args = args
        self.shared = shared
        self.records_path = records_path
        self.spec = spec
        self.on_record = on_record
        self.should_stop = should_stop
        self.health_path = health_path
        self.health_ns = health_ns
        self.health_phase = health_phase
        self.interrupted = False
        self.stop_sent = False
        self.stats: dict[int, WorkerStats] = {}
        self.failure: str | None = None  # the first worker failure: ends the run
        self.finished = 0
        self.cancelled = 0

    def _signal(self, signum: int, frame: object) -> None:
        self.interrupted = True

    def run(self) -> ParentOutcome:
        old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, self._signal)
        procs: list[Any] = []
        ctrls: list[Connection] = []
        recs: list[Connection] = []
        health: tuple[HealthWindow, ...] = ()
        if old:  # children start with SIGINT blocked: a Ctrl-C to the group is ours to handle
            resource_tracker.ensure_running()  # starting it later would unblock SIGINT here
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            # (2): spawn the workers, ship their arguments, wait for ready, measure clocks
            for a in self.args:
                ctrl_parent, ctrl_child = self.ctx.Pipe(duplex=True)
                rec_read, rec_write = self.ctx.Pipe(duplex=False)
                p = self.ctx.Process(
                    target=worker_entry,
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
                    raise WorkerError(f"load worker failed to start: {exc}") from None
                # interrupted while starting (a Ctrl-C to the process group): nothing was sent
                self.stop_sent = True
                clocks = [(0, 0)] * len(procs)
            # (3): the epoch
            epoch = perf_counter_ns() + EPOCH_LEAD_NS
            epoch_wall = time.time_ns() + (epoch - perf_counter_ns())
            recorder = HealthRecorder(
                self.health_path,
                self.spec,
                epoch,
                range(len(procs)),
                self.health_ns,
                self.health_phase,
            )
            with RecordWriter(self.records_path) as writer:
                if not self.stop_sent:
                    go: Go | Stop = Stop() if self.interrupted else Go(epoch)
                    self.stop_sent = isinstance(go, Stop)
                    for c in ctrls:
                        c.send(go)
                    self._collect(writer, recorder, procs, ctrls, recs)  # (4) to (7)
            end = perf_counter_ns()
            health = tuple(recorder.close(end))
        finally:
            if old:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            self._stop(ctrls)
            for c in recs:  # read to the end already, or abandoned (a failure): workers see EPIPE
                c.close()
            for proc in procs:
                proc.join(timeout=10)
                if proc.exitcode is None:
                    proc.terminate()
                    proc.join(timeout=5)
            for c in ctrls:
                c.close()
            for signum, handler in old.items():
                signal.signal(signum, handler)
        if self.failure is not None:
            raise WorkerError(
                f"{self.failure}; the run was stopped, the {self.finished} records written "
                f"before are kept in {self.records_path}"
            )
        infos = tuple(self._info(a.index, procs[a.index], clocks[a.index]) for a in self.args)
        return ParentOutcome(
            epoch_ns=epoch,
            epoch_wall_ns=epoch_wall,
            finished=self.finished,
            cancelled=self.cancelled,
            interrupted=self.interrupted,
            elapsed_s=max(0, end - epoch) / 1e9,
            workers=infos,
            health=health,
        )

    def _info(self, index: int, proc: Any, clock: tuple[int, int]) -> WorkerInfo:
        s = self.stats.get(index) or WorkerStats(0, 0, 0, 0, 0, 0.0, 0.0)
        return WorkerInfo(
            index=index,
            pid=proc.pid,
            sent=s.sent,
            finished=s.finished,
            cancelled=s.cancelled,
            max_in_flight=s.max_in_flight,
            connections_opened=s.connections_opened,
            cpu_s=s.cpu_s,
            cpu_run_s=s.cpu_run_s,
            clock_offset_ns=clock[0],
            clock_rtt_ns=clock[1],
            exitcode=proc.exitcode,
            nice=s.nice,
            turns_sent=s.turns_sent,
            sessions_ended_early=s.sessions_ended_early,
        )

    def _handshake(self, procs: list[Any], ctrls: list[Connection]) -> list[tuple[int, int]]:
        """Wait for every worker's Ready, then measure its clock offset (best of 5 pings)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        for p, c in zip(procs, ctrls, strict=True):
            while not c.poll(_POLL_S):
                if not p.is_alive() or time.monotonic() > deadline:
                    raise _WorkerLost(f"{p.name} did not start ({exit_text(p.exitcode)})")
            try:
                msg = c.recv()
            except EOFError:
                raise _WorkerLost(f"{p.name} exited while starting") from None
            if isinstance(msg, Failed):
                raise _WorkerLost(msg.message)
            if not isinstance(msg, Ready):
                raise _WorkerLost(f"{p.name} sent {type(msg).__name__} instead of Ready")
        clocks = []
        for c in ctrls:
            best = (0, 1 << 62)
            for _ in range(5):
                t0 = perf_counter_ns()
                c.send(Ping())
                pong = c.recv()
                t2 = perf_counter_ns()
                if not isinstance(pong, Pong):
                    raise _WorkerLost(f"a worker sent {type(pong).__name__} instead of Pong")
                if t2 - t0 < best[1]:
                    best = (pong.perf_ns - (t0 + t2) // 2, t2 - t0)
            clocks.append(best)
        return clocks

    def _collect(
        self,
        writer: RecordWriter,
        recorder: HealthRecorder,
        procs: list[Any],
        ctrls: list[Connection],
        recs: list[Connection],
    ) -> None:
        """Write records as they arrive until every worker has closed its pipes."""
        open_recs: dict[Connection, bytes] = dict.fromkeys(recs, b"")
        open_ctrls = set(ctrls)
        index = {c: i for i, c in enumerate(ctrls)} | {c: i for i, c in enumerate(recs)}
        reported: set[int] = set()  # workers that sent Done or Failed
        on_record = self.on_record
        stop_deadline: float | None = None
        while open_recs or open_ctrls:
            if stop_deadline is not None and time.monotonic() > stop_deadline:
                self.failure = self.failure or (
                    f"load workers still running {STOP_GRACE_S:g} s after stop"
                )
                return  # the caller terminates them
            for conn in wait([*open_recs, *open_ctrls], timeout=_POLL_S):
                assert isinstance(conn, Connection)
                w = index[conn]
                if conn in open_recs:
                    data = os.read(conn.fileno(), 1 << 20)
                    if not data:
                        if open_recs.pop(conn):
                            self._fail(f"load worker {w} left a partial record line")
                        continue
                    lines = (open_recs[conn] + data).split(b"\n")
                    open_recs[conn] = lines.pop()
                    for line in lines:
                        try:
                            rec = writer.append_line(line)
                        except (ValidationError, orjson.JSONDecodeError) as exc:
                            first = str(exc).splitlines()[0]
                            self._fail(f"load worker {w} sent a malformed record: {first}")
                            continue
                        self.finished += 1
                        self.cancelled += rec.cancelled
                        recorder.record(rec)
                        if on_record is not None:
                            on_record(rec)
                else:
                    try:
                        msg = conn.recv()
                    except EOFError:
                        open_ctrls.discard(conn)
                        recorder.worker_ended(w)
                        if w not in reported:  # its pipe closed without a word: it died
                            procs[w].join(timeout=1)
                            self._fail(
                                f"load worker {w} (pid {procs[w].pid}) died: "
                                f"{exit_text(procs[w].exitcode)}"
                            )
                        continue
                    why = dispatch_control(msg, w, recorder, self.stats, reported)
                    if why is not None:
                        self._fail(why)
            recorder.tick()
            if self.should_stop is not None and not self.interrupted and self.should_stop():
                self.interrupted = True
            if (self.interrupted or self.failure) and stop_deadline is None:
                self._stop(ctrls)
                stop_deadline = time.monotonic() + STOP_GRACE_S

    def _fail(self, message: str) -> None:
        if self.failure is None:
            self.failure = message

    def _stop(self, ctrls: list[Connection]) -> None:
        if self.stop_sent:
            return
        self.stop_sent = True
        for c in ctrls:
            with contextlib.suppress(OSError):  # that worker has already ended
                c.send(Stop())
