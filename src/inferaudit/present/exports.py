"""Exports of the reconciliation: CSV, Parquet (pyarrow) or JSON, with the evidence they rest on.

Three tables: the reconciliation (one row per claim), the roll-ups, and the runs (one row per run
directory given: verified with its signer and ledger entry, or "evidence not verified" with the
reason). Every form states the trust policy the runs were opened under: a ``trust_policy`` key in
JSON, a ``trust_policy`` column in the runs table, and Parquet schema metadata. CSV cells that a
spreadsheet would run as a formula are prefixed with a single quote (``claims.csv_cell``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from inferaudit.errors import ConfigError
from inferaudit.intent.claims import Claim, csv_cell
from inferaudit.intent.reconcile import (
    DEFAULT_TOLERANCE,
    NOT_VERIFIED,
    Reconciliation,
    RunSet,
    run_label,
)
from inferaudit.intent.rollups import GROUPS, provenance_bucket
from inferaudit.present.report import ReportData, build

EXPORT_FORMATS = ("csv", "parquet", "json")
Cell = str | int | float | bool | None
Row = dict[str, Cell]


def reconciliation_rows(results: Sequence[Reconciliation]) -> list[Row]:
    rows: list[Row] = []
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


def rollup_rows(data: ReportData) -> list[Row]:
    return [
        {
            "group": r.group,
            "key": r.key,
            "metric": r.metric,
            "unit": r.unit,
            "stage": r.stage,
            "claims": len(r.claims),
            "claimed": r.claimed,
            "verified": r.verified if r.measured else None,
            "self_disclosed_only": r.self_disclosed_only,
        }
        for g in GROUPS
        for r in data.rollups[g]
    ]


def run_rows(runs: RunSet) -> list[Row]:
    """One row per run directory: verified (signer, ledger entry) or not (the reason)."""
    rows: list[Row] = [
        {
            "run": run_label(v.run_dir, v.spec.label),
            "path": str(v.run_dir),
            "evidence": "verified",
            "reason": None,
            "signer": v.signer,
            "ledger_index": v.ledger_index,
            "log_origin": v.log_origin,
            "predicate_type": v.predicate_type,
            "trust_policy": runs.policy,
        }
        for v in runs.verified
    ]
    rows += [
        {
            "run": run_label(u.run_dir),
            "path": str(u.run_dir),
            "evidence": NOT_VERIFIED,
            "reason": u.reason,
            "signer": None,
            "ledger_index": None,
            "log_origin": None,
            "predicate_type": None,
            "trust_policy": runs.policy,
        }
        for u in runs.refused
    ]
    return rows


_INT_COLUMNS = ("claims", "ledger_index")
_FLOAT_COLUMNS = (
    "claimed_tokens_per_s",
    "verified_tokens_per_s",
    "ratio",
    "roofline_bound_tokens_per_s",
    "claimed",
    "verified",
    "self_disclosed_only",
)


def _table(rows: list[Row], columns: Sequence[str], *, for_csv: bool) -> pa.Table:
    def typ(name: str) -> pa.DataType:
        if name in _INT_COLUMNS:
            return pa.int64()
        return pa.float64() if name in _FLOAT_COLUMNS else pa.string()

    if for_csv:
        rows = [{k: csv_cell(v) if isinstance(v, str) else v for k, v in r.items()} for r in rows]
    schema = pa.schema([(c, typ(c)) for c in columns])
    return pa.Table.from_pylist(rows, schema=schema)


def export(
    out: Path,
    fmt: str,
    *,
    claims: Sequence[Claim],
    runs: RunSet,
    tolerance: float = DEFAULT_TOLERANCE,
) -> list[Path]:
    """Write the reconciliation, the roll-ups and the runs.

    json: one file ``{"trust_policy", "generated_at", "reconciliation", "rollups", "runs"}``;
    csv and parquet: ``out`` holds the reconciliation, ``<stem>.rollups.<ext>`` the roll-ups and
    ``<stem>.runs.<ext>`` the runs beside it.
    """
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format {fmt!r}; expected html, {', '.join(EXPORT_FORMATS)}")
    data = build(claims, runs, tolerance=tolerance)
    tables = {
        "reconciliation": reconciliation_rows(data.results),
        "rollups": rollup_rows(data),
        "runs": run_rows(runs),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        doc = {"trust_policy": runs.policy, "generated_at": data.generated_at, **tables}
        out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        return [out]
    suffix = out.suffix or "." + fmt
    paths = [
        out,
        out.with_name(f"{out.stem}.rollups{suffix}"),
        out.with_name(f"{out.stem}.runs{suffix}"),
    ]
    metadata = {b"trust_policy": runs.policy.encode(), b"generated_at": data.generated_at.encode()}
    writer: Callable[[pa.Table, Path], None] = (
        (lambda t, p: pa_csv.write_csv(t, p))
        if fmt == "csv"
        else (lambda t, p: pq.write_table(t.replace_schema_metadata(metadata), p))
    )
    empty_columns = {
        "reconciliation": ["claim_id", "status"],
        "rollups": ["group", "key"],
        "runs": ["run", "evidence", "reason", "trust_policy"],
    }
    for path, (name, rows) in zip(paths, tables.items(), strict=True):
        columns = list(rows[0]) if rows else empty_columns[name]
        writer(_table(rows, columns, for_csv=fmt == "csv"), path)
    return paths
