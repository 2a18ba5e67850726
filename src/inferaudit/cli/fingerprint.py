"""`inferaudit fingerprint`: record a model-identity reference from a trusted deployment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from inferaudit.cli.app import app, console, err_console
from inferaudit.errors import ConfigError
from inferaudit.measure.protocol import Api, Endpoint

fingerprint_app = typer.Typer(
    help="Model-identity fingerprints: greedy outputs of a trusted reference on hidden prompts.",
    no_args_is_help=True,
)
app.add_typer(fingerprint_app, name="fingerprint")


@fingerprint_app.command("record")
def record(
    endpoint: Annotated[str, typer.Option(help="Trusted reference endpoint, base URL up to /v1")],
    model: Annotated[str, typer.Option(help="Model name as the reference serves it")],
    out: Annotated[Path, typer.Option(help="Fingerprint file to write (JSON)")],
    api: Annotated[Api, typer.Option(help="OpenAI API flavour (runs must use the same)")] = (
        Api.completions
    ),
    api_key_env: Annotated[
        str | None, typer.Option(help="Environment variable holding the API key (never stored)")
    ] = None,
    prompts: Annotated[int, typer.Option(help="Hidden prompts to record")] = 16,
    prompt_words: Annotated[int, typer.Option(help="Words per hidden prompt")] = 64,
    max_tokens: Annotated[int, typer.Option(help="Greedy output tokens per prompt")] = 32,
    repeats: Annotated[
        int, typer.Option(help="Rounds per prompt (>= 2), to calibrate the threshold")
    ] = 3,
    timeout: Annotated[float, typer.Option(help="Per-request timeout, seconds")] = 120.0,
) -> None:
    """Record greedy (temperature 0, fixed seed) outputs and calibrate the agreement threshold."""
    from inferaudit.measure.fingerprint import record_fingerprint
    from inferaudit.measure.load.client import api_key_for

    if out.exists():
        raise ConfigError(f"--out {out}: file exists (will not overwrite a fingerprint)")
    try:
        ep = Endpoint(base_url=endpoint, model=model, api=api, api_key_env=api_key_env)
    except ValueError as exc:
        raise ConfigError(f"--endpoint {endpoint!r}: not an http(s) URL") from exc
    fp = record_fingerprint(
        ep,
        api_key=api_key_for(ep),
        prompts=prompts,
        prompt_words=prompt_words,
        max_tokens=max_tokens,
        repeats=repeats,
        timeout_s=timeout,
        on_progress=lambda line: err_console.print(line, highlight=False),
    )
    fp.save(out)
    console.print(
        f"fingerprint of {fp.model}: {len(fp.entries)} prompts, reference self-agreement "
        f"{fp.self_agreement:.4f}, threshold {fp.threshold:.4f}, "
        f"{'with' if all(e.top_logprobs for e in fp.entries) else 'no'} logprobs -> {out}",
        highlight=False,
    )
