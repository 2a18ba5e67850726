"""The twin's HTTP face: an OpenAI-compatible aiohttp app (a SIMULATION, labelled as such).

Endpoints: ``GET /health`` (200, no key needed, as vLLM), ``GET /v1/models``,
``POST /v1/completions``, ``POST /v1/chat/completions``, streaming (SSE ``data: {...}``
events, then ``data: [DONE]``) and not. Honoured: ``max_tokens`` (chat also
``max_completion_tokens``), ``min_tokens``, ``ignore_eos``, ``seed``, ``temperature``,
``stream_options.include_usage`` (usage in a last chunk with empty ``choices``), ``logprobs``
(completions: top-k count; chat: ``logprobs``/``top_logprobs``; values from the twin's own
Zipf model, ``text.token_logprobs``); other sampling
parameters (``stop``, ``top_p``, ...) are accepted and ignored, ``n`` must be 1. Chat streams
begin with a role-only delta sent with the first token, as vLLM does; the chunk holding the last
token carries ``finish_reason``. Every response carries the header ``X-Inferaudit-Twin:
simulation``; ``/v1/models`` says ``"owned_by": "inferaudit-twin (simulation)"`` and
``"simulation": true``.

The SSE writer and the token counting here are the twin's own (see ``text.py``); nothing is
shared with the load client under test. The truth file (``--truth``) gets one JSON line per
request as it finishes, flushed per line, all instants in ``time.perf_counter_ns()``:
``id``, ``seq``, ``api``, ``model``, ``identity``, ``status``, ``stream``, ``arrival_ns``,
``first_token_ns`` / ``token_ns`` (when the engine produced each token), ``first_sent_ns`` /
``sent_ns`` (when each token was written to the socket; non-streaming: the response write),
``done_ns``, ``prompt_tokens``, ``cached_prompt_tokens``, ``max_tokens``, ``tokens_generated``
(really sent), ``tokens_reported`` (``usage.completion_tokens``), ``finish_reason`` (as sent),
``true_finish`` (``length``/``stop``/``early-stop``/``truncated``/``client-closed``),
``cache_hit``, ``replica``, ``behaviours`` (those that acted on this request), ``error``,
``client_request_id`` (the request's ``X-Request-Id`` header, if any) and ``output_sha256``
(SHA-256 of the UTF-8 text really sent); engine mode also ``engine_late_steps``: how many
engine steps so far the host CPU began over 10 ms late (0 = the simulation kept its schedule).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import math
import random
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from aiohttp import web

from inferaudit.errors import ConfigError
from inferaudit.twin import text
from inferaudit.twin.behaviours import Behaviours
from inferaudit.twin.engine import BatchEngine, EngineConfig, FixedEngine, Job

SIMULATION_HEADER = "X-Inferaudit-Twin"
OWNED_BY = "inferaudit-twin (simulation)"
SWAP_SUFFIX = "#swapped"
MAX_TOP_LOGPROBS = 20  # as vLLM's default max_logprobs


@dataclass(frozen=True)
class TwinConfig:
    """Everything the twin serves with. ``engine`` picks fixed-latency or batching mode."""

    engine: FixedEngine | EngineConfig
    model_name: str
    behaviours: Behaviours = field(default_factory=Behaviours)
    tokens_per_chunk: int = 1
    api_key: str | None = None
    truth_path: Path | None = None
    seed: int = 0  # the server's own generator, for requests without a seed
    eos_mean: float = text.DEFAULT_EOS_MEAN
    max_model_len: int = 8192
    host: str = "127.0.0.1"
    port: int = 0


class _ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        kind: str,
        param: str | None = None,
        code: str | int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.code = status if code is None else code

    def response(self) -> web.Response:
        body = {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }
        return web.Response(
            status=self.status, body=orjson.dumps(body), content_type="application/json"
        )


def _bad(message: str, param: str | None = None) -> _ApiError:
    return _ApiError(400, message, "invalid_request_error", param)


@dataclass(frozen=True)
class _Params:
    api: str  # "completions" | "chat"
    prompt: str
    prompt_tokens: int
    max_tokens: int
    min_tokens: int
    ignore_eos: bool
    seed: int | None
    temperature: float
    stream: bool
    include_usage: bool
    top_logprobs: int | None = None  # None: logprobs not asked for


def _int(body: dict[str, Any], key: str, default: int | None, lo: int) -> int | None:
    value = body.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{key} must be an integer", key)
    if value < lo:
        raise _bad(f"{key} must be >= {lo}, got {value}", key)
    return value


def _prompt_text(api: str, body: dict[str, Any]) -> str:
    if api == "completions":
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if (
            isinstance(prompt, list)
            and prompt
            and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
        ):
            return " ".join(str(t) for t in prompt)  # token ids: one word per id
        if not isinstance(prompt, str):
            raise _bad("prompt must be a string (or one string, or a list of token ids)", "prompt")
        return prompt
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list", "messages")
    parts: list[str] = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _bad("each message needs a role and content", "messages")
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise _bad("only text content parts are supported", "messages")
                parts.append(str(part.get("text", "")))
        elif content is not None:
            raise _bad("message content must be a string or a list of parts", "messages")
    return "\n".join(parts)


def parse_params(api: str, body: dict[str, Any], max_model_len: int) -> _Params:
    """Validate an OpenAI request body into the parameters the twin honours."""
    prompt = _prompt_text(api, body)
    prompt_tokens = text.count_prompt_tokens(prompt)
    key = "max_tokens"
    if api == "chat" and body.get("max_tokens") is None:
        key = "max_completion_tokens"
    default = 16 if api == "completions" else max(1, max_model_len - prompt_tokens)
    max_tokens = _int(body, key, default, 1)
    assert max_tokens is not None
    min_tokens = _int(body, "min_tokens", 0, 0)
    assert min_tokens is not None
    if min_tokens > max_tokens:
        raise _bad(f"min_tokens ({min_tokens}) must be <= max_tokens ({max_tokens})", "min_tokens")
    if prompt_tokens + max_tokens > max_model_len:
        raise _bad(
            f"prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) exceeds the "
            f"model's context length {max_model_len}",
            key,
        )
    n = _int(body, "n", 1, 1)
    if n != 1:
        raise _bad("only n=1 is supported", "n")
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise _bad("ignore_eos must be a boolean", "ignore_eos")
    seed = _int(body, "seed", None, -(2**63))
    temperature = body.get("temperature", 1.0)
    if temperature is None:
        temperature = 1.0
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise _bad("temperature must be a number", "temperature")
    if not 0.0 <= temperature <= 2.0:
        raise _bad(f"temperature must be in [0, 2], got {temperature}", "temperature")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream must be a boolean", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("stream_options must be an object", "stream_options")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise _bad("stream_options.include_usage must be a boolean", "stream_options")
    if api == "chat":
        wanted = body.get("logprobs", False)
        if not isinstance(wanted, bool):
            raise _bad("logprobs must be a boolean", "logprobs")
        top = _int(body, "top_logprobs", 0, 0) if wanted else None
    else:
        top = _int(body, "logprobs", None, 0)
    if top is not None and top > MAX_TOP_LOGPROBS:
        raise _bad(f"at most {MAX_TOP_LOGPROBS} top logprobs, asked {top}", "logprobs")
    return _Params(
        api=api,
        prompt=prompt,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        min_tokens=min_tokens,
        ignore_eos=ignore_eos,
        seed=seed,
        temperature=float(temperature),
        stream=stream,
        include_usage=include_usage and stream,
        top_logprobs=top,
    )


class TruthLog:
    """Append-only JSONL of what the twin really did; one flushed line per finished request."""

    def __init__(self, path: Path | None) -> None:
        self._file: IO[bytes] | None = None
        if path is not None:
            try:
                self._file = path.open("ab")
            except OSError as exc:
                raise ConfigError(f"--truth {path}: cannot open ({exc.strerror})") from None

    def write(self, line: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(orjson.dumps(line) + b"\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class _Cached:
    words: tuple[str, ...]
    finish_reason: str
    tokens_reported: int


@dataclass
class _Outcome:
    """What one request turned into, filled in as it is served; becomes the truth line."""

    seq: int
    rid: str
    api: str
    arrival_ns: int
    status: int = 200
    stream: bool = False
    identity: str = ""
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    max_tokens: int = 0
    token_ns: list[int] = field(default_factory=list)
    sent_ns: list[int] = field(default_factory=list)
    done_ns: int = 0
    tokens_reported: int | None = None
    finish_reason: str | None = None
    true_finish: str | None = None
    cache_hit: bool = False
    replica: int | None = None
    behaviours: list[str] = field(default_factory=list)
    error: str | None = None
    client_request_id: str | None = None
    output_sha256: str | None = None
    engine_late_steps: int | None = None

    def line(self, model: str) -> dict[str, Any]:
        return {
            "id": self.rid,
            "seq": self.seq,
            "api": self.api,
            "model": model,
            "identity": self.identity,
            "status": self.status,
            "stream": self.stream,
            "arrival_ns": self.arrival_ns,
            "first_token_ns": self.token_ns[0] if self.token_ns else None,
            "token_ns": self.token_ns,
            "first_sent_ns": self.sent_ns[0] if self.sent_ns else None,
            "sent_ns": self.sent_ns,
            "done_ns": self.done_ns,
            "prompt_tokens": self.prompt_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "max_tokens": self.max_tokens,
            "tokens_generated": len(self.sent_ns),
            "tokens_reported": self.tokens_reported,
            "finish_reason": self.finish_reason,
            "true_finish": self.true_finish,
            "cache_hit": self.cache_hit,
            "replica": self.replica,
            "behaviours": self.behaviours,
            "error": self.error,
            "client_request_id": self.client_request_id,
            "output_sha256": self.output_sha256,
            "engine_late_steps": self.engine_late_steps,
        }


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


_DONE = b"data: [DONE]\n\n"


class Twin:
    """The application state and request handlers of one twin server."""

    def __init__(self, config: TwinConfig) -> None:
        if config.tokens_per_chunk < 1:
            raise ConfigError("--tokens-per-chunk must be >= 1")
        self.config = config
        b = config.behaviours
        if isinstance(config.engine, EngineConfig):
            engine_config = config.engine
            if b.prefix_cache is not None:
                engine_config = _replace_floor(engine_config, b.prefix_cache.floor)
            self.engine: FixedEngine | BatchEngine = BatchEngine(engine_config)
        else:
            fixed = config.engine
            if b.prefix_cache is not None:
                fixed = FixedEngine(fixed.ttft_ms, fixed.tpot_ms, b.prefix_cache.floor)
            self.engine = fixed
        self.truth = TruthLog(config.truth_path)
        self.rng = random.Random(config.seed)
        self.seq = 0
        self.in_flight = 0
        self.created = int(time.time())
        self.response_cache: dict[bytes, _Cached] = {}
        self.prefix_blocks: set[bytes] = set()

    # --- plumbing -------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/health", self.health)
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
        if not authorised and request.path != "/health":
            return _ApiError(401, "missing or wrong API key", "authentication_error").response()
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status in (404, 405):
                kind = "not_found_error" if exc.status == 404 else "invalid_request_error"
                return _ApiError(exc.status, exc.reason, kind).response()
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
        out = _Outcome(
            seq=self.seq,
            rid=f"{prefix}-twin-{self.seq:08d}",
            api=api,
            arrival_ns=arrival,
            client_request_id=request.headers.get("X-Request-Id"),
        )
        self.in_flight += 1
        try:
            return await self._serve(request, out)
        except _ApiError as exc:
            out.status = exc.status
            out.error = exc.message
            out.done_ns = time.perf_counter_ns()
            return exc.response()
        finally:
            self.in_flight -= 1
            self.truth.write(out.line(self.config.model_name))

    async def _serve(self, request: web.Request, out: _Outcome) -> web.StreamResponse:
        cfg, b = self.config, self.config.behaviours
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise _bad(f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise _bad("request body must be a JSON object")
        if body.get("model") != cfg.model_name:
            raise _ApiError(
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
                raise _bad(why, "max_tokens")

        truncate = self._shed(out, p.stream)
        min_tokens, ignore_eos, seed = p.min_tokens, p.ignore_eos, p.seed
        if b.ignore_params is not None:
            out.behaviours.append("ignore-params")
            min_tokens, ignore_eos, seed = 0, False, None
        if seed is None:
            seed = self.rng.getrandbits(63)
        out.identity = self._identity(out)

        engine: FixedEngine | BatchEngine = self.engine
        cache_key = self._cache_key(out.api, body, p)
        cached = None if cache_key is None else self.response_cache.get(cache_key)
        if cached is not None:
            assert b.response_cache is not None
            out.cache_hit = True
            out.behaviours.append("response-cache")
            words, finish, reported = cached.words, cached.finish_reason, cached.tokens_reported
            true_finish = "cache-replay"
            engine = FixedEngine(b.response_cache.ttft_ms, b.response_cache.tpot_ms)
        else:
            completion = text.complete(
                out.identity,
                p.prompt,
                seed=seed,
                temperature=p.temperature,
                max_tokens=p.max_tokens,
                min_tokens=min_tokens,
                ignore_eos=ignore_eos,
                eos_mean=cfg.eos_mean,
            )
            words, finish, true_finish, reported = self._tamper(out, completion)

        cached_prompt = 0
        if b.prefix_cache is not None and cached is None:
            cached_prompt = self._prefix_lookup(p.prompt, b.prefix_cache.block)
            if cached_prompt:
                out.behaviours.append("prefix-cache")
        out.cached_prompt_tokens = cached_prompt

        send = len(words)
        if truncate:
            send = max(1, len(words) // 2)
            true_finish = "truncated"
        job = Job(
            prompt_tokens=p.prompt_tokens,
            output_tokens=send,
            arrival_ns=out.arrival_ns,
            cached_prompt_tokens=cached_prompt,
        )
        out.finish_reason = None if truncate else finish
        out.true_finish = true_finish
        out.tokens_reported = None if truncate else reported
        if p.stream:
            response = await self._stream(request, out, p, job, engine, words[:send], truncate)
        else:
            response = await self._whole(out, p, job, engine, words)
        out.replica = job.replica
        if isinstance(self.engine, BatchEngine):
            out.engine_late_steps = self.engine.late_steps()
        sent_text = "".join(" " + w for w in words[: len(out.sent_ns)])
        out.output_sha256 = hashlib.sha256(sent_text.encode()).hexdigest()
        done = out.true_finish not in ("client-closed", "truncated")
        if cache_key is not None and cached is None and done:
            self.response_cache[cache_key] = _Cached(words, finish, reported)
        return response

    def _shed(self, out: _Outcome, stream: bool) -> bool:
        """shed-under-load: raise 429/503 above the threshold, or say to truncate the stream."""
        shed = self.config.behaviours.shed_under_load
        if shed is None or self.in_flight <= shed.threshold:
            return False
        out.behaviours.append("shed-under-load")
        if shed.mode == "truncate" and stream:
            return True
        if shed.mode == "429":
            raise _ApiError(429, "server overloaded, retry later", "rate_limit_error")
        raise _ApiError(503, "server overloaded", "service_unavailable")

    def _identity(self, out: _Outcome) -> str:
        """The model identity that writes this request's text (model-swap may change it)."""
        swap = self.config.behaviours.model_swap
        if swap is not None and (
            out.seq > swap.after or (swap.above > 0 and self.in_flight > swap.above)
        ):
            out.behaviours.append("model-swap")
            return self.config.model_name + SWAP_SUFFIX
        return self.config.model_name

    def _cache_key(self, api: str, body: dict[str, Any], p: _Params) -> bytes | None:
        """response-cache: what makes two requests "the same" (None when the cache is off)."""
        cache = self.config.behaviours.response_cache
        if cache is None:
            return None
        keyed: object = [p.prompt, p.max_tokens]
        if cache.key == "body":
            keyed = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        data = orjson.dumps(keyed, option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(api.encode() + b"\0" + data).digest()

    def _tamper(
        self, out: _Outcome, completion: text.Completion
    ) -> tuple[tuple[str, ...], str, str, int]:
        """early-stop and usage-inflate: (words to send, finish_reason, truth, usage tokens)."""
        b = self.config.behaviours
        words, finish = completion.words, completion.finish_reason
        true_finish = finish
        if b.early_stop is not None and len(words) > 1:
            words = words[: max(1, math.floor(len(words) * b.early_stop.fraction))]
            finish = "length" if b.early_stop.lie else "stop"
            true_finish = "early-stop"
            out.behaviours.append("early-stop")
        reported = len(words)
        if b.usage_inflate is not None:
            reported = math.ceil(len(words) * (1.0 + b.usage_inflate.ratio))
            out.behaviours.append("usage-inflate")
        return words, finish, true_finish, reported

    def _prefix_lookup(self, prompt: str, block: int) -> int:
        """Prompt tokens covered by whole blocks seen before; then remember this prompt's."""
        words = prompt.split()
        h = hashlib.sha256()
        hit, still = 0, True
        for i in range(len(words) // block):
            h.update(("\0".join(words[i * block : (i + 1) * block]) + "\1").encode())
            digest = h.copy().digest()
            if still and digest in self.prefix_blocks:
                hit = (i + 1) * block
            else:
                still = False
                self.prefix_blocks.add(digest)
        return hit

    # --- writers --------------------------------------------------------------------------

    def _chunk(
        self,
        out: _Outcome,
        content: str | None,
        finish: str | None,
        role: bool = False,
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        choice: dict[str, Any]
        if out.api == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if content is not None:
                delta["content"] = content
            choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            kind = "chat.completion.chunk"
        else:
            choice = {
                "index": 0,
                "text": content or "",
                "logprobs": logprobs,
                "finish_reason": finish,
            }
            kind = "text_completion"
        return {
            "id": out.rid,
            "object": kind,
            "created": self.created,
            "model": self.config.model_name,
            "choices": [choice],
        }

    @staticmethod
    def _logprobs(
        out: _Outcome, p: _Params, words: Sequence[str], offset: int = 0
    ) -> dict[str, Any] | None:
        """The ``logprobs`` field for these words (None when the request did not ask):
        completions' parallel lists, or chat's ``content`` list, each with ``p.top_logprobs``
        alternatives per token (vLLM's shapes)."""
        if p.top_logprobs is None or not words:
            return None
        tokens = [" " + w for w in words]
        per = text.token_logprobs(out.identity, words, p.top_logprobs)
        chosen = [d[t] for t, d in zip(tokens, per, strict=True)]
        tops = [dict(list(d.items())[: p.top_logprobs]) for d in per]
        if out.api == "chat":
            return {
                "content": [
                    {
                        "token": t,
                        "logprob": lp,
                        "bytes": list(t.encode()),
                        "top_logprobs": [
                            {"token": a, "logprob": alp, "bytes": list(a.encode())}
                            for a, alp in top.items()
                        ],
                    }
                    for t, lp, top in zip(tokens, chosen, tops, strict=True)
                ]
            }
        ends = list(itertools.accumulate(len(t) for t in tokens))
        return {
            "tokens": tokens,
            "token_logprobs": chosen,
            "top_logprobs": [
                {**top, t: lp} for t, lp, top in zip(tokens, chosen, tops, strict=True)
            ],
            "text_offset": [offset + e - len(t) for t, e in zip(tokens, ends, strict=True)],
        }

    def _usage(self, out: _Outcome) -> dict[str, int]:
        completion = out.tokens_reported or 0
        return {
            "prompt_tokens": out.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": out.prompt_tokens + completion,
        }

    async def _stream(
        self,
        request: web.Request,
        out: _Outcome,
        p: _Params,
        job: Job,
        engine: FixedEngine | BatchEngine,
        words: tuple[str, ...],
        truncate: bool,
    ) -> web.StreamResponse:
        b = self.config.behaviours
        k = self.config.tokens_per_chunk
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        pending: list[bytes] = []  # events written together at the next write
        pending_tokens = 0
        role_sent = False
        every = b.burst.every if b.burst is not None else 1
        if b.burst is not None:
            out.behaviours.append("burst")
        n = len(words)
        try:
            if b.role_first_chunk is not None:  # at once, before any token exists
                out.behaviours.append("role-first-chunk")
                chat = out.api == "chat"
                empty = self._chunk(out, None if chat else "", None, role=chat)
                await response.write(_sse(empty))
                role_sent = True
            index = start = offset = 0
            async with contextlib.aclosing(engine.generate(job)) as produced:
                async for t_ns in produced:
                    out.token_ns.append(t_ns)
                    index += 1
                    last = index == n
                    # chunks: the first token alone, then k tokens each (the last may be short)
                    if index != 1 and (index - 1) % k != 0 and not last:
                        continue
                    piece = "".join(" " + w for w in words[start:index])
                    finish = out.finish_reason if last and not truncate else None
                    if out.api == "chat" and not role_sent:
                        pending.append(_sse(self._chunk(out, None, None, role=True)))
                        role_sent = True
                    lps = self._logprobs(out, p, words[start:index], offset)
                    offset += len(piece)
                    pending.append(_sse(self._chunk(out, piece, finish, logprobs=lps)))
                    pending_tokens += index - start
                    start = index
                    held = b.burst is not None and index > 1 and not last
                    if held and (every == 0 or pending_tokens < every):
                        continue
                    await self._flush(response, out, pending, pending_tokens)
                    pending, pending_tokens = [], 0
            if not truncate:
                tail = []
                if p.include_usage:
                    usage_chunk = self._chunk(out, None, None)
                    usage_chunk["choices"] = []
                    usage_chunk["usage"] = self._usage(out)
                    tail.append(_sse(usage_chunk))
                tail.append(_DONE)
                await response.write(b"".join(tail))
            await response.write_eof()
        except ConnectionError:
            out.true_finish = "client-closed"
        out.replica = job.replica
        out.done_ns = time.perf_counter_ns()
        return response

    async def _flush(
        self, response: web.StreamResponse, out: _Outcome, events: list[bytes], tokens: int
    ) -> None:
        now = time.perf_counter_ns()  # when the bytes are handed to the socket
        await response.write(b"".join(events))
        out.sent_ns.extend([now] * tokens)

    async def _whole(
        self,
        out: _Outcome,
        p: _Params,
        job: Job,
        engine: FixedEngine | BatchEngine,
        words: tuple[str, ...],
    ) -> web.Response:
        async with contextlib.aclosing(engine.generate(job)) as produced:
            async for t_ns in produced:
                out.token_ns.append(t_ns)
        content = "".join(" " + w for w in words[: job.output_tokens])
        logprobs = self._logprobs(out, p, words[: job.output_tokens])
        choice: dict[str, Any]
        if out.api == "chat":
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": logprobs,
                "finish_reason": out.finish_reason,
            }
            kind = "chat.completion"
        else:
            choice = {
                "index": 0,
                "text": content,
                "logprobs": logprobs,
                "finish_reason": out.finish_reason,
            }
            kind = "text_completion"
        body = {
            "id": out.rid,
            "object": kind,
            "created": self.created,
            "model": self.config.model_name,
            "choices": [choice],
            "usage": self._usage(out),
        }
        now = time.perf_counter_ns()
        out.sent_ns = [now] * job.output_tokens
        out.done_ns = now
        return web.Response(body=orjson.dumps(body), content_type="application/json")


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _replace_floor(config: EngineConfig, floor: float) -> EngineConfig:
    return dataclasses.replace(config, prefix_floor=floor)


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


def run(config: TwinConfig, on_ready: Callable[[str, dict[str, object]], None]) -> None:
    """Serve in this process until SIGINT or SIGTERM, on uvloop when it is installed."""

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
