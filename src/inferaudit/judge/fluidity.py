"""Streaming fluidity: are tokens streamed as generated, or held and flushed in bursts?

A server can hold tokens and flush many in one write, making inter-token latency look tiny
between flushes (or sending the first token on time and the rest late). The client stamps
every read, so events written together arrive within a fraction of a millisecond. A *burst* is
a delivery of at least ``min_events`` (8) content events, each within ``tick_ms`` (1 ms) and
within a quarter of the request's own time per token of the one before; the check reports the
share of tokens delivered in bursts and fails at ``limit`` (20%) or more. Multi-token
events (speculative decoding) are one event each and never count as a burst by themselves. An
overloaded client can also coalesce reads; its lag is recorded separately (``client_lag_ms``),
and the ``limit`` leaves room for occasional coalescing.
"""

from __future__ import annotations

from collections.abc import Sequence

from inferaudit.judge.counting import completed
from inferaudit.judge.verdict import Outcome, Verdict, pct
from inferaudit.measure.records import Record
from inferaudit.measure.stats import round_sig

NAME = "fluidity"
TICK_MS = 1.0
MIN_EVENTS = 8
LIMIT = 0.20
TPOT_SHARE = 0.25


def _tokens_per_event(r: Record) -> list[int]:
    """Tokens per content event: usage spread by characters when it exceeds the event count."""
    k = len(r.chunk_ns)
    total = r.usage_completion_tokens
    if not k or total is None or total <= k:
        return [1] * k
    chars = r.chunk_chars if sum(r.chunk_chars) > 0 else [1] * k
    extra = total - k
    s = sum(chars)
    raw = [extra * c / s for c in chars]
    base = [int(x) for x in raw]
    rest = extra - sum(base)
    order = sorted(range(k), key=lambda i: (-(raw[i] - base[i]), i))
    for i in order[:rest]:
        base[i] += 1
    return [1 + b for b in base]


def bursts(r: Record, *, tick_ms: float = TICK_MS, min_events: int = MIN_EVENTS) -> list[int]:
    """Token counts of each burst in one record (deliveries of >= min_events events).

    Two consecutive events belong to one delivery when the gap between them is at most
    ``tick_ms`` and at most ``TPOT_SHARE`` of the request's own time per output token (so a
    fast honest stream, one token per millisecond, is not mistaken for a burst).
    """
    tokens = _tokens_per_event(r)
    if len(r.chunk_ns) < 2:
        return []
    tpot_ns = (r.chunk_ns[-1] - r.chunk_ns[0]) / max(sum(tokens) - tokens[0], 1)
    tick = min(tick_ms * 1e6, TPOT_SHARE * tpot_ns)
    out: list[int] = []
    events = 0
    toks = 0
    prev: int | None = None
    for t, k in zip(r.chunk_ns, tokens, strict=True):
        if prev is not None and t - prev <= tick:
            events += 1
            toks += k
        else:
            if events >= min_events:
                out.append(toks)
            events, toks = 1, k
        prev = t
    if events >= min_events:
        out.append(toks)
    return out


def check_fluidity(
    records: Sequence[Record],
    *,
    tick_ms: float = TICK_MS,
    min_events: int = MIN_EVENTS,
    limit: float = LIMIT,
) -> Verdict:
    done = [r for r in completed(records) if len(r.chunk_ns) >= 2]
    if not done:
        return Verdict(NAME, Outcome.inconclusive, "no stream with two or more tokens", {})
    total = 0
    burst_tokens = 0
    burst_count = 0
    largest = 0
    requests_with = 0
    for r in done:
        total += sum(_tokens_per_event(r))
        b = bursts(r, tick_ms=tick_ms, min_events=min_events)
        if b:
            requests_with += 1
            burst_tokens += sum(b)
            burst_count += len(b)
            largest = max(largest, *b)
    share = burst_tokens / total if total else 0.0
    numbers = {
        "requests": len(done),
        "tokens": total,
        "burst_tokens": burst_tokens,
        "burst_share": round_sig(share),
        "bursts": burst_count,
        "largest_burst_tokens": largest,
        "requests_with_bursts": requests_with,
        "limits": {"tick_ms": tick_ms, "min_events": min_events, "share": limit},
    }
    if share >= limit:
        return Verdict(
            NAME,
            Outcome.failed,
            f"{pct(share)} of tokens arrived in bursts (up to {largest} at once; limit "
            f"{pct(limit)}): inter-token latency is not what it seems",
            numbers,
        )
    return Verdict(
        NAME,
        Outcome.passed,
        f"tokens streamed steadily ({pct(share)} in bursts, limit {pct(limit)})",
        numbers,
    )
