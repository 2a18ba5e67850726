"""The load runner: spreads a run's requests over worker processes and records every one.

    1. The parent (this module) builds the request plans' source (reading any dataset once),
       the target and, for open loop, the full arrival schedule
       (``schedule.arrival_offsets_ns``, drawn from the run's secret seed where it has one).
    2. It spawns ``spec.workers`` processes (:mod:`~.worker`; fewer when there is less work
       than workers). Each runs its own event loop (uvloop where installed) and one
       connection pool (:mod:`~.pool`), opens its keep-alive connections (closed loop: one
       per slot; open loop: up to ``OPEN_LOOP_CONNECTIONS``) with ``GET /models``, and reports
       ready; the parent measures each worker's clock offset (ping/pong on
       ``perf_counter_ns``; on one host CLOCK_MONOTONIC is shared, so the offset is recorded,
       never applied). The messages are typed (:mod:`~.messages`).
    3. The parent fixes the epoch (a ``perf_counter_ns`` value shortly ahead) and sends it.
       Open loop: worker ``w`` sends schedule positions ``w, w + W, ...`` at their absolute
       times. Closed loop: each worker runs its share of the slots; a slot takes the next
       position from a counter shared by all workers and its scheduled time is when the slot
       became free. Positions ``< load.warmup`` are the warm-up phase.

       Open loop with ``load.max_concurrency = C``: ``min(workers, C, planned)`` workers, the cap
       split between them as closed-loop slots are (``split_concurrency``; arrivals still
       round-robin). Each worker holds at most its share in flight (exact: a slot gate in its
       event loop, :mod:`~.gate`), so the run holds at most ``C`` (the sum of the shares; a
       worker whose share is busy does not borrow another's free slot). A request due at its
       scheduled time waits for a slot; ``slot_ns`` records when one became free for it.
       Latency stays measured from ``scheduled_ns``; the client's lag from ``max(scheduled,
       slot)`` (the wait for a slot is the protocol's, not the client's).

       Multi-turn sessions (``workload.sessions``): a position is a session whose turns one
       worker sends in order, turn ``t >= 1`` planned from the real answers before it and due
       ``sessions.think_time_s`` after the previous turn's last byte (:mod:`~.worker` has the
       rules). ``load.requests`` then counts sessions (positions), not turns, and so does
       ``planned``; ``turns_sent`` counts the later turns sent. The answers travel in the
       records' ``output_text``, so a session workload must keep it whole
       (``keep_output_text`` on, ``max_text_bytes`` None): otherwise it is refused.
    4. A worker writes each record, as it finishes, as one JSON line to a pipe; the parent
       validates each line as a :class:`~inferaudit.measure.records.Record` and is the one
       writer of ``records.jsonl`` (``RecordWriter``, flushed per line), and calls
       ``on_record`` with each record. Health samples (``measure.health``) are merged into
       ``health_path`` as the run goes.
    5. The end rule (duration-bounded runs): the measured window (``load.duration_s`` from the
       first measured request's scheduled time), then ``load.grace_s`` for the requests in
       flight; those still running then are cut off and recorded as ``cancelled`` with their
       partial times. Count-bounded runs end when every request has ended (each one is bounded
       by ``timeout_s``, ``first_byte_timeout_s`` and ``stall_timeout_s``).
    6. SIGINT/SIGTERM (or ``should_stop()`` returning True): the parent tells the workers to
       stop; they send nothing more and cut off the requests in flight, which are recorded as
       ``cancelled``. Workers start with SIGINT blocked and then ignore it, so a Ctrl-C to the
       process group is handled once, by the parent, even while the workers are still starting.
    7. A worker that dies (killed, crashed) or reports a bug ends the run: the others are
       stopped as in (6), every record already written is kept, and :class:`WorkerError` names
       the worker and its exit code in one line. A full disk ends it the same way with
       :class:`~inferaudit.errors.StorageError`; ``records.jsonl`` then ends with a whole line.

Workers are started with multiprocessing's "spawn" method (no fork of a threaded parent), so a
script calling :func:`run_load` needs the usual ``if __name__ == "__main__":`` guard.

``backend``: a :class:`~.ray_backend.RayBackend` runs the same workers as Ray actors over a
cluster (open loop only; :mod:`~.ray_backend` says what differs: clocks, lost nodes). None: the
local processes above, unchanged.

Positions are request ids: ``plan(i)`` of the spec's ``planner.Planner`` (or of the
``planner`` given), or ``plans[i]`` of an explicit list (whose records keep each plan's own id,
phase and tag; explicit plans are single requests, never sessions). A session's later turns
have their own ids (the planner's ``turn_id``).
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from inferaudit.errors import ConfigError
from inferaudit.measure.health import HEALTH_WINDOW_S, HealthWindow
from inferaudit.measure.load.client import Target, api_key_for, timeouts_of
from inferaudit.measure.load.messages import WorkerArgs
from inferaudit.measure.load.parent import Parent, WorkerInfo
from inferaudit.measure.load.plans import PlanSource, SessionSource
from inferaudit.measure.load.ray_backend import (
    RayBackend,
    RayInfo,
    lost_plan_record,
    run_on_ray,
)
from inferaudit.measure.load.schedule import schedule_offsets_ns, split_concurrency
from inferaudit.measure.planner import AuditLookup, Planner
from inferaudit.measure.protocol import RunSpec, Workload
from inferaudit.measure.records import Record
from inferaudit.measure.workload import RequestPlan

__all__ = ["LoadResult", "WorkerInfo", "run_load"]

_NS = 1_000_000_000


@dataclass(frozen=True)
class LoadResult:
    """What happened, beside the records: counts, interruption, the epoch and the workers."""

    records_path: Path
    epoch_ns: int  # perf_counter_ns value of the run's time zero
    epoch_wall_ns: int  # the same instant on the wall clock (time.time_ns)
    mode: str  # "open" | "closed"
    # requests the schedule holds (sessions, for a multi-turn workload; None: closed loop
    # bounded by duration)
    planned: int | None
    sent: int  # requests sent (every turn of a session counts)
    finished: int  # records written (cancelled ones included)
    cancelled: int  # of which cut off (end rule, stop, signal): error class "cancelled"
    interrupted: bool
    elapsed_s: float  # from the epoch to the last worker's end
    turns_sent: int = 0  # of ``sent``: session turns after the first (turn >= 1)
    # sessions that ended with turns left unsent (a failed or cancelled turn, the window's end,
    # a stop)
    sessions_ended_early: int = 0
    workers: tuple[WorkerInfo, ...] = field(default_factory=tuple)
    health: tuple[HealthWindow, ...] = field(default_factory=tuple)
    ray: RayInfo | None = None  # the Ray backend's clocks and losses (None: local workers)

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
        del data["health"]  # the windows are in health.jsonl
        data["health_windows"] = len(self.health)
        data["unhealthy_windows"] = sum(not w.healthy for w in self.health)
        if self.ray is None:
            del data["ray"]  # a local run's meta.json is as it always was
        else:
            data["backend"] = "ray"
            data["ray"] = self.ray.to_json()
        return data


def run_load(
    spec: RunSpec,
    records_path: Path,
    *,
    api_key: str | None = None,
    plans: Sequence[RequestPlan] | None = None,
    injected: Mapping[int, RequestPlan] | None = None,
    audit: AuditLookup | None = None,
    on_record: Callable[[Record], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    health_path: Path | None = None,
    health_window_s: float = HEALTH_WINDOW_S,
    health_phase: str = "measure",
    planner: PlanSource | None = None,
    backend: RayBackend | None = None,
) -> LoadResult:
    """Run ``spec``'s load, appending one record per request it sent to ``records_path``.

    ``api_key``: sent as ``Authorization: Bearer``; None reads the variable named by
    ``spec.endpoint.api_key_env`` (if any). It travels to the workers in memory only.
    ``plans``: send exactly these (in order, under ``spec.load``'s pattern) instead of the
    workload; ``requests``/``duration_s`` are then ignored. ``injected``: plans that replace the
    workload's at their ids; ``audit``: a lookup computing such plans on demand (in the workers).
    ``on_record`` is called in this process with each record as it
    is written; ``should_stop`` is polled every 50 ms. ``health_path``: where the client health
    windows are appended (None: sampled, returned in the result, not written). ``planner``:
    plan the positions with it instead of ``Planner.from_spec(spec, injected, audit)`` (a
    :class:`~.plans.SessionSource` for a multi-turn workload). ``backend``: run on Ray (see
    the module). Returns when every worker has
    ended; raises ``WorkerError`` / ``StorageError`` as the module says, ``ConfigError`` for a
    session workload that does not keep its answers whole.
    """
    load = spec.load
    plan_list = tuple(plans) if plans is not None else None
    if plan_list is not None:
        planner = None
    elif planner is None:
        planner = Planner.from_spec(spec, injected=injected, audit=audit)
    think_ns = None if plan_list is not None else _think_ns(spec.workload, planner)
    if api_key is None:
        api_key = api_key_for(spec.endpoint)
    target = Target.of(spec.endpoint, api_key, spec.workload, timeouts_of(load))
    ctx = mp.get_context("spawn")
    shared = None
    health_ns = max(1, int(health_window_s * _NS))
    grace_ns = int(load.grace_s * _NS)
    bounded_by_time = plan_list is None and load.duration_s is not None
    duration_ns = int(load.duration_s * _NS) if bounded_by_time and load.duration_s else None
    args: list[WorkerArgs] = []
    if load.concurrency is not None:
        mode = "closed"
        slots = [s for s in split_concurrency(load.concurrency, spec.workers) if s > 0]
        if plan_list is not None:
            limit: int | None = len(plan_list)
        elif load.requests is not None:
            limit = load.warmup + load.requests
        else:
            limit = None
        planned = limit
        shared = ctx.Array("q", 2)  # [next position, measured-window start (perf ns, 0: none)]
        for w, n in enumerate(slots):
            args.append(
                WorkerArgs(
                    w, len(slots), target, planner, plan_list, None, n, limit, load.warmup,
                    duration_ns, None, grace_ns, health_ns, think_ns=think_ns,
                )
            )  # fmt: skip
    else:
        mode = "open"
        count = len(plan_list) if plan_list is not None else None
        offsets = schedule_offsets_ns(spec, count)
        planned = len(offsets)
        n_workers = max(1, min(spec.workers, planned, load.max_concurrency or planned))
        caps: list[int | None] = [None] * n_workers
        if load.max_concurrency is not None:
            caps = list(split_concurrency(load.max_concurrency, n_workers))
        start = int(offsets[load.warmup]) if duration_ns and planned > load.warmup else None
        for w in range(n_workers):
            args.append(
                WorkerArgs(
                    w, n_workers, target, planner, plan_list, offsets[w::n_workers], 0, None,
                    load.warmup, duration_ns if start is not None else None, start, grace_ns,
                    health_ns, cap=caps[w], think_ns=think_ns,
                )
            )  # fmt: skip
    ray_info: RayInfo | None = None
    if backend is not None:
        source = planner

        def lost_record(a: WorkerArgs, position: int, message: str) -> Record:
            if plan_list is not None:
                plan = plan_list[position]
            else:
                assert source is not None
                plan = source.plan(position)
            assert a.offsets is not None
            scheduled = int(a.offsets[(position - a.index) // a.stride])
            return lost_plan_record(plan.id, a.index, plan.phase, plan.tag, scheduled, message)

        out, ray_info = run_on_ray(
            backend, args, records_path, spec, on_record=on_record, should_stop=should_stop,
            health_path=health_path, health_ns=health_ns, health_phase=health_phase,
            lost_record=lost_record,
        )  # fmt: skip
    else:
        parent = Parent(
            ctx, args, shared, records_path, spec, on_record, should_stop, health_path,
            health_ns, health_phase,
        )  # fmt: skip
        out = parent.run()
    return LoadResult(
        records_path=records_path,
        epoch_ns=out.epoch_ns,
        epoch_wall_ns=out.epoch_wall_ns,
        mode=mode,
        planned=planned,
        sent=sum(i.sent for i in out.workers),
        finished=out.finished,
        cancelled=out.cancelled,
        interrupted=out.interrupted,
        elapsed_s=out.elapsed_s,
        turns_sent=sum(i.turns_sent for i in out.workers),
        sessions_ended_early=sum(i.sessions_ended_early for i in out.workers),
        workers=out.workers,
        health=out.health,
        ray=ray_info,
    )


def _think_ns(workload: Workload, planner: PlanSource | None) -> int | None:
    """A multi-turn workload's think time in ns (None: single requests). The protocol already
    refuses a session workload whose records would not keep each answer whole."""
    sessions = workload.sessions
    if sessions is None:
        return None
    if not isinstance(planner, SessionSource):
        raise ConfigError(
            "workload.sessions: this planner cannot plan multi-turn sessions (no turns/turn_plan)"
        )
    return round(sessions.think_time_s * _NS)
