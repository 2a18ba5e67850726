"""The dashboard: server-rendered HTML pages over the log service's stores.

Pages (``dashboard_router(get_source)``; every one readable without JavaScript, holding no
``<script>`` and loading nothing from anywhere: CSS inline, charts inline SVG):

  ``/``                          status counts, the reconciliation of the current claims
                                 (``?page=``), roll-ups per project, site, vendor and accelerator
                                 with the report's claimed-vs-verified charts, and the stored
                                 runs that did not verify, with their reasons (never credited)
  ``/rollups/{group}``           one group's whole roll-up table (``?page=``)
  ``/claims/{claim_id}``         a claim: its sources, supersession both ways, findings, roofline
                                 bound, status and the verified runs behind it
  ``/runs``                      every stored bundle, verified or not (``?page=``)
  ``/runs/{index}``              a run: protocol, summary figures with their definitions, every
                                 verdict with its numbers, latency CDF and throughput charts,
                                 downloads
  ``/runs/{index}/files/{name}`` one of the run's evidence files, as an attachment
  ``/ledger``                    the latest checkpoint, each signature line checked against the
                                 log and witness keys, the witness quorum, recent entries
                                 (``?page=``); ``?entry=N`` shows entry N's envelope

Only verified evidence is credited (``EvidenceStore.verified``). Stored text is escaped
everywhere (Jinja2 autoescape; no ``|safe`` on stored text); links are drawn only for http(s)
URLs. Bad input answers 400 and an unknown thing 404, each as a plain page with one line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from inferaudit import __version__
from inferaudit.errors import InferauditError
from inferaudit.intent.rollups import GROUPS, provenance_bucket
from inferaudit.measure.rundir import (
    ENVELOPE_FILE,
    HEALTH_FILE,
    META_FILE,
    PROOF_FILE,
    RECORDS_FILE,
    SEED_FILE,
    SERVER_METRICS_FILE,
    SPEC_FILE,
    STATEMENT_FILE,
    SUMMARY_FILE,
    TELEMETRY_FILE,
    VERDICTS_FILE,
)
from inferaudit.present.charts import NO_EVIDENCE, fmt_measure
from inferaudit.present.report import STATUS_COLOURS, VERDICT_COLOURS, headline
from inferaudit.present.web.dashboard_views import (
    ROLLUP_PREVIEW,
    DashboardSource,
    Page,
    PageError,
    Views,
    checkpoint_view,
    claim_chain,
    claim_result,
    entry_view,
    flatten,
    http_link,
    label_of,
    parse_index,
    recent_entries,
)
from inferaudit.seal.verified import VerifiedRun

__all__ = ["DashboardSource", "dashboard_router"]

CLAIM_ID = re.compile(r"[a-z0-9][a-z0-9._-]{2,80}")  # the claim model's claim_id pattern
JSON = "application/json"
# The run files a page offers for download, with their content types; nothing else is served.
KNOWN_FILES: dict[str, str] = {
    RECORDS_FILE: "application/x-ndjson",
    ENVELOPE_FILE: JSON,
    PROOF_FILE: "text/plain; charset=utf-8",
    STATEMENT_FILE: JSON,
    SPEC_FILE: JSON,
    SUMMARY_FILE: JSON,
    VERDICTS_FILE: JSON,
    META_FILE: JSON,
    SEED_FILE: JSON,
    HEALTH_FILE: "application/x-ndjson",
    SERVER_METRICS_FILE: "application/x-ndjson",
    TELEMETRY_FILE: "application/x-ndjson",
}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
# The summary figures a run page lists, in order, each beside its signed definition.
FIGURES = (
    "requests",
    "completed",
    "failed",
    "duration_s",
    "output_tokens",
    "output_throughput_tok_s",
    "output_throughput_ci",
    "request_throughput_rps",
    "goodput_tok_s",
    "goodput_rps",
    "arrival_rate",
    "ttft_ms",
    "ttft_from_sent_ms",
    "tpot_ms",
    "itl_ms",
    "e2e_ms",
    "client_lag_ms",
)


def _env() -> Environment:
    env = Environment(
        loader=PackageLoader("inferaudit.present", "web/templates"),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = fmt_measure
    env.filters["pct"] = lambda v: "—" if v is None else f"{v:.1%}"
    env.globals.update(
        version=__version__,
        status_colours=STATUS_COLOURS,
        verdict_colours=VERDICT_COLOURS,
        no_evidence=NO_EVIDENCE,
        headline=headline,
        bucket=provenance_bucket,
        http_link=http_link,
        groups=GROUPS,
    )
    return env


def _figures(run: VerifiedRun) -> list[tuple[str, list[tuple[str, str]], str]]:
    """(figure, its values as rows, its definition) for each of ``FIGURES``."""
    data = run.summary.to_json()
    out = []
    for name in FIGURES:
        value = data.get(name)
        rows = flatten(value) if isinstance(value, dict) else [("", fmt_value(value))]
        out.append((name, rows, run.summary.definitions.get(name, "")))
    return out


def fmt_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value).lower()
    if isinstance(value, int | float):
        return fmt_measure(float(value)) if isinstance(value, float) else f"{value:,}"
    return str(value)


def dashboard_router(get_source: Callable[[], DashboardSource]) -> APIRouter:
    """The dashboard's pages; ``get_source`` gives the stores (called per request)."""
    router = APIRouter()
    env = _env()
    views = Views()

    def html(template: str, code: int = 200, **context: Any) -> HTMLResponse:
        body = env.get_template(f"dashboard/{template}").render(**context)
        return HTMLResponse(body, status_code=code, headers=HEADERS)

    def respond(build: Callable[[DashboardSource], Response]) -> Response:
        try:
            return build(get_source())
        except PageError as exc:
            return html("error.html.j2", exc.status, status=exc.status, message=str(exc))
        except InferauditError as exc:
            message = f"the service's storage: {exc.diagnostics()}"
            return html("error.html.j2", 500, status=500, message=message)

    @router.get("/", response_class=HTMLResponse)
    def index(page: str | None = None) -> Response:
        def build(source: DashboardSource) -> Response:
            ov = views.overview(source)
            p = Page.of(len(ov.results), page)
            return html(
                "index.html.j2",
                ov=ov,
                page=p,
                results=ov.results[p.start : p.end],
                refused=ov.refused[:ROLLUP_PREVIEW],
                preview=ROLLUP_PREVIEW,
            )

        return respond(build)

    @router.get("/rollups/{group}", response_class=HTMLResponse)
    def rollup(group: str, page: str | None = None) -> Response:
        def build(source: DashboardSource) -> Response:
            if group not in GROUPS:
                raise PageError(404, f"no roll-up by {group[:40]!r}")
            ov = views.overview(source)
            rows = ov.rollups[group]
            p = Page.of(len(rows), page)
            return html("rollup.html.j2", group=group, rows=rows[p.start : p.end], page=p)

        return respond(build)

    @router.get("/claims/{claim_id}", response_class=HTMLResponse)
    def claim(claim_id: str) -> Response:
        def build(source: DashboardSource) -> Response:
            if not CLAIM_ID.fullmatch(claim_id):
                raise PageError(400, "a claim id is 3 to 81 characters of a-z, 0-9, '.', '_', '-'")
            ov = views.overview(source)
            stored = ov.stored.get(claim_id)
            if stored is None:
                raise PageError(404, f"no claim {claim_id} in the registry")
            result = claim_result(ov, claim_id)
            earlier, later = claim_chain(ov, claim_id)
            return html(
                "claim.html.j2",
                s=stored,
                c=stored.claim,
                r=result,
                earlier=earlier,
                later=later,
                behind=ov.behind(stored.claim, result),
                refused=len(ov.refused),
                policy=ov.policy,
            )

        return respond(build)

    @router.get("/runs", response_class=HTMLResponse)
    def runs(page: str | None = None) -> Response:
        def build(source: DashboardSource) -> Response:
            rows = source.evidence.rows()
            p = Page.of(len(rows), page)
            shown = [
                (r, label_of(r.run) if isinstance(r.run, VerifiedRun) else None)
                for r in rows[p.start : p.end]
            ]
            return html("runs.html.j2", rows=shown, page=p, policy=source.evidence.policy)

        return respond(build)

    @router.get("/runs/{index}", response_class=HTMLResponse)
    def run(index: str) -> Response:
        def build(source: DashboardSource) -> Response:
            i = parse_index(index, "a run's index")
            row = source.evidence.get(i)
            if row is None:
                raise PageError(404, f"no evidence stored for ledger entry {i}")
            files = [(n, KNOWN_FILES[n]) for n in row.files if n in KNOWN_FILES]
            sizes = {n: (source.evidence.run_dir(i) / n).stat().st_size for n, _ in files}
            context: dict[str, Any] = {"row": row, "files": files, "sizes": sizes}
            if isinstance(row.run, VerifiedRun):
                context.update(
                    v=row.run,
                    view=views.run(row.run),
                    figures=_figures(row.run),
                    spec=flatten(row.run.spec.model_dump(mode="json")),
                    verdicts=[(vd, flatten(vd.numbers)) for vd in row.run.verdicts],
                    slo=list(row.run.summary.slo.values()),
                )
            return html("run.html.j2", **context)

        return respond(build)

    @router.get("/runs/{index}/files/{name}")
    def run_file(index: str, name: str) -> Response:
        def build(source: DashboardSource) -> Response:
            i = parse_index(index, "a run's index")
            row = source.evidence.get(i)
            if row is None:
                raise PageError(404, f"no evidence stored for ledger entry {i}")
            if name not in KNOWN_FILES or name not in row.files:
                raise PageError(404, f"run {i} has no file {name[:60]!r} to download")
            return FileResponse(
                source.evidence.run_dir(i) / name,
                media_type=KNOWN_FILES[name],
                filename=name,
                headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"},
            )

        return respond(build)

    @router.get("/ledger", response_class=HTMLResponse)
    def ledger(entry: str | None = None, page: str | None = None) -> Response:
        def build(source: DashboardSource) -> Response:
            ov = views.overview(source)
            state = source.ledger.state()
            log_key = source.ledger.signer.verifier() if source.ledger.signer else None
            cp = None
            if state.checkpoint is not None:
                cp = checkpoint_view(
                    state.checkpoint, log_key, source.witness_keys, source.witness_quorum
                )
            shown = None
            if entry is not None:
                i = parse_index(entry, "entry")
                if i >= state.size:
                    raise PageError(404, f"no entry {i} in the log (its size is {state.size})")
                shown = entry_view(i, source.ledger.entry(i), ov, source.evidence)
            p = Page.of(state.size, page)
            recent = list(recent_entries(source.ledger, p, ov, source.evidence))
            return html("ledger.html.j2", state=state, cp=cp, shown=shown, recent=recent, page=p)

        return respond(build)

    return router
