"""`inferaudit run` with vLLM `bench serve`'s flag names, `--rate inf`, `--goodput`, and the
vLLM-style result JSON (`--save-result`), against a real twin process on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from inferaudit.measure.records import read_records
from inferaudit.twin.launch import start_twin
from inferaudit.twin.options import TwinOptions

MODEL = "inferaudit-twin"


def cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inferaudit", "run", *args, "--workers", "1", "--no-sign"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "INFERAUDIT_HOME": str(home)},
    )


def test_vllm_flag_names_and_the_result_json(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with start_twin(TwinOptions(ttft_ms=200, tpot_ms=1)) as twin:
        proc = cli(
            "--base-url", twin.base_url, "--model", MODEL, "--request-rate", "20",
            "--num-prompts", "6", "--random-input-len", "16", "--random-output-len", "4",
            "--goodput", "ttft:5000 e2el:9000", "--save-result", "--metric-percentiles", "50,99",
            "--percentile-metrics", "ttft,e2el", "--checks", "none", "--no-self-test",
            "--out", str(out), home=tmp_path / "home",
        )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    spec = orjson.loads((out / "spec.json").read_bytes())
    assert spec["load"]["rate"] == 20 and spec["load"]["requests"] == 6
    assert spec["workload"]["input_tokens"]["lo"] == 16
    assert spec["workload"]["output_tokens"]["lo"] == 4
    assert spec["slo"]["bounds_ms"] == {"e2e_p99": 9000.0, "ttft_p99": 5000.0}
    result = orjson.loads((out / "vllm_result.json").read_bytes())
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert result["num_prompts"] == 6 and result["completed"] == 6
    assert result["request_rate"] == 20
    assert result["p99_ttft_ms"] == summary["ttft_ms"]["p99"]
    assert result["median_e2el_ms"] == summary["e2e_ms"]["p50"]
    assert "p50_ttft_ms" in result and "p99_e2el_ms" in result and "p99_tpot_ms" not in result
    assert result["total_output_tokens"] == summary["output_tokens"] == 24


def test_rate_inf_sends_every_request_at_once(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with start_twin(TwinOptions(ttft_ms=200, tpot_ms=1)) as twin:
        proc = cli(
            "--endpoint", twin.base_url, "--model", MODEL, "--rate", "inf", "--requests", "5",
            "--input-tokens", "16", "--output-tokens", "4", "--checks", "none",
            "--out", str(out), home=tmp_path / "home",
        )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = read_records(out / "records.jsonl")
    assert len(records) == 5 and {r.scheduled_ns for r in records} == {0}
    assert orjson.loads((out / "spec.json").read_bytes())["load"]["rate"] == "inf"


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--rate", "2", "--goodput", "ttfb:5"], "--goodput 'ttfb:5': expected ttft:MS"),
        (["--rate", "2", "--dataset-format", "xml"], "--dataset-format 'xml': expected one of"),
        (["--concurrency", "3", "--max-concurrency", "2"], "--max-concurrency without --rate"),
        (["--rate", "2", "--metric-percentiles", "101"], "each must be above 0 and at most 100"),
        (["--rate", "2", "--save-result", "--percentile-metrics", "ttft,lag"], "'lag': expected"),
        (["--rate", "2", "--burstiness", "0.5", "--arrivals", "constant"], "burstiness is the"),
        (["--rate", "2", "--multi-turn"], "--multi-turn sends a dataset's conversations"),
    ],
)
def test_bad_workload_flags_are_one_line(tmp_path: Path, extra: list[str], needle: str) -> None:
    proc = cli("--endpoint", "http://127.0.0.1:9/v1", "--model", "m", "--requests", "3",
               *extra, "--out", str(tmp_path / "r"), home=tmp_path / "home")  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], lines
    assert "Traceback" not in proc.stderr
