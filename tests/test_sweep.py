"""A sweep writes one complete run directory per point and a sweep.json that lists them."""

from pathlib import Path

import orjson

from inferaudit.audit.run import RunOptions, execute_sweep
from inferaudit.cli.run import build_specs
from inferaudit.measure.protocol import Api, Arrivals
from inferaudit.measure.rundir import load_run
from inferaudit.twin.launch import start_twin
from inferaudit.twin.options import TwinOptions


def test_concurrency_sweep(tmp_path: Path) -> None:
    with start_twin(TwinOptions(ttft_ms=20, tpot_ms=5)) as twin:
        specs = build_specs(
            endpoint=twin.base_url, model="inferaudit-twin", api=Api.completions,
            api_key_env=None, concurrency=None, rate=None, arrivals=Arrivals.poisson,
            sweep="concurrency=1,4", requests=8, duration=None, warmup=0, input_tokens="16",
            output_tokens="8", dataset=None, enforce_length=True, slo=None, seed=3, workers=1,
            max_lag_ms=5.0, timeout=30.0,
        )  # fmt: skip
        outcomes = execute_sweep(specs, tmp_path / "sweep", RunOptions(checks=(), sign=False))
    assert [o.run_dir.name for o in outcomes] == ["point-000", "point-001"]
    rows = orjson.loads((tmp_path / "sweep" / "sweep.json").read_bytes())["points"]
    assert [r["load"]["concurrency"] for r in rows] == [1, 4]
    for outcome, row in zip(outcomes, rows, strict=True):
        spec, summary = load_run(outcome.run_dir)
        assert summary["completed"] == 8 and summary["output_tokens"] == 64
        assert row["request_throughput_rps"] == summary["request_throughput_rps"]
        assert spec.checks == ()
    # four requests in flight finish the same work faster than one at a time
    assert rows[1]["request_throughput_rps"] > 2 * rows[0]["request_throughput_rps"]
