"""Frozen v1 verdict rules (inferaudit 0.1): ``verify`` rechecks old evidence with them.

A run without client health data (``health.jsonl``) and with a v1 protocol was judged by these
rules when it was sealed; re-verifying it must give back exactly its stored verdicts, so this
module keeps the 0.1 ``first-token`` and ``fluidity`` judges unchanged (token accounting's v1
rule is ``check_token_accounting(..., sign_test=False)``). New runs use ``first_token`` and
``fluidity``. Do not edit the rules below: a change breaks the re-verification of old runs.

v1 first-token: an empty/role-only first event at most half of the real TTFT (from actual send)
and at least 5 ms before the first content, on at least 5% of requests, fails; so does a stream
whose content events do not add up to its final text. v1 fluidity: the share of tokens in
deliveries of >= 8 events each within min(1 ms, TPOT/4) of the one before fails at 20%.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inferaudit.judge.counting import completed
from inferaudit.judge.verdict import Outcome, Verdict, pct
from inferaudit.measure.records import Record
from inferaudit.measure.stats import round_sig

FIRST_TOKEN = "first-token"
V1_LEAD_FRACTION = 0.5
V1_MIN_LEAD_MS = 5.0
V1_MIN_SHARE = 0.05


def check_first_token_v1(
    records: Sequence[Record],
    *,
    min_lead_ms: float = V1_MIN_LEAD_MS,
    min_share: float = V1_MIN_SHARE,
) -> Verdict:
    done = [r for r in completed(records) if r.first_content_ns is not None]
    if not done:
        return Verdict(FIRST_TOKEN, Outcome.inconclusive, "no request delivered content", {})
    n = len(done)
    broken = [
        r.id
        for r in done
        if sum(r.chunk_chars) != r.output_chars
        or (r.output_text is not None and len(r.output_text) != r.output_chars)
    ]
    with_empty = [r for r in done if r.empty_chunks_before_content > 0]
    leads_ms: list[float] = []
    fractions: list[float] = []
    early = 0
    for r in with_empty:
        assert r.first_chunk_ns is not None and r.first_content_ns is not None
        lead = (r.first_content_ns - r.first_chunk_ns) / 1e6
        since_sent = (r.first_content_ns - (r.sent_ns or r.scheduled_ns)) / 1e6
        frac = lead / since_sent if since_sent > 0 else 0.0
        leads_ms.append(lead)
        fractions.append(frac)
        if lead >= min_lead_ms and frac >= V1_LEAD_FRACTION:
            early += 1
    blank_first = sum(
        1
        for r in done
        if r.output_text is not None
        and r.chunk_chars
        and not r.output_text[: r.chunk_chars[0]].strip()
    )
    numbers = {
        "requests": n,
        "with_empty_first_chunk": len(with_empty),
        "empty_first_chunk_share": round_sig(len(with_empty) / n),
        "early_empty_chunks": early,
        "lead_ms_p50": round_sig(float(np.median(leads_ms))) if leads_ms else None,
        "lead_fraction_of_ttft_p50": round_sig(float(np.median(fractions))) if fractions else None,
        "whitespace_only_first_content": blank_first,
        "not_reassembling": len(broken),
        "limits": {
            "lead_fraction": V1_LEAD_FRACTION,
            "min_lead_ms": min_lead_ms,
            "share": min_share,
        },
    }
    if broken:
        return Verdict(
            FIRST_TOKEN,
            Outcome.failed,
            f"{len(broken)} of {n} streams do not reassemble into their final text",
            numbers,
        )
    if early and early >= min_share * n:
        return Verdict(
            FIRST_TOKEN,
            Outcome.failed,
            f"an empty first chunk arrives ahead of the first token on {pct(early / n)} of "
            f"requests (median {numbers['lead_ms_p50']} ms early, "
            f"{pct(float(np.median(fractions)))} of real TTFT): fakes TTFT",
            numbers,
        )
    note = (
        f"empty/role-only first chunk on {pct(len(with_empty) / n)} of requests, not early"
        if with_empty
        else "no empty first chunks"
    )
    return Verdict(
        FIRST_TOKEN, Outcome.passed, f"first chunk carries the first token ({note})", numbers
    )


FLUIDITY = "fluidity"
V1_TICK_MS = 1.0
V1_MIN_EVENTS = 8
V1_LIMIT = 0.20
V1_TPOT_SHARE = 0.25


def _v1_tokens_per_event(r: Record) -> list[int]:
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


def bursts_v1(
    r: Record, *, tick_ms: float = V1_TICK_MS, min_events: int = V1_MIN_EVENTS
) -> list[int]:
    """Token counts of each burst in one record (deliveries of >= min_events events).

    Two consecutive events belong to one delivery when the gap between them is at most
    ``tick_ms`` and at most ``V1_TPOT_SHARE`` of the request's own time per output token (so a
    fast honest stream, one token per millisecond, is not mistaken for a burst).
    """
    tokens = _v1_tokens_per_event(r)
    if len(r.chunk_ns) < 2:
        return []
    tpot_ns = (r.chunk_ns[-1] - r.chunk_ns[0]) / max(sum(tokens) - tokens[0], 1)
    tick = min(tick_ms * 1e6, V1_TPOT_SHARE * tpot_ns)
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


def check_fluidity_v1(
    records: Sequence[Record],
    *,
    tick_ms: float = V1_TICK_MS,
    min_events: int = V1_MIN_EVENTS,
    limit: float = V1_LIMIT,
) -> Verdict:
    done = [r for r in completed(records) if len(r.chunk_ns) >= 2]
    if not done:
        return Verdict(FLUIDITY, Outcome.inconclusive, "no stream with two or more tokens", {})
    total = 0
    burst_tokens = 0
    burst_count = 0
    largest = 0
    requests_with = 0
    for r in done:
        total += sum(_v1_tokens_per_event(r))
        b = bursts_v1(r, tick_ms=tick_ms, min_events=min_events)
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
            FLUIDITY,
            Outcome.failed,
            f"{pct(share)} of tokens arrived in bursts (up to {largest} at once; limit "
            f"{pct(limit)}): inter-token latency is not what it seems",
            numbers,
        )
    return Verdict(
        FLUIDITY,
        Outcome.passed,
        f"tokens streamed steadily ({pct(share)} in bursts, limit {pct(limit)})",
        numbers,
    )
