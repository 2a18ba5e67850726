"""Command line: thin wrappers that parse, call the library, and print.

Errors a user can cause are ``InferauditError``s: caught once here and printed as one line
(exit status 2). An ``OSError`` naming a path (a file in the way, a missing directory, no
permission) is printed the same way; a closed stdout ends quietly (141, as a shell's SIGPIPE).
"""

from __future__ import annotations

import contextlib
import os
import sys

from rich.markup import escape

from inferaudit.cli import (  # noqa: F401 - importing registers the commands
    agent,
    catalog,
    claims,
    demo,
    export,
    fingerprint,
    keys,
    ledger,
    report,
    run,
    serve,
    twin,
    verify,
    witness,
)
from inferaudit.cli.app import app, err_console
from inferaudit.errors import InferauditError


def main() -> None:
    try:
        app()
    except InferauditError as exc:
        err_console.print(  # the message is text, not markup: "[a-z]" must print as it is
            f"[bold red]error:[/] {escape(exc.diagnostics())}", highlight=False, soft_wrap=True
        )
        sys.exit(2)
    except BrokenPipeError:  # stdout closed early (``inferaudit ... | head``): not an error
        with contextlib.suppress(OSError, ValueError):  # no flush error at exit, either
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except OSError as exc:
        if exc.filename is None:
            raise  # not about a path the user gave: a bug, with its traceback
        where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
        err_console.print(
            f"[bold red]error:[/] {escape(f'{where}: {exc.strerror or exc}')}",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        sys.exit(130)
