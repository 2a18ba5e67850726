"""Transport cost: what the measured request's HTTP client costs, aiohttp against a bare one.

Issue 12's plan to reach 20 % of wrk starts with a bare HTTP/1.1 transport for measured
requests. This measures what that step would save before it is built. Both sides run the same
code everywhere else: the request body (``build_body``), the SSE reader (``read_stream``, fed
through its one call, ``readany()``), the record (``_record``) and its line, validated back as
the parent does. Only the transport differs:

* ``aiohttp``: the product's path, ``client.execute`` on a session from ``make_session``;
* ``bare``: an ``asyncio.Protocol`` on the same keep-alive connections, with ``httptools``
  (llhttp, C) parsing the response (status line, headers, chunked or sized body). It keeps none
  of ``pool.py``'s defences (reuse check, the retries), no TLS, no decompression: it is the
  floor such a transport can reach, not a client to use.

One process, ``--connections`` keep-alive connections in closed loop against nginx serving the
128-event SSE body of ``client_capacity.py``; the two run interleaved ``--pairs`` times, so a
noisy neighbour moves both. Prints CPU microseconds per request of each and their ratio per
pair, and the median ratio.

Needs ``httptools`` (``pip install httptools``; not a dependency of inferaudit).

Run by hand:  .venv/bin/python bench/transport_cost.py [--requests N] [--connections C]
              [--pairs P]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from time import perf_counter_ns
from typing import cast

import uvloop

from client_capacity import MODEL, free_port, start_nginx
from inferaudit.measure.load.client import (
    Target,
    _record,
    asked_tokens,
    build_body,
    execute,
    make_session,
    open_connections,
)
from inferaudit.measure.load.deadline import Watch
from inferaudit.measure.load.stream import ContentCap, Stream, read_stream
from inferaudit.measure.protocol import Api, Endpoint, Workload
from inferaudit.measure.records import Record
from inferaudit.measure.workload import RequestPlan

try:
    import httptools
except ImportError:
    sys.exit("transport_cost needs httptools: .venv/bin/pip install httptools")


class BareConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; a response's body bytes as ``readany()`` gives."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.body: list[bytes] = []
        self.status: int | None = None
        self.ended = False
        self.waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        self._wake()

    def on_headers_complete(self) -> None:  # httptools' callbacks
        self.status = self.parser.get_status_code()
        self._wake()

    def on_body(self, data: bytes) -> None:
        self.body.append(data)
        self._wake()

    def on_message_complete(self) -> None:
        self.ended = True
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def _wait(self) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        await self.waiter
        self.waiter = None

    def send(self, request: bytes) -> None:
        self.status, self.ended = None, False
        self.body.clear()
        self.transport.write(request)

    async def response_status(self) -> int:
        while self.status is None:
            await self._wait()
        return self.status

    async def readany(self) -> bytes:
        while not self.body and not self.ended:
            await self._wait()
        data = b"".join(self.body)
        self.body.clear()
        return data


def request_bytes(target: Target, host: str, body: bytes) -> bytes:
    path = target.url.split(host, 1)[1]
    head = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in target.headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def execute_bare(
    conn: BareConnection, target: Target, host: str, plan: RequestPlan, epoch: int
) -> Record:
    """What ``client.execute`` does for one request, on the bare transport (no retries)."""
    body = build_body(plan, target)
    scheduled = sent = perf_counter_ns()
    st = Stream()
    watch = Watch(target.timeouts, scheduled, sent, None)
    try:
        conn.send(request_bytes(target, host, body))
        st.status = await conn.response_status()
        cap = ContentCap.of(asked_tokens(plan))
        await read_stream(conn, target.chat, st, watch, epoch, None, cap)  # type: ignore[arg-type]
    finally:
        watch.close()
    return _record(st, plan, target, scheduled, sent, epoch, 0)


async def via_aiohttp(target: Target, plan: RequestPlan, n: int, conns: int) -> float:
    async with make_session(0) as session:
        await open_connections(session, target, conns)
        epoch, left = perf_counter_ns(), [n]

        async def slot() -> None:
            while left[0] > 0:
                left[0] -= 1
                body = build_body(plan, target)
                rec = await execute(session, target, plan, body, perf_counter_ns(), epoch)
                assert rec.ok, (rec.error_class, rec.error_message)
                Record.model_validate_json(rec.to_line()[:-1])

        c0 = time.process_time()
        await asyncio.gather(*(slot() for _ in range(conns)))
        return 1e6 * (time.process_time() - c0) / n


async def via_bare(target: Target, plan: RequestPlan, port: int, n: int, conns: int) -> float:
    loop = asyncio.get_running_loop()
    host = f"127.0.0.1:{port}"
    opened = [await loop.create_connection(BareConnection, "127.0.0.1", port) for _ in range(conns)]
    epoch, left = perf_counter_ns(), [n]

    async def slot(conn: BareConnection) -> None:
        while left[0] > 0:
            left[0] -= 1
            rec = await execute_bare(conn, target, host, plan, epoch)
            assert rec.ok, (rec.error_class, rec.error_message)
            Record.model_validate_json(rec.to_line()[:-1])

    c0 = time.process_time()
    await asyncio.gather(*(slot(conn) for _, conn in opened))
    spent = 1e6 * (time.process_time() - c0) / n
    for transport, _ in opened:
        transport.close()
    return spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000, help="per measurement")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--pairs", type=int, default=4)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="transport-cost-"))
    port = free_port()
    nginx = start_nginx(tmp, port)
    endpoint = Endpoint(base_url=f"http://127.0.0.1:{port}/v1", model=MODEL, api=Api.completions)
    target = Target.of(endpoint, None, Workload())
    plan = RequestPlan(0, "measure", "hello world " * 20, 128, 64)
    aio: list[float] = []
    bare: list[float] = []
    try:
        for _ in range(args.pairs):
            aio.append(uvloop.run(via_aiohttp(target, plan, args.requests, args.connections)))
            bare.append(uvloop.run(via_bare(target, plan, port, args.requests, args.connections)))
    finally:
        nginx.terminate()
    ratios = [b / a for a, b in zip(aio, bare, strict=True)]
    print(
        f"{args.requests} requests x {args.pairs} pairs, {args.connections} connections, "
        "128-event SSE from nginx; CPU us per request (body, read, record, line)"
    )
    print("  aiohttp:", ", ".join(f"{x:.0f}" for x in aio))
    print("  bare:   ", ", ".join(f"{x:.0f}" for x in bare))
    print("  bare / aiohttp per pair:", ", ".join(f"{r:.3f}" for r in ratios),
          f"; median {statistics.median(ratios):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
