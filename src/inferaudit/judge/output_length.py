"""Output length: did every request produce the number of tokens it asked for?

With enforced lengths (``ignore_eos`` + ``min_tokens`` = ``max_tokens``), every completed request
must end with ``finish_reason == "length"`` at exactly ``max_tokens`` tokens: a server that stops
early serves less work than the throughput figure credits it with. Without enforcement a model
may stop at EOS, so the check reports the length distribution against the request and fails only
on impossible answers: more tokens than asked, or ``"length"`` claimed short of the limit.
Token counts use the best evidence available (see :func:`inferaudit.judge.counting.bounds`):
short means the upper count (usage) is below the limit, over means the lower count (content
events) is above it; an inconsistent ``usage`` is the token-accounting check's finding.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from inferaudit.judge.counting import bounds, completed
from inferaudit.judge.verdict import Outcome, Verdict, pct
from inferaudit.measure.protocol import RunSpec
from inferaudit.measure.records import Record
from inferaudit.measure.stats import round_sig
from inferaudit.measure.tokenizer import Tokenizer

NAME = "output-length"


def check_output_length(
    records: Sequence[Record], spec: RunSpec, *, tokenizer: Tokenizer | None = None
) -> Verdict:
    done = [r for r in completed(records) if r.max_tokens]
    enforced = spec.workload.enforce_output_length
    if not done:
        return Verdict(NAME, Outcome.inconclusive, "no completed request to measure", {})
    lo: list[int] = []
    hi: list[int] = []
    bases: Counter[str] = Counter()
    for r in done:
        n_lo, n_hi, basis = bounds(r, tokenizer)
        lo.append(n_lo)
        hi.append(n_hi)
        bases[basis] += 1
    asked = np.array([r.max_tokens for r in done], dtype=float)
    got = np.array(hi, dtype=float)
    ratio = got / asked
    finish = Counter(str(r.finish_reason) for r in done)
    short = int(np.sum(got < asked))
    over = int(np.sum(np.array(lo, dtype=float) > asked))
    exact = int(np.sum((np.array(lo, dtype=float) <= asked) & (asked <= got)))
    lying = sum(
        1
        for r, n in zip(done, hi, strict=True)
        if r.finish_reason == "length" and n < (r.max_tokens or 0)
    )
    not_length = len(done) - finish.get("length", 0)
    numbers = {
        "enforced": enforced,
        "requests": len(done),
        "count_basis": dict(sorted(bases.items())),
        "exact": exact,
        "short": short,
        "over": over,
        "finish_reasons": dict(sorted(finish.items())),
        "short_with_finish_length": lying,
        "ratio_to_asked": {
            "mean": round_sig(float(ratio.mean())),
            "min": round_sig(float(ratio.min())),
            "p10": round_sig(float(np.percentile(ratio, 10))),
            "p50": round_sig(float(np.percentile(ratio, 50))),
        },
    }
    n = len(done)
    if over:
        return Verdict(
            NAME, Outcome.failed, f"{over} of {n} requests returned more tokens than asked", numbers
        )
    if lying:
        return Verdict(
            NAME,
            Outcome.failed,
            f"{lying} of {n} requests stopped short (mean {pct(float(ratio.mean()))} of asked) "
            "yet claimed finish_reason 'length'",
            numbers,
        )
    if enforced and (short or not_length):
        return Verdict(
            NAME,
            Outcome.failed,
            f"{short} of {n} requests stopped short of the enforced length "
            f"(mean {pct(float(ratio.mean()))} of asked; finish {_fmt(finish)})",
            numbers,
        )
    if enforced:
        return Verdict(
            NAME,
            Outcome.passed,
            f"all {n} requests reached exactly the asked length (finish 'length')",
            numbers,
        )
    return Verdict(
        NAME,
        Outcome.passed,
        f"lengths not enforced: mean {pct(float(ratio.mean()))} of asked, "
        f"{exact} of {n} at the limit (finish {_fmt(finish)})",
        numbers,
    )


def _fmt(finish: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(finish.items()))
