"""Client self-test (DESIGN §6.2): 2x the planned load against a local fast server; a run is
refused, in one line, when the client cannot keep up; the result is part of meta.json."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from fakes import FakeServer, closed_port
from inferaudit.audit.run import RunOptions, run_verification
from inferaudit.errors import ClientOverloadError
from inferaudit.measure.load.sse import SSEParser
from inferaudit.measure.protocol import (
    Api,
    Endpoint,
    ErrorBudget,
    Length,
    Load,
    RunSpec,
    Workload,
)
from inferaudit.measure.selftest import SelfTestResult, run_self_test, sse_events


def spec(
    url: str, load: Load, max_lag_ms: float | None, api: Api = Api.completions, model: str = "m"
) -> RunSpec:
    return RunSpec(
        endpoint=Endpoint(base_url=url, model=model, api=api),
        workload=Workload(input_tokens=Length(lo=16, hi=16), output_tokens=Length(lo=8, hi=8)),
        load=load,
        max_client_lag_p99_ms=max_lag_ms,
    )


def test_sse_events_known_answer() -> None:
    events = sse_events("m", chat=False, tokens=2)
    assert events[0] == (
        b'data: {"id":"selftest","object":"text_completion","model":"m",'
        b'"choices":[{"index":0,"text":" w0","finish_reason":null}]}\n\n'
    )
    assert events[-1] == b"data: [DONE]\n\n"
    parsed = SSEParser().feed(b"".join(events))
    chat = [orjson.loads(e) for e in SSEParser().feed(b"".join(sse_events("m", True, 3)))[:-1]]
    assert len(parsed) == 5 and parsed[-1] == b"[DONE]"
    assert [c["choices"][0]["delta"].get("content") for c in chat[:4]] == [
        " w0",
        " w1",
        " w2",
        None,
    ]
    assert chat[-1]["usage"]["completion_tokens"] == 3


def judged_by_its_bound(result: SelfTestResult, bound_ms: float) -> None:
    """The verdict is the rule applied to what was measured, whatever this machine's speed: a
    lag was measured, the stated bound was applied, and it passed iff the lag is within it."""
    assert result.lag_p99_ms is not None and result.lag_p99_ms >= 0
    assert result.lag_max_ms is not None and result.lag_max_ms >= result.lag_p99_ms
    assert result.max_lag_p99_ms == bound_ms
    assert result.passed == (result.lag_p99_ms <= bound_ms)
    verdict = "<=" if result.passed else ">"
    assert f"client lag p99 was {result.lag_p99_ms:.3g} ms {verdict} {bound_ms:.3g} ms" in (
        result.message()
    )


def test_runs_at_twice_a_modest_rate() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"  # never contacted: the self-test has its own
    result = run_self_test(spec(url, Load(rate=5.0, requests=3), 100.0), duration_s=1.5)
    assert result.mode == "open"
    assert (result.planned, result.tested) == (5.0, 10.0)
    assert result.failed == 0 and result.requests > 0
    assert result.output_tokens == 8 and result.workers == 1
    judged_by_its_bound(result, 100.0)
    assert result.server_cpu_s > 0 and result.client_cpu_s > 0
    assert result.message().startswith(
        "client self-test: at 2x the planned load (10 req/s) client lag p99 was"
    )


def test_closed_loop_chat() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    s = spec(url, Load(concurrency=2, requests=3), 100.0, api=Api.chat)
    result = run_self_test(s, duration_s=1.0)
    assert result.mode == "closed" and result.tested == 4.0
    # the 4 slots each start a request at once (closed loop): at least 4 were sent
    assert result.failed == 0 and result.requests >= 4
    judged_by_its_bound(result, 100.0)


def test_a_server_that_cannot_start_is_the_client_overloaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A machine too busy to start the self-test's own server in time: the client's fault, in
    one line (ClientOverloadError), never a crash. 0.1 ms is less than any spawn takes."""
    import inferaudit.measure.selftest as selftest

    monkeypatch.setattr(selftest, "SERVER_START_TIMEOUT_S", 1e-4)
    url = f"http://127.0.0.1:{closed_port()}/v1"
    with pytest.raises(ClientOverloadError) as caught:
        run_self_test(spec(url, Load(rate=5.0, requests=3), 100.0), duration_s=1.0)
    assert str(caught.value) == (
        "client self-test: its local server did not start within 0.0001 s "
        "(this machine is too busy to test itself)"
    )


def test_execute_refuses_when_the_client_cannot_keep_up(tmp_path: Path) -> None:
    with FakeServer() as srv:
        impossible = spec(srv.base_url, Load(rate=5.0, requests=3), 1e-6, model="fake-model")
        with pytest.raises(ClientOverloadError) as info:
            options = RunOptions(sign=False, checks=(), self_test=True)
            run_verification(impossible, tmp_path / "r", options)
        assert srv.seen.completions == 0  # refused before any request reached the endpoint
    message = info.value.diagnostics()
    assert message.startswith("client self-test: at 2x the planned load (10 req/s) client lag")
    assert message.endswith(
        "> 1e-06 ms (the protocol's max_client_lag_p99_ms); use more --workers or a bigger "
        "client machine"
    )
    meta = orjson.loads((tmp_path / "r" / "meta.json").read_bytes())
    assert meta["self_test"]["passed"] is False and meta["self_test"]["tested"] == 10.0
    assert meta["models"]["data"][0]["id"] == "fake-model"  # the preflight came first
    assert not (tmp_path / "r" / "records.jsonl").exists()


def test_cli_refuses_in_one_line(tmp_path: Path) -> None:
    with FakeServer() as srv:
        proc = subprocess.run(
            [sys.executable, "-m", "inferaudit", "run", "--endpoint", srv.base_url,
             "--model", "fake-model", "--rate", "5", "--requests", "3", "--workers", "1",
             "--max-lag-ms", "0.000001", "--out", str(tmp_path / "r")],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "INFERAUDIT_HOME": str(tmp_path / "home")},
        )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: client self-test: at 2x the planned load (10 req/s)")
    assert "Traceback" not in proc.stdout + proc.stderr


def test_budget_bound_follows_the_ttft_known_before_the_run() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    s = spec(url, Load(rate=5.0, requests=3), None)  # no fixed bound: the error budget rules
    # a 1e9 ms TTFT allows 2e7 ms of lag: judged, and within it
    wide = run_self_test(s, figure_ms=1e9, duration_s=1.0)
    assert wide.passed and wide.max_lag_p99_ms == 2e7 and wide.figure_ms == 1e9
    assert wide.bound_basis == "error budget 2% of TTFT p50 1e+09 ms, at least 1 ms"
    # an impossible budget: a 1e-7 share with a 1e-6 ms floor of a 1 ms TTFT
    tight = s.model_copy(update={"error_budget": ErrorBudget(share=1e-7, floor_ms=1e-6)})
    refused = run_self_test(tight, figure_ms=1.0, duration_s=1.0)
    assert not refused.passed and refused.max_lag_p99_ms == 1e-6
    assert "(error budget 0% of TTFT p50 1 ms, at least 1e-06 ms)" in refused.message()
    # no TTFT known: not judged here (the run's validity decides); says what TTFT it can carry
    blind = run_self_test(tight, duration_s=1.0)
    assert blind.passed and blind.max_lag_p99_ms is None
    assert blind.lag_p99_ms is not None and blind.min_figure_ms is not None
    assert blind.min_figure_ms == pytest.approx(blind.lag_p99_ms / 1e-7, rel=1e-3)
    assert "no TTFT known before the run, so the run's own validity decides" in blind.message()
