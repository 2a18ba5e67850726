"""Reconciliation: claims held against verified run evidence, one status per claim.

Only verified evidence counts. ``open_runs(paths, policy)`` opens every run directory through
``seal.verified.open_verified`` under one trust policy (signature by a trusted key, inclusion in
a trusted log, summary and verdicts recomputed from the records); a run that fails any step is an
``UnverifiedRun``, listed as "evidence not verified: <reason>" and never credited. Nothing here
reads ``spec.json``, ``summary.json`` or ``verdicts.json`` from disk itself.

Steps, per claim (each tagged in the code):
  (1) Roofline: a tokens/s claim with serving details and catalogued hardware is held against the
      physical bound (``roofline.check_throughput_claim``).
  (2) Match evidence: verified runs whose ``RunSpec.claim`` names the claim; else runs whose
      ``RunSpec.deployment`` equals ``subject.deployment``, whose endpoint model is the claim's
      model (same catalog entry, or the same name) and whose SLO is at least as strict.
  (3) Judge each run: a run whose client fell behind (``measure.budget.summary_lag_problem``) is
      set aside whole, failed checks included (the tool blames itself first: its timings are not
      evidence); otherwise a failed integrity check or an invalid run contradicts the claim; a
      run whose SLO verdict for the claim's bounds is not "pass" does not count at its load.
  (4) Verified value: the best usable run's lower 95% bound of output tokens/s
      (``summary.output_throughput_ci.low``); the point value only when no interval exists, and
      the reason says so. Only tokens the stream proves are credited: a v2 summary's throughput
      counts them (``metrics.proven_tokens``; the usage-based figure beside it is never
      credited); a v1 summary credits usage, so a v1 run whose usage exceeds its content events
      on any request holds no proven bound and is set aside (it is credited when they agree).
  (5) Status: contradicted > implausible > verified (lower bound >= claimed x (1 - tolerance))
      / shortfall (with the ratio) > unverified (no usable verified evidence; runs that did not
      verify are named with their reason).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from inferaudit.errors import ConfigError
from inferaudit.intent import catalog, roofline
from inferaudit.intent.claims import Claim, Finding, findings
from inferaudit.intent.roofline import Plausibility, Technique, ThroughputCheck
from inferaudit.judge.verdict import Outcome
from inferaudit.measure.budget import summary_lag_problem
from inferaudit.measure.rundir import SEARCH_FILE, SPEC_FILE, SWEEP_FILE
from inferaudit.seal.keys import TrustPolicy
from inferaudit.seal.verified import UnverifiedRun, VerifiedRun, open_verified

DEFAULT_TOLERANCE = 0.05
TOKENS_PER_S_UNITS = ("tokens/s", "tok/s", "tokens/second")
NOT_VERIFIED = "evidence not verified"


class Status(StrEnum):
    """A claim's standing after reconciliation (not the claim's own lifecycle ``status``)."""

    verified = "verified"
    shortfall = "shortfall"
    unverified = "unverified"
    implausible = "implausible"
    contradicted = "contradicted"


def run_label(run_dir: Path, label: str | None = None) -> str:
    """A run's name in outputs: its protocol label, else ``sweep/point-NNN`` or the directory."""
    if label:
        return label
    if run_dir.name.startswith("point-"):
        return f"{run_dir.parent.name}/{run_dir.name}"
    return run_dir.name


@dataclass(frozen=True)
class RunSet:
    """The run directories given, opened under one trust policy."""

    policy: str  # ``TrustPolicy.describe()``: stated in every output
    verified: tuple[VerifiedRun, ...]
    refused: tuple[UnverifiedRun, ...]

    def refusals(self) -> list[str]:
        """``<run>: evidence not verified: <reason>`` for each run that did not verify."""
        return [f"{run_label(u.run_dir)}: {NOT_VERIFIED}: {u.reason}" for u in self.refused]


def run_dirs(paths: Iterable[Path]) -> list[Path]:
    """Run directories: a sweep or search directory gives one per point (in name order)."""
    out: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise ConfigError(f"{path}: not a run directory (no such directory)")
        parent = (path / SWEEP_FILE).exists() or (path / SEARCH_FILE).exists()
        if parent and not (path / SPEC_FILE).exists():
            points = sorted(p for p in path.iterdir() if p.is_dir() and (p / SPEC_FILE).exists())
            if not points:
                raise ConfigError(f"{path}: sweep directory without point run directories")
            out.extend(points)
        elif (path / SPEC_FILE).exists():
            out.append(path)
        else:
            raise ConfigError(f"{path}: not a run directory ({SPEC_FILE} missing)")
    return out


def run_set(opened: Iterable[VerifiedRun | UnverifiedRun], policy: TrustPolicy) -> RunSet:
    """A ``RunSet`` of runs already opened (``open_verified``, or ``verify_run``'s result)."""
    items = list(opened)
    verified = tuple(r for r in items if isinstance(r, VerifiedRun))
    refused = tuple(r for r in items if isinstance(r, UnverifiedRun))
    return RunSet(policy.describe(), verified, refused)


def open_runs(
    paths: Iterable[Path],
    policy: TrustPolicy,
    *,
    tokenizer: Path | None = None,
    fingerprint: Path | None = None,
) -> RunSet:
    """Open every run (sweeps expanded) through ``open_verified`` under ``policy``."""
    opened = [
        open_verified(run_dir, policy, tokenizer=tokenizer, fingerprint=fingerprint)
        for run_dir in run_dirs(paths)
    ]
    return run_set(opened, policy)


# (1) ----------------------------------------------------------------------------------------


def claimed_tokens(claim: Claim) -> float | None:
    """The claim's stated output tokens/s, or None when it states none."""
    q = claim.quantity("tokens_per_second")
    return q.value if q is not None and q.unit in TOKENS_PER_S_UNITS else None


def roofline_check(claim: Claim) -> ThroughputCheck | None:
    """The roofline verdict of a tokens/s claim, or None when the claim lacks what it needs."""
    claimed = claimed_tokens(claim)
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


def matches(claim: Claim, run: VerifiedRun) -> bool:
    """Does this run test this claim? By claim id, else by deployment, model and SLO."""
    spec = run.spec
    if spec.claim is not None:
        return spec.claim == claim.claim_id
    deployment = claim.subject.deployment
    if deployment is None or spec.deployment != deployment:
        return False
    if claim.serving is None or not _same_model(claim.serving.model, spec.endpoint.model):
        return False
    run_bounds = spec.slo.bounds_ms
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


def judge_run(claim: Claim, run: VerifiedRun) -> RunJudgement:
    """What one verified run says about one claim (steps 3 and 4 of the module docstring)."""
    s = run.summary
    label = run_label(run.run_dir, run.spec.label)
    failed = [v for v in run.verdicts if v.verdict is Outcome.failed]
    lag = summary_lag_problem(
        run.spec,
        s.client_lag_ms.p99,
        (s.ttft_ms.p50, s.ttft_ms.p99),
        (s.ttft_from_sent_ms.p50, s.ttft_from_sent_ms.p99),
    )
    if lag is not None:
        why = "; ".join(s.invalid_reasons) or lag
        note = f"set aside, client-side fault: {why}"
        if failed:
            note += " (failed checks not counted against the claim: "
            note += ", ".join(v.check for v in failed) + ")"
        return RunJudgement(label, False, False, None, None, (note,))
    reasons = [f"integrity check {v.check} failed: {v.summary}" for v in failed]
    if not s.valid:
        reasons.append(f"invalid run: {'; '.join(s.invalid_reasons) or 'summary says invalid'}")
    if reasons:
        return RunJudgement(label, False, True, None, None, tuple(reasons))
    bounds = claim.serving.slo_bounds() if claim.serving else {}
    for key in bounds:
        entry = s.slo.get(key)
        verdict = None if entry is None else entry.verdict
        if verdict != "pass":
            why = f"SLO {key} verdict {verdict or 'missing'} at {s.load}"
            if entry is not None and entry.additional_requests_needed:
                why += f" ({entry.additional_requests_needed} more passing requests needed)"
            return RunJudgement(label, False, False, None, None, (why,))
    above = s.output_tokens_by_source.usage_above_chunks
    if s.token_credit is None and above:
        why = (
            f"not credited: its v1 summary credits usage above the stream's content events on "
            f"{above} requests, so it holds no proven lower bound (re-run with this version)"
        )
        return RunJudgement(label, False, False, None, None, (why,))
    proven = "proven " if s.token_credit is not None else ""
    ci = s.output_throughput_ci
    if ci.low is not None:
        low = max(0.0, float(ci.low))
        return RunJudgement(
            label,
            True,
            False,
            low,
            "ci-low",
            (f"lower {ci.confidence:.0%} bound of {proven}output tokens/s: {low:.4g}",),
        )
    point = s.output_throughput_tok_s
    if point is None:
        return RunJudgement(label, False, False, None, None, ("no output throughput",))
    return RunJudgement(
        label,
        True,
        False,
        float(point),
        "point",
        (
            f"point value {float(point):.4g} {proven}tokens/s used: no confidence interval "
            "(too few completed requests for sub-windows)",
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
    runs: RunSet,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    registry: Sequence[Claim] = (),
) -> Reconciliation:
    if not 0 <= tolerance < 1:
        raise ConfigError(f"tolerance must be in [0, 1), got {tolerance}")
    # (1)
    bound = roofline_check(claim)
    # (2)-(4)
    judged = tuple(judge_run(claim, run) for run in runs.verified if matches(claim, run))
    found = tuple(findings(claim, registry))
    claimed = claimed_tokens(claim)
    usable = [r for r in judged if r.usable and r.value is not None]
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
            judged,
            bound,
            found,
        )

    # (5)
    contradicting = [r for r in judged if r.contradicts]
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
        reasons.extend(f"{r.label}: {why}" for r in judged for why in r.reasons)
        reasons.extend(runs.refusals())
        if judged:
            reasons.append("no usable verified run matches this claim")
        else:
            reasons.append("no verified run matches this claim")
        return result(Status.unverified)
    assert ratio is not None and verified is not None
    threshold = claimed * (1 - tolerance)
    reasons.append(
        f"{best.label}: {verified:.4g} tokens/s ({best.value_basis}) vs claimed {claimed:.4g} "
        f"(threshold {threshold:.4g} at tolerance {tolerance:.0%}): {ratio:.1%}"
    )
    if best.value_basis == "point":
        reasons.extend(best.reasons)
    return result(Status.verified if verified >= threshold else Status.shortfall)


def reconcile(
    claims: Sequence[Claim],
    runs: RunSet,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
) -> list[Reconciliation]:
    """Reconcile every claim (pass current ones: superseded claims are history)."""
    return [reconcile_claim(c, runs, tolerance=tolerance, registry=claims) for c in claims]


def status_counts(results: Sequence[Reconciliation]) -> dict[str, int]:
    """Claims per reconciliation status, every status listed (zeros included)."""
    counts = dict.fromkeys((s.value for s in Status), 0)
    for r in results:
        counts[r.status.value] += 1
    return counts
