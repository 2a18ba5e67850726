"""Reconciliation: claims matched to run evidence, a status per claim, roll-ups.

Steps, per claim (each tagged in the code):
  (1) Roofline: a tokens/s claim with serving details and catalogued hardware is held against the
      physical bound (``roofline.check_throughput_claim``).
  (2) Match evidence: runs whose ``RunSpec.claim`` names the claim; else runs whose
      ``RunSpec.deployment`` equals ``subject.deployment``, whose endpoint model is the claim's
      model (same catalog entry, or the same name) and whose SLO is at least as strict.
  (3) Judge each run: a run whose client fell behind its schedule is set aside whole, failed
      checks included (the tool blames itself first: its timings are not evidence); otherwise
      a failed integrity check or an invalid run contradicts the claim; a run whose SLO
      verdict for the claim's bounds is not "pass" does not count at its load.
  (4) Verified value: the best usable run's lower 95% bound of output tokens/s
      (``summary.output_throughput_ci.low``); the point value only when no interval exists, and
      the reason says so.
  (5) Status: contradicted > implausible > verified (lower bound >= claimed x (1 - tolerance))
      / shortfall (with the ratio) > unverified (no usable evidence).
Roll-ups sum the stated quantities of current (not superseded) claims per project, site, vendor
and accelerator, with verified capacity and the part that rests only on self-disclosure.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from inferaudit.errors import ConfigError
from inferaudit.intent import catalog, roofline
from inferaudit.intent.claims import (
    SELF_DISCLOSURE,
    Claim,
    Finding,
    Provenance,
    findings,
    vendor_name,
)
from inferaudit.intent.roofline import Plausibility, Technique, ThroughputCheck
from inferaudit.measure.protocol import RunSpec
from inferaudit.measure.rundir import SPEC_FILE, SWEEP_FILE, load_run

DEFAULT_TOLERANCE = 0.05
TOKENS_PER_S_UNITS = ("tokens/s", "tok/s", "tokens/second")
CAPACITY_METRICS = ("tokens_per_second", "compute", "accelerator_count", "card_count", "power")


class Status(StrEnum):
    verified = "verified"
    shortfall = "shortfall"
    unverified = "unverified"
    implausible = "implausible"
    contradicted = "contradicted"


@dataclass(frozen=True)
class Evidence:
    """One measurement point: a run directory's protocol and summary."""

    run_dir: Path
    spec: RunSpec
    summary: dict[str, Any]

    @property
    def label(self) -> str:
        return self.spec.label or (
            f"{self.run_dir.parent.name}/{self.run_dir.name}"
            if self.run_dir.name.startswith("point-")
            else self.run_dir.name
        )


def load_evidence(paths: Iterable[Path]) -> list[Evidence]:
    """Read run directories; a sweep directory (``sweep.json``) gives one item per point."""
    out: list[Evidence] = []
    for path in paths:
        if (path / SWEEP_FILE).exists() and not (path / SPEC_FILE).exists():
            points = sorted(p for p in path.iterdir() if p.is_dir() and (p / SPEC_FILE).exists())
            if not points:
                raise ConfigError(f"{path}: sweep directory without point run directories")
            out.extend(_read_run(p) for p in points)
        else:
            out.append(_read_run(path))
    return out


def _read_run(run_dir: Path) -> Evidence:
    return Evidence(run_dir, *load_run(run_dir))


# (1) ----------------------------------------------------------------------------------------


def _claimed_tokens(claim: Claim) -> float | None:
    q = claim.quantity("tokens_per_second")
    return q.value if q is not None and q.unit in TOKENS_PER_S_UNITS else None


def roofline_check(claim: Claim) -> ThroughputCheck | None:
    """The roofline verdict of a tokens/s claim, or None when the claim lacks what it needs."""
    claimed = _claimed_tokens(claim)
    serving = claim.serving
    if claimed is None or serving is None or not claim.hardware:
        return None
    try:
        model = catalog.model(serving.model)
        accs = {catalog.accelerator(h.accelerator).id for h in claim.hardware}
    except ConfigError:
        return None
    counts = [h.count for h in claim.hardware]
    if len(accs) != 1 or any(c is None or c < 1 for c in counts):
        return None
    acc = catalog.accelerator(next(iter(accs)))
    count = sum(c for c in counts if c is not None)
    dtype = serving.precision or model.default_dtype
    context = serving.context_tokens or 0
    techniques = set(serving.techniques)
    q = claim.quantity("tokens_per_second")
    if q is not None and q.sparsity == "sparse":
        techniques.add(Technique.sparsity)
    batch = serving.concurrency
    if batch is None:
        batch = (
            roofline.max_batch(acc, model, context_tokens=context, dtype=dtype, count=count)
            if context > 0
            else None
        )
        if not batch:
            return ThroughputCheck(
                Plausibility.unknown,
                claimed,
                None,
                None,
                "concurrency not stated and no memory-capacity limit to bound it",
            )
    return roofline.check_throughput_claim(
        claimed,
        acc,
        model,
        dtype=dtype,
        count=count,
        batch=batch,
        context_tokens=context,
        techniques=frozenset(techniques),
    )


# (2) ----------------------------------------------------------------------------------------


def _same_model(a: str, b: str) -> bool:
    if a.lower() == b.lower():
        return True
    try:
        return catalog.model(a).id == catalog.model(b).id
    except ConfigError:
        return False


def matches(claim: Claim, ev: Evidence) -> bool:
    """Does this run test this claim? By claim id, else by deployment, model and SLO."""
    if ev.spec.claim is not None:
        return ev.spec.claim == claim.claim_id
    deployment = claim.subject.deployment
    if deployment is None or ev.spec.deployment != deployment:
        return False
    if claim.serving is None or not _same_model(claim.serving.model, ev.spec.endpoint.model):
        return False
    run_bounds = ev.spec.slo.bounds_ms
    return all(
        key in run_bounds and run_bounds[key] <= bound
        for key, bound in claim.serving.slo_bounds().items()
    )


# (3)-(4) ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunJudgement:
    label: str
    usable: bool
    contradicts: bool
    value: float | None  # tokens/s credited to the claim by this run
    value_basis: str | None  # "ci-low" or "point"
    reasons: tuple[str, ...]


def _client_lagged(ev: Evidence) -> bool:
    lag = (ev.summary.get("client_lag_ms") or {}).get("p99")
    return lag is not None and lag > ev.spec.max_client_lag_p99_ms


def judge_run(claim: Claim, ev: Evidence) -> RunJudgement:
    """What one run says about one claim (steps 3 and 4 of the module docstring)."""
    s = ev.summary
    reasons: list[str] = []
    failed = [c for c in s.get("checks") or [] if c.get("verdict") == "fail"]
    if _client_lagged(ev):
        why = "; ".join(s.get("invalid_reasons") or ["client lag above the protocol's limit"])
        note = f"set aside, client-side fault: {why}"
        if failed:
            names = ", ".join(str(c.get("check")) for c in failed)
            note += f" (failed checks not counted against the claim: {names})"
        return RunJudgement(ev.label, False, False, None, None, (note,))
    for c in failed:
        reasons.append(f"integrity check {c.get('check')} failed: {c.get('summary')}")
    if not s.get("valid", False):
        why = "; ".join(s.get("invalid_reasons") or ["summary says invalid"])
        reasons.append(f"invalid run: {why}")
    if reasons:
        return RunJudgement(ev.label, False, True, None, None, tuple(reasons))
    slo = s.get("slo") or {}
    bounds = claim.serving.slo_bounds() if claim.serving else {}
    for key in bounds:
        entry = slo.get(key) or {}
        verdict = entry.get("verdict")
        if verdict != "pass":
            why = f"SLO {key} verdict {verdict or 'missing'} at {s.get('load', 'this load')}"
            if entry.get("additional_requests_needed"):
                why += f" ({entry['additional_requests_needed']} more passing requests needed)"
            return RunJudgement(ev.label, False, False, None, None, (why,))
    ci = s.get("output_throughput_ci") or {}
    if ci.get("low") is not None:
        low = max(0.0, float(ci["low"]))
        return RunJudgement(
            ev.label,
            True,
            False,
            low,
            "ci-low",
            (f"lower {ci.get('confidence', 0.95):.0%} bound of output tokens/s: {low:.6g}",),
        )
    point = s.get("output_throughput_tok_s")
    if point is None:
        return RunJudgement(ev.label, False, False, None, None, ("no output throughput",))
    return RunJudgement(
        ev.label,
        True,
        False,
        float(point),
        "point",
        (
            f"point value {float(point):.6g} tokens/s used: no confidence interval (too few "
            "completed requests for sub-windows)",
        ),
    )


# (5) ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reconciliation:
    claim: Claim
    status: Status
    claimed: float | None  # tokens/s when the claim states it
    verified: float | None  # the credited lower bound, tokens/s
    ratio: float | None  # verified / claimed
    value_basis: str | None
    reasons: tuple[str, ...]
    runs: tuple[RunJudgement, ...]
    roofline: ThroughputCheck | None
    findings: tuple[Finding, ...] = field(default=())

    @property
    def claim_id(self) -> str:
        return self.claim.claim_id


def reconcile_claim(
    claim: Claim,
    evidence: Sequence[Evidence],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    registry: Sequence[Claim] = (),
) -> Reconciliation:
    if not 0 <= tolerance < 1:
        raise ConfigError(f"tolerance must be in [0, 1), got {tolerance}")
    # (1)
    bound = roofline_check(claim)
    # (2)-(4)
    runs = tuple(judge_run(claim, ev) for ev in evidence if matches(claim, ev))
    found = tuple(findings(claim, registry))
    claimed = _claimed_tokens(claim)
    usable = [r for r in runs if r.usable and r.value is not None]
    best = max(usable, key=lambda r: r.value or 0.0, default=None)
    verified = None if best is None else best.value
    ratio = None if verified is None or not claimed else verified / claimed
    reasons: list[str] = []

    def result(status: Status) -> Reconciliation:
        return Reconciliation(
            claim,
            status,
            claimed,
            verified,
            ratio,
            None if best is None else best.value_basis,
            tuple(reasons),
            runs,
            bound,
            found,
        )

    # (5)
    contradicting = [r for r in runs if r.contradicts]
    if contradicting:
        reasons.extend(f"{r.label}: {why}" for r in contradicting for why in r.reasons)
        return result(Status.contradicted)
    if bound is not None and bound.verdict is Plausibility.implausible:
        reasons.append(bound.explanation)
        return result(Status.implausible)
    if claimed is None:
        q = next((q for q in claim.quantities if q.value is not None), None)
        what = f"{q.metric} in {q.unit}" if q else "no quantity"
        reasons.append(f"not a tokens/s claim ({what}): no run can measure it")
        return result(Status.unverified)
    if best is None:
        reasons.extend(f"{r.label}: {why}" for r in runs for why in r.reasons)
        reasons.append("no usable run matches this claim" if runs else "no run matches this claim")
        return result(Status.unverified)
    assert ratio is not None and verified is not None
    threshold = claimed * (1 - tolerance)
    reasons.append(
        f"{best.label}: {verified:.6g} tokens/s ({best.value_basis}) vs claimed {claimed:.6g} "
        f"(threshold {threshold:.6g} at tolerance {tolerance:.0%}): {ratio:.1%}"
    )
    if best.value_basis == "point":
        reasons.extend(best.reasons)
    return result(Status.verified if verified >= threshold else Status.shortfall)


def reconcile(
    claims: Sequence[Claim],
    evidence: Sequence[Evidence],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
) -> list[Reconciliation]:
    """Reconcile every claim (pass current ones: superseded claims are history)."""
    return [reconcile_claim(c, evidence, tolerance=tolerance, registry=claims) for c in claims]


# Roll-ups -----------------------------------------------------------------------------------


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
    if group not in ("project", "site", "vendor", "accelerator"):
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
                if q.metric == "tokens_per_second" and r.status in _MEASURED and r.verified:
                    row.verified += min(r.verified, value)
    return sorted(table.values(), key=lambda x: (x.metric, x.unit, x.stage, -x.claimed, x.key))


def status_counts(results: Sequence[Reconciliation]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for r in results:
        counts[r.status.value] += 1
    return {s.value: counts[s.value] for s in Status}
