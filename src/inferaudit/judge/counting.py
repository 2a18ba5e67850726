"""How many tokens a request produced, by the best evidence available, and which evidence.

Order of trust: the client's re-tokenization of the whole output (with ``--tokenizer``), then the
server's ``usage.completion_tokens``, then the number of content-carrying stream events (one
token per event unless the server sends multi-token chunks).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from inferaudit.measure import metrics
from inferaudit.measure.records import Record
from inferaudit.measure.tokenizer import Tokenizer

MEASURE = "measure"


def completed(records: Iterable[Record], phase: str | Sequence[str] = MEASURE) -> list[Record]:
    """Successful records of a phase (or of several phases), in id order."""
    phases = {phase} if isinstance(phase, str) else set(phase)
    return sorted((r for r in records if r.phase in phases and r.ok), key=lambda r: r.id)


def of_phase(records: Iterable[Record], phase: str) -> list[Record]:
    return sorted((r for r in records if r.phase == phase), key=lambda r: r.id)


def output_tokens(record: Record, tokenizer: Tokenizer | None) -> tuple[int, str]:
    """(token count, basis) with basis "tokenizer", "usage" or "chunks"."""
    if tokenizer is not None and record.output_text is not None:
        return tokenizer.count(record.output_text), "tokenizer"
    if record.usage_completion_tokens is not None:
        return record.usage_completion_tokens, "usage"
    return record.content_chunks, "chunks"


def bounds(record: Record, tokenizer: Tokenizer | None) -> tuple[int, int, str]:
    """(lower, upper) token counts of a request's output and the evidence used.

    Lower: the number of content events (each carries at least one token). Upper: the least of
    ``usage`` (a server has no reason to under-report) and, with a tokenizer, the re-tokenized
    count plus a drift allowance of 1% (at least one token: decoding and re-encoding a text can
    merge tokens at a boundary); never below the lower bound; the event count when neither exists.
    """
    events = record.content_chunks
    uppers: list[int] = []
    basis = ["events"]
    if record.usage_completion_tokens is not None:
        uppers.append(record.usage_completion_tokens)
        basis.append("usage")
    if tokenizer is not None and record.output_text is not None:
        n = tokenizer.count(record.output_text)
        uppers.append(n + max(1, math.ceil(0.01 * n)))
        basis.append("tokenizer")
    return events, max(events, min(uppers, default=events)), "+".join(basis)


def proven_tokens(record: Record, tokenizer: Tokenizer | None = None) -> int:
    """The tokens the stream itself proves were delivered: the credit-worthy count, as the
    summary credits it (``measure.metrics.proven_tokens``, the one definition)."""
    return metrics.proven_tokens(record, tokenizer)
