"""`inferaudit twin`: serve a SIMULATED OpenAI-compatible endpoint (honest or adversarial)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from inferaudit.cli.app import app
from inferaudit.errors import ConfigError
from inferaudit.twin.behaviours import parse_behaviours
from inferaudit.twin.engine import EngineConfig, FixedEngine
from inferaudit.twin.server import TwinConfig, run
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
DEFAULT_TTFT_MS = 50.0
DEFAULT_TPOT_MS = 10.0


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
    engine: FixedEngine | EngineConfig
    if accelerator is not None:
        if model is None:
            raise ConfigError("--accelerator needs --model (a catalog model)")
        if ttft_ms is not None or tpot_ms is not None:
            raise ConfigError("--ttft-ms/--tpot-ms are for fixed mode; drop --accelerator")
        engine = EngineConfig.from_catalog(
            accelerator,
            model,
            dtype,
            replicas=replicas,
            tp=tp,
            max_batch=max_batch,
            efficiency=efficiency,
            mem_util=mem_util,
        )
        mode = (
            f"engine: {replicas} replica(s) x {tp} {engine.accelerator.id}, {engine.model.id} "
            f"{engine.dtype}, max batch {max_batch}, efficiency {efficiency:g}, "
            f"KV cache {engine.kv_capacity_bytes() / 1e9:.3g} GB per replica"
        )
        name = served_model_name or engine.model.id
    else:
        engine = FixedEngine(
            DEFAULT_TTFT_MS if ttft_ms is None else ttft_ms,
            DEFAULT_TPOT_MS if tpot_ms is None else tpot_ms,
        )
        mode = f"fixed: TTFT {engine.ttft_ms:g} ms, {engine.tpot_ms:g} ms per token"
        name = served_model_name or model or "inferaudit-twin"
    if tokens_per_chunk < 1:
        raise ConfigError("--tokens-per-chunk must be >= 1")
    if eos_mean <= 0 or max_model_len < 2:
        raise ConfigError("--eos-mean must be > 0 and --max-model-len >= 2")
    behaviours = parse_behaviours(behave or [])
    config = TwinConfig(
        engine=engine,
        model_name=name,
        behaviours=behaviours,
        tokens_per_chunk=tokens_per_chunk,
        api_key=api_key,
        truth_path=truth,
        seed=seed,
        eos_mean=eos_mean,
        max_model_len=max_model_len,
        host=host,
        port=port,
    )
    acting = ", ".join(behaviours.describe()) or "none (honest)"
    typer.echo("inferaudit twin: a SIMULATED endpoint (no real model, no real accelerator)")
    typer.echo(f"  model {name!r}; {mode}")
    typer.echo(f"  adversarial behaviours: {acting}")
    if truth is not None:
        typer.echo(f"  truth: {truth}")

    def ready(url: str, _description: dict[str, object]) -> None:
        typer.echo(f"listening on {url}")

    run(config, ready)
