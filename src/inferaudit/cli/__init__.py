"""Command line: thin wrappers that parse, call the library, and print.

Errors a user can cause are ``InferauditError``s: caught once here and printed as one line.
"""

from __future__ import annotations

import sys

from inferaudit.cli import (  # noqa: F401 - importing registers the commands
    catalog,
    claims,
    demo,
    fingerprint,
    keys,
    ledger,
    report,
    run,
    twin,
    verify,
)
from inferaudit.cli.app import app, err_console
from inferaudit.errors import InferauditError


def main() -> None:
    try:
        app()
    except InferauditError as exc:
        err_console.print(
            f"[bold red]error:[/] {exc.diagnostics()}", highlight=False, soft_wrap=True
        )
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        sys.exit(130)
