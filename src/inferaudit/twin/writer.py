"""The twin's own response writer: SSE chunks, non-streaming bodies, logprobs and usage.

Nothing here is shared with the load client under test (DESIGN §8). Chat streams begin with a
role-only delta sent with the first token, as vLLM does; the chunk holding the last token
carries ``finish_reason``; the first token goes alone, then ``tokens_per_chunk`` tokens per
chunk. Two adversarial behaviours act on the stream's shape and live here:
``role-first-chunk`` (an empty chunk at once, before any token exists), ``split-first-token``
(a fragment of the first token at once, the rest when it exists) and ``burst`` (tokens held back
and written together). The instant each token's bytes are handed to the socket goes
into ``Outcome.sent_ns``.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web

from inferaudit.twin import text
from inferaudit.twin.behaviours import Behaviours
from inferaudit.twin.engine import BatchEngine, FixedEngine, Job
from inferaudit.twin.request import Params
from inferaudit.twin.truth import Outcome

DONE = b"data: [DONE]\n\n"


def sse(payload: dict[str, Any]) -> bytes:
    """One SSE ``data:`` event."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def logprobs_field(
    out: Outcome, p: Params, words: Sequence[str], offset: int = 0
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
        "top_logprobs": [{**top, t: lp} for t, lp, top in zip(tokens, chosen, tops, strict=True)],
        "text_offset": [offset + e - len(t) for t, e in zip(tokens, ends, strict=True)],
    }


def usage(out: Outcome) -> dict[str, int]:
    """The ``usage`` object: what the twin *reports* (``Outcome.tokens_reported``)."""
    completion = out.tokens_reported or 0
    return {
        "prompt_tokens": out.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": out.prompt_tokens + completion,
    }


class Writer:
    """Writes one twin's responses (model name, creation time and chunking fixed per server)."""

    def __init__(
        self, model_name: str, created: int, tokens_per_chunk: int, behaviours: Behaviours
    ) -> None:
        self.model_name = model_name
        self.created = created
        self.tokens_per_chunk = tokens_per_chunk
        self.behaviours = behaviours

    def chunk(
        self,
        out: Outcome,
        content: str | None,
        finish: str | None,
        role: bool = False,
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One streamed chunk object (``chat.completion.chunk`` or ``text_completion``)."""
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
            "model": self.model_name,
            "choices": [choice],
        }

    async def stream(
        self,
        request: web.Request,
        out: Outcome,
        p: Params,
        job: Job,
        engine: FixedEngine | BatchEngine,
        words: tuple[str, ...],
        truncate: bool,
    ) -> web.StreamResponse:
        """Stream ``words`` as the engine produces them; ``truncate`` cuts the stream short
        (no finish_reason, no usage, no ``[DONE]``)."""
        b = self.behaviours
        k = self.tokens_per_chunk
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
                empty = self.chunk(out, None if chat else "", None, role=chat)
                await response.write(sse(empty))
                role_sent = True
            index = start = offset = 0
            head = ""  # split-first-token: the fragment of the first token already sent
            if b.split_first_token is not None and n:
                out.behaviours.append("split-first-token")
                first = " " + words[0]
                head = first[: min(b.split_first_token.chars, len(first) - 1)]
                fragment = self.chunk(out, head, None, role=out.api == "chat" and not role_sent)
                await response.write(sse(fragment))
                role_sent = True
                offset = len(head)
            async with contextlib.aclosing(engine.generate(job)) as produced:
                async for t_ns in produced:
                    out.token_ns.append(t_ns)
                    index += 1
                    last = index == n
                    # chunks: the first token alone, then k tokens each (the last may be short)
                    if index != 1 and (index - 1) % k != 0 and not last:
                        continue
                    piece = "".join(" " + w for w in words[start:index])
                    if start == 0 and head:
                        piece = piece[len(head) :]
                    finish = out.finish_reason if last and not truncate else None
                    if out.api == "chat" and not role_sent:
                        pending.append(sse(self.chunk(out, None, None, role=True)))
                        role_sent = True
                    lps = logprobs_field(out, p, words[start:index], offset)
                    offset += len(piece)
                    pending.append(sse(self.chunk(out, piece, finish, logprobs=lps)))
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
                    usage_chunk = self.chunk(out, None, None)
                    usage_chunk["choices"] = []
                    usage_chunk["usage"] = usage(out)
                    tail.append(sse(usage_chunk))
                tail.append(DONE)
                await response.write(b"".join(tail))
            await response.write_eof()
        except ConnectionError:
            out.true_finish = "client-closed"
        out.replica = job.replica
        out.done_ns = time.perf_counter_ns()
        return response

    @staticmethod
    async def _flush(
        response: web.StreamResponse, out: Outcome, events: list[bytes], tokens: int
    ) -> None:
        now = time.perf_counter_ns()  # when the bytes are handed to the socket
        await response.write(b"".join(events))
        out.sent_ns.extend([now] * tokens)

    async def whole(
        self,
        out: Outcome,
        p: Params,
        job: Job,
        engine: FixedEngine | BatchEngine,
        words: tuple[str, ...],
    ) -> web.Response:
        """A non-streaming response, written once the engine has produced every token."""
        async with contextlib.aclosing(engine.generate(job)) as produced:
            async for t_ns in produced:
                out.token_ns.append(t_ns)
        content = "".join(" " + w for w in words[: job.output_tokens])
        logprobs = logprobs_field(out, p, words[: job.output_tokens])
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
            "model": self.model_name,
            "choices": [choice],
            "usage": usage(out),
        }
        now = time.perf_counter_ns()
        out.sent_ns = [now] * job.output_tokens
        out.done_ns = now
        return web.Response(body=orjson.dumps(body), content_type="application/json")
