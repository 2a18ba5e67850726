"""Dead keep-alive connections are the client's problem, not the endpoint's (issue 13).

A raw asyncio HTTP/1.1 server on 127.0.0.1 (its own thread and loop) that closes keep-alive
connections the way llama.cpp's server does (silently, after a short idle time), or that kills
the second request of a connection before or after reading it; it counts connections and the
requests it read whole (headers and body), so a request sent twice to it would show.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter_ns

import pytest
import uvloop

from inferaudit.measure.load import pool as pool_module
from inferaudit.measure.load.client import Pool, Target, execute, open_connections
from inferaudit.measure.protocol import Endpoint
from inferaudit.measure.records import WRITTEN_WHOLE, Record
from inferaudit.measure.workload import RequestPlan

LoopFactory = Callable[[], asyncio.AbstractEventLoop] | None

_BODY = b'{"model":"m","prompt":"hi","stream":true}'
_EVENTS = (
    b'data: {"model":"m","choices":[{"index":0,"text":" a","finish_reason":null}]}\n\n'
    b'data: {"model":"m","choices":[{"index":0,"text":" b","finish_reason":"length"}]}\n\n'
    b'data: {"model":"m","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n'
    b"data: [DONE]\n\n"
)
_MODELS = b'{"object":"list","data":[{"id":"m","object":"model"}]}'
_CLOSED = "Disconnected: the server closed the connection"


@dataclass
class Seen:
    connections: int = 0
    requests_read: int = 0  # POST requests read whole (headers and body)


class StaleServer:
    """Modes: ``idle`` closes a connection ``idle_s`` after its last answer (a FIN, as
    llama-server's keep-alive timeout does); ``no_body`` / ``read_close`` / ``read_reset`` kill
    the second request of each connection: before reading its body, after reading it (FIN), or
    after reading it (RST); ``only_first`` answers the server's first request only and closes
    every other one before reading its body."""

    def __init__(self, mode: str, idle_s: float = 30.0) -> None:
        self.mode = mode
        self.idle_s = idle_s
        self.seen = Seen()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    def __enter__(self) -> StaleServer:
        self._thread.start()
        assert self._ready.wait(10), "the server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def target(self) -> Target:
        return Target.of(Endpoint(base_url=f"http://127.0.0.1:{self.port}/v1", model="m"), None)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()  # then end the handlers still waiting on idle connections, loop alive
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.seen.connections += 1
        n = 0
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_s)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return  # idle too long, or the client went: close (a FIN)
                n += 1
                lines = head.decode().split("\r\n")
                fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
                post = lines[0].startswith("POST")
                if post and self._kill_before_body(n):
                    return
                if fields.get("Expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await reader.readexactly(int(fields.get("Content-Length", "0")))
                if post:
                    self.seen.requests_read += 1
                    if n == 2 and self.mode == "read_close":
                        return
                    if n == 2 and self.mode == "read_reset":
                        sock = writer.get_extra_info("socket")
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                        writer.transport.abort()
                        return
                payload, kind = (_EVENTS, b"text/event-stream") if post else (_MODELS, b"json")
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: "
                    + kind
                    + b"\r\nContent-Length: "
                    + str(len(payload)).encode()
                    + b"\r\n\r\n"
                    + payload
                )
                await writer.drain()
        finally:
            writer.close()

    def _kill_before_body(self, n: int) -> bool:
        if self.mode == "no_body":
            return n == 2
        if self.mode == "only_first":
            return self.seen.requests_read > 0
        return False


def _plan(i: int) -> RequestPlan:
    return RequestPlan(i, "measure", "hi", 2, 1)


async def _send(session: Pool, target: Target, i: int) -> Record:
    epoch = perf_counter_ns()
    return await execute(session, target, _plan(i), _BODY, perf_counter_ns(), epoch)


def _expect_100(target: Target) -> Target:
    """The body held back until the server says ``100 Continue``: a server that closes after
    the headers then closes before the body was written, deterministically."""
    headers = {**target.headers, "Expect": "100-continue"}
    return Target(target.url, target.models_url, headers, target.model, target.chat)


def _warm_then_block(srv: StaleServer, loop_factory: LoopFactory) -> list[Record]:
    """Open 4 connections, block the loop past the server's idle close (as the worker blocks
    waiting for Go), then send 4 requests at once."""

    async def go() -> list[Record]:
        async with Pool() as session:
            assert await open_connections(session, srv.target, 4) == 4
            time.sleep(srv.idle_s * 3)  # the loop is blocked: the FINs wait unseen
            return list(await asyncio.gather(*(_send(session, srv.target, i) for i in range(4))))

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(go())


@pytest.mark.parametrize("loop_factory", [None, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_idle_closed_connections_are_not_reused(loop_factory: LoopFactory) -> None:
    with StaleServer("idle", idle_s=0.2) as srv:
        records = _warm_then_block(srv, loop_factory)
    outcome = [(r.error_class, r.retried, r.output_text) for r in records]
    assert outcome == [(None, None, " a b")] * 4
    assert srv.seen == Seen(connections=8, requests_read=4)  # 4 warm-up, 4 new; each read once


def test_without_the_reuse_check_the_dead_connections_are_met(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Control: the server and sequence above do reproduce issue 13 without the poll: each
    request is written into a connection the server had closed and meets its FIN (defence 3
    then sends it again, marked)."""
    monkeypatch.setattr(pool_module, "_peer_closed", lambda conn: False)
    with StaleServer("idle", idle_s=0.2) as srv:
        records = _warm_then_block(srv, None)
    assert [r.retried for r in records] == [WRITTEN_WHOLE + _CLOSED] * 4
    assert all(r.ok for r in records)
    assert srv.seen == Seen(connections=8, requests_read=4)  # the retries read, once each


def test_dead_before_the_body_is_retried_once_on_a_new_connection() -> None:
    with StaleServer("no_body") as srv:
        target = _expect_100(srv.target)

        async def go() -> list[Record]:
            async with Pool() as session:
                return [await _send(session, target, 0), await _send(session, target, 1)]

        first, second = asyncio.run(go())
    assert (first.error_class, first.retried) == (None, None)
    assert second.error_class is None and second.output_text == " a b"
    assert second.retried == _CLOSED
    assert second.scheduled_ns <= second.sent_ns < second.done_ns  # times of the request whole
    assert srv.seen == Seen(connections=2, requests_read=2)  # never read twice


def test_a_second_failure_is_the_endpoints() -> None:
    with StaleServer("only_first") as srv:
        target = _expect_100(srv.target)

        async def go() -> list[Record]:
            async with Pool() as session:
                return [await _send(session, target, 0), await _send(session, target, 1)]

        first, second = asyncio.run(go())
    assert first.ok and first.retried is None
    assert (second.error_class, second.status) == ("connect", None)
    assert second.retried == _CLOSED
    assert srv.seen == Seen(connections=2, requests_read=1)


def test_a_new_connection_that_dies_is_not_retried() -> None:
    with StaleServer("only_first") as srv:
        target = _expect_100(srv.target)

        async def go() -> list[Record]:
            async with Pool() as warm:
                ok = await _send(warm, target, 0)
            async with Pool() as session:  # a new connection: not a stale one
                return [ok, await _send(session, target, 1)]

        _, rec = asyncio.run(go())
    assert (rec.error_class, rec.retried) == ("connect", None)
    assert srv.seen == Seen(connections=2, requests_read=1)


def test_a_request_the_server_reset_after_reading_is_not_retried() -> None:
    with StaleServer("read_reset") as srv:

        async def go() -> list[Record]:
            async with Pool() as session:
                return [await _send(session, srv.target, 0), await _send(session, srv.target, 1)]

        first, second = asyncio.run(go())
    assert first.ok
    assert (second.error_class, second.status, second.retried) == ("connect", None, None)
    assert srv.seen == Seen(connections=1, requests_read=2)  # read once, never sent again


def test_a_close_without_answer_after_the_whole_request_is_resent_and_marked() -> None:
    # The server read the request whole and closed without a byte of answer (as llama.cpp's
    # server closes every connection right after a streamed response): the client cannot tell
    # that from a close that raced its send, so it sends the request once more and marks it
    # (the server may have done the first attempt's work: server-counters allows for it).
    with StaleServer("read_close") as srv:

        async def go() -> list[Record]:
            async with Pool() as session:
                return [await _send(session, srv.target, 0), await _send(session, srv.target, 1)]

        first, second = asyncio.run(go())
    assert first.ok and second.ok and second.status == 200
    assert second.retried == WRITTEN_WHOLE + _CLOSED
    assert srv.seen == Seen(connections=2, requests_read=3)  # the second request read twice


def test_retired_connections_are_replaced() -> None:
    with StaleServer("idle") as srv:

        async def go() -> list[Record]:
            async with Pool() as session:
                assert await open_connections(session, srv.target, 2) == 2
                session.retire(perf_counter_ns())
                return list(
                    await asyncio.gather(*(_send(session, srv.target, i) for i in range(2)))
                )

        records = asyncio.run(go())
    assert [(r.ok, r.retried) for r in records] == [(True, None)] * 2
    assert srv.seen == Seen(connections=4, requests_read=2)


def test_retried_round_trips_through_a_line() -> None:
    rec = Record(id=3, scheduled_ns=0, retried=_CLOSED)
    assert Record.model_validate_json(rec.to_line()) == rec
    assert Record(id=3, scheduled_ns=0).retried is None
