"""`inferaudit ledger` commands: append, checkpoint, prove, consistency, export-tiles, show."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated

import typer

from inferaudit.cli.app import app, console
from inferaudit.errors import ConfigError, LedgerError
from inferaudit.home import data_dir, db_url
from inferaudit.seal.evidence import envelope_leaf, parse_envelope
from inferaudit.seal.ledger import merkle
from inferaudit.seal.ledger.store import Ledger, open_ledger
from inferaudit.seal.ledger.tiles import export_tiles

ledger_app = typer.Typer(
    help="The transparency log of signed evidence (RFC 9162, C2SP checkpoints).",
    no_args_is_help=True,
)
app.add_typer(ledger_app, name="ledger")

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Data directory (default: $INFERAUDIT_HOME or the user data dir)"
    ),
]
Db = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Database URL, e.g. postgresql+psycopg://... (default: $INFERAUDIT_DB or SQLite)",
    ),
]
Origin = Annotated[
    str | None, typer.Option("--origin", help="Log origin (= log key name) for a new ledger")
]


def _open(data: Path | None, db: str | None, origin: str | None = None) -> Ledger:
    home = data_dir(data)
    return open_ledger(db_url(db, home), home, origin=origin)


def _leaf_from_file(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    return envelope_leaf(parse_envelope(raw))


@ledger_app.command("append")
def append(
    files: Annotated[list[Path], typer.Argument(help="DSSE envelope files (JSON)")],
    checkpoint: Annotated[bool, typer.Option(help="Sign a new checkpoint after appending")] = True,
    data: DataDir = None,
    db: Db = None,
    origin: Origin = None,
) -> None:
    """Append DSSE envelopes (as RFC 8785 bytes) in one batch; print their indices."""
    leaves = [_leaf_from_file(p) for p in files]
    with _open(data, db, origin) as ledger:
        indices = ledger.append(leaves)
        for path, index in zip(files, indices, strict=True):
            typer.echo(f"{index}\t{path}")
        if checkpoint:
            typer.echo(ledger.sign_checkpoint(), nl=False)


@ledger_app.command("checkpoint")
def checkpoint(data: DataDir = None, db: Db = None, origin: Origin = None) -> None:
    """Sign (and print) a checkpoint of the current tree with the log key."""
    with _open(data, db, origin) as ledger:
        typer.echo(ledger.sign_checkpoint(), nl=False)


@ledger_app.command("prove")
def prove(
    index: Annotated[int | None, typer.Argument(help="Entry index")] = None,
    leaf: Annotated[
        Path | None, typer.Option("--leaf", help="Envelope file to find and prove")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the .tlog-proof here")
    ] = None,
    data: DataDir = None,
    db: Db = None,
) -> None:
    """Print a C2SP tlog-proof for one entry against the latest checkpoint."""
    if (index is None) == (leaf is None):
        raise ConfigError("give an INDEX or --leaf FILE (not both)")
    with _open(data, db) as ledger:
        if leaf is not None:
            index = ledger.find(_leaf_from_file(leaf))
        assert index is not None
        text = ledger.tlog_proof(index).text()
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        console.print(f"entry {index}: proof written to {out}", highlight=False)


@ledger_app.command("consistency")
def consistency(
    old: Annotated[int, typer.Argument(help="Older tree size")],
    new: Annotated[int, typer.Argument(help="Newer tree size")],
    data: DataDir = None,
    db: Db = None,
) -> None:
    """Print a consistency proof between two tree sizes (roots, then one hash a line)."""
    with _open(data, db) as ledger:
        proof = ledger.consistency_proof(old, new)
        root1, root2 = ledger.root(old), ledger.root(new)
    if old > 0:
        try:
            merkle.verify_consistency(old, new, proof, root1, root2)
        except merkle.ProofError as exc:
            raise LedgerError(f"stored tree is inconsistent: {exc}") from None
    b64 = base64.b64encode
    typer.echo(f"old {old} {b64(root1).decode()}")
    typer.echo(f"new {new} {b64(root2).decode()}")
    for h in proof:
        typer.echo(b64(h).decode())


@ledger_app.command("export-tiles")
def export_tiles_cmd(
    directory: Annotated[Path, typer.Argument(help="Output directory for static serving")],
    data: DataDir = None,
    db: Db = None,
) -> None:
    """Write checkpoint, tile/L/N and tile/entries/N (C2SP tlog-tiles) for the latest checkpoint."""
    with _open(data, db) as ledger:
        result = export_tiles(ledger, directory)
    console.print(
        f"{directory}: tree size {result.size}, {result.hash_tiles} hash tiles, "
        f"{result.entry_tiles} entry bundles",
        highlight=False,
    )


@ledger_app.command("show")
def show(data: DataDir = None, db: Db = None) -> None:
    """Origin, size, root, the latest checkpoint and the log's verifier key."""
    with _open(data, db) as ledger:
        state = ledger.state()
        root = ledger.root(state.size)
        log_key = (
            ledger.signer.verifier().text() if ledger.signer else "(not in this data directory)"
        )
    typer.echo(f"origin      {state.origin}")
    typer.echo(f"size        {state.size}")
    typer.echo(f"root        {base64.b64encode(root).decode()}")
    typer.echo(f"log key     {log_key}")
    typer.echo(
        f"checkpoint  size {state.checkpoint_size}" if state.checkpoint else "checkpoint  none"
    )
    if state.checkpoint:
        typer.echo(state.checkpoint, nl=False)
