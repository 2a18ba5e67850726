"""The client's HTTP/1.1 transport (``measure/load/h1.py``, ``h1parse.py``).

The pure-Python response parser must call its protocol as httptools (llhttp) does: the same
responses, valid and not, are fed to both whole, a byte at a time and cut at random places.
Then the connection against a canned server on 127.0.0.1: what each kind of answer becomes in a
record, with either parser, and the exact bytes a request goes out as.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import itertools
import socket
import ssl
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter_ns
from typing import Any, cast

import httptools
import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as hs

from inferaudit.errors import ConfigError
from inferaudit.measure.load.client import Pool, Target, execute, send_plans
from inferaudit.measure.load.h1 import HEAD_LIMIT, Route
from inferaudit.measure.load.h1parse import PyResponseParser
from inferaudit.measure.protocol import Endpoint
from inferaudit.measure.records import Record
from inferaudit.measure.workload import RequestPlan

# -- the parsers, side by side


class Calls:
    """The calls a parser makes, body pieces joined (where a body is cut is the reads')."""

    def __init__(self, kind: str) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.parser: Any = (
            httptools.HttpResponseParser(self) if kind == "httptools" else PyResponseParser(self)
        )

    def on_message_begin(self) -> None:
        self.calls.append(("begin",))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.calls.append(("header", name, value))

    def on_headers_complete(self) -> None:
        self.calls.append(("head", self.parser.get_status_code()))

    def on_body(self, body: bytes) -> None:
        if self.calls[-1][0] == "body":
            self.calls[-1] = ("body", self.calls[-1][1] + body)
        else:
            self.calls.append(("body", body))

    def on_message_complete(self) -> None:
        self.calls.append(("end", self.parser.should_keep_alive()))


def feed(kind: str, pieces: list[bytes]) -> list[tuple[Any, ...]] | None:
    """The calls for ``pieces`` fed in turn, or None when the parser refused them."""
    calls = Calls(kind)
    try:
        for piece in pieces:
            calls.parser.feed_data(piece)
    except (httptools.HttpParserError, Exception):
        return None
    return calls.calls


OK = b"HTTP/1.1 200 OK\r\n"
CASES = [
    OK + b"Content-Length: 5\r\n\r\nhello",
    OK + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    OK
    + b"Transfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n10\r\n"
    + b"a" * 16
    + b"\r\n0\r\n\r\n",
    OK + b"Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-T: y\r\n\r\n",  # a trailer
    OK + b"Transfer-Encoding: gzip, chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    OK + b"Transfer-Encoding: gzip\r\n\r\nto the close",
    OK + b"\r\nto the close",
    OK + b"Content-Length: 0\r\n\r\n",
    OK + b"X:  v  \r\nX-Empty:\r\nContent-Length: 2\r\n\r\nhi",
    OK + b"Connection: close\r\nContent-Length: 2\r\n\r\nhi",
    OK + b"Connection: keep-alive, close\r\nContent-Length: 2\r\n\r\nhi",
    OK + b"Content-Length: 2\r\n\r\nhi" + OK + b"Content-Length: 1\r\n\r\nx",  # two
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 200\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 100 Continue\r\n\r\n" + OK + b"Content-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
    b"HTTP/1.1 429 Too Many\r\nContent-Length: 4\r\n\r\nslow",
    b"HTTP/1.1 999 Odd\r\nContent-Length: 2\r\n\r\nhi",
    # refused by both
    OK + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    OK + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    OK + b"Content-Length: +2\r\n\r\nhi",
    b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello",
    OK + b"Foo : bar\r\nContent-Length: 2\r\n\r\nhi",
    OK + b"Foo: bar\r\n folded\r\nContent-Length: 2\r\n\r\nhi",
    OK + b"X: a\x01b\r\nContent-Length: 2\r\n\r\nhi",
    OK + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhi\r\n0\r\n\r\n",
    OK + b"Transfer-Encoding: chunked\r\n\r\n2 \r\nhi\r\n0\r\n\r\n",
    OK + b"Transfer-Encoding: chunked\r\n\r\n2\r\nhiX\r\n0\r\n\r\n",
    OK + b"Connection: close\r\nContent-Length: 2\r\n\r\nhi" + OK + b"Content-Length: 1\r\n\r\nx",
    b"HTTP/1.1 101 Switching\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nxx",
    b"HTTP/2 200 OK\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"http/1.1 200 OK\r\n\r\n",
]
REFUSED_FROM = CASES.index(CASES[20])


def _same(pieces: list[bytes]) -> tuple[Any, Any]:
    return feed("httptools", pieces), feed("python", pieces)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_the_python_parser_calls_its_protocol_as_httptools_does(case: int) -> None:
    data = CASES[case]
    whole, bytewise = [data], [data[i : i + 1] for i in range(len(data))]
    for pieces in (whole, bytewise):
        ours, theirs = _same(pieces)
        if ours is None or theirs is None:  # (a refusal may come after other calls)
            assert ours is None and theirs is None, (pieces[:1], ours, theirs)
        else:
            assert theirs == ours
    assert (feed("python", whole) is None) == (case >= REFUSED_FROM)


@settings(max_examples=300, deadline=None)
@given(hs.sampled_from(CASES), hs.lists(hs.integers(0, 400), max_size=6))
def test_both_parsers_agree_wherever_the_reads_are_cut(data: bytes, cuts: list[int]) -> None:
    at = sorted({c % (len(data) + 1) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *at], [*at, len(data)], strict=True)]
    ours, theirs = _same(pieces)
    assert (ours is None) == (theirs is None)
    if ours is not None:
        assert ours == theirs


@settings(max_examples=200, deadline=None)
@given(
    body=hs.binary(max_size=3000),
    sizes=hs.lists(hs.integers(1, 700), min_size=1, max_size=8),
    framing=hs.sampled_from(["length", "chunked", "close"]),
    extra=hs.lists(
        hs.tuples(hs.sampled_from(["X-A", "Server", "Date"]), hs.text("ab c", max_size=9))
    ),
)
def test_any_body_comes_through_whole(
    body: bytes, sizes: list[int], framing: str, extra: list[tuple[str, str]]
) -> None:
    head = b"".join(f"{k}: {v}\r\n".encode() for k, v in extra)
    if framing == "length":
        data = OK + head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    elif framing == "chunked":
        chunks, at = [], 0
        for size in sizes * (len(body) // max(sum(sizes), 1) + 1):
            if at >= len(body):
                break
            piece = body[at : at + size]
            chunks.append(b"%x\r\n%b\r\n" % (len(piece), piece))
            at += size
        data = OK + head + b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(chunks) + b"0\r\n\r\n"
    else:
        data = OK + head + b"\r\n" + body
    cuts = [0, *sorted({s * 7 % (len(data) + 1) for s in sizes}), len(data)]
    pieces = [data[a:b] for a, b in itertools.pairwise(cuts)]
    ours, theirs = _same(pieces)
    assert ours == theirs
    assert ours is not None
    got = b"".join(c[1] for c in ours if c[0] == "body")
    assert got == body


# -- the connection, against a canned server


class Canned:
    """A server on 127.0.0.1 that reads each request whole and answers the next of
    ``answers`` (raw bytes; after the last it closes); it keeps what it read."""

    def __init__(
        self, answers: list[bytes], close_after: bool = False, tls: ssl.SSLContext | None = None
    ) -> None:
        self.answers = answers
        self.close_after = close_after
        self.tls = tls
        self.requests: list[bytes] = []
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while self.answers:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            if self.tls is not None:
                try:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError):
                    conn.close()
                    continue  # the client refused the handshake
            with conn:
                buf = b""
                while self.answers:
                    while b"\r\n\r\n" not in buf:
                        more = conn.recv(65536)
                        if not more:
                            break
                        buf += more
                    if b"\r\n\r\n" not in buf:
                        break
                    head, _, rest = buf.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b": ")
                        if name.lower() == b"content-length":
                            length = int(value)
                    while len(rest) < length:
                        rest += conn.recv(65536)
                    self.requests.append(head + b"\r\n\r\n" + rest[:length])
                    buf = rest[length:]
                    conn.sendall(self.answers.pop(0))
                    if self.close_after:
                        break

    def close(self) -> None:
        self.sock.close()

    @property
    def target(self) -> Target:
        scheme = "https" if self.tls is not None else "http"
        return Target.of(Endpoint(base_url=f"{scheme}://127.0.0.1:{self.port}/v1", model="m"), None)


@dataclass(frozen=True)
class Wire:
    """The response parser and the event loop (workers run uvloop; tests and probes may not)."""

    parser: str
    loop: str


WIRES = [Wire(p, loop) for p in ("httptools", "python") for loop in ("uvloop", "asyncio")]


@pytest.fixture(params=WIRES, ids=lambda w: f"{w.parser}-{w.loop}")
def wire(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Wire:
    monkeypatch.setenv("INFERAUDIT_HTTP_PARSER", request.param.parser)
    return cast(Wire, request.param)


EVENTS = (
    b'data: {"model":"m","choices":[{"index":0,"text":" a","finish_reason":null}]}\n\n'
    b'data: {"model":"m","choices":[{"index":0,"text":" b","finish_reason":"length"}]}\n\n'
    b"data: [DONE]\n\n"
)


def _sized(body: bytes, *head: bytes) -> bytes:
    return (
        OK + b"".join(h + b"\r\n" for h in head) + b"Content-Length: %d\r\n\r\n" % len(body) + body
    )


def _chunked(body: bytes, size: int = 37) -> bytes:
    chunks = b"".join(
        b"%x\r\n%b\r\n" % (len(body[i : i + size]), body[i : i + size])
        for i in range(0, len(body), size)
    )
    return OK + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"


def _run(srv: Canned, wire: Wire, n: int = 1) -> list[Record]:
    async def go() -> list[Record]:
        async with Pool() as pool:
            epoch = perf_counter_ns()
            plan = RequestPlan(0, "measure", "hi", 2, 1)
            out = [
                await execute(pool, srv.target, plan, b"{}", perf_counter_ns(), epoch)
                for _ in range(n)
            ]
            assert pool.parser == wire.parser
            return out

    factory = uvloop.new_event_loop if wire.loop == "uvloop" else None
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(go())
    finally:
        srv.close()


RAW = zlib.compressobj(wbits=-15)


@pytest.mark.parametrize(
    "answer",
    [
        _sized(EVENTS),
        _chunked(EVENTS),
        _chunked(EVENTS, size=1),
        OK + b"Connection: close\r\n\r\n" + EVENTS,  # to the close
        OK + b"Transfer-Encoding: identity\r\n\r\n" + EVENTS,  # not chunked: to the close
        b"HTTP/1.1 100 Continue\r\n\r\n" + _sized(EVENTS),
        _sized(gzip.compress(EVENTS), b"Content-Encoding: gzip"),
        _sized(zlib.compress(EVENTS), b"Content-Encoding: deflate"),
        _sized(RAW.compress(EVENTS) + RAW.flush(), b"Content-Encoding: deflate"),
    ],
    ids=[
        "sized",
        "chunked",
        "chunk-a-byte",
        "to-close",
        "te-identity",
        "interim",
        "gzip",
        "zlib",
        "raw",
    ],
)
def test_every_framing_and_coding_reads_the_same_record(wire: Wire, answer: bytes) -> None:
    records = _run(Canned([answer]), wire)
    (rec,) = records
    assert (rec.error_class, rec.output_text, rec.finish_reason, rec.status) == (
        None,
        " a b",
        "length",
        200,
    )


@pytest.mark.parametrize(
    ("answer", "error_class", "message"),
    [
        (b"HTTP/1.1 429 Too Many\r\nContent-Length: 9\r\n\r\nslow down", "http_429", "slow down"),
        (b"not http at all\r\n\r\n", "http_invalid", None),
        (OK + b"X: " + b"x" * 4 * HEAD_LIMIT, "http_invalid", "a response head of"),  # no end
        (OK + b"Content-Length: 999\r\n\r\n" + EVENTS, "stream_truncated", "Response payload"),
        (_chunked(EVENTS)[:-5], "stream_truncated", "Response payload is not completed"),
        (_sized(b"\x1f\x8bnot gzip", b"Content-Encoding: gzip"), "stream_truncated", "Can not"),
        (OK + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", "stream_truncated", None),
        (b"HTTP/1.1 200", "connect", "the server closed the connection"),
    ],
    ids=[
        "429",
        "not-http",
        "long-head",
        "short",
        "cut-chunks",
        "bad-gzip",
        "bad-chunk",
        "cut-head",
    ],
)
def test_what_a_broken_answer_is_recorded_as(
    wire: Wire, answer: bytes, error_class: str, message: str | None
) -> None:
    records = _run(Canned([answer], close_after=True), wire)
    (rec,) = records
    assert rec.error_class == error_class
    assert rec.error_message is not None
    if message is not None:
        assert message in rec.error_message
    assert rec.retried is None


def test_an_error_answer_is_recorded_without_waiting_for_its_body(wire: Wire) -> None:
    # the server keeps the connection open with 991 bytes of the body still to come
    answer = b"HTTP/1.1 429 Too Many\r\nContent-Length: 1000\r\n\r\nslow down"
    (rec,) = _run(Canned([answer, answer]), wire)  # (a second answer: it stays open)
    assert (rec.error_class, rec.error_message) == ("http_429", "slow down")


@pytest.mark.parametrize(
    ("answer", "connections"),
    [
        (_sized(EVENTS), 1),  # kept alive: one connection for three requests
        (_sized(EVENTS, b"Connection: close"), 3),
        (_sized(EVENTS) + b"stray", 3),  # bytes after the answer: not reused
        (b"HTTP/1.0 200 OK\r\n\r\n" + EVENTS, 3),  # to the close
    ],
    ids=["keep-alive", "close", "stray", "http/1.0"],
)
def test_a_connection_is_reused_only_when_it_may_be(
    wire: Wire, answer: bytes, connections: int
) -> None:
    srv = Canned([answer] * 3, close_after=connections > 1)
    records = _run(srv, wire, 3)
    assert [r.output_text for r in records] == [" a b"] * 3
    assert all(r.retried is None for r in records)
    assert srv.connections == connections


def test_every_completion_request_goes_out_as_the_same_bytes_but_its_body() -> None:
    srv = Canned([_sized(EVENTS)] * 3)
    endpoint = Endpoint(base_url=f"http://127.0.0.1:{srv.port}/v1", model="m")
    plans = [RequestPlan(i, "measure", "hi" * i, 2, 1) for i in (1, 2, 3)]
    records = asyncio.run(send_plans(endpoint, plans))
    srv.close()
    assert all(r.ok for r in records)
    heads = [r.partition(b"\r\n\r\n")[0] for r in srv.requests]
    assert heads[0] == (
        b"POST /v1/completions HTTP/1.1\r\n"
        b"Host: 127.0.0.1:%d\r\n"
        b"Content-Type: application/json\r\n"
        b"Accept: text/event-stream\r\n"
        b"Accept-Encoding: gzip, deflate\r\n"
        b"Content-Length: %d" % (srv.port, len(srv.requests[0].partition(b"\r\n\r\n")[2]))
    )
    bare = [h.rsplit(b"\r\n", 1)[0] for h in heads]
    assert bare[0] == bare[1] == bare[2]


def test_a_route_knows_its_origin_and_head() -> None:
    route = Route.of("GET", "https://[::1]/v1/models?x=1", {"Accept": "*/*"})
    assert route.origin == ("::1", 443, True)
    assert route.head(0) == (
        b"GET /v1/models?x=1 HTTP/1.1\r\nHost: [::1]\r\nAccept: */*\r\n"
        b"Accept-Encoding: gzip, deflate\r\n\r\n"
    )
    assert "Bearer" not in repr(Route.of("POST", "http://h:81/", {"Authorization": "Bearer k"}))


def test_an_api_key_with_a_line_break_is_refused() -> None:
    endpoint = Endpoint(base_url="http://127.0.0.1:1/v1", model="m")
    with pytest.raises(ConfigError, match="line break"):
        Target.of(endpoint, "key\r\nX-Injected: 1")


def _tls_server(tmp: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context with a certificate for 127.0.0.1 (its own issuer), and that
    certificate's PEM file."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_path, key_path)
    return server, cert_path


def test_https_is_verified_and_kept_alive(
    wire: Wire, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, cert = _tls_server(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client trusts this one certificate
    srv = Canned([_chunked(EVENTS)] * 2, tls=server)
    records = _run(srv, wire, 2)
    assert [(r.error_class, r.output_text) for r in records] == [(None, " a b")] * 2
    assert srv.connections == 1


def test_https_with_an_untrusted_certificate_cannot_connect(
    wire: Wire, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = _tls_server(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "none.pem"))
    (rec,) = _run(Canned([_chunked(EVENTS)], tls=server), wire)
    assert rec.error_class == "connect"
    assert rec.error_message is not None and "CERTIFICATE_VERIFY_FAILED" in rec.error_message
