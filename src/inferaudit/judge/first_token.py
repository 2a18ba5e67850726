"""First token: is TTFT timed on a whole token, and does the stream reassemble?

The metrics time TTFT to the first content event. A server can fake a low TTFT by sending,
at once, something that is not the first token: an empty or role-only event (the metrics already
skip those), or a *fragment* — a few bytes of the first token, the rest after the real TTFT.
From first principles, an honest server sends its first token when prefill has produced it, and
its second one decode step later: the gap from the first to the second event is one time per
token, and the first event carries a whole token. A fake first event is *early*: it comes in the
first half of the wait for the second one (gap to the second event >= the TTFT it sets, and at
least ``MIN_LEAD_MS``; an honest first decode step longer than its own prefill, network and
queueing is the one honest way to look early, which is why a timing alone never fails).

Rules (each timing rule on requests in healthy client windows only, and a timing FAIL only with
health data and a run valid for client lag, see ``judge.noise``):

1. *Reassembly* (not timing): content event lengths must add up to the final text; else FAIL.
2. *Early empty event*: an empty/role-only event at least ``MIN_LEAD_MS`` and at least half of
   the real TTFT (from the actual send) ahead of the first content, on ``MIN_SHARE`` (5%) of
   requests: FAIL (a role-only delta sent with the first token, as vLLM does, passes).
3. *Split first token*, with a tokenizer: the first event must end on a token boundary of the
   re-tokenized output (``encode(head) + encode(rest) == encode(text)``). A first event that
   is a fragment AND early, on ``SPLIT_SHARE`` (10%, ten times the 1% re-tokenization drift the
   token-accounting check allows) of requests and at least ``MIN_JUDGED`` of them: FAIL.
   Without a tokenizer a fragment cannot be told from a whole token: an early first event on
   most (``FLAG_SHARE``, half) of the requests is flagged *inconclusive*, with TTFT to the
   second event beside TTFT to the first.

With the client's recorded loop stalls (``judge.noise.Stalls``) a request is judged unless a
stall of its worker could have made its first event look early (``stall_made``: the lead of an
empty event, or the gap after the first content event, shortened by what the stalls inside it
can delay one stamp, is no longer early); more excused requests than judged ones:
inconclusive.

Numbers always report TTFT to the first and to the second event (and, with a tokenizer, to the
first event that ends on a token boundary: the TTFT of the first whole token).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inferaudit.judge.counting import completed
from inferaudit.judge.noise import (
    MIN_JUDGED,
    ClientWindow,
    Stalls,
    busy_numbers,
    busy_verdict,
    covered,
    split_by_health,
)
from inferaudit.judge.verdict import Outcome, Verdict, pct
from inferaudit.measure.records import Record
from inferaudit.measure.stats import round_sig
from inferaudit.measure.tokenizer import Tokenizer

NAME = "first-token"
LEAD_FRACTION = 0.5
MIN_LEAD_MS = 5.0
MIN_SHARE = 0.05
SPLIT_SHARE = 0.10
FLAG_SHARE = 0.5
WHOLE_TOKEN_SEARCH = 4  # events searched for the first whole-token boundary
MS = 1e6


def _sent(r: Record) -> int:
    return r.sent_ns if r.sent_ns is not None else r.scheduled_ns


def _span(r: Record) -> tuple[int, int]:
    """From the send to the second content event (what the timing rules read)."""
    end = r.chunk_ns[1] if len(r.chunk_ns) > 1 else (r.first_content_ns or _sent(r))
    return _sent(r), end


def early_empty(r: Record, min_lead_ms: float = MIN_LEAD_MS) -> tuple[float, float] | None:
    """(lead ms, lead / real TTFT) of an empty first event, None without one."""
    if r.empty_chunks_before_content <= 0 or r.first_chunk_ns is None:
        return None
    assert r.first_content_ns is not None
    lead = (r.first_content_ns - r.first_chunk_ns) / MS
    since_sent = (r.first_content_ns - _sent(r)) / MS
    return lead, (lead / since_sent if since_sent > 0 else 0.0)


def early_first_event(r: Record, min_lead_ms: float = MIN_LEAD_MS) -> bool:
    """The first content event came in the first half of the wait for the second one."""
    return _early_by(r, min_lead_ms)


def _early_empty_by(r: Record, min_lead_ms: float, less_ns: int = 0) -> bool:
    """Is the record's empty first event early, its lead shortened by ``less_ns``?"""
    if r.empty_chunks_before_content <= 0 or r.first_chunk_ns is None:
        return False
    assert r.first_content_ns is not None
    lead = (r.first_content_ns - r.first_chunk_ns - less_ns) / MS
    return lead >= min_lead_ms and lead >= LEAD_FRACTION * (r.first_content_ns - _sent(r)) / MS


def _early_by(r: Record, min_lead_ms: float, less_ns: int = 0) -> bool:
    """Is the record's first content event early, the gap after it shortened by ``less_ns``?"""
    if len(r.chunk_ns) < 2:
        return False
    ttft1 = (r.chunk_ns[0] - _sent(r)) / MS
    gap = (r.chunk_ns[1] - r.chunk_ns[0] - less_ns) / MS
    return gap >= min_lead_ms and gap >= ttft1


def stall_made(r: Record, stalls: Stalls, min_lead_ms: float = MIN_LEAD_MS) -> bool:
    """Could a stall of the record's worker have made its first event look early? A stall only
    delays reads: it lengthens the lead of an empty event, or the gap after the first content
    event, by at most what the stalls inside it can delay one stamp (``Stalls.charge_ns``).
    Excused when the signal, shortened by that, is no longer early."""
    if _early_empty_by(r, min_lead_ms):
        assert r.first_chunk_ns is not None and r.first_content_ns is not None
        charge = stalls.charge_ns(r.worker, r.first_chunk_ns, r.first_content_ns, 1)
        if not _early_empty_by(r, min_lead_ms, charge):
            return True
    if _early_by(r, min_lead_ms):
        charge = stalls.charge_ns(r.worker, r.chunk_ns[0], r.chunk_ns[1], 1)
        if not _early_by(r, min_lead_ms, charge):
            return True
    return False


def on_boundary(tokenizer: Tokenizer, text: str, cut: int) -> bool:
    """Does ``text[:cut]`` end on a token boundary of ``text``'s own tokenization?"""
    if cut <= 0 or cut >= len(text):
        return True
    return tokenizer.encode(text[:cut]) + tokenizer.encode(text[cut:]) == tokenizer.encode(text)


def whole_token_event(r: Record, tokenizer: Tokenizer) -> int | None:
    """Index of the first content event that ends on a token boundary (None: text missing)."""
    text = r.output_text
    if text is None or not r.chunk_chars or r.chunk_chars[0] > len(text):
        return None
    cut = 0
    last = min(len(r.chunk_chars), WHOLE_TOKEN_SEARCH)
    for i in range(last):
        cut += r.chunk_chars[i]
        if on_boundary(tokenizer, text, cut):
            return i
    return last - 1


def _p50(values: Sequence[float]) -> float | None:
    return round_sig(float(np.median(values))) if values else None


def _number(value: object) -> float:
    """A numbers-dict entry as a float (0.0 when absent)."""
    return float(value) if isinstance(value, int | float) else 0.0


def check_first_token(
    records: Sequence[Record],
    *,
    tokenizer: Tokenizer | None = None,
    health: Sequence[ClientWindow] = (),
    lag_problem: str | None = None,
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
        or (r.output_text is not None and len(r.output_text) > r.output_chars)
    ]
    stalls = Stalls.of(health)
    excused = 0
    if stalls is None:
        judged, busy = split_by_health(done, health, _span)
    else:
        seen = [r for r in done if covered(health, *_span(r))]
        judged = [r for r in seen if not stall_made(r, stalls, min_lead_ms)]
        excused = len(seen) - len(judged)
        kept = {r.id for r in judged}
        busy = [r for r in done if r.id not in kept]
    # (2) early empty/role-only events
    leads = {r.id: e for r in done if (e := early_empty(r, min_lead_ms)) is not None}

    def is_early_empty(r: Record) -> bool:
        return _early_empty_by(r, min_lead_ms)

    early_empty_judged = sum(1 for r in judged if is_early_empty(r))
    early_empty_all = sum(1 for r in done if is_early_empty(r))
    # (3) split first token
    early = {r.id for r in done if early_first_event(r, min_lead_ms)}
    whole: dict[int, int] = {}
    if tokenizer is not None:
        whole = {r.id: i for r in done if (i := whole_token_event(r, tokenizer)) is not None}
    fragment = {i for i, k in whole.items() if k > 0}
    split_judged = sum(1 for r in judged if r.id in early and r.id in fragment)
    split_all = len(early & fragment)
    two = [r for r in done if len(r.chunk_ns) > 1]
    early_judged = sum(1 for r in judged if r.id in early)
    numbers: dict[str, object] = {
        "requests": n,
        "with_empty_first_chunk": len(leads),
        "early_empty_chunks": early_empty_judged,
        "lead_ms_p50": _p50([e[0] for e in leads.values()]),
        "lead_fraction_of_ttft_p50": _p50([e[1] for e in leads.values()]),
        "not_reassembling": len(broken),
        "ttft_first_event_ms_p50": _p50([(r.chunk_ns[0] - _sent(r)) / MS for r in done]),
        "ttft_second_event_ms_p50": _p50([(r.chunk_ns[1] - _sent(r)) / MS for r in two]),
        "first_gap_ms_p50": _p50([(r.chunk_ns[1] - r.chunk_ns[0]) / MS for r in two]),
        "early_first_events": early_judged,
        "tokenizer": tokenizer.describe() if tokenizer is not None else None,
        "checked_boundaries": len(whole),
        "fragment_first_events": len(fragment),
        "early_fragments": split_judged,
        "ttft_whole_token_ms_p50": _p50(
            [(r.chunk_ns[whole[r.id]] - _sent(r)) / MS for r in done if r.id in whole]
        ),
        "limits": {
            "lead_fraction": LEAD_FRACTION,
            "min_lead_ms": min_lead_ms,
            "share": min_share,
            "split_share": SPLIT_SHARE,
            "flag_share": FLAG_SHARE,
            "min_judged": MIN_JUDGED,
        },
        **busy_numbers(
            health, len(judged), len(busy), lag_problem, excused if stalls is not None else None
        ),
    }
    if broken:
        return Verdict(
            NAME,
            Outcome.failed,
            f"{len(broken)} of {n} streams do not reassemble into their final text",
            numbers,
        )
    h = len(judged)
    can_fail = lag_problem is None and h >= MIN_JUDGED and bool(health) and excused <= h
    t1, t2 = numbers["ttft_first_event_ms_p50"], numbers["ttft_second_event_ms_p50"]
    if early_empty_judged and early_empty_judged >= min_share * h and can_fail:
        return Verdict(
            NAME,
            Outcome.failed,
            f"an empty first chunk arrives ahead of the first token on "
            f"{pct(early_empty_judged / h)} of requests (median {numbers['lead_ms_p50']} ms "
            f"early, {pct(_number(numbers['lead_fraction_of_ttft_p50']))} of real TTFT): "
            "fakes TTFT",
            numbers,
        )
    if split_judged >= max(MIN_JUDGED, SPLIT_SHARE * h) and can_fail:
        return Verdict(
            NAME,
            Outcome.failed,
            f"the first event is a fragment of the first token, sent early, on "
            f"{pct(split_judged / h)} of requests (TTFT {t1} ms to the fragment, "
            f"{numbers['ttft_whole_token_ms_p50']} ms to the first whole token): fakes TTFT",
            numbers,
        )
    if early_empty_all >= max(1.0, min_share * n) or split_all >= max(MIN_JUDGED, SPLIT_SHARE * n):
        # only here when it could not FAIL: too few healthy requests, no health data or lag
        what = "early empty first chunks" if early_empty_all else "early first-token fragments"
        count = early_empty_all or split_all
        return busy_verdict(NAME, f"{what} on {count} of {n} requests", numbers, lag_problem)
    if tokenizer is None and h and early_judged >= FLAG_SHARE * h and h >= MIN_JUDGED:
        return Verdict(
            NAME,
            Outcome.inconclusive,
            f"the first event comes in the first half of the wait for the second on "
            f"{pct(early_judged / h)} of requests (TTFT {t1} ms to the first event, {t2} ms to "
            "the second): a fragment of the first token or a slow first decode step — give "
            "--tokenizer to tell",
            numbers,
        )
    note = (
        f"empty/role-only first chunk on {pct(len(leads) / n)} of requests, not early"
        if leads
        else "no empty first chunks"
    )
    basis = "ends on a token boundary" if tokenizer is not None else "is not early"
    return Verdict(
        NAME,
        Outcome.passed,
        f"first chunk carries the first token ({note}; first event {basis}; TTFT {t1} ms to the "
        f"first event, {t2} ms to the second)",
        numbers,
    )
