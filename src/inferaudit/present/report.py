"""The report: one self-contained HTML file (inline CSS, inline SVG drawn in ``charts``).

``build(claims, runs)`` reconciles the claims with the VERIFIED runs of a ``RunSet`` (see
``intent.reconcile.open_runs``) and gathers the page: the trust policy the runs were opened
under, status counts, the reconciliation table with reasons, the runs whose evidence did not
verify (with the reason; never credited), sum-of-parts findings, roll-ups per project, site,
vendor and accelerator, charts of claimed vs verified capacity ("no evidence" where nothing was
verified, never a zero bar) and of the provenance mix, and per verified run its checks with their
one-line summaries, latency CDFs and throughput over time, plus throughput vs load for a sweep
(invalid points marked). Nothing on the page loads anything from anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from inferaudit import __version__
from inferaudit.intent.claims import Claim
from inferaudit.intent.reconcile import (
    DEFAULT_TOLERANCE,
    Reconciliation,
    RunSet,
    reconcile,
    run_label,
    status_counts,
)
from inferaudit.intent.rollups import BUCKETS, GROUPS, Rollup, provenance_bucket, rollups
from inferaudit.measure.rundir import SEARCH_FILE, SWEEP_FILE
from inferaudit.present.charts import NO_EVIDENCE, fmt_measure, hbar_chart
from inferaudit.present.series import RunView, run_view, sweep_chart

BUCKET_COLOURS = dict(zip(BUCKETS, ("#10b981", "#f59e0b", "#8b5cf6", "#94a3b8"), strict=True))
STATUS_COLOURS = {
    "verified": "#059669",
    "shortfall": "#d97706",
    "unverified": "#64748b",
    "implausible": "#dc2626",
    "contradicted": "#991b1b",
}
VERDICT_COLOURS = {"pass": "#059669", "fail": "#991b1b", "inconclusive": "#d97706"}
TITLE = "inferaudit — capacity claims and evidence"


@dataclass(frozen=True)
class Refused:
    label: str
    path: str
    reason: str


@dataclass
class ReportData:
    title: str
    generated_at: str
    tolerance: float
    trust_policy: str
    results: list[Reconciliation]
    rollups: dict[str, list[Rollup]]
    runs: list[RunView]
    refused: list[Refused]
    sweeps: list[Markup]


def build(
    claims: Sequence[Claim],
    runs: RunSet,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    title: str = TITLE,
    generated_at: str | None = None,
) -> ReportData:
    """Reconcile and gather everything the page and the exports show."""
    results = reconcile(claims, runs, tolerance=tolerance)
    groups = {g: rollups(results, g) for g in GROUPS}
    parents: dict[Path, list[int]] = {}
    for i, run in enumerate(runs.verified):
        parent = run.run_dir.parent
        if (parent / SWEEP_FILE).exists() or (parent / SEARCH_FILE).exists():
            parents.setdefault(parent, []).append(i)
    sweeps = [sweep_chart(p, [runs.verified[i] for i in idx]) for p, idx in parents.items()]
    return ReportData(
        title=title,
        generated_at=generated_at or datetime.now(UTC).isoformat(timespec="seconds"),
        tolerance=tolerance,
        trust_policy=runs.policy,
        results=results,
        rollups=groups,
        runs=[run_view(r) for r in runs.verified],
        refused=[Refused(run_label(u.run_dir), str(u.run_dir), u.reason) for u in runs.refused],
        sweeps=sweeps,
    )


def capacity_charts(data: ReportData) -> list[Markup]:
    """Claimed vs verified bars by site and vendor; a row with no measured claim says
    "no evidence" instead of drawing a verified bar of zero."""
    charts = []
    for group in ("site", "vendor"):
        rows = data.rollups[group]
        kinds = list(dict.fromkeys((r.metric, r.unit) for r in rows))
        for metric, unit in kinds:
            if metric not in ("tokens_per_second", "compute"):
                continue
            chosen = [r for r in rows if (r.metric, r.unit) == (metric, unit)]
            verified: list[float | None] = [r.verified if r.measured else None for r in chosen]
            charts.append(
                hbar_chart(
                    [f"{r.key} · {r.stage}" for r in chosen],
                    [
                        ("claimed", [r.claimed for r in chosen]),
                        ("verified (lower bound)", verified),
                    ],
                    title=f"Claimed vs verified {metric.replace('_', ' ')} by {group}",
                    unit=unit,
                    colours=("#94a3b8", "#059669"),
                )
            )
    return charts


def provenance_chart(data: ReportData) -> Markup | None:
    rows = data.rollups["site"]  # site roll-ups count each claim once
    kinds: dict[tuple[str, str, str], dict[str, float]] = {}
    for r in rows:
        k = kinds.setdefault((r.metric, r.unit, r.stage), dict.fromkeys(BUCKETS, 0.0))
        for b, v in r.by_bucket.items():
            k[b] += v
    kinds = {k: v for k, v in kinds.items() if sum(v.values()) > 0}
    if not kinds:
        return None
    labels = [f"{m.replace('_', ' ')} ({u}), {s}" for m, u, s in kinds]
    totals = [sum(v.values()) for v in kinds.values()]
    present = [b for b in BUCKETS if any(v[b] > 0 for v in kinds.values())]
    series: list[tuple[str, Sequence[float | None]]] = [
        (b, [100.0 * v[b] / t for v, t in zip(kinds.values(), totals, strict=True)])
        for b in present
    ]
    return hbar_chart(
        labels,
        series,
        title="Provenance mix of claimed capacity",
        unit="%",
        stacked=True,
        percent=True,
        colours=[BUCKET_COLOURS[b] for b in present],
    )


def _env() -> Environment:
    env = Environment(
        loader=PackageLoader("inferaudit.present", "web/templates"),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = fmt_measure
    env.filters["pct"] = lambda v: "—" if v is None else f"{v:.1%}"
    return env


def headline(claim: Claim) -> str:
    """The claim's first stated quantity, e.g. "3,479 PFLOPS (signed)"."""
    q = next((q for q in claim.quantities if q.basis != "derived" and q.value is not None), None)
    return "—" if q is None else q.label()


def render(data: ReportData) -> str:
    """The page as one HTML string."""
    all_findings = [f for r in data.results for f in r.findings]
    template = _env().get_template("report.html.j2")
    return template.render(
        d=data,
        version=__version__,
        counts=status_counts(data.results),
        status_colours=STATUS_COLOURS,
        verdict_colours=VERDICT_COLOURS,
        no_evidence=NO_EVIDENCE,
        bucket=provenance_bucket,
        findings=[f for f in all_findings if f.severity == "discrepancy"],
        consistent=[f for f in all_findings if f.severity == "consistent"],
        capacity_charts=capacity_charts(data),
        provenance_chart=provenance_chart(data),
        groups=GROUPS,
        headline=headline,
    )


def write_report(
    out: Path,
    *,
    claims: Sequence[Claim],
    runs: RunSet,
    tolerance: float = DEFAULT_TOLERANCE,
    title: str = TITLE,
) -> Path:
    """Write the self-contained HTML report to ``out`` and return it.

    ``claims``: the current claims (e.g. ``ClaimStore.query()`` or ``seed_claims()`` plus a
    ``demo_claim``); ``runs``: the run directories opened under a trust policy.
    """
    data = build(claims, runs, tolerance=tolerance, title=title)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(data), encoding="utf-8")
    return out
