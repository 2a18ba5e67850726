"""From what a user asks for to protocols: ``build_specs(SpecInputs) -> list[RunSpec]``.

``SpecInputs`` holds the values of ``inferaudit run`` (and ``fingerprint record``, which parses
the workload the same way) as typed fields, with the text forms the user writes where a value
has a syntax of its own (``Length.parse``: ``128``, ``64-256:normal``; ``SLO.parse``:
``ttft_p99=2000ms``; a sweep: ``rate=1,2,4`` or ``concurrency=1,8``). ``build_specs`` returns
one RunSpec per measurement point (a sweep has several, identical but for the load) and raises
one ``ConfigError`` line for anything it cannot use; the CLI only maps options onto the fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from inferaudit.errors import ConfigError, validation_message
from inferaudit.measure.datasets import dataset_sha256, detect_format
from inferaudit.measure.protocol import (
    SLO,
    Api,
    Arrivals,
    DatasetFormat,
    Endpoint,
    Length,
    Load,
    RunSpec,
    Sampling,
    Sessions,
    SharedPrefix,
    Trace,
    TraceFormat,
    Workload,
)
from inferaudit.measure.rundir import file_sha256
from inferaudit.measure.traces import detect_trace_format, load_trace, mean_rate

__all__ = ["LoadPoint", "SpecInputs", "build_specs", "parse_sweep"]


@dataclass(frozen=True)
class SpecInputs:
    """Everything a protocol is built from (the defaults are ``inferaudit run``'s)."""

    endpoint: str  # base URL up to /v1
    model: str
    api: Api = Api.completions
    api_key_env: str | None = None  # the variable's name; the key is never stored
    concurrency: int | None = None  # closed loop; exactly one of concurrency, rate, sweep
    rate: float | None = None  # open loop, requests/s (inf: every request at t=0)
    arrivals: Arrivals = Arrivals.poisson
    sweep: str | None = None  # "rate=1,2,4" or "concurrency=1,8,32"
    requests: int | None = None  # measured requests per point; or duration
    duration: float | None = None  # seconds per point
    warmup: int = 0
    input_tokens: str = "256"  # Length.parse syntax
    output_tokens: str = "128"
    dataset: Path | None = None  # bound by its digest (measure.datasets formats)
    dataset_format: DatasetFormat | None = None  # None: detected from the file
    multi_turn: bool = False  # each conversation is a session of turns
    think_time: float = 0.0  # seconds between a turn's answer and the next turn
    max_turns: int | None = None
    prefix_tokens: int | None = None  # shared system prompts: tokens each ...
    prefix_groups: int = 1  # ... and how many distinct ones
    trace: Path | None = None  # a trace replayed on its own schedule (measure.traces)
    trace_format: TraceFormat | None = None  # None: detected from the file
    trace_speedup: float = 1.0
    tokenizer: Path | None = None  # with it, synthetic prompts have exact token counts
    burstiness: float = 1.0  # gamma arrivals' shape (1: Poisson)
    max_concurrency: int | None = None  # open loop: a cap on requests in flight
    ramp_up: float | None = None  # open loop: seconds of linear ramp-up to the rate
    ramp_start_rate: float = 0.0
    enforce_length: bool = True
    keep_full_text: bool = False  # records keep all output text (else Workload.max_text_bytes)
    slo: str | None = None  # SLO.parse syntax
    seed: int = 0
    workers: int = 1
    max_lag_ms: float | None = None  # a fixed client-lag p99 bound instead of the error budget
    timeout: float = 600.0  # per request, seconds
    first_byte_timeout: float = 60.0  # actual send -> first body byte, seconds
    stall_timeout: float = 30.0  # the longest gap between body bytes, seconds
    grace: float = 30.0  # after a --duration window, before in-flight requests are cancelled
    deployment: str | None = None
    claim: str | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    seed_per_request: bool = False
    allow_prompt_cache: bool = False


@dataclass(frozen=True)
class LoadPoint:
    """One measurement point's load mode: an arrival rate or a concurrency."""

    rate: float | None = None
    concurrency: int | None = None


def _positive(text: str, kind: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--sweep {kind}={text}: expected a comma-separated list") from None
    if not values or any(not v > 0 for v in values):
        raise ConfigError(f"--sweep {kind}={text}: every value must be positive")
    return values


def parse_sweep(text: str) -> list[LoadPoint]:
    """``rate=1,2,4`` or ``concurrency=1,8,32``: one point per value."""
    kind, _, values = text.partition("=")
    if kind == "rate":
        return [LoadPoint(rate=v) for v in _positive(values, kind)]
    if kind == "concurrency":
        numbers = _positive(values, kind)
        if any(v != int(v) for v in numbers):
            raise ConfigError(f"--sweep {text}: a concurrency is a whole number")
        return [LoadPoint(concurrency=int(v)) for v in numbers]
    raise ConfigError(f"--sweep {text}: expected rate=R1,R2,... or concurrency=N1,N2,...")


def _points(inputs: SpecInputs) -> list[LoadPoint]:
    if inputs.rate is not None and not inputs.rate > 0:
        raise ConfigError(f"--rate {inputs.rate:g}: the arrival rate must be positive (requests/s)")
    if inputs.concurrency is not None and inputs.concurrency <= 0:
        raise ConfigError(f"--concurrency {inputs.concurrency}: must be at least 1")
    if inputs.sweep:
        return parse_sweep(inputs.sweep)
    if inputs.trace is not None:
        if inputs.rate is not None or inputs.concurrency is not None:
            raise ConfigError("--trace replays the trace's own schedule: drop --rate/--concurrency")
        return [LoadPoint(rate=None)]
    if (inputs.rate is None) == (inputs.concurrency is None):
        raise ConfigError(
            "give exactly one of --concurrency N (closed loop) or --rate R (open loop)"
        )
    return [LoadPoint(rate=inputs.rate, concurrency=inputs.concurrency)]


def _trace(inputs: SpecInputs) -> Trace | None:
    if inputs.trace is None:
        return None
    if not inputs.trace.is_file():
        raise ConfigError(f"--trace {inputs.trace}: no such file")
    if not inputs.trace_speedup > 0:
        raise ConfigError(f"--trace-speedup {inputs.trace_speedup:g}: must be positive")
    return Trace(
        path=str(inputs.trace),
        sha256=file_sha256(inputs.trace),
        format=inputs.trace_format or detect_trace_format(inputs.trace),
        speedup=inputs.trace_speedup,
    )


def _workload(inputs: SpecInputs) -> Workload:
    dataset_sha = None
    dataset_format: DatasetFormat | None = None
    if inputs.dataset is not None:
        if not inputs.dataset.exists():
            raise ConfigError(f"--dataset {inputs.dataset}: no such file")
        dataset_format = inputs.dataset_format or detect_format(inputs.dataset)
        if dataset_format == "prompts":
            dataset_format = None  # v0.1's format: a protocol that names none
        dataset_sha = dataset_sha256(inputs.dataset)
    if inputs.multi_turn and inputs.dataset is None:
        raise ConfigError("--multi-turn sends a dataset's conversations: give --dataset FILE")
    if inputs.prefix_tokens is not None and (inputs.dataset or inputs.trace):
        raise ConfigError("--prefix-tokens shapes synthetic prompts: drop --dataset/--trace")
    if inputs.dataset is not None and inputs.trace is not None:
        raise ConfigError("give --dataset or --trace, not both")
    workload = Workload(
        input_tokens=Length.parse(inputs.input_tokens),
        output_tokens=Length.parse(inputs.output_tokens),
        dataset=None if inputs.dataset is None else str(inputs.dataset),
        dataset_sha256=dataset_sha,
        dataset_format=dataset_format,
        sessions=(
            Sessions(think_time_s=inputs.think_time, max_turns=inputs.max_turns)
            if inputs.multi_turn
            else None
        ),
        prefix=(
            None
            if inputs.prefix_tokens is None
            else SharedPrefix(tokens=inputs.prefix_tokens, groups=inputs.prefix_groups)
        ),
        trace=_trace(inputs),
        exact_input_tokens=inputs.tokenizer is not None and not inputs.dataset and not inputs.trace,
        enforce_output_length=inputs.enforce_length,
        # a session's next turn carries each answer whole, so its records keep all of the text
        max_text_bytes=None if inputs.keep_full_text or inputs.multi_turn else 65_536,
    )
    return workload


def _trace_load(trace: Trace, requests: int | None, warmup: int) -> tuple[float, int]:
    """A trace's load: its mean arrival rate after the speedup (stated in the protocol) and
    the measured requests (default: every entry after the warm-up)."""
    entries = load_trace(Path(trace.path), trace.format, trace.sha256).entries
    rate = mean_rate(entries, trace.speedup)
    if not 0 < rate < float("inf"):
        raise ConfigError(f"--trace {trace.path}: needs at least two entries at distinct times")
    if requests is None:
        requests = len(entries) - warmup
    if requests < 1 or warmup + requests > len(entries):
        raise ConfigError(
            f"--trace {trace.path}: {len(entries)} entries; --warmup {warmup} and --requests "
            f"{requests} need {warmup + requests}"
        )
    return rate, requests


def build_specs(inputs: SpecInputs) -> list[RunSpec]:
    """One RunSpec per measurement point (see the module docstring); ConfigError if unusable."""
    points = _points(inputs)
    if inputs.requests is None and inputs.duration is None and inputs.trace is None:
        raise ConfigError("give --requests N or --duration SECONDS")
    try:
        workload = _workload(inputs)
        requests, trace_rate = inputs.requests, None
        if workload.trace is not None and inputs.duration is None:
            trace_rate, requests = _trace_load(workload.trace, inputs.requests, inputs.warmup)
        elif workload.trace is not None:
            trace_rate, _ = _trace_load(workload.trace, None, inputs.warmup)
        endpoint = Endpoint(
            base_url=inputs.endpoint,
            model=inputs.model,
            api=inputs.api,
            api_key_env=inputs.api_key_env,
        )
        slo = SLO.parse(inputs.slo) if inputs.slo else SLO()
        sampling = Sampling(
            temperature=inputs.temperature,
            top_p=inputs.top_p,
            seed_per_request=inputs.seed_per_request,
        )
        tokenizer_sha = None if inputs.tokenizer is None else file_sha256(inputs.tokenizer)
        arrivals = inputs.arrivals
        if workload.trace is not None:
            arrivals = Arrivals.trace
        elif inputs.burstiness != 1.0 and arrivals == Arrivals.poisson:
            arrivals = Arrivals.gamma  # vLLM's --burstiness: gamma arrivals of that shape
        return [
            RunSpec(
                endpoint=endpoint,
                workload=workload,
                load=Load(
                    concurrency=point.concurrency,
                    rate=point.rate if trace_rate is None else trace_rate,
                    arrivals=arrivals,
                    burstiness=inputs.burstiness,
                    max_concurrency=inputs.max_concurrency,
                    ramp_up_s=inputs.ramp_up,
                    ramp_start_rate=inputs.ramp_start_rate,
                    requests=requests,
                    duration_s=inputs.duration,
                    warmup=inputs.warmup,
                    timeout_s=inputs.timeout,
                    first_byte_timeout_s=inputs.first_byte_timeout,
                    stall_timeout_s=inputs.stall_timeout,
                    grace_s=inputs.grace,
                ),
                slo=slo,
                seed=inputs.seed,
                workers=inputs.workers,
                max_client_lag_p99_ms=inputs.max_lag_ms,
                deployment=inputs.deployment,
                claim=inputs.claim,
                sampling=sampling,
                allow_prompt_cache=inputs.allow_prompt_cache,
                tokenizer_sha256=tokenizer_sha,
            )
            for point in points
        ]
    except ValidationError as exc:
        raise ConfigError(validation_message(exc)) from None
