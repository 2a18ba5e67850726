"""Protocols from what a user asks for (``audit.specs.build_specs``: one per point, refusals in
one line), and a sweep that writes one complete run directory per point and a sweep.json that
lists them."""

from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from inferaudit.audit.run import RunOptions, execute_sweep
from inferaudit.audit.specs import SpecInputs, build_specs
from inferaudit.errors import ConfigError
from inferaudit.measure.protocol import Length, Sampling
from inferaudit.measure.rundir import load_run
from inferaudit.twin.launch import start_twin
from inferaudit.twin.options import TwinOptions


def test_concurrency_sweep(tmp_path: Path) -> None:
    with start_twin(TwinOptions(ttft_ms=20, tpot_ms=5)) as twin:
        specs = build_specs(
            SpecInputs(
                endpoint=twin.base_url, model="inferaudit-twin", sweep="concurrency=1,4",
                requests=8, input_tokens="16", output_tokens="8", seed=3, workers=1,
                max_lag_ms=5.0, timeout=30.0,
            )
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


def test_build_specs_gives_one_protocol_per_point() -> None:
    inputs = SpecInputs(
        endpoint="http://127.0.0.1:9/v1/", model="m", sweep="rate=1,2.5", requests=4,
        input_tokens="64-128:normal", slo="ttft_p99=2s", keep_full_text=True,
    )  # fmt: skip
    specs = build_specs(inputs)
    assert [s.load.rate for s in specs] == [1.0, 2.5]
    assert specs[0].model_copy(update={"load": specs[1].load}) == specs[1]  # only the load
    first = specs[0]
    assert first.spec_version == "inferaudit.runspec/v2"  # its summary credits proven tokens
    assert first.endpoint.base_url == "http://127.0.0.1:9/v1"
    assert first.workload.input_tokens == Length(lo=64, hi=128, dist="normal")
    assert first.workload.max_text_bytes is None  # keep_full_text
    assert first.slo.bounds_ms == {"ttft_p99": 2000.0}
    assert first.sampling == Sampling()  # greedy: what identity needs
    (one,) = build_specs(SpecInputs(endpoint="http://127.0.0.1:9/v1", model="m", concurrency=3,
                                    duration=2.0))  # fmt: skip
    assert (one.load.concurrency, one.load.duration_s, one.workload.max_text_bytes) == (
        3, 2.0, 65_536,
    )  # fmt: skip
    assert (one.load.first_byte_timeout_s, one.load.stall_timeout_s, one.load.grace_s) == (
        60.0, 30.0, 30.0,
    )  # fmt: skip
    (tight,) = build_specs(SpecInputs(endpoint="http://127.0.0.1:9/v1", model="m", concurrency=1,
                                      duration=2.0, first_byte_timeout=5.0, stall_timeout=0.5,
                                      grace=0.0))  # fmt: skip
    assert (tight.load.first_byte_timeout_s, tight.load.stall_timeout_s, tight.load.grace_s) == (
        5.0, 0.5, 0.0,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sweep": "concurrency=1,1.5"}, "--sweep concurrency=1,1.5: a concurrency is a whole"),
        ({"sweep": "rate=1,x"}, "--sweep rate=1,x: expected a comma-separated list"),
        ({"sweep": "rate=0,1"}, "--sweep rate=0,1: every value must be positive"),
        ({"sweep": "batch=1"}, "--sweep batch=1: expected rate=R1,R2,... or concurrency="),
        ({"rate": 0.0}, "--rate 0: the arrival rate must be positive"),
        ({"rate": 1.0, "concurrency": 2}, "give exactly one of --concurrency N"),
        ({"requests": None}, "give --requests N or --duration SECONDS"),
        ({"input_tokens": "9-3"}, "token length '9-3'"),
        ({"dataset": Path("/nonexistent/d.jsonl")}, "--dataset /nonexistent/d.jsonl: no such"),
        ({"endpoint": "localhost:8000"}, "endpoint must be an http(s) URL"),
        ({"stall_timeout": 0.0}, "stall_timeout_s"),
    ],
)
def test_build_specs_refuses_in_one_line(change: dict[str, object], message: str) -> None:
    base = SpecInputs(endpoint="http://127.0.0.1:9/v1", model="m", concurrency=1, requests=4)
    if "rate" in change and "concurrency" not in change:
        base = replace(base, concurrency=None)
    with pytest.raises(ConfigError) as info:
        build_specs(replace(base, **change))  # type: ignore[arg-type]
    assert message in info.value.diagnostics()
    assert "\n" not in info.value.diagnostics()
