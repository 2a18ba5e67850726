"""`inferaudit keys` commands: generate Ed25519 keys, list them, write a trust policy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from inferaudit.cli.app import app, console
from inferaudit.home import data_dir
from inferaudit.seal.keys import (
    DEFAULT_SIGNER_NAME,
    TrustPolicy,
    generate_key,
    key_paths,
    list_keys,
    load_verifier,
)

keys_app = typer.Typer(
    help="Signing keys (Ed25519, C2SP signed-note text forms).", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Data directory (default: $INFERAUDIT_HOME or the user data dir)"
    ),
]


@keys_app.command("generate")
def generate(
    name: Annotated[str, typer.Option("--name", help="Key name (no '+' or spaces)")],
    data: DataDir = None,
) -> None:
    """Create an Ed25519 key pair; the private key file is created with mode 0600."""
    home = data_dir(data)
    signer = generate_key(home, name)
    priv, pub = key_paths(home, name)
    console.print(f"private key: {priv} (0600)", highlight=False)
    console.print(f"verifier key: {pub}", highlight=False)
    typer.echo(signer.verifier().text())


@keys_app.command("list")
def list_(data: DataDir = None) -> None:
    """Print the verifier key of every key in the data directory."""
    for verifier in list_keys(data_dir(data)):
        typer.echo(verifier.text())


@keys_app.command("show")
def show(name: Annotated[str, typer.Argument(help="Key name")], data: DataDir = None) -> None:
    """Print one key's verifier key (name+hexid+base64)."""
    typer.echo(load_verifier(data_dir(data), name).text())


@keys_app.command("trust")
def trust(
    signer: Annotated[
        list[str] | None, typer.Option("--signer", help="Signer key name to trust (repeatable)")
    ] = None,
    log: Annotated[
        list[str] | None, typer.Option("--log", help="Log key name to trust (repeatable)")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write here (default: stdout)")
    ] = None,
    data: DataDir = None,
) -> None:
    """Write a trust policy for `inferaudit verify --trust` from keys in the data directory."""
    from inferaudit.seal.ledger.store import DEFAULT_LOG_NAME

    home = data_dir(data)
    policy = TrustPolicy(
        signers=tuple(load_verifier(home, n) for n in (signer or [DEFAULT_SIGNER_NAME])),
        logs=tuple(load_verifier(home, n) for n in (log or [DEFAULT_LOG_NAME])),
    )
    if out is None:
        typer.echo(policy.text(), nl=False)
    else:
        out.write_text(policy.text())
        console.print(f"trust policy written to {out}", highlight=False)
