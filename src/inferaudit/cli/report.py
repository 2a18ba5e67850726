"""`inferaudit report`: the self-contained HTML report, or CSV / Parquet / JSON exports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from inferaudit import home
from inferaudit.cli.app import app, console
from inferaudit.cli.claims import DataDir, DbUrl, open_store
from inferaudit.errors import ConfigError
from inferaudit.intent.claims import Claim, read_claims, seed_claims
from inferaudit.intent.reconcile import DEFAULT_TOLERANCE, open_runs
from inferaudit.present import exports
from inferaudit.present.report import write_report
from inferaudit.seal.keys import load_trust
from inferaudit.seal.trust import default_policy


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
    trust: Annotated[
        Path | None,
        typer.Option(
            "--trust",
            help="Trust policy file for the runs (default: this data directory's keys)",
        ),
    ] = None,
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """Reconcile the registry's current claims with VERIFIED runs; write the report or an
    export. Runs that do not verify under the trust policy are listed, never credited."""
    if fmt != "html" and fmt not in exports.EXPORT_FORMATS:
        raise ConfigError(f"--format {fmt!r}; expected html, {', '.join(exports.EXPORT_FORMATS)}")
    claims: dict[str, Claim] = {s.claim.claim_id: s.claim for s in open_store(data_dir, db).query()}
    extra = (seed_claims() if example else []) + (read_claims(claims_file) if claims_file else [])
    for c in extra:
        claims.setdefault(c.claim_id, c)
    base = home.data_dir(data_dir)
    policy = load_trust(trust) if trust is not None else default_policy(base, db)
    runs = open_runs(list(run or []), policy)
    console.print(f"trust policy: {escape(runs.policy)}", highlight=False)
    for line in runs.refusals():
        console.print(escape(line), highlight=False)
    if fmt == "html":
        write_report(out, claims=list(claims.values()), runs=runs, tolerance=tolerance)
        console.print(
            f"wrote {escape(str(out))} ({len(claims)} claims, {len(runs.verified)} verified "
            f"run(s), {len(runs.refused)} not verified)",
            highlight=False,
        )
    else:
        paths = exports.export(
            out, fmt, claims=list(claims.values()), runs=runs, tolerance=tolerance
        )
        console.print("wrote " + escape(", ".join(map(str, paths))), highlight=False)
