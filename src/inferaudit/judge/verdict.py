"""The outcome of one integrity check: pass, fail or inconclusive, with the numbers behind it.

JSON form (``summary.json`` -> ``checks``, and the signed predicate)::

    {"check": "caching", "verdict": "fail",
     "summary": "repeated prompts 34% faster than unique (limit 10%)",
     "numbers": {...}}

``summary`` is one line a buyer can read; ``numbers`` holds every figure the verdict rests on,
JSON-ready (ints, floats rounded to 6 significant digits, strings, lists, nested dicts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    passed = "pass"
    failed = "fail"
    inconclusive = "inconclusive"


@dataclass(frozen=True)
class Verdict:
    check: str
    verdict: Outcome
    summary: str
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "verdict": self.verdict.value,
            "summary": self.summary,
            "numbers": self.numbers,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Verdict:
        return cls(
            check=str(data["check"]),
            verdict=Outcome(data["verdict"]),
            summary=str(data["summary"]),
            numbers=dict(data.get("numbers") or {}),
        )


def format_verdict(v: Verdict) -> str:
    """One line a buyer can read: ``caching: repeated prompts 34% faster ... — FAIL``."""
    return f"{v.check}: {v.summary} — {v.verdict.value.upper()}"


def pct(x: float) -> str:
    """A share as a short percentage: 0.3412 -> '34%', 0.0041 -> '0.4%'."""
    p = 100.0 * x
    return f"{p:.0f}%" if abs(p) >= 10 or p == 0 else f"{p:.1f}%"
