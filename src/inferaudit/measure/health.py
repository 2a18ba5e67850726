"""Client health during a run: is the client itself quiet enough for its timings to be trusted?

The load client is part of the measurement (DESIGN §10). While the load runs, every worker
samples per window (default 1 s, aligned to the run's epoch; ``start_ns``/``end_ns`` are on the
records' clock):

  loop delay    a timer every ``LOOP_TICK_S`` (2 ms) notes how late it woke. Each lateness is
                weighted by the time it lasted, so ``loop_delay_p99_ms`` is "the event loop was
                late by more than this for 1% of the window's time": a 300 ms stall in a 1 s
                window gives ~300 ms, however few timer wake-ups it let through. A stall
                counts, whole, in every window it touches (its late reads land in one of
                them). ``loop_delay_max_ms`` is the longest lateness.
  stalls        every wake-up late by ``STALL_MS`` (1 ms) or more, as the stretch from the
                wake-up before it to this one, ``(worker, start_ns, end_ns)`` on the records'
                clock, in the window where it ended: while a stretch lasted, the loop may not have
                read a byte. A loop blocked for longer than ``LOOP_TICK_S + STALL_MS`` always
                leaves one. A worker whose sample is missing from a window (blocked or gone) is
                taken as stalled over the whole window. Judges charge a timing signal to the
                stalls of its own worker (``judge.noise.Stalls``); windows written before stalls
                were recorded have ``stalls = None`` and are judged by ``healthy`` alone.
  send lag      actual send - scheduled send of the requests sent in the window (p99, nearest
                rank; None when none was sent).
  CPU           ``time.process_time()`` of each worker and of the parent.
  coalescing    of the content chunks of the requests that ended in the window, those that had
                a chunk before them in their request: the share that came in the same socket
                read as that chunk (``coalesced_share``; None without such chunks). A server
                that batches its writes raises it too, so it is reported, not used for
                ``healthy``.

The parent merges the workers' samples into one :class:`HealthWindow` per window (loop delay and
send lag: the worst worker's; CPU: all client processes' seconds / wall seconds / cores) and adds
the host's load average and steal share (``/proc/stat``, where readable), measured between its
own window boundaries (within its 50 ms poll). It appends each window to ``health.jsonl`` as the
run goes, once a TTFT is known (the windows before the first token wait for it).

``healthy``: both the loop delay p99 and the send lag p99 are within the client lag the error
budget allows (``measure.budget.lag_bound`` of the run's TTFT p50 so far, from the actual send;
a protocol's fixed ``max_client_lag_p99_ms`` when it states one). Judges take the windows as
``Sequence[HealthWindow]`` (:func:`read_health`).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter_ns
from typing import IO, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from inferaudit.errors import ConfigError, StorageError
from inferaudit.measure.budget import lag_bound
from inferaudit.measure.protocol import RunSpec
from inferaudit.measure.records import Record, file_lines

__all__ = [
    "HEALTH_WINDOW_S",
    "LOOP_TICK_S",
    "HealthRecorder",
    "HealthSample",
    "HealthSampler",
    "HealthWindow",
    "read_health",
]

HEALTH_WINDOW_S = 1.0
LOOP_TICK_S = 0.002
STALL_MS = 1.0
MISSING_AFTER_WINDOWS = 3  # a worker silent this many windows past one: that window is judged
_NS = 1_000_000_000
_MS = 1_000_000


class HealthWindow(BaseModel):
    """The client's health over one window of a run (one line of ``health.jsonl``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start_ns: int
    end_ns: int
    loop_delay_p99_ms: float | None  # time-weighted, worst worker; None: no worker sampled
    loop_delay_max_ms: float | None
    send_lag_p99_ms: float | None  # None: nothing was sent in the window
    client_cpu_util: float  # client processes' CPU seconds / wall seconds / cores
    loadavg1: float | None
    steal_share: float | None  # None where /proc/stat is not readable
    coalesced_share: float | None  # None: no content chunk with one before it
    allowed_lag_ms: float  # the bound both lags were held to
    healthy: bool
    reason: str | None  # why not healthy, with the numbers
    # The phase whose load these windows timed: each run of the load runner (the measured load,
    # an audit block after it) has its own clock origin, and its records are judged only
    # against its own windows (``epoch_phase``).
    phase: str = "measure"
    # (worker, start_ns, end_ns) of each loop stall that ended in the window; None: not recorded
    stalls: tuple[tuple[int, int, int], ...] | None = None


def epoch_phase(phase: str) -> str:
    """The phase whose health windows (and clock origin) a record of ``phase`` shares: warm-up
    and measured requests are one load; any other phase was sent by a load of its own."""
    return "measure" if phase in ("measure", "warmup") else phase


def read_health(path: Path) -> list[HealthWindow]:
    """The windows of a ``health.jsonl``; an empty list when the file is absent (v1 runs).

    A final line without a newline (a write cut short by a crash) is ignored.
    """
    out = []
    try:
        for number, line in file_lines(path):  # streamed: one line at a time
            try:
                out.append(HealthWindow.model_validate_json(line))
            except ValidationError as exc:
                first = str(exc).splitlines()[0]
                raise ConfigError(f"{path}:{number}: bad health window: {first}") from None
    except FileNotFoundError:
        return []
    return out


# --- worker side ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HealthSample:
    """One worker's account of one window (a pipe message to the parent)."""

    worker: int
    window: int  # index k: [epoch + k * window, epoch + (k + 1) * window)
    loop_delays_ms: tuple[tuple[float, float], ...]  # (lateness ms, weight ms) of each wake-up
    lag_p99_ms: float | None
    cpu_s: float
    chunks: int
    coalesced: int
    stalls: tuple[tuple[int, int], ...] = ()  # (start, end) ns from the epoch: STALL_MS or later


@dataclass(slots=True)
class _Acc:
    delays: list[tuple[float, float]] = field(default_factory=list)
    lags: list[int] = field(default_factory=list)
    stalls: list[tuple[int, int]] = field(default_factory=list)


class HealthSampler:
    """Runs in a worker's event loop from the epoch on; ``emit`` gets each window's sample.

    The worker calls :meth:`lag` with the send lag (ns) of every request it sends and gives the
    :class:`~inferaudit.measure.load.client.ReadMeter` its requests count reads into.
    """

    def __init__(
        self,
        worker: int,
        epoch_ns: int,
        window_ns: int,
        meter: _Meter,
        emit: Callable[[HealthSample], None],
    ) -> None:
        self.worker = worker
        self.epoch = epoch_ns
        self.window_ns = window_ns
        self.meter = meter
        self.emit = emit
        self.acc: dict[int, _Acc] = {}
        self.k = 0  # the window being sampled
        self.cpu0 = time.process_time()
        self.chunks0 = self.coalesced0 = 0

    def _window(self, now: int) -> int:
        return max(0, (now - self.epoch) // self.window_ns)

    def _acc(self, k: int) -> _Acc:
        acc = self.acc.get(k)
        if acc is None:
            acc = self.acc[k] = _Acc()
        return acc

    def lag(self, lag_ns: int) -> None:
        self._acc(self._window(perf_counter_ns())).lags.append(lag_ns)

    async def run(self) -> None:
        """Sample until cancelled (the worker cancels it when its load is done)."""
        tick = int(LOOP_TICK_S * _NS)
        while (delay := self.epoch - perf_counter_ns()) > 0:
            await asyncio.sleep(delay / _NS)
        due = perf_counter_ns() + tick
        while True:
            await asyncio.sleep(max(0, due - perf_counter_ns()) / _NS)
            now = perf_counter_ns()
            self._late(due, now, tick)
            due = now + tick

    def _late(self, due: int, now: int, tick: int) -> None:
        """Note a wake-up ``now`` for a timer due at ``due``: its lateness, weighted by the time
        the stretch since the last wake-up lasted (at most a window), in every window that the
        stretch touches."""
        late_ms = max(0, now - due) / _MS
        start = due - tick
        weight_ms = min(now - start, self.window_ns) / _MS
        for k in range(self._window(start), self._window(now) + 1):
            self._acc(k).delays.append((late_ms, weight_ms))
        current = self._window(now)
        if late_ms >= STALL_MS:
            self._acc(current).stalls.append((start - self.epoch, now - self.epoch))
        if current > self.k:
            self.flush(upto=current)

    def flush(self, upto: int | None = None) -> None:
        """Emit the windows before ``upto`` (None: every window, the current one included)."""
        last = self._window(perf_counter_ns()) + 1 if upto is None else upto
        cpu = time.process_time()
        meter = self.meter
        for k in range(self.k, last):
            acc = self.acc.pop(k, _Acc())
            first = k == self.k
            self.emit(
                HealthSample(
                    worker=self.worker,
                    window=k,
                    loop_delays_ms=tuple(acc.delays),
                    stalls=tuple(acc.stalls),
                    lag_p99_ms=_p99([x / _MS for x in acc.lags]),
                    cpu_s=cpu - self.cpu0 if first else 0.0,  # CPU is read once per flush
                    chunks=meter.chunks - self.chunks0 if first else 0,
                    coalesced=meter.coalesced - self.coalesced0 if first else 0,
                )
            )
            if first:
                self.cpu0, self.chunks0, self.coalesced0 = cpu, meter.chunks, meter.coalesced
        self.k = max(self.k, last)


class _Meter(Protocol):  # load.client.ReadMeter (measure.health does not import the client)
    chunks: int
    coalesced: int


def _p99(values: Iterable[float]) -> float | None:
    """Nearest-rank 99th percentile; None for no values."""
    xs = sorted(values)
    if not xs:
        return None
    return xs[max(0, math.ceil(0.99 * len(xs)) - 1)]


def _weighted_p99(samples: Iterable[tuple[float, float]]) -> float | None:
    """The value exceeded for at most 1% of the total weight."""
    xs = sorted(samples)
    total = sum(w for _, w in xs)
    if total <= 0:
        return None
    acc = 0.0
    for value, weight in xs:
        acc += weight
        if acc >= 0.99 * total:
            return value
    return xs[-1][0]


# --- parent side ----------------------------------------------------------------------------


def _proc_stat() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs, or None where /proc/stat is not readable."""
    try:
        with open("/proc/stat", "rb") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != b"cpu":
        return None
    values = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return values[7], sum(values)


@dataclass(slots=True)
class _Host:
    cpu_s: float  # the parent's CPU seconds in the window
    loadavg1: float | None
    steal_share: float | None


class HealthRecorder:
    """The parent's half: merges samples into windows and appends them to ``path``."""

    def __init__(
        self,
        path: Path | None,
        spec: RunSpec,
        epoch_ns: int,
        workers: Iterable[int],
        window_ns: int = int(HEALTH_WINDOW_S * _NS),
        phase: str = "measure",
    ) -> None:
        self.path = path
        self.phase = phase
        self.spec = spec
        self.epoch = epoch_ns
        self.window_ns = window_ns
        self.live = set(workers)
        self.samples: dict[int, dict[int, HealthSample]] = {}
        self.host: dict[int, _Host] = {}
        self.next = 0  # the next window to write
        self.pending: list[HealthWindow] = []  # merged, waiting for a TTFT to judge them by
        self.windows: list[HealthWindow] = []
        self.ttft_ms = array("d")
        self._k = 0
        self._cpu = time.process_time()
        self._stat = _proc_stat()
        self._fh: IO[bytes] | None = None
        self.cores = os.cpu_count() or 1

    def sample(self, s: HealthSample) -> None:
        if s.window < self.next:
            return  # that window was written without it (its worker was reported silent)
        self.samples.setdefault(s.window, {})[s.worker] = s

    def worker_ended(self, worker: int) -> None:
        self.live.discard(worker)

    def record(self, rec: Record) -> None:
        if rec.ok and rec.first_content_ns is not None and rec.sent_ns is not None:
            self.ttft_ms.append((rec.first_content_ns - rec.sent_ns) / _MS)

    def tick(self, now: int | None = None) -> None:
        """Called by the parent often (every poll): closes host windows, writes merged ones."""
        now = perf_counter_ns() if now is None else now
        k = max(0, (now - self.epoch) // self.window_ns)
        if k > self._k:
            self._host_window(self._k)
            self._k = k
        while self.next < self._k:
            got = self.samples.get(self.next, {})
            missing = self.live - got.keys()
            if missing and self._k - self.next < MISSING_AFTER_WINDOWS:
                break
            self._merge(self.next, self.epoch + (self.next + 1) * self.window_ns, missing)
            self.next += 1
        if self.pending:
            self._write(final=False)

    def close(self, end_ns: int) -> list[HealthWindow]:
        """The run has ended at ``end_ns``: write every window left; return all windows."""
        self._host_window(self._k)
        self.live.clear()
        last = max([self._k, *self.samples]) if self.samples else self._k
        while self.next <= last:  # the last ones are partial; after every worker ended: none
            end = min(end_ns, self.epoch + (self.next + 1) * self.window_ns)
            if self.samples.get(self.next) and end > self.epoch + self.next * self.window_ns:
                self._merge(self.next, end, set())
            self.next += 1
        self._write(final=True)
        if self._fh is not None:
            self._fh.close()
        return self.windows

    def _host_window(self, k: int) -> None:
        cpu = time.process_time()
        stat = _proc_stat()
        steal = None
        if stat is not None and self._stat is not None and stat[1] > self._stat[1]:
            steal = (stat[0] - self._stat[0]) / (stat[1] - self._stat[1])
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = None
        self.host[k] = _Host(cpu - self._cpu, load, steal)
        self._cpu, self._stat = cpu, stat

    def _merge(self, k: int, end: int, missing: set[int]) -> None:
        got = self.samples.pop(k, {})
        host = self.host.pop(k, _Host(0.0, None, None))
        start = self.epoch + k * self.window_ns
        delays = [_weighted_p99(s.loop_delays_ms) for s in got.values()]
        delays_known = [d for d in delays if d is not None]
        worst = [max((d for d, _ in s.loop_delays_ms), default=0.0) for s in got.values()]
        lags = [s.lag_p99_ms for s in got.values() if s.lag_p99_ms is not None]
        chunks = sum(s.chunks for s in got.values())
        stalls = sorted(
            [(w, a, b) for w, s in got.items() for a, b in s.stalls]
            + [(w, start - self.epoch, end - self.epoch) for w in missing]
        )
        coalesced = sum(s.coalesced for s in got.values())
        wall_s = max(end - start, 1) / _NS
        cpu = host.cpu_s + sum(s.cpu_s for s in got.values())
        self.pending.append(
            HealthWindow(
                start_ns=start - self.epoch,
                end_ns=end - self.epoch,
                loop_delay_p99_ms=max(delays_known) if delays_known else None,
                loop_delay_max_ms=max(worst) if worst else None,
                send_lag_p99_ms=max(lags) if lags else None,
                client_cpu_util=cpu / wall_s / self.cores,
                loadavg1=host.loadavg1,
                steal_share=host.steal_share,
                coalesced_share=coalesced / chunks if chunks else None,
                allowed_lag_ms=0.0,  # set by _judge
                healthy=False,
                phase=self.phase,
                stalls=tuple(stalls),
                reason=(
                    f"worker {min(missing)} sent no health sample (blocked or gone)"
                    if missing
                    else None
                ),
            )
        )

    def _write(self, final: bool) -> None:
        ttft = float(np.median(np.frombuffer(self.ttft_ms))) if len(self.ttft_ms) else None
        fixed = self.spec.max_client_lag_p99_ms is not None
        if ttft is None and not fixed and not final:
            return  # judge them when a TTFT is known
        bound = lag_bound(self.spec, ttft)
        lines = []
        for w in self.pending:
            judged = _judge(w, bound.bound_ms, bound.describe())
            self.windows.append(judged)
            lines.append(judged.model_dump_json().encode() + b"\n")
        self.pending.clear()
        if self.path is None or not lines:
            return
        try:
            if self._fh is None:
                self._fh = open(self.path, "ab")  # noqa: SIM115 - closed in close()
            self._fh.write(b"".join(lines))
            self._fh.flush()
        except OSError as exc:
            raise StorageError(f"{self.path}: cannot write: {exc.strerror or exc}") from None


def _judge(w: HealthWindow, allowed: float, why: str) -> HealthWindow:
    problems = [] if w.reason is None else [w.reason]
    lags = (("loop delay p99", w.loop_delay_p99_ms), ("send lag p99", w.send_lag_p99_ms))
    over = [f"{name} {v:.3g} ms" for name, v in lags if v is not None and v > allowed]
    if over:
        problems.append(f"{' and '.join(over)} > {allowed:.3g} ms allowed ({why})")
    if w.loop_delay_p99_ms is None and not problems:
        problems.append("no loop delay sampled")
    return w.model_copy(
        update={
            "allowed_lag_ms": allowed,
            "healthy": not problems,
            "reason": "; ".join(problems) or None,
        }
    )
