"""One streaming request to an OpenAI-compatible endpoint -> one record dict.

The record dict has exactly the fields of :class:`inferaudit.measure.records.Record`, in order, with
times in integer ns since the run's epoch (``time.perf_counter_ns`` minus the epoch). Every read
from the socket is stamped once; each content-carrying SSE event in that read gets that time and
its character count. A request never raises for anything the endpoint does: the failure is in
``error_class``:

  http_<status>     the endpoint answered a non-200 status (message from its body, truncated)
  http_invalid      the answer was not parseable HTTP
  connect           no response arrived: connection refused/reset before the response began
  timeout           ``load.timeout_s`` passed between the scheduled send and the last byte
  sse_malformed     an event that is not the JSON of a completion chunk
  stream_error      the stream carried an ``{"error": ...}`` event
  stream_truncated  the connection closed mid-stream, or ended without ``[DONE]`` or a
                    ``finish_reason``
  empty_output      the stream finished normally but carried no content

Chat streams: ``choices[0].delta.content``; a role-only or empty delta is not content.
Completions: ``choices[0].text``. ``usage`` is taken from whichever event carries it (we ask
for it with ``stream_options.include_usage``). ``done_ns`` is the last read of a stream (the
last byte), or when the error happened; ``first_chunk_ns`` is the first JSON event of any kind.
Events arriving in one read share its time stamp: a server that batches tokens into one TCP
write is seen as batching, which is the truth on the wire.

Also here: :func:`fetch_models` and the preflight :func:`check_endpoint`, which turn library
exceptions into one-line :class:`~inferaudit.errors.EndpointError` messages, and
:func:`send_plans`, a small in-process way to send a few plans (probes, fingerprints).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Any

import aiohttp
import orjson

from inferaudit.errors import ConfigError, EndpointError
from inferaudit.measure.load.sse import SSEParser
from inferaudit.measure.protocol import Api, Endpoint, Workload
from inferaudit.measure.workload import RequestPlan

__all__ = [
    "Target",
    "acheck_endpoint",
    "api_key_for",
    "build_body",
    "check_endpoint",
    "execute",
    "fetch_models",
    "make_session",
    "model_ids",
    "open_connections",
    "send_plans",
]

ERROR_MESSAGE_CHARS = 200
OPEN_TIMEOUT_S = 10.0  # open_connections: a GET that takes longer is given up
_ERROR_BODY_BYTES = 65536
_DONE = b"[DONE]"


class _Malformed(Exception):
    """An SSE event that is not a completion chunk (internal)."""


@dataclass(frozen=True, slots=True)
class Target:
    """Everything constant across the requests of a run, computed once."""

    url: str
    models_url: str
    headers: Mapping[str, str]
    model: str
    chat: bool
    enforce_output_length: bool = True
    keep_output_text: bool = True
    timeout_s: float = 600.0

    @classmethod
    def of(
        cls,
        endpoint: Endpoint,
        api_key: str | None,
        workload: Workload | None = None,
        timeout_s: float = 600.0,
    ) -> Target:
        chat = endpoint.api == Api.chat
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        wl = workload or Workload()
        return cls(
            url=f"{endpoint.base_url}/{'chat/completions' if chat else 'completions'}",
            models_url=f"{endpoint.base_url}/models",
            headers=headers,
            model=endpoint.model,
            chat=chat,
            enforce_output_length=wl.enforce_output_length,
            keep_output_text=wl.keep_output_text,
            timeout_s=timeout_s,
        )


def api_key_for(endpoint: Endpoint) -> str | None:
    """The API key named by ``endpoint.api_key_env`` (None when it names none)."""
    if endpoint.api_key_env is None:
        return None
    value = os.environ.get(endpoint.api_key_env)
    if not value:
        raise ConfigError(
            f"--api-key-env {endpoint.api_key_env}: that environment variable is not set or empty"
        )
    return value


def build_body(plan: RequestPlan, target: Target) -> bytes:
    """The JSON body of ``plan``: always streaming with usage; ``plan.extra_body`` merged last."""
    body: dict[str, Any] = {"model": target.model}
    if target.chat:
        body["messages"] = [{"role": "user", "content": plan.prompt}]
    else:
        body["prompt"] = plan.prompt
    if plan.max_tokens is not None:
        body["max_tokens"] = plan.max_tokens
        if target.enforce_output_length:
            body["ignore_eos"] = True
            body["min_tokens"] = plan.max_tokens
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    if plan.extra_body:
        body.update(plan.extra_body)
    return orjson.dumps(body)


def _load_events(events: list[bytes]) -> tuple[list[Any], bytes | None]:
    """Parse the events of one read: one orjson call over all of them, or, when that fails
    (or the count differs, e.g. an event ``1,2``), one by one: the events before the first bad
    one, and the bad one (None when all are good)."""
    try:
        objs = orjson.loads(b"[" + b",".join(events) + b"]")
        if len(objs) == len(events):
            return objs, None
    except orjson.JSONDecodeError:
        pass
    out = []
    for event in events:
        try:
            out.append(orjson.loads(event))
        except orjson.JSONDecodeError:
            return out, event
    return out, None


def _top_logprobs(lp: Any, chat: bool) -> list[dict[str, float]]:
    """Per token, the alternatives the server scored, chosen token included: ``{text: logprob}``.

    Chat: ``logprobs.content[] = {token, logprob, top_logprobs: [{token, logprob}]}``;
    completions: parallel lists ``tokens``, ``token_logprobs``, ``top_logprobs: [{text: lp}]``.
    """
    if chat:
        return [
            {
                item["token"]: item["logprob"],
                **{t["token"]: t["logprob"] for t in item.get("top_logprobs") or ()},
            }
            for item in lp.get("content") or ()
        ]
    out: list[dict[str, float]] = []
    tokens = lp.get("tokens") or ()
    chosen = lp.get("token_logprobs") or ()
    for k, alternatives in enumerate(lp.get("top_logprobs") or ()):
        entry = dict(alternatives or {})
        if k < len(tokens) and k < len(chosen) and chosen[k] is not None:
            entry.setdefault(tokens[k], chosen[k])
        out.append(entry)
    return out


def make_session(limit: int = 0) -> aiohttp.ClientSession:
    """One session per event loop; ``limit`` 0 means no connection limit (open loop)."""
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, ttl_dns_cache=None)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),
        skip_auto_headers=("User-Agent",),
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


def _error_message(body: bytes) -> str:
    """The human part of an error body: OpenAI ``error.message``, ``message``, ``detail``."""
    text: Any = None
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict):
            text = err.get("message")
        elif isinstance(err, str):
            text = err
        text = text or obj.get("message") or obj.get("detail")
    if not isinstance(text, str) or not text:
        text = body.decode("utf-8", "replace")
    text = re.sub(r"\s+", " ", text).strip()
    return text[:ERROR_MESSAGE_CHARS]


async def execute(
    session: aiohttp.ClientSession,
    target: Target,
    plan: RequestPlan,
    body: bytes,
    scheduled_abs_ns: int,
    epoch_ns: int,
    worker: int = 0,
) -> dict[str, Any]:
    """Send one request now and return its record dict (never raises for endpoint failures).

    ``scheduled_abs_ns`` is the ``perf_counter_ns`` time the schedule assigned to it; the
    timeout runs from there. Cancellation (``CancelledError``) propagates.
    """
    sent = perf_counter_ns()
    chunk_ns: list[int] = []
    parts: list[str] = []
    status: int | None = None
    error_class: str | None = None
    error_message: str | None = None
    first_chunk: int | None = None
    first_content: int | None = None
    done: int | None = None
    finish_reason: str | None = None
    model: str | None = None
    usage_prompt: int | None = None
    usage_completion: int | None = None
    empty_before = 0
    top: list[dict[str, float]] = []
    got_done = False
    chat = target.chat
    loop = asyncio.get_running_loop()
    deadline = loop.time() + target.timeout_s - (sent - scheduled_abs_ns) / 1e9
    try:
        async with (
            asyncio.timeout_at(deadline),
            session.post(target.url, data=body, headers=target.headers) as resp,
        ):
            status = resp.status
            if status != 200:
                raw = await resp.content.read(_ERROR_BODY_BYTES)
                done = perf_counter_ns()
                error_class = f"http_{status}"
                error_message = _error_message(raw)
            else:
                parser = SSEParser()
                content = resp.content
                while True:
                    data = await content.readany()
                    if not data:
                        break
                    now = perf_counter_ns()
                    done = now
                    events = parser.feed(data)
                    if not events:
                        continue
                    if _DONE in events:
                        got_done = True
                        events = [e for e in events if e != _DONE]
                        if not events:
                            continue
                    if first_chunk is None:
                        first_chunk = now
                    before = len(parts)
                    objs, bad = _load_events(events)
                    try:
                        for obj in objs:
                            choices = obj.get("choices")
                            if choices:
                                choice = choices[0]
                                text = (
                                    (choice.get("delta") or {}).get("content")
                                    if chat
                                    else choice.get("text")
                                )
                                fr = choice.get("finish_reason")
                                if fr is not None:
                                    finish_reason = fr
                                lp = choice.get("logprobs")
                                if lp:
                                    top.extend(_top_logprobs(lp, chat))
                            else:
                                text = None
                                err = obj.get("error")
                                if err:
                                    error_class = "stream_error"
                                    error_message = _error_message(orjson.dumps({"error": err}))
                                    break
                            usage = obj.get("usage")
                            if usage:
                                usage_prompt = usage.get("prompt_tokens")
                                usage_completion = usage.get("completion_tokens")
                            if model is None:
                                model = obj.get("model")
                            if text:
                                parts.append(text)  # type checked once, at the end
                            elif not parts:
                                empty_before += 1
                        if bad is not None and error_class is None:
                            raise _Malformed(bad[:80].decode("utf-8", "replace"))
                    except (AttributeError, TypeError, KeyError):
                        raise _Malformed(f"not a completion chunk: {obj!r}"[:120]) from None
                    finally:  # content before a bad event in this read keeps its time
                        added = len(parts) - before
                        if added:
                            if first_content is None:
                                first_content = now
                            chunk_ns.extend([now - epoch_ns] * added)
                    if error_class is not None:
                        break
                if error_class is None and not got_done and finish_reason is None:
                    error_class = "stream_truncated"
                    error_message = "stream ended without [DONE] or a finish_reason"
    except TimeoutError:
        error_class = "timeout"
        error_message = f"no complete response within {target.timeout_s:g} s of the schedule"
    except _Malformed as exc:
        error_class = "sse_malformed"
        error_message = f"bad event: {exc}"[:ERROR_MESSAGE_CHARS]
    except aiohttp.ClientConnectorError as exc:
        error_class = "connect"
        error_message = str(exc)[:ERROR_MESSAGE_CHARS]
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
        error_class = "connect" if status is None else "stream_truncated"
        error_message = (str(exc) or type(exc).__name__)[:ERROR_MESSAGE_CHARS]
    except aiohttp.ClientResponseError as exc:  # unparseable HTTP
        error_class = "http_invalid"
        error_message = str(exc)[:ERROR_MESSAGE_CHARS]
    if done is None or (error_class is not None and error_class != "stream_truncated"):
        done = perf_counter_ns()  # when the error happened
    try:
        text_out = "".join(parts)
    except TypeError:  # a content field that is not a string
        error_class = "sse_malformed"
        wrong = next(p for p in parts if not isinstance(p, str))
        error_message = f"bad event: content is {type(wrong).__name__}, not a string"
        keep = [isinstance(p, str) for p in parts]
        parts = [p for p, k in zip(parts, keep, strict=True) if k]
        chunk_ns = [t for t, k in zip(chunk_ns, keep, strict=True) if k]
        text_out = "".join(parts)
    chunk_chars = list(map(len, parts))
    if error_class is None and not parts:
        error_class = "empty_output"
        error_message = "the stream finished without any content"
    return {
        "id": plan.id,
        "worker": worker,
        "phase": plan.phase,
        "tag": plan.tag,
        "scheduled_ns": scheduled_abs_ns - epoch_ns,
        "sent_ns": sent - epoch_ns,
        "first_chunk_ns": None if first_chunk is None else first_chunk - epoch_ns,
        "first_content_ns": None if first_content is None else first_content - epoch_ns,
        "chunk_ns": chunk_ns,
        "chunk_chars": chunk_chars,
        "done_ns": done - epoch_ns,
        "status": status,
        "error_class": error_class,
        "error_message": error_message,
        "finish_reason": finish_reason,
        "model": model,
        "usage_prompt_tokens": usage_prompt,
        "usage_completion_tokens": usage_completion,
        "content_chunks": len(chunk_ns),
        "empty_chunks_before_content": empty_before,
        "output_chars": len(text_out),
        "prompt_sha256": hashlib.sha256(plan.prompt.encode()).hexdigest(),
        "output_sha256": hashlib.sha256(text_out.encode()).hexdigest(),
        "input_tokens": plan.input_tokens,
        "max_tokens": plan.max_tokens,
        "output_text": text_out if target.keep_output_text else None,
        "top_logprobs": top or None,  # only requests that asked for logprobs get them
    }


async def send_plans(
    endpoint: Endpoint,
    plans: Sequence[RequestPlan],
    *,
    api_key: str | None = None,
    workload: Workload | None = None,
    concurrency: int = 1,
    timeout_s: float = 120.0,
) -> list[dict[str, Any]]:
    """Send ``plans`` from this process (at most ``concurrency`` at once) and return their
    records in plan order; times are ns since the call began. For probes and fingerprints;
    measured load goes through :func:`inferaudit.measure.load.runner.run_load`."""
    target = Target.of(endpoint, api_key, workload, timeout_s)
    epoch = perf_counter_ns()
    gate = asyncio.Semaphore(concurrency)
    async with make_session() as session:

        async def one(plan: RequestPlan) -> dict[str, Any]:
            body = build_body(plan, target)
            async with gate:
                return await execute(session, target, plan, body, perf_counter_ns(), epoch)

        return list(await asyncio.gather(*(one(p) for p in plans)))


async def fetch_models(endpoint: Endpoint, api_key: str | None, timeout_s: float = 10.0) -> dict:
    """``GET {base}/models`` as JSON; every failure is one-line :class:`EndpointError`."""
    url = f"{endpoint.base_url}/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.get(url, headers=headers) as resp,
        ):
            raw = await resp.read()
            if resp.status in (401, 403):
                raise EndpointError(
                    f"endpoint refused credentials (HTTP {resp.status}): set --api-key-env"
                )
            if resp.status != 200:
                raise EndpointError(f"GET {url} answered HTTP {resp.status}: {_error_message(raw)}")
    except aiohttp.ClientConnectorError as exc:
        err = exc.os_error
        reason = os.strerror(err.errno) if err.errno else (err.strerror or str(err))
        raise EndpointError(f"cannot reach {url}: {reason.lower()}") from None
    except TimeoutError:
        raise EndpointError(f"cannot reach {url}: no answer within {timeout_s:g} s") from None
    except aiohttp.ClientError as exc:
        raise EndpointError(f"cannot reach {url}: {exc or type(exc).__name__}") from None
    try:
        models = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise EndpointError(f"GET {url} did not answer JSON") from None
    if not isinstance(models, dict):
        raise EndpointError(f"GET {url} did not answer a JSON object")
    return models


def model_ids(models: dict) -> list[str]:
    """Model ids listed by a ``/v1/models`` answer (``data[].id``)."""
    data = models.get("data")
    if not isinstance(data, list):
        return []
    return [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]


async def acheck_endpoint(endpoint: Endpoint, api_key: str | None) -> dict:
    """Preflight: the endpoint answers, accepts the credentials and serves the model."""
    models = await fetch_models(endpoint, api_key)
    ids = model_ids(models)
    if endpoint.model not in ids:
        listed = ", ".join(ids) if ids else "nothing"
        raise EndpointError(
            f"model {endpoint.model!r} is not served here; /v1/models lists: {listed}"
        )
    return models


def check_endpoint(endpoint: Endpoint, api_key: str | None) -> dict:
    """Synchronous :func:`acheck_endpoint` (returns the ``/v1/models`` answer)."""
    return asyncio.run(acheck_endpoint(endpoint, api_key))
