"""Errors and shedding: requests refused (429/503), timed out or cut short under load.

Every failed request counts as an SLO violation and is excluded from goodput (``metrics``); this
check reports the failures per phase and by class, and fails when the measured phase lost more
than ``limit`` of its requests (0 by default: a capacity claim at this load should not shed).
A ``cancelled`` request (still in flight when the run's end rule or a stop cut it off) is the
client's doing, not the endpoint's: it is counted apart and never as a failure.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

from inferaudit.judge.counting import MEASURE
from inferaudit.judge.verdict import Outcome, Verdict, pct
from inferaudit.measure.records import Record
from inferaudit.measure.stats import round_sig

NAME = "errors"
SHEDDING = (
    "http_429",
    "http_503",
    "timeout",
    "first_byte_timeout",
    "stall_timeout",
    "stream_truncated",
)


def check_errors(records: Sequence[Record], *, limit: float = 0.0) -> Verdict:
    per_phase: dict[str, Counter[str]] = defaultdict(Counter)
    sent: Counter[str] = Counter()
    cancelled = 0
    for r in records:
        if r.cancelled:
            cancelled += r.phase == MEASURE
            continue
        sent[r.phase] += 1
        if not r.ok:
            per_phase[r.phase][str(r.error_class)] += 1
    measured = sent.get(MEASURE, 0)
    if not measured:
        return Verdict(NAME, Outcome.inconclusive, "no measured request", {})
    failed = per_phase.get(MEASURE, Counter())
    lost = sum(failed.values())
    shed = sum(v for k, v in failed.items() if k in SHEDDING)
    share = lost / measured
    numbers = {
        "measured": measured,
        "failed": lost,
        "failed_share": round_sig(share),
        "shed_or_cut": shed,
        "by_phase": {
            phase: {"requests": sent[phase], "errors": dict(sorted(per_phase[phase].items()))}
            for phase in sorted(sent)
        },
        "limit": limit,
    }
    if cancelled:  # (absent when zero: v1 runs, which had no such records, recheck unchanged)
        numbers["cancelled"] = cancelled
    if share > limit:
        classes = ", ".join(f"{k} {v}" for k, v in sorted(failed.items()))
        return Verdict(
            NAME,
            Outcome.failed,
            f"{lost} of {measured} requests failed under load ({pct(share)}: {classes}); "
            "counted as SLO violations, excluded from goodput",
            numbers,
        )
    extra = sum(sum(c.values()) for p, c in per_phase.items() if p != MEASURE)
    tail = f"; {extra} failed outside the measured phase" if extra else ""
    return Verdict(
        NAME, Outcome.passed, f"no measured request failed ({lost} of {measured}){tail}", numbers
    )
