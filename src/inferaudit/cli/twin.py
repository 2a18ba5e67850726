"""`inferaudit twin`: serve a SIMULATED OpenAI-compatible endpoint (honest or adversarial)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from inferaudit.cli.app import app
from inferaudit.twin.options import DEFAULT_TPOT_MS, DEFAULT_TTFT_MS, TwinOptions, build
from inferaudit.twin.server import run
from inferaudit.twin.text import DEFAULT_EOS_MEAN

_BEHAVE_HELP = (
    "Adversarial behaviour, repeatable: NAME or NAME:key=value,key=value. Names (parameters, "
    "defaults): response-cache (ttft_ms=1, tpot_ms=0, key=prompt|body); "
    "prefix-cache (block=16, floor=0.05); "
    "early-stop (fraction=0.6, lie=false: lie=true reports finish_reason length); usage-inflate "
    "(ratio=0.25); role-first-chunk; burst (every=16, 0 = all at the end); model-swap (after=20, "
    "above=0 in-flight); shed-under-load (threshold=8, mode=429|503|truncate); ignore-params "
    "(ignores ignore_eos, min_tokens, seed). See inferaudit/twin/behaviours.py."
)


@app.command("twin")
def twin(
    accelerator: Annotated[
        str | None,
        typer.Option(help="Engine mode: accelerator from the catalog, e.g. H100-SXM."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Catalog model (engine mode); in fixed mode only names the model."),
    ] = None,
    served_model_name: Annotated[
        str | None, typer.Option(help="Model name served (default: --model, or inferaudit-twin).")
    ] = None,
    ttft_ms: Annotated[
        float | None, typer.Option(help=f"Fixed mode: TTFT in ms (default {DEFAULT_TTFT_MS:g}).")
    ] = None,
    tpot_ms: Annotated[
        float | None, typer.Option(help=f"Fixed mode: ms per token (default {DEFAULT_TPOT_MS:g}).")
    ] = None,
    replicas: Annotated[int, typer.Option(help="Engine mode: independent replicas.")] = 1,
    tp: Annotated[int, typer.Option(help="Engine mode: accelerators per replica.")] = 1,
    dtype: Annotated[
        str | None, typer.Option(help="Engine mode: weight precision (default: the model's).")
    ] = None,
    max_batch: Annotated[int, typer.Option(help="Engine mode: most running sequences.")] = 256,
    efficiency: Annotated[
        float, typer.Option(help="Engine mode: share of the roofline reached, (0, 1].")
    ] = 0.6,
    mem_util: Annotated[
        float, typer.Option(help="Engine mode: share of memory for weights + KV cache.")
    ] = 0.9,
    behave: Annotated[list[str] | None, typer.Option(help=_BEHAVE_HELP)] = None,
    tokens_per_chunk: Annotated[
        int, typer.Option(help="Tokens per SSE chunk after the first (speculative decoding).")
    ] = 1,
    api_key: Annotated[
        str | None, typer.Option(help="Require 'Authorization: Bearer KEY' (else 401).")
    ] = None,
    truth: Annotated[
        Path | None, typer.Option(help="Append one JSON line per finished request (truth).")
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Seed of the twin's generator for unseeded requests.")
    ] = 0,
    eos_mean: Annotated[
        float, typer.Option(help="Mean natural output length (EOS) without ignore_eos.")
    ] = DEFAULT_EOS_MEAN,
    max_model_len: Annotated[int, typer.Option(help="Context length (prompt + output).")] = 8192,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 = pick a free one).")] = 0,
) -> None:
    """Serve a SIMULATED OpenAI-compatible endpoint: fixed latency, or a continuous-batching
    engine on a catalog accelerator (--accelerator/--model). Prompt tokens = whitespace-separated
    words; one output token = one word. Prints 'listening on http://HOST:PORT' when ready."""
    options = TwinOptions(
        accelerator=accelerator,
        model=model,
        served_model_name=served_model_name,
        ttft_ms=ttft_ms,
        tpot_ms=tpot_ms,
        replicas=replicas,
        tp=tp,
        dtype=dtype,
        max_batch=max_batch,
        efficiency=efficiency,
        mem_util=mem_util,
        behave=tuple(behave or ()),
        tokens_per_chunk=tokens_per_chunk,
        api_key=api_key,
        truth=truth,
        seed=seed,
        eos_mean=eos_mean,
        max_model_len=max_model_len,
        host=host,
        port=port,
    )
    built = build(options)
    config = built.config
    acting = ", ".join(config.behaviours.describe()) or "none (honest)"
    typer.echo("inferaudit twin: a SIMULATED endpoint (no real model, no real accelerator)")
    typer.echo(f"  model {config.model_name!r}; {built.mode}")
    typer.echo(f"  adversarial behaviours: {acting}")
    if truth is not None:
        typer.echo(f"  truth: {truth}")

    def ready(url: str, _description: dict[str, object]) -> None:
        typer.echo(f"listening on {url}")

    run(config, ready)
