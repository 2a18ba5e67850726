"""What a closed loop run for a duration falls short of: the ``audit`` block after its load.

Such a run carries its audit traffic inside the load (``plan.AuditStream``), but its length is
not known in advance: when it ends, the completed measured repeats, shared-prefix prompts and
replays are counted against what the judges need (``MIN_PAIRS`` pairs each, one replay), and
only the difference is sent after the load, in a block drawn from the secret seed like the
supplementary block of a short run (see ``measure.probes.plan``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from inferaudit.measure.fingerprint import TAG
from inferaudit.measure.planner import Planner
from inferaudit.measure.probes.plan import (
    AUDIT_BLOCK,
    BLOCK_PAIRS,
    CACHE_REPEAT,
    MIN_PAIRS,
    PREFIX_HIT,
    AuditTraffic,
    audit_block,
    pick_entries,
)
from inferaudit.measure.protocol import RunSpec
from inferaudit.measure.records import Record
from inferaudit.measure.workload import RequestPlan, planning_seed, prf_rng

__all__ = ["AuditCounts", "TopUp", "top_up"]


@dataclass(frozen=True)
class AuditCounts:
    """Audit requests of each kind (repeats, shared-prefix prompts, replays)."""

    repeats: int
    hits: int
    replays: int

    @classmethod
    def completed(cls, records: Iterable[Record]) -> AuditCounts:
        """The measured (phase ``measure``) audit requests that completed without error."""
        repeats = hits = replays = 0
        for r in records:
            if r.phase != "measure" or not r.ok or r.tag is None:
                continue
            repeats += r.tag == CACHE_REPEAT
            hits += r.tag.startswith(PREFIX_HIT)
            replays += r.tag.startswith(TAG)
        return cls(repeats, hits, replays)

    def to_json(self) -> dict[str, int]:
        return {"repeats": self.repeats, "prefix_hits": self.hits, "replays": self.replays}


@dataclass(frozen=True)
class TopUp:
    """What a closed loop run for a duration carried inside its load against what its judges
    need, and the ``audit`` block that makes up the difference (empty when nothing is short)."""

    in_load: AuditCounts  # completed measured audit requests
    needed: AuditCounts  # what the judges need of them (0 for a check that is off)
    added: AuditCounts  # sent after the load
    plans: tuple[RequestPlan, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "in_load_completed": self.in_load.to_json(),
            "needed": self.needed.to_json(),
            "after_load": self.added.to_json(),
            "after_load_requests": len(self.plans),
        }

    def line(self) -> str:
        """One line for the observer: what was short, and what the block adds."""
        parts = [
            f"{got} of {need} {what} in the load, {add} more after it"
            for got, need, add, what in (
                (self.in_load.repeats, self.needed.repeats, self.added.repeats, "repeats"),
                (self.in_load.hits, self.needed.hits, self.added.hits, "shared-prefix prompts"),
                (self.in_load.replays, self.needed.replays, self.added.replays, "replays"),
            )
            if add
        ]
        return "; ".join(parts)


def top_up(
    spec: RunSpec,
    traffic: AuditTraffic,
    records: Iterable[Record],
    *,
    planner: Planner | None = None,
) -> TopUp:
    """After a closed loop run for a duration (``traffic.stream``): what its load fell short of,
    as an ``audit`` block to send after it (see the module docstring). ``records``: the run's
    records so far (only completed measured audit requests count)."""
    stream = traffic.stream
    assert stream is not None, "top_up is for a run whose audit traffic is a stream"
    got = AuditCounts.completed(records)
    needed = AuditCounts(
        MIN_PAIRS if stream.caching else 0,
        MIN_PAIRS if stream.prefix else 0,
        1 if stream.replays else 0,
    )

    def short(have: int, need: int) -> int:
        return 0 if have >= need else math.ceil((need - have) * BLOCK_PAIRS / MIN_PAIRS)

    repeats, hits = short(got.repeats, needed.repeats), short(got.hits, needed.hits)
    k = 0
    if got.replays < needed.replays:
        k = min(len(stream.replays), max(1, AUDIT_BLOCK // 10))
    plans: tuple[RequestPlan, ...] = ()
    if repeats or hits or k:
        planner = planner or Planner.from_spec(spec)
        rng = prf_rng(planning_seed(spec), b"audit-top-up", 0)
        picks = pick_entries(rng, stream.replays, k)
        plans = audit_block(rng, planner, picks, repeats, hits, traffic.concurrency)
    added = AuditCounts(
        sum(p.tag == CACHE_REPEAT for p in plans),
        sum(bool(p.tag and p.tag.startswith(PREFIX_HIT)) for p in plans),
        sum(bool(p.tag and p.tag.startswith(TAG)) for p in plans),
    )
    return TopUp(got, needed, added, plans)
