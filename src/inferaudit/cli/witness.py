"""`inferaudit witness ...`: a C2SP tlog-witness — make its key, serve it, show the forks it saw."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from inferaudit.cli.app import app, console
from inferaudit.errors import ConfigError
from inferaudit.home import data_dir, db_url, make_engine
from inferaudit.seal.keys import KeyFormatError, Verifier, parse_verifier
from inferaudit.seal.ledger.witness import (
    DB_FILE,
    KEY_FILE,
    PUB_FILE,
    Witness,
    create_witness_key,
    list_forks,
    load_witness_key,
)

witness_cli = typer.Typer(
    help="A C2SP tlog-witness: cosign checkpoints that extend what it cosigned before.",
    no_args_is_help=True,
)
app.add_typer(witness_cli, name="witness")

DataDir = Annotated[
    Path,
    typer.Option("--data-dir", help="The witness's data directory (key, state, fork proofs)"),
]


def parse_log_option(value: str) -> tuple[str, Verifier]:
    """``ORIGIN=VKEY``: a log origin and its log key (an Ed25519 verifier key named ORIGIN)."""
    origin, sep, vkey = value.partition("=")
    if not sep or not origin or not vkey:
        raise ConfigError(f"--log {value[:60]!r}: expected ORIGIN=VKEY")
    try:
        key = parse_verifier(vkey)
    except KeyFormatError as exc:
        raise ConfigError(f"--log {origin}: {exc}") from None
    if key.name != origin:
        raise ConfigError(f"--log {origin}: the key is named {key.name!r}, not {origin!r}")
    return origin, key


@witness_cli.command("init")
def init(
    data: DataDir,
    name: Annotated[str, typer.Option("--name", help="Witness name (no '+' or spaces)")],
) -> None:
    """Create the witness key (Ed25519, file mode 0600); print its cosignature verifier key."""
    home = data_dir(data)
    witness = create_witness_key(home, name)
    console.print(f"private key: {home / KEY_FILE} (0600)", highlight=False)
    console.print(f"verifier key: {home / PUB_FILE}", highlight=False)
    typer.echo(witness.verifier().text())


@witness_cli.command("serve")
def serve(
    data: DataDir,
    log: Annotated[
        list[str],
        typer.Option("--log", help="A log to witness, ORIGIN=VKEY (repeatable)"),
    ],
    host: Annotated[str, typer.Option("--host", help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on")] = 8081,
    db: Annotated[
        str | None,
        typer.Option("--db", help="State database URL (default: SQLite in the data directory)"),
    ] = None,
) -> None:
    """Serve POST /add-checkpoint (C2SP tlog-witness v1) for the logs given with --log."""
    import uvicorn

    from inferaudit.present.web.witness_app import witness_app

    home = data_dir(data, create=False)
    if not home.is_dir():
        raise ConfigError(f"data directory {home} does not exist (run `inferaudit witness init`)")
    signer = load_witness_key(home)
    logs: dict[str, tuple[Verifier, ...]] = {}
    for value in log:
        origin, key = parse_log_option(value)
        logs[origin] = (*logs.get(origin, ()), key)
    url = db_url(db, home) if db else f"sqlite:///{home / DB_FILE}"
    witness = Witness(make_engine(url), signer, logs, home)
    console.print(
        f"witness {signer.verifier().keyid} of {', '.join(sorted(logs))} "
        f"on http://{host}:{port}/add-checkpoint",
        highlight=False,
        markup=False,
    )
    uvicorn.run(witness_app(witness), host=host, port=port, log_level="warning")


@witness_cli.command("forks")
def forks(data: DataDir) -> None:
    """Print every saved fork proof (two signed checkpoints of one size); exit 1 if any."""
    found = list_forks(data_dir(data, create=False))
    if not found:
        console.print("no forks seen", highlight=False)
        return
    for fork in found:
        console.print(
            f"fork of {fork.origin} at size {fork.size} ({fork.path}): two checkpoints signed "
            "by its log key with different roots",
            highlight=False,
            markup=False,
        )
        typer.echo(fork.text())
    raise typer.Exit(1)
