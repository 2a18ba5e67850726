"""Measurement accuracy: what `inferaudit run` measures against what the twin really did.

The twin's truth file records, on the same CLOCK_MONOTONIC as the client, when each request
arrived and when each token was written. Measured TTFT/TPOT medians must be within 5% (+1 ms) of
the truth, and every request must carry exactly the asked 128 output tokens.
"""

from pathlib import Path

import numpy as np
import orjson
import pytest

from inferaudit.audit.run import RunOptions, run_verification
from inferaudit.judge.noise import Stalls
from inferaudit.measure.health import read_health
from inferaudit.measure.protocol import Endpoint, Length, Load, RunSpec, Workload
from inferaudit.measure.records import read_records
from inferaudit.twin.launch import start_twin
from inferaudit.twin.options import TwinOptions

TTFT_MS, TPOT_MS, OUTPUT = 50.0, 10.0, 128


def within(measured: float, truth: float) -> bool:
    return abs(measured - truth) <= 0.05 * truth + 1.0


def bracketed(measured: float, stall_free: float, truth: float) -> bool:
    """``measured`` is within the tolerance of ``truth``, or the client's own recorded loop
    stalls explain the excess: ``truth`` lies between the median with every stalled
    nanosecond inside each request's span taken off (``stall_free``, a lower bound) and the
    median as measured. A suite run on a loaded host saw 995 stalls (4.8 s in an 8 s run) and
    a TTFT 4.1 ms over the twin's 50.4 (stall-free: 39.4). Measuring under the truth, or an
    excess the stalls cannot explain, still fails."""
    tol = 0.05 * truth + 1.0
    return within(measured, truth) or stall_free - tol <= truth <= measured + tol


@pytest.mark.slow
@pytest.mark.parametrize("api", ["completions", "chat"])
def test_ttft_tpot_match_twin_truth(tmp_path: Path, api: str) -> None:
    truth_path = tmp_path / "truth.jsonl"
    args = TwinOptions(ttft_ms=TTFT_MS, tpot_ms=TPOT_MS, truth=truth_path)
    with start_twin(args) as twin:
        spec = RunSpec(
            endpoint=Endpoint(base_url=twin.base_url, model="inferaudit-twin", api=api),
            workload=Workload(
                input_tokens=Length(lo=64, hi=64), output_tokens=Length(lo=OUTPUT, hi=OUTPUT)
            ),
            load=Load(concurrency=8, requests=48, warmup=8),
            workers=2,
        )
        outcome = run_verification(spec, tmp_path / "run", RunOptions(checks=(), sign=False))

    records = [r for r in read_records(tmp_path / "run" / "records.jsonl") if r.phase == "measure"]
    assert len(records) == 48 and all(r.ok for r in records)
    assert {r.usage_completion_tokens for r in records} == {OUTPUT}
    assert {r.content_chunks for r in records} == {OUTPUT}
    assert {r.finish_reason for r in records} == {"length"}

    truth = [orjson.loads(line) for line in truth_path.read_bytes().splitlines()]
    truth = [t for t in truth if t["stream"] and t["max_tokens"] == OUTPUT]
    true_ttft = np.median([(t["first_sent_ns"] - t["arrival_ns"]) / 1e6 for t in truth])
    true_tpot = np.median(
        [(t["sent_ns"][-1] - t["sent_ns"][0]) / 1e6 / (len(t["sent_ns"]) - 1) for t in truth]
    )
    assert {t["tokens_generated"] for t in truth} == {OUTPUT}

    summary = outcome.summary
    assert summary.output_tokens == 48 * OUTPUT
    # The twin's truth is itself close to its nominal settings...
    assert within(true_ttft, TTFT_MS) and within(true_tpot, TPOT_MS)
    # ...and the client measures what the twin really did: from the actual send, always; from
    # the scheduled send, within what the client's own send lag moved it, which the run's
    # error budget reports (a busy machine delays sends; past its allowance the run is invalid)
    stalls = Stalls.of(read_health(tmp_path / "run" / "health.jsonl"))
    assert stalls is not None
    spans = [(r.worker, r.sent_ns, r.first_content_ns) for r in records]
    stall_free = float(np.median([
        (end - start - stalls.stalled_ns(w, start, end)) / 1e6 for w, start, end in spans if end
    ]))  # fmt: skip
    sent_p50 = summary.ttft_from_sent_ms.p50
    assert sent_p50 is not None
    assert bracketed(sent_p50, stall_free, true_ttft), (sent_p50, stall_free, true_ttft)
    assert summary.error_budget is not None
    (move,) = [f for f in summary.error_budget.figures if f.figure == "ttft_p50"]
    shift = summary.ttft_ms.p50 - summary.ttft_from_sent_ms.p50
    assert move.moved_ms == pytest.approx(shift, abs=0.01)
    assert bracketed(summary.ttft_ms.p50 - move.moved_ms, stall_free, true_ttft)
    if move.moved_ms > move.allowed_ms:
        assert not summary.error_budget.within and summary.invalid_reasons
    assert within(summary.tpot_ms.p50, true_tpot), (summary.tpot_ms, true_tpot)
    assert within(summary.itl_ms.p50, true_tpot)
