"""When the twin's tokens are produced: an ideal fixed-latency server, or a batching engine.

Both engines answer one question for the server: for this job, at which instants (monotonic
``time.perf_counter_ns()``) does each of its tokens come out? ``generate(job)`` is an async
iterator of those instants; the server writes each token when it comes out. Emission is always
scheduled at absolute deadlines (sleep until a deadline, never a chain of relative sleeps), so
timing does not drift with the length of a stream; when the host falls behind, the deadlines
move with it (a real engine that was not scheduled does not then decode in a burst).

``FixedEngine``: first token ``ttft`` after arrival, then one every ``tpot``, whatever the load.

``BatchEngine``: a continuous-batching scheduler per replica (a vLLM-like model):

1. waiting requests are admitted in arrival order while the batch holds fewer than
   ``max_batch`` sequences and the KV cache can hold each one's prompt plus all its output
   tokens (reserved on admission, so there is no preemption);
2. one engine step = prefill of the newly admitted prompts (``roofline.prefill_seconds`` of
   their uncached prompt tokens) + one decode step for the sequences already running
   (``roofline.decode_step_seconds`` at the batch's mean context), divided by ``efficiency``;
3. at the end of the step every sequence in the batch has one more token (a new one its first);
   finished sequences leave and free their KV.

A request goes to the replica with the fewest sequences (running + waiting). The KV capacity is
``mem_util`` of the replica's memory minus the weights. Simplifications (stated, not hidden):
prefill is not chunked, attention FLOPs are ignored as in the roofline, and prefill and decode
of one step add up rather than overlap. If the host CPU cannot keep up with the simulated step
times, steps run late; the truth file records what really happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Protocol

from inferaudit.errors import ConfigError
from inferaudit.intent import catalog, roofline
from inferaudit.intent.catalog import Accelerator, ModelSpec

_LATE_NS = 10_000_000
_FAILED = -1  # queued instead of a token time when a replica's scheduler task has crashed


@dataclass
class Job:
    """One request as an engine sees it."""

    prompt_tokens: int
    output_tokens: int  # tokens to produce (already decided from the text)
    arrival_ns: int
    cached_prompt_tokens: int = 0  # prefix-cache: prompt tokens whose prefill is skipped
    replica: int | None = None  # set by the engine that served it


async def sleep_until(deadline_ns: int) -> None:
    """Sleep until ``time.perf_counter_ns() >= deadline_ns``; never returns early.

    uvloop's timers have millisecond granularity and can fire up to ~1 ms early, so sleep again
    for what is left (the last fraction of a millisecond passes in zero-delay sleeps).
    """
    while (delay := deadline_ns - time.perf_counter_ns()) > 0:
        await asyncio.sleep(delay / 1e9)


class Engine(Protocol):
    def generate(self, job: Job) -> AsyncGenerator[int, None]:
        """Yield the perf_counter_ns instant at which each of the job's tokens is produced."""
        ...

    def describe(self) -> dict[str, object]:
        """The engine's parameters, for /v1/models and the banner."""
        ...


@dataclass(frozen=True)
class FixedEngine:
    """An ideal server: TTFT and TPOT fixed, independent of load."""

    ttft_ms: float
    tpot_ms: float
    prefix_floor: float = 1.0  # set by prefix-cache: least share of TTFT left when cached

    def __post_init__(self) -> None:
        if self.ttft_ms < 0 or self.tpot_ms < 0:
            raise ConfigError("--ttft-ms and --tpot-ms must be >= 0")

    def ttft_ns(self, job: Job) -> int:
        share = 1.0
        if job.cached_prompt_tokens and job.prompt_tokens:
            share = max(1.0 - job.cached_prompt_tokens / job.prompt_tokens, self.prefix_floor)
        return round(self.ttft_ms * 1e6 * share)

    async def generate(self, job: Job) -> AsyncGenerator[int, None]:
        first = job.arrival_ns + self.ttft_ns(job)
        tpot = self.tpot_ms * 1e6
        for i in range(job.output_tokens):
            due = first + round(i * tpot)
            await sleep_until(due)
            now = time.perf_counter_ns()
            if now - due > tpot / 2:
                # The host fell behind (the twin's process was not scheduled): like a real
                # engine, go on decoding from now rather than catching up in a burst (a token
                # never follows the one before it by less than half a TPOT).
                first += now - due
            yield now

    def describe(self) -> dict[str, object]:
        return {"mode": "fixed", "ttft_ms": self.ttft_ms, "tpot_ms": self.tpot_ms}


@dataclass(frozen=True)
class EngineConfig:
    accelerator: Accelerator
    model: ModelSpec
    dtype: str
    replicas: int = 1
    tp: int = 1  # accelerators per replica (tensor parallel)
    max_batch: int = 256
    efficiency: float = 0.6
    mem_util: float = 0.9
    kv_dtype: str = "bf16"
    prefix_floor: float = 1.0  # set by prefix-cache: least share of prefill work left

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.tp < 1 or self.max_batch < 1:
            raise ConfigError("--replicas, --tp and --max-batch must be >= 1")
        if not 0 < self.efficiency <= 1:
            raise ConfigError(f"--efficiency must be in (0, 1], got {self.efficiency}")
        if not 0 < self.mem_util <= 1:
            raise ConfigError(f"--mem-util must be in (0, 1], got {self.mem_util}")
        if self.accelerator.mem_gb is None:
            raise ConfigError(f"{self.accelerator.id}: memory size not published; no KV capacity")
        if self.kv_capacity_bytes() <= 0:
            raise ConfigError(
                f"{self.model.id} at {self.dtype} does not fit in {self.tp} x "
                f"{self.accelerator.id} ({self.accelerator.mem_gb:g} GB each, "
                f"{self.mem_util:g} usable); raise --tp"
            )
        # Fail now, not at the first request, if the roofline lacks a figure.
        self.step_seconds(new_prompt_tokens=1, batch=1, context_tokens=1)

    @classmethod
    def from_catalog(
        cls, accelerator: str, model: str, dtype: str | None = None, **options: Any
    ) -> EngineConfig:
        """Look ``accelerator`` and ``model`` up in the catalog (``dtype``: model default)."""
        spec = catalog.model(model)
        return cls(catalog.accelerator(accelerator), spec, dtype or spec.default_dtype, **options)

    def kv_capacity_bytes(self) -> float:
        assert self.accelerator.mem_gb is not None
        total = self.tp * self.accelerator.mem_gb * 1e9 * self.mem_util
        return total - roofline.weight_bytes(self.model, self.dtype)

    def kv_bytes(self, tokens: int) -> float:
        return roofline.kv_cache_bytes(self.model, tokens, self.kv_dtype)

    def step_seconds(self, *, new_prompt_tokens: int, batch: int, context_tokens: int) -> float:
        """Simulated duration of one engine step (see the module docstring, step 2)."""
        seconds = 0.0
        if new_prompt_tokens > 0:
            seconds += roofline.prefill_seconds(
                self.accelerator,
                self.model,
                tokens=new_prompt_tokens,
                dtype=self.dtype,
                count=self.tp,
            )
        if batch > 0:
            seconds += roofline.decode_step_seconds(
                self.accelerator,
                self.model,
                batch=batch,
                context_tokens=context_tokens,
                dtype=self.dtype,
                count=self.tp,
                kv_dtype=self.kv_dtype,
            )
        return seconds / self.efficiency


@dataclass(eq=False)
class _Seq:
    job: Job
    prefill_tokens: int
    reserved_bytes: float
    out: asyncio.Queue[int] = field(default_factory=asyncio.Queue)
    produced: int = 0
    cancelled: bool = False

    @property
    def context(self) -> int:
        return self.job.prompt_tokens + self.produced


class _Replica:
    def __init__(self, index: int, config: EngineConfig) -> None:
        self.index = index
        self.config = config
        self.waiting: deque[_Seq] = deque()
        self.running: list[_Seq] = []
        self.kv_used = 0.0
        self.wake = asyncio.Event()
        self.steps = 0
        self.late_steps = 0  # steps that began more than _LATE_NS after their due time
        self.task: asyncio.Task[None] | None = None
        self.failure: Exception | None = None

    def load(self) -> int:
        return len(self.waiting) + len(self.running)

    def submit(self, seq: _Seq) -> None:
        if self.failure is not None:
            raise RuntimeError(f"engine replica {self.index} failed") from self.failure
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())
        self.waiting.append(seq)
        self.wake.set()

    def _admit(self) -> list[_Seq]:
        new: list[_Seq] = []
        capacity = self.config.kv_capacity_bytes()
        while self.waiting and len(self.running) + len(new) < self.config.max_batch:
            seq = self.waiting[0]
            if seq.cancelled:
                self.waiting.popleft()
                continue
            if self.kv_used + seq.reserved_bytes > capacity:
                break
            self.waiting.popleft()
            self.kv_used += seq.reserved_bytes
            new.append(seq)
        return new

    def _retire(self, seq: _Seq) -> None:
        self.running.remove(seq)
        self.kv_used -= seq.reserved_bytes

    async def _run(self) -> None:
        try:
            await self._steps()
        except Exception as exc:  # a bug: fail every waiting stream rather than hang them
            self.failure = exc
            for seq in [*self.running, *self.waiting]:
                seq.out.put_nowait(_FAILED)
            raise

    async def _steps(self) -> None:
        step_end = time.perf_counter_ns()
        while True:
            for seq in [s for s in self.running if s.cancelled]:
                self._retire(seq)
            if not self.running and not any(not s.cancelled for s in self.waiting):
                self.waiting.clear()
                self.wake.clear()
                await self.wake.wait()
                step_end = time.perf_counter_ns()
            old = list(self.running)
            new = self._admit()
            if not old and not new:
                # The head of the queue cannot fit even into an empty cache (refused earlier).
                self.wake.clear()
                await self.wake.wait()
                continue
            context = math.ceil(sum(s.context for s in old) / len(old)) if old else 0
            seconds = self.config.step_seconds(
                new_prompt_tokens=sum(s.prefill_tokens for s in new),
                batch=len(old),
                context_tokens=context,
            )
            start = time.perf_counter_ns()
            if start - step_end > _LATE_NS:  # the host fell behind: start this step now
                self.late_steps += 1
                step_end = start
            step_end += round(seconds * 1e9)
            await sleep_until(step_end)
            now = time.perf_counter_ns()
            self.steps += 1
            self.running.extend(new)
            for seq in list(self.running):
                if seq.cancelled:
                    continue
                seq.produced += 1
                seq.out.put_nowait(now)
                if seq.produced >= seq.job.output_tokens:
                    self._retire(seq)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


class BatchEngine:
    """Continuous batching over ``replicas`` independent replicas (see the module docstring)."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.replicas = [_Replica(i, config) for i in range(config.replicas)]

    def check_fits(self, prompt_tokens: int, max_tokens: int) -> str | None:
        """Why a request can never be served (its KV alone exceeds the cache), or None."""
        need = self.config.kv_bytes(prompt_tokens + max_tokens)
        capacity = self.config.kv_capacity_bytes()
        if need > capacity:
            return (
                f"prompt + max_tokens = {prompt_tokens + max_tokens} tokens need "
                f"{need / 1e9:.3g} GB of KV cache; the replica holds {capacity / 1e9:.3g} GB"
            )
        return None

    async def generate(self, job: Job) -> AsyncGenerator[int, None]:
        if job.output_tokens <= 0:
            return
        replica = min(self.replicas, key=lambda r: (r.load(), r.index))
        job.replica = replica.index
        cached = job.cached_prompt_tokens
        prefill = job.prompt_tokens
        if cached and job.prompt_tokens:
            prefill = max(
                job.prompt_tokens - cached, math.ceil(job.prompt_tokens * self.config.prefix_floor)
            )
        seq = _Seq(
            job=job,
            prefill_tokens=prefill,
            reserved_bytes=self.config.kv_bytes(job.prompt_tokens + job.output_tokens),
        )
        replica.submit(seq)
        try:
            for _ in range(job.output_tokens):
                t_ns = await seq.out.get()
                if t_ns == _FAILED:
                    raise RuntimeError(f"engine replica {replica.index} failed") from (
                        replica.failure
                    )
                yield t_ns
        finally:
            if seq.produced < job.output_tokens:
                seq.cancelled = True
                replica.wake.set()

    async def stop(self) -> None:
        for replica in self.replicas:
            await replica.stop()

    def late_steps(self) -> int:
        """Steps, over all replicas, that the host began more than 10 ms after they were due."""
        return sum(r.late_steps for r in self.replicas)

    def describe(self) -> dict[str, object]:
        c = self.config
        return {
            "mode": "engine",
            "accelerator": c.accelerator.id,
            "model": c.model.id,
            "dtype": c.dtype,
            "replicas": c.replicas,
            "tp": c.tp,
            "max_batch": c.max_batch,
            "efficiency": c.efficiency,
            "mem_util": c.mem_util,
            "kv_capacity_gb": round(c.kv_capacity_bytes() / 1e9, 3),
        }
