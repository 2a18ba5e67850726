"""`inferaudit run`: load-test an OpenAI-compatible endpoint under a declared protocol."""

from __future__ import annotations

import collections
import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, get_args

import numpy as np
import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from inferaudit.audit.specs import SpecInputs, build_specs
from inferaudit.cli.app import app, console
from inferaudit.errors import ConfigError
from inferaudit.measure.metrics import proven_tokens
from inferaudit.measure.protocol import Api, Arrivals, DatasetFormat, TraceFormat

if TYPE_CHECKING:
    from inferaudit.audit.run import RunOutcome
    from inferaudit.audit.search import SearchOutcome
    from inferaudit.measure.records import Record

# Shared with `inferaudit demo`.
MaxLagMs = Annotated[
    float | None,
    typer.Option(
        help="Fixed client lag p99 bound (ms), overriding the error budget (default: the send "
        "lag may move TTFT p50 and p99 by at most 2% of the figure, at least 1 ms)"
    ),
]


_PROGRESS_TTFT_WINDOW = 4096  # the live TTFT p50 is over this many latest requests


class LiveProgress:
    """Rich progress: requests done/failed, request and token rates, and the TTFT p50 of the
    latest requests (memory and refresh cost bounded, however long the run)."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task: TaskID | None = None
        self._reset()

    def _reset(self) -> None:
        self.done = self.failed = self.tokens = 0
        # the live TTFT p50 is over the latest requests: a list of the whole run's would grow
        # with it, and its median cost each refresh with it
        self.ttfts: collections.deque[float] = collections.deque(maxlen=_PROGRESS_TTFT_WINDOW)
        self.t0 = time.monotonic()
        self.last_refresh = 0.0

    def __enter__(self) -> LiveProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def phase(self, name: str, total: int | None) -> None:
        if self.task is not None:
            self.progress.update(self.task, stats=self._stats())
        self._reset()
        self.task = self.progress.add_task(name, total=total, stats="")

    def record(self, record: Record) -> None:
        if self.task is None:
            self.phase("requests", None)
        assert self.task is not None
        self.done += 1
        if not record.ok:
            self.failed += 1
        else:
            self.tokens += proven_tokens(record)  # what the summary will credit
            if record.first_content_ns is not None:
                self.ttfts.append((record.first_content_ns - record.scheduled_ns) / 1e6)
        now = time.monotonic()
        self.progress.advance(self.task)
        if now - self.last_refresh > 0.25:
            self.last_refresh = now
            self.progress.update(self.task, stats=self._stats())

    def _stats(self) -> str:
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        ttft = f"{np.median(self.ttfts):.1f} ms" if self.ttfts else "-"
        latest = f" (last {len(self.ttfts)})" if len(self.ttfts) == self.ttfts.maxlen else ""
        return (
            f"failed {self.failed}  {self.done / elapsed:.1f} req/s  "
            f"{self.tokens / elapsed:.0f} tok/s  TTFT p50{latest} {ttft}"
        )


def stop_flag() -> threading.Event:
    """SIGTERM stops the run cleanly, like Ctrl-C: finished records are kept."""
    flag = threading.Event()

    def _handler(signum: int, frame: object) -> None:
        flag.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    return flag


def print_outcomes(outcomes: list[RunOutcome]) -> None:
    from inferaudit.audit.run import failures_judged, problems
    from inferaudit.cli.tables import summary_table, sweep_table

    for outcome in outcomes:
        console.print(summary_table(outcome.summary, outcome.verdicts))
    if len(outcomes) > 1:
        console.print(sweep_table([o.summary.row() for o in outcomes]))
    for outcome in outcomes:
        console.print(f"run directory: [bold]{outcome.run_dir}[/]")
        for name, value in outcome.evidence.items():
            console.print(f"  {name}: {value}")
        for line in problems(outcome):
            console.print(f"[bold red]{escape(line)}[/]", highlight=False, soft_wrap=True)
        s = outcome.summary
        if s.failed and not failures_judged(outcome.spec):
            console.print(
                f"[yellow]{s.failed} of {s.requests} measured requests failed (no SLO and no "
                "errors check in the protocol: not judged)[/]",
                highlight=False,
                soft_wrap=True,
            )


def exit_code(outcomes: list[RunOutcome]) -> int:
    """0: every run passes; 1: one does not (``audit.run.problems`` states the rule)."""
    from inferaudit.audit.run import problems

    return 1 if any(problems(o) for o in outcomes) else 0


def print_search(found: SearchOutcome) -> int:
    """The points table and the one-line result; returns the exit code (1: a point was not a
    measurement, the search was interrupted, or an integrity check failed)."""
    from rich import box
    from rich.table import Table

    from inferaudit.audit.search import SEARCH_FILE, result_line
    from inferaudit.cli.tables import fmt

    table = Table(title="SLO search", box=box.SIMPLE_HEAD, title_justify="left")
    for name in ("point", "rate", "verdict", "req/s", "tok/s", "TTFT p99", "TPOT p99", "why"):
        table.add_column(name, justify="left" if name in ("point", "verdict", "why") else "right")
    style = {"pass": "green", "fail": "bold red", "invalid": "yellow"}
    for p in found.points:
        m = p.metrics
        table.add_row(
            p.dir or "", f"{p.rate:g}", f"[{style[p.status]}]{p.status}[/]",
            fmt(m.get("request_throughput_rps")), fmt(m.get("output_throughput_tok_s")),
            fmt(m.get("ttft_p99_ms")), fmt(m.get("tpot_p99_ms")), "; ".join(p.reasons),
        )  # fmt: skip
    console.print(table)
    console.print(f"[bold]{result_line(found.result)}[/]")
    console.print(f"stopped: {found.result['stopped']}")
    console.print(f"search directory: [bold]{found.parent}[/] ({SEARCH_FILE})")
    if found.interrupted:
        console.print("[yellow]interrupted: finished requests are kept in records.jsonl[/]")
    bad_check = any(v.verdict.value == "fail" for o in found.outcomes for v in o.verdicts)
    invalid = any(p.status == "invalid" for p in found.points)
    return 1 if found.interrupted or invalid or bad_check else 0


VLLM_RESULT_FILE = "vllm_result.json"
DATASET_FORMATS = get_args(DatasetFormat)
TRACE_FORMATS = get_args(TraceFormat)
_GOODPUT_NAMES = {"ttft": "ttft", "tpot": "tpot", "e2el": "e2e", "itl": "itl"}


def choice(value: str | None, allowed: tuple[str, ...], flag: str) -> Any:
    """``value`` if it is one of ``allowed`` (None passes), else one clear error line."""
    if value is not None and value not in allowed:
        raise ConfigError(f"{flag} {value!r}: expected one of {', '.join(allowed)}")
    return value


def goodput_slo(text: str) -> str:
    """vLLM's ``--goodput ttft:500 tpot:50 e2el:2000`` (ms) as our SLO text (p99 bounds)."""
    terms = []
    for part in text.replace(",", " ").split():
        name, _, value = part.partition(":")
        if name not in _GOODPUT_NAMES or not value:
            raise ConfigError(f"--goodput {part!r}: expected ttft:MS, tpot:MS, itl:MS or e2el:MS")
        terms.append(f"{_GOODPUT_NAMES[name]}_p99={value}ms")
    return ",".join(terms)


def percentiles(text: str) -> tuple[float, ...]:
    """``--metric-percentiles 25,50,99`` as numbers in (0, 100]."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--metric-percentiles {text!r}: expected numbers, e.g. 50,99") from None
    if not values or any(not 0 < v <= 100 for v in values):
        raise ConfigError(f"--metric-percentiles {text!r}: each must be above 0 and at most 100")
    return values


@app.command()
def run(
    endpoint: Annotated[
        str,
        typer.Option(
            "--endpoint", "--base-url", help="Base URL up to /v1, e.g. http://127.0.0.1:8000/v1"
        ),
    ],
    model: Annotated[str, typer.Option(help="Model name as the endpoint serves it")],
    api: Annotated[Api, typer.Option(help="OpenAI API flavour")] = Api.completions,
    api_key_env: Annotated[
        str | None, typer.Option(help="Environment variable holding the API key (never stored)")
    ] = None,
    concurrency: Annotated[int | None, typer.Option(help="Closed loop: requests in flight")] = None,
    rate: Annotated[
        float | None,
        typer.Option(
            "--rate", "--request-rate", help="Open loop: arrivals per second (inf: all at once)"
        ),
    ] = None,
    arrivals: Annotated[
        Arrivals, typer.Option(help="Open-loop arrival process (trace: set by --trace)")
    ] = Arrivals.poisson,
    burstiness: Annotated[
        float, typer.Option(help="Gamma arrivals' shape, as vLLM's (1: Poisson; <1 burstier)")
    ] = 1.0,
    max_concurrency: Annotated[
        int | None,
        typer.Option(
            help="With --rate: at most N in flight (arrivals wait for a slot); alone: "
            "the same as --concurrency N"
        ),
    ] = None,
    ramp_up: Annotated[
        float | None, typer.Option(help="Open loop: seconds of linear ramp-up to --rate")
    ] = None,
    ramp_start_rate: Annotated[
        float, typer.Option(help="Open loop: the rate a --ramp-up starts from")
    ] = 0.0,
    sweep: Annotated[
        str | None, typer.Option(help="One run per point: rate=1,2,4 or concurrency=1,8,32")
    ] = None,
    requests: Annotated[
        int | None,
        typer.Option("--requests", "--num-prompts", help="Measured requests (sessions) per point"),
    ] = None,
    duration: Annotated[float | None, typer.Option(help="Seconds per point")] = None,
    warmup: Annotated[int, typer.Option(help="Requests before measuring (flagged, excluded)")] = 0,
    input_tokens: Annotated[
        str,
        typer.Option(
            "--input-tokens",
            "--random-input-len",
            help="Prompt tokens: N, LO-HI, LO-HI:normal (exact with --tokenizer)",
        ),
    ] = "256",
    output_tokens: Annotated[
        str,
        typer.Option(
            "--output-tokens", "--random-output-len", help="Output tokens: N, LO-HI, LO-HI:normal"
        ),
    ] = "128",
    dataset: Annotated[
        Path | None,
        typer.Option(
            help="Prompts or conversations: JSONL, ShareGPT JSON, OpenAI chat JSONL, "
            "a Hugging Face dataset directory"
        ),
    ] = None,
    dataset_format: Annotated[
        str | None, typer.Option(help="prompts, sharegpt, openai-chat or hf (default: detected)")
    ] = None,
    multi_turn: Annotated[
        bool, typer.Option(help="Send each conversation's turns in order with the real answers")
    ] = False,
    think_time: Annotated[
        float, typer.Option(help="Multi-turn: seconds between an answer and the next turn")
    ] = 0.0,
    max_turns: Annotated[int | None, typer.Option(help="Multi-turn: most turns a session")] = None,
    prefix_tokens: Annotated[
        int | None, typer.Option(help="Each prompt starts with a shared system prompt of L tokens")
    ] = None,
    prefix_groups: Annotated[
        int, typer.Option(help="How many distinct shared system prompts (--prefix-tokens)")
    ] = 1,
    trace: Annotated[
        Path | None,
        typer.Option(help="Replay a trace on its own schedule: Mooncake JSONL or BurstGPT CSV"),
    ] = None,
    trace_format: Annotated[
        str | None, typer.Option(help="mooncake or burstgpt (default: detected)")
    ] = None,
    trace_speedup: Annotated[float, typer.Option(help="Replay the trace X times faster")] = 1.0,
    enforce_length: Annotated[
        bool, typer.Option(help="Send ignore_eos/min_tokens so outputs reach the asked length")
    ] = True,
    keep_full_text: Annotated[
        bool, typer.Option(help="Records keep all output text (default: 65,536 bytes of it)")
    ] = False,
    slo: Annotated[
        str | None, typer.Option(help="Latency bounds, e.g. ttft_p99=2000ms,tpot_p99=100ms")
    ] = None,
    goodput: Annotated[
        str | None,
        typer.Option(
            help="vLLM's goodput bounds, e.g. 'ttft:500 tpot:50 e2el:2000' (ms; the "
            "same as --slo ttft_p99=500ms,...)"
        ),
    ] = None,
    save_result: Annotated[
        bool, typer.Option(help="Also write a vLLM-style result JSON beside summary.json")
    ] = False,
    result_filename: Annotated[
        str, typer.Option(help="--save-result: the file name in the run directory")
    ] = VLLM_RESULT_FILE,
    percentile_metrics: Annotated[
        str, typer.Option(help="--save-result: metrics with percentiles (ttft,tpot,itl,e2el)")
    ] = "ttft,tpot,itl",
    metric_percentiles: Annotated[
        str, typer.Option(help="--save-result: the percentiles, e.g. 25,50,99")
    ] = "99",
    seed: Annotated[
        int | None,
        typer.Option(
            help="Fix the run's seed (prompts, audit positions, arrivals) for a reproducible "
            "rehearsal; a fixed seed is not secret (default: fresh and secret per run)"
        ),
    ] = None,
    temperature: Annotated[
        float, typer.Option(help="Sampling temperature of every request (identity needs 0)")
    ] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling top_p of every request")] = 1.0,
    seed_per_request: Annotated[
        bool, typer.Option(help="Send a sampling seed (drawn from the run's secret) per request")
    ] = False,
    allow_prompt_cache: Annotated[
        bool, typer.Option(help="Prompt/response caching is allowed: reported, not a failure")
    ] = False,
    workers: Annotated[int, typer.Option(help="Client worker processes (default: CPU cores)")] = 0,
    backend: Annotated[
        str, typer.Option(help="Where the client workers run: local (processes) or ray (a cluster)")
    ] = "local",
    ray_address: Annotated[
        str, typer.Option(help="--backend ray: the cluster, auto or HOST:PORT")
    ] = "auto",
    ray_workers: Annotated[
        int, typer.Option(help="--backend ray: Ray workers (default: one per cluster CPU)")
    ] = 0,
    max_lag_ms: MaxLagMs = None,
    timeout: Annotated[
        float, typer.Option(help="Per request: scheduled send -> last byte, seconds")
    ] = 600.0,
    first_byte_timeout: Annotated[
        float, typer.Option(help="Per request: actual send -> first body byte, seconds")
    ] = 60.0,
    stall_timeout: Annotated[
        float, typer.Option(help="Per request: the longest gap between body bytes, seconds")
    ] = 30.0,
    grace: Annotated[
        float,
        typer.Option(
            help="After a --duration window: seconds before in-flight requests are "
            "cancelled (recorded as cancelled)"
        ),
    ] = 30.0,
    checks: Annotated[
        str | None, typer.Option(help="Integrity checks: a,b,c or none (default: all that fit)")
    ] = None,
    tokenizer: Annotated[
        Path | None, typer.Option(help="tokenizer.json or GGUF for exact token accounting")
    ] = None,
    fingerprint: Annotated[
        Path | None, typer.Option(help="Reference fingerprint for the model-identity check")
    ] = None,
    deployment: Annotated[str | None, typer.Option(help="Deployment under test (claims)")] = None,
    claim: Annotated[str | None, typer.Option(help="Claim this run tests")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default: runs/<time>)")] = None,
    sign: Annotated[bool, typer.Option(help="Sign evidence and append to the ledger")] = True,
    data_dir: Annotated[Path | None, typer.Option(help="Keys and ledger (INFERAUDIT_HOME)")] = None,
    db: Annotated[str | None, typer.Option(help="Ledger database URL (INFERAUDIT_DB)")] = None,
    search: Annotated[
        str | None,
        typer.Option(help="SLO search: highest rate=LO:HI (req/s) whose point meets --slo"),
    ] = None,
    search_tolerance: Annotated[
        float, typer.Option(help="Search resolution: lowest fail / highest pass - 1")
    ] = 0.05,
    search_max_points: Annotated[int, typer.Option(help="Search: most points to run")] = 8,
    self_test: Annotated[
        bool, typer.Option(help="Client self-test at 2x the load first; refuse if it lags")
    ] = True,
    server_metrics: Annotated[
        str,
        typer.Option(
            help="The server's Prometheus /metrics to scrape around the load: URL, "
            "auto (the endpoint's own when it answers) or off; reported, compared"
        ),
    ] = "auto",
    telemetry: Annotated[
        str | None,
        typer.Option(help="An `inferaudit agent` URL: operator-reported device telemetry"),
    ] = None,
    publish: Annotated[
        str | None,
        typer.Option(
            help="Seal into this log service (`inferaudit serve`) instead of the local "
            "ledger, then upload the run directory; token: $INFERAUDIT_TOKEN or "
            "--token-file"
        ),
    ] = None,
    token_file: Annotated[
        Path | None, typer.Option(help="--publish: file holding the bearer token (chmod 600)")
    ] = None,
) -> None:
    """Load-test an endpoint and write a run directory (records, summary, evidence)."""
    from inferaudit.audit.run import RunOptions, execute_sweep, run_verification
    from inferaudit.measure.load.client import api_key_for
    from inferaudit.seal.remote import read_token

    if token_file is not None and publish is None:
        raise ConfigError("--token-file is for --publish URL")
    publish_token = read_token(token_file) if publish is not None else None

    for path, what in ((tokenizer, "--tokenizer"), (fingerprint, "--fingerprint")):
        if path is not None and not path.is_file():
            raise ConfigError(f"{what} {path}: no such file")
    check_names = (
        None if checks is None else tuple(c.strip() for c in checks.split(",") if c.strip())
    )
    if check_names is not None and "none" in check_names:
        check_names = ()
    plan = None
    if search is not None:
        from inferaudit.audit.search import SearchPlan

        if sweep or rate is not None or concurrency is not None:
            raise ConfigError("--search picks the rates: drop --rate, --concurrency and --sweep")
        if not slo:
            raise ConfigError("--search needs --slo, e.g. --slo ttft_p99=2000ms,tpot_p99=100ms")
        plan = SearchPlan.parse(search, search_tolerance, search_max_points)
        rate = plan.lo
    wanted = percentiles(metric_percentiles)  # checked before anything is sent
    metrics = tuple(m.strip() for m in percentile_metrics.split(",") if m.strip())
    if save_result:  # pyarrow and the exports only when asked for
        from inferaudit.present.vllm_result import VLLM_METRICS

        for name in metrics:
            choice(name, VLLM_METRICS, "--percentile-metrics")
    if goodput is not None:
        if slo is not None:
            raise ConfigError("give --slo or --goodput (its vLLM spelling), not both")
        slo = goodput_slo(goodput)
    if max_concurrency is not None and rate is None and sweep is None:
        if concurrency is not None and concurrency != max_concurrency:
            raise ConfigError("--max-concurrency without --rate is --concurrency: give one")
        concurrency, max_concurrency = max_concurrency, None  # vLLM: rate inf, N at a time
    ray_backend = None
    if choice(backend, ("local", "ray"), "--backend") == "ray":
        from inferaudit.measure.load.ray_backend import RayBackend, cluster_cpus, probe_address

        probe_address(ray_address)  # one line now, not ray.init's minute of retries
        ray_backend = RayBackend(address=ray_address, workers=ray_workers or None)
        workers = ray_workers or cluster_cpus(ray_backend)
    elif ray_workers or ray_address != "auto":
        raise ConfigError("--ray-address / --ray-workers need --backend ray")
    specs = build_specs(SpecInputs(
        endpoint=endpoint, model=model, api=api, api_key_env=api_key_env,
        concurrency=concurrency, rate=rate, arrivals=arrivals, sweep=sweep, requests=requests,
        duration=duration, warmup=warmup, input_tokens=input_tokens, output_tokens=output_tokens,
        dataset=dataset, dataset_format=choice(dataset_format, DATASET_FORMATS, "--dataset-format"),
        multi_turn=multi_turn, think_time=think_time, max_turns=max_turns,
        prefix_tokens=prefix_tokens, prefix_groups=prefix_groups, trace=trace,
        trace_format=choice(trace_format, TRACE_FORMATS, "--trace-format"),
        trace_speedup=trace_speedup, tokenizer=tokenizer, burstiness=burstiness,
        max_concurrency=max_concurrency, ramp_up=ramp_up, ramp_start_rate=ramp_start_rate,
        enforce_length=enforce_length, slo=slo, seed=seed or 0,
        workers=workers or (os.cpu_count() or 1), max_lag_ms=max_lag_ms, timeout=timeout,
        first_byte_timeout=first_byte_timeout, stall_timeout=stall_timeout, grace=grace,
        deployment=deployment, claim=claim, temperature=temperature, top_p=top_p,
        seed_per_request=seed_per_request, allow_prompt_cache=allow_prompt_cache,
        keep_full_text=keep_full_text,
    ))  # fmt: skip
    if seed is not None:  # --seed N: the same secret every time, hence no secret at all
        from inferaudit.measure.workload import fixed_seed

        specs = [s.model_copy(update={"secret_seed": fixed_seed(seed)}) for s in specs]
    options = RunOptions(
        api_key=api_key_for(specs[0].endpoint),
        checks=check_names,
        tokenizer=tokenizer,
        fingerprint=fingerprint,
        sign=sign,
        data_dir=data_dir,
        db_url=db,
        self_test=self_test,
        server_metrics=None if server_metrics == "off" else server_metrics,
        telemetry=telemetry,
        publish=publish,
        publish_token=publish_token,
        backend=ray_backend,
    )
    run_dir = out or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    flag = stop_flag()
    if plan is not None:
        from inferaudit.audit.search import execute_search

        with LiveProgress() as live:
            found = execute_search(specs[0], run_dir, plan, options, live, flag.is_set)
        raise typer.Exit(print_search(found))
    with LiveProgress() as live:
        if len(specs) == 1:
            outcomes = [run_verification(specs[0], run_dir, options, live, flag.is_set)]
        else:
            outcomes = execute_sweep(specs, run_dir, options, live, flag.is_set)
    if save_result:
        from inferaudit.present.vllm_result import write_vllm_result

        for outcome in outcomes:
            write_vllm_result(
                outcome.run_dir, outcome.run_dir / result_filename,
                percentile_metrics=metrics, metric_percentiles=wanted,
            )  # fmt: skip
    print_outcomes(outcomes)
    raise typer.Exit(exit_code(outcomes))
