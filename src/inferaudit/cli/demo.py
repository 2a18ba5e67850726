"""`inferaudit demo`: measure, check, sign, log, verify, reconcile and report — against the twin."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from inferaudit.cli.app import app, console
from inferaudit.cli.run import LiveProgress, MaxLagMs, print_outcomes


@app.command()
def demo(
    out: Annotated[
        Path | None, typer.Option(help="Run directory (default: runs/demo-<time>)")
    ] = None,
    duration: Annotated[float, typer.Option(help="Seconds of measured load")] = 25.0,
    data_dir: Annotated[Path | None, typer.Option(help="Keys and ledger (INFERAUDIT_HOME)")] = None,
    db: Annotated[str | None, typer.Option(help="Ledger database URL (INFERAUDIT_DB)")] = None,
    workers: Annotated[int, typer.Option(help="Client worker processes (default: CPU cores)")] = 0,
    max_lag_ms: MaxLagMs = None,
) -> None:
    """Run a short verification against a simulated H100 serving Llama 3.1 8B, end to end."""
    from inferaudit.audit.demo import ACCELERATOR, MODEL, run_demo
    from inferaudit.errors import ConfigError

    if workers < 0:
        raise ConfigError(f"--workers {workers}: must be at least 1 (0: one per CPU core)")
    if max_lag_ms is not None and not max_lag_ms > 0:
        raise ConfigError(f"--max-lag-ms {max_lag_ms:g}: must be positive")

    run_dir = out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    console.print(
        f"[bold]inferaudit demo[/]: simulated endpoint (twin) modelling {MODEL} on one "
        f"{ACCELERATOR} — a SIMULATION, not real hardware"
    )
    with LiveProgress() as live:
        result = run_demo(
            run_dir,
            duration_s=duration,
            home=data_dir,
            db_url=db,
            observer=live,
            workers=workers or None,
            max_lag_ms=max_lag_ms,
        )
    print_outcomes([result.run])
    console.print("[bold]offline verification[/] (signature, digests, log inclusion, metrics):")
    for check in result.verification.steps:
        mark = "[green]ok[/]" if check.ok else "[red]FAIL[/]"
        console.print(f"  {mark}  {check.name}: {check.detail}", highlight=False)
    for r in result.reconciliation:
        verified = "-" if r.verified is None else f"{r.verified:,.0f}"
        claimed = "-" if r.claimed is None else f"{r.claimed:,.0f}"
        console.print(
            f"[bold]claim[/] {r.claim_id}: claimed {claimed} tok/s, verified (lower bound) "
            f"{verified} tok/s -> [bold]{r.status.value}[/]",
            highlight=False,
        )
    console.print(f"report: [bold]{result.report}[/]")
    console.print(f"verify it yourself: inferaudit verify {run_dir} (keys in the data directory)")
    problems = result.problems()
    if problems:
        console.print(
            f"[bold red]demo did not pass: {escape('; '.join(problems))}[/]",
            highlight=False,
            soft_wrap=True,
        )
    raise typer.Exit(1 if problems else 0)
