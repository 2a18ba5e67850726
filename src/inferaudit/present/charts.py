"""SVG charts drawn here, inline in the page. Every chart is ``<svg class="chart"
data-series="N">`` with one element of class "series" per series, so a browser test can count
what was drawn. A value of None in a bar chart is "no evidence": it is labelled so, never drawn
as a zero bar.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup

PALETTE = ("#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#0891b2", "#db2777")
NO_EVIDENCE = "no evidence"


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


def fmt_measure(x: float | None) -> str:
    """A measured figure rounded to what it means: whole units from 100 up (thousands
    separated), one decimal from 10, three significant digits below; "—" when absent."""
    if x is None:
        return "—"
    a = abs(x)
    if a >= 100:
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


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
    invalid: Sequence[bool] = ()  # per point: drawn hollow with an "invalid" mark


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
        if s.markers or len(s.xs) == 1 or any(s.invalid):
            for j, (x, y) in enumerate(zip(s.xs, s.ys, strict=True)):
                if j < len(s.invalid) and s.invalid[j]:
                    out.append(
                        f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="5" fill="#fff" '
                        f'stroke="#dc2626" stroke-width="2" class="invalid"><title>invalid run'
                        "</title></circle>"
                    )
                else:
                    out.append(
                        f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{colour}"/>'
                    )
        out.append("</g>")
        legend.append((s.name, colour))
    out.append(_legend(legend, left + pw + 14, top + 10))
    out.append("</svg>")
    return Markup("".join(out))


def hbar_chart(
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
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
        sum(vals[i] or 0.0 for _, vals in series)
        if stacked
        else max(vals[i] or 0.0 for _, vals in series)
        for i in range(len(labels))
    ]
    vmax = 100.0 if percent else max(totals, default=0.0) or 1.0
    esc_unit = _esc(unit)  # a claim's unit is stored text
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
            x = label_w + (sum(s[1][i] or 0.0 for s in series[:k]) * scale if stacked else 0.0)
            if v is None:  # nothing verified: say so, never draw a zero bar
                out.append(
                    f'<text x="{x + 4:.1f}" y="{y + bar_h - 2}" class="tick no-evidence" '
                    f'fill="#64748b">{NO_EVIDENCE}<title>{_esc(name)}: {NO_EVIDENCE}</title>'
                    "</text>"
                )
                continue
            w = max(v * scale, 0.0)
            if v > 0 or not stacked:  # a zero in a grouped chart is drawn as a 2 px tick
                out.append(
                    f'<rect x="{x:.1f}" y="{y}" width="{max(w, 2.0):.1f}" height="{bar_h - 1}" '
                    f'rx="1"><title>{_esc(name)}: {fmt_num(v)}{"%" if percent else " " + esc_unit}'
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
