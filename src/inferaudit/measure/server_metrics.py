"""What the server says about itself: its Prometheus ``/metrics`` text, mapped to common quantities.

Parsed with ``prometheus_client.parser.text_string_to_metric_families`` (the text exposition
format 0.0.4). These are *reported* values: recorded beside what the client measured and
compared with it (the ``server-counters`` check), never a measurement and never a figure.

The quantities (every one ``None`` when the server exports none of its names):

  requests_finished     counter  requests the server finished (successfully, where it says so)
  prompt_tokens         counter  prompt (prefill) tokens the server processed
  generated_tokens      counter  tokens the server generated
  requests_running      gauge    requests being processed now
  requests_waiting      gauge    requests queued now
  kv_cache_usage        ratio    share of the KV cache in use, 0..1
  prefix_cache_hits     counter  prompt tokens served from the prefix cache
  prefix_cache_queries  counter  prompt tokens looked up in the prefix cache

The table (``KNOWN``; for each quantity the first name present wins, so a server exporting a
new and a deprecated spelling of one value is read once):

  quantity              vLLM (vllm/v1/metrics/loggers.py)      SGLang (srt/metrics/collector.py)
  requests_finished     vllm:request_success_total             sglang:num_requests_total
  prompt_tokens         vllm:prompt_tokens_total               sglang:prompt_tokens_total
  generated_tokens      vllm:generation_tokens_total           sglang:generation_tokens_total
  requests_running      vllm:num_requests_running              sglang:num_running_reqs
  requests_waiting      vllm:num_requests_waiting              sglang:num_queue_reqs
  kv_cache_usage        vllm:kv_cache_usage_perc, then the     sglang:token_usage
                        deprecated vllm:gpu_cache_usage_perc
  prefix_cache_hits     vllm:prefix_cache_hits_total, then     sglang:cached_tokens_total
                        vllm:gpu_prefix_cache_hits_total
  prefix_cache_queries  vllm:prefix_cache_queries_total, then  (none: SGLang exports a hit
                        vllm:gpu_prefix_cache_queries_total     rate gauge, not a counter)

  quantity              TGI (docs/source/reference/metrics.md)  llama.cpp llama-server --metrics
                                                                (tools/server/README.md)
  requests_finished     tgi_request_success                     (none)
  prompt_tokens         tgi_request_input_length (hist. _sum)   llamacpp:prompt_tokens_total
  generated_tokens      tgi_request_generated_tokens (_sum)     llamacpp:tokens_predicted_total
  requests_running      tgi_batch_current_size                  llamacpp:requests_processing
  requests_waiting      tgi_queue_size                          llamacpp:requests_deferred
  kv_cache_usage        (none)                                  llamacpp:kv_cache_usage_ratio
                                                                (older builds only)
  prefix_cache_hits     (none)                                  llamacpp:prompt_tokens_cached_total
                                                                (newer builds: tools/server/
                                                                server-task.cpp)
  prefix_cache_queries  (none)                                  (none)

Reading rules:
  - names: prometheus_client names a counter's family without ``_total`` and its samples with
    it (it even adds ``_total`` to a TGI counter sample exported without one); a sample whose
    ``# TYPE`` line is missing keeps its own name. A counter name therefore matches a sample
    named ``base`` or ``base_total``; ``base_created`` (a timestamp) never matches. A histogram
    quantity is its ``base_sum`` sample (or a summary's). Gauges match exactly.
  - label sets: a counter, a count gauge or a histogram sum is summed over every label set of
    its name (vLLM labels by model, engine and ``finished_reason``; SGLang by ``cache_source``);
    a ratio gauge is the mean over them (one per engine).
  - ``series``: every sample that fed a quantity, ``name{label="value",...}`` (labels sorted,
    values escaped as in the exposition format) -> value, so the sums can be recomputed.
  - refused, as one-line ``DataError``: text the parser rejects (with its line), text with no
    sample at all (an empty body), one known series given twice, and, in a series that feeds a
    quantity, a value that is not finite or a negative counter.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict, Field

from inferaudit.errors import DataError
from inferaudit.measure.scrapes import ScrapeLine, read_lines

__all__ = [
    "KNOWN",
    "Known",
    "Quantities",
    "Reading",
    "ServerSample",
    "parse_metrics",
    "read_samples",
    "reading",
]

Kind = Literal["counter", "gauge", "ratio", "histogram_sum"]
QuantityName = Literal[
    "requests_finished",
    "prompt_tokens",
    "generated_tokens",
    "requests_running",
    "requests_waiting",
    "kv_cache_usage",
    "prefix_cache_hits",
    "prefix_cache_queries",
]


class Quantities(BaseModel):
    """The common quantities of one scrape (see the module docstring); None: not exported."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    requests_finished: float | None = None
    prompt_tokens: float | None = None
    generated_tokens: float | None = None
    requests_running: float | None = None
    requests_waiting: float | None = None
    kv_cache_usage: float | None = None
    prefix_cache_hits: float | None = None
    prefix_cache_queries: float | None = None


@dataclass(frozen=True)
class Known:
    """One known name: the quantity it gives, how to read it, and whose name it is."""

    quantity: QuantityName
    name: str  # as documented (counters with their ``_total``; a histogram's base name)
    kind: Kind
    server: str

    def matches(self, sample_name: str) -> bool:
        if self.kind == "counter":
            base = self.name.removesuffix("_total")
            return sample_name in (base, base + "_total")
        if self.kind == "histogram_sum":
            return sample_name == self.name + "_sum"
        return sample_name == self.name


# For each quantity, in preference order (the first present wins).
KNOWN: tuple[Known, ...] = (
    Known("requests_finished", "vllm:request_success_total", "counter", "vllm"),
    Known("requests_finished", "sglang:num_requests_total", "counter", "sglang"),
    Known("requests_finished", "tgi_request_success", "counter", "tgi"),
    Known("prompt_tokens", "vllm:prompt_tokens_total", "counter", "vllm"),
    Known("prompt_tokens", "sglang:prompt_tokens_total", "counter", "sglang"),
    Known("prompt_tokens", "tgi_request_input_length", "histogram_sum", "tgi"),
    Known("prompt_tokens", "llamacpp:prompt_tokens_total", "counter", "llama.cpp"),
    Known("generated_tokens", "vllm:generation_tokens_total", "counter", "vllm"),
    Known("generated_tokens", "sglang:generation_tokens_total", "counter", "sglang"),
    Known("generated_tokens", "tgi_request_generated_tokens", "histogram_sum", "tgi"),
    Known("generated_tokens", "llamacpp:tokens_predicted_total", "counter", "llama.cpp"),
    Known("requests_running", "vllm:num_requests_running", "gauge", "vllm"),
    Known("requests_running", "sglang:num_running_reqs", "gauge", "sglang"),
    Known("requests_running", "tgi_batch_current_size", "gauge", "tgi"),
    Known("requests_running", "llamacpp:requests_processing", "gauge", "llama.cpp"),
    Known("requests_waiting", "vllm:num_requests_waiting", "gauge", "vllm"),
    Known("requests_waiting", "sglang:num_queue_reqs", "gauge", "sglang"),
    Known("requests_waiting", "tgi_queue_size", "gauge", "tgi"),
    Known("requests_waiting", "llamacpp:requests_deferred", "gauge", "llama.cpp"),
    Known("kv_cache_usage", "vllm:kv_cache_usage_perc", "ratio", "vllm"),
    Known("kv_cache_usage", "vllm:gpu_cache_usage_perc", "ratio", "vllm"),
    Known("kv_cache_usage", "sglang:token_usage", "ratio", "sglang"),
    Known("kv_cache_usage", "llamacpp:kv_cache_usage_ratio", "ratio", "llama.cpp"),
    Known("prefix_cache_hits", "vllm:prefix_cache_hits_total", "counter", "vllm"),
    Known("prefix_cache_hits", "vllm:gpu_prefix_cache_hits_total", "counter", "vllm"),
    Known("prefix_cache_hits", "sglang:cached_tokens_total", "counter", "sglang"),
    Known("prefix_cache_hits", "llamacpp:prompt_tokens_cached_total", "counter", "llama.cpp"),
    Known("prefix_cache_queries", "vllm:prefix_cache_queries_total", "counter", "vllm"),
    Known("prefix_cache_queries", "vllm:gpu_prefix_cache_queries_total", "counter", "vllm"),
)

MAX_ERROR_CHARS = 200


def parse_metrics(text: str) -> tuple[Quantities, dict[str, float]]:
    """The quantities of one ``/metrics`` text and the series that gave them (module docstring)."""
    samples = list(_samples(text))
    if not samples:
        raise DataError("server metrics: no metric sample in the text (not a Prometheus /metrics)")
    by_known: dict[Known, dict[str, float]] = {}
    for name, labels, value in samples:
        for known in KNOWN:
            if known.matches(name):
                key = series_key(name, labels)
                got = by_known.setdefault(known, {})
                if key in got:
                    raise DataError(f"server metrics: series {key} appears twice")
                got[key] = value
    values: dict[str, float] = {}
    series: dict[str, float] = {}
    for known in KNOWN:
        if known.quantity in values or known not in by_known:
            continue
        got = by_known[known]
        for key, value in got.items():
            _check_value(known, key, value)
        total = math.fsum(got.values())
        values[known.quantity] = total / len(got) if known.kind == "ratio" else total
        series.update(got)
    return Quantities.model_validate(values), series


class Reading(BaseModel):
    """What one ``/metrics`` scrape gave: the parser's fields of a ``ServerSample`` line."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    quantities: Quantities = Field(default_factory=Quantities)
    series: dict[str, float] = Field(default_factory=dict)


def reading(text: str) -> Reading:
    """:func:`parse_metrics` as a :class:`Reading` (the scraper's parse callable)."""
    quantities, series = parse_metrics(text)
    return Reading(quantities=quantities, series=series)


class ServerSample(ScrapeLine):
    """One line of ``server-metrics.jsonl``: the envelope (``measure.scrapes``) and a reading
    (all-None quantities and no series when ``ok`` is false)."""

    quantities: Quantities = Field(default_factory=Quantities)
    series: dict[str, float] = Field(default_factory=dict)


def read_samples(path: Path) -> list[ServerSample]:
    """Every sample of a ``server-metrics.jsonl`` in order (a torn last line ignored)."""
    return read_lines(path, ServerSample)


def series_key(name: str, labels: dict[str, str]) -> str:
    """``name{a="x",b="y"}`` with labels sorted and values escaped; ``name`` without labels."""
    if not labels:
        return name
    inner = ",".join(f'{k}="{_escape(labels[k])}"' for k in sorted(labels))
    return f"{name}{{{inner}}}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _check_value(known: Known, key: str, value: float) -> None:
    if not math.isfinite(value):
        raise DataError(f"server metrics: {key} is {value}, not a finite number")
    if known.kind in ("counter", "histogram_sum") and value < 0:
        raise DataError(f"server metrics: counter {key} is negative ({value})")


def _samples(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise DataError(f"server metrics: not Prometheus text: {_where(text, exc)}") from None
    for family in families:
        for sample in family.samples:
            yield sample.name, dict(sample.labels), float(sample.value)


def _where(text: str, exc: ValueError) -> str:
    """The first line the parser refuses on its own, and why (one line)."""
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            list(text_string_to_metric_families(line + "\n"))
        except ValueError as line_exc:
            return _one_line(f"line {number}: {str(line_exc) or 'malformed'}")
    return _one_line(str(exc) or type(exc).__name__)


def _one_line(message: str) -> str:
    first = message.splitlines()[0] if message else message
    return first if len(first) <= MAX_ERROR_CHARS else first[: MAX_ERROR_CHARS - 3] + "..."
