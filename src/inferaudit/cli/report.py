"""`inferaudit report`: the self-contained HTML report, or CSV / Parquet / JSON exports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from inferaudit.cli.app import app, console
from inferaudit.cli.claims import DataDir, DbUrl, open_store
from inferaudit.errors import ConfigError
from inferaudit.intent.claims import Claim, read_claims, seed_claims
from inferaudit.intent.reconcile import DEFAULT_TOLERANCE
from inferaudit.present import report as R


@app.command("report")
def report(
    out: Annotated[Path, typer.Option("--out", help="Output file (report.html, out.csv, ...)")],
    run: Annotated[
        list[Path] | None, typer.Option("--run", help="Run or sweep directory (repeatable)")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="html|csv|parquet|json")] = "html",
    claims_file: Annotated[
        Path | None, typer.Option("--claims", help="Also reconcile the claims in this file")
    ] = None,
    example: Annotated[
        bool, typer.Option("--example", help="Also reconcile the bundled seed claims")
    ] = False,
    tolerance: Annotated[
        float, typer.Option(help="Verified when lower bound >= claimed x (1 - tolerance)")
    ] = DEFAULT_TOLERANCE,
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """Reconcile the registry's current claims with runs; write the report or an export."""
    claims: dict[str, Claim] = {s.claim.claim_id: s.claim for s in open_store(data_dir, db).query()}
    extra = (seed_claims() if example else []) + (read_claims(claims_file) if claims_file else [])
    for c in extra:
        claims.setdefault(c.claim_id, c)
    runs = list(run or [])
    if fmt == "html":
        R.write_report(out, claims=list(claims.values()), run_dirs=runs, tolerance=tolerance)
        console.print(f"wrote {out} ({len(claims)} claims, {len(runs)} run path(s))")
    elif fmt in R.EXPORT_FORMATS:
        paths = R.export(out, fmt, claims=list(claims.values()), run_dirs=runs, tolerance=tolerance)
        console.print("wrote " + ", ".join(map(str, paths)))
    else:
        raise ConfigError(f"--format {fmt!r}; expected html, {', '.join(R.EXPORT_FORMATS)}")
