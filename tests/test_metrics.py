"""Known-answer tests for metrics.summarize on hand-made records (its JSON form, the evidence):
a v1 protocol's summary (usage credited, as v0.1 wrote it), a v2 protocol's (the tokens the
stream proves credited, usage beside them), the Summary model against the v1 fixture and the
error-budget validity rule. The CLI's rendering of a summary is tested in test_cli_tables.py."""

from __future__ import annotations

import json
import random
from pathlib import Path

import orjson
import pytest
import rfc8785

from inferaudit.errors import DataError, RecordError
from inferaudit.judge import counting
from inferaudit.measure import metrics
from inferaudit.measure.metrics import (
    DEFINITIONS,
    itl_samples_ms,
    proven_tokens,
    request_times,
    tokens_per_chunk,
)
from inferaudit.measure.protocol import (
    SLO,
    SPEC_VERSION,
    SPEC_VERSION_V1,
    Endpoint,
    ErrorBudget,
    Load,
    RunSpec,
    SpecVersion,
)
from inferaudit.measure.records import Record, read_records, write_records
from inferaudit.measure.summary import Summary
from inferaudit.measure.tokenizer import Tokenizer

FIXTURE = Path(__file__).parent / "data" / "evidence-v1"


def summarize(records: list[Record], spec: RunSpec) -> dict[str, object]:
    """The summary's JSON form (what summary.json holds and verify compares)."""
    return metrics.summarize(records, spec).to_json()


MS = 1_000_000
REQUIRED = (
    "requests",
    "completed",
    "failed",
    "duration_s",
    "output_tokens",
    "request_throughput_rps",
    "output_throughput_tok_s",
    "ttft_ms",
    "tpot_ms",
    "itl_ms",
    "e2e_ms",
    "goodput_rps",
    "client_lag_ms",
    "valid",
    "invalid_reasons",
    "definitions",
)


def rec(
    i: int,
    sched: float,
    sent: float | None,
    first: float | None,
    chunks: list[tuple[float, int]],
    done: float,
    *,
    usage: int | None = None,
    phase: str = "measure",
    error: str | None = None,
    first_chunk: float | None = None,
    empty: int = 0,
    text: str | None = None,
) -> Record:
    """A record with times given in milliseconds."""

    def ns(x: float | None) -> int | None:
        return None if x is None else round(x * MS)

    return Record(
        id=i,
        phase=phase,
        scheduled_ns=round(sched * MS),
        sent_ns=ns(sent),
        first_chunk_ns=ns(first_chunk if first_chunk is not None else first),
        first_content_ns=ns(first),
        chunk_ns=[round(t * MS) for t, _ in chunks],
        chunk_chars=[c for _, c in chunks],
        done_ns=round(done * MS),
        status=500 if error else 200,
        error_class=error,
        usage_completion_tokens=usage,
        content_chunks=len(chunks),
        empty_chunks_before_content=empty,
        output_text=text,
    )


def spec(
    bounds: dict[str, float] | None = None,
    *,
    lag_ms: float | None = 5.0,
    budget: ErrorBudget = ErrorBudget(),
    version: SpecVersion = SPEC_VERSION_V1,
) -> RunSpec:
    """A protocol; v1 by default here (usage credited), so the v0.1 known answers hold."""
    return RunSpec(
        spec_version=version,
        endpoint=Endpoint(base_url="http://127.0.0.1:9/v1", model="m"),
        load=Load(rate=10.0, requests=4),
        slo=SLO(bounds_ms=bounds or {}),
        max_client_lag_p99_ms=lag_ms,
        error_budget=budget,
    )


def v2(bounds: dict[str, float] | None = None, *, lag_ms: float | None = 5.0) -> RunSpec:
    return spec(bounds, lag_ms=lag_ms, version=SPEC_VERSION)


def scenario() -> list[Record]:
    """Four measured requests (one failed), a warm-up and a probe record that must not count."""
    return [
        # role-only event at 5 ms, content at 10/20/30 ms: TTFT 10, TPOT 10, ITL 10, 10
        rec(0, 0, 1, 10, [(10, 4), (20, 4), (30, 4)], 30, usage=3, first_chunk=5, empty=1),
        # usage 5 over 2 chunks of 4 and 12 chars -> 1 + 4 tokens: ITL 4 samples of 20/4 = 5
        rec(1, 100, 100, 120, [(120, 4), (140, 12)], 150, usage=5),
        # one output token: no TPOT, no ITL
        rec(2, 200, 202, 210, [(210, 3)], 215, usage=1),
        rec(3, 300, 300, None, [], 305, error="http_500"),
        rec(90, -50, -50, -40, [(-40, 1), (-30, 1)], -30, phase="warmup"),
        rec(91, 400, 400, 900, [(900, 1), (2000, 1)], 5000, phase="probe"),
    ]


BOUNDS = {"ttft_p99": 15.0, "tpot_p90": 9.0, "itl_p99": 8.0}


def test_known_answer_summary_v1() -> None:
    s = summarize(scenario(), spec(BOUNDS))
    for key in REQUIRED:
        assert key in s
    assert (s["requests"], s["completed"], s["failed"]) == (4, 3, 1)
    assert s["excluded"] == {"probe": 1, "warmup": 1}
    assert s["duration_s"] == 0.305  # scheduled 0 ms -> last done 305 ms
    assert s["output_tokens"] == 9
    assert s["request_throughput_rps"] == 9.83607  # 3 / 0.305
    assert s["output_throughput_tok_s"] == 29.5082  # 9 / 0.305
    assert s["arrival_rate"] == {
        "requested_rps": 10.0,
        "scheduled_rps": 10.0,  # 3 gaps over 300 ms
        "achieved_rps": 10.0334,  # 3 gaps over 299 ms of actual sends
    }
    # role-only first event at 5 ms is not the first token: TTFT 10, 20, 10
    assert s["ttft_ms"] == {
        "n": 3,
        "mean": 13.3333,
        "p50": 10.0,
        "p90": 18.0,
        "p95": 19.0,
        "p99": 19.8,
        "p99.9": 19.98,
        "max": 20.0,
    }
    assert s["ttft_from_sent_ms"]["mean"] == 12.3333  # 9, 20, 8
    # 1-token request excluded: (30-10)/2 = 10, (150-120)/4 = 7.5
    assert s["tpot_ms"] == {
        "n": 2,
        "mean": 8.75,
        "p50": 8.75,
        "p90": 9.75,
        "p95": 9.875,
        "p99": 9.975,
        "p99.9": 9.9975,
        "max": 10.0,
    }
    # [10, 10] + 4 x [5]: the 4-token chunk does not deflate ITL to a single 20 ms gap
    assert s["itl_ms"] == {
        "n": 6,
        "mean": 6.66667,
        "p50": 5.0,
        "p90": 10.0,
        "p95": 10.0,
        "p99": 10.0,
        "p99.9": 10.0,
        "max": 10.0,
    }
    assert s["e2e_ms"]["p90"] == 46.0 and s["e2e_ms"]["mean"] == 31.6667
    assert s["client_lag_ms"] == {"p50": 0.5, "p99": 1.97, "max": 2.0}
    assert s["errors"] == {"http_500": 1}
    assert s["empty_chunks_before_content"] == 1
    assert s["requests_with_empty_chunks_before_content"] == 1
    assert s["output_tokens_by_source"] == {
        "usage": 9,
        "content_chunks": 6,
        "requests_with_usage": 3,
        "requests_without_usage": 0,
        "usage_equals_chunks": 2,
        "usage_above_chunks": 1,
        "usage_below_chunks": 0,
        "throughput_uses": "usage when reported, else content chunks (per request)",
    }
    assert s["valid"] is True and s["invalid_reasons"] == []
    assert s["definitions"] == DEFINITIONS
    assert s["definitions"]["ttft_ms"].startswith("TTFT: scheduled send -> first chunk")


def test_goodput_counts_failures_as_violations() -> None:
    s = summarize(scenario(), spec(BOUNDS))
    # request 0 breaks tpot (10 > 9) and itl (own p99 10 > 8); request 1 breaks ttft (20 > 15);
    # request 2 meets all (its TPOT and ITL are undefined); request 3 failed
    assert s["goodput_requests"] == 1
    assert s["goodput_rps"] == 3.27869  # 1 / 0.305
    assert s["goodput_tok_s"] == 3.27869  # its 1 token / 0.305
    ttft = s["slo"]["ttft_p99"]
    assert (ttft["n"], ttft["violations"], ttft["verdict"]) == (4, 2, "insufficient")
    assert (ttft["min_requests_zero_violations"], ttft["min_requests_for_estimate"]) == (459, 662)
    assert ttft["additional_requests_needed"] == 834  # 838 - 2 violations - 2 passing
    assert ttft["estimate_ms"] is None
    tpot = s["slo"]["tpot_p90"]
    assert (tpot["violations"], tpot["min_requests_zero_violations"]) == (2, 44)
    assert tpot["min_requests_for_estimate"] == 64
    assert s["slo"]["itl_p99"]["violations"] == 2
    assert list(s["slo"]) == ["itl_p99", "tpot_p90", "ttft_p99"]


def test_no_bounds_means_no_goodput() -> None:
    s = summarize(scenario(), spec())
    assert s["goodput_rps"] is None and s["goodput_tok_s"] is None and s["slo"] == {}


def uniform(n: int, ttft_ms: float = 10.0) -> list[Record]:
    """``n`` completed requests 100 ms apart, each with two content chunks."""
    return [
        rec(i, 100 * i, 100 * i, 100 * i + ttft_ms, [(100 * i + ttft_ms, 1), (100 * i + 40, 1)],
            100 * i + 40, usage=2)
        for i in range(n)
    ]  # fmt: skip


def test_early_stopping_p99_minimum_459() -> None:
    bound = {"ttft_p99": 50.0}
    assert summarize(uniform(458), spec(bound))["slo"]["ttft_p99"]["verdict"] == "insufficient"
    slo = summarize(uniform(459), spec(bound))["slo"]["ttft_p99"]
    assert (slo["verdict"], slo["violations"], slo["estimate_ms"]) == ("pass", 0, None)


def test_early_stopping_p99_estimate_662() -> None:
    bound = {"ttft_p99": 50.0}
    records = uniform(662)
    records[7] = rec(7, 700, 700, 733, [(733, 1), (740, 1)], 740, usage=2)  # TTFT 33 ms
    records[9] = rec(9, 900, 900, 960, [(960, 1), (970, 1)], 970, usage=2)  # TTFT 60 > 50
    slo = summarize(records, spec(bound))["slo"]["ttft_p99"]
    # one violation among 662 passes; the estimate is the highest value (t = 1)
    assert (slo["verdict"], slo["violations"], slo["estimate_ms"]) == ("pass", 1, 60.0)
    slo = summarize(records[:661], spec(bound))["slo"]["ttft_p99"]
    assert (slo["verdict"], slo["additional_requests_needed"]) == ("fail", 1)
    assert slo["estimate_ms"] is None


def test_early_stopping_estimate_skips_failed_top_value() -> None:
    records = uniform(838)
    records[3] = rec(3, 300, 300, None, [], 301, error="timeout")
    records[5] = rec(5, 500, 500, 525, [(525, 1), (540, 1)], 540, usage=2)  # TTFT 25
    slo = summarize(records, spec({"ttft_p99": 50.0}))["slo"]["ttft_p99"]
    # 838 requests absorb 2 violations: the 2nd highest (25 ms) is the estimate; the failed one
    # (ranked highest) is the only violation
    assert (slo["verdict"], slo["violations"], slo["estimate_ms"]) == ("pass", 1, 25.0)


def test_early_stopping_p90_minimum_44() -> None:
    bound = {"e2e_p90": 100.0}
    assert summarize(uniform(43), spec(bound))["slo"]["e2e_p90"]["verdict"] == "insufficient"
    assert summarize(uniform(44), spec(bound))["slo"]["e2e_p90"]["verdict"] == "pass"


def test_client_lag_makes_run_invalid() -> None:
    records = [
        rec(i, 100 * i, 100 * i + 10, 100 * i + 20, [(100 * i + 20, 1)], 100 * i + 30, usage=1)
        for i in range(5)
    ]
    s = summarize(records, spec())
    assert s["client_lag_ms"] == {"p50": 10.0, "p99": 10.0, "max": 10.0}
    assert s["valid"] is False
    assert s["invalid_reasons"] == [
        "client fell behind its schedule: lag p99 10.0 ms > 5 ms — the client, not the "
        "endpoint, was the bottleneck"
    ]
    assert summarize(records, spec(lag_ms=10.0))["valid"] is True


def test_no_completed_request_is_invalid() -> None:
    records = [rec(i, 10 * i, 10 * i, None, [], 10 * i + 5, error="http_429") for i in range(3)]
    s = summarize(records, spec({"ttft_p99": 1.0}))
    assert (s["valid"], s["invalid_reasons"]) == (False, ["no measured request completed"])
    assert s["errors"] == {"http_429": 3}
    assert s["ttft_ms"]["n"] == 0 and s["ttft_ms"]["p99"] is None
    assert s["output_tokens"] == 0 and s["output_throughput_tok_s"] == 0.0
    assert s["goodput_rps"] == 0.0
    assert s["slo"]["ttft_p99"]["violations"] == 3


def test_only_warmup_records() -> None:
    s = summarize([rec(0, 0, 0, 5, [(5, 1)], 6, usage=1, phase="warmup")], spec())
    assert (s["requests"], s["valid"], s["invalid_reasons"]) == (0, False, ["no measured requests"])
    assert s["duration_s"] is None and s["request_throughput_rps"] is None


def test_usage_missing_falls_back_to_chunks_and_below_is_reported() -> None:
    records = [
        rec(0, 0, 0, 10, [(10, 2), (20, 2), (30, 2)], 30),  # no usage: 3 tokens by chunks
        rec(1, 10, 10, 20, [(20, 2), (30, 2), (40, 2)], 40, usage=2),  # usage below chunks
    ]
    s = summarize(records, spec())
    assert s["output_tokens"] == 5
    src = s["output_tokens_by_source"]
    assert (src["usage"], src["content_chunks"]) == (2, 6)
    assert (src["requests_without_usage"], src["usage_below_chunks"]) == (1, 1)
    # usage below chunk count: one token per chunk for ITL; TPOT uses usage (20 / 1)
    assert s["itl_ms"]["n"] == 4 and s["itl_ms"]["max"] == 10.0
    assert s["tpot_ms"]["max"] == 20.0


def test_tokens_per_chunk_and_itl_spread() -> None:
    r = rec(0, 0, 0, 10, [(10, 2), (16, 6), (18, 2)], 18, usage=7)
    # usage 7 over chars 2/6/2: quotas 1.4, 4.2, 1.4 -> 1, 4, 1 + one unit to the first 0.4
    assert tokens_per_chunk(r) == [2, 4, 1]
    assert itl_samples_ms(r) == [1.5, 1.5, 1.5, 1.5, 2.0]
    assert tokens_per_chunk(rec(1, 0, 0, 1, [(1, 5), (2, 5)], 2, usage=2)) == [1, 1]


def test_throughput_confidence_interval() -> None:
    # 20 requests done in four 1 s sub-windows with 10, 20, 30, 40 tokens: rates 10..40 tok/s
    per_window = [[2, 2, 2, 2, 2], [4, 4, 4, 4, 4], [6, 6, 6, 6, 6], [8, 8, 8, 8, 8]]
    records = []
    for w, tokens in enumerate(per_window):
        for j, n_tok in enumerate(tokens):
            i = 5 * w + j
            done = 1000 * w + 150 * (j + 1) if (w, j) != (3, 4) else 4000
            records.append(rec(i, 0, 0, 100, [(100, 1)], done, usage=n_tok))
    s = summarize(records, spec())
    assert s["duration_s"] == 4.0 and s["output_throughput_tok_s"] == 25.0
    ci = s["output_throughput_ci"]
    assert (ci["subwindows"], ci["mean"], ci["confidence"]) == (4, 25.0, 0.95)
    assert (ci["low"], ci["high"]) == (4.4574, 45.5426)  # t(0.975, 3) * sqrt(500/3) / 2
    assert summarize(records[:9], spec())["output_throughput_ci"]["subwindows"] is None


def test_deterministic_and_order_free(tmp_path: Path) -> None:
    records = scenario() + uniform(30)[4:]
    base = summarize(records, spec(BOUNDS))
    shuffled = records[:]
    random.Random(7).shuffle(shuffled)
    assert summarize(shuffled, spec(BOUNDS)) == base
    path = tmp_path / "records.jsonl"
    write_records(path, shuffled)
    again = summarize(read_records(path), spec(BOUNDS))
    assert orjson.dumps(again) == orjson.dumps(base)
    assert json.loads(json.dumps(base)) == base
    assert orjson.loads(orjson.dumps(base)) == base
    # verify compares RFC 8785 bytes of the recomputed and the signed summary
    assert rfc8785.dumps(again) == rfc8785.dumps(orjson.loads(orjson.dumps(base)))


def test_malformed_record_is_record_error() -> None:
    bad = rec(4, 0, 0, 1, [(1, 1), (2, 1)], 2).model_copy(update={"chunk_chars": [1]})
    with pytest.raises(RecordError, match="record 4: chunk_ns has 2 entries"):
        summarize([bad], spec())
    back = rec(5, 0, 0, 1, [(3, 1), (2, 1)], 3)
    with pytest.raises(RecordError, match="record 5: chunk times go backwards"):
        summarize([back], spec())
    lying = rec(6, 0, 0, 1, [(1, 1)], 2, usage=-3)
    with pytest.raises(RecordError, match="record 6: negative usage_completion_tokens"):
        summarize([lying], spec())


# -- Summary model (contract C1) ---------------------------------------------------------------


def test_v1_fixture_summary_is_byte_identical() -> None:
    fixture_spec = RunSpec.model_validate_json((FIXTURE / "spec.json").read_bytes())
    stored = orjson.loads((FIXTURE / "summary.json").read_bytes())
    assert fixture_spec.max_client_lag_p99_ms == 5.0  # a v1 spec keeps its fixed bound
    s = metrics.summarize(read_records(FIXTURE / "records.jsonl"), fixture_spec)
    without_checks = {k: v for k, v in stored.items() if k != "checks"}
    assert orjson.dumps(s.to_json()) == orjson.dumps(without_checks)
    assert Summary.from_json(stored) == s  # the v1 form parses (its checks left out)
    assert s.ttft_ms.p50 == 22.0334 and s.client_lag_ms.p99 == 0.836134 and s.valid


def test_from_json_round_trip_and_refusal() -> None:
    s = metrics.summarize(scenario(), spec(BOUNDS, lag_ms=None))
    assert Summary.from_json(orjson.loads(orjson.dumps(s.to_json()))) == s
    broken = s.to_json()
    broken["ttft_ms"] = {"n": "many"}
    with pytest.raises(DataError, match=r"^summary: "):
        Summary.from_json(broken)
    with pytest.raises(DataError, match="expected a JSON object"):
        Summary.from_json([1, 2])


def test_row_is_the_one_projection() -> None:
    s = metrics.summarize(scenario(), spec(BOUNDS))
    # sends at 1, 100, 202, 300 ms: 3 / 0.299 s; TPOTs 10 and 7.5 ms: p99 7.5 + 0.99 x 2.5
    assert s.row().to_json() == {
        "load": "rate=10/s", "requests": 4, "completed": 3, "failed": 1, "achieved_rps": 10.0334,
        "request_throughput_rps": 9.83607, "output_throughput_tok_s": 29.5082,
        "goodput_rps": 3.27869, "goodput_tok_s": 3.27869, "ttft_p50_ms": 10.0,
        "ttft_p99_ms": 19.8, "tpot_p50_ms": 8.75, "tpot_p99_ms": 9.975, "itl_p99_ms": 10.0,
        "e2e_p99_ms": 49.6, "client_lag_p99_ms": 1.97, "valid": True,
    }  # fmt: skip


def test_request_times_is_what_the_summary_uses() -> None:
    t = request_times(scenario()[1])
    assert (t.ok, t.output_tokens, t.ttft_ms, t.e2e_ms) == (True, 5, 20.0, 50.0)
    assert t.tpot_ms == 30.0 / 4 and t.itl_ms == (5.0, 5.0, 5.0, 5.0)
    failed = request_times(scenario()[3])
    assert (failed.ok, failed.ttft_ms, failed.e2e_ms, failed.tpot_ms) == (False, None, None, None)


# -- the error budget (contract C4) ------------------------------------------------------------


def lagged(lag_ms: float, ttft_ms: float, n: int = 5) -> list[Record]:
    """n requests 100 ms apart, each sent ``lag_ms`` late, first token ``ttft_ms`` after send."""
    return [
        rec(i, 100 * i, 100 * i + lag_ms, 100 * i + lag_ms + ttft_ms,
            [(100 * i + lag_ms + ttft_ms, 1)], 100 * i + lag_ms + ttft_ms + 1, usage=1)
        for i in range(n)
    ]  # fmt: skip


def test_budget_scales_with_ttft() -> None:
    # every send 10 ms late moves TTFT p50 and p99 by 10 ms: 2% of a 500 ms TTFT allows 10 ms;
    # 2% of 20 ms allows only the 1 ms floor
    slow = metrics.summarize(lagged(10.0, 500.0), spec(lag_ms=None))
    assert slow.valid and slow.error_budget is not None
    assert slow.error_budget.model_dump() == {
        "share": 0.02, "floor_ms": 1.0,
        "figures": (
            {"figure": "ttft_p50", "figure_ms": 510.0, "moved_ms": 10.0, "allowed_ms": 10.2},
            {"figure": "ttft_p99", "figure_ms": 510.0, "moved_ms": 10.0, "allowed_ms": 10.2},
        ),
        "lag_p99_ms": 10.0, "within": True,
    }  # fmt: skip
    fast = metrics.summarize(lagged(10.0, 20.0), spec(lag_ms=None))
    assert not fast.valid
    assert fast.invalid_reasons == (
        "client fell behind its schedule: its send lag moved ttft p50 30 ms by 10 ms > 1 ms "
        "allowed (error budget 2% of the figure, at least 1 ms) — the client, not the endpoint, "
        "was the bottleneck",
    )
    assert fast.error_budget is not None and fast.error_budget.within is False
    # just over the allowance of a 500 ms TTFT (2% of 510.5 = 10.21 < 10.5)
    assert not metrics.summarize(lagged(10.5, 500.0), spec(lag_ms=None)).valid
    # a stated share and floor are honoured
    wide = spec(lag_ms=None, budget=ErrorBudget(share=0.05, floor_ms=2.0))
    assert metrics.summarize(lagged(10.0, 200.0), wide).valid
    assert metrics.summarize(lagged(1.9, 20.0), wide).valid
    assert not metrics.summarize(lagged(2.1, 20.0), wide).valid


def test_budget_judges_the_figures_not_single_sends() -> None:
    # 1 of 200 sends 30 ms late (lag p99 stays 0) moves neither TTFT p50 nor p99: valid;
    # 5 of 200 sends 30 ms late (lag p99 30 ms) move TTFT p99 by 30 ms: invalid
    def run(late: int) -> Summary:
        recs = [
            rec(i, 100 * i, 100 * i + (30.0 if i < late else 0.0),
                100 * i + (30.0 if i < late else 0.0) + 20.0,
                [(100 * i + (30.0 if i < late else 0.0) + 20.0, 1)],
                100 * i + (30.0 if i < late else 0.0) + 21.0, usage=1)
            for i in range(200)
        ]  # fmt: skip
        return metrics.summarize(recs, spec(lag_ms=None))

    one = run(1)
    assert one.valid and one.client_lag_ms.max == 30.0
    assert one.error_budget is not None
    assert [m.moved_ms for m in one.error_budget.figures] == [0.0, 0.0]
    five = run(5)
    assert not five.valid and five.client_lag_ms.p99 == 30.0
    assert five.error_budget is not None
    assert [(m.figure, m.moved_ms) for m in five.error_budget.figures] == [
        ("ttft_p50", 0.0), ("ttft_p99", 30.0),
    ]  # fmt: skip


def test_budget_states_itself_in_definitions_and_fixed_bound_keeps_v1_text() -> None:
    budget = summarize(lagged(0.1, 50.0), spec(lag_ms=None))
    fixed = summarize(lagged(0.1, 50.0), spec(lag_ms=5.0))
    assert "error_budget" in budget and "error_budget" not in fixed
    assert fixed["definitions"] == DEFINITIONS
    assert list(budget["definitions"]).index("error_budget") == (
        list(budget["definitions"]).index("client_lag_ms") + 1
    )
    assert "error budget" in budget["definitions"]["client_lag_ms"]
    assert list(budget)[list(budget).index("client_lag_ms") + 1] == "error_budget"


def test_fixed_bound_overrides_the_budget() -> None:
    # 3 ms lag on a 20 ms TTFT: over the budget (1 ms), within an explicit 5 ms bound
    assert not metrics.summarize(lagged(3.0, 20.0), spec(lag_ms=None)).valid
    s = metrics.summarize(lagged(3.0, 20.0), spec(lag_ms=5.0))
    assert s.valid and s.error_budget is None


# -- v2: credit only what the stream proves (issue 8 item 7) -----------------------------------


def windowed(extra_usage: int) -> list[Record]:
    """20 requests done in four 1 s sub-windows with 2, 4, 6, 8 content events each; usage
    claims ``extra_usage`` tokens more than the events on every request."""
    records = []
    for w, n_tok in enumerate((2, 4, 6, 8)):
        for j in range(5):
            i = 5 * w + j
            done = 1000 * w + 150 * (j + 1) if (w, j) != (3, 4) else 4000
            events = [(100.0 + k, 1) for k in range(n_tok)]
            records.append(rec(i, 0, 0, 100, events, done, usage=n_tok + extra_usage))
    return records


def test_v2_credits_the_events_when_usage_exceeds_them() -> None:
    s = summarize(scenario(), v2(BOUNDS))
    # request 1 reports usage 5 over 2 content events: 2 are proven; 3 + 2 + 1 credited
    assert s["output_tokens"] == 6
    assert s["output_throughput_tok_s"] == 19.6721  # 6 / 0.305
    assert s["token_credit"] == {
        "credited": "proven: content events, capped by usage when reported (per request)",
        "usage_based_tokens": 9,
        "usage_based_throughput_tok_s": 29.5082,  # 9 / 0.305, what v1 credited
        "requests_usage_above_proven": 1,
        "uncredited_tokens": 3,
    }
    assert s["output_tokens_by_source"]["throughput_uses"] == metrics.CREDIT_BASIS
    assert s["goodput_tok_s"] == 3.27869  # the one good request's proven token / 0.305
    # the latency definitions are unchanged: TPOT and ITL still divide by usage
    old = summarize(scenario(), spec(BOUNDS))
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "slo", "request_throughput_rps"):
        assert s[key] == old[key], key
    keys = list(s)
    assert keys[keys.index("output_tokens_by_source") + 1] == "token_credit"
    assert "token_credit" not in old  # v1 summaries keep their v0.1 keys
    definitions = list(s["definitions"])
    assert definitions[definitions.index("output_tokens_by_source") + 1] == "token_credit"
    assert s["definitions"]["output_tokens"].startswith("Credited output tokens")
    assert old["definitions"]["output_tokens"] == DEFINITIONS["output_tokens"]


def test_v2_throughput_and_interval_ignore_inflated_usage() -> None:
    honest = summarize(windowed(0), v2())
    inflated = summarize(windowed(1), v2())  # +1 token claimed on every one of 20 requests
    assert honest["output_tokens"] == inflated["output_tokens"] == 100
    assert honest["output_throughput_tok_s"] == inflated["output_throughput_tok_s"] == 25.0
    for ci in (honest["output_throughput_ci"], inflated["output_throughput_ci"]):
        assert (ci["subwindows"], ci["mean"], ci["low"], ci["high"]) == (
            4, 25.0, 4.4574, 45.5426,
        )  # fmt: skip
    assert honest["token_credit"]["uncredited_tokens"] == 0
    assert inflated["token_credit"]["uncredited_tokens"] == 20
    assert inflated["token_credit"]["requests_usage_above_proven"] == 20
    assert inflated["token_credit"]["usage_based_throughput_tok_s"] == 30.0  # 120 / 4 s
    # what a v1 protocol credited for the same records: the inflated usage
    v1 = summarize(windowed(1), spec())
    assert v1["output_throughput_tok_s"] == 30.0 and v1["output_throughput_ci"]["mean"] == 30.0


def test_v2_usage_below_events_and_missing_usage() -> None:
    records = [
        rec(0, 0, 0, 10, [(10, 2), (20, 2), (30, 2)], 30),  # no usage: the 3 events
        rec(1, 10, 10, 20, [(20, 2), (30, 2), (40, 2)], 40, usage=2),  # capped by usage 2
    ]
    s = summarize(records, v2())
    assert s["output_tokens"] == 5 and s["token_credit"]["uncredited_tokens"] == 0
    assert s["token_credit"]["usage_based_tokens"] == 5


def test_a_protocol_built_in_memory_is_v2() -> None:
    fresh = RunSpec(
        endpoint=Endpoint(base_url="http://127.0.0.1:9/v1", model="m"),
        load=Load(rate=10.0, requests=4),
    )
    assert fresh.spec_version == SPEC_VERSION == "inferaudit.runspec/v2"
    assert fresh.credits_proven and not spec().credits_proven
    assert metrics.summarize(scenario(), fresh).output_tokens == 6
    stored = RunSpec.model_validate_json(fresh.model_dump_json())
    assert stored.spec_version == SPEC_VERSION  # the version travels in spec.json


def test_v2_summary_round_trip() -> None:
    s = metrics.summarize(scenario(), v2(BOUNDS, lag_ms=None))
    assert s.token_credit is not None and s.error_budget is not None
    assert Summary.from_json(orjson.loads(orjson.dumps(s.to_json()))) == s


def test_proven_tokens_is_one_definition() -> None:
    def words(text: str) -> list[int]:
        return list(range(len(text.split())))

    tok = Tokenizer("words", "words.json", words)
    two_events = [(10.0, 3), (20.0, 4)]
    cases = [  # (usage, text, without tokenizer, with it)
        (None, "a b c d", 2, 4),  # re-tokenized 4 > 2 events; nothing caps it
        (3, "a b c d", 2, 3),  # capped by usage 3
        (10, "a b c d", 2, 4),  # usage above what either proves
        (1, "a b c d", 1, 1),  # a server that reports fewer is taken at its word
        (5, "a", 2, 2),  # re-tokenization never lowers the event count
        (5, None, 2, 2),  # no kept text: the events
    ]
    for usage, text, plain, with_tok in cases:
        r = rec(0, 0, 0, 10, two_events, 20, usage=usage, text=text)
        assert proven_tokens(r) == counting.proven_tokens(r) == plain, (usage, text)
        assert proven_tokens(r, tok) == counting.proven_tokens(r, tok) == with_tok, (usage, text)
        assert request_times(r).proven_tokens == plain
