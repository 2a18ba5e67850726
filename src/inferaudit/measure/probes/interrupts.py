"""A server that cannot take two requests at once, told from its records (pure, sends nothing).

Some servers serve one request at a time and abort the stream in flight when another request
arrives: llama-cpp-python's OpenAI server by default (``--interrupt_requests True``). Seen from
the client, a stream that had begun (HTTP 200, some content) ends without ``[DONE]``
(``stream_truncated``), or with a ``[DONE]`` but no ``finish_reason`` in any chunk (``is_cut``),
while another request of the same batch was waiting for its first byte,
and that request is served next. Measured against llama-cpp-python 0.3.36 with 4 requests at
once: three streams cut after their first token, each as the next request's prefill began, the
last one complete.

The rule (:func:`cut_by_arrivals`): at least one stream was cut, and *every* cut stream ``r``
was cut while another request ``q`` of the same records was waiting for its first byte
(``q`` sent before the cut, its first byte after it) and ``q`` then got content. Servers that
fail streams for other reasons (a crash, a proxy limit, shedding that truncates) cut streams
whose neighbours are already streaming, or have no neighbour waiting, so they do not match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from inferaudit.measure.records import Record

__all__ = ["CutStreams", "cut_by_arrivals", "is_cut"]

TRUNCATED = "stream_truncated"
ADVICE = (
    "it serves one request at a time and aborts the stream in flight when another arrives "
    "(llama-cpp-python's default: start it with --interrupt_requests False)"
)


@dataclass(frozen=True)
class CutStreams:
    """Streams cut when another request arrived: how many of how many."""

    cut: int
    total: int

    def line(self, what: str = "streams") -> str:
        return (
            f"{self.cut} of {self.total} {what} were cut off when another request arrived, "
            f"which was then served: {ADVICE}"
        )


def _sent(r: Record) -> int:
    return r.sent_ns if r.sent_ns is not None else r.scheduled_ns


def _cut_at(r: Record) -> int | None:
    if r.done_ns is not None:
        return r.done_ns
    return r.chunk_ns[-1] if r.chunk_ns else None


def is_cut(r: Record) -> bool:
    """A stream that had begun and ended without saying why: no ``[DONE]`` (``stream_truncated``),
    or a ``[DONE]`` after chunks none of which carried a ``finish_reason`` (llama-cpp-python
    0.3.36 behind sse-starlette 3.7 ends an aborted stream that way)."""
    if r.status != 200:
        return False
    return r.error_class == TRUNCATED or (r.error_class is None and r.finish_reason is None)


def cut_by_arrivals(records: Sequence[Record]) -> CutStreams | None:
    """The finding when the records' cut streams match the rule (module docstring)."""
    cut = [r for r in records if is_cut(r)]
    if not cut:
        return None
    for r in cut:
        at = _cut_at(r)
        if at is None:
            return None
        waiting = [
            q
            for q in records
            if q.id != r.id
            and _sent(q) <= at
            and q.first_chunk_ns is not None
            and q.first_chunk_ns >= at
            and q.first_content_ns is not None
        ]
        if not waiting:
            return None
    return CutStreams(len(cut), len(records))
