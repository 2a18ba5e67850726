"""The vLLM `--save-result` JSON of a crafted run: exact keys, order and values."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from inferaudit.errors import ConfigError, DataError
from inferaudit.measure.metrics import summarize
from inferaudit.measure.protocol import Api, Endpoint, Load, RunSpec
from inferaudit.present.vllm_result import vllm_result, write_vllm_result
from test_records_table import UNSIGNED, crafted, make_run_dir, spec

# crafted()'s measured requests: two completed (TTFT 11 and 3 ms, TPOT 15 and 1 ms, E2E 41 and
# 7 ms, ITL samples 10, 20, 1, 1, 1, 1 ms; 3 + 2 proven tokens; 8 + 20 prompt tokens) and one
# failed; a window of 41 ms. Percentiles are numpy-linear, std is over n (numpy's default).
HEAD = {
    "endpoint_type": "openai",
    "backend": "openai",
    "label": None,
    "model_id": "tiny-model",
    "num_prompts": 3,
    "request_rate": 10.0,
    "burstiness": 1.0,
    "max_concurrency": 2,
    "duration": 0.041,
    "completed": 2,
    "failed": 1,
}
WITH_RECORDS = {
    **HEAD,
    "total_input_tokens": 28,
    "total_output_tokens": 5,
    "request_throughput": 48.7805,  # 2 / 0.041 s
    "request_goodput": None,  # no SLO bounds: null, as vLLM without --goodput
    "output_throughput": 121.951,  # 5 / 0.041 s
    "total_token_throughput": 804.878,  # 33 / 0.041 s
    "mean_ttft_ms": 7.0,
    "median_ttft_ms": 7.0,
    "std_ttft_ms": 4.0,
    "p75_ttft_ms": 9.0,  # from the records: 3 + 0.75 x 8
    "p99_ttft_ms": 10.92,  # from the summary: 3 + 0.99 x 8
    "mean_tpot_ms": 8.0,
    "median_tpot_ms": 8.0,
    "std_tpot_ms": 7.0,
    "p75_tpot_ms": 11.5,
    "p99_tpot_ms": 14.86,
    "mean_itl_ms": 5.66667,  # 34 / 6
    "median_itl_ms": 1.0,
    "std_itl_ms": 7.20339,  # sqrt(311.333 / 6)
    "p75_itl_ms": 7.75,
    "p99_itl_ms": 19.5,
}


def test_vllm_keys_and_values_with_records() -> None:
    records = crafted()
    summary = summarize(records, spec())
    got = vllm_result(
        summary, spec(), evidence="verified", records=iter(records), metric_percentiles=[75, 99]
    )
    block = got.pop("inferaudit")
    assert got == WITH_RECORDS
    assert list(got) == list(WITH_RECORDS)  # vLLM's order
    assert isinstance(block, dict)
    assert block["summary"] == "summary.json" and block["evidence"] == "verified"
    assert block["records"] == "records.jsonl"
    assert block["omitted"] == [
        "date", "tokenizer_id", "max_output_tokens_per_s", "max_concurrent_requests",
    ]  # fmt: skip
    definitions = block["definitions"]
    assert isinstance(definitions, dict)
    assert list(definitions) == ["duration_s", "output_tokens", "ttft_ms", "tpot_ms", "itl_ms"]
    assert definitions["ttft_ms"] == summary.definitions["ttft_ms"]


def test_e2el_and_the_percentiles_the_summary_holds() -> None:
    records = crafted()
    summary = summarize(records, spec())
    got = vllm_result(
        summary,
        spec(),
        evidence="verified",
        percentile_metrics=["e2el", "ttft"],
        metric_percentiles=[99.9, 100, 50, 99.9],
        date="20250102-030405",
    )
    assert got["date"] == "20250102-030405"
    metrics = {k: v for k, v in got.items() if k.endswith("_ms")}
    assert metrics == {  # without records: no std; summary percentiles only; vLLM's order
        "mean_ttft_ms": 7.0,
        "median_ttft_ms": 7.0,
        "p99.9_ttft_ms": 10.992,
        "p100_ttft_ms": 11.0,
        "p50_ttft_ms": 7.0,
        "mean_e2el_ms": 24.0,
        "median_e2el_ms": 24.0,
        "p99.9_e2el_ms": 40.966,
        "p100_e2el_ms": 41.0,
        "p50_e2el_ms": 24.0,
    }
    assert "total_input_tokens" not in got and "total_token_throughput" not in got
    block = got["inferaudit"]
    assert isinstance(block, dict) and "records" not in block
    assert block["omitted"] == [
        "total_input_tokens", "total_token_throughput", "tokenizer_id",
        "max_output_tokens_per_s", "max_concurrent_requests", "std_ttft_ms", "std_e2el_ms",
    ]  # fmt: skip


def test_a_percentile_not_held_is_omitted_without_records() -> None:
    summary = summarize(crafted(), spec())
    got = vllm_result(summary, spec(), evidence="x", metric_percentiles=[75])
    assert "p75_ttft_ms" not in got and "std_itl_ms" not in got
    block = got["inferaudit"]
    assert isinstance(block, dict) and isinstance(block["omitted"], list)
    assert {"p75_ttft_ms", "p75_tpot_ms", "p75_itl_ms"} <= set(block["omitted"])


def load_spec(**load: object) -> RunSpec:
    return RunSpec(
        endpoint=Endpoint(base_url="http://127.0.0.1:9/v1", model="m", api=Api.chat),
        load=Load.model_validate({"requests": 3, **load}),
    )


@pytest.mark.parametrize(
    ("load", "traffic"),
    [
        ({"concurrency": 4}, {"request_rate": "inf", "max_concurrency": 4}),
        ({"rate": "inf"}, {"request_rate": "inf", "burstiness": 1.0, "max_concurrency": None}),
        (
            {"rate": 5.0, "arrivals": "gamma", "burstiness": 0.5},
            {"request_rate": 5.0, "burstiness": 0.5, "max_concurrency": None},
        ),
        ({"rate": 5.0, "arrivals": "constant"}, {"request_rate": 5.0, "max_concurrency": None}),
        ({"rate": 5.0, "ramp_up_s": 2.0}, {"max_concurrency": None}),
    ],
)
def test_traffic_keys_follow_the_protocol(
    load: dict[str, object], traffic: dict[str, object]
) -> None:
    s = load_spec(**load)
    got = vllm_result(summarize(crafted(), s), s, evidence="verified")
    assert got["backend"] == got["endpoint_type"] == "openai-chat"
    keys = ("request_rate", "burstiness", "max_concurrency")
    assert {k: got[k] for k in keys if k in got} == traffic


def test_bad_selections_and_foreign_records() -> None:
    summary = summarize(crafted(), spec())
    with pytest.raises(ConfigError, match=r"--percentile-metrics 'e2e': expected one of"):
        vllm_result(summary, spec(), evidence="x", percentile_metrics=["e2e"])
    with pytest.raises(ConfigError, match=r"--metric-percentiles 101"):
        vllm_result(summary, spec(), evidence="x", metric_percentiles=[101.0])
    with pytest.raises(DataError, match="1 ttft values in the records but 2 in the summary"):
        vllm_result(summary, spec(), evidence="x", records=crafted()[1:])


def test_write_vllm_result_of_an_unsigned_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERAUDIT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("INFERAUDIT_DB", raising=False)
    run = make_run_dir(tmp_path / "run", crafted())
    (run / "meta.json").write_bytes(orjson.dumps({"started_wall": "2025-01-02T03:04:05Z"}))
    out = write_vllm_result(run, tmp_path / "res" / "vllm.json", metric_percentiles=[75, 99])
    data = orjson.loads(out.read_bytes())
    assert out.read_bytes().count(b"\n") == 1  # one line, as vLLM writes it
    block = data.pop("inferaudit")
    assert block["evidence"] == UNSIGNED
    assert data == {"date": "20250102-030405", **WITH_RECORDS}
    (run / "meta.json").write_bytes(orjson.dumps({"started_wall": "yesterday"}))
    with pytest.raises(DataError, match=r"meta.json: started_wall 'yesterday' is not"):
        write_vllm_result(run, tmp_path / "x.json")
    with pytest.raises(ConfigError, match="not a run directory"):
        write_vllm_result(tmp_path / "nowhere", tmp_path / "x.json")
