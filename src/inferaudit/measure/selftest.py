"""Client self-test (DESIGN §6.2): before a run, can this client keep up with 2x its load?

    1. A fast SSE server starts in its own process on 127.0.0.1 (port 0): a raw asyncio
       HTTP/1.1 server (keep-alive) that answers ``GET /v1/models`` with the run's model and
       every completion with one pre-built stream of the run's longest output length, one write
       per event, an event every ``SELF_TEST_TPOT_MS`` (a fast engine), so that requests stay in
       flight as they would against a real server.
    2. The real load runner (``load.runner.run_load``) drives it with the run's workers,
       workload, API flavour and arrival process, at 2x the planned rate (open loop) or 2x the
       planned concurrency (closed loop), for ``duration_s`` seconds.
    3. The client lag p99 (actual send minus scheduled send, ``metrics.summarize``) is compared
       with the bound of the run's error budget (``budget.lag_bound``): the allowance of the
       endpoint's TTFT p50 when one is known before the run (``figure_ms``: the caller passes
       what the conformance probes measured, unloaded, so a lower bound of the run's TTFT and
       never a too-lenient allowance), or the protocol's fixed ``max_client_lag_p99_ms`` (v1
       specs, ``--max-lag-ms``). Over it, or when no lag was measured, the self-test fails and
       the run is refused (``ClientOverloadError``). With no figure known the self-test cannot
       judge the budget: it reports the smallest TTFT the measured lag fits (``min_figure_ms``)
       and passes; the run's own validity rule (the same budget) decides.

``--backend ray``: :func:`run_node_self_tests` runs this same self-test on every Ray worker's
node (a task in the run's placement, its own fast server there) at ``LOAD_FACTOR`` x that
node's planned share of the load (:func:`node_share`), before the run.

The server's own CPU time is measured and reported beside the client's, to show which side was
busy. The self-test's records are scratch (a temporary directory); its result, not its records,
is part of a run's evidence (``meta.json``).
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import resource
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson

from inferaudit.errors import ClientOverloadError, ConfigError, InferauditError
from inferaudit.measure.budget import lag_bound, lag_problem, min_figure_ms
from inferaudit.measure.load.runner import run_load
from inferaudit.measure.metrics import summarize
from inferaudit.measure.protocol import Api, Load, RunSpec
from inferaudit.measure.records import read_records
from inferaudit.measure.rundir import RECORDS_FILE

__all__ = [
    "DEFAULT_DURATION_S",
    "LOAD_FACTOR",
    "SELF_TEST_TPOT_MS",
    "SelfTestResult",
    "run_self_test",
    "sse_events",
]

LOAD_FACTOR = 2  # DESIGN §6.2: the self-test runs at twice the planned load
DEFAULT_DURATION_S = 2.0
SELF_TEST_TPOT_MS = 2.0  # the fast server's time between events
# A spawned Python process importing the client: ~1 s on a quiet machine; 30 s was not enough
# on a 2-core node with a Ray cluster and two busy tenants. Waiting longer costs nothing when
# it starts at once; past it, the machine is too busy to test itself (ClientOverloadError).
SERVER_START_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 30.0
NODE_TASK_START_S = 180.0  # --backend ray: a node's Ray worker process starts the self-test


@dataclass(frozen=True)
class SelfTestResult:
    """What the self-test measured; ``to_json`` goes into ``meta.json``."""

    mode: str  # "open" | "closed"
    planned: float  # planned rate (req/s) or concurrency
    tested: float  # LOAD_FACTOR x planned
    workers: int
    duration_s: float
    output_tokens: int  # per request, from the fast server
    requests: int
    failed: int
    achieved_rps: float | None
    lag_p50_ms: float | None
    lag_p99_ms: float | None
    lag_max_ms: float | None
    max_lag_p99_ms: float | None  # the bound applied; None: no figure known (not judged)
    bound_basis: str  # where the bound comes from (``LagBound.describe``)
    figure_ms: float | None  # the endpoint's TTFT p50 known before the run, if any
    min_figure_ms: float | None  # smallest TTFT whose budget carries the measured lag p99
    client_cpu_s: float  # all workers, from the epoch to the end
    client_cpu_share_max: float  # busiest worker's CPU time / elapsed (1.0 = one core saturated)
    server_cpu_s: float
    server_cpu_share: float  # fast server's CPU time / elapsed (one process, one core at most)
    elapsed_s: float
    passed: bool

    def load_label(self) -> str:
        if self.mode == "open":
            return f"{self.tested:g} req/s"
        return f"concurrency {self.tested:g}"

    def message(self) -> str:
        """One line: the verdict and the numbers behind it."""
        lag = "n/a" if self.lag_p99_ms is None else f"{self.lag_p99_ms:.3g} ms"
        head = f"client self-test: at {LOAD_FACTOR}x the planned load ({self.load_label()})"
        if self.passed and self.max_lag_p99_ms is None:
            fits = "any TTFT" if not self.min_figure_ms else f"TTFT >= {self.min_figure_ms:.3g} ms"
            return (
                f"{head} client lag p99 was {lag}: within the error budget for {fits}; "
                "no TTFT known before the run, so the run's own validity decides"
            )
        if self.passed:
            return (
                f"{head} client lag p99 was {lag} <= {self.max_lag_p99_ms:.3g} ms "
                f"({self.bound_basis})"
            )
        if self.failed:
            return (
                f"{head} {self.failed} of {self.requests} requests to the local fast server "
                "failed; the client cannot be trusted on this machine"
            )
        if self.lag_p99_ms is None:
            return f"{head} no request was sent; the client cannot be trusted on this machine"
        return (
            f"{head} client lag p99 was {lag} > {self.max_lag_p99_ms or 0:.3g} ms "
            f"({self.bound_basis}); use more --workers or a bigger client machine"
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["load_factor"] = LOAD_FACTOR
        data["server_tpot_ms"] = SELF_TEST_TPOT_MS
        data["message"] = self.message()
        return data


def sse_events(model: str, chat: bool, tokens: int) -> list[bytes]:
    """The fast server's stream: ``tokens`` content events, a finish event, usage, ``[DONE]``."""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(choice: dict[str, Any] | None, usage: dict[str, int] | None = None) -> bytes:
        obj: dict[str, Any] = {"id": "selftest", "object": kind, "model": model}
        obj["choices"] = [] if choice is None else [{"index": 0, **choice}]
        if usage is not None:
            obj["usage"] = usage
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def content(text: str) -> dict[str, Any]:
        body: dict[str, Any] = {"delta": {"content": text}} if chat else {"text": text}
        return {**body, "finish_reason": None}

    events = [event(content(f" w{i}")) for i in range(tokens)]
    finish: dict[str, Any] = {"delta": {}} if chat else {"text": ""}
    events.append(event({**finish, "finish_reason": "length"}))
    usage = {"prompt_tokens": 0, "completion_tokens": tokens, "total_tokens": tokens}
    events.append(event(None, usage))
    events.append(b"data: [DONE]\n\n")
    return events


# --- the fast server (its own process) -------------------------------------------------------


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


class _FastServer:
    def __init__(self, model: str, chat: bool, tokens: int, tpot_ms: float) -> None:
        events = sse_events(model, chat, tokens)
        self.events = events
        self.stream_head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Content-Length: " + str(sum(map(len, events))).encode() + b"\r\n\r\n"
        )
        models = orjson.dumps({"object": "list", "data": [{"id": model, "object": "model"}]})
        self.models = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(models)).encode() + b"\r\n\r\n" + models
        )
        self.tpot_s = tpot_ms / 1000.0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = _content_length(head)
                if length:
                    await reader.readexactly(length)
                if head.startswith(b"GET "):
                    writer.write(self.models)
                    continue
                writer.write(self.stream_head)
                due = loop.time()
                for event in self.events:
                    due += self.tpot_s
                    delay = due - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    writer.write(event)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed its connection: the normal end of a keep-alive session
        finally:
            writer.close()


def _serve(conn: Connection, model: str, chat: bool, tokens: int, tpot_ms: float) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve_main(conn, _FastServer(model, chat, tokens, tpot_ms)))
    conn.close()


async def _serve_main(conn: Connection, server: _FastServer) -> None:
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_reader(conn.fileno(), stop.set)
    cpu0 = _cpu_s()
    conn.send(("ready", port))
    await stop.wait()
    loop.remove_reader(conn.fileno())
    conn.recv()
    conn.send(("cpu", _cpu_s() - cpu0))
    listener.close()


# --- the self-test ---------------------------------------------------------------------------


def _test_spec(spec: RunSpec, base_url: str, duration_s: float) -> tuple[RunSpec, str, float]:
    load, workload = spec.load, spec.workload
    # The same prompts' shape (an exact token count costs the client no more than its
    # approximation, and the self-test has no tokenizer to hand).
    workload = workload.model_copy(update={"exact_input_tokens": False})
    if load.rate is not None:
        mode, planned = "open", float(load.rate)
        cap = None if load.max_concurrency is None else load.max_concurrency * LOAD_FACTOR
        if math.isinf(load.rate):  # every request at once: twice as many at once
            new_load = Load(
                rate=load.rate, requests=LOAD_FACTOR * (load.requests or 1) + load.warmup,
                max_concurrency=cap, timeout_s=REQUEST_TIMEOUT_S,
            )  # fmt: skip
        else:
            new_load = Load(
                rate=planned * LOAD_FACTOR, arrivals=load.arrivals, burstiness=load.burstiness,
                max_concurrency=cap, duration_s=duration_s, timeout_s=REQUEST_TIMEOUT_S,
            )  # fmt: skip
        if workload.trace is not None:  # the trace itself, replayed twice as fast
            faster = workload.trace.speedup * LOAD_FACTOR
            workload = workload.model_copy(
                update={"trace": workload.trace.model_copy(update={"speedup": faster})}
            )
    else:
        assert load.concurrency is not None, "a Load is open or closed loop"
        mode, planned = "closed", float(load.concurrency)
        new_load = Load(
            concurrency=load.concurrency * LOAD_FACTOR,
            duration_s=duration_s,
            timeout_s=REQUEST_TIMEOUT_S,
        )
    endpoint = spec.endpoint.model_copy(update={"base_url": base_url, "api_key_env": None})
    test = spec.model_copy(
        update={"endpoint": endpoint, "load": new_load, "workload": workload, "checks": ()}
    )
    return test, mode, planned


def run_self_test(
    spec: RunSpec,
    *,
    figure_ms: float | None = None,
    duration_s: float = DEFAULT_DURATION_S,
    tpot_ms: float = SELF_TEST_TPOT_MS,
    should_stop: Callable[[], bool] | None = None,
) -> SelfTestResult:
    """Measure whether the client keeps up with ``LOAD_FACTOR`` x ``spec``'s load (raises only
    :class:`~inferaudit.errors.ClientOverloadError` when its own server cannot start);
    ``figure_ms``: the endpoint's TTFT p50 known before the run (see the module docstring)."""
    tokens = spec.workload.output_tokens.hi
    ctx = mp.get_context("spawn")
    conn, child = ctx.Pipe(duplex=True)
    proc = ctx.Process(
        target=_serve,
        args=(child, spec.endpoint.model, spec.endpoint.api == Api.chat, tokens, tpot_ms),
        name="inferaudit-selftest-server",
        daemon=True,
    )
    proc.start()
    child.close()
    server_cpu = 0.0
    try:
        if not conn.poll(SERVER_START_TIMEOUT_S):
            raise ClientOverloadError(
                f"client self-test: its local server did not start within "
                f"{SERVER_START_TIMEOUT_S:g} s (this machine is too busy to test itself)"
            )
        kind, port = conn.recv()
        assert kind == "ready", f"unexpected self-test server message {kind!r}"
        test, mode, planned = _test_spec(spec, f"http://127.0.0.1:{port}/v1", duration_s)
        with tempfile.TemporaryDirectory(prefix="inferaudit-selftest-") as tmp:
            path = Path(tmp) / RECORDS_FILE
            result = run_load(test, path, api_key=None, should_stop=should_stop)
            summary = summarize(read_records(path), test)
        conn.send(("stop",))
        if conn.poll(10.0):
            server_cpu = float(conn.recv()[1])
    finally:
        proc.join(timeout=5)
        if proc.exitcode is None:
            proc.terminate()
            proc.join(timeout=5)
        conn.close()
    elapsed = max(result.elapsed_s, 1e-9)
    lag = summary.client_lag_ms
    failed = summary.failed
    bound = lag_bound(spec, figure_ms)
    judged = bound.rule == "fixed" or figure_ms is not None
    problem = lag_problem(bound, lag.p99)
    if not judged and lag.p99 is not None:
        problem = None  # no figure to take a share of: the run's validity decides
    passed = failed == 0 and summary.requests > 0 and problem is None
    return SelfTestResult(
        mode=mode,
        planned=planned,
        tested=planned * LOAD_FACTOR,
        workers=len(result.workers),
        duration_s=duration_s,
        output_tokens=tokens,
        requests=summary.requests,
        failed=failed,
        achieved_rps=summary.arrival_rate.achieved_rps,
        lag_p50_ms=lag.p50,
        lag_p99_ms=lag.p99,
        lag_max_ms=lag.max,
        max_lag_p99_ms=round(bound.bound_ms, 6) if judged else None,
        bound_basis=bound.describe() if judged else "not judged (no TTFT known before the run)",
        figure_ms=figure_ms,
        min_figure_ms=(
            None if lag.p99 is None else round(min_figure_ms(spec.error_budget, lag.p99), 3)
        ),
        client_cpu_s=round(sum(w.cpu_run_s for w in result.workers), 3),
        client_cpu_share_max=round(max((w.cpu_run_s for w in result.workers), default=0.0)
                                   / elapsed, 3),
        server_cpu_s=round(server_cpu, 3),
        server_cpu_share=round(server_cpu / elapsed, 3),
        elapsed_s=round(elapsed, 3),
        passed=passed,
    )  # fmt: skip


def node_share(spec: RunSpec, nodes: int) -> RunSpec:
    """One Ray node's planned share of ``spec``'s open-loop load (one worker): the rate (or, all
    at once, the request count) split evenly over ``nodes``."""
    load = spec.load
    if load.rate is None:
        raise ConfigError("--backend ray runs open-loop loads only (a rate), not --concurrency")
    if math.isinf(load.rate):
        share = load.model_copy(update={"requests": -(-(load.requests or 1) // nodes)})
    else:
        share = load.model_copy(update={"rate": load.rate / nodes})
    return spec.model_copy(update={"load": share, "workers": 1})


def _on_node(
    spec: RunSpec, figure_ms: float | None, duration_s: float
) -> tuple[str, SelfTestResult]:
    """A Ray task: the self-test of one node's share, on that node (its own fast server)."""
    import ray

    node = str(ray.get_runtime_context().get_node_id())
    return node, run_self_test(spec, figure_ms=figure_ms, duration_s=duration_s)


def run_node_self_tests(
    spec: RunSpec,
    workers: int,
    address: str,
    *,
    figure_ms: float | None = None,
    duration_s: float = DEFAULT_DURATION_S,
) -> tuple[tuple[str, SelfTestResult], ...]:
    """Before a ``--backend ray`` run: each of the ``workers`` Ray workers' places (a SPREAD
    placement group, as the run uses) self-tests its planned share of the load
    (:func:`node_share`) at ``LOAD_FACTOR`` x, on its own node. Returns (node id, result) per
    worker, in worker order."""
    from inferaudit.measure.load.ray_backend import RayBackend, cluster_cpus

    cluster_cpus(RayBackend(address=address))  # connects (once) with the run's settings
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = placement_group([{"CPU": 1}] * workers, strategy="SPREAD")
    try:
        ray.get(pg.ready(), timeout=180)
        task = ray.remote(num_cpus=1, max_retries=0)(_on_node)
        share = node_share(spec, workers)
        refs = [
            task.options(
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=i
                )
            ).remote(share, figure_ms, duration_s)
            for i in range(workers)
        ]
        # a Ray worker process to start, the local server to start, the test, its summary
        wait_s = NODE_TASK_START_S + SERVER_START_TIMEOUT_S + 4 * duration_s
        deadline = time.monotonic() + wait_s
        results: list[tuple[str, SelfTestResult]] = []
        for i, ref in enumerate(refs):
            try:
                results.append(ray.get(ref, timeout=max(deadline - time.monotonic(), 1.0)))
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, InferauditError):  # one line, not Ray's traceback
                    raise type(exc.cause)(f"Ray worker {i}'s node: {exc.cause}") from None
                raise
            except ray.exceptions.GetTimeoutError:
                raise ClientOverloadError(
                    f"Ray worker {i}'s node: its client self-test did not finish within "
                    f"{wait_s:g} s (the node is too busy to test itself)"
                ) from None
    finally:
        remove_placement_group(pg)
    return tuple(results)
