"""SLO capacity search: the decision logic on hand-made points (exact rate sequences), the
pass/fail judgement of a summary, the result line, the CLI's refusals, and one search against
the twin's batching engine whose capacity is known from its model."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from inferaudit.audit.run import RunOptions
from inferaudit.audit.search import (
    PointResult,
    SearchPlan,
    execute_search,
    judge,
    next_rate,
    result_line,
    search_result,
)
from inferaudit.cli.run import build_specs
from inferaudit.errors import ConfigError
from inferaudit.measure.protocol import Api, Arrivals
from inferaudit.twin.engine import EngineConfig
from inferaudit.twin.launch import start_twin


def P(rate: float, status: str = "pass", bounds: Sequence[str] = ()) -> PointResult:
    metrics = {"output_throughput_tok_s": rate * 128.0, "bounds": {}}
    return PointResult(rate, status, failed_bounds=tuple(bounds), metrics=metrics)


def drive(plan: SearchPlan, passes: Any) -> list[float]:
    """The rates the search asks for when a rate passes iff ``passes(rate)``."""
    history: list[PointResult] = []
    while (rate := next_rate(plan, history)) is not None:
        history.append(P(rate, "pass" if passes(rate) else "fail", ("ttft_p99",)))
    return [p.rate for p in history]


def test_brackets_by_doubling_then_bisects_geometrically() -> None:
    plan = SearchPlan(1.0, 64.0, tolerance=0.1, max_points=10)
    assert drive(plan, lambda r: r <= 6.2) == [1.0, 2.0, 4.0, 8.0, 5.66, 6.73, 6.17]
    history = [P(r, "pass" if r <= 6.2 else "fail", ("ttft_p99",)) for r in
               (1.0, 2.0, 4.0, 8.0, 5.66, 6.73, 6.17)]  # fmt: skip
    result = search_result(plan, history)
    assert result["capacity_rps"] == 6.17
    assert result["capacity_output_tok_s"] == 6.17 * 128.0
    assert result["lowest_failing_rps"] == 6.73
    assert result["resolution"]["relative"] == pytest.approx(6.73 / 6.17 - 1, rel=1e-5)
    assert result["resolution"]["reached"] is True
    assert result["stopped"].startswith("resolution 0.0908 <= tolerance 0.1")


def test_range_edges() -> None:
    plan = SearchPlan(1.0, 20.0, tolerance=0.05, max_points=10)
    assert drive(plan, lambda r: True) == [1.0, 2.0, 4.0, 8.0, 16.0, 20.0]
    assert drive(plan, lambda r: False) == [1.0]
    below = search_result(plan, [P(1.0, "fail", ("tpot_p99",))])
    assert below["capacity_rps"] is None and below["below_range"] is True
    assert (
        result_line(below) == "capacity under SLO: below the search range; 1 req/s fails tpot_p99"
    )
    above = search_result(plan, [P(r) for r in (1.0, 2.0, 4.0, 8.0, 16.0, 20.0)])
    assert above["above_range"] is True
    assert above["stopped"] == "the highest rate of the range (20 req/s) passes"


def test_max_points_and_invalid_points_stop() -> None:
    plan = SearchPlan(1.0, 64.0, tolerance=0.01, max_points=5)
    assert drive(plan, lambda r: r < 3) == [1.0, 2.0, 4.0, 2.83, 3.36]
    history = [P(1.0), P(2.0, "invalid")]
    assert next_rate(plan, history) is None
    assert search_result(plan, history)["capacity_rps"] == 1.0
    assert search_result(plan, history)["stopped"].startswith("point at 2 req/s is not")


def test_result_line() -> None:
    result = {"capacity_rps": 12.4, "capacity_output_tok_s": 1587.2,
              "lowest_failing_rps": 13.1, "lowest_failing_bounds": ["ttft_p99"]}  # fmt: skip
    line = "capacity under SLO: 12.4 req/s (1,587 output tok/s); 13.1 req/s fails ttft_p99"
    assert result_line(result) == line


def summary(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "requests": 200, "completed": 200, "failed": 0, "valid": True, "invalid_reasons": [],
        "ttft_ms": {"p50": 100.0, "p99": 1900.0}, "tpot_ms": {"p50": 20.0, "p99": 40.0},
        "client_lag_ms": {"p99": 0.5}, "output_throughput_tok_s": 1000.0,
        "slo": {
            "tpot_p99": {"metric": "tpot", "percentile": 99.0, "bound_ms": 100.0, "n": 200,
                         "violations": 0, "verdict": "insufficient"},
            "ttft_p99": {"metric": "ttft", "percentile": 99.0, "bound_ms": 2000.0, "n": 200,
                         "violations": 2, "verdict": "insufficient"},
        },
    }  # fmt: skip
    base.update(over)
    return base


def test_judge() -> None:
    ok = judge(10.0, summary(), max_lag_p99_ms=5.0)
    assert ok.status == "pass" and ok.reasons == ()
    assert ok.metrics["bounds"]["ttft_p99"]["early_stopping"] == "insufficient"
    slow = judge(10.0, summary(ttft_ms={"p50": 100.0, "p99": 2345.0}), max_lag_p99_ms=5.0)
    assert slow.status == "fail" and slow.failed_bounds == ("ttft_p99",)
    assert slow.reasons == ("ttft_p99 2,345 ms > 2,000 ms",)
    # 3 of 200 violate (failed requests included) > 1%, although completed ones look fine
    s = summary(failed=3)
    s["slo"]["ttft_p99"]["violations"] = 3
    failing = judge(10.0, s, max_lag_p99_ms=5.0)
    assert failing.status == "fail" and failing.failed_bounds == ("ttft_p99",)
    assert failing.reasons == (
        "ttft_p99: 3 of 200 requests violate (failures included), more than 1%",
    )
    behind = judge(10.0, summary(client_lag_ms={"p99": 9.0}), max_lag_p99_ms=5.0)
    assert behind.status == "invalid"
    assert behind.reasons == ("client lag p99 9 ms > 5 ms: the client fell behind",)
    assert judge(10.0, summary(client_lag_ms={"p99": 9.0}), max_lag_p99_ms=10.0).passed
    none = judge(
        10.0,
        summary(valid=False, invalid_reasons=["no measured request completed"], ttft_ms={},
                tpot_ms={}),
        max_lag_p99_ms=5.0,
    )  # fmt: skip
    assert none.status == "fail" and set(none.failed_bounds) == {"ttft_p99", "tpot_p99"}
    assert none.reasons[0] == "no measured request completed"
    assert judge(10.0, summary(), max_lag_p99_ms=5.0, interrupted=True).status == "invalid"


@pytest.mark.parametrize(
    ("text", "needle"),
    [("rate=4:2", "need 0 < LO < HI"), ("concurrency=1:8", "expected rate=LO:HI"),
     ("rate=1", "expected rate=LO:HI")],
)  # fmt: skip
def test_plan_parse_errors(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        SearchPlan.parse(text)
    assert SearchPlan.parse(" rate = 0.5 : 64 ", 0.1, 6) == SearchPlan(0.5, 64.0, 0.1, 6)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [([], "--search needs --slo"),
     (["--slo", "ttft_p99=1s", "--rate", "3"], "--search picks the rates"),
     (["--slo", "ttft_p99=1s", "--search-tolerance", "1.5"], "--search-tolerance 1.5")],
)  # fmt: skip
def test_cli_refusals(tmp_path: Path, extra: list[str], needle: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "inferaudit", "run", "--endpoint", "http://127.0.0.1:9/v1",
         "--model", "m", "--search", "rate=1:8", "--duration", "2", *extra,
         "--out", str(tmp_path / "s")],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "INFERAUDIT_HOME": str(tmp_path / "home")},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], lines


BATCH, INPUT, OUTPUT = 4, 16, 32
TWIN = ["--accelerator", "H100-SXM", "--model", "llama-3.1-8b", "--max-batch", str(BATCH),
        "--efficiency", "0.3"]  # fmt: skip


def twin_capacity() -> tuple[float, float]:
    """Saturated throughput bounds (req/s) of the twin's engine from its model: every step
    decodes BATCH sequences; each sequence needs OUTPUT steps, and its admission adds one
    prefill to some step, shared with others at best (high) or alone at worst (low)."""
    c = EngineConfig.from_catalog("H100-SXM", "llama-3.1-8b", max_batch=BATCH, efficiency=0.3)
    decode = c.step_seconds(new_prompt_tokens=0, batch=BATCH, context_tokens=INPUT + OUTPUT)
    prefill = c.step_seconds(new_prompt_tokens=INPUT, batch=0, context_tokens=0)
    return BATCH / (OUTPUT * decode + BATCH * prefill), BATCH / (OUTPUT * decode + prefill)


@pytest.mark.slow
def test_search_against_the_twin_brackets_its_capacity(tmp_path: Path) -> None:
    low, high = twin_capacity()
    assert 6.9 < low < high < 7.6  # H100-SXM, llama-3.1-8b bf16, efficiency 0.3
    with start_twin(TWIN) as twin:
        spec = build_specs(
            endpoint=twin.base_url, model="llama-3.1-8b", api=Api.completions, api_key_env=None,
            concurrency=None, rate=2.0, arrivals=Arrivals.poisson, sweep=None, requests=None,
            duration=3.0, warmup=0, input_tokens=str(INPUT), output_tokens=str(OUTPUT),
            dataset=None, enforce_length=True, slo="ttft_p99=500ms", seed=1, workers=1,
            max_lag_ms=50.0, timeout=60.0,
        )[0]  # fmt: skip
        plan = SearchPlan(2.0, 32.0, tolerance=0.2, max_points=6)
        found = execute_search(spec, tmp_path / "s", plan, RunOptions(checks=(), sign=False))
    rates = [p.rate for p in found.points]
    assert rates[:3] == [2.0, 4.0, 8.0]
    by_rate = {p.rate: p for p in found.points}
    assert by_rate[2.0].passed  # a quarter of capacity meets the SLO
    assert by_rate[8.0].status == "fail"  # above the engine's capacity the queue only grows
    result = found.result
    assert result["capacity_rps"] is not None and result["lowest_failing_rps"] is not None
    # the search brackets the engine's capacity: nothing above it passes; half of it passes
    assert result["capacity_rps"] <= high
    assert result["lowest_failing_rps"] >= low / 2
    saved = orjson.loads((tmp_path / "s" / "search.json").read_bytes())
    assert saved["result"] == result
    assert [p["dir"] for p in saved["points"]] == [f"point-{i:03d}" for i in range(len(rates))]
    for p in saved["points"]:
        assert (tmp_path / "s" / p["dir"] / "summary.json").exists()
    assert (
        result["capacity_output_tok_s"]
        == by_rate[result["capacity_rps"]].metrics["output_throughput_tok_s"]
    )
