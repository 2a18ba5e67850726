"""One streaming request to an OpenAI-compatible endpoint -> one :class:`Record`.

Times are integer ns since the run's epoch (``time.perf_counter_ns`` minus the epoch). Every read
from the socket is stamped once; each content-carrying SSE event in that read gets that time and
its character count. A request never raises for anything the endpoint does: the failure is in
``error_class``:

  http_<status>       the endpoint answered a non-200 status (message from its body, truncated)
  http_invalid        the answer was not parseable HTTP
  connect             no response arrived: connection refused/reset before the response began
  timeout             ``load.timeout_s`` passed between the scheduled send and the last byte
  first_byte_timeout  no byte of the response body within ``load.first_byte_timeout_s`` of the
                      actual send
  stall_timeout       no byte for ``load.stall_timeout_s`` after the previous one
  sse_malformed       an event that is not the JSON of a completion chunk, or one whose
                      finish_reason, model, usage or logprobs the record cannot hold
  stream_error        the stream carried an ``{"error": ...}`` event
  stream_truncated    the connection closed mid-stream, or ended without ``[DONE]`` or a
                      ``finish_reason``
  empty_output        the stream finished normally but carried no content
  overlong            the stream carried far more content than ``max_tokens`` allows
                      (:class:`~inferaudit.measure.load.stream.ContentCap`): cut off there

and one that is not the endpoint's: ``cancelled`` (the runner cut the request off: the end rule
of a duration-bounded run, a stop, a signal), with every time stamp it had. The timeouts and the
cut-off are in :mod:`inferaudit.measure.load.deadline`.

Chat streams: ``choices[0].delta.content``; a role-only or empty delta is not content.
Completions: ``choices[0].text``. ``usage`` is taken from whichever event carries it (we ask
for it with ``stream_options.include_usage``). ``done_ns`` is the last read of a stream (the
last byte), or when the error happened; ``first_chunk_ns`` is the first JSON event of any kind.
Events arriving in one read share its time stamp: a server that batches tokens into one TCP
write is seen as batching, which is the truth on the wire. The record keeps at most
``workload.max_text_bytes`` of the text; ``output_sha256`` and ``output_chars`` are of all of it.

Also here: :func:`send_plans`, a small in-process way to send a few plans (probes,
fingerprints); the preflight lives in :mod:`~inferaudit.measure.load.preflight` (re-exported).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping, MutableSet, Sequence
from dataclasses import dataclass, field
from time import perf_counter_ns
from typing import Any

import orjson
from pydantic import ValidationError

from inferaudit.errors import ConfigError
from inferaudit.measure.load.deadline import Timeouts, Watch
from inferaudit.measure.load.h1 import (
    BadResponse,
    ConnectFailed,
    Disconnected,
    HTTPFailure,
    Route,
    Truncated,
)
from inferaudit.measure.load.pool import (
    Attempt,
    Pool,
    closed_unanswered,
    never_read,
    open_connections,
)
from inferaudit.measure.load.preflight import (
    ERROR_MESSAGE_CHARS,
    acheck_endpoint,
    api_key_for,
    check_endpoint,
    error_message,
    fetch_models,
    model_ids,
)
from inferaudit.measure.load.stream import ContentCap, Malformed, ReadMeter, Stream, read_stream
from inferaudit.measure.protocol import Api, Endpoint, Load, Workload
from inferaudit.measure.records import WRITTEN_WHOLE, Record
from inferaudit.measure.workload import RequestPlan

__all__ = [
    "Pool",
    "ReadMeter",
    "Target",
    "Timeouts",
    "Watch",
    "acheck_endpoint",
    "api_key_for",
    "build_body",
    "check_endpoint",
    "execute",
    "fetch_models",
    "model_ids",
    "open_connections",
    "send_plans",
]

_ERROR_BODY_BYTES = 65536


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
    max_text_bytes: int | None = 65_536
    timeouts: Timeouts = field(default_factory=Timeouts)
    # the heads of the completion requests and of the warm-up GET (computed from the above)
    route: Route = field(init=False, repr=False, compare=False)
    models_route: Route = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        auth = {k: v for k, v in self.headers.items() if k == "Authorization"}
        try:
            object.__setattr__(self, "route", Route.of("POST", self.url, self.headers))
            models = Route.of("GET", self.models_url, {"Accept": "*/*", **auth})
        except ValueError as exc:
            raise ConfigError(f"{exc} (the API key?)") from None
        object.__setattr__(self, "models_route", models)

    @classmethod
    def of(
        cls,
        endpoint: Endpoint,
        api_key: str | None,
        workload: Workload | None = None,
        timeouts: Timeouts | None = None,
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
            max_text_bytes=wl.max_text_bytes,
            timeouts=timeouts or Timeouts(),
        )


def timeouts_of(load: Load) -> Timeouts:
    """The per-request limits a protocol's load states."""
    return Timeouts(load.timeout_s, load.first_byte_timeout_s, load.stall_timeout_s)


def build_body(plan: RequestPlan, target: Target) -> bytes:
    """The JSON body of ``plan``: always streaming with usage; ``plan.extra_body`` merged last."""
    body: dict[str, Any] = {"model": target.model}
    if target.chat and plan.messages is not None:
        body["messages"] = [{"role": role, "content": text} for role, text in plan.messages]
    elif target.chat:
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


def asked_tokens(plan: RequestPlan) -> int | None:
    """The most tokens the body of ``plan`` asks for: ``max_tokens``, or a larger
    ``max_tokens``/``max_completion_tokens`` its ``extra_body`` sets (merged last); None when
    no limit is asked, or one of them is not a number (the content cap is then the widest)."""
    asked: list[object] = [plan.max_tokens]
    extra = plan.extra_body or {}
    asked += [extra[key] for key in ("max_tokens", "max_completion_tokens") if key in extra]
    counts = [n for n in asked if isinstance(n, int) and not isinstance(n, bool)]
    return max(counts) if len(counts) == len(asked) else None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:ERROR_MESSAGE_CHARS]


async def execute(
    pool: Pool,
    target: Target,
    plan: RequestPlan,
    body: bytes,
    scheduled_abs_ns: int,
    epoch_ns: int,
    worker: int = 0,
    *,
    slot_abs_ns: int | None = None,
    inflight: MutableSet[Watch] | None = None,
    meter: ReadMeter | None = None,
) -> Record:
    """Send one request now and return its record (never raises for endpoint failures).

    ``scheduled_abs_ns`` is the ``perf_counter_ns`` time the schedule assigned to it; the total
    timeout runs from there. ``slot_abs_ns``: under an open loop's ``max_concurrency``, when a
    slot became free for it (recorded as ``slot_ns``; its client lag is measured from the later
    of the two). While it runs, its :class:`Watch` is in ``inflight``: the caller
    may :meth:`~Watch.expire` it to cut it off (it is then recorded as it stands). Any other
    cancellation (``CancelledError``) propagates.

    A request whose pooled connection turns out dead before the server had it whole is sent
    once more at once on a new connection (:mod:`~.pool`, defences 2 and 3);
    ``Record.retried`` then holds the first attempt's error. ``sent_ns`` stays the first
    attempt's send, and the timeouts keep running from the first attempt.
    """
    sent = perf_counter_ns()
    st = Stream()
    watch = Watch(target.timeouts, scheduled_abs_ns, sent, inflight)
    cap = ContentCap.of(asked_tokens(plan))
    retried: str | None = None
    try:
        first = Attempt()
        try:
            await _attempt(pool, target, first, body, st, watch, epoch_ns, meter, cap)
        except HTTPFailure as exc:
            if never_read(exc, st, first):
                retried = _one_line(exc)
            elif closed_unanswered(exc, st, first):
                retried = WRITTEN_WHOLE + _one_line(exc)
            else:
                raise
            again = Attempt()
            await _attempt(pool, target, again, body, st, watch, epoch_ns, meter, cap, fresh=True)
    except asyncio.CancelledError:
        if not watch.absorb():
            raise
        assert watch.expired is not None and watch.message is not None
        st.fail(watch.expired, watch.message)
    except Malformed as exc:
        st.fail("sse_malformed", f"bad event: {exc}")
    except ConnectFailed as exc:
        st.fail("connect", str(exc))
    except (Disconnected, Truncated) as exc:
        kind = "connect" if st.status is None else "stream_truncated"
        st.fail(kind, str(exc) or type(exc).__name__)
    except BadResponse as exc:  # unparseable HTTP
        st.fail("http_invalid", str(exc))
    finally:
        watch.close()
    if st.done is None or (st.error_class is not None and st.error_class != "stream_truncated"):
        st.done = perf_counter_ns()  # when the error happened
    slot = None if slot_abs_ns is None else slot_abs_ns - epoch_ns
    return _record(st, plan, target, scheduled_abs_ns, sent, epoch_ns, worker, slot, retried)


async def _attempt(
    pool: Pool,
    target: Target,
    attempt: Attempt,
    body: bytes,
    st: Stream,
    watch: Watch,
    epoch_ns: int,
    meter: ReadMeter | None,
    cap: ContentCap,
    *,
    fresh: bool = False,
) -> None:
    """One send of a request and the read of its answer into ``st`` (raises
    :class:`~.h1.HTTPFailure`); ``fresh``: on a new connection, not a pooled one."""
    route = target.route
    if fresh:
        conn = await pool.fresh(route)
    else:
        conn, attempt.reused = await pool.take(route)
    try:
        st.status = status = await conn.send(route, body)
        if status != 200:
            raw = await conn.read_some(_ERROR_BODY_BYTES)
            watch.last = st.done = perf_counter_ns()
            st.fail(f"http_{status}", error_message(raw))
        else:
            await read_stream(conn, target.chat, st, watch, epoch_ns, meter, cap)
    finally:
        attempt.written = conn.written
        pool.give_back(route, conn)


def _record(
    st: Stream,
    plan: RequestPlan,
    target: Target,
    scheduled_abs_ns: int,
    sent: int,
    epoch_ns: int,
    worker: int,
    slot_ns: int | None = None,
    retried: str | None = None,
) -> Record:
    parts, chunk_ns = st.parts, st.chunk_ns
    try:
        text = "".join(parts)
    except TypeError:  # a content field that is not a string
        wrong = next(p for p in parts if not isinstance(p, str))
        st.fail("sse_malformed", f"bad event: content is {type(wrong).__name__}, not a string")
        keep = [isinstance(p, str) for p in parts]
        parts = [p for p, k in zip(parts, keep, strict=True) if k]
        chunk_ns = [t for t, k in zip(chunk_ns, keep, strict=True) if k]
        text = "".join(parts)
    if st.error_class is None and not parts:
        st.fail("empty_output", "the stream finished without any content")
    data = text.encode()
    kept: str | None = None
    if target.keep_output_text:
        limit = target.max_text_bytes
        kept = text if limit is None or len(data) <= limit else _cut(data, limit)
    assert st.done is not None
    return _checked(
        id=plan.id,
        worker=worker,
        phase=plan.phase,
        tag=plan.tag,
        scheduled_ns=scheduled_abs_ns - epoch_ns,
        slot_ns=slot_ns,
        sent_ns=sent - epoch_ns,
        first_chunk_ns=None if st.first_chunk is None else st.first_chunk - epoch_ns,
        first_content_ns=None if st.first_content is None else st.first_content - epoch_ns,
        chunk_ns=chunk_ns,
        chunk_chars=list(map(len, parts)),
        done_ns=st.done - epoch_ns,
        status=st.status,
        error_class=st.error_class,
        error_message=st.error_message,
        finish_reason=st.finish_reason,
        model=st.model,
        usage_prompt_tokens=st.usage_prompt,
        usage_completion_tokens=st.usage_completion,
        content_chunks=len(chunk_ns),
        empty_chunks_before_content=st.empty_before,
        output_chars=len(text),
        prompt_sha256=hashlib.sha256(plan.prompt.encode()).hexdigest(),
        output_sha256=hashlib.sha256(data).hexdigest(),
        input_tokens=plan.input_tokens,
        max_tokens=plan.max_tokens,
        output_text=kept,
        top_logprobs=st.top or None,  # only requests that asked for logprobs get them
        session=plan.session,
        turn=plan.turn,
        retried=retried,
    )


# What the server chose and the record holds as it came: values of another type, or a count a
# records line cannot hold, are the endpoint's malformed events (see _checked).
_SERVER_FIELDS = frozenset(
    {"finish_reason", "model", "usage_prompt_tokens", "usage_completion_tokens", "top_logprobs"}
)


def _checked(**fields: Any) -> Record:
    """The record of ``fields``; when a value the server chose cannot be held -- a
    ``finish_reason`` or ``model`` that is not a string, a ``usage`` count that is not a
    64-bit integer (orjson reads a larger one as a float), logprobs that are not numbers --
    that value is dropped (None) and the request fails as ``sse_malformed`` naming it: the
    endpoint's fault, recorded like any other, never a crash of the client's worker (which
    stops the run as the client's failure: an endpoint could turn a FAIL into an invalid run)."""
    try:
        return Record(**fields)
    except ValidationError as exc:
        wrong: dict[str, str] = {}
        for error in exc.errors():
            wrong.setdefault(str(error["loc"][0]), error["msg"])
        if not wrong.keys() <= _SERVER_FIELDS:
            raise  # a value the client made: a bug, not the endpoint's
    fields.update(dict.fromkeys(wrong))
    fields["error_class"] = "sse_malformed"
    detail = "; ".join(f"{name}: {msg}" for name, msg in wrong.items())
    fields["error_message"] = f"bad event: {detail}"[:ERROR_MESSAGE_CHARS]
    return Record(**fields)


def _cut(data: bytes, limit: int) -> str:
    """The longest prefix of UTF-8 ``data`` of at most ``limit`` bytes that ends on a
    character boundary, as text."""
    end = limit
    while end > 0 and (data[end] & 0xC0) == 0x80:  # data[end] continues a character: back off
        end -= 1
    return data[:end].decode()


async def send_plans(
    endpoint: Endpoint,
    plans: Sequence[RequestPlan],
    *,
    api_key: str | None = None,
    workload: Workload | None = None,
    concurrency: int = 1,
    timeout_s: float = 120.0,
    timeouts: Timeouts | None = None,
) -> list[Record]:
    """Send ``plans`` from this process (at most ``concurrency`` at once) and return their
    records in plan order; times are ns since the call began. For probes and fingerprints;
    measured load goes through :func:`inferaudit.measure.load.runner.run_load`.

    ``timeouts`` (e.g. :func:`timeouts_of` the run's load) replaces ``timeout_s`` and the
    default first-byte and stall limits."""
    target = Target.of(endpoint, api_key, workload, timeouts or Timeouts(total_s=timeout_s))
    epoch = perf_counter_ns()
    gate = asyncio.Semaphore(concurrency)
    async with Pool() as pool:

        async def one(plan: RequestPlan) -> Record:
            body = build_body(plan, target)
            async with gate:
                return await execute(pool, target, plan, body, perf_counter_ns(), epoch)

        return list(await asyncio.gather(*(one(p) for p in plans)))
