"""`inferaudit verify RUN_DIR`: offline check of signatures, inclusion and recomputed metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from inferaudit.cli.app import app, console
from inferaudit.errors import ConfigError
from inferaudit.home import data_dir
from inferaudit.seal.keys import (
    DEFAULT_SIGNER_NAME,
    TrustPolicy,
    key_paths,
    load_trust,
    load_verifier,
)
from inferaudit.seal.verify import verify_run


def _local_trust(home: Path) -> TrustPolicy:
    from inferaudit.seal.ledger.store import DEFAULT_LOG_NAME

    def have(name: str) -> bool:
        priv, pub = key_paths(home, name)
        return priv.exists() or pub.exists()

    return TrustPolicy(
        signers=tuple(load_verifier(home, n) for n in [DEFAULT_SIGNER_NAME] if have(n)),
        logs=tuple(load_verifier(home, n) for n in [DEFAULT_LOG_NAME] if have(n)),
    )


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
    tokenizer: Annotated[
        Path | None, typer.Option(help="The run's --tokenizer file, to recheck token counts")
    ] = None,
    fingerprint: Annotated[
        Path | None, typer.Option(help="The run's --fingerprint file, to recheck identity")
    ] = None,
) -> None:
    """Verify a run directory offline: one line per check; exit 0 only if all pass."""
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a run directory")
    if trust is None:
        policy = _local_trust(data_dir(data, create=False))
        console.print("[dim]no --trust given: trusting this data directory's keys[/]")
    else:
        policy = load_trust(trust)
    for path, what in ((tokenizer, "--tokenizer"), (fingerprint, "--fingerprint")):
        if path is not None and not path.is_file():
            raise ConfigError(f"{what} {path}: no such file")
    report = verify_run(run_dir, policy, tokenizer=tokenizer, fingerprint=fingerprint)
    for check in report.checks:
        mark = "[green]ok  [/]" if check.ok else "[bold red]FAIL[/]"
        console.print(f"{mark} {check.name}: {check.detail}", highlight=False, soft_wrap=True)
    if not report.ok:
        console.print(f"[bold red]{run_dir}: verification failed[/]", highlight=False)
        raise typer.Exit(1)
    console.print(f"[green]{run_dir}: verified[/]", highlight=False)
