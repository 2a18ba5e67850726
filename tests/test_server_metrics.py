"""Server /metrics texts of vLLM, SGLang, TGI and llama.cpp's server -> the common quantities.

The fixtures are written in each server's documented exposition (names from their sources, see
``measure.server_metrics``), with the label sets, ``_created`` timestamps, histograms and
deprecated spellings a real scrape carries, and known-answer quantities.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from inferaudit.errors import DataError
from inferaudit.measure.server_metrics import (
    Quantities,
    ServerSample,
    parse_metrics,
    read_samples,
    reading,
    series_key,
)

# vLLM v1 (prometheus_client exposition): two engines, per finished_reason success counters,
# the deprecated gpu_* spellings beside the new ones (with other values: the new ones win).
VLLM = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 2.0
vllm:num_requests_waiting{engine="1",model_name="m"} 0.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. DEPRECATED.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.9
vllm:gpu_cache_usage_perc{engine="1",model_name="m"} 0.9
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.25
# HELP vllm:gpu_prefix_cache_hits_total GPU prefix cache hits. DEPRECATED.
# TYPE vllm:gpu_prefix_cache_hits_total counter
vllm:gpu_prefix_cache_hits_total{engine="0",model_name="m"} 999.0
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1000.0
vllm:prefix_cache_queries_total{engine="1",model_name="m"} 500.0
# HELP vllm:prefix_cache_queries_created Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_created gauge
vllm:prefix_cache_queries_created{engine="0",model_name="m"} 1.7000000001e+09
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 300.0
vllm:prefix_cache_hits_total{engine="1",model_name="m"} 100.0
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="m"} 1200.0
vllm:prompt_tokens_total{engine="1",model_name="m"} 800.0
# HELP vllm:prompt_tokens_created Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_created gauge
vllm:prompt_tokens_created{engine="0",model_name="m"} 1.7000000001e+09
vllm:prompt_tokens_created{engine="1",model_name="m"} 1.7000000001e+09
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="m"} 950.0
vllm:generation_tokens_total{engine="1",model_name="m"} 50.0
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} 10.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="m"} 4.0
vllm:request_success_total{engine="0",finished_reason="abort",model_name="m"} 0.0
vllm:request_success_total{engine="1",finished_reason="stop",model_name="m"} 5.0
# HELP vllm:request_success_created Count of successfully processed requests.
# TYPE vllm:request_success_created gauge
vllm:request_success_created{engine="0",finished_reason="stop",model_name="m"} 1.7000000001e+09
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="m"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 14.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 14.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 3.5
"""

# SGLang (docs/references/production_metrics.md): model_name labels, cached tokens by source.
SGLANG = """\
# HELP sglang:prompt_tokens_total Number of prefill tokens processed.
# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total{model_name="llama-3.1-8b"} 8.128902e+06
# HELP sglang:generation_tokens_total Number of generation tokens processed.
# TYPE sglang:generation_tokens_total counter
sglang:generation_tokens_total{model_name="llama-3.1-8b"} 7.557572e+06
# HELP sglang:cached_tokens_total Number of cached prompt tokens.
# TYPE sglang:cached_tokens_total counter
sglang:cached_tokens_total{cache_source="device",model_name="llama-3.1-8b"} 1000.0
sglang:cached_tokens_total{cache_source="host",model_name="llama-3.1-8b"} 24.0
# HELP sglang:num_requests_total Number of requests processed.
# TYPE sglang:num_requests_total counter
sglang:num_requests_total{model_name="llama-3.1-8b"} 4096.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="llama-3.1-8b"} 0.28
# HELP sglang:cache_hit_rate The prefix cache hit rate.
# TYPE sglang:cache_hit_rate gauge
sglang:cache_hit_rate{model_name="llama-3.1-8b"} 0.007507552643049313
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="llama-3.1-8b"} 12.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="llama-3.1-8b"} 3.0
# HELP sglang:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE sglang:time_to_first_token_seconds histogram
sglang:time_to_first_token_seconds_sum{model_name="llama-3.1-8b"} 2.35e+06
sglang:time_to_first_token_seconds_bucket{le="+Inf",model_name="llama-3.1-8b"} 4096.0
sglang:time_to_first_token_seconds_count{model_name="llama-3.1-8b"} 4096.0
"""

# TGI (docs/source/reference/metrics.md; the Rust metrics exporter): counters without _total,
# token counts as histograms.
TGI = """\
# TYPE tgi_request_count counter
tgi_request_count 45
# TYPE tgi_request_success counter
tgi_request_success 42
# TYPE tgi_queue_size gauge
tgi_queue_size 5
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 8
# TYPE tgi_request_input_length histogram
tgi_request_input_length_bucket{le="100"} 2
tgi_request_input_length_bucket{le="+Inf"} 42
tgi_request_input_length_sum 5120
tgi_request_input_length_count 42
# TYPE tgi_request_generated_tokens histogram
tgi_request_generated_tokens_bucket{le="64"} 42
tgi_request_generated_tokens_bucket{le="+Inf"} 42
tgi_request_generated_tokens_sum 2688
tgi_request_generated_tokens_count 42
"""

# llama.cpp's llama-server --metrics (tools/server: HELP/TYPE/value per item, counters first).
LLAMA_CPP = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 6886
# HELP llamacpp:prompt_seconds_total Prompt process time
# TYPE llamacpp:prompt_seconds_total counter
llamacpp:prompt_seconds_total 2903.63
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 3469
# HELP llamacpp:tokens_predicted_seconds_total Predict process time
# TYPE llamacpp:tokens_predicted_seconds_total counter
llamacpp:tokens_predicted_seconds_total 3544.27
# HELP llamacpp:n_decode_total Total number of llama_decode() calls
# TYPE llamacpp:n_decode_total counter
llamacpp:n_decode_total 3500
# HELP llamacpp:n_busy_slots_per_decode Average number of busy slots per llama_decode() call
# TYPE llamacpp:n_busy_slots_per_decode counter
llamacpp:n_busy_slots_per_decode 1
# HELP llamacpp:prompt_tokens_seconds Average prompt throughput in tokens/s.
# TYPE llamacpp:prompt_tokens_seconds gauge
llamacpp:prompt_tokens_seconds 2.37151
# HELP llamacpp:predicted_tokens_seconds Average generation throughput in tokens/s.
# TYPE llamacpp:predicted_tokens_seconds gauge
llamacpp:predicted_tokens_seconds 0.97
# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 means 100 percent usage.
# TYPE llamacpp:kv_cache_usage_ratio gauge
llamacpp:kv_cache_usage_ratio 0.125
# HELP llamacpp:kv_cache_tokens KV-cache tokens.
# TYPE llamacpp:kv_cache_tokens gauge
llamacpp:kv_cache_tokens 512
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 2
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 1
"""


def test_vllm_quantities_sum_label_sets_and_prefer_the_new_names() -> None:
    q, series = parse_metrics(VLLM)
    assert q == Quantities(
        requests_finished=19.0,  # stop 10 + length 4 + abort 0 (engine 0) + stop 5 (engine 1)
        prompt_tokens=2000.0,
        generated_tokens=1000.0,
        requests_running=4.0,
        requests_waiting=2.0,
        kv_cache_usage=0.375,  # the mean of the engines' 0.5 and 0.25, not the deprecated 0.9
        prefix_cache_hits=400.0,  # not the deprecated gpu_ counter's 999
        prefix_cache_queries=1500.0,
    )
    assert len(series) == 18  # 4 success label sets + 2 engines x 7 others; nothing else
    key = 'vllm:request_success_total{engine="0",finished_reason="length",model_name="m"}'
    assert series[key] == 4.0
    assert series['vllm:kv_cache_usage_perc{engine="1",model_name="m"}'] == 0.25
    assert not any("created" in k or "gpu_" in k or "seconds" in k for k in series)


def test_sglang_quantities() -> None:
    q, series = parse_metrics(SGLANG)
    assert q == Quantities(
        requests_finished=4096.0,
        prompt_tokens=8128902.0,
        generated_tokens=7557572.0,
        requests_running=12.0,
        requests_waiting=3.0,
        kv_cache_usage=0.28,
        prefix_cache_hits=1024.0,  # device 1000 + host 24
        prefix_cache_queries=None,  # SGLang exports a hit-rate gauge, no queries counter
    )
    assert sorted(series) == sorted([
        'sglang:prompt_tokens_total{model_name="llama-3.1-8b"}',
        'sglang:generation_tokens_total{model_name="llama-3.1-8b"}',
        'sglang:cached_tokens_total{cache_source="device",model_name="llama-3.1-8b"}',
        'sglang:cached_tokens_total{cache_source="host",model_name="llama-3.1-8b"}',
        'sglang:num_requests_total{model_name="llama-3.1-8b"}',
        'sglang:token_usage{model_name="llama-3.1-8b"}',
        'sglang:num_running_reqs{model_name="llama-3.1-8b"}',
        'sglang:num_queue_reqs{model_name="llama-3.1-8b"}',
    ])  # fmt: skip


def test_tgi_quantities_from_counters_without_total_and_histogram_sums() -> None:
    q, series = parse_metrics(TGI)
    assert q == Quantities(
        requests_finished=42.0,  # tgi_request_success, not tgi_request_count (45)
        prompt_tokens=5120.0,
        generated_tokens=2688.0,
        requests_running=8.0,
        requests_waiting=5.0,
    )
    # prometheus_client names a counter sample with _total even when TGI wrote it without
    assert series == {
        "tgi_request_success_total": 42.0,
        "tgi_request_input_length_sum": 5120.0,
        "tgi_request_generated_tokens_sum": 2688.0,
        "tgi_batch_current_size": 8.0,
        "tgi_queue_size": 5.0,
    }


def test_llama_cpp_quantities() -> None:
    q, series = parse_metrics(LLAMA_CPP)
    assert q == Quantities(
        requests_finished=None,  # llama-server counts decode calls, not finished requests
        prompt_tokens=6886.0,
        generated_tokens=3469.0,
        requests_running=2.0,
        requests_waiting=1.0,
        kv_cache_usage=0.125,
    )
    assert series == {
        "llamacpp:prompt_tokens_total": 6886.0,
        "llamacpp:tokens_predicted_total": 3469.0,
        "llamacpp:requests_processing": 2.0,
        "llamacpp:requests_deferred": 1.0,
        "llamacpp:kv_cache_usage_ratio": 0.125,
    }


@pytest.mark.parametrize(
    "text",
    [
        # as prometheus_client writes it: TYPE line with the _total name
        "# TYPE vllm:generation_tokens_total counter\nvllm:generation_tokens_total 7.0\n",
        # TYPE line with the family's base name (the OpenMetrics style)
        "# TYPE vllm:generation_tokens counter\nvllm:generation_tokens_total 7.0\n",
        # no TYPE line at all
        "vllm:generation_tokens_total 7.0\n",
        # a counter exported without its _total (as TGI does)
        "# TYPE vllm:generation_tokens counter\nvllm:generation_tokens 7.0\n",
    ],
)
def test_total_suffix_is_handled_whichever_way_it_is_written(text: str) -> None:
    q, series = parse_metrics(text + "vllm:generation_tokens_created 1.7e9\n")
    assert q == Quantities(generated_tokens=7.0)
    assert list(series.values()) == [7.0]


def test_no_known_name_gives_no_quantity() -> None:
    assert parse_metrics("process_cpu_seconds_total 12.5\nup 1\n") == (Quantities(), {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "server metrics: no metric sample in the text (not a Prometheus /metrics)"),
        ("# HELP x y\n# TYPE x counter\n",
         "server metrics: no metric sample in the text (not a Prometheus /metrics)"),
        ("up 1\nvllm:num_requests_running{a=\"1\" 2\n",
         "server metrics: not Prometheus text: line 2: could not convert string to float: "
         "'{a=\"1\"'"),
        ("vllm:num_requests_running NaN\n",
         "server metrics: vllm:num_requests_running is nan, not a finite number"),
        ("vllm:prompt_tokens_total -3\n",
         "server metrics: counter vllm:prompt_tokens_total is negative (-3.0)"),
        ('vllm:prompt_tokens_total{a="1"} 3\nvllm:prompt_tokens_total{a="1"} 4\n',
         'server metrics: series vllm:prompt_tokens_total{a="1"} appears twice'),
    ],
)  # fmt: skip
def test_bad_text_is_one_line_data_error(text: str, message: str) -> None:
    with pytest.raises(DataError) as err:
        parse_metrics(text)
    assert err.value.diagnostics() == message


def test_an_html_page_is_refused_with_its_line() -> None:
    with pytest.raises(DataError) as err:
        parse_metrics("<!doctype html>\n<html><body>Not here</body></html>\n")
    message = err.value.diagnostics()
    assert message.startswith("server metrics: not Prometheus text: line 1: ")
    assert "\n" not in message


def test_an_unused_non_finite_series_is_not_an_error() -> None:
    # the deprecated spelling is not read when the new one is there
    text = "vllm:kv_cache_usage_perc 0.5\nvllm:gpu_cache_usage_perc NaN\n"
    q, series = parse_metrics(text)
    assert (q, series) == (Quantities(kv_cache_usage=0.5), {"vllm:kv_cache_usage_perc": 0.5})


def test_series_key_sorts_and_escapes_labels() -> None:
    assert series_key("m", {}) == "m"
    assert series_key("m", {"b": 'say "hi"\n', "a": "c\\d"}) == 'm{a="c\\\\d",b="say \\"hi\\"\\n"}'


def test_samples_round_trip_and_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    r = reading(LLAMA_CPP)
    good = ServerSample(t_ns=-5, span_ns=2, phase="before", ok=True,
                        quantities=r.quantities, series=r.series)  # fmt: skip
    bad = ServerSample(t_ns=7, span_ns=1, phase="after", ok=False, error="x: HTTP 500")
    path = tmp_path / "server-metrics.jsonl"
    path.write_bytes(good.to_line() + bad.to_line() + b'{"t_ns": 9, "sp')
    assert read_samples(path) == [good, bad]
    assert bad.quantities == Quantities() and bad.series == {}


def test_a_malformed_sample_line_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "server-metrics.jsonl"
    ok = ServerSample(t_ns=0, span_ns=0, phase="during", ok=True)
    path.write_bytes(ok.to_line() + b'{"t_ns": 1, "span_ns": 0, "phase": "later", "ok": true}\n')
    with pytest.raises(DataError) as err:
        read_samples(path)
    assert err.value.diagnostics().startswith(f"{path}:2: bad ServerSample line: ")
