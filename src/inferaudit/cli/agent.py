"""`inferaudit agent`: serve the accelerator telemetry of this host (operator-reported)."""

from __future__ import annotations

from typing import Annotated

import typer

from inferaudit.cli.app import app
from inferaudit.errors import ConfigError
from inferaudit.measure.telemetry.sampler import Sampler, command, find_tools, no_tool_reason
from inferaudit.measure.telemetry.serve import AgentOptions, run


@app.command("agent")
def agent(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 = pick a free one).")] = 9477,
    interval: Annotated[float, typer.Option(help="Seconds between sampling rounds.")] = 1.0,
    timeout: Annotated[float, typer.Option(help="Seconds a vendor tool may take.")] = 5.0,
    dcgm_url: Annotated[
        str | None,
        typer.Option(help="Also read a dcgm-exporter, e.g. http://127.0.0.1:9400/metrics."),
    ] = None,
) -> None:
    """Sample the vendor tools found on PATH (nvidia-smi, npu-smi) every --interval seconds and
    serve the latest samples: GET /samples (JSON), GET /healthz. What it serves is
    OPERATOR-REPORTED, never a measurement. Prints 'listening on http://HOST:PORT' when ready."""
    if not interval > 0:
        raise ConfigError(f"--interval: {interval:g} is not a positive number of seconds")
    if not timeout > 0:
        raise ConfigError(f"--timeout: {timeout:g} is not a positive number of seconds")
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port: {port} is not a port number (0-65535)")
    if dcgm_url is not None and not dcgm_url.startswith(("http://", "https://")):
        raise ConfigError(f"--dcgm-url: {dcgm_url!r} is not an http(s) URL")
    tools = find_tools()
    typer.echo("inferaudit agent: serving OPERATOR-REPORTED accelerator telemetry")
    for found in tools:
        typer.echo(f"  {found.tool.value}: {found.path} (runs: {' '.join(command(found.tool))})")
    if dcgm_url is not None:
        typer.echo(f"  dcgm-exporter: {dcgm_url}")
    if not tools and dcgm_url is None:
        typer.echo(f"  {no_tool_reason()}: serving empty samples")
    sampler = Sampler(tools, timeout_s=timeout, dcgm_url=dcgm_url)

    def ready(url: str) -> None:
        typer.echo(f"listening on {url}")

    run(AgentOptions(host=host, port=port, interval_s=interval), sampler, ready)
