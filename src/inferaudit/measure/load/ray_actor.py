"""The Ray actor of ``--backend ray`` (:mod:`~.ray_backend`): one load worker on its node.

:class:`NodeWorker` (``ray.remote(NodeWorker)``) starts the SAME worker process as the local
runner (:func:`~.worker.worker_entry`, multiprocessing "spawn") on the node Ray placed it on,
and relays the worker's two pipes to the driver through its methods: ``start`` (the worker's
:class:`~.messages.WorkerArgs`), ``ready``, ``ping`` (this host's ``perf_counter_ns``: the
worker's clock, CLOCK_MONOTONIC being shared on a host), ``go``, ``stop`` and ``poll``, which
hands back the record bytes and control messages that arrived since the last call
(:class:`Batch`). The driver validates and writes them; nothing here interprets a record.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from time import perf_counter_ns
from typing import Any

from inferaudit.errors import ConfigError
from inferaudit.measure.load.messages import Failed, Go, Ready, Stop, WorkerArgs
from inferaudit.measure.load.parent import exit_text
from inferaudit.measure.load.worker import worker_entry

__all__ = ["Batch", "NodeWorker", "ray_module"]

_POLL_S = 0.05
_READ_MAX = 8 << 20  # bytes of record lines one poll hands back at most


def ray_module() -> Any:
    """The ``ray`` package, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--backend ray needs the ray extra: pip install 'inferaudit[ray]'"
        ) from None
    return ray


@dataclass(frozen=True)
class Batch:
    """What one ``poll`` hands back: record bytes, control messages, and whether it ended."""

    data: bytes
    messages: tuple[object, ...]
    ended: bool  # the worker's pipes are closed (it exited)
    exitcode: int | None


class NodeWorker:
    """A Ray actor (``ray.remote(NodeWorker)``): one load worker process on its node, relayed."""

    def __init__(self) -> None:
        self.proc: Any = None
        self.ctrl: Connection | None = None
        self.rec: Connection | None = None
        self.shared: Any = None
        self.rec_open = False
        self.ctrl_open = False

    def node(self) -> tuple[str, str, int]:
        ray: Any = ray_module()
        node_ip = ray.util.get_node_ip_address()
        return ray.get_runtime_context().get_node_id(), node_ip, os.getpid()

    def start(self, args: WorkerArgs) -> None:
        ctx = mp.get_context("spawn")
        ctrl_parent, ctrl_child = ctx.Pipe(duplex=True)
        rec_read, rec_write = ctx.Pipe(duplex=False)
        shared = ctx.Array("q", 2)  # open loop: unused by the worker, part of its signature
        proc = ctx.Process(
            target=worker_entry,
            args=(args.index, ctrl_child, rec_write, shared),
            name=f"inferaudit-load-{args.index}",
            daemon=True,
        )
        proc.start()
        ctrl_child.close()
        rec_write.close()
        self.proc, self.ctrl, self.rec = proc, ctrl_parent, rec_read
        self.shared = shared  # kept: its lock must outlive the child's start
        self.rec_open = self.ctrl_open = True
        ctrl_parent.send(args)

    def ready(self, timeout_s: float) -> str | int:
        """The worker's pid once it is ready, or one line saying why it is not."""
        assert self.ctrl is not None
        deadline = time.monotonic() + timeout_s
        while not self.ctrl.poll(_POLL_S):
            if not self.proc.is_alive():
                return f"worker did not start ({exit_text(self.proc.exitcode)})"
            if time.monotonic() > deadline:
                return "worker did not start in time"
        try:
            msg = self.ctrl.recv()
        except EOFError:
            return "worker exited while starting"
        if isinstance(msg, Failed):
            return msg.message
        if not isinstance(msg, Ready):
            return f"worker sent {type(msg).__name__} instead of Ready"
        return msg.pid

    def ping(self) -> int:
        return perf_counter_ns()

    def go(self, epoch_ns: int) -> None:
        assert self.ctrl is not None
        self.ctrl.send(Go(epoch_ns))

    def stop(self) -> None:
        if self.ctrl is not None and self.ctrl_open:
            with contextlib.suppress(OSError):
                self.ctrl.send(Stop())

    def poll(self) -> Batch:
        assert self.ctrl is not None and self.rec is not None
        chunks: list[bytes] = []
        size = 0
        while self.rec_open and size < _READ_MAX and self.rec.poll(0):
            data = os.read(self.rec.fileno(), 1 << 20)
            if not data:
                self.rec_open = False
                break
            chunks.append(data)
            size += len(data)
        messages: list[object] = []
        while self.ctrl_open and self.ctrl.poll(0):
            try:
                messages.append(self.ctrl.recv())
            except EOFError:
                self.ctrl_open = False
        ended = not self.rec_open and not self.ctrl_open
        if ended:
            self.proc.join(timeout=5)
        return Batch(b"".join(chunks), tuple(messages), ended, self.proc.exitcode)
