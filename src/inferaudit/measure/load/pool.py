"""Keep-alive connections to the endpoint: warmed before the clock, checked before reuse, and
the rules for sending a request again (the connections themselves: :mod:`~.h1`).

A dead keep-alive connection is the client's problem, not the endpoint's (servers close idle
connections: llama.cpp's server and uvicorn after 5 s, silently). Three defences:

1. Before a pooled connection is used, its socket is polled: a connection with anything to read
   (the server's FIN or RST, or stray bytes) is closed and another one taken, and so is one that
   :meth:`Pool.retire` retired (the worker's warm-up connections when the epoch comes too
   long after them). Nothing was sent on it: this is not a retry.
2. A request that fails on a connection taken from the pool, before any byte of the response
   arrived and *before its body was completely written*, is sent again at once, once, on a new
   connection (its scheduled time and its timeouts stay as they were): the server cannot have
   read a request it did not have whole. (Its head and body go out in one write: "not whole"
   is a connection found closing at the write, a write that failed at once, or a body held
   back for ``100 Continue``.) ``Record.retried`` holds the first attempt's error. A second
   failure is recorded as the endpoint's, as any other.
3. A request written whole on a pooled connection that the server then closed without a byte of
   answer (:class:`~.h1.Disconnected` by a FIN, nothing received) is also sent once more on a
   new connection, and its ``retried`` starts with
   :data:`~inferaudit.measure.records.WRITTEN_WHOLE`: the client cannot tell a server that
   closed the connection as the request went out (llama.cpp's server closes every connection
   right after a streamed response, while announcing keep-alive, and a request sent on it within
   that instant meets the close) from one that read the request and then closed, so the server
   *may* have done the first attempt's work. Counting it as the endpoint's failure would accuse
   an honest server; sending it again may double work the endpoint did, which only lowers the
   figures credited to it, and the ``server-counters`` check allows the retried request's tokens
   in its band. Never retried: a request whose response had begun, a reset or a timeout.
"""

from __future__ import annotations

import asyncio
import select
import ssl
from dataclasses import dataclass
from time import perf_counter_ns
from typing import TYPE_CHECKING

from inferaudit.measure.load.h1 import Connection, Disconnected, HTTPFailure, Route, connect
from inferaudit.measure.load.h1 import parser_name as _parser_name
from inferaudit.measure.load.stream import Stream

if TYPE_CHECKING:
    from inferaudit.measure.load.client import Target

__all__ = [
    "OPEN_TIMEOUT_S",
    "Attempt",
    "Pool",
    "closed_unanswered",
    "never_read",
    "open_connections",
]

OPEN_TIMEOUT_S = 10.0  # open_connections: a GET that takes longer is given up
_MODELS_BYTES = 1 << 20  # open_connections reads this much of /models at most


@dataclass(slots=True)
class Attempt:
    """What one send of a request learnt about its connection."""

    reused: bool = False  # the connection came from the pool (it had served a request)
    written: bool = False  # the request went out whole


def _peer_closed(conn: Connection) -> bool:
    """The socket of an idle pooled connection has something to read: the server's FIN or RST
    (or bytes no request asked for). Either way it must not carry a request."""
    transport = conn.transport
    if conn.lost or conn.stray or transport is None or transport.is_closing():
        return True
    sock = transport.get_extra_info("socket")
    if sock is None:  # not a socket transport: nothing to poll
        return False
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)  # HUP/ERR always reported
    return bool(poller.poll(0))


class Pool:
    """The keep-alive connections of one event loop, by origin. A pooled connection the server
    has closed, or one retired by :meth:`retire`, is never handed out (defence 1 of the module
    docstring). ``async with Pool() as pool``: its connections are closed at the end."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int, bool], list[Connection]] = {}
        self._open: set[Connection] = set()
        self._ssl: ssl.SSLContext | None = None
        self.parser = _parser_name()
        self.retire_before_ns = 0  # pooled connections last used before this: closed

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for conn in self._open:
            conn.close()
        self._open.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # the transports close on the next pass of the loop

    async def take(self, route: Route) -> tuple[Connection, bool]:
        """A connection to ``route``'s origin: a pooled one (True) or a new one (False)."""
        idle = self._idle.get(route.origin)
        while idle:
            conn = idle.pop()  # the one used last: the likeliest to be alive
            if conn.released_ns >= self.retire_before_ns and not _peer_closed(conn):
                return conn, True
            self._drop(conn)
        return await self.fresh(route), False

    async def fresh(self, route: Route) -> Connection:
        """A new connection to ``route``'s origin (raises :class:`~.h1.ConnectFailed`)."""
        if route.tls and self._ssl is None:
            self._ssl = ssl.create_default_context()
        conn = await connect(route, self._ssl, self.parser)
        self._open.add(conn)
        return conn

    def give_back(self, route: Route, conn: Connection) -> None:
        """End ``conn``'s exchange: pooled when it may carry another request, else closed."""
        if conn.finish():
            conn.released_ns = perf_counter_ns()
            self._idle.setdefault(route.origin, []).append(conn)
        else:
            self._drop(conn)

    def retire(self, used_before_ns: int) -> None:
        """Never reuse the connections last used before ``used_before_ns`` (perf ns): each is
        closed when it would be taken, and the request opens a new one."""
        self.retire_before_ns = max(self.retire_before_ns, used_before_ns)

    def _drop(self, conn: Connection) -> None:
        conn.close()
        self._open.discard(conn)


def never_read(exc: HTTPFailure, st: Stream, attempt: Attempt) -> bool:
    """The failed attempt is provably one the server never had whole: retry it (defence 2).

    All of these must hold: no byte of a response (``st.status`` unset and the
    :class:`~.h1.Disconnected` saw none); the connection came from the pool (a dead
    *keep-alive* connection: a new connection that dies is the endpoint's own doing, refused or
    dropped at accept, and its failure); the request did not go out whole (the connection was
    closing before the write, the write failed at once, or the body was held for
    ``100 Continue``). The server then cannot have read the request, so it did none of its
    work. A connection that could not be made (:class:`~.h1.ConnectFailed`) never qualifies.
    """
    return (
        st.status is None
        and attempt.reused
        and not attempt.written
        and isinstance(exc, Disconnected)
        and not exc.answered
    )


def closed_unanswered(exc: HTTPFailure, st: Stream, attempt: Attempt) -> bool:
    """The server closed (FIN, not reset) a pooled connection after the request went out
    whole, without a byte of answer (defence 3): retry it, saying the server may have read it."""
    return (
        st.status is None
        and attempt.reused
        and attempt.written
        and isinstance(exc, Disconnected)
        and not exc.answered
        and not exc.reset
    )


async def open_connections(pool: Pool, target: Target, n: int) -> int:
    """Open ``n`` keep-alive connections before the clock starts: ``n`` concurrent
    ``GET {base}/models``, read to the end, so their connections go back to the pool.

    Without it the first measured requests pay the TCP (and TLS) handshake and the first-call
    costs, which show as client lag and a higher TTFT. Returns how many answered; failures are
    left for the measured requests to meet and record.
    """
    route = target.models_route

    async def one() -> bool:
        conn: Connection | None = None
        try:
            async with asyncio.timeout(OPEN_TIMEOUT_S):
                conn = await pool.fresh(route)
                status = await conn.send(route, b"")
                await conn.read_all(_MODELS_BYTES)
                return status == 200 and conn.complete
        except (HTTPFailure, TimeoutError):
            return False
        finally:
            if conn is not None:
                pool.give_back(route, conn)

    return sum(await asyncio.gather(*(one() for _ in range(n))))
