"""First token: is TTFT measured on a real token, and does the stream reassemble?

A role-only or empty first event is never the first token (the metrics already time TTFT to the
first content event). This check reports how often the server sends such an event, and fails
when it is used to fake TTFT: the empty event arrives early — at most half of the real TTFT
(from actual send), and at least ``min_lead_ms`` before the first content — on at least
``min_share`` of requests. A role-only delta sent together with the first token (as vLLM does
for chat) passes. It also fails when a stream does not reassemble: the content events' lengths
must add up to the final text, so the first content event is a prefix of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inferaudit.judge.counting import completed
from inferaudit.judge.verdict import Outcome, Verdict, pct
from inferaudit.measure.records import Record
from inferaudit.measure.stats import round_sig

NAME = "first-token"
LEAD_FRACTION = 0.5
MIN_LEAD_MS = 5.0
MIN_SHARE = 0.05


def check_first_token(
    records: Sequence[Record],
    *,
    min_lead_ms: float = MIN_LEAD_MS,
    min_share: float = MIN_SHARE,
) -> Verdict:
    done = [r for r in completed(records) if r.first_content_ns is not None]
    if not done:
        return Verdict(NAME, Outcome.inconclusive, "no request delivered content", {})
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
        if lead >= min_lead_ms and frac >= LEAD_FRACTION:
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
        "limits": {"lead_fraction": LEAD_FRACTION, "min_lead_ms": min_lead_ms, "share": min_share},
    }
    if broken:
        return Verdict(
            NAME,
            Outcome.failed,
            f"{len(broken)} of {n} streams do not reassemble into their final text",
            numbers,
        )
    if early and early >= min_share * n:
        return Verdict(
            NAME,
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
    return Verdict(NAME, Outcome.passed, f"first chunk carries the first token ({note})", numbers)
