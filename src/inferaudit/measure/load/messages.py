"""The messages between the load runner's parent and its workers (typed; pickled on a pipe).

Each worker has two pipes to the parent:

* the control pipe (duplex, :class:`multiprocessing.connection.Connection`) carries these
  messages, in this order::

      parent -> worker   WorkerArgs
      worker -> parent   Ready
      parent -> worker   Ping ...                 worker -> parent   Pong ...
      parent -> worker   Go | Stop
      worker -> parent   HealthSample ...         (from the epoch on, one per window)
      parent -> worker   Stop                     (any time after Go: stop early)
      worker -> parent   Done | Failed            (last; then the worker exits)

* the record pipe (one way, worker -> parent) carries the records as JSON lines
  (``Record.to_line``); the parent validates each line before writing it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inferaudit.measure.health import HealthSample
from inferaudit.measure.load.client import Target
from inferaudit.measure.load.plans import PlanSource
from inferaudit.measure.workload import RequestPlan

__all__ = [
    "Done",
    "Failed",
    "Go",
    "HealthSample",
    "Ping",
    "Pong",
    "Ready",
    "Stop",
    "WorkerArgs",
    "WorkerStats",
]


@dataclass(frozen=True)
class WorkerArgs:
    """What one worker sends, and how (the first message on its control pipe)."""

    index: int
    stride: int  # open loop: this worker sends positions index, index + stride, ...
    target: Target
    planner: PlanSource | None  # a SessionSource when think_ns is set
    plans: tuple[RequestPlan, ...] | None
    offsets: np.ndarray | None  # open loop: offsets (ns) of this worker's positions
    slots: int  # closed loop: concurrent requests of this worker
    limit: int | None  # closed loop: positions available (None: until duration)
    warmup: int
    duration_ns: int | None  # the measured window (None: the run is bounded by count)
    window_start_ns: int | None  # open loop: offset of the first measured arrival
    grace_ns: int  # after the window, in-flight requests get this long, then are cancelled
    health_window_ns: int
    cap: int | None = None  # open loop with max_concurrency: this worker's share of the cap
    think_ns: int | None = None  # multi-turn sessions: think time after an answer (None: none)


@dataclass(frozen=True)
class Ready:
    pid: int


@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class Pong:
    perf_ns: int


@dataclass(frozen=True)
class Go:
    epoch_ns: int


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class WorkerStats:
    sent: int  # requests started
    finished: int  # records written (cancelled ones included)
    cancelled: int  # of which cut off by the end rule or a stop
    max_in_flight: int
    connections_opened: int  # keep-alive connections opened before the epoch
    cpu_s: float  # user + system CPU of the worker process, start-up included
    cpu_run_s: float  # the part of it spent from the epoch to the end
    nice: int | None = None  # the niceness the worker ran at (see worker.CLIENT_NICE)
    turns_sent: int = 0  # of ``sent``: session turns after the first (turn >= 1)
    # sessions that ended with turns left unsent: a turn failed or was cancelled, the next
    # turn fell after the measured window, or the run was stopped
    sessions_ended_early: int = 0


@dataclass(frozen=True)
class Done:
    stats: WorkerStats


@dataclass(frozen=True)
class Failed:
    """The worker hit a bug or could not run; ``message`` is one line."""

    message: str
