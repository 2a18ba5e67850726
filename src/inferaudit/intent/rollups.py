"""Roll-ups of reconciled claims: claimed vs verified capacity per project, site, vendor and
accelerator, and where each claim's support comes from (its provenance bucket).

Each claim adds its first stated (non-derived) quantity of each capacity metric and basis stage,
in one unit per metric. Only tokens/s can be verified by runs, and only by verified evidence
(``reconcile``); the part of a total that rests only on self-disclosure is kept apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from inferaudit.errors import ConfigError
from inferaudit.intent import catalog
from inferaudit.intent.claims import SELF_DISCLOSURE, Claim, Provenance, vendor_name
from inferaudit.intent.reconcile import Reconciliation, Status

CAPACITY_METRICS = ("tokens_per_second", "compute", "accelerator_count", "card_count", "power")
GROUPS = ("project", "site", "vendor", "accelerator")


def provenance_bucket(r: Reconciliation) -> str:
    """Where a claim's support comes from, strongest first."""
    prov = r.claim.provenance
    if any(j.usable for j in r.runs) or Provenance.independent_measurement in prov:
        return "independent measurement"
    if prov & SELF_DISCLOSURE:
        return "self-disclosure only"
    if Provenance.official_estimate in prov:
        return "official estimate"
    return "media / aggregator only"


BUCKETS = (
    "independent measurement",
    "self-disclosure only",
    "official estimate",
    "media / aggregator only",
)


STAGES: dict[str, str] = {
    "signed": "committed",
    "announced": "committed",
    "planned_target": "planned",
    "installed": "built",
    "operational": "built",
    "measured": "measured",
    "peak_theoretical": "other",
    "estimated": "other",
}


@dataclass
class Rollup:
    group: str  # "project", "site", "vendor", "accelerator"
    key: str
    metric: str
    unit: str
    stage: str  # committed (signed/announced), planned, built, measured, other
    claims: list[str] = field(default_factory=list)
    claimed: float = 0.0
    verified: float = 0.0  # only tokens/s can be verified by runs
    measured: bool = False  # some claim of the row was measured by verified evidence
    self_disclosed_only: float = 0.0
    by_bucket: dict[str, float] = field(default_factory=dict)


def _hw_key(accelerator_key: str, group: str) -> str:
    if group == "vendor":
        return vendor_name(accelerator_key)
    try:
        return catalog.accelerator(accelerator_key).id
    except ConfigError:
        return accelerator_key


def _shares(claim: Claim, group: str, metric: str, value: float) -> list[tuple[str, float]]:
    """How one quantity splits over the group's keys, without counting it twice."""
    if group == "project":
        return [(claim.subject.project or "(no project)", value)]
    if group == "site":
        site = claim.subject.site
        return [((site.city or site.label()) if site else "(no site)", value)]
    assert group in ("vendor", "accelerator"), group
    lines = claim.hardware
    if (
        metric in ("card_count", "accelerator_count")
        and len(lines) > 1
        and all(h.count is not None for h in lines)
        and sum(h.count or 0 for h in lines) == value
    ):
        return [(_hw_key(h.accelerator, group), float(h.count or 0)) for h in lines]
    if group == "vendor":
        keys = claim.vendors
    else:
        keys = list(dict.fromkeys(_hw_key(h.accelerator, group) for h in lines))
    if not keys:
        return [(f"(no {group})", value)]
    return [(keys[0] if len(keys) == 1 else "several: " + " + ".join(keys), value)]


_MEASURED = (Status.verified, Status.shortfall)
# Units brought to one per metric so roll-ups add up (SI prefixes only).
UNITS: dict[tuple[str, str], tuple[str, float]] = {
    ("compute", "EFLOPS"): ("PFLOPS", 1e3),
    ("compute", "TFLOPS"): ("PFLOPS", 1e-3),
    ("power", "kW"): ("MW", 1e-3),
    ("power", "W"): ("MW", 1e-6),
    ("power", "GW"): ("MW", 1e3),
}


def rollups(results: Sequence[Reconciliation], group: str) -> list[Rollup]:
    """Claimed vs verified per ``group`` key, capacity metric, unit and stage.

    Each claim adds its first stated (non-derived) quantity of each capacity metric and basis
    stage, in one unit per metric (EFLOPS and TFLOPS become PFLOPS; power becomes MW). A count
    that its hardware lines split exactly is shared out per line; any other quantity of a claim
    naming several vendors goes to a "several: ..." key, never to each. Related claims may
    still describe the same capacity: these are sums of claims as stated.
    """
    if group not in GROUPS:
        raise ConfigError(f"roll-up group {group!r}; expected project, site, vendor, accelerator")
    table: dict[tuple[str, str, str, str], Rollup] = {}
    for r in results:
        bucket = provenance_bucket(r)
        seen: set[tuple[str, str, str]] = set()
        for q in r.claim.quantities:
            if q.metric not in CAPACITY_METRICS or q.basis == "derived" or q.value is None:
                continue
            stage = STAGES[q.basis]
            unit, scale = UNITS.get((q.metric, q.unit), (q.unit, 1.0))
            if (q.metric, unit, stage) in seen:
                continue
            seen.add((q.metric, unit, stage))
            for key, share in _shares(r.claim, group, q.metric, q.value):
                value = share * scale
                row = table.setdefault(
                    (key, q.metric, unit, stage), Rollup(group, key, q.metric, unit, stage)
                )
                row.claims.append(r.claim_id)
                row.claimed += value
                row.by_bucket[bucket] = row.by_bucket.get(bucket, 0.0) + value
                if bucket == "self-disclosure only":
                    row.self_disclosed_only += value
                if q.metric == "tokens_per_second" and r.status in _MEASURED:
                    row.measured = True
                    row.verified += min(r.verified or 0.0, value)
    return sorted(table.values(), key=lambda x: (x.metric, x.unit, x.stage, -x.claimed, x.key))
