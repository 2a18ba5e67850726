"""`inferaudit verify RUN_DIR [--log URL]`: check of signatures, witnesses, inclusion and
recomputed metrics; offline, unless ``--log`` names the log to prove consistency with."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from inferaudit.cli.app import app, console
from inferaudit.errors import ConfigError
from inferaudit.home import data_dir, db_url
from inferaudit.seal.keys import load_trust
from inferaudit.seal.ledger.tile_client import TileFormatError, TileLog
from inferaudit.seal.trust import CHECKPOINTS_DIR, CheckpointMemory, default_policy
from inferaudit.seal.verify import verify_run


@app.command("verify")
def verify(
    run_dir: Annotated[Path, typer.Argument(help="Run directory to verify")],
    trust: Annotated[
        Path | None,
        typer.Option(
            "--trust",
            help="Trust policy: lines 'signer KEY' / 'log KEY' (see `inferaudit keys trust`). "
            "Default: this data directory's own runner and ledger keys.",
        ),
    ] = None,
    data: Annotated[Path | None, typer.Option("--data-dir", help="Data directory")] = None,
    db: Annotated[
        str | None,
        typer.Option("--db", help="The local ledger's database URL, for consistency proofs"),
    ] = None,
    tokenizer: Annotated[
        Path | None, typer.Option(help="The run's --tokenizer file, to recheck token counts")
    ] = None,
    fingerprint: Annotated[
        Path | None, typer.Option(help="The run's --fingerprint file, to recheck identity")
    ] = None,
    log: Annotated[
        str | None,
        typer.Option(
            "--log",
            help="The log's tlog-tiles URL (or an `ledger export-tiles` directory): its current "
            "checkpoint must be trusted and witnessed, consistent with the run's, and serve "
            "the run's entry",
        ),
    ] = None,
) -> None:
    """Verify a run directory (offline unless --log): one line per step; exit 0 only if all
    pass, 1 if a step fails, 2 if the run or the log cannot be read at all."""
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a run directory")
    home = data_dir(data, create=False)
    if trust is None:
        policy = default_policy(home, db)
    else:
        memory = CheckpointMemory(home / CHECKPOINTS_DIR, db_url(db, home))
        policy = replace(load_trust(trust), memory=memory)
    for path, what in ((tokenizer, "--tokenizer"), (fingerprint, "--fingerprint")):
        if path is not None and not path.is_file():
            raise ConfigError(f"{what} {path}: no such file")
    with contextlib.ExitStack() as stack:
        if log is not None:
            remote = stack.enter_context(TileLog(log))
            with contextlib.suppress(TileFormatError):  # a malformed one fails a step (exit 1)
                remote.checkpoint()  # no log there: one error line (exit 2), before any step
            assert policy.memory is not None, "a CLI policy always has a checkpoint memory"
            policy = replace(policy, memory=replace(policy.memory, remote=remote))
        console.print(f"policy: {escape(policy.describe())}", highlight=False, soft_wrap=True)
        report = verify_run(run_dir, policy, tokenizer=tokenizer, fingerprint=fingerprint)
    for step in report.steps:
        mark = "[green]ok  [/]" if step.ok else "[bold red]FAIL[/]"
        console.print(f"{mark} {step.name}: {escape(step.detail)}", highlight=False, soft_wrap=True)
    if report.fork is not None:
        console.print(
            f"fork proof: two signed checkpoints of {report.fork.origin} at size "
            f"{report.fork.size} (the one {report.fork.seen_from}, then the one "
            f"{report.fork.known_from}):",
            highlight=False,
            soft_wrap=True,
        )
        typer.echo(report.fork.text(), nl=False)
    if not report.ok:
        console.print(f"[bold red]{escape(str(run_dir))}: verification failed[/]", highlight=False)
        raise typer.Exit(1)
    console.print(f"[green]{escape(str(run_dir))}: verified[/]", highlight=False)
