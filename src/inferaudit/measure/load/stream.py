"""Reading one SSE response body into the state of its request (the client's hot loop).

See :mod:`inferaudit.measure.load.client` for what a record holds and the error classes; this
module fills :class:`Stream` as reads arrive and raises :class:`Malformed` for an event that is
not a completion chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from time import perf_counter_ns
from typing import Any, Protocol

import orjson

from inferaudit.measure.load.deadline import Watch
from inferaudit.measure.load.preflight import ERROR_MESSAGE_CHARS, error_message
from inferaudit.measure.load.sse import EventTooLarge, SSEParser
from inferaudit.measure.load.template import MAX_LEARNT, Template, texts

__all__ = ["BodyReader", "ContentCap", "Malformed", "ReadMeter", "Stream", "read_stream"]

_DONE = b"[DONE]"
# Longer than any token of the common vocabularies (their longest are runs of spaces or
# punctuation of about 128 to 256 bytes): more characters than max_tokens of these is more
# than max_tokens tokens, whatever the tokenizer.
MAX_TOKEN_CHARS = 256


@dataclass(frozen=True, slots=True)
class ContentCap:
    """The most content a request may carry before it is cut off as ``overlong``: a server
    that streams without end would otherwise fill the client's memory (and a client that runs
    out of memory makes the run invalid, not the endpoint's fault). Generous: twice
    ``max_tokens`` events plus 64 (servers send at most one event a token, and may send
    several tokens in one), and ``max_tokens`` x :data:`MAX_TOKEN_CHARS` characters plus
    64 Ki; with no ``max_tokens``, 2^20 events and 64 Mi characters. And the body's bytes,
    whatever they carry (comments, empty events): 4 a character plus 8 KiB an event (an event
    with 20 top logprobs a token is a few KB), so a flood of keep-alives is cut off too."""

    events: int
    chars: int

    @property
    def body_bytes(self) -> int:
        return 4 * self.chars + (8 << 10) * self.events

    @classmethod
    def of(cls, max_tokens: int | None) -> ContentCap:
        if max_tokens is None:
            return cls(1 << 20, 64 << 20)
        return cls(2 * max_tokens + 64, max_tokens * MAX_TOKEN_CHARS + (64 << 10))


class BodyReader(Protocol):
    """A response body as it arrives (:class:`~inferaudit.measure.load.h1.Connection`)."""

    async def readany(self) -> bytes:
        """The bytes that have arrived, waiting for some; ``b""`` at the body's end."""
        ...


class Malformed(Exception):
    """An SSE event that is not a completion chunk (``execute`` records it as sse_malformed)."""


@dataclass(slots=True)
class ReadMeter:
    """Counts of the reads of content, for client health (``measure.health``): ``chunks``
    content chunks that had a chunk before them in their request, ``coalesced`` of those that
    arrived in the same read as that chunk. A request adds its counts when it ends."""

    chunks: int = 0
    coalesced: int = 0


@dataclass(slots=True)
class Stream:
    """What one request has shown so far; kept whole when it ends early (timeout, cut-off)."""

    chunk_ns: list[int] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    top: list[dict[str, float]] = field(default_factory=list)
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
    empty_before: int = 0
    got_done: bool = False

    def fail(self, error_class: str, message: str) -> None:
        self.error_class = error_class
        self.error_message = message[:ERROR_MESSAGE_CHARS]


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


def _learn(events: list[bytes], objs: list[Any], chat: bool) -> Template | None:
    """The template of the last content chunk of a read (its events, their parses)."""
    for k in range(len(objs) - 1, -1, -1):
        template = Template.learn(events[k], objs[k], chat)
        if template is not None:
            return template
    return None


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


async def read_stream(
    content: BodyReader,
    chat: bool,
    st: Stream,
    watch: Watch,
    epoch_ns: int,
    meter: ReadMeter | None,
    cap: ContentCap,
    *,
    templates: bool = True,
) -> None:
    """Read an SSE body to its end into ``st`` (the hot loop: one pass per socket read), or
    until its content passes ``cap`` (then it fails as ``overlong``).

    The loop keeps its state in locals (they are fast) and stores them into ``st`` when it
    ends, however it ends (a cut-off or a timeout included), so partial timings are kept. The
    one store per read is ``watch.last``, which the request's timer reads.

    Content chunks that repeat a parsed chunk's bytes but for their content are read through
    its :class:`~inferaudit.measure.load.template.Template` (exact; ``templates=False`` parses
    every chunk, as the test of that exactness does).
    """
    parser = SSEParser()
    parts, chunk_ns, top = st.parts, st.chunk_ns, st.top
    first_chunk = first_content = done = None
    finish_reason = model = usage_prompt = usage_completion = None
    empty_before = pairs = coalesced = chars = received = 0
    most = cap.body_bytes
    got_done = False
    obj: Any = None
    template: Template | None = None
    learnt = 0
    try:
        while True:
            data = await content.readany()
            if not data:
                break
            watch.last = done = now = perf_counter_ns()
            received += len(data)
            if received > most:
                st.fail("overlong", f"more than {most:,} bytes of body")
                return
            try:
                events = parser.feed(data)
            except EventTooLarge as exc:
                raise Malformed(str(exc)) from None
            if not events:
                continue
            if events[-1] == _DONE:  # where it stands, then taken off without a copy
                got_done = True
                events.pop()
            if _DONE in events:
                got_done = True
                events = [e for e in events if e != _DONE]
            if not events:
                continue
            if first_chunk is None:
                first_chunk = now
            before = len(parts)
            try:
                at, n = 0, len(events)
                while at < n:  # runs of chunks that fit the template, and runs that do not
                    if template is not None and (middles := template.middles(events, at)):
                        contents = texts(middles)
                        if contents is not None:
                            parts.extend(contents)
                            at += len(middles)
                            continue
                        end = n  # a middle the JSON parser reads otherwise: it decides
                    elif template is None:  # parse one chunk at a time until one is learnt
                        end = at + 1 if learnt < MAX_LEARNT and templates else n
                    else:
                        end = template.next_fit(events, at + 1)
                    part = events if at == 0 and end == n else events[at:end]
                    at, slow = end, len(parts)
                    objs, bad = _load_events(part)
                    for obj in objs:
                        choices = obj.get("choices")
                        if choices:
                            choice = choices[0]
                            if chat:
                                text = (choice.get("delta") or {}).get("content")
                            else:
                                text = choice.get("text")
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
                                msg = error_message(orjson.dumps({"error": err}))
                                st.fail("stream_error", msg)
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
                    if st.error_class is not None:
                        break
                    if bad is not None:
                        raise Malformed(bad[:80].decode("utf-8", "replace"))
                    if len(parts) > slow and templates:  # content the template did not fit
                        template = None
                        if learnt < MAX_LEARNT:
                            learnt += 1
                            template = _learn(part, objs, chat)
            except (AttributeError, TypeError, KeyError):
                raise Malformed(f"not a completion chunk: {obj!r}"[:120]) from None
            finally:  # content before a bad event in this read keeps its time
                added = len(parts) - before
                if added:
                    if first_content is None:
                        first_content = now
                        pairs += added - 1
                    else:
                        pairs += added
                    coalesced += added - 1
                    if added == 1:
                        chunk_ns.append(now - epoch_ns)
                    else:
                        chunk_ns.extend([now - epoch_ns] * added)
            if st.error_class is not None:
                return
            if added:
                # content that is not text raises here: the record fails it; its events count.
                # try/except, not contextlib.suppress: entering a context manager costs 0.6 us,
                # a fifth of a read's cost when a server sends a chunk a read
                try:  # noqa: SIM105
                    chars += len(parts[-1]) if added == 1 else sum(map(len, parts[before:]))
                except TypeError:
                    pass
                if len(parts) > cap.events or chars > cap.chars:
                    st.fail(
                        "overlong",
                        f"more than {cap.events:,} content events or {cap.chars:,} characters "
                        f"({len(parts):,} events, {chars:,} characters so far)",
                    )
                    return
        if not got_done and finish_reason is None:
            st.fail("stream_truncated", "stream ended without [DONE] or a finish_reason")
    finally:
        st.first_chunk, st.first_content, st.done = first_chunk, first_content, done
        st.finish_reason, st.model, st.got_done = finish_reason, model, got_done
        st.usage_prompt, st.usage_completion = usage_prompt, usage_completion
        st.empty_before = empty_before
        if meter is not None:
            meter.chunks += pairs
            meter.coalesced += coalesced
