"""HTTP/1.1 for completion requests: one keep-alive connection and its responses.

The client's own transport, not aiohttp's: for a 128-event answer aiohttp's request and read
cost more than everything else the client does for it (``bench/transport_cost.py``). A
:class:`Connection` is an ``asyncio.Protocol`` that writes a request's bytes in one write and
hands the response's body to the SSE reader as it arrives (:meth:`Connection.readany`), with
``httptools`` (llhttp, C) parsing it where installed and
:class:`~inferaudit.measure.load.h1parse.PyResponseParser` otherwise
(``INFERAUDIT_HTTP_PARSER=python`` forces it). Bodies coded ``gzip`` or ``deflate`` are decoded.

Every completion request -- measured, probe or fingerprint -- is written by :class:`Route` with
the same head but for its length: the endpoint cannot tell one kind from another by its bytes.
What the pool does with connections, and when a request is sent again, is in
:mod:`~inferaudit.measure.load.pool`.

A failure is one of :class:`ConnectFailed` (no connection), :class:`Disconnected` (the
connection ended before a response's head was in), :class:`BadResponse` (not HTTP) and
:class:`Truncated` (the body ended before its framing said, or could not be decoded).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

from inferaudit.measure.load.h1parse import ParseError, PyResponseParser

httptools: Any
try:
    import httptools
except ImportError:  # the pure-Python parser is the fallback
    httptools = None

__all__ = [
    "HEAD_LIMIT",
    "BadResponse",
    "ConnectFailed",
    "Connection",
    "Disconnected",
    "HTTPFailure",
    "Route",
    "Truncated",
    "parser_name",
]

HEAD_LIMIT = 64 << 10  # a response head (interim ones included) longer than this is refused
_ACCEPT_ENCODING = "gzip, deflate"


class HTTPFailure(Exception):
    """An exchange failed for a reason on the wire."""


class ConnectFailed(HTTPFailure):
    """No connection: refused, unreachable, the name did not resolve, the TLS handshake."""


class Disconnected(HTTPFailure):
    """The connection ended before a response's head was in. ``answered``: a byte of a
    response had arrived; ``reset``: it ended by a reset or a socket error, not the server's
    close (FIN)."""

    def __init__(self, message: str, *, answered: bool, reset: bool) -> None:
        super().__init__(message)
        self.answered = answered
        self.reset = reset


class BadResponse(HTTPFailure):
    """The bytes are not an HTTP/1.1 response."""


class Truncated(HTTPFailure):
    """The body ended before its framing said it would, or its coding could not be decoded."""


class _Parser(Protocol):
    def feed_data(self, data: bytes) -> None: ...
    def get_status_code(self) -> int: ...
    def should_keep_alive(self) -> bool: ...


_ParseErrors: tuple[type[Exception], ...] = (ParseError,)
if httptools is not None:
    _ParseErrors += (httptools.HttpParserError,)


def parser_name() -> str:
    """The response parser this process uses: ``httptools`` or ``python``."""
    if httptools is None or os.environ.get("INFERAUDIT_HTTP_PARSER") == "python":
        return "python"
    return "httptools"


def _new_parser(protocol: Connection, name: str) -> _Parser:
    if name == "httptools":
        assert httptools is not None
        return cast(_Parser, httptools.HttpResponseParser(protocol))
    return PyResponseParser(protocol)


@dataclass(frozen=True, slots=True)
class Route:
    """Where the requests of one URL go, and the head they share but for their length."""

    host: str
    port: int
    tls: bool
    prefix: bytes = field(repr=False)  # request line and headers (an API key among them)
    has_body: bool = True
    expect_continue: bool = False  # send the body only after the server's 100 Continue

    @classmethod
    def of(cls, method: str, url: str, headers: Mapping[str, str]) -> Route:
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if tls else 80)
        name = f"[{host}]" if ":" in host else host
        authority = name if parts.port is None else f"{name}:{port}"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"{method} {path} HTTP/1.1", f"Host: {authority}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"Accept-Encoding: {_ACCEPT_ENCODING}")
        for line in lines:
            if "\r" in line or "\n" in line:
                raise ValueError("a request header holds a line break")
        body = method != "GET"
        expect = any(k.lower() == "expect" and v == "100-continue" for k, v in headers.items())
        prefix = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        return cls(host, port, tls, prefix, body, expect)

    @property
    def origin(self) -> tuple[str, int, bool]:
        return self.host, self.port, self.tls

    def head(self, length: int) -> bytes:
        if not self.has_body:
            return self.prefix + b"\r\n"
        return b"%bContent-Length: %d\r\n\r\n" % (self.prefix, length)


async def connect(route: Route, ssl_context: ssl.SSLContext | None, parser: str) -> Connection:
    """A new connection to ``route``'s origin (raises :class:`ConnectFailed`)."""
    loop = asyncio.get_running_loop()
    try:
        _, conn = await loop.create_connection(
            lambda: Connection(parser),
            route.host,
            route.port,
            ssl=ssl_context if route.tls else None,
            server_hostname=route.host if route.tls else None,
        )
    except OSError as exc:  # refused, unreachable, a name that does not resolve, TLS
        where = f"{route.host}:{route.port}"
        raise ConnectFailed(f"Cannot connect to {where}: {exc}") from exc
    return conn


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: one exchange at a time (:meth:`send`, then the body)."""

    def __init__(self, parser: str) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser_name = parser
        self.lost = False  # the connection has ended
        self.reset = False  # ... by a reset or a socket error
        self.busy = False  # an exchange is under way
        self.stray = False  # bytes no request asked for arrived: never reuse it
        self.released_ns = 0  # when it last went back to the pool (perf ns)
        self._waiter: asyncio.Future[None] | None = None
        self._reset_exchange()

    def _reset_exchange(self) -> None:
        self.parser = _new_parser(self, self._parser_name)
        self.status: int | None = None  # of the final response, once its head is in
        self.answered = False  # a byte of a response arrived
        self.complete = False  # the final response was read to its end
        self.reusable = False  # ... and it leaves the connection open for another
        self._continued = False  # a 100 Continue came
        self._head_bytes = 0
        self._framed = False  # the body has a length or chunks (else it runs to the close)
        self._encoding = b""
        self._decoder: Any = None
        self._body: list[bytes] = []
        self._error: HTTPFailure | None = None
        self.written = False  # the request went out whole

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if not self.busy or self.complete:
            self.stray = True
            return
        self.answered = True
        try:
            self.parser.feed_data(data)
        except _ParseErrors as exc:
            kind = BadResponse if self.status is None else Truncated
            return self._fail(kind(f"{type(exc).__name__}: {exc}"))
        if self.status is None:  # still in the head (bytes that ended it are not counted)
            self._head_bytes += len(data)
            if self._head_bytes > HEAD_LIMIT:
                self._fail(BadResponse(f"a response head of more than {HEAD_LIMIT:,} bytes"))

    def eof_received(self) -> bool | None:
        return None  # close the transport: a half-closed connection is of no use

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost, self.reset = True, exc is not None
        if self.busy and not self.complete and self._error is None:
            if self.status is None:
                why = "the server closed the connection" if exc is None else f"{exc}"
                self._error = Disconnected(why, answered=self.answered, reset=exc is not None)
            elif not self._framed and exc is None:
                self._end_body()  # a body that runs to the close has ended
            else:
                self._error = Truncated("Response payload is not completed")
        self._wake()

    # the parser's callbacks

    def on_message_begin(self) -> None:
        if self.complete:  # bytes after the answer, in its last read
            self.stray = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.status is not None:
            return  # a trailer
        key = name.lower()
        if key == b"content-encoding":
            self._encoding = value.strip(b" \t").lower()
        elif key == b"content-length":
            self._framed = True
        elif key == b"transfer-encoding":  # framed when chunked is the last coding (RFC 9112)
            self._framed = value.rsplit(b",", 1)[-1].strip(b" \t").lower() == b"chunked"

    def on_headers_complete(self) -> None:
        code = self.parser.get_status_code()
        if 100 <= code < 200 and code != 101:  # an interim answer; the final one follows
            self._continued = self._continued or code == 100
            self._encoding, self._framed = b"", False
        else:
            self.status = code
            if code in (204, 304):
                self._framed = True
            if self._encoding in (b"gzip", b"x-gzip"):
                self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
            elif self._encoding == b"deflate":
                self._decoder = _Deflate()
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._decoder is not None:
            try:
                body = self._decoder.decompress(body)
            except zlib.error as exc:
                return self._fail(Truncated(f"Can not decode content-encoding: {exc}"))
        if body:
            self._body.append(body)
            self._wake()

    def on_message_complete(self) -> None:
        if self.status is None:
            return  # the end of an interim answer
        self._end_body()
        self.reusable = self.parser.should_keep_alive() and not self.lost

    def _end_body(self) -> None:
        if self._decoder is not None:
            try:
                tail = self._decoder.flush()
            except zlib.error as exc:
                return self._fail(Truncated(f"Can not decode content-encoding: {exc}"))
            if tail:
                self._body.append(tail)
        self.complete = True
        self._wake()

    def _fail(self, error: HTTPFailure) -> None:
        self._error = error
        assert self.transport is not None
        self.transport.close()
        self._wake()

    # one exchange

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    async def send(self, route: Route, body: bytes) -> int:
        """Write one request and wait for its response's head: its status. ``written`` then
        says whether the request went out whole, also when this raises."""
        self._reset_exchange()
        self.busy = True
        transport = self.transport
        if self.lost or transport is None or transport.is_closing():
            why = "the connection was closed before the request was written"
            raise Disconnected(why, answered=False, reset=self.reset)
        head = route.head(len(body))
        if route.expect_continue:  # the body waits for 100 Continue
            transport.write(head)
            while not (self._continued or self._over()):
                await self._wait()
            if self.status is None and not transport.is_closing():
                transport.write(body)
                self.written = not transport.is_closing()
        else:
            transport.write(head + body)  # one write: the kernel sends it as it can
            # a write that failed at once (the peer had reset) closes the transport: then
            # not all of it went
            self.written = not transport.is_closing()
        while self.status is None:
            if self._error is not None:
                raise self._error
            await self._wait()
        return self.status

    def _over(self) -> bool:
        return self.status is not None or self._error is not None

    async def readany(self) -> bytes:
        """The body's bytes that have arrived (decoded), waiting for some; ``b""`` at its end.
        Raises what ended the exchange, once the bytes before it were read."""
        while not self._body:
            if self._error is not None:
                raise self._error
            if self.complete:
                return b""
            await self._wait()
        data = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body.clear()
        return data

    async def read_some(self, limit: int) -> bytes:
        """The first bytes of the body (at most ``limit``; none when it failed): for the
        message of an error answer, which must not wait for a body that never ends."""
        try:
            return (await self.readany())[:limit]
        except HTTPFailure:
            return b""

    async def read_all(self, limit: int) -> bytes:
        """The body to its end, or up to ``limit`` bytes of it, or up to a failure."""
        out = bytearray()
        try:
            while len(out) < limit and (data := await self.readany()):
                out += data
        except HTTPFailure:
            pass
        return bytes(out[:limit])

    def finish(self) -> bool:
        """End the exchange: True when the connection may carry another request."""
        self.busy = False
        return (
            self.complete
            and self.reusable
            and self.written  # (a body held back for 100 Continue: the server may wait for it)
            and not (self.lost or self.stray or self._body)
        )

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Deflate:
    """``deflate`` as servers send it: zlib-wrapped (RFC 9110), or raw, as some do."""

    def __init__(self) -> None:
        self._d: Any = None

    def decompress(self, data: bytes) -> bytes:
        if self._d is None:
            raw = bool(data) and (data[0] & 0x0F) != 8  # not a zlib header's method byte
            self._d = zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
        return cast(bytes, self._d.decompress(data))

    def flush(self) -> bytes:
        return b"" if self._d is None else cast(bytes, self._d.flush())
