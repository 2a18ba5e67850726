"""The ``server-counters`` check (``judge/server_counters.py``): crafted records and server
samples with exact known answers, the suite and verify wiring, and runs against the twin's
``/metrics`` (honest, ``shared-traffic``, ``cache-answers``)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from inferaudit.audit.run import RunOptions, run_verification
from inferaudit.judge.server_counters import check_server_counters
from inferaudit.judge.suite import ALL_CHECKS, plan_checks, recheck
from inferaudit.judge.verdict import Outcome, Verdict, format_verdict
from inferaudit.measure.protocol import Endpoint, Length, Load, RunSpec, Workload
from inferaudit.measure.records import WRITTEN_WHOLE, Record, read_records, write_records
from inferaudit.measure.rundir import RECORDS_FILE, SERVER_METRICS_FILE, VERDICTS_FILE
from inferaudit.measure.scrapes import Phase
from inferaudit.measure.server_metrics import Quantities, ServerSample, read_samples
from inferaudit.seal.recompute import recheck_verdicts
from inferaudit.twin.launch import start_twin
from inferaudit.twin.options import TwinOptions

MS = 1_000_000
BEFORE_T, SPAN = -5 * MS, 1 * MS  # the "before" reading: [-5 ms, -4 ms]
AFTER_T = 2000 * MS  # the "after" reading: [2000 ms, 2001 ms]
MORE = "the run did not have the endpoint alone"
FEWER = (
    "something other than this server answered part of the requests (a cache or a proxy in "
    "front of it)"
)


def rec(
    i: int,
    *,
    sent_ms: float | None = None,
    dur_ms: float = 100.0,
    tokens: int = 32,
    usage: bool = True,
    max_tokens: int | None = 32,
    phase: str = "measure",
    error: str | None = None,
) -> Record:
    """Request ``i``: sent at ``sent_ms`` (default ``10 + 100 i``), ``tokens`` content events."""
    sent = int((10 + 100 * i if sent_ms is None else sent_ms) * MS)
    done = sent + int(dur_ms * MS)
    return Record(
        id=i,
        phase=phase,
        scheduled_ns=sent,
        sent_ns=sent,
        first_content_ns=sent + MS,
        chunk_ns=[sent + MS + k for k in range(tokens)],
        chunk_chars=[3] * tokens,
        content_chunks=tokens,
        done_ns=done,
        status=200 if error is None else 503,
        error_class=error,
        finish_reason="length" if error is None else None,
        usage_completion_tokens=tokens if usage and error is None else None,
        max_tokens=max_tokens,
    )


def sample(
    phase: Phase,
    t_ns: int,
    *,
    tokens: float | None = None,
    requests: float | None = None,
    ok: bool = True,
    error: str | None = None,
    **more: float,
) -> ServerSample:
    q = Quantities(generated_tokens=tokens, requests_finished=requests, **more)
    return ServerSample(t_ns=t_ns, span_ns=SPAN, phase=phase, ok=ok, error=error, quantities=q)


def window(tokens: float, requests: float | None, **more: float) -> list[ServerSample]:
    """Before (counters at 1000 tokens / 40 requests from earlier traffic), one during, after
    with ``tokens`` / ``requests`` more."""
    return [
        sample("before", BEFORE_T, tokens=1000, requests=None if requests is None else 40),
        sample("during", 500 * MS, tokens=1100, requests=None if requests is None else 42),
        sample(
            "after",
            AFTER_T,
            tokens=1000 + tokens,
            requests=None if requests is None else 40 + requests,
            **more,
        ),
    ]


TEN = [rec(i) for i in range(10)]  # 10 requests x 32 tokens = 320, all inside the window


def judged(v: Verdict, outcome: Outcome) -> Verdict:
    assert v.verdict is outcome, format_verdict(v)
    assert v.check == "server-counters" and "\n" not in v.summary
    return v


# --- the rule on crafted runs ---------------------------------------------------------------


def test_matching_counters_pass_with_exact_numbers() -> None:
    samples = window(320, 10)
    samples[0] = sample(
        "before", BEFORE_T, tokens=1000, requests=40, prefix_cache_hits=50,
        prefix_cache_queries=200, prompt_tokens=200,
    )  # fmt: skip
    samples[2] = sample(
        "after", AFTER_T, tokens=1320, requests=50, prefix_cache_hits=170,
        prefix_cache_queries=520, prompt_tokens=520,
    )  # fmt: skip
    v = judged(check_server_counters(TEN, samples), Outcome.passed)
    assert v.summary == (
        "the server's counters match what this client received "
        "(320 generated tokens, 10 finished requests in the window)"
    )
    assert v.numbers == {
        "window_ms": [-5.0, 2000.0],
        "client": {
            "requests": 10,
            "generated_tokens": 320,
            "tokens_from_usage": 10,
            "tokens_from_stream": 0,
        },
        "uncertain": {"requests": 0, "resent": 0, "max_tokens": 0},
        "token_tolerance": 0.02,
        "reported": {
            "prompt_tokens": 320,
            "prefix_cache_hits": 120,
            "prefix_cache_queries": 320,
            "prefix_cache_hit_share": 0.375,
        },
        "note": "the server's own counters: recorded and compared, never a measurement",
        "counters": {
            "generated_tokens": {"client": 320, "server": 320, "band": [313.6, 326.4]},
            "finished_requests": {"client": 10, "server": 10, "band": [10, 10]},
        },
    }
    # JSON-ready as the verdicts file holds it
    assert orjson.loads(orjson.dumps(v.to_json()))["numbers"] == v.numbers


def test_more_on_the_server_fails_the_endpoint_was_shared() -> None:
    v = judged(check_server_counters(TEN, window(320 + 96, 13)), Outcome.failed)
    assert v.summary == (
        "the server counted 96 more generated tokens (and 3 more finished requests) than this "
        f"client received: {MORE}"
    )
    # requests alone: one more finished request than the client's is already too many
    v = judged(check_server_counters(TEN, window(320, 11)), Outcome.failed)
    assert (
        v.summary
        == f"the server counted 1 more finished requests than this client received: {MORE}"
    )


def test_fewer_on_the_server_fails_something_else_answered() -> None:
    v = judged(check_server_counters(TEN, window(320 - 96, 7)), Outcome.failed)
    assert v.summary == (
        "the server counted 96 fewer generated tokens (and 3 fewer finished requests) than "
        f"this client received: {FEWER}"
    )


def test_token_tolerance_is_two_percent_each_way() -> None:
    # 2% of 320 = 6.4 tokens: 326 and 314 pass, 327 and 313 fail
    for delta, outcome in ((326, Outcome.passed), (314, Outcome.passed),
                           (327, Outcome.failed), (313, Outcome.failed)):  # fmt: skip
        judged(check_server_counters(TEN, window(delta, 10)), outcome)
    v = check_server_counters(TEN, window(327, 10))
    assert (
        v.summary == f"the server counted 7 more generated tokens than this client received: {MORE}"
    )
    v = check_server_counters(TEN, window(313, 10))
    assert v.summary.startswith("the server counted 7 fewer generated tokens than this client")


def test_requests_in_flight_at_a_reading_widen_the_band() -> None:
    """Two requests straddle a reading (one the before reading, one the after reading): the
    server may have counted them, or part of their tokens; 8 are wholly inside (256 tokens)."""
    records = [
        rec(0, sent_ms=-4.5, tokens=32, max_tokens=40),  # sent during the before reading
        *[rec(i) for i in range(1, 9)],
        rec(9, sent_ms=1950, dur_ms=100, tokens=32, max_tokens=24),  # done after 2000 ms
    ]
    # tokens band: [256 - 5.12, 256 + max(5.12, 40 + 24)] = [250.88, 320]; requests [8, 10]
    v = judged(check_server_counters(records, window(256 + 64, 10)), Outcome.passed)
    assert v.numbers["uncertain"] == {"requests": 2, "resent": 0, "max_tokens": 64}
    assert v.numbers["counters"]["generated_tokens"]["band"] == [250.88, 320]
    assert v.numbers["counters"]["finished_requests"]["band"] == [8, 10]
    judged(check_server_counters(records, window(256 + 20, 9)), Outcome.passed)
    judged(check_server_counters(records, window(256, 8)), Outcome.passed)
    v = judged(check_server_counters(records, window(256 + 65, 10)), Outcome.failed)
    assert (
        v.summary
        == f"the server counted 65 more generated tokens than this client received: {MORE}"
    )
    v = judged(check_server_counters(records, window(256, 11)), Outcome.failed)
    assert v.summary.startswith("the server counted 3 more finished requests")
    # a request in flight without max_tokens leaves the token band open above (never "more")
    open_top = [*records[:9], rec(9, sent_ms=1950, max_tokens=None)]
    v = judged(check_server_counters(open_top, window(256 + 5000, 10)), Outcome.passed)
    assert v.numbers["counters"]["generated_tokens"]["band"] == [250.88, None]
    assert v.numbers["uncertain"]["max_tokens"] is None


def test_failed_and_cancelled_inside_are_uncertain_and_outside_ones_ignored() -> None:
    records = [
        *TEN,
        rec(10, sent_ms=1100, error="stream_truncated", tokens=5),  # inside, failed
        rec(11, sent_ms=1300, error="cancelled", tokens=3),  # inside, cut off by the client
        rec(12, sent_ms=-200, dur_ms=100),  # done before the before reading: outside
        rec(13, sent_ms=2002, dur_ms=50),  # sent after the after reading: outside
        # separately sent phases run on their own clocks, outside the scraped load
        rec(14, phase="probe"),
        rec(15, phase="audit"),
    ]
    v = judged(check_server_counters(records, window(320 + 64, 12)), Outcome.passed)
    assert v.numbers["client"]["requests"] == 10
    assert v.numbers["uncertain"] == {"requests": 2, "resent": 0, "max_tokens": 64}
    judged(check_server_counters(records, window(320, 10)), Outcome.passed)
    judged(check_server_counters(records, window(320, 13)), Outcome.failed)


def test_tokens_without_usage_are_the_streams_proof() -> None:
    records = [rec(i, usage=i % 2 == 0, tokens=20 + i) for i in range(4)]  # 20+21+22+23 = 86
    v = judged(check_server_counters(records, window(86, 4)), Outcome.passed)
    assert v.numbers["client"] == {
        "requests": 4,
        "generated_tokens": 86,
        "tokens_from_usage": 2,
        "tokens_from_stream": 2,
    }


def test_one_counter_exported_is_judged_alone() -> None:
    """llama.cpp's server exports tokens but no finished-request counter."""
    v = judged(check_server_counters(TEN, window(320, None)), Outcome.passed)
    assert v.summary == (
        "the server's counters match what this client received (320 generated tokens in the window)"
    )
    assert list(v.numbers["counters"]) == ["generated_tokens"]
    assert judged(check_server_counters(TEN, window(400, None)), Outcome.failed)


@pytest.mark.parametrize(
    ("samples", "summary"),
    [
        (
            [sample("before", BEFORE_T), sample("after", AFTER_T)],
            "the server exports neither a generated-token nor a finished-request counter",
        ),
        (
            [
                sample("before", BEFORE_T, ok=False, error="GET /metrics: connection refused"),
                sample("after", AFTER_T, tokens=1320, requests=50),
            ],
            "no usable server sample before the load (the scrape failed: GET /metrics: "
            "connection refused)",
        ),
        (
            [sample("before", BEFORE_T, tokens=1000, requests=40)],
            "no usable server sample after the load (none was taken)",
        ),
        ([], "no usable server sample before the load (none was taken)"),
        (
            [
                sample("before", BEFORE_T, tokens=1000, requests=40),
                sample("after", AFTER_T, tokens=10, requests=50),
            ],
            "the server's generated tokens counter went down over the window (1000 -> 10: "
            "restarted?)",
        ),
    ],
)
def test_unusable_samples_are_inconclusive_never_fail(
    samples: list[ServerSample], summary: str
) -> None:
    assert judged(check_server_counters(TEN, samples), Outcome.inconclusive).summary == summary


def test_no_request_inside_the_window_is_inconclusive() -> None:
    v = check_server_counters([rec(0, phase="probe")], window(320, 10))
    assert judged(v, Outcome.inconclusive).summary == (
        "no request of this client lies wholly inside the window"
    )


def test_window_uses_the_last_ok_before_and_the_first_ok_after() -> None:
    samples = [
        sample("before", -50 * MS, tokens=900, requests=35),
        sample("before", BEFORE_T, tokens=1000, requests=40),
        sample("before", -MS // 2, ok=False, error="timeout"),
        sample("after", AFTER_T, ok=False, error="timeout"),
        sample("after", AFTER_T + 10 * MS, tokens=1320, requests=50),
        sample("after", AFTER_T + 20 * MS, tokens=9999, requests=99),
    ]
    v = judged(check_server_counters(TEN, samples), Outcome.passed)
    assert v.numbers["window_ms"] == [-5.0, 2010.0]


# --- the suite and verify --------------------------------------------------------------------


def spec() -> RunSpec:
    return RunSpec(
        endpoint=Endpoint(base_url="http://127.0.0.1:1/v1", model="m"),
        workload=Workload(),
        load=Load(concurrency=1, requests=10),
    )


def test_default_on_after_errors_and_no_verdict_without_samples() -> None:
    assert ALL_CHECKS[-2:] == ("errors", "server-counters")
    assert plan_checks(spec()).names[-2:] == ("errors", "server-counters")
    names = ["errors", "server-counters"]
    assert [v.check for v in recheck(TEN, spec(), names=names)] == ["errors"]
    out = recheck(TEN, spec(), names=names, server=window(320, 10))
    assert [(v.check, v.verdict) for v in out] == [
        ("errors", Outcome.passed),
        ("server-counters", Outcome.passed),
    ]


def write_run(run_dir: Path, samples: list[ServerSample] | None, verdicts: list[Verdict]) -> None:
    run_dir.mkdir()
    (run_dir / "spec.json").write_bytes(
        spec()
        .model_copy(update={"checks": ("errors", "server-counters")})
        .model_dump_json()
        .encode()
    )
    write_records(run_dir / RECORDS_FILE, TEN)
    if samples is not None:
        (run_dir / SERVER_METRICS_FILE).write_bytes(b"".join(s.to_line() for s in samples))
    (run_dir / VERDICTS_FILE).write_bytes(orjson.dumps([v.to_json() for v in verdicts]))


def test_verify_recomputes_the_verdict_from_the_samples_file(tmp_path: Path) -> None:
    samples = window(320, 10)
    signed = recheck(TEN, spec(), names=["errors", "server-counters"], server=samples)
    write_run(tmp_path / "ok", samples, signed)
    ok, detail = recheck_verdicts(
        tmp_path / "ok", [v.to_json() for v in signed], None, None, v2=True
    )
    assert (ok, detail) == (True, "2 recomputed from the records: equal")
    # the samples say otherwise than the signed verdict: caught
    write_run(tmp_path / "edited", window(400, 10), signed)
    ok, detail = recheck_verdicts(
        tmp_path / "edited", [v.to_json() for v in signed], None, None, v2=True
    )
    assert not ok and detail.startswith(
        "verdict server-counters differs: signed pass (the server's counters match"
    )
    # the samples file removed: the signed verdict is no longer recomputed
    write_run(tmp_path / "gone", None, signed)
    ok, detail = recheck_verdicts(
        tmp_path / "gone", [v.to_json() for v in signed], None, None, v2=True
    )
    assert (ok, detail) == (
        False,
        "verdict server-counters is signed but not recomputed (its input file is missing)",
    )


# --- against the twin ------------------------------------------------------------------------

MODEL = "twin-m"


def twin_run(tmp_path: Path, *behave: str) -> tuple[Verdict, list[ServerSample]]:
    """``run_verification`` against a twin; its ``/metrics`` is scraped around the load (the
    run's own scraper, ``server_metrics="auto"``); the verdict recomputed from the files."""
    options = TwinOptions(model=MODEL, ttft_ms=20, tpot_ms=2, behave=behave)
    with start_twin(options) as twin:
        run_spec = RunSpec(
            endpoint=Endpoint(base_url=twin.base_url, model=MODEL),
            workload=Workload(
                input_tokens=Length(lo=32, hi=32), output_tokens=Length(lo=24, hi=24)
            ),
            load=Load(concurrency=4, requests=24),
            seed=3,
            workers=1,
            max_client_lag_p99_ms=1000.0,
        )
        run_dir = tmp_path / "run"
        run_verification(run_spec, run_dir, RunOptions(sign=False, server_metrics="auto"))
    samples = read_samples(run_dir / SERVER_METRICS_FILE)
    records = read_records(run_dir / RECORDS_FILE)
    out = recheck(records, run_spec, names=["server-counters"], server=samples)
    assert len(out) == 1
    return out[0], samples


def test_honest_twin_passes(tmp_path: Path) -> None:
    v, samples = twin_run(tmp_path)
    assert judged(v, Outcome.passed).summary == (
        "the server's counters match what this client received "
        "(576 generated tokens, 24 finished requests in the window)"
    )
    assert samples[0].phase == "before" and samples[-1].phase == "after"
    counters = v.numbers["counters"]
    assert counters["generated_tokens"]["server"] == 24 * 24
    assert counters["finished_requests"]["server"] == 24
    assert v.numbers["uncertain"]["requests"] == 0
    assert v.numbers["reported"]["prompt_tokens"] == 24 * 32


def test_shared_traffic_twin_fails_not_alone(tmp_path: Path) -> None:
    v, _ = twin_run(tmp_path, "shared-traffic:share=0.3")
    judged(v, Outcome.failed)
    assert "did not have the endpoint alone" in v.summary
    assert v.summary.startswith("the server counted 17")  # floor(0.3 x 576) = 172 or 173 more


def test_cache_answers_twin_fails_something_else_answered(tmp_path: Path) -> None:
    v, _ = twin_run(tmp_path, "cache-answers:share=0.3")
    judged(v, Outcome.failed)
    assert "fewer generated tokens" in v.summary
    assert "something other than this server answered" in v.summary


def test_a_request_resent_after_it_was_written_whole_widens_the_band() -> None:
    # The server closed a pooled connection after request 3 had been written whole and before
    # any answer (llama.cpp's server closes after each streamed response): the client sent it
    # again, and the server may have generated for both attempts (up to 32 + 32 tokens).
    resent = rec(3).model_copy(
        update={"retried": WRITTEN_WHOLE + "ServerDisconnectedError: Server disconnected"}
    )
    records = [*TEN[:3], resent, *TEN[4:]]
    v = judged(check_server_counters(records, window(320 + 32, 11)), Outcome.passed)
    assert v.numbers["uncertain"] == {"requests": 0, "resent": 1, "max_tokens": 32}
    # without the retry mark the same counters are 32 tokens and 1 request too many
    judged(check_server_counters(TEN, window(320 + 32, 11)), Outcome.failed)
    # a retry the server provably never read (its body never left whole) allows nothing
    unread = rec(3).model_copy(update={"retried": "ClientOSError: Can not write request body"})
    judged(check_server_counters([*TEN[:3], unread, *TEN[4:]], window(352, 11)), Outcome.failed)
