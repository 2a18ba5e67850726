"""Findings: consistency rules over a claim, its stated parts and the claims that are part of it.

Today one family of rules, sum of parts: the parts a claim states (a derivation "a + b + ...",
its hardware lines, or the claims that are ``part_of`` it) are added and held against the total
it states, within a relative tolerance of 1e-6.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from inferaudit.intent.claims.model import Claim, Quantity


@dataclass(frozen=True)
class Finding:
    claim_id: str
    rule: str  # "sum-of-parts", "derivation"
    severity: Literal["discrepancy", "consistent"]
    message: str


_SUM = re.compile(r"^\s*(\d+(?:\.\d+)?(?:\s*\+\s*\d+(?:\.\d+)?)+)\s*(?:\(|$)")
_COUNT_METRICS = {"card_count": "cards", "accelerator_count": "chips"}
_REL_TOL = 1e-6


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= _REL_TOL * max(abs(a), abs(b), 1.0)


def _sum_terms(derivation: str | None) -> list[float] | None:
    m = _SUM.match(derivation or "")
    return None if m is None else [float(t) for t in m.group(1).split("+")]


def _fmt(x: float) -> str:
    return f"{x:,.6g}"


def _compare(claim: Claim, total: Quantity, parts: list[float], what: str) -> Finding:
    assert total.value is not None
    s = sum(parts)
    terms = " + ".join(_fmt(p) for p in parts)
    if _close(s, total.value):
        return Finding(
            claim.claim_id,
            "sum-of-parts",
            "consistent",
            f"{total.metric}: {what} {terms} = {_fmt(s)} {total.unit} equals the stated total",
        )
    diff = s - total.value
    return Finding(
        claim.claim_id,
        "sum-of-parts",
        "discrepancy",
        f"{total.metric}: stated total {_fmt(total.value)} {total.unit} ({total.basis}) but "
        f"{what} sum to {terms} = {_fmt(s)} {total.unit} "
        f"({diff:+,.6g}, {diff / total.value:+.1%})",
    )


def findings(claim: Claim, registry: Iterable[Claim] = ()) -> list[Finding]:
    """Sum-of-parts consistency of one claim, stated as findings.

    Parts are (1) the terms of a derived quantity whose derivation is a sum ("a + b + c ..."),
    (2) the counts of the claim's hardware lines, (3) the same metric and unit in the claims
    whose ``part_of`` is this claim. Each is held against the claim's stated (non-derived)
    quantity of that metric and unit. A derived quantity is also checked against its own sum.
    """
    out: list[Finding] = []
    stated = [q for q in claim.quantities if q.basis != "derived" and q.value is not None]
    for q in claim.quantities:
        terms = _sum_terms(q.derivation) if q.basis == "derived" else None
        if terms is None:
            continue
        if q.value is not None and not _close(sum(terms), q.value):
            out.append(
                Finding(
                    claim.claim_id,
                    "derivation",
                    "discrepancy",
                    f"{q.metric}: derived value {_fmt(q.value)} {q.unit} but its derivation "
                    f"{q.derivation!r} sums to {_fmt(sum(terms))}",
                )
            )
        for total in stated:
            if (total.metric, total.unit) == (q.metric, q.unit):
                out.append(_compare(claim, total, terms, "the stated parts"))
    counts = [h.count for h in claim.hardware]
    if len(counts) > 1 and all(c is not None for c in counts):
        units = {h.count_unit for h in claim.hardware}
        for total in stated:
            if total.metric in _COUNT_METRICS and units == {_COUNT_METRICS[total.metric]}:
                lines = [float(c) for c in counts if c is not None]
                out.append(_compare(claim, total, lines, "the hardware lines"))
    children = [c for c in registry if c.part_of == claim.claim_id]
    for total in stated:
        parts: list[float] = []
        for child in children:
            part = next(
                (
                    cq
                    for cq in child.quantities
                    if (cq.metric, cq.unit) == (total.metric, total.unit)
                    and cq.basis != "derived"
                    and cq.value is not None
                ),
                None,
            )
            if part is not None and part.value is not None:
                parts.append(part.value)
        if parts:
            names = ", ".join(c.claim_id for c in children)
            out.append(_compare(claim, total, parts, f"the part claims ({names})"))
    return out
