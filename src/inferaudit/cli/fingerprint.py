"""`inferaudit fingerprint`: record a model-identity reference from a trusted deployment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from inferaudit.cli.app import app, console, err_console
from inferaudit.errors import ConfigError
from inferaudit.measure.protocol import Api

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
    input_tokens: Annotated[
        str, typer.Option(help="Prompt tokens, as the runs will use: N, LO-HI, LO-HI:normal")
    ] = "256",
    output_tokens: Annotated[
        str, typer.Option(help="Output tokens, as the runs will use (records the highest)")
    ] = "128",
    dataset: Annotated[
        Path | None, typer.Option(help="The runs' JSONL dataset: prompts are rows of it")
    ] = None,
    enforce_length: Annotated[
        bool, typer.Option(help="Send ignore_eos/min_tokens, as the runs will")
    ] = True,
    repeats: Annotated[
        int, typer.Option(help="Rounds per prompt (>= 2), to calibrate the threshold")
    ] = 3,
    timeout: Annotated[float, typer.Option(help="Per-request timeout, seconds")] = 120.0,
) -> None:
    """Record greedy outputs on prompts drawn like a run's with the same workload flags, and
    calibrate the agreement threshold. Runs refuse a fingerprint of other workload flags."""
    from inferaudit.audit.specs import SpecInputs, build_specs
    from inferaudit.measure.fingerprint_record import record_fingerprint
    from inferaudit.measure.load.client import api_key_for

    if out.exists():
        raise ConfigError(f"--out {out}: file exists (will not overwrite a fingerprint)")
    (spec,) = build_specs(  # the run's own parsing of the workload flags
        SpecInputs(
            endpoint=endpoint, model=model, api=api, api_key_env=api_key_env, concurrency=1,
            requests=prompts, input_tokens=input_tokens, output_tokens=output_tokens,
            dataset=dataset, enforce_length=enforce_length, timeout=timeout,
        )
    )  # fmt: skip
    fp = record_fingerprint(
        spec.endpoint,
        workload=spec.workload,
        api_key=api_key_for(spec.endpoint),
        prompts=prompts,
        repeats=repeats,
        timeout_s=timeout,
        on_progress=lambda line: err_console.print(line, highlight=False),
    )
    fp.save(out)
    cal = fp.likelihood
    likelihood = (
        f"likelihood calibrated on {cal.tokens} tokens ({cal.partings} partings, at most "
        f"{cal.nats:.2f} nats each)"
        if cal is not None
        else "no likelihood calibration (the reference gave no logprobs)"
    )
    console.print(
        f"fingerprint of {fp.model}: {len(fp.entries)} prompts, reference self-agreement "
        f"{fp.self_agreement:.4f}, threshold {fp.threshold:.4f}, {likelihood} -> {out}",
        highlight=False,
    )
