"""Record-based integrity checks on hand-made records: exact known answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferaudit.judge.first_token import check_first_token
from inferaudit.judge.fluidity import bursts, check_fluidity
from inferaudit.judge.output_length import check_output_length
from inferaudit.judge.shedding import check_errors
from inferaudit.judge.token_accounting import check_token_accounting
from inferaudit.judge.verdict import Outcome, Verdict, format_verdict
from inferaudit.measure.protocol import Endpoint, Load, RunSpec, Workload
from inferaudit.measure.records import Record
from inferaudit.measure.tokenizer import load_tokenizer

MS = 1_000_000


def spec(enforce: bool = True) -> RunSpec:
    return RunSpec(
        endpoint=Endpoint(base_url="http://127.0.0.1:1/v1", model="m"),
        workload=Workload(enforce_output_length=enforce),
        load=Load(concurrency=1, requests=4),
    )


def rec(
    i: int,
    n: int = 8,
    *,
    asked: int = 8,
    usage: int | None = None,
    finish: str = "length",
    gap_ms: float = 10.0,
    ttft_ms: float = 50.0,
    times: list[int] | None = None,
    empty_lead_ms: float | None = None,
    phase: str = "measure",
    error: str | None = None,
) -> Record:
    """A record of ``n`` one-word tokens (" wNN"), evenly spaced unless ``times`` given."""
    sent = 1000 * MS * i
    first = sent + int(ttft_ms * MS)
    chunk_ns = times if times is not None else [first + int(k * gap_ms * MS) for k in range(n)]
    words = [f" w{k:02d}" for k in range(n)]
    text = "".join(words)
    if error is not None:
        return Record(id=i, phase=phase, scheduled_ns=sent, sent_ns=sent, error_class=error)
    return Record(
        id=i,
        phase=phase,
        scheduled_ns=sent,
        sent_ns=sent,
        first_chunk_ns=(first - int(empty_lead_ms * MS)) if empty_lead_ms is not None else first,
        first_content_ns=chunk_ns[0],
        chunk_ns=chunk_ns,
        chunk_chars=[len(w) for w in words],
        done_ns=chunk_ns[-1] + MS,
        status=200,
        finish_reason=finish,
        usage_completion_tokens=n if usage is None else usage,
        content_chunks=n,
        empty_chunks_before_content=1 if empty_lead_ms is not None else 0,
        output_chars=len(text),
        max_tokens=asked,
        output_text=text,
    )


def test_format_verdict_one_line() -> None:
    v = Verdict("caching", Outcome.failed, "repeated prompts 34% faster than unique (limit 10%)")
    assert format_verdict(v) == (
        "caching: repeated prompts 34% faster than unique (limit 10%) — FAIL"
    )
    assert Verdict.from_json(v.to_json()) == v
    assert v.to_json()["verdict"] == "fail"


def test_output_length_exact_passes() -> None:
    v = check_output_length([rec(i) for i in range(4)], spec())
    assert v.verdict is Outcome.passed
    assert v.numbers["exact"] == 4 and v.numbers["short"] == 0
    assert v.numbers["count_basis"] == {"events+usage": 4}


def test_output_length_inflated_usage_is_not_over_length() -> None:
    # 8 events (lower bound 8) with usage 10: not "more tokens than asked" — an accounting issue.
    v = check_output_length([rec(0, 8, usage=10)], spec())
    assert v.numbers["over"] == 0
    assert v.verdict is Outcome.passed


def test_output_length_early_stop_fails() -> None:
    rs = [rec(0), rec(1, 5, finish="stop"), rec(2, 5, finish="stop"), rec(3)]
    v = check_output_length(rs, spec())
    assert v.verdict is Outcome.failed
    assert v.numbers["short"] == 2
    assert v.numbers["finish_reasons"] == {"length": 2, "stop": 2}
    assert v.numbers["ratio_to_asked"]["mean"] == pytest.approx((1 + 5 / 8 + 5 / 8 + 1) / 4)
    assert v.summary.startswith("2 of 4 requests stopped short of the enforced length")


def test_output_length_lying_finish_fails_even_unenforced() -> None:
    rs = [rec(0), rec(1, 5, finish="length")]
    v = check_output_length(rs, spec(enforce=False))
    assert v.verdict is Outcome.failed
    assert v.numbers["short_with_finish_length"] == 1


def test_output_length_unenforced_reports_distribution() -> None:
    rs = [rec(0), rec(1, 4, finish="stop")]
    v = check_output_length(rs, spec(enforce=False))
    assert v.verdict is Outcome.passed
    assert v.numbers["ratio_to_asked"]["mean"] == 0.75


def test_output_length_uses_tokenizer_over_usage(word_tokenizer: Path) -> None:
    # usage claims 8 but the text holds 5 words (upper bound 5 + 1 drift): short, and a lie.
    rs = [rec(0, 5, usage=8, finish="length")]
    tok = load_tokenizer(word_tokenizer)
    v = check_output_length(rs, spec(), tokenizer=tok)
    assert v.verdict is Outcome.failed
    assert v.numbers["count_basis"] == {"events+usage+tokenizer": 1}
    assert v.numbers["short_with_finish_length"] == 1
    # One token short after re-tokenization (4 multi-token events, no usage): within the drift.
    text = " w00 w01 w02 w03 w04 w05 w06"
    drift = [
        rec(0).model_copy(
            update={"output_text": text, "usage_completion_tokens": None, "content_chunks": 4}
        )
    ]
    assert check_output_length(drift, spec(), tokenizer=tok).verdict is Outcome.passed


def test_token_accounting_exact_with_tokenizer(word_tokenizer: Path) -> None:
    tok = load_tokenizer(word_tokenizer)
    good = check_token_accounting([rec(i) for i in range(4)], tokenizer=tok)
    assert good.verdict is Outcome.passed
    assert good.numbers["client_tokens"] == 32 and good.numbers["exact_requests"] == 4
    bad = check_token_accounting([rec(i, 8, usage=10) for i in range(4)], tokenizer=tok)
    assert bad.verdict is Outcome.failed
    assert bad.numbers["relative_difference"] == 0.25
    assert bad.summary.startswith("server usage reports 25% more tokens than it delivered")


def test_token_accounting_without_tokenizer_bounds() -> None:
    ok = check_token_accounting([rec(i) for i in range(3)])
    assert ok.verdict is Outcome.passed
    # usage above the events, within max_tokens: multi-token events or inflation — undecidable.
    inflated = check_token_accounting([rec(i, 8, asked=16, usage=10) for i in range(3)])
    assert inflated.verdict is Outcome.inconclusive
    assert "give --tokenizer" in inflated.summary
    assert inflated.numbers["usage_over_events"] == 0.25
    # usage above max_tokens while the events stay within it: inflation.
    capped = check_token_accounting([rec(i, 8, asked=8, usage=10) for i in range(3)])
    assert capped.verdict is Outcome.failed
    assert capped.numbers["usage_above_max_tokens"] == 3
    assert capped.summary.startswith("usage claims more tokens than max_tokens allowed on 3 of 3")
    under = check_token_accounting([rec(0, 8, usage=6)])
    assert under.verdict is Outcome.failed
    assert under.numbers["usage_below_events"] == 1
    nousage = Record(id=0, scheduled_ns=0, content_chunks=3, output_chars=3)
    assert check_token_accounting([nousage]).verdict is Outcome.inconclusive


def test_first_token_role_chunk_early_fails() -> None:
    rs = [rec(i, empty_lead_ms=45.0) for i in range(4)]
    v = check_first_token(rs)
    assert v.verdict is Outcome.failed
    assert v.numbers["early_empty_chunks"] == 4
    assert v.numbers["lead_ms_p50"] == 45.0
    assert v.numbers["lead_fraction_of_ttft_p50"] == 0.9


def test_first_token_role_chunk_with_first_token_passes() -> None:
    rs = [rec(i, empty_lead_ms=0.2) for i in range(4)]
    v = check_first_token(rs)
    assert v.verdict is Outcome.passed
    assert v.numbers["with_empty_first_chunk"] == 4
    assert v.numbers["early_empty_chunks"] == 0


def test_first_token_stream_must_reassemble() -> None:
    r = rec(0)
    broken = r.model_copy(update={"output_chars": r.output_chars + 3})
    assert check_first_token([broken]).verdict is Outcome.failed


def test_fluidity_steady_passes_and_bursts_fail() -> None:
    steady = [rec(i, 32) for i in range(3)]
    assert check_fluidity(steady).verdict is Outcome.passed
    # First token on time, the rest flushed 16 at a time in one write (same read timestamp).
    t0 = 50 * MS
    times = [t0] + [t0 + 160 * MS] * 16 + [t0 + 320 * MS] * 15
    burst = rec(0, 32, times=times)
    assert bursts(burst) == [16, 15]
    v = check_fluidity([burst])
    assert v.verdict is Outcome.failed
    assert v.numbers["burst_tokens"] == 31 and v.numbers["tokens"] == 32
    assert v.numbers["largest_burst_tokens"] == 16


def test_fluidity_fast_honest_stream_is_not_a_burst() -> None:
    # One token every 0.5 ms: gaps below the 1 ms tick, but not below a quarter of the TPOT.
    r = rec(0, 64, gap_ms=0.5)
    assert bursts(r) == []
    assert check_fluidity([r]).verdict is Outcome.passed


def test_fluidity_multi_token_events_are_not_bursts() -> None:
    r = rec(0, 8, usage=32)  # 4 tokens per event, evenly spaced: speculative decoding
    assert bursts(r) == []
    assert check_fluidity([r]).verdict is Outcome.passed


def test_errors_per_phase() -> None:
    rs = [rec(0), rec(1, error="http_429"), rec(2, error="stream_truncated"), rec(3)]
    rs.append(rec(4, phase="probe", error="timeout"))
    v = check_errors(rs)
    assert v.verdict is Outcome.failed
    assert v.numbers["failed"] == 2 and v.numbers["shed_or_cut"] == 2
    assert v.numbers["by_phase"]["probe"] == {"requests": 1, "errors": {"timeout": 1}}
    assert "2 of 4 requests failed under load (50%" in v.summary
    ok = check_errors([rec(0), rec(1), rec(4, phase="probe", error="timeout")])
    assert ok.verdict is Outcome.passed
    assert "1 failed outside the measured phase" in ok.summary
