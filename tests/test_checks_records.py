"""Record-based integrity checks on hand-made records: exact known answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferaudit.judge.counting import proven_tokens
from inferaudit.judge.first_token import check_first_token
from inferaudit.judge.fluidity import check_fluidity, groups
from inferaudit.judge.legacy import bursts_v1, check_fluidity_v1
from inferaudit.judge.output_length import check_output_length
from inferaudit.judge.shedding import check_errors
from inferaudit.judge.token_accounting import check_token_accounting
from inferaudit.judge.verdict import Outcome, Verdict, format_verdict
from inferaudit.measure.health import HealthWindow
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


def window(
    start_ms: float, end_ms: float, *, healthy: bool = True, p99: float = 0.1
) -> HealthWindow:
    return HealthWindow(
        start_ns=int(start_ms * MS),
        end_ns=int(end_ms * MS),
        loop_delay_p99_ms=p99,
        loop_delay_max_ms=p99,
        send_lag_p99_ms=0.1,
        client_cpu_util=0.1,
        loadavg1=None,
        steal_share=None,
        coalesced_share=None,
        allowed_lag_ms=1.0,
        healthy=healthy,
        reason=None if healthy else f"loop delay p99 {p99} ms > 1 ms allowed",
    )


# healthy client windows over requests 0..119 (request i is sent at 1000 i ms)
HEALTHY = [window(1000 * k, 1000 * (k + 1)) for k in range(120)]


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
    v = check_first_token(rs, health=HEALTHY)
    assert v.verdict is Outcome.failed
    assert v.numbers["early_empty_chunks"] == 4
    assert v.numbers["lead_ms_p50"] == 45.0
    assert v.numbers["lead_fraction_of_ttft_p50"] == 0.9


def test_first_token_role_chunk_with_first_token_passes() -> None:
    rs = [rec(i, empty_lead_ms=0.2) for i in range(4)]
    v = check_first_token(rs, health=HEALTHY)
    assert v.verdict is Outcome.passed
    assert v.numbers["with_empty_first_chunk"] == 4
    assert v.numbers["early_empty_chunks"] == 0


def test_first_token_stream_must_reassemble() -> None:
    r = rec(0)
    broken = r.model_copy(update={"output_chars": r.output_chars + 3})
    assert check_first_token([broken]).verdict is Outcome.failed


def test_fluidity_v1_rule_is_kept_for_old_runs() -> None:
    steady = [rec(i, 32) for i in range(3)]
    assert check_fluidity_v1(steady).verdict is Outcome.passed
    # First token on time, the rest flushed 16 at a time in one write (same read timestamp).
    t0 = 50 * MS
    times = [t0] + [t0 + 160 * MS] * 16 + [t0 + 320 * MS] * 15
    burst = rec(0, 32, times=times)
    assert bursts_v1(burst) == [16, 15]
    v = check_fluidity_v1([burst])
    assert v.verdict is Outcome.failed
    assert v.numbers["burst_tokens"] == 31 and v.numbers["tokens"] == 32
    # v1 needed 8 events: 3 at a time passed (the weakness issue 8 item 6 fixes)
    three = rec(0, 31, times=[t0 + (k // 3) * 30 * MS for k in range(31)])
    assert check_fluidity_v1([three]).verdict is Outcome.passed


def test_fluidity_steady_passes_and_groups_of_three_fail() -> None:
    steady = [rec(i, 32) for i in range(3)]
    v = check_fluidity(steady)
    assert v.verdict is Outcome.passed and v.numbers["grouped_tokens"] == 0
    t0 = 50 * MS
    # tokens produced every 10 ms, held and flushed 3 at a time (one read timestamp per flush)
    three = [rec(i, 31, times=[t0 + (k // 3) * 30 * MS for k in range(31)]) for i in range(3)]
    assert groups(three[0]) == [3] * 10  # the 31st token arrives alone
    v = check_fluidity(three, health=HEALTHY)
    assert v.verdict is Outcome.failed, format_verdict(v)
    assert v.numbers["grouped_tokens"] == 90 and v.numbers["tokens"] == 93
    assert v.numbers["largest_group_tokens"] == 3
    pairs = [rec(i, 32, times=[t0 + (k // 2) * 20 * MS for k in range(32)]) for i in range(3)]
    assert check_fluidity(pairs, health=HEALTHY).verdict is Outcome.failed


def test_fluidity_fast_honest_stream_is_not_grouped() -> None:
    # One token every 0.5 ms: gaps below the 1 ms tick, but not below a quarter of the TPOT.
    r = [rec(i, 64, gap_ms=0.5) for i in range(3)]
    assert groups(r[0]) == []
    assert check_fluidity(r).verdict is Outcome.passed


def test_fluidity_multi_token_events_are_not_grouped() -> None:
    r = [rec(i, 8, usage=32) for i in range(3)]  # 4 tokens per event, evenly spaced
    assert groups(r[0]) == []
    assert check_fluidity(r).verdict is Outcome.passed


def test_fluidity_below_the_limit_passes() -> None:
    # 1 pair in 16 gaps of each request: 2 of 17 tokens (12%) grouped, under 20%
    t0 = 50 * MS
    times = [t0 + k * 10 * MS for k in range(16)]
    rs = [rec(i, 17, times=sorted([*times, times[5] + MS // 10])) for i in range(3)]
    v = check_fluidity(rs, health=HEALTHY)
    assert v.verdict is Outcome.passed and v.numbers["grouped_share"] == round(6 / 51, 6)


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


def test_cancelled_requests_are_not_the_endpoints_failures() -> None:
    # Requests the client cut off at the end rule are counted apart; stalls are the endpoint's.
    rs = [rec(0), rec(1, error="cancelled"), rec(2, error="cancelled"), rec(3)]
    v = check_errors(rs)
    assert v.verdict is Outcome.passed
    assert (v.numbers["measured"], v.numbers["failed"], v.numbers["cancelled"]) == (2, 0, 2)
    stalled = check_errors([rec(0), rec(1, error="stall_timeout"), rec(2, error="cancelled")])
    assert stalled.verdict is Outcome.failed
    assert (stalled.numbers["failed"], stalled.numbers["shed_or_cut"]) == (1, 1)
    assert "cancelled" not in check_errors([rec(0)]).numbers


def split_rec(i: int, *, fragment_ms: float = 1.0, ttft_ms: float = 50.0, n: int = 8) -> Record:
    """A record whose first event is a fragment (" w") of its first token (" w00")."""
    r = rec(i, n, ttft_ms=ttft_ms)
    sent = r.sent_ns or 0
    first = sent + int(fragment_ms * MS)
    return r.model_copy(
        update={
            "first_chunk_ns": first,
            "first_content_ns": first,
            "chunk_ns": [first, *r.chunk_ns],
            "chunk_chars": [2, 2, *r.chunk_chars[1:]],
            "content_chunks": n + 1,
        }
    )


def test_first_token_fragment_fails_with_tokenizer(word_tokenizer: Path) -> None:
    tok = load_tokenizer(word_tokenizer)
    v = check_first_token([split_rec(i) for i in range(4)], tokenizer=tok, health=HEALTHY)
    assert v.verdict is Outcome.failed, format_verdict(v)
    assert v.numbers["early_fragments"] == 4 and v.numbers["fragment_first_events"] == 4
    assert v.numbers["ttft_first_event_ms_p50"] == 1.0
    assert v.numbers["ttft_whole_token_ms_p50"] == 50.0  # the first whole token: event 2
    assert v.summary.startswith("the first event is a fragment of the first token, sent early")
    honest = check_first_token([rec(i) for i in range(4)], tokenizer=tok, health=HEALTHY)
    assert honest.verdict is Outcome.passed, format_verdict(honest)
    assert honest.numbers["fragment_first_events"] == 0
    assert honest.numbers["ttft_whole_token_ms_p50"] == 50.0


def test_first_token_fragment_not_early_is_not_a_fake(word_tokenizer: Path) -> None:
    # A fragment 45 ms in, the rest 5 ms later: TTFT is not faked (re-tokenization drift).
    rs = [split_rec(i, fragment_ms=45.0) for i in range(4)]
    v = check_first_token(rs, tokenizer=load_tokenizer(word_tokenizer), health=HEALTHY)
    assert v.verdict is Outcome.passed, format_verdict(v)
    assert v.numbers["fragment_first_events"] == 4 and v.numbers["early_fragments"] == 0


def test_first_token_early_first_event_without_tokenizer_is_flagged() -> None:
    v = check_first_token([split_rec(i) for i in range(4)])
    assert v.verdict is Outcome.inconclusive, format_verdict(v)
    assert v.numbers["early_first_events"] == 4
    assert v.numbers["ttft_second_event_ms_p50"] == 50.0
    assert "TTFT 1.0 ms to the first event, 50.0 ms to the second" in v.summary
    assert "--tokenizer" in v.summary


def test_first_token_busy_client_is_inconclusive_never_fail(word_tokenizer: Path) -> None:
    tok = load_tokenizer(word_tokenizer)
    rs = [split_rec(i) for i in range(4)]  # request i runs over [1000 i, 1000 i + 130] ms
    busy = [window(1000 * k, 1000 * (k + 1), healthy=False, p99=40.0) for k in range(4)]
    v = check_first_token(rs, tokenizer=tok, health=busy)
    assert v.verdict is Outcome.inconclusive, format_verdict(v)
    assert v.summary.startswith("inconclusive — the client was busy: early first-token fragments")
    assert v.numbers["judged_requests"] == 0 and v.numbers["busy_requests"] == 4
    assert v.numbers["busy_windows"] == 4 and v.numbers["loop_delay_p99_ms_max"] == 40.0
    healthy = [window(1000 * k, 1000 * (k + 1)) for k in range(4)]
    assert check_first_token(rs, tokenizer=tok, health=healthy).verdict is Outcome.failed
    # a span that no window covers is not judged either
    assert check_first_token(rs, tokenizer=tok, health=healthy[:1]).verdict is Outcome.inconclusive
    lagging = check_first_token(rs, tokenizer=tok, health=healthy, lag_problem="client fell behind")
    assert lagging.verdict is Outcome.inconclusive
    assert "the run is invalid for client lag" in lagging.summary


def test_fluidity_busy_client_is_inconclusive_never_fail() -> None:
    t0 = 50 * MS
    three = [
        rec(i, 31, times=[1000 * MS * i + t0 + (k // 3) * 30 * MS for k in range(31)])
        for i in range(3)
    ]
    healthy = [window(1000 * k, 1000 * (k + 1)) for k in range(3)]
    assert check_fluidity(three, health=healthy).verdict is Outcome.failed
    # healthy windows, but a loop late by 25 ms for 1% of the time could merge 10 ms tokens
    stalling = [window(1000 * k, 1000 * (k + 1), p99=25.0) for k in range(3)]
    v = check_fluidity(three, health=stalling)
    assert v.verdict is Outcome.inconclusive, format_verdict(v)
    assert v.numbers["judged_requests"] == 0 and v.numbers["all_requests_grouped_share"] == 0.967742
    busy = [window(1000 * k, 1000 * (k + 1), healthy=False) for k in range(3)]
    assert check_fluidity(three, health=busy).verdict is Outcome.inconclusive
    lag = check_fluidity(three, health=healthy, lag_problem="client fell behind its schedule")
    assert lag.verdict is Outcome.inconclusive
    steady = [rec(i, 32) for i in range(3)]
    assert check_fluidity(steady, health=busy).verdict is Outcome.passed


def test_token_accounting_sign_test_catches_one_token_on_every_answer(
    word_tokenizer: Path,
) -> None:
    tok = load_tokenizer(word_tokenizer)
    # 120 answers of 125 tokens, usage +1 on every one: 0.8%, inside the 1% tolerance
    inflated = [rec(i, 125, asked=125, usage=126) for i in range(120)]
    v = check_token_accounting(inflated, tokenizer=tok)
    assert v.verdict is Outcome.failed, format_verdict(v)
    assert v.numbers["relative_difference"] == 0.008
    assert v.numbers["sign_test"]["above"] == 120  # type: ignore[index]
    assert v.summary.startswith("usage exceeds the tokens the stream proves on 120 of 120")
    # v1 rule: inside the tolerance, passes
    old = check_token_accounting(inflated, tokenizer=tok, legacy=True)
    assert old.verdict is Outcome.passed and "sign_test" not in old.numbers
    # honest but for +1 on 10 of 120 answers (drift-like): passes
    mixed = [rec(i, 125, asked=125, usage=126 if i < 10 else 125) for i in range(120)]
    assert check_token_accounting(mixed, tokenizer=tok).verdict is Outcome.passed


def test_proven_tokens_is_the_stream_lower_bound(word_tokenizer: Path) -> None:
    tok = load_tokenizer(word_tokenizer)
    assert proven_tokens(rec(0, 8, usage=12)) == 8  # events prove 8; usage claims 12
    assert proven_tokens(rec(0, 8, usage=6)) == 6  # the server says fewer: credit fewer
    assert proven_tokens(rec(0, 8, usage=12), tok) == 8
    v = check_token_accounting([rec(0, 8, usage=12)])
    assert v.numbers["proven_tokens"] == 8 and v.numbers["usage_tokens"] == 12


def test_timing_findings_without_health_data_never_fail(word_tokenizer: Path) -> None:
    tok = load_tokenizer(word_tokenizer)
    v = check_first_token([split_rec(i) for i in range(4)], tokenizer=tok)
    assert v.verdict is Outcome.inconclusive, format_verdict(v)
    assert v.summary == (
        "inconclusive — the client was busy: early first-token fragments on 4 of 4 requests; "
        "no client health data was recorded to rule client noise out"
    )
    assert v.numbers["client_health"] == "not recorded: every request judged"
    t0 = 50 * MS
    three = [rec(i, 31, times=[t0 + (k // 3) * 30 * MS for k in range(31)]) for i in range(3)]
    f = check_fluidity(three)
    assert f.verdict is Outcome.inconclusive and "no client health data" in f.summary
    # a stream that does not reassemble is no timing finding: it fails without health data
    r = rec(0)
    assert check_first_token([r.model_copy(update={"output_chars": 1})]).verdict is Outcome.failed
