"""In-process fake OpenAI-compatible streaming servers for the load engine's tests.

A raw asyncio HTTP/1.1 server (keep-alive, chunked responses) in a background thread on
127.0.0.1, port chosen by the OS. Raw sockets give full control of the bytes on the wire: CRLF
line ends, events split anywhere, comments, malformed events, connections dropped mid-stream.
This is a test fake, not the twin (``inferaudit.twin``), and shares no code with the client.

Content of a normal stream: ``tokens`` content events, event ``k`` carrying
``tokens_per_chunk`` words ``" {word}{n}"`` (``n`` counting words from 0), then a finish event, a
usage event (``completion_tokens`` = words sent) and ``data: [DONE]``. ``tokens`` is the
request's ``max_tokens`` when ``honour_max_tokens`` (default) and it is given.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Behaviour:
    tokens: int = 4
    tokens_per_chunk: int = 1
    word: str = "w"  # content words are " {word}{n}"
    honour_max_tokens: bool = True
    role_first: bool = False  # chat: a role-only first delta, as OpenAI sends
    status: int = 200  # answer every completion request with this status
    error_every: int = 0  # every k-th completion request (k, 2k, ...) answers error_status
    error_status: int = 429
    malformed_at: int | None = None  # content event index replaced by invalid JSON
    drop_after: int | None = None  # abort the connection after this many content events
    stall_after: int | None = None  # after this many content events, hold the stream silent
    endless: bool = False  # content events without end (pace them with delay_s)
    big_chunks: int = 0  # > 0: this many content events of chunk_bytes characters each
    chunk_bytes: int = 1024
    no_done: bool = False  # end the body without finish_reason and [DONE]
    stream_error: bool = False  # send {"error": ...} as the first event
    delay_s: float = 0.0  # before each content event
    first_delay_s: float = 0.0  # before the first byte of the body
    crlf: bool = False
    comments: bool = False  # ": keep-alive" comment frames between events
    keepalives: int = 0  # this many ": keep-alive" lines (one write) before the first event
    split: int = 0  # write the body in pieces of this many bytes (0: one write per event)
    models: tuple[str, ...] = ("fake-model",)
    finish_reason: Any = "length"  # the last choice's finish_reason (any JSON value)
    usage: Any = None  # when not None: the usage event's "usage" (any JSON value)
    served_model: Any = None  # when not None: every event's "model" (any JSON value)
    api_key: str | None = None  # when set, other Authorization headers get 401


@dataclass
class Seen:
    """What the server saw: connections, request count, bodies, headers, peak concurrency."""

    connections: int = 0
    requests: int = 0
    completions: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


class FakeServer:
    """``with FakeServer(Behaviour(...)) as srv: srv.base_url`` (ends in ``/v1``)."""

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        self.seen = Seen()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future[None] | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FakeServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()
        handlers: set[asyncio.Task[None]] = set()

        async def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            handlers.add(task)
            with self._lock:
                self.seen.connections += 1
            try:
                await self._connection(r, w)
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
                pass  # client went away, or the server is shutting down
            finally:
                handlers.discard(task)
                w.close()

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop
        server.close()
        for t in list(handlers):
            t.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    async def _connection(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await r.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if line:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
            body = await r.readexactly(int(headers.get("content-length", "0")))
            keep = await self._handle(method, path, headers, body, w)
            if not keep:
                w.transport.abort()
                return

    async def _send(self, w: asyncio.StreamWriter, status: int, ctype: str, body: bytes) -> None:
        w.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await w.drain()

    async def _handle(
        self, method: str, path: str, headers: dict[str, str], raw: bytes, w: asyncio.StreamWriter
    ) -> bool:
        b = self.behaviour
        with self._lock:
            self.seen.requests += 1
            self.seen.headers.append(headers)
        if b.api_key is not None and headers.get("authorization") != f"Bearer {b.api_key}":
            err = {"error": {"message": "Incorrect API key provided", "type": "auth"}}
            await self._send(w, 401, "application/json", json.dumps(err).encode())
            return True
        if method == "GET" and path == "/v1/models":
            data = {"object": "list", "data": [{"id": m, "object": "model"} for m in b.models]}
            await self._send(w, 200, "application/json", json.dumps(data).encode())
            return True
        chat = path == "/v1/chat/completions"
        if method != "POST" or path not in ("/v1/completions", "/v1/chat/completions"):
            await self._send(w, 404, "application/json", b'{"detail":"Not Found"}')
            return True
        req = json.loads(raw)
        with self._lock:
            self.seen.completions += 1
            n = self.seen.completions
            self.seen.bodies.append(req)
            self.seen.in_flight += 1
            self.seen.max_in_flight = max(self.seen.max_in_flight, self.seen.in_flight)
        try:
            status = b.status
            if b.error_every and n % b.error_every == 0:
                status = b.error_status
            if status != 200:
                msg = {"error": {"message": f"fake error {status} for request {n}", "code": status}}
                await self._send(w, status, "application/json", json.dumps(msg).encode())
                return True
            return await self._stream(w, req, chat)
        finally:
            with self._lock:
                self.seen.in_flight -= 1

    def content_event(self, chat: bool, text: str, model: str | None) -> bytes:
        """One content event (for endless and big streams)."""
        kind = "chat.completion.chunk" if chat else "text_completion"
        c: dict[str, Any] = (
            {"index": 0, "delta": {"content": text}, "finish_reason": None}
            if chat
            else {"index": 0, "text": text, "finish_reason": None}
        )
        obj = {"id": "cmpl-1", "created": 1, "model": model, "object": kind, "choices": [c]}
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()

    def events(self, req: dict[str, Any], chat: bool) -> list[bytes]:
        """The SSE events (complete, with terminators) of a normal stream for ``req``."""
        b = self.behaviour
        tokens = req.get("max_tokens") if b.honour_max_tokens else None
        tokens = tokens or b.tokens
        nl = "\r\n" if b.crlf else "\n"
        model = req.get("model") if b.served_model is None else b.served_model
        base = {"id": "cmpl-1", "created": 1, "model": model}
        out: list[bytes] = []

        def ev(obj: dict[str, Any] | str) -> bytes:
            text = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
            return f"data: {text}{nl}{nl}".encode()

        def choice(content: str | None, finish: Any) -> dict[str, Any]:
            if chat:
                delta = {} if content is None else {"content": content}
                return {"index": 0, "delta": delta, "finish_reason": finish}
            return {"index": 0, "text": content or "", "finish_reason": finish}

        def logprobs(first: int, n: int) -> dict[str, Any]:
            # token k: chosen " w{k}" at -0.1k, runner-up " v{k}" at -0.1k - 0.2
            toks = [
                (f" {b.word}{k}", -0.1 * k, f" v{k}", -0.1 * k - 0.2)
                for k in range(first, first + n)
            ]
            if chat:
                content = []
                for t, lp, a, alp in toks:
                    top = [{"token": t, "logprob": lp}, {"token": a, "logprob": alp}]
                    content.append({"token": t, "logprob": lp, "top_logprobs": top})
                return {"content": content}
            return {
                "tokens": [t for t, *_ in toks],
                "token_logprobs": [lp for _, lp, *_ in toks],
                "top_logprobs": [{a: alp} for _, _, a, alp in toks],  # chosen token left out
                "text_offset": [0] * n,
            }

        kind = "chat.completion.chunk" if chat else "text_completion"
        if b.stream_error:
            out.append(ev({"error": {"message": "engine overloaded", "code": 503}}))
            return out
        if b.keepalives:
            out.append(f": keep-alive{nl}".encode() * b.keepalives)
        if chat and b.role_first:
            role = {"index": 0, "delta": {"role": "assistant", "content": ""}}
            out.append(ev({**base, "object": kind, "choices": [role]}))
        word = 0
        for k in range((tokens + b.tokens_per_chunk - 1) // b.tokens_per_chunk):
            n = min(b.tokens_per_chunk, tokens - word)
            text = "".join(f" {b.word}{word + j}" for j in range(n))
            word += n
            if b.malformed_at == k:
                out.append(ev('{"choices": [{"text": "oops"'))
                continue
            c = choice(text, None)
            if req.get("logprobs"):
                c["logprobs"] = logprobs(word - n, n)
            out.append(ev({**base, "object": kind, "choices": [c]}))
            if b.comments:
                out.append(f": keep-alive{nl}".encode())
        if b.no_done:
            return out
        out.append(ev({**base, "object": kind, "choices": [choice(None, b.finish_reason)]}))
        usage = {"prompt_tokens": 7, "completion_tokens": word, "total_tokens": 7 + word}
        if b.usage is not None:
            usage = b.usage
        out.append(ev({**base, "object": kind, "choices": [], "usage": usage}))
        out.append(ev("[DONE]"))
        return out

    async def _stream(self, w: asyncio.StreamWriter, req: dict[str, Any], chat: bool) -> bool:
        b = self.behaviour
        w.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )

        def chunk(data: bytes) -> None:
            w.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

        if b.first_delay_s:
            await asyncio.sleep(b.first_delay_s)
        if b.endless:  # " w0", " w1", ... every delay_s until the client goes away
            n = 0
            while True:
                await asyncio.sleep(b.delay_s)
                chunk(self.content_event(chat, f" {b.word}{n}", req.get("model")))
                await w.drain()
                n += 1
        if b.big_chunks:  # a long answer: big_chunks events of chunk_bytes "x" each
            event = self.content_event(chat, "x" * b.chunk_bytes, req.get("model"))
            for _ in range(b.big_chunks):
                chunk(event)
            tail = self.events({**req, "max_tokens": 1}, chat)[-3:]  # finish, usage, [DONE]
            for e in tail:
                chunk(e)
            w.write(b"0\r\n\r\n")
            await w.drain()
            return True
        content_sent = 0
        for event in self.events(req, chat):
            marker = json.dumps(f" {b.word}", ensure_ascii=False)[:-1].encode()  # b'" w'

            is_content = b'"text": ' + marker in event or b'"content": ' + marker in event
            if is_content and b.drop_after is not None and content_sent >= b.drop_after:
                await w.drain()
                return False  # abort: connection dropped mid-stream
            if is_content and b.stall_after is not None and content_sent >= b.stall_after:
                await w.drain()
                await asyncio.Event().wait()  # silent until the client goes (or the server stops)
            if is_content and b.delay_s:
                await asyncio.sleep(b.delay_s)
            if b.split:
                for i in range(0, len(event), b.split):
                    chunk(event[i : i + b.split])
                    await w.drain()
            else:
                chunk(event)
                await w.drain()
            content_sent += is_content
        w.write(b"0\r\n\r\n")
        await w.drain()
        return True


def closed_port() -> int:
    """A 127.0.0.1 port with nothing listening (connection refused)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
