"""Token accounting: does the server's ``usage.completion_tokens`` match what was delivered?

With a tokenizer (``--tokenizer``), each output is re-tokenized whole (never chunk by chunk) and
compared with ``usage``: the check is exact. It fails when the run's total ``usage`` differs from
the re-tokenized total by more than ``tolerance`` (1%, room for re-tokenization drift: decoding
then re-encoding can merge or split a token at a few places), or when more than ``tolerance`` of
the requests are off by more than one token.

Without a tokenizer only bounds exist: a content event carries at least one token (``usage`` >=
events) and a token of text at least one character (``usage`` <= characters). ``usage`` equal to
the event count is consistent with one token per event; ``usage`` above it is either multi-token
events (speculative decoding) or inflation, which only a tokenizer can tell apart, so that case is
inconclusive and says so — unless ``usage`` exceeds ``max_tokens`` while the events delivered do
not (``max_tokens`` is a hard cap): that is inflation, and fails. The numbers then give the count
the stream proves (``proven_tokens``: the events, the lower bound) beside ``usage``: only the
proven count is worth crediting.

Sign test (new runs; ``legacy=True`` keeps the v1 rule): within the tolerance, a server can still
add a token to every answer (+1 on 120-token answers is 0.8%). Per request, the proven count is
``max(events, re-tokenized count)``: each event carries at least one token, and re-tokenization
drift almost always *merges* generated tokens (a canonical encoding is rarely longer than the
generated one), so an honest ``usage`` sits at the proven count exactly (one token per event) or
above it by the few drift points of that text. A one-sided excess on nearly every request — more
than ``SIGN_SHARE`` (90%) of at least ``SIGN_MIN`` (10) requests, one-sided binomial p below
``SIGN_ALPHA`` against a fair coin over the requests that deviate — fails. It is not applied when
most requests carry multi-token events (re-tokenized count above the events: speculative
decoding), where the events prove less and drift can be positive on most long answers: there
only the tolerance holds, and the numbers say so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from inferaudit.judge.counting import completed, proven_tokens
from inferaudit.judge.verdict import Outcome, Verdict, pct
from inferaudit.measure.records import Record
from inferaudit.measure.stats import round_sig
from inferaudit.measure.tokenizer import Tokenizer

NAME = "token-accounting"
TOLERANCE = 0.01
SIGN_SHARE = 0.9
SIGN_MIN = 10
SIGN_ALPHA = 1e-3


def check_token_accounting(
    records: Sequence[Record],
    *,
    tokenizer: Tokenizer | None = None,
    tolerance: float = TOLERANCE,
    legacy: bool = False,
) -> Verdict:
    done = completed(records)
    with_usage = [r for r in done if r.usage_completion_tokens is not None]
    if not done:
        return Verdict(NAME, Outcome.inconclusive, "no completed request to count", {})
    if not with_usage:
        return Verdict(
            NAME,
            Outcome.inconclusive,
            f"the server reported no usage on any of {len(done)} requests",
            {"requests": len(done), "with_usage": 0},
        )
    usage = sum(r.usage_completion_tokens or 0 for r in with_usage)
    chunks = sum(r.content_chunks for r in with_usage)
    chars = sum(r.output_chars for r in with_usage)
    numbers: dict[str, object] = {
        "requests": len(done),
        "with_usage": len(with_usage),
        "usage_tokens": usage,
        "content_chunks": chunks,
        "output_chars": chars,
    }
    texts = [r for r in with_usage if r.output_text is not None and (legacy or r.text_complete)]
    if tokenizer is not None and len(texts) == len(with_usage):
        return _exact(with_usage, tokenizer, tolerance, numbers, legacy)
    below = sum(1 for r in with_usage if (r.usage_completion_tokens or 0) < r.content_chunks)
    above_chars = sum(1 for r in with_usage if (r.usage_completion_tokens or 0) > r.output_chars)
    above_max = sum(
        1
        for r in with_usage
        if r.max_tokens is not None
        and (r.usage_completion_tokens or 0) > r.max_tokens >= r.content_chunks
    )
    numbers.update(
        {
            "method": "bounds: content events <= usage <= characters (no tokenizer)",
            "usage_below_events": below,
            "usage_above_chars": above_chars,
            "usage_above_max_tokens": above_max,
            "usage_over_events": round_sig(usage / chunks - 1.0) if chunks else None,
        }
    )
    if not legacy:
        numbers["proven_tokens"] = sum(proven_tokens(r) for r in with_usage)
    n = len(with_usage)
    if below or above_chars or above_max:
        if below:
            what = f"usage below the number of content events on {below} of {n} requests"
        elif above_max:
            what = (
                f"usage claims more tokens than max_tokens allowed on {above_max} of {n} "
                f"requests ({pct(usage / chunks - 1.0)} above the events delivered)"
            )
        else:
            what = f"usage above the number of characters on {above_chars} of {n} requests"
        return Verdict(NAME, Outcome.failed, what + " (impossible counts)", numbers)
    if usage == chunks:
        return Verdict(
            NAME,
            Outcome.passed,
            f"usage equals content events on all {n} requests (one token per event; "
            "bound only, no tokenizer)",
            numbers,
        )
    return Verdict(
        NAME,
        Outcome.inconclusive,
        f"usage exceeds content events by {pct(usage / chunks - 1.0)}: multi-token events or "
        "inflated usage — give --tokenizer for an exact check",
        numbers,
    )


def _exact(
    rows: Sequence[Record],
    tokenizer: Tokenizer,
    tolerance: float,
    numbers: dict[str, object],
    legacy: bool,
) -> Verdict:
    diffs = []
    excess = []
    multi = 0
    client = 0
    for r in rows:
        n = tokenizer.count(r.output_text or "")
        client += n
        diffs.append((r.usage_completion_tokens or 0) - n)
        excess.append((r.usage_completion_tokens or 0) - max(n, r.content_chunks))
        multi += n > r.content_chunks
    usage = sum(r.usage_completion_tokens or 0 for r in rows)
    off = sum(1 for d in diffs if abs(d) > 1)
    rel = (usage - client) / client if client else (0.0 if usage == 0 else float("inf"))
    numbers.update(
        {
            "method": f"re-tokenized whole outputs with {tokenizer.describe()}",
            "client_tokens": client,
            "relative_difference": round_sig(rel),
            "exact_requests": sum(1 for d in diffs if d == 0),
            "requests_off_by_more_than_1": off,
            "max_abs_difference": max(abs(d) for d in diffs),
            "tolerance": tolerance,
        }
    )
    n = len(rows)
    if abs(rel) > tolerance or off > tolerance * n:
        word = "more" if rel > 0 else "fewer"
        return Verdict(
            NAME,
            Outcome.failed,
            f"server usage reports {pct(abs(rel))} {word} tokens than it delivered "
            f"({usage} vs {client} re-tokenized; limit {pct(tolerance)})",
            numbers,
        )
    if not legacy:
        sign = _sign_test(excess, multi)
        numbers["sign_test"] = sign
        if sign["fails"]:
            return Verdict(
                NAME,
                Outcome.failed,
                f"usage exceeds the tokens the stream proves on {sign['above']} of {n} requests "
                f"(p={sign['p_value']}; {pct(rel)} in total, inside the {pct(tolerance)} "
                "tolerance): a one-sided count on nearly every request is not drift",
                numbers,
            )
    return Verdict(
        NAME,
        Outcome.passed,
        f"usage matches re-tokenized output ({usage} vs {client}, "
        f"{numbers['exact_requests']} of {n} exact)",
        numbers,
    )


def _sign_test(excess: Sequence[int], multi: int) -> dict[str, object]:
    """Sign test of usage minus the proven count (see the module doc); ``multi``: requests
    whose re-tokenized text holds more tokens than events (multi-token events)."""
    n = len(excess)
    above = sum(1 for d in excess if d > 0)
    below = sum(1 for d in excess if d < 0)
    p = sign_p_value(above, below)
    applies = multi <= n // 2
    return {
        "above": above,
        "below": below,
        "equal": n - above - below,
        "p_value": round_sig(p),
        "multi_token_event_requests": multi,
        "applies": applies,
        "limits": {"share": SIGN_SHARE, "min_requests": SIGN_MIN, "alpha": SIGN_ALPHA},
        "fails": applies and n >= SIGN_MIN and above >= SIGN_SHARE * n and p < SIGN_ALPHA,
    }


def sign_p_value(above: int, below: int) -> float:
    """One-sided sign test: P[X >= above] for X ~ Binomial(above + below, 1/2), exact."""
    m = above + below
    if m == 0:
        return 1.0
    return float(sum(math.comb(m, i) for i in range(above, m + 1)) / 2**m)
