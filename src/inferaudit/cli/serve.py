"""`inferaudit serve` (the public log service) and `inferaudit log token|auditor ...`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.text import Text

from inferaudit import home
from inferaudit.cli.app import app, console, err_console
from inferaudit.errors import ConfigError
from inferaudit.seal.keys import KeyFormatError

if TYPE_CHECKING:
    from inferaudit.present.web.auditors import AuditorKeys
    from inferaudit.present.web.tokens import TokenStore

log_app = typer.Typer(
    help="The log service's tokens and registered auditor keys.", no_args_is_help=True
)
token_app = typer.Typer(help="Bearer tokens (stored hashed; shown once).", no_args_is_help=True)
auditor_app = typer.Typer(
    help="Auditor keys whose signed envelopes the service accepts.", no_args_is_help=True
)
log_app.add_typer(token_app, name="token")
log_app.add_typer(auditor_app, name="auditor")
app.add_typer(log_app, name="log")

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory: the log key, SQLite database, bundles"),
]
Db = Annotated[
    str | None,
    typer.Option("--db", help="Database URL, e.g. postgresql+psycopg://... (default: SQLite)"),
]
LOG_CONFIG: dict[str, object] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        # uvicorn's access line: client, request line (method, path, query), status. No headers.
        "access": {
            "()": "uvicorn.logging.AccessFormatter",
            "fmt": '%(asctime)s %(client_addr)s "%(request_line)s" %(status_code)s',
            "use_colors": False,
        },
        "default": {
            "()": "uvicorn.logging.DefaultFormatter",
            "fmt": "%(asctime)s %(levelprefix)s %(message)s",
            "use_colors": False,
        },
    },
    "handlers": {
        "access": {
            "class": "logging.StreamHandler",
            "formatter": "access",
            "stream": "ext://sys.stderr",
        },
        "default": {
            "class": "logging.StreamHandler",
            "formatter": "default",
            "stream": "ext://sys.stderr",
        },
    },
    "loggers": {
        "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
        "uvicorn.error": {"level": "INFO"},
        "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
    },
}
MAX_HEADER_BYTES = 16 * 1024  # request line and headers together (h11's incomplete event)


def parse_witness(text: str) -> tuple[str, str]:
    """``URL=VKEY`` -> (URL, VKEY): split at the first ``=`` after which a verifier key parses."""
    from inferaudit.seal.keys import parse_verifier

    for i, ch in enumerate(text):
        if ch != "=":
            continue
        url, key = text[:i], text[i + 1 :]
        try:
            parse_verifier(key)
        except KeyFormatError:
            continue
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"--witness {text[:60]!r}: the URL must be http(s)://...")
        return url, key
    raise ConfigError(f"--witness {text[:60]!r}: expected URL=VERIFIER-KEY")


@app.command()
def serve(
    data_dir: DataDir = None,
    db: Db = None,
    origin: Annotated[
        str | None, typer.Option(help="Log origin (= log key name) for a new log")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8080,
    witness: Annotated[
        list[str] | None,
        typer.Option(help="A witness to ask for cosignatures: URL=VERIFIER-KEY (repeatable)"),
    ] = None,
    witness_quorum: Annotated[
        int | None,
        typer.Option(help="Cosignatures each answer needs (default: every witness)"),
    ] = None,
    witness_timeout: Annotated[float, typer.Option(help="Seconds per witness request")] = 10.0,
    max_envelope_bytes: Annotated[
        int, typer.Option(help="Largest envelope (and JSON) request body")
    ] = 256 * 1024,
    max_bundle_bytes: Annotated[int, typer.Option(help="Largest run bundle upload")] = 256
    * 1024
    * 1024,
    rate: Annotated[float, typer.Option(help="Requests per second per token")] = 20.0,
    burst: Annotated[int, typer.Option(help="Requests a token may send at once")] = 200,
) -> None:
    """Serve one transparency log over HTTP (C2SP tlog-tiles reads, authenticated writes)."""
    import uvicorn

    from inferaudit.present.web.app import create_app
    from inferaudit.present.web.service import Limits, ServiceConfig, open_service
    from inferaudit.seal.keys import parse_verifier
    from inferaudit.seal.ledger.witnessing import WitnessEndpoint

    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: not a TCP port")
    witnesses = []
    for text in witness or []:
        url, key = parse_witness(text)
        witnesses.append(WitnessEndpoint(url=url.rstrip("/"), key=parse_verifier(key)))
    config = ServiceConfig(
        data_dir=data_dir,
        db_url=db,
        origin=origin,
        host=host,
        port=port,
        witnesses=tuple(witnesses),
        witness_quorum=witness_quorum,
        witness_timeout_s=witness_timeout,
        limits=Limits(
            envelope_bytes=max_envelope_bytes,
            bundle_bytes=max_bundle_bytes,
            rate_per_s=rate,
            burst=burst,
        ),
    )
    service = open_service(config)  # refuses (exit 2) before anything listens
    try:
        err_console.print(
            Text(
                f"log {service.ledger.origin} (log key {service.log_key.text()}), "
                f"{len(service.witnesses)} witness(es), quorum {service.witness_quorum}: "
                f"http://{host}:{port}/"
            ),
            highlight=False,
        )
        uvicorn.run(
            create_app(service),
            host=host,
            port=port,
            log_config=LOG_CONFIG,
            access_log=True,
            server_header=False,
            proxy_headers=False,
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            timeout_keep_alive=5,
        )
    finally:
        service.close()


def _tokens(data_dir: Path | None, db: str | None) -> TokenStore:
    from inferaudit.present.web.tokens import TokenStore

    base = home.data_dir(data_dir)
    return TokenStore(home.make_engine(home.db_url(db, base)))


def _auditors(data_dir: Path | None, db: str | None) -> AuditorKeys:
    from inferaudit.present.web.auditors import AuditorKeys

    base = home.data_dir(data_dir)
    return AuditorKeys(home.make_engine(home.db_url(db, base)))


@token_app.command("add")
def token_add(
    name: Annotated[str, typer.Argument(help="Who the token is for")],
    scope: Annotated[
        list[str], typer.Option("--scope", help="submit-evidence, submit-claims or admin")
    ],
    data_dir: DataDir = None,
    db: Db = None,
) -> None:
    """Make a token and print it ONCE (only its SHA-256 is stored)."""
    token = _tokens(data_dir, db).add(name, scope)
    err_console.print(f"token {escape(name)} made; it is shown once, store it now:")
    typer.echo(token)


@token_app.command("list")
def token_list(data_dir: DataDir = None, db: Db = None) -> None:
    """List tokens, one a line: name, scopes, created, revoked (never the tokens)."""
    for t in _tokens(data_dir, db).list():
        typer.echo(f"{t.name}\t{','.join(t.scopes)}\t{t.created}\t{t.revoked or '-'}")


@token_app.command("revoke")
def token_revoke(
    name: Annotated[str, typer.Argument()], data_dir: DataDir = None, db: Db = None
) -> None:
    """Revoke a token (it allows nothing from now on)."""
    info = _tokens(data_dir, db).revoke(name)
    console.print(Text(f"token {info.name} revoked at {info.revoked}"), highlight=False)


@auditor_app.command("add")
def auditor_add(
    key: Annotated[str, typer.Argument(help="A verifier key text, or a file holding one")],
    data_dir: DataDir = None,
    db: Db = None,
) -> None:
    """Register an auditor key: envelopes it signs are accepted."""
    from inferaudit.present.web.auditors import parse_auditor_key

    path = Path(key)
    text = path.read_text() if len(key) < 4096 and path.is_file() else key
    verifier = parse_auditor_key(text.strip())
    added = _auditors(data_dir, db).add(verifier)
    state = "registered" if added else "already registered"
    console.print(Text(f"auditor {verifier.keyid} {state}"), highlight=False)


@auditor_app.command("list")
def auditor_list(data_dir: DataDir = None, db: Db = None) -> None:
    """List the registered auditor keys."""
    for verifier in _auditors(data_dir, db).list():
        typer.echo(verifier.text())
