"""`inferaudit catalog` commands: the accelerators and models the roofline knows."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from inferaudit.cli.app import app, console
from inferaudit.errors import ConfigError
from inferaudit.intent import catalog

catalog_app = typer.Typer(
    help="Accelerators (published peak figures) and models (config.json shapes).",
    no_args_is_help=True,
)
app.add_typer(catalog_app, name="catalog")


def _fmt(value: float | None, what: str = "", unsupported: bool = False) -> str:
    if value is None:
        return "unsupported" if unsupported else "unknown"
    return f"{value:g}{what}"


@catalog_app.command("list")
def list_(
    kind: Annotated[str, typer.Argument(help="accelerators or models")] = "accelerators",
    vendor: Annotated[str | None, typer.Option(help="only this vendor (accelerators)")] = None,
) -> None:
    """List accelerators or models."""
    if kind in ("accelerators", "accelerator", "acc"):
        table = Table(
            "id", "vendor", "name", "year", "BF16 TF", "FP8 TF", "INT8 TOPS", "GB", "GB/s"
        )
        for a in catalog.accelerators():
            if vendor and vendor.lower() not in a.vendor.lower():
                continue
            table.add_row(
                a.id,
                a.vendor,
                a.name,
                _fmt(a.year),
                _fmt(a.bf16_tflops, unsupported="bf16_tflops" in a.unsupported),
                _fmt(a.fp8_tflops, unsupported="fp8_tflops" in a.unsupported),
                _fmt(a.int8_tops, unsupported="int8_tops" in a.unsupported),
                _fmt(a.mem_gb),
                _fmt(a.mem_bw_gbs),
            )
    elif kind in ("models", "model"):
        table = Table("id", "name", "params B", "active B", "layers", "hidden", "KV heads", "dtype")
        for m in catalog.models():
            table.add_row(
                m.id,
                m.name,
                f"{m.params_b:g}",
                f"{m.active_params_b:g}",
                str(m.layers),
                str(m.hidden),
                str(m.kv_heads) if m.mla_kv_dim is None else f"MLA {m.mla_kv_dim}",
                m.default_dtype,
            )
    else:
        raise ConfigError(f"catalog list {kind!r}: expected accelerators or models")
    console.print(table)


@catalog_app.command("show")
def show(ident: Annotated[str, typer.Argument(help="accelerator or model id / alias")]) -> None:
    """Show one accelerator or model with its sources."""
    try:
        item: catalog.Accelerator | catalog.ModelSpec = catalog.accelerator(ident)
    except ConfigError:
        try:
            item = catalog.model(ident)
        except ConfigError:
            raise ConfigError(
                f"{ident!r} is neither an accelerator nor a model of the catalog; see "
                "`inferaudit catalog list accelerators` and `inferaudit catalog list models`"
            ) from None
    table = Table("field", "value", show_header=False)
    for name, value in vars(item).items():
        if isinstance(value, frozenset | tuple):
            value = ", ".join(sorted(value)) or "-"
        shown = "unsupported" if name in getattr(item, "unsupported", ()) else value
        table.add_row(name, "unknown" if shown is None else str(shown))
    console.print(table)
