"""`inferaudit export RUN_DIR`: a run's records as one table (Parquet or CSV), raw data.

The table states whether the run's evidence verified under the trust policy (default: this data
directory's own keys); its figures are never credited (``present.records_table``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from inferaudit import home
from inferaudit.cli.app import app, console
from inferaudit.errors import ConfigError
from inferaudit.present.records_table import TABLE_FORMATS, TableFormat, write_records_table
from inferaudit.seal.keys import load_trust
from inferaudit.seal.trust import default_policy


@app.command("export")
def export(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (holds records.jsonl)")],
    fmt: Annotated[str, typer.Option("--format", help="parquet|csv")] = "parquet",
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Output file (default: RUN_DIR/records.parquet|csv)"),
    ] = None,
    trust: Annotated[
        Path | None,
        typer.Option("--trust", help="Trust policy file (default: this data directory's keys)"),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Data directory (default: INFERAUDIT_HOME)")
    ] = None,
    db: Annotated[
        str | None, typer.Option("--db", help="Database URL (default: INFERAUDIT_DB)")
    ] = None,
) -> None:
    """Write one row per request of RUN_DIR (TTFT, TPOT, ITL, E2E, tokens, status, ...)."""
    if fmt not in TABLE_FORMATS:
        raise ConfigError(f"--format {fmt!r}; expected {', '.join(TABLE_FORMATS)}")
    table_fmt: TableFormat = "csv" if fmt == "csv" else "parquet"
    if trust is not None:
        policy = load_trust(trust)
    else:
        policy = default_policy(home.data_dir(data_dir, create=False), db)
    path = write_records_table(run_dir, table_fmt, out, policy=policy)
    console.print(f"wrote {escape(str(path))}", highlight=False)
