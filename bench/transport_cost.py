"""Transport cost: what a measured request's HTTP client costs, the client's own against aiohttp.

The client sends completion requests over its own HTTP/1.1 transport (``measure/load/h1.py``),
with httptools (llhttp, C) parsing responses, or its pure-Python parser where httptools is not
installed. This measures each against aiohttp, the transport it replaced, as the reference. All
run the same code everywhere else: the request body (``build_body``), the SSE reader
(``read_stream``), the record (``_record``) and its line, validated back as the parent does.

* ``aiohttp``: a session POST, the body read through ``read_stream(resp.content, ...)`` (what
  ``client.execute`` did until this round; none of the pool's defences);
* ``h1``: ``client.execute`` on a :class:`~inferaudit.measure.load.pool.Pool`, httptools;
* ``h1-python``: the same with ``INFERAUDIT_HTTP_PARSER=python``.

One process, ``--connections`` keep-alive connections in closed loop against nginx serving the
128-event SSE body of ``client_capacity.py``; the three run interleaved ``--rounds`` times, so
a noisy neighbour moves all. Prints CPU microseconds per request of each, each round's ratios
to aiohttp, and their medians.

Run by hand:  .venv/bin/python bench/transport_cost.py [--requests N] [--connections C]
              [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from time import perf_counter_ns

import aiohttp
import uvloop

from client_capacity import MODEL, free_port, start_nginx
from inferaudit.measure.load.client import (
    Pool,
    Target,
    _record,
    asked_tokens,
    build_body,
    execute,
    open_connections,
)
from inferaudit.measure.load.deadline import Watch
from inferaudit.measure.load.stream import ContentCap, Stream, read_stream
from inferaudit.measure.protocol import Api, Endpoint, Workload
from inferaudit.measure.records import Record
from inferaudit.measure.workload import RequestPlan


async def via_aiohttp(target: Target, plan: RequestPlan, n: int, conns: int) -> float:
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def warm() -> None:
            async with session.get(target.models_url) as resp:
                await resp.read()

        await asyncio.gather(*(warm() for _ in range(conns)))
        epoch, left = perf_counter_ns(), [n]

        async def one() -> Record:
            body = build_body(plan, target)
            scheduled = sent = perf_counter_ns()
            st = Stream()
            watch = Watch(target.timeouts, scheduled, sent, None)
            try:
                async with session.post(target.url, data=body, headers=target.headers) as resp:
                    st.status = resp.status
                    cap = ContentCap.of(asked_tokens(plan))
                    await read_stream(resp.content, target.chat, st, watch, epoch, None, cap)
            finally:
                watch.close()
            return _record(st, plan, target, scheduled, sent, epoch, 0)

        async def slot() -> None:
            while left[0] > 0:
                left[0] -= 1
                rec = await one()
                assert rec.ok, (rec.error_class, rec.error_message)
                Record.model_validate_json(rec.to_line()[:-1])

        c0 = time.process_time()
        await asyncio.gather(*(slot() for _ in range(conns)))
        return 1e6 * (time.process_time() - c0) / n


async def via_h1(target: Target, plan: RequestPlan, n: int, conns: int) -> float:
    async with Pool() as pool:
        await open_connections(pool, target, conns)
        epoch, left = perf_counter_ns(), [n]

        async def slot() -> None:
            while left[0] > 0:
                left[0] -= 1
                body = build_body(plan, target)
                rec = await execute(pool, target, plan, body, perf_counter_ns(), epoch)
                assert rec.ok, (rec.error_class, rec.error_message)
                Record.model_validate_json(rec.to_line()[:-1])

        c0 = time.process_time()
        await asyncio.gather(*(slot() for _ in range(conns)))
        return 1e6 * (time.process_time() - c0) / n


def h1_with(parser: str, target: Target, plan: RequestPlan, n: int, conns: int) -> float:
    os.environ["INFERAUDIT_HTTP_PARSER"] = parser
    try:
        return uvloop.run(via_h1(target, plan, n, conns))
    finally:
        del os.environ["INFERAUDIT_HTTP_PARSER"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000, help="per measurement")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="transport-cost-"))
    port = free_port()
    nginx = start_nginx(tmp, port)
    endpoint = Endpoint(base_url=f"http://127.0.0.1:{port}/v1", model=MODEL, api=Api.completions)
    target = Target.of(endpoint, None, Workload())
    plan = RequestPlan(0, "measure", "hello world " * 20, 128, 64)
    n, c = args.requests, args.connections
    figures: dict[str, list[float]] = {"aiohttp": [], "h1": [], "h1-python": []}
    try:
        for _ in range(args.rounds):
            figures["aiohttp"].append(uvloop.run(via_aiohttp(target, plan, n, c)))
            figures["h1"].append(h1_with("httptools", target, plan, n, c))
            figures["h1-python"].append(h1_with("python", target, plan, n, c))
    finally:
        nginx.terminate()
    print(
        f"{n} requests x {args.rounds} rounds, {c} connections, 128-event SSE from nginx; "
        "CPU us per request (body, read, record, line)"
    )
    for name, xs in figures.items():
        print(f"  {name:10}", ", ".join(f"{x:.0f}" for x in xs))
    for name in ("h1", "h1-python"):
        ratios = [b / a for a, b in zip(figures["aiohttp"], figures[name], strict=True)]
        print(f"  {name} / aiohttp per round:", ", ".join(f"{r:.3f}" for r in ratios),
              f"; median {statistics.median(ratios):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
