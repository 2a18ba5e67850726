"""The typer application object; each cli module registers its commands on it."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(
    name="inferaudit",
    help="Verify the inference capacity you were promised: measured, checked, signed, logged.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# soft_wrap: a line is never broken at the console width (scripts parse these lines, and an
# error message must stay one line even when stdout is not a terminal).
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)
