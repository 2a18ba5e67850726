"""The report: one self-contained HTML file (inline CSS, inline SVG drawn here), and exports.

``write_report(out, claims=..., run_dirs=...)`` reconciles the claims with the runs and writes
the page: status counts, the reconciliation table with reasons, sum-of-parts findings, roll-ups
per project, site, vendor and accelerator, charts of claimed vs verified capacity and of the
provenance mix, and for each run latency CDFs and throughput over time (from ``records.jsonl``)
plus throughput vs load for a sweep. Nothing on the page loads anything from anywhere.

``export(out, fmt, ...)`` writes the same reconciliation as CSV, Parquet (pyarrow) or JSON.
``demo_claim(...)`` makes the claim that ``inferaudit demo`` tests against the twin.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from inferaudit import __version__
from inferaudit.errors import ConfigError
from inferaudit.intent.claims import Claim, build_claim
from inferaudit.intent.reconcile import (
    BUCKETS,
    DEFAULT_TOLERANCE,
    Evidence,
    Reconciliation,
    Rollup,
    load_evidence,
    provenance_bucket,
    reconcile,
    rollups,
    status_counts,
)
from inferaudit.measure.records import Record, iter_records
from inferaudit.measure.rundir import RECORDS_FILE, SWEEP_FILE

GROUPS = ("project", "site", "vendor", "accelerator")
PALETTE = ("#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#0891b2", "#db2777")
BUCKET_COLOURS = dict(zip(BUCKETS, ("#10b981", "#f59e0b", "#8b5cf6", "#94a3b8"), strict=True))
STATUS_COLOURS = {
    "verified": "#059669",
    "shortfall": "#d97706",
    "unverified": "#64748b",
    "implausible": "#dc2626",
    "contradicted": "#991b1b",
}

# ---------------------------------------------------------------------------------------------
# SVG charts. Every chart is <svg class="chart" data-series="N"> with one element of class
# "series" per series, so a browser test can count what was drawn.


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi] (1, 2, 2.5, 5 x 10^k steps)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"ticks over [{lo}, {hi}]")
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    t = start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(t, 12))
    return ticks


def fmt_num(x: float) -> str:
    """Compact number: 1.2k, 3.4M, 0.25."""
    a = abs(x)
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


@dataclass(frozen=True)
class Series:
    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    step: bool = False  # draw as a step function (CDFs)
    dashed: bool = False
    markers: bool = False


def _legend(names: Sequence[tuple[str, str]], x: float, y: float) -> str:
    parts = []
    for i, (name, colour) in enumerate(names):
        yy = y + i * 16
        parts.append(
            f'<rect x="{x}" y="{yy - 9}" width="12" height="10" rx="2" fill="{colour}"/>'
            f'<text x="{x + 17}" y="{yy}" class="legend">{_esc(name)}</text>'
        )
    return "".join(parts)


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    width: int = 540,
    height: int = 290,
    y_from_zero: bool = True,
) -> Markup:
    """A line chart with axes, ticks, grid and legend."""
    drawn = [s for s in series if len(s.xs) > 0]
    left, right, top, bottom = 60, 150, 34, 46
    pw, ph = width - left - right, height - top - bottom
    xs = [x for s in drawn for x in s.xs] or [0.0, 1.0]
    ys = [y for s in drawn for y in s.ys] or [0.0, 1.0]
    xt = nice_ticks(min(xs), max(xs))
    yt = nice_ticks(0.0 if y_from_zero else min(ys), max(ys))
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return top + ph - (y - y0) / (y1 - y0) * ph

    out = [
        f'<svg class="chart" data-series="{len(drawn)}" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{_esc(title)}">',
        f'<text x="{left}" y="18" class="title">{_esc(title)}</text>',
    ]
    for t in yt:
        out.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{py(t) + 4:.1f}" class="tick" text-anchor="end">'
            f"{fmt_num(t)}</text>"
        )
    for t in xt:
        out.append(
            f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{top + ph}" y2="{top + ph + 4}" '
            f'class="axis"/><text x="{px(t):.1f}" y="{top + ph + 17}" class="tick" '
            f'text-anchor="middle">{fmt_num(t)}</text>'
        )
    out.append(
        f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" class="axis"/>'
        f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" class="axis"/>'
        f'<text x="{left + pw / 2}" y="{height - 8}" class="label" text-anchor="middle">'
        f"{_esc(x_label)}</text>"
        f'<text transform="translate(14 {top + ph / 2}) rotate(-90)" class="label" '
        f'text-anchor="middle">{_esc(y_label)}</text>'
    )
    legend = []
    for i, s in enumerate(drawn):
        colour = PALETTE[i % len(PALETTE)]
        pts: list[str] = []
        for j, (x, y) in enumerate(zip(s.xs, s.ys, strict=True)):
            if s.step and j > 0:
                pts.append(f"{px(x):.1f},{py(s.ys[j - 1]):.1f}")
            pts.append(f"{px(x):.1f},{py(y):.1f}")
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        out.append(
            f'<g class="series" data-name="{_esc(s.name)}"><polyline points="{" ".join(pts)}" '
            f'fill="none" stroke="{colour}" stroke-width="2"{dash}/>'
        )
        if s.markers or len(s.xs) == 1:
            out.extend(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{colour}"/>'
                for x, y in zip(s.xs, s.ys, strict=True)
            )
        out.append("</g>")
        legend.append((s.name, colour))
    out.append(_legend(legend, left + pw + 14, top + 10))
    out.append("</svg>")
    return Markup("".join(out))


def hbar_chart(
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    title: str,
    unit: str,
    width: int = 1100,
    stacked: bool = False,
    colours: Sequence[str] = PALETTE,
    percent: bool = False,
) -> Markup:
    """Horizontal bars: grouped (side by side per label) or stacked."""
    label_w, right, top, bottom = 280, 210, 34, 34
    bar_h = 14 if stacked else 10
    group_h = (bar_h if stacked else bar_h * len(series)) + 12
    height = top + bottom + group_h * max(len(labels), 1)
    pw = width - label_w - right
    totals = [
        sum(vals[i] for _, vals in series) if stacked else max(vals[i] for _, vals in series)
        for i in range(len(labels))
    ]
    vmax = 100.0 if percent else max(totals, default=0.0) or 1.0
    ticks = nice_ticks(0.0, vmax, 4)
    scale = pw / ticks[-1]
    out = [
        f'<svg class="chart" data-series="{len(series)}" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{_esc(title)}">',
        f'<text x="8" y="18" class="title">{_esc(title)}</text>',
    ]
    for t in ticks:
        x = label_w + t * scale
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{height - bottom}" class="grid"/>'
            f'<text x="{x:.1f}" y="{height - bottom + 14}" class="tick" text-anchor="middle">'
            f"{fmt_num(t)}{'%' if percent else ''}</text>"
        )
    for i, label in enumerate(labels):
        y = top + i * group_h + 6
        shown = label if len(label) <= 44 else label[:43] + "…"
        out.append(
            f'<text x="{label_w - 8}" y="{y + (bar_h if stacked else group_h - 12) / 2 + 4:.1f}" '
            f'class="tick" text-anchor="end"><title>{_esc(label)}</title>{_esc(shown)}</text>'
        )
    for k, (name, values) in enumerate(series):
        colour = colours[k % len(colours)]
        out.append(f'<g class="series" data-name="{_esc(name)}" fill="{colour}">')
        for i, v in enumerate(values):
            y = top + i * group_h + 6 + (0 if stacked else k * bar_h)
            x = label_w + (sum(s[1][i] for s in series[:k]) * scale if stacked else 0.0)
            w = max(v * scale, 0.0)
            if v > 0 or not stacked:  # a zero in a grouped chart is drawn as a 2 px tick
                out.append(
                    f'<rect x="{x:.1f}" y="{y}" width="{max(w, 2.0):.1f}" height="{bar_h - 1}" '
                    f'rx="1"><title>{_esc(name)}: {fmt_num(v)}{"%" if percent else " " + unit}'
                    "</title></rect>"
                )
        out.append("</g>")
    out.append(
        _legend(
            [(n, colours[k % len(colours)]) for k, (n, _) in enumerate(series)],
            label_w + pw + 16,
            top + 10,
        )
    )
    out.append(
        f'<text x="{label_w + pw / 2}" y="{height - 4}" class="label" text-anchor="middle">'
        f"{_esc('share of claimed total' if percent else unit)}</text></svg>"
    )
    return Markup("".join(out))


# ---------------------------------------------------------------------------------------------
# Per-run series from records.jsonl (measured phase only; output tokens counted as in metrics:
# the server's usage when reported, else content chunks).


def _tokens(r: Record) -> int:
    return r.usage_completion_tokens if r.usage_completion_tokens is not None else r.content_chunks


def cdf(values: Sequence[float]) -> tuple[list[float], list[float]]:
    """Empirical CDF points (value, share of values <= it), at most 400 points."""
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        return [], []
    stride = max(1, n // 400)
    idx = sorted({*range(0, n, stride), n - 1})
    return [xs[i] for i in idx], [(i + 1) / n for i in idx]


def throughput_over_time(
    records: Sequence[Record], bins: int = 40
) -> tuple[list[float], list[float]]:
    """Output tokens/s per time bin (tokens counted at each request's done time)."""
    done = [(r.done_ns, _tokens(r)) for r in records if r.ok and r.done_ns is not None]
    if not done:
        return [], []
    start = min(r.scheduled_ns for r in records)
    end = max(t for t, _ in done)
    span = max(end - start, 1)
    k = max(1, min(bins, len(done) // 3 or 1))
    width = span / k
    tokens = [0] * k
    for t, n in done:
        tokens[min(k - 1, int((t - start) // width))] += n
    return [(i + 0.5) * width / 1e9 for i in range(k)], [n / (width / 1e9) for n in tokens]


@dataclass
class RunView:
    label: str
    path: str
    summary: dict[str, Any]
    spec: dict[str, Any]
    charts: list[Markup] = field(default_factory=list)


def _run_view(ev: Evidence) -> RunView:
    view = RunView(ev.label, str(ev.run_dir), ev.summary, ev.spec.model_dump(mode="json"))
    path = ev.run_dir / RECORDS_FILE
    if not path.exists():
        return view
    measured = [r for r in iter_records(path) if r.phase == "measure"]
    ok = [r for r in measured if r.ok]
    ttft = [(r.first_content_ns - r.scheduled_ns) / 1e6 for r in ok if r.first_content_ns]
    e2e = [(r.done_ns - r.scheduled_ns) / 1e6 for r in ok if r.done_ns is not None]
    cdfs = [Series(name, *cdf(vals), step=True) for name, vals in (("TTFT", ttft), ("E2E", e2e))]
    view.charts.append(
        line_chart(
            cdfs,
            title=f"Latency CDF — {ev.label}",
            x_label="ms from scheduled send",
            y_label="share of completed requests",
        )
    )
    xs, ys = throughput_over_time(measured)
    tp = [Series("per time bin", xs, ys, markers=True)]
    ci = (ev.summary.get("output_throughput_ci") or {}).get("low")
    if ci is not None and xs:
        tp.append(Series("95% lower bound", [xs[0], xs[-1]], [ci, ci], dashed=True))
    view.charts.append(
        line_chart(
            tp,
            title=f"Throughput over time — {ev.label}",
            x_label="seconds since first scheduled request",
            y_label="output tokens/s",
        )
    )
    return view


def _sweep_chart(parent: Path, points: list[Evidence]) -> Markup:
    def load_x(ev: Evidence) -> float:
        load = ev.spec.load
        return float(load.concurrency if load.concurrency is not None else load.rate or 0.0)

    pts = sorted(points, key=load_x)
    kind = "concurrency" if pts[0].spec.load.concurrency is not None else "requests/s offered"
    xs = [load_x(p) for p in pts]
    point = [float(p.summary.get("output_throughput_tok_s") or 0.0) for p in pts]
    series = [Series("point value", xs, point, markers=True)]
    lows = [
        (x, (p.summary.get("output_throughput_ci") or {}).get("low"))
        for x, p in zip(xs, pts, strict=True)
    ]
    if any(v is not None for _, v in lows):
        kept = [(x, float(v)) for x, v in lows if v is not None]
        series.append(
            Series(
                "95% lower bound",
                [x for x, _ in kept],
                [v for _, v in kept],
                dashed=True,
                markers=True,
            )
        )
    good = [(x, p.summary.get("goodput_tok_s")) for x, p in zip(xs, pts, strict=True)]
    if any(v is not None for _, v in good):
        kept = [(x, float(v)) for x, v in good if v is not None]
        series.append(
            Series("goodput tokens/s", [x for x, _ in kept], [v for _, v in kept], markers=True)
        )
    return line_chart(
        series,
        title=f"Throughput vs load — sweep {parent.name}",
        x_label=kind,
        y_label="output tokens/s",
    )


# ---------------------------------------------------------------------------------------------
# The page.


@dataclass
class ReportData:
    title: str
    generated_at: str
    tolerance: float
    results: list[Reconciliation]
    rollups: dict[str, list[Rollup]]
    runs: list[RunView]
    sweeps: list[Markup]
    evidence: list[Evidence]


def build(
    claims: Sequence[Claim],
    run_dirs: Sequence[Path] = (),
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    title: str = "inferaudit — capacity claims and evidence",
    generated_at: str | None = None,
) -> ReportData:
    """Reconcile and gather everything the page and the exports show."""
    evidence = load_evidence(run_dirs)
    results = reconcile(claims, evidence, tolerance=tolerance)
    groups = {g: rollups(results, g) for g in GROUPS}
    sweeps = []
    for path in run_dirs:
        if (path / SWEEP_FILE).exists():
            points = [e for e in evidence if e.run_dir.parent == path]
            if points:
                sweeps.append(_sweep_chart(path, points))
    return ReportData(
        title=title,
        generated_at=generated_at or datetime.now(UTC).isoformat(timespec="seconds"),
        tolerance=tolerance,
        results=results,
        rollups=groups,
        runs=[_run_view(e) for e in evidence],
        sweeps=sweeps,
        evidence=evidence,
    )


def _capacity_charts(data: ReportData) -> list[Markup]:
    charts = []
    for group in ("site", "vendor"):
        rows = data.rollups[group]
        kinds = list(dict.fromkeys((r.metric, r.unit) for r in rows))
        for metric, unit in kinds:
            if metric not in ("tokens_per_second", "compute"):
                continue
            chosen = [r for r in rows if (r.metric, r.unit) == (metric, unit)]
            labels = [f"{r.key} · {r.stage}" for r in chosen]
            charts.append(
                hbar_chart(
                    labels,
                    [
                        ("claimed", [r.claimed for r in chosen]),
                        ("verified (lower bound)", [r.verified for r in chosen]),
                    ],
                    title=f"Claimed vs verified {metric.replace('_', ' ')} by {group}",
                    unit=unit,
                    colours=("#94a3b8", "#059669"),
                )
            )
    return charts


def _provenance_chart(data: ReportData) -> Markup | None:
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
    series = [
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
    env.filters["num"] = lambda v: "—" if v is None else f"{v:,.6g}"
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
        bucket=provenance_bucket,
        findings=[f for f in all_findings if f.severity == "discrepancy"],
        consistent=[f for f in all_findings if f.severity == "consistent"],
        capacity_charts=_capacity_charts(data),
        provenance_chart=_provenance_chart(data),
        groups=GROUPS,
        headline=headline,
    )


def write_report(
    out: Path,
    *,
    claims: Sequence[Claim],
    run_dirs: Sequence[Path] = (),
    tolerance: float = DEFAULT_TOLERANCE,
    title: str = "inferaudit — capacity claims and evidence",
) -> Path:
    """Write the self-contained HTML report to ``out`` and return it.

    ``claims``: the current claims (e.g. ``ClaimStore.query()`` or ``seed_claims()`` plus a
    ``demo_claim``); ``run_dirs``: run or sweep directories to reconcile them with.
    """
    data = build(claims, run_dirs, tolerance=tolerance, title=title)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(data), encoding="utf-8")
    return out


# ---------------------------------------------------------------------------------------------
# Exports.


def reconciliation_rows(results: Sequence[Reconciliation]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        c = r.claim
        rows.append(
            {
                "claim_id": c.claim_id,
                "status": r.status.value,
                "claimed_tokens_per_s": r.claimed,
                "verified_tokens_per_s": r.verified,
                "ratio": r.ratio,
                "value_basis": r.value_basis,
                "roofline": None if r.roofline is None else r.roofline.verdict.value,
                "roofline_bound_tokens_per_s": (
                    r.roofline.bound.tokens_per_s if r.roofline and r.roofline.bound else None
                ),
                "runs": ";".join(j.label for j in r.runs),
                "reasons": " | ".join(r.reasons),
                "findings": " | ".join(
                    f.message for f in r.findings if f.severity == "discrepancy"
                ),
                "site": c.site_label,
                "vendors": ";".join(c.vendors),
                "claim_status": c.status,
                "certainty": c.certainty,
                "provenance": provenance_bucket(r),
            }
        )
    return rows


def rollup_rows(data: ReportData) -> list[dict[str, Any]]:
    return [
        {
            "group": r.group,
            "key": r.key,
            "metric": r.metric,
            "unit": r.unit,
            "stage": r.stage,
            "claims": len(r.claims),
            "claimed": r.claimed,
            "verified": r.verified,
            "self_disclosed_only": r.self_disclosed_only,
        }
        for g in GROUPS
        for r in data.rollups[g]
    ]


_STRING_COLUMNS = ("value_basis", "roofline", "runs", "reasons", "findings")


def _table(rows: list[dict[str, Any]], columns: Sequence[str]) -> pa.Table:
    def typ(name: str) -> pa.DataType:
        sample = next((r[name] for r in rows if r[name] is not None), "")
        if name in _STRING_COLUMNS or isinstance(sample, str):
            return pa.string()
        return pa.int64() if isinstance(sample, int) and name == "claims" else pa.float64()

    schema = pa.schema([(c, typ(c)) for c in columns])
    return pa.Table.from_pylist(rows, schema=schema)


EXPORT_FORMATS = ("csv", "parquet", "json")


def export(
    out: Path,
    fmt: str,
    *,
    claims: Sequence[Claim],
    run_dirs: Sequence[Path] = (),
    tolerance: float = DEFAULT_TOLERANCE,
) -> list[Path]:
    """Write the reconciliation (one row per claim) and the roll-ups.

    json: one file ``{"reconciliation": [...], "rollups": [...]}``; csv and parquet: ``out`` holds
    the reconciliation and ``<stem>.rollups.<ext>`` beside it the roll-ups.
    """
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format {fmt!r}; expected html, {', '.join(EXPORT_FORMATS)}")
    data = build(claims, run_dirs, tolerance=tolerance)
    recon = reconciliation_rows(data.results)
    rolled = rollup_rows(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        out.write_bytes(
            orjson.dumps(
                {"generated_at": data.generated_at, "reconciliation": recon, "rollups": rolled},
                option=orjson.OPT_INDENT_2,
            )
        )
        return [out]
    second = out.with_name(f"{out.stem}.rollups{out.suffix or '.' + fmt}")
    writer: Callable[[pa.Table, Path], None] = (
        (lambda t, p: pa_csv.write_csv(t, p))
        if fmt == "csv"
        else (lambda t, p: pq.write_table(t, p))
    )
    recon_cols = list(recon[0]) if recon else ["claim_id", "status"]
    roll_cols = list(rolled[0]) if rolled else ["group", "key"]
    writer(_table(recon, recon_cols), out)
    writer(_table(rolled, roll_cols), second)
    return [out, second]


# ---------------------------------------------------------------------------------------------
# The demo's claim.


def demo_claim(
    *,
    deployment: str,
    model: str,
    accelerator: str,
    count: int,
    claimed_tokens_per_s: float,
    concurrency: int | None = None,
    context_tokens: int | None = None,
    precision: str = "bf16",
    slo: str | None = None,
    claim_id: str | None = None,
    site: str = "inferaudit twin (simulation)",
) -> Claim:
    """The claim ``inferaudit demo`` tests: "``deployment`` serves ``model`` at N tokens/s".

    Give the twin's deployment id (the RunSpec's ``deployment``, or put the returned claim's id
    in the RunSpec's ``claim``), the model name the twin serves (a catalog id or alias, so the
    roofline applies), the simulated accelerator and count, and the claimed output tokens/s.
    The claim is labelled as a simulation and sourced as the vendor's own (self-disclosure).
    """
    cid = claim_id or f"demo-{deployment}".lower().replace("_", "-")[:80]
    return build_claim(
        claim_id=cid,
        claim_type="performance_claim",
        statement=(
            f"Deployment {deployment} (simulated: inferaudit twin) serves {model} on {count} x "
            f"{accelerator} at {claimed_tokens_per_s:g} output tokens/s."
        ),
        status="operational_claimed",
        certainty="unknown",
        source_url="inferaudit://demo",
        source_class="vendor",
        quote="claim made for the inferaudit demo against the simulated twin",
        entities=[("inferaudit demo (simulation)", "operator")],
        site=site,
        deployment=deployment,
        accelerator=accelerator,
        count=count,
        metric="tokens_per_second",
        value=claimed_tokens_per_s,
        unit="tokens/s",
        basis="announced",
        precision=precision,
        model=model,
        concurrency=concurrency,
        context_tokens=context_tokens,
        slo=slo,
    )
