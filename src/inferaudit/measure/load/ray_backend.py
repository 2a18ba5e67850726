"""The load runner over a Ray cluster (``--backend ray``): the same workers, on other machines.

The contract is :mod:`~.runner`'s (steps 1-7), with these differences:

* Placement: a placement group of ``workers`` one-CPU bundles, strategy SPREAD, puts one Ray
  actor (:class:`NodeWorker`) per bundle, spread over the nodes. Each actor starts the SAME
  worker process as the local runner (:func:`~.worker.worker_entry`, multiprocessing "spawn",
  on its node) and relays its two pipes to the driver: the driver calls the actor's methods
  (``start``, ``ping``, ``go``, ``stop``, ``poll``), and ``poll`` hands back the record lines
  and control messages that arrived since the last call. The driver (this process) is still
  the only writer of ``records.jsonl``; records stream back as requests finish (polled every
  ``_POLL_S``).
* Open loop only: the absolute schedule is partitioned as locally (worker ``w`` sends positions
  ``w, w + W, ...``). A closed loop's shared position counter does not cross machines, so a
  closed-loop (``concurrency``) spec is refused with one line.
* Clocks: before the epoch and again after the worker's end, the driver pings each actor
  ``CLOCK_PINGS`` times; the ping with the smallest round trip gives the offset (actor
  ``perf_counter_ns`` minus the driver's at the round trip's midpoint) and its uncertainty
  (half that round trip). The actor and its worker share their host's CLOCK_MONOTONIC, so the
  actor's clock is the worker's. The schedule is in the driver's clock: each worker gets the
  epoch translated by its measured offset, so record times (relative to the epoch) are in the
  driver's frame. :class:`ClockReading` of each worker is in the result (``meta.json``);
  :func:`clock_problem` says when the uncertainty exceeds the run's error budget.
* Faults: an actor (or its node) lost mid-run does not stop the others. Every record it sent
  before is kept; each of its positions without a record is recorded as ``cancelled`` (the
  client's fault, never the endpoint's) with a message naming the lost node, and the result
  lists the loss (``RayInfo.lost``). A worker process that dies while its actor lives, or a
  worker bug, ends the run as locally (:class:`~inferaudit.errors.WorkerError`).
* ``should_stop``/SIGINT/SIGTERM: the driver calls every actor's ``stop``.

Ray is optional (the ``ray`` extra): this module imports it only when a run uses it.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter_ns
from typing import Any

import orjson
from pydantic import ValidationError

from inferaudit.errors import ConfigError, WorkerError
from inferaudit.measure.health import HealthRecorder
from inferaudit.measure.load.messages import WorkerArgs, WorkerStats
from inferaudit.measure.load.parent import (
    EPOCH_LEAD_NS,
    ParentOutcome,
    WorkerInfo,
    dispatch_control,
    exit_text,
)
from inferaudit.measure.load.ray_actor import Batch, NodeWorker, ray_module
from inferaudit.measure.protocol import ErrorBudget, RunSpec
from inferaudit.measure.records import CANCELLED, Record, RecordWriter

__all__ = [
    "CLOCK_PINGS",
    "ClockReading",
    "NodeWorker",
    "RayBackend",
    "RayInfo",
    "clock_problem",
    "run_on_ray",
]

CLOCK_PINGS = 16  # ping rounds per clock measurement (the minimum round trip is kept)
START_TIMEOUT_S = 180.0  # the cluster places the actors and their workers report ready
STOP_GRACE_S = 30.0
_POLL_S = 0.05
_CALL_TIMEOUT_S = 30.0  # one actor call; longer: the actor is taken as lost


@dataclass(frozen=True)
class RayBackend:
    """Where and how wide: ``address`` for ``ray.init`` ("auto": the running cluster, or
    HOST:PORT); ``workers``: Ray actors (None: one per CPU the cluster has)."""

    address: str = "auto"
    workers: int | None = None


@dataclass(frozen=True)
class ClockReading:
    """One worker's clock against the driver's, before the run and after it (ns)."""

    worker: int
    node_id: str
    node_ip: str
    offset_before_ns: int  # actor perf_counter_ns minus the driver's
    rtt_before_ns: int  # round trip of the best ping before
    offset_after_ns: int | None  # None: the worker was lost, nothing to ask after
    rtt_after_ns: int | None

    @property
    def uncertainty_ns(self) -> int:
        """Half the worst best round trip: the offset is known to within this."""
        return max(self.rtt_before_ns, self.rtt_after_ns or 0) // 2

    @property
    def drift_ns(self) -> int | None:
        if self.offset_after_ns is None:
            return None
        return self.offset_after_ns - self.offset_before_ns

    def to_json(self) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "node_id": self.node_id,
            "node_ip": self.node_ip,
            "offset_before_ns": self.offset_before_ns,
            "rtt_before_ns": self.rtt_before_ns,
            "offset_after_ns": self.offset_after_ns,
            "rtt_after_ns": self.rtt_after_ns,
            "uncertainty_ns": self.uncertainty_ns,
            "drift_ns": self.drift_ns,
        }


@dataclass(frozen=True)
class RayInfo:
    """What the Ray backend adds to the load result (``meta.json`` ``load.ray``)."""

    address: str
    nodes: int  # distinct nodes the workers ran on
    clocks: tuple[ClockReading, ...]
    lost: tuple[str, ...] = ()  # one line per worker lost mid-run
    lost_requests: int = 0  # positions of lost workers recorded as cancelled by the driver

    @property
    def clock_uncertainty_ns(self) -> int:
        return max((c.uncertainty_ns for c in self.clocks), default=0)

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "nodes": self.nodes,
            "clock_uncertainty_ns": self.clock_uncertainty_ns,
            "clocks": [c.to_json() for c in self.clocks],
            "lost": list(self.lost),
            "lost_requests": self.lost_requests,
        }


def clock_problem(info: RayInfo, budget: ErrorBudget, figure_ms: float | None) -> str | None:
    """One line when the clocks' uncertainty exceeds what the error budget allows for the run's
    figure (TTFT p50; None: the budget's floor), else None."""
    allowed_ms = max(budget.share * figure_ms, budget.floor_ms) if figure_ms else budget.floor_ms
    worst_ms = info.clock_uncertainty_ns / 1e6
    if worst_ms <= allowed_ms:
        return None
    return (
        f"clock offset uncertainty {worst_ms:.3f} ms between the Ray workers and the driver "
        f"exceeds the error budget's {allowed_ms:.3f} ms"
    )


def cluster_cpus(backend: RayBackend) -> int:
    """How many workers the default is: the CPUs the cluster has (connecting to it)."""
    ray = ray_module()
    _connect(ray, backend)
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


PROBE_TIMEOUT_S = 3.0


def probe_address(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Refuse a HOST:PORT where nothing listens in one line, before ``ray.init`` (which would
    retry for a minute and then print pages). "auto" and ``ray://`` addresses are Ray's own."""
    if address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--ray-address {address!r}: not auto or HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"--ray-address {address}: no Ray head answers there ({why}); start one with "
            f"`ray start --head --port {port}`"
        ) from None


def _connect(ray: Any, backend: RayBackend) -> None:
    if ray.is_initialized():
        return
    probe_address(backend.address)
    try:
        ray.init(address=backend.address, log_to_driver=False, include_dashboard=False)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--ray-address {backend.address}: {first}") from None


class _Driver:
    def __init__(
        self,
        ray: Any,
        backend: RayBackend,
        args: list[WorkerArgs],
        records_path: Path,
        spec: RunSpec,
        positions: Callable[[WorkerArgs], Sequence[int]],
        lost_record: Callable[[WorkerArgs, int, str], Record],
        on_record: Callable[[Record], None] | None,
        should_stop: Callable[[], bool] | None,
        health_path: Path | None,
        health_ns: int,
        health_phase: str,
    ) -> None:
        self.ray = ray
        self.backend = backend
        self.args = args
        self.records_path = records_path
        self.spec = spec
        self.positions = positions
        self.lost_record = lost_record
        self.on_record = on_record
        self.should_stop = should_stop
        self.health_path = health_path
        self.health_ns = health_ns
        self.health_phase = health_phase
        self.interrupted = False
        self.stop_sent = False
        self.failure: str | None = None
        self.finished = 0
        self.cancelled = 0
        self.stats: dict[int, WorkerStats] = {}
        self.exitcodes: dict[int, int | None] = {}
        self.seen: dict[int, set[int]] = {a.index: set() for a in args}
        self.lost: dict[int, str] = {}
        self.lost_requests = 0

    def _signal(self, signum: int, frame: object) -> None:
        self.interrupted = True

    def _call(self, ref: Any) -> Any:
        return self.ray.get(ref, timeout=_CALL_TIMEOUT_S)

    def _clock(self, actor: Any) -> tuple[int, int]:
        best = (0, 1 << 62)
        for _ in range(CLOCK_PINGS):
            t0 = perf_counter_ns()
            remote = self._call(actor.ping.remote())
            t2 = perf_counter_ns()
            if t2 - t0 < best[1]:
                best = (remote - (t0 + t2) // 2, t2 - t0)
        return best

    def run(self) -> tuple[ParentOutcome, RayInfo]:
        ray = self.ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, self._signal)
        n = len(self.args)
        pg = placement_group([{"CPU": 1}] * n, strategy="SPREAD")
        actors: list[Any] = []
        try:
            if not ray.get(pg.ready(), timeout=START_TIMEOUT_S):
                raise WorkerError(f"the Ray cluster could not place {n} one-CPU workers")
            remote_cls = ray.remote(num_cpus=1, max_restarts=0)(NodeWorker)
            for i in range(n):
                strategy = PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=i
                )
                actors.append(remote_cls.options(scheduling_strategy=strategy).remote())
            try:
                nodes = [self._call(a.node.remote()) for a in actors]
                ray.get([a.start.remote(w) for a, w in zip(actors, self.args, strict=True)],
                        timeout=START_TIMEOUT_S)  # fmt: skip
                pids = ray.get([a.ready.remote(START_TIMEOUT_S) for a in actors],
                               timeout=START_TIMEOUT_S + 10)  # fmt: skip
                for a, pid in zip(self.args, pids, strict=True):
                    if isinstance(pid, str):
                        raise WorkerError(f"load worker {a.index} failed to start on Ray: {pid}")
                before = [self._clock(a) for a in actors]
            except ray.exceptions.RayError as exc:
                raise WorkerError(f"load worker failed to start on Ray: {_first(exc)}") from None
            # (3): the epoch, in the driver's clock; each worker gets it in its own
            epoch = perf_counter_ns() + EPOCH_LEAD_NS + 20_000_000 * n  # Go reaches each in turn
            epoch_wall = time.time_ns() + (epoch - perf_counter_ns())
            recorder = HealthRecorder(
                self.health_path, self.spec, epoch, range(n), self.health_ns, self.health_phase
            )
            with RecordWriter(self.records_path) as writer:
                if self.interrupted:
                    self.stop_sent = True
                else:
                    for a, (offset, _) in zip(actors, before, strict=True):
                        self._call(a.go.remote(epoch + offset))
                    self._collect(writer, recorder, actors)
            end = perf_counter_ns()
            health = tuple(recorder.close(end))
            after: list[tuple[int, int] | None] = []
            for w, a in enumerate(actors):
                reading: tuple[int, int] | None = None
                if w not in self.lost:
                    try:
                        reading = self._clock(a)
                    except ray.exceptions.RayError:
                        reading = None
                after.append(reading)
        finally:
            for signum, handler in old.items():
                signal.signal(signum, handler)
            for a in actors:
                with contextlib.suppress(Exception):
                    ray.kill(a)
            with contextlib.suppress(Exception):
                remove_placement_group(pg)
        if self.failure is not None:
            raise WorkerError(
                f"{self.failure}; the run was stopped, the {self.finished} records written "
                f"before are kept in {self.records_path}"
            )
        clocks = tuple(
            ClockReading(
                worker=w, node_id=nodes[w][0], node_ip=nodes[w][1],
                offset_before_ns=before[w][0], rtt_before_ns=before[w][1],
                offset_after_ns=None if after[w] is None else after[w][0],  # type: ignore[index]
                rtt_after_ns=None if after[w] is None else after[w][1],  # type: ignore[index]
            )
            for w in range(n)
        )  # fmt: skip
        infos = tuple(self._info(a.index, pids[a.index], before[a.index]) for a in self.args)
        outcome = ParentOutcome(
            epoch_ns=epoch,
            epoch_wall_ns=epoch_wall,
            finished=self.finished,
            cancelled=self.cancelled,
            interrupted=self.interrupted,
            elapsed_s=max(0, end - epoch) / 1e9,
            workers=infos,
            health=health,
        )
        info = RayInfo(
            address=self.backend.address,
            nodes=len({node[0] for node in nodes}),
            clocks=clocks,
            lost=tuple(self.lost[w] for w in sorted(self.lost)),
            lost_requests=self.lost_requests,
        )
        return outcome, info

    def _info(self, index: int, pid: int, clock: tuple[int, int]) -> WorkerInfo:
        s = self.stats.get(index) or WorkerStats(0, 0, 0, 0, 0, 0.0, 0.0)
        return WorkerInfo(
            index=index,
            pid=pid,
            sent=s.sent,
            finished=s.finished,
            cancelled=s.cancelled,
            max_in_flight=s.max_in_flight,
            connections_opened=s.connections_opened,
            cpu_s=s.cpu_s,
            cpu_run_s=s.cpu_run_s,
            clock_offset_ns=clock[0],
            clock_rtt_ns=clock[1],
            exitcode=self.exitcodes.get(index),
            nice=s.nice,
            turns_sent=s.turns_sent,
            sessions_ended_early=s.sessions_ended_early,
        )

    def _collect(self, writer: RecordWriter, recorder: HealthRecorder, actors: list[Any]) -> None:
        ray = self.ray
        live = dict(enumerate(actors))
        partial: dict[int, bytes] = dict.fromkeys(live, b"")
        reported: set[int] = set()
        stop_deadline: float | None = None
        while live:
            if stop_deadline is not None and time.monotonic() > stop_deadline:
                self.failure = self.failure or (
                    f"load workers still running {STOP_GRACE_S:g} s after stop"
                )
                return
            refs = {w: a.poll.remote() for w, a in live.items()}
            for w, ref in refs.items():
                try:
                    batch: Batch = self._call(ref)
                except (ray.exceptions.RayError, TimeoutError) as exc:
                    del live[w]
                    recorder.worker_ended(w)
                    self._lose(writer, recorder, w, _first(exc))
                    continue
                lines = (partial[w] + batch.data).split(b"\n")
                partial[w] = lines.pop()
                for line in lines:
                    self._write(writer, recorder, w, line)
                for msg in batch.messages:
                    why = dispatch_control(msg, w, recorder, self.stats, reported)
                    if why is not None:
                        self._fail(why)
                if batch.ended:
                    del live[w]
                    self.exitcodes[w] = batch.exitcode
                    if partial[w]:
                        self._fail(f"load worker {w} left a partial record line")
                    if w not in reported:
                        recorder.worker_ended(w)
                        self._fail(f"load worker {w} died: {exit_text(batch.exitcode)}")
            recorder.tick()
            if self.should_stop is not None and not self.interrupted and self.should_stop():
                self.interrupted = True
            if (self.interrupted or self.failure) and stop_deadline is None:
                self._stop(list(live.values()))
                stop_deadline = time.monotonic() + STOP_GRACE_S
            time.sleep(_POLL_S)

    def _write(self, writer: RecordWriter, recorder: HealthRecorder, w: int, line: bytes) -> None:
        try:
            rec = writer.append_line(line)
        except (ValidationError, orjson.JSONDecodeError) as exc:
            self._fail(f"load worker {w} sent a malformed record: {str(exc).splitlines()[0]}")
            return
        self.seen[w].add(rec.id)
        self._count(recorder, rec)

    def _count(self, recorder: HealthRecorder, rec: Record) -> None:
        self.finished += 1
        self.cancelled += rec.cancelled
        recorder.record(rec)
        if self.on_record is not None:
            self.on_record(rec)

    def _lose(self, writer: RecordWriter, recorder: HealthRecorder, w: int, why: str) -> None:
        """Worker ``w``'s actor or node is gone: its unrecorded positions become cancelled
        records (the client's fault), and the run carries the loss."""
        a = self.args[w]
        message = f"cancelled: the client's Ray worker {w} was lost mid-run ({why})"
        self.lost[w] = f"load worker {w} lost mid-run: {why}"
        for position in self.positions(a):
            rec = self.lost_record(a, position, message)
            if rec.id in self.seen[w]:
                continue
            writer.append_line(rec.to_line().rstrip(b"\n"))
            self.lost_requests += 1
            self._count(recorder, rec)

    def _fail(self, message: str) -> None:
        if self.failure is None:
            self.failure = message

    def _stop(self, actors: list[Any]) -> None:
        if self.stop_sent:
            return
        self.stop_sent = True
        for a in actors:
            with contextlib.suppress(Exception):
                a.stop.remote()


def _first(exc: BaseException) -> str:
    """One line for a Ray error: its cause's last line (a remote traceback ends with it)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        return f"{type(cause).__name__}: {_first(cause)}"
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(exc).__name__


def run_on_ray(
    backend: RayBackend,
    args: list[WorkerArgs],
    records_path: Path,
    spec: RunSpec,
    *,
    on_record: Callable[[Record], None] | None,
    should_stop: Callable[[], bool] | None,
    health_path: Path | None,
    health_ns: int,
    health_phase: str,
    lost_record: Callable[[WorkerArgs, int, str], Record],
) -> tuple[ParentOutcome, RayInfo]:
    """Run the open-loop workers ``args`` as Ray actors (see the module)."""
    if any(a.offsets is None for a in args):
        raise ConfigError(
            "--backend ray runs open-loop loads only (a rate); a closed loop's shared position "
            "counter does not cross machines: use --backend local for --concurrency"
        )
    ray = ray_module()
    _connect(ray, backend)

    def positions(a: WorkerArgs) -> Sequence[int]:
        assert a.offsets is not None
        return range(a.index, a.index + a.stride * len(a.offsets), a.stride)

    driver = _Driver(
        ray, backend, args, records_path, spec, positions, lost_record, on_record,
        should_stop, health_path, health_ns, health_phase,
    )  # fmt: skip
    return driver.run()


def lost_plan_record(plan_id: int, worker: int, phase: str, tag: str | None,
                     scheduled_ns: int, message: str) -> Record:  # fmt: skip
    """The record of a request a lost worker never finished: cancelled, the client's fault."""
    return Record(
        id=plan_id, worker=worker, phase=phase, tag=tag, scheduled_ns=scheduled_ns,
        error_class=CANCELLED, error_message=message,
    )  # fmt: skip
