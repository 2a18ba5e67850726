"""A run's summary as vLLM `bench serve --save-result` JSON (vLLM `benchmarks/serve.py`).

``vllm_result(summary, spec, evidence=..., records=...)`` maps a Summary onto vLLM's keys, in
vLLM's order, for tools that read those files. Values come from the Summary; what it does not
hold comes from the run's records through our own functions (``metrics.request_times``,
``stats.percentile``), over the same requests the Summary counts (measured, completed); a key
that neither can fill is omitted, never faked, and named under ``inferaudit.omitted``.

Keys and where they come from:
  date                       ``started_wall`` of meta.json as ``%Y%m%d-%H%M%S`` (UTC; vLLM's is
                             local time); omitted without it
  endpoint_type, backend     ``openai`` (completions API) or ``openai-chat`` (chat API)
  label, model_id            the protocol's label and endpoint model
  num_prompts                measured requests (``summary.requests``)
  request_rate               open loop: the protocol's rate (``"inf"`` for inf, as vLLM writes
                             it); closed loop of N: ``"inf"`` with max_concurrency N (vLLM's
                             form of a closed loop)
  burstiness                 Poisson: 1.0; gamma: the protocol's shape
  max_concurrency            closed loop: its concurrency; open loop: its cap (null: none)
  duration                   ``summary.duration_s`` (first scheduled send -> last done)
  completed, failed          the Summary's counts
  total_input_tokens         records: sum of ``input_tokens`` (the workload's prompt length, as
                             vLLM's ``prompt_len``) over completed measured requests
  total_output_tokens        ``summary.output_tokens``: the credited count (proven, v2)
  request_throughput         ``summary.request_throughput_rps``
  request_goodput            ``summary.goodput_rps`` (null without SLO bounds, as vLLM)
  output_throughput          ``summary.output_throughput_tok_s``
  total_token_throughput     (total_input_tokens + total_output_tokens) / duration
  mean_/median_/std_/p{N}_   per metric of ``percentile_metrics`` (ttft, tpot, itl, e2el), in
  {metric}_ms                vLLM's order: mean and median (p50) from the Summary; std (over n,
                             as numpy's default) from the records; p{N} from the Summary for N in
                             50, 90, 95, 99, 99.9, 100 (max), else from the records; rounded to 6
                             significant digits as the Summary is; null when no value is defined
  inferaudit                 ``{"summary": "summary.json", "evidence": "verified" | "not
                             verified: <reason>", "records": "records.jsonl" (when used),
                             "omitted": [...], "definitions": {...}}``: our files and the
                             definitions of the figures (ours differ from vLLM's: TTFT and E2EL
                             run from the scheduled send, not the actual one)

Always omitted (we have no such value): tokenizer_id (a run binds a tokenizer file's digest,
not a name), max_output_tokens_per_s and max_concurrent_requests (vLLM's per-second peaks),
the ramp-up keys (our ramp rises over ``ramp_up_s`` then holds; vLLM's spans the whole run), and
the per-request lists of ``--save-detailed``. Omitted in some runs: date (no meta.json), request
rate and burstiness (a trace replay, a ramp-up; burstiness also for constant arrivals and a
closed loop), and without records: total_input_tokens, total_token_throughput, std_* and the
percentiles the Summary does not hold.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
from pydantic import JsonValue

from inferaudit.errors import ConfigError, DataError
from inferaudit.measure import stats
from inferaudit.measure.metrics import MEASURE_PHASE, request_times
from inferaudit.measure.protocol import Api, Arrivals, RunSpec
from inferaudit.measure.records import Record, iter_records
from inferaudit.measure.rundir import META_FILE, RECORDS_FILE, SUMMARY_FILE, load_run, read_json
from inferaudit.measure.summary import Summary
from inferaudit.present.records_table import (
    default_trust,
    evidence_status,
    in_file,
    require_records,
)
from inferaudit.seal.keys import TrustPolicy
from inferaudit.seal.verified import VerifiedRun, open_verified

__all__ = [
    "DEFAULT_METRIC_PERCENTILES",
    "DEFAULT_PERCENTILE_METRICS",
    "VLLM_METRICS",
    "vllm_result",
    "write_vllm_result",
]

VLLM_METRICS = ("ttft", "tpot", "itl", "e2el")  # vLLM's names, in the order it writes them
DEFAULT_PERCENTILE_METRICS = ("ttft", "tpot", "itl")  # vLLM's default for generative models
DEFAULT_METRIC_PERCENTILES = (99.0,)  # vLLM's default --metric-percentiles
_SUMMARY_DIST = {"ttft": "ttft", "tpot": "tpot", "itl": "itl", "e2el": "e2e"}
_HELD = {50.0: "p50", 90.0: "p90", 95.0: "p95", 99.0: "p99", 99.9: "p99.9", 100.0: "max"}
ALWAYS_OMITTED = ("tokenizer_id", "max_output_tokens_per_s", "max_concurrent_requests")


@dataclass(frozen=True)
class _Samples:
    """Per-request values of the measured, completed requests (sorted, in ms)."""

    by_metric: dict[str, list[float]]
    input_tokens: int | None  # None when a completed request does not state its prompt length


def _samples(records: Iterable[Record]) -> _Samples:
    values: dict[str, list[float]] = {m: [] for m in VLLM_METRICS}
    inputs: int | None = 0
    for record in records:
        if record.phase != MEASURE_PHASE:
            continue
        t = request_times(record)
        if not t.ok:
            continue
        for metric, value in (("ttft", t.ttft_ms), ("tpot", t.tpot_ms), ("e2el", t.e2e_ms)):
            if value is not None:
                values[metric].append(value)
        values["itl"].extend(t.itl_ms)
        inputs = (
            None
            if inputs is None or record.input_tokens is None
            else (inputs + record.input_tokens)
        )
    return _Samples({m: sorted(v) for m, v in values.items()}, inputs)


def _check_against(samples: _Samples, summary: Summary) -> None:
    """The records must be the ones the Summary was computed from (same sample counts)."""
    for metric, name in _SUMMARY_DIST.items():
        dist = summary.dist(name)
        assert dist is not None, f"Summary has {name}_ms"
        got = len(samples.by_metric[metric])
        if got != dist.n:
            raise DataError(
                f"{got} {metric} values in the records but {dist.n} in the summary: "
                "not the records of this summary"
            )


def _pstdev(values: Sequence[float]) -> float | None:
    """Population standard deviation (numpy's ``std``, ddof 0) with exact sums; None if empty."""
    if not values:
        return None
    mean = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((x - mean) ** 2 for x in values) / len(values))


def _p_word(p: float) -> str:
    """vLLM's key spelling of a percentile: ``99`` for 99.0, ``99.9`` for 99.9."""
    return str(int(p)) if int(p) == p else str(p)


def _selection(
    percentile_metrics: Sequence[str], metric_percentiles: Sequence[float]
) -> tuple[tuple[str, ...], tuple[float, ...]]:
    for name in percentile_metrics:
        if name not in VLLM_METRICS:
            raise ConfigError(
                f"--percentile-metrics {name!r}: expected one of {', '.join(VLLM_METRICS)}"
            )
    pcts: list[float] = []
    for p in metric_percentiles:
        if not (math.isfinite(p) and 0.0 <= p <= 100.0):
            raise ConfigError(f"--metric-percentiles {p!r}: expected a number from 0 to 100")
        if float(p) not in pcts:
            pcts.append(float(p))
    return tuple(m for m in VLLM_METRICS if m in percentile_metrics), tuple(pcts)


def _traffic(spec: RunSpec, out: dict[str, JsonValue], omitted: list[str]) -> None:
    load = spec.load
    if load.rate is None:  # closed loop of N: vLLM's rate inf with N at a time
        out["request_rate"] = "inf"
        omitted.append("burstiness")
        out["max_concurrency"] = load.concurrency
        return
    if load.arrivals == Arrivals.trace or load.ramp_up_s is not None:
        omitted += ["request_rate", "burstiness"]
    else:
        out["request_rate"] = "inf" if math.isinf(load.rate) else load.rate
        if load.arrivals == Arrivals.poisson:
            out["burstiness"] = 1.0
        elif load.arrivals == Arrivals.gamma:
            out["burstiness"] = load.burstiness
        else:
            omitted.append("burstiness")
    out["max_concurrency"] = load.max_concurrency


def vllm_result(
    summary: Summary,
    spec: RunSpec,
    *,
    evidence: str,
    records: Iterable[Record] | None = None,
    percentile_metrics: Sequence[str] = DEFAULT_PERCENTILE_METRICS,
    metric_percentiles: Sequence[float] = DEFAULT_METRIC_PERCENTILES,
    date: str | None = None,
) -> dict[str, JsonValue]:
    """The vLLM ``--save-result`` object of one measurement point (see the module doc).

    ``evidence``: "verified" or "not verified: <reason>" (``records_table.evidence_status``).
    ``records``: the run's records (streamed), for the values the Summary does not hold;
    DataError when they are not the Summary's. ConfigError for an unknown metric or percentile.
    """
    metrics, pcts = _selection(percentile_metrics, metric_percentiles)
    samples = None
    if records is not None:
        samples = _samples(records)
        _check_against(samples, summary)
    omitted: list[str] = []
    out: dict[str, JsonValue] = {}
    if date is not None:
        out["date"] = date
    else:
        omitted.append("date")
    backend = "openai-chat" if spec.endpoint.api == Api.chat else "openai"
    out.update(endpoint_type=backend, backend=backend, label=spec.label)
    out["model_id"] = spec.endpoint.model
    out["num_prompts"] = summary.requests
    _traffic(spec, out, omitted)
    out["duration"] = summary.duration_s
    out["completed"] = summary.completed
    out["failed"] = summary.failed
    inputs = None if samples is None else samples.input_tokens
    if inputs is not None:
        out["total_input_tokens"] = inputs
    out["total_output_tokens"] = summary.output_tokens
    out["request_throughput"] = summary.request_throughput_rps
    out["request_goodput"] = summary.goodput_rps
    out["output_throughput"] = summary.output_throughput_tok_s
    if inputs is None:
        omitted += ["total_input_tokens", "total_token_throughput"]
    elif summary.duration_s:
        out["total_token_throughput"] = stats.round_sig(
            (inputs + summary.output_tokens) / summary.duration_s
        )
    else:
        out["total_token_throughput"] = None
    omitted += ALWAYS_OMITTED
    for metric in metrics:
        dist = summary.dist(_SUMMARY_DIST[metric])
        assert dist is not None, f"Summary has {metric}"
        values = None if samples is None else samples.by_metric[metric]
        out[f"mean_{metric}_ms"] = dist.mean
        out[f"median_{metric}_ms"] = dist.p50
        if values is None:
            omitted.append(f"std_{metric}_ms")
        else:
            out[f"std_{metric}_ms"] = stats.round_sig(_pstdev(values))
        for p in pcts:
            key = f"p{_p_word(p)}_{metric}_ms"
            if p in _HELD:
                out[key] = dist.max if p == 100.0 else dist.pct(_HELD[p])
            elif values is None:
                omitted.append(key)
            else:
                out[key] = stats.round_sig(stats.percentile(values, p)) if values else None
    names = ["duration_s", "output_tokens", *(f"{_SUMMARY_DIST[m]}_ms" for m in metrics)]
    block: dict[str, JsonValue] = {"summary": SUMMARY_FILE, "evidence": evidence}
    if records is not None:
        block["records"] = RECORDS_FILE
    block["omitted"] = list(omitted)
    block["definitions"] = {n: summary.definitions[n] for n in names if n in summary.definitions}
    out["inferaudit"] = block
    return out


def _date(run_dir: Path) -> str | None:
    """meta.json's ``started_wall`` in vLLM's ``%Y%m%d-%H%M%S`` form; None without it."""
    path = run_dir / META_FILE
    if not path.is_file():
        return None
    meta = read_json(path)
    wall = meta.get("started_wall") if isinstance(meta, dict) else None
    if wall is None:
        return None
    try:
        return time.strftime("%Y%m%d-%H%M%S", time.strptime(str(wall), "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        raise DataError(f"{path}: started_wall {wall!r} is not YYYY-MM-DDTHH:MM:SSZ") from None


def write_vllm_result(
    run_dir: Path,
    path: Path,
    *,
    percentile_metrics: Sequence[str] = DEFAULT_PERCENTILE_METRICS,
    metric_percentiles: Sequence[float] = DEFAULT_METRIC_PERCENTILES,
    policy: TrustPolicy | None = None,
) -> Path:
    """Write ``run_dir``'s vLLM result JSON to ``path`` (one line, as vLLM writes it).

    The run is opened under ``policy`` (default: this data directory's keys): a verified run's
    summary and spec are the signed ones; otherwise summary.json and spec.json as they are, and
    the file says "not verified: <reason>". ConfigError for a directory that is not a run.
    """
    records_path = require_records(run_dir)
    run = open_verified(run_dir, policy if policy is not None else default_trust())
    if isinstance(run, VerifiedRun):
        summary, spec = run.summary, run.spec
    else:
        spec, raw = load_run(run_dir)
        try:
            summary = Summary.from_json(raw)
        except DataError as exc:
            raise DataError(f"{run_dir / SUMMARY_FILE}: {exc}") from None
    date = _date(run_dir)
    try:
        result = vllm_result(
            summary,
            spec,
            evidence=evidence_status(run),
            records=iter_records(records_path),
            percentile_metrics=percentile_metrics,
            metric_percentiles=metric_percentiles,
            date=date,
        )
    except DataError as exc:  # RecordError included: name the records file
        raise type(exc)(in_file(records_path, str(exc))) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_APPEND_NEWLINE))
    return path
