"""The twin's HTTP face: an OpenAI-compatible aiohttp app (a SIMULATION, labelled as such).

Endpoints: ``GET /health`` (200, no key needed, as vLLM), ``GET /metrics`` (vLLM-named
Prometheus counters of what the engine really did, no key needed, as vLLM: ``metrics.py``),
``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``, streaming (SSE
``data: {...}`` events, then ``data: [DONE]``) and not. Honoured: ``max_tokens`` (chat also
``max_completion_tokens``), ``min_tokens``, ``ignore_eos``, ``seed``, ``temperature``,
``stream_options.include_usage`` (usage in a last chunk with empty ``choices``), ``logprobs``
(completions: top-k count; chat: ``logprobs``/``top_logprobs``; values from the twin's own
Zipf model, ``text.token_logprobs``); other sampling
parameters (``stop``, ``top_p``, ...) are accepted and ignored, ``n`` must be 1. Chat streams
begin with a role-only delta sent with the first token, as vLLM does; the chunk holding the last
token carries ``finish_reason``. Every response carries the header ``X-Inferaudit-Twin:
simulation``; ``/v1/models`` says ``"owned_by": "inferaudit-twin (simulation)"`` and
``"simulation": true``.

The pieces: ``config.py`` (``TwinConfig``, labels), ``request.py`` (request parsing, OpenAI
errors), ``cheats.py`` (the behaviours that change what is served, with their state),
``writer.py`` (the twin's own SSE writer; the stream-shape behaviours), ``truth.py`` (the truth
log), ``metrics.py`` (the ``/metrics`` counters); this module routes and serves. The SSE
writer and the token counting are the twin's own
(see ``text.py``); nothing is shared with the load client under test.

The truth file (``--truth``) gets one JSON line per request as it finishes, flushed per line,
all instants in ``time.perf_counter_ns()``:
``id``, ``seq``, ``api``, ``model``, ``identity``, ``status``, ``stream``, ``arrival_ns``,
``first_token_ns`` / ``token_ns`` (when the engine produced each token), ``first_sent_ns`` /
``sent_ns`` (when each token was written to the socket; non-streaming: the response write),
``done_ns``, ``prompt_tokens``, ``cached_prompt_tokens``, ``max_tokens``, ``tokens_generated``
(really sent), ``tokens_reported`` (``usage.completion_tokens``), ``finish_reason`` (as sent),
``true_finish`` (``length``/``stop``/``early-stop``/``truncated``/``client-closed``),
``cache_hit`` (answered by a cache in front of the engine: response-cache, cache-under-load,
cache-answers), ``replica``, ``behaviours`` (those that acted on this request), ``error``,
``client_request_id`` (the request's ``X-Request-Id`` header, if any) and ``output_sha256``
(SHA-256 of the UTF-8 text really sent); engine mode also ``engine_late_steps``: how many
engine steps so far the host CPU began over 10 ms late (0 = the simulation kept its schedule).

What the twin received (filled once the body has parsed and the request is accepted; a
request refused before that, e.g. a 404 model or a 400 body, has 0, ``[]``, null, null, 0):
``messages`` (the number of chat messages; 0 for completions), ``roles`` (their roles in
order, e.g. ``["system", "user", "assistant", "user"]``; ``[]`` for completions),
``prompt_sha256`` (hex SHA-256 of the UTF-8 prompt as the twin renders it for token counting,
see ``request.py``: chat messages' text contents joined by newlines, no roles or template),
``last_user_sha256`` (hex SHA-256 of the UTF-8 text content of the last ``user`` message;
null for completions or a chat without one) and ``prefix_hit_tokens``: an
automatic-prefix-cache view kept for every accepted request on the truth side only, vLLM's
block hashing idea (``prefix.py``): the prompt's tokens (the units ``prompt_tokens`` counts)
in blocks of 16, chain-hashed ``h_k = sha256(h_{k-1} || block_k)``, and ``prefix_hit_tokens`` =
16 x the number of leading blocks whose hash an earlier request of this twin already produced,
first come first served (at most 10^6 hashes are remembered; a trailing partial block never
counts). It changes nothing that is served: only the ``prefix-cache`` behaviour does, and it
reports its own hits as ``cached_prompt_tokens``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from inferaudit.errors import ConfigError
from inferaudit.twin import text
from inferaudit.twin.cheats import Cheats
from inferaudit.twin.config import OWNED_BY, SIMULATION_HEADER, SWAP_SUFFIX, TwinConfig
from inferaudit.twin.engine import BatchEngine, FixedEngine, Job
from inferaudit.twin.metrics import CONTENT_TYPE, ServerCounters
from inferaudit.twin.prefix import PrefixView
from inferaudit.twin.request import ApiError, Params, bad_request, parse_params
from inferaudit.twin.truth import Outcome, TruthLog
from inferaudit.twin.writer import Writer

__all__ = [
    "OWNED_BY",
    "SIMULATION_HEADER",
    "SWAP_SUFFIX",
    "Twin",
    "TwinConfig",
    "TwinServer",
    "run",
    "serve_until",
]


class Twin:
    """The application state and request handlers of one twin server."""

    def __init__(self, config: TwinConfig) -> None:
        if config.tokens_per_chunk < 1:
            raise ConfigError("--tokens-per-chunk must be >= 1")
        self.config = config
        self.cheats = Cheats(config.behaviours, config.model_name)
        self.engine: FixedEngine | BatchEngine = self.cheats.engine(config.engine)
        self.truth = TruthLog(config.truth_path)
        self.prefixes = PrefixView()
        self.counters = ServerCounters(config.model_name)
        self.rng = random.Random(config.seed)
        self.seq = 0
        self.in_flight = 0
        self.created = int(time.time())
        self.writer = Writer(
            config.model_name, self.created, config.tokens_per_chunk, config.behaviours
        )

    # --- plumbing -------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.on_response_prepare.append(self._label)
        return app

    async def _label(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers[SIMULATION_HEADER] = "simulation"

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        key = self.config.api_key
        authorised = key is None or request.headers.get("Authorization") == f"Bearer {key}"
        if not authorised and request.path not in ("/health", "/metrics"):
            return ApiError(401, "missing or wrong API key", "authentication_error").response()
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status in (404, 405):
                kind = "not_found_error" if exc.status == 404 else "invalid_request_error"
                return ApiError(exc.status, exc.reason, kind).response()
            raise

    async def close(self) -> None:
        if isinstance(self.engine, BatchEngine):
            await self.engine.stop()
        self.truth.close()

    def describe(self) -> dict[str, object]:
        return self.engine.describe() | {
            "tokens_per_chunk": self.config.tokens_per_chunk,
            "max_model_len": self.config.max_model_len,
        }

    # --- handlers -------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        """vLLM's liveness probe: 200 with an empty body."""
        return web.Response()

    async def metrics(self, request: web.Request) -> web.Response:
        """The engine's counters in Prometheus text format (``metrics.py``)."""
        text_ = self.counters.exposition(self.engine, self.cheats.other_tenant)
        return web.Response(body=text_.encode(), headers={"Content-Type": CONTENT_TYPE})

    async def models(self, request: web.Request) -> web.Response:
        entry = {
            "id": self.config.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": OWNED_BY,
            "simulation": True,
            "max_model_len": self.config.max_model_len,
            "twin": self.engine.describe(),
        }
        return web.json_response({"object": "list", "data": [entry]}, dumps=_dumps)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "completions")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "chat")

    async def _handle(self, request: web.Request, api: str) -> web.StreamResponse:
        arrival = time.perf_counter_ns()
        self.seq += 1
        prefix = "cmpl" if api == "completions" else "chatcmpl"
        out = Outcome(
            seq=self.seq,
            rid=f"{prefix}-twin-{self.seq:08d}",
            api=api,
            arrival_ns=arrival,
            client_request_id=request.headers.get("X-Request-Id"),
        )
        self.in_flight += 1
        try:
            return await self._serve(request, out)
        except ApiError as exc:
            out.status = exc.status
            out.error = exc.message
            out.done_ns = time.perf_counter_ns()
            return exc.response()
        finally:
            self.in_flight -= 1
            self.counters.finish(out)
            self.truth.write(out.line(self.config.model_name))

    async def _serve(self, request: web.Request, out: Outcome) -> web.StreamResponse:
        cfg, cheats = self.config, self.cheats
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise bad_request(f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise bad_request("request body must be a JSON object")
        if body.get("model") != cfg.model_name:
            raise ApiError(
                404,
                f"The model `{body.get('model')}` does not exist.",
                "invalid_request_error",
                "model",
                "model_not_found",
            )
        p = parse_params(out.api, body, cfg.max_model_len)
        out.stream, out.prompt_tokens, out.max_tokens = p.stream, p.prompt_tokens, p.max_tokens
        if isinstance(self.engine, BatchEngine):
            why = self.engine.check_fits(p.prompt_tokens, p.max_tokens)
            if why is not None:
                raise bad_request(why, "max_tokens")
        self._received(out, p)

        truncate = cheats.shed(out, p.stream, self.in_flight)
        min_tokens, ignore_eos, seed = cheats.params(out, p)
        if seed is None:
            seed = self.rng.getrandbits(63)
        out.identity = cheats.identity(out, self.in_flight, p, body)

        engine: FixedEngine | BatchEngine = self.engine
        cache_key = cheats.cache_key(out.api, body, p)
        replayed = cheats.replay(out, cache_key, self.in_flight)
        read = p.prompt  # prefill-cut reads only the tail of a long prompt
        if replayed is not None:
            served, engine = replayed
        else:
            answered = cheats.cache_answer(out)
            if answered is not None:
                engine = answered
            read = cheats.read_prompt(out, p.prompt)
            completion = text.complete(
                out.identity,
                read,
                seed=seed,
                temperature=p.temperature,
                max_tokens=p.max_tokens,
                min_tokens=min_tokens,
                ignore_eos=ignore_eos,
                eos_mean=cfg.eos_mean,
            )
            served = cheats.tamper(out, completion)
            out.cached_prompt_tokens = cheats.cached_prompt(out, p.prompt)
        words, true_finish = served.words, served.true_finish
        if not out.cache_hit:  # answered in front of the engine: it never reaches the counters
            self.counters.start(out)

        send = len(words)
        if truncate:
            send = max(1, len(words) // 2)
            true_finish = "truncated"
        job = Job(
            prompt_tokens=p.prompt_tokens if read == p.prompt else text.count_prompt_tokens(read),
            output_tokens=send,
            arrival_ns=out.arrival_ns,
            cached_prompt_tokens=out.cached_prompt_tokens,
        )
        out.finish_reason = None if truncate else served.finish_reason
        out.true_finish = true_finish
        out.tokens_reported = None if truncate else served.tokens_reported
        response: web.StreamResponse
        if p.stream:
            response = await self.writer.stream(
                request, out, p, job, engine, words[:send], truncate
            )
        else:
            response = await self.writer.whole(out, p, job, engine, words)
        out.replica = job.replica
        if isinstance(self.engine, BatchEngine):
            out.engine_late_steps = self.engine.late_steps()
        sent_text = "".join(" " + w for w in words[: len(out.sent_ns)])
        out.output_sha256 = hashlib.sha256(sent_text.encode()).hexdigest()
        if replayed is None:
            cheats.remember(cache_key, out, served)
        return response

    def _received(self, out: Outcome, p: Params) -> None:
        """The truth keys of what this accepted request sent (``messages`` .. ``prefix_hit``)."""
        out.messages = len(p.roles)
        out.roles = list(p.roles)
        out.prompt_sha256 = _sha256(p.prompt)
        out.last_user_sha256 = None if p.last_user is None else _sha256(p.last_user)
        out.prefix_hit_tokens = self.prefixes.observe(p.prompt)


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


class TwinServer:
    """Run a twin on ``host:port`` inside the current event loop (an async context manager)."""

    def __init__(self, config: TwinConfig) -> None:
        self.twin = Twin(config)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://{self.twin.config.host}:{self.port}/v1"

    async def start(self) -> None:
        runner = web.AppRunner(self.twin.app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        host, port = self.twin.config.host, self.twin.config.port
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            await self.twin.close()
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.twin.close()

    async def __aenter__(self) -> TwinServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# The twin simulates a server on its own machine: where it may (root or CAP_SYS_NICE), its
# process asks for this priority so that other work on a shared test host does not blur the
# timing it simulates (its truth file still records every late step).
TWIN_NICE = -10


def run(config: TwinConfig, on_ready: Callable[[str, dict[str, object]], None]) -> None:
    """Serve in this process until SIGINT or SIGTERM, on uvloop when it is installed."""
    if os.getpriority(os.PRIO_PROCESS, 0) > TWIN_NICE:
        with contextlib.suppress(PermissionError):
            os.setpriority(os.PRIO_PROCESS, 0, TWIN_NICE)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve_until(config, stop, on_ready)

    try:
        import uvloop
    except ImportError:  # optional: the default loop works, with coarser timers on some hosts
        asyncio.run(main())
    else:
        uvloop.run(main())


async def serve_until(
    config: TwinConfig, stop: asyncio.Event, on_ready: Callable[[str, dict[str, object]], None]
) -> None:
    """Serve until ``stop`` is set; ``on_ready(base_url, description)`` once listening."""
    async with TwinServer(config) as server:
        on_ready(f"http://{config.host}:{server.port}", server.twin.describe())
        await stop.wait()
