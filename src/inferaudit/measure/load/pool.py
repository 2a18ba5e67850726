"""Keep-alive connections to the endpoint: warmed before the clock, checked before reuse.

A dead keep-alive connection is the client's problem, not the endpoint's (servers close idle
connections: llama.cpp's server and uvicorn after 5 s, silently). Two defences:

1. Before a pooled connection is used, its socket is polled: a connection with anything to read
   (the server's FIN or RST, or stray bytes) is closed and another one taken, and so is one that
   :func:`retire_connections` retired (the worker's warm-up connections when the epoch comes too
   long after them). Nothing was sent on it: this is not a retry.
2. A request that fails on a connection taken from the pool, before any byte of the response
   arrived and *before its body was completely written*, is sent again at once, once, on a new
   connection (its scheduled time and its timeouts stay as they were): the server cannot have
   read a request it did not have whole. ``Record.retried`` holds the first attempt's error. A
   second failure is recorded as the endpoint's, as any other.
3. A request written whole on a pooled connection that the server then closed without a byte of
   answer (``ServerDisconnectedError``, nothing received) is also sent once more on a new
   connection, and its ``retried`` starts with :data:`~inferaudit.measure.records.WRITTEN_WHOLE`:
   the client cannot tell a server that closed the connection as the request went out (llama.cpp's
   server closes every connection right after a streamed response, while announcing keep-alive,
   and a request sent on it within that instant meets the close) from one that read the request
   and then closed, so the server *may* have done the first attempt's work. Counting it as the
   endpoint's failure would accuse an honest server; sending it again may double work the
   endpoint did, which only lowers the figures credited to it, and the ``server-counters`` check
   allows the retried request's tokens in its band. Never retried: a request whose response had
   begun, a reset or a timeout.
"""

from __future__ import annotations

import asyncio
import select
import weakref
from contextvars import ContextVar
from dataclasses import dataclass
from time import perf_counter_ns
from typing import TYPE_CHECKING

import aiohttp
from aiohttp.abc import AbstractStreamWriter
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.payload import BytesPayload
from aiohttp.tracing import Trace

from inferaudit.measure.load.stream import Stream

if TYPE_CHECKING:
    from inferaudit.measure.load.client import Target

__all__ = [
    "ATTEMPT",
    "OPEN_TIMEOUT_S",
    "Attempt",
    "Body",
    "closed_unanswered",
    "fresh_session",
    "make_session",
    "never_read",
    "open_connections",
    "retire_connections",
]

OPEN_TIMEOUT_S = 10.0  # open_connections: a GET that takes longer is given up


class Body(BytesPayload):
    """A request body that knows whether it was written whole (into the transport)."""

    written = False

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        await super().write_with_length(writer, content_length)
        self.written = True


@dataclass(slots=True)
class Attempt:
    """What one attempt of a request learnt about its connection (filled by the connector)."""

    body: Body
    reused: bool = False  # the connection came from the pool (it had served a request)


ATTEMPT: ContextVar[Attempt | None] = ContextVar("inferaudit_attempt", default=None)


def _peer_closed(conn: Connection) -> bool:
    """The socket of an idle pooled connection has something to read: the server's FIN or RST
    (or bytes no request asked for). Either way it must not carry a request."""
    transport = conn.transport
    if transport is None or transport.is_closing():
        return True
    sock = transport.get_extra_info("socket")
    if sock is None:  # not a socket transport: nothing to poll
        return False
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)  # HUP/ERR always reported
    return bool(poller.poll(0))


class _Connector(aiohttp.TCPConnector):
    """A TCP connector that never hands out a pooled connection the server has closed, or one
    retired by :func:`retire_connections` (defence 1 of the module docstring), and tells the
    request's :class:`Attempt` whether its connection came from the pool."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit=limit, limit_per_host=0, ttl_dns_cache=None)
        # every connection handed out, and when (perf ns) it was last handed out
        self._used: weakref.WeakKeyDictionary[ResponseHandler, int] = weakref.WeakKeyDictionary()
        self.retire_before_ns = 0  # pooled connections last handed out before this: closed

    async def connect(
        self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> Connection:
        # terminates: each pass closes a pooled connection, and a new one is never refused here
        while True:
            conn = await super().connect(req, traces, timeout)
            proto = conn.protocol
            assert proto is not None, "a connection just handed out has its protocol"
            last = self._used.get(proto)
            reused = last is not None
            if last is not None and (last < self.retire_before_ns or _peer_closed(conn)):
                conn.close()
                continue
            self._used[proto] = perf_counter_ns()
            attempt = ATTEMPT.get()
            if attempt is not None:
                attempt.reused = reused
            return conn


def make_session(limit: int = 0) -> aiohttp.ClientSession:
    """One session per event loop; ``limit`` 0 means no connection limit (open loop). Its
    connector checks each pooled connection before reuse (see the module docstring)."""
    return aiohttp.ClientSession(
        connector=_Connector(limit),
        timeout=aiohttp.ClientTimeout(total=None),
        skip_auto_headers=("User-Agent",),
    )


def retire_connections(session: aiohttp.ClientSession, used_before_ns: int) -> None:
    """Never reuse the connections of ``session`` (from :func:`make_session`) last used before
    ``used_before_ns`` (perf ns): each is closed when it would be taken from the pool, and the
    request opens a new one."""
    connector = session.connector
    assert isinstance(connector, _Connector), "a session from make_session"
    connector.retire_before_ns = max(connector.retire_before_ns, used_before_ns)


def fresh_session() -> aiohttp.ClientSession:
    """A one-request session on a new connection (for the one retry of a request)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True, limit=0, ttl_dns_cache=None),
        timeout=aiohttp.ClientTimeout(total=None),
        skip_auto_headers=("User-Agent",),
    )


def never_read(exc: aiohttp.ClientConnectionError, st: Stream, attempt: Attempt) -> bool:
    """The failed attempt is provably one the server never had whole: retry it (defence 2).

    All of these must hold:

    * no byte of a response: no status line parsed (``st.status``), and a
      ``ServerDisconnectedError`` that carries no partial response message;
    * the connection came from the pool: a dead *keep-alive* connection. A new connection that
      dies is the endpoint's own doing (refused, dropped at accept) and is its failure;
    * the body was not completely written when the connection failed. The failures that can
      reach here then are: ``ClientConnectionResetError`` "Cannot write to closing transport"
      (the connection was closed before our bytes left: nothing sent);
      ``ClientOSError`` "Can not write request body" (EPIPE/ECONNRESET or a closing transport
      while writing the body: the server had closed or reset before our body reached it);
      ``ServerDisconnectedError`` or ``ClientOSError`` ECONNRESET while the body was still
      being written (the server closed before it had the request whole). In each, the server
      cannot have read the request, so it did none of its work.

    Connection *set-up* failures (``ClientConnectorError``) never qualify: no request existed.
    """
    if st.status is not None or not attempt.reused or attempt.body.written:
        return False
    if isinstance(exc, aiohttp.ServerDisconnectedError) and not isinstance(exc.message, str):
        return False  # a partial response had arrived
    return not isinstance(exc, aiohttp.ClientConnectorError)


def closed_unanswered(exc: aiohttp.ClientConnectionError, st: Stream, attempt: Attempt) -> bool:
    """The server closed a pooled connection after the request was written whole, without a
    byte of answer (defence 3): retry it, saying the server may have read it."""
    return (
        st.status is None
        and attempt.reused
        and attempt.body.written
        and isinstance(exc, aiohttp.ServerDisconnectedError)
        and isinstance(exc.message, str)  # no partial response message
    )


async def open_connections(session: aiohttp.ClientSession, target: Target, n: int) -> int:
    """Open ``n`` keep-alive connections before the clock starts: ``n`` concurrent
    ``GET {base}/models``, read to the end, so their connections go back to the pool.

    Without it the first measured requests pay the TCP (and TLS) handshake and aiohttp's
    first-call costs, which show as client lag and a higher TTFT. Returns how many answered;
    failures are left for the measured requests to meet and record.
    """

    headers = {k: v for k, v in target.headers.items() if k == "Authorization"}

    async def one() -> bool:
        try:
            async with (
                asyncio.timeout(OPEN_TIMEOUT_S),
                session.get(target.models_url, headers=headers) as resp,
            ):
                await resp.read()
                return resp.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    return sum(await asyncio.gather(*(one() for _ in range(n))))
