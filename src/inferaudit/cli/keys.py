"""`inferaudit keys` commands: generate Ed25519 keys, list them, write a trust policy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from inferaudit.cli.app import app, console
from inferaudit.errors import ConfigError
from inferaudit.home import data_dir
from inferaudit.seal.keys import (
    ALG_COSIGNATURE_V1,
    DEFAULT_SIGNER_NAME,
    KeyFormatError,
    TrustPolicy,
    Verifier,
    generate_key,
    key_paths,
    list_keys,
    load_verifier,
    parse_verifier,
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
        list[str] | None,
        typer.Option(
            "--signer",
            help="Signer key to trust: a key name in the data directory, a verifier key text "
            "or a .pub file (repeatable)",
        ),
    ] = None,
    log: Annotated[
        list[str] | None,
        typer.Option(
            "--log",
            help="Log key to trust: a key name in the data directory, a verifier key text or "
            "a .pub file, e.g. a log service's keys/inferaudit-ledger.pub (repeatable)",
        ),
    ] = None,
    witness: Annotated[
        list[str] | None,
        typer.Option(
            "--witness",
            help="A witness's cosignature verifier key (0x04): its text or a file holding it, "
            "e.g. the witness's witness.pub (repeatable)",
        ),
    ] = None,
    witness_quorum: Annotated[
        int | None,
        typer.Option(
            "--witness-quorum", help="How many of the witnesses must cosign (default: all)"
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write here (default: stdout)")
    ] = None,
    data: DataDir = None,
) -> None:
    """Write a trust policy for `inferaudit verify --trust` from keys in the data directory or
    given as key texts or files."""
    from inferaudit.seal.ledger.store import DEFAULT_LOG_NAME

    if witness_quorum is not None and not witness:
        raise ConfigError("--witness-quorum needs at least one --witness")
    home = data_dir(data)
    policy = TrustPolicy(
        signers=tuple(_key(home, n, "--signer") for n in (signer or [DEFAULT_SIGNER_NAME])),
        logs=tuple(_key(home, n, "--log") for n in (log or [DEFAULT_LOG_NAME])),
        witnesses=tuple(_witness_key(w) for w in witness or ()),
        witness_quorum=witness_quorum,
    )
    if out is None:
        typer.echo(policy.text(), nl=False)
    else:
        out.write_text(policy.text())
        console.print(f"trust policy written to {out}", highlight=False)


def _given_key(given: str, what: str) -> Verifier:
    """A verifier key given as its text, or as a file holding one (a ``.pub`` file)."""
    path = Path(given)
    text = given
    if "+" not in given or path.is_file():
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ConfigError(f"{what} {given}: no such file, and not a key text") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{what} {given}: {exc}") from None
    try:
        return parse_verifier(text)
    except KeyFormatError as exc:
        raise KeyFormatError(f"{what} {given}: {exc}") from None


def _key(home: Path, given: str, what: str) -> Verifier:
    """``--signer``/``--log``: a key name in the data directory (names hold no '+' or '/'), or
    a verifier key text or file; a cosignature key (0x04) is refused, as in a policy file."""
    if "+" not in given and "/" not in given and not given.endswith(".pub"):
        return load_verifier(home, given)
    key = _given_key(given, what)
    if key.alg == ALG_COSIGNATURE_V1:
        raise KeyFormatError(f"{what} {given}: {key.keyid} is a witness cosignature key (0x04)")
    return key


def _witness_key(given: str) -> Verifier:
    """``--witness``: a verifier key text, or a file holding one (a witness's ``witness.pub``)."""
    key = _given_key(given, "--witness")
    if key.alg != ALG_COSIGNATURE_V1:
        raise KeyFormatError(f"--witness {given}: {key.keyid} is not a cosignature key (0x04)")
    return key
