"""Client health windows: the sampler's weighting, the parent's merge, health.jsonl in a run."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

from fakes import Behaviour, FakeServer
from inferaudit.errors import ConfigError
from inferaudit.measure.health import (
    HealthRecorder,
    HealthSample,
    HealthSampler,
    HealthWindow,
    read_health,
)
from inferaudit.measure.load.client import ReadMeter
from inferaudit.measure.load.runner import run_load
from inferaudit.measure.protocol import (
    Endpoint,
    ErrorBudget,
    Length,
    Load,
    RunSpec,
    Workload,
)
from inferaudit.measure.records import Record

MS = 1_000_000
S = 1_000_000_000


def spec(
    base_url: str = "http://127.0.0.1:9/v1", load: Load | None = None, **kw: object
) -> RunSpec:
    return RunSpec(
        endpoint=Endpoint(base_url=base_url, model="fake-model"),
        load=load or Load(concurrency=1, requests=1),
        workload=Workload(input_tokens=Length(lo=8, hi=8), output_tokens=Length(lo=4, hi=4)),
        **kw,  # type: ignore[arg-type]
    )


def test_a_late_wakeup_counts_in_every_window_it_spans() -> None:
    got: list[HealthSample] = []
    epoch = 10 * S
    sampler = HealthSampler(0, epoch, S, ReadMeter(), got.append)
    tick = 10 * MS
    # due at 0.99 s of the run, woken at 1.3 s: 310 ms late; the stretch since the last wake
    # (0.98 s) lasted 320 ms and touches windows 0 and 1: it counts, whole, in both
    sampler._late(epoch + 990 * MS, epoch + 1300 * MS, tick)
    assert [s.window for s in got] == [0]  # the window that ended; window 1 is current
    assert got[0].loop_delays_ms == ((310.0, 320.0),)
    # a 2.5 s stall weighs one window's length in each of the windows it touches
    sampler._late(epoch + 1310 * MS, epoch + 3800 * MS, tick)
    sampler.flush(upto=4)
    assert [s.window for s in got] == [0, 1, 2, 3]
    assert got[1].loop_delays_ms == ((310.0, 320.0), (2490.0, 1000.0))
    assert got[2].loop_delays_ms == got[3].loop_delays_ms == ((2490.0, 1000.0),)


def test_send_lag_p99_is_nearest_rank() -> None:
    got: list[HealthSample] = []
    sampler = HealthSampler(0, time.perf_counter_ns(), 3600 * S, ReadMeter(), got.append)
    for lag_ms in range(1, 201):  # 1..200 ms: nearest-rank p99 is the 198th value
        sampler.lag(lag_ms * MS)
    sampler.flush()
    assert got[0].lag_p99_ms == 198.0


def _sample(worker: int, window: int, delays: tuple[tuple[float, float], ...], **kw: object):
    fields = {"lag_p99_ms": None, "cpu_s": 0.0, "chunks": 0, "coalesced": 0} | kw
    return HealthSample(worker=worker, window=window, loop_delays_ms=delays, **fields)  # type: ignore[arg-type]


def test_the_parent_merges_the_worst_worker_and_judges_by_the_budget(tmp_path: Path) -> None:
    path = tmp_path / "health.jsonl"
    epoch = 100 * S
    # budget 2% of TTFT p50, at least 1 ms; TTFT p50 (from the actual send) = 500 ms -> 10 ms
    rec = HealthRecorder(path, spec(), epoch, [0, 1], S)
    quiet = ((0.5, 980.0), (2.0, 20.0))  # late by 2 ms for 2% of the time: p99 = 2 ms
    stalled = ((0.5, 600.0), (400.0, 400.0))  # a 400 ms stall: p99 = 400 ms
    rec.sample(_sample(0, 0, quiet, lag_p99_ms=3.0, cpu_s=0.2, chunks=90, coalesced=9))
    rec.sample(_sample(1, 0, quiet, lag_p99_ms=4.0, cpu_s=0.3, chunks=10, coalesced=1))
    rec.sample(_sample(0, 1, quiet, lag_p99_ms=12.0))
    rec.sample(_sample(1, 1, stalled))
    rec.tick(epoch + 2 * S + 1)
    assert rec.windows == [] and not path.exists()  # no TTFT yet: the windows wait for one
    rec.record(Record(id=0, scheduled_ns=0, sent_ns=10 * MS, first_content_ns=510 * MS))
    rec.tick(epoch + 2 * S + 2)
    w0, w1 = read_health(path)
    assert (w0.start_ns, w0.end_ns, w1.start_ns, w1.end_ns) == (0, S, S, 2 * S)
    assert (w0.loop_delay_p99_ms, w0.loop_delay_max_ms, w0.send_lag_p99_ms) == (2.0, 2.0, 4.0)
    assert w0.coalesced_share == pytest.approx(10 / 100)
    assert w0.allowed_lag_ms == 10.0 and w0.healthy and w0.reason is None
    assert (w1.loop_delay_p99_ms, w1.loop_delay_max_ms, w1.send_lag_p99_ms) == (400.0, 400.0, 12.0)
    assert not w1.healthy and w1.reason is not None
    assert w1.reason == (
        "loop delay p99 400 ms and send lag p99 12 ms > 10 ms allowed "
        "(error budget 2% of TTFT p50 500 ms, at least 1 ms)"
    )
    assert rec.close(epoch + 2 * S + 3) == [w0, w1]


def test_a_silent_worker_makes_its_window_unhealthy(tmp_path: Path) -> None:
    epoch = 0
    s = spec(max_client_lag_p99_ms=5.0)  # a fixed bound: windows are judged at once
    rec = HealthRecorder(None, s, epoch, [0, 1], S)
    rec.sample(_sample(0, 0, ((0.1, 1000.0),)))
    rec.tick(2 * S)
    assert rec.windows == []  # worker 1 may just be late
    rec.tick(3 * S)
    [w0] = rec.windows
    assert not w0.healthy and w0.reason == "worker 1 sent no health sample (blocked or gone)"
    assert w0.allowed_lag_ms == 5.0


def test_read_health(tmp_path: Path) -> None:
    assert read_health(tmp_path / "absent.jsonl") == []  # a v1 run has none
    w = HealthWindow(
        start_ns=0, end_ns=S, loop_delay_p99_ms=1.0, loop_delay_max_ms=2.0, send_lag_p99_ms=None,
        client_cpu_util=0.1, loadavg1=0.5, steal_share=None, coalesced_share=None,
        allowed_lag_ms=1.0, healthy=True, reason=None,
    )  # fmt: skip
    path = tmp_path / "health.jsonl"
    path.write_bytes(w.model_dump_json().encode() + b'\n{"start_ns": 1')  # torn last line
    assert read_health(path) == [w]
    path.write_bytes(b'{"start_ns": "x"}\n')
    with pytest.raises(ConfigError, match=r"health.jsonl:1: bad health window"):
        read_health(path)


GENEROUS = ErrorBudget(share=0.02, floor_ms=50.0)  # a budget an idle client keeps, even here


def test_an_idle_run_is_healthy_and_health_is_written_as_it_goes(tmp_path: Path) -> None:
    path = tmp_path / "health.jsonl"
    lines_during: list[int] = []

    def on_record(rec: Record) -> None:
        if rec.id == 15:  # ~3 s in
            lines_during.append(len(read_health(path)))

    load = Load(rate=5.0, requests=20, arrivals="constant")
    with FakeServer(Behaviour(delay_s=0.01)) as srv:
        s = spec(srv.base_url, load, workers=2, error_budget=GENEROUS)
        result = run_load(s, tmp_path / "records.jsonl", on_record=on_record, health_path=path)
    windows = read_health(path)
    assert windows == list(result.health)
    assert len(windows) >= 4 and windows[0].start_ns == 0
    assert all(b.start_ns == a.end_ns for a, b in itertools.pairwise(windows))
    assert lines_during and lines_during[0] >= 1  # appended during the run, not at its end
    assert all(w.healthy for w in windows), [w.reason for w in windows if not w.healthy]
    assert all(w.allowed_lag_ms == 50.0 for w in windows)
    assert all(w.loop_delay_p99_ms is not None and w.client_cpu_util > 0 for w in windows)
    assert sum(w.send_lag_p99_ms is not None for w in windows) >= 3  # a send in most windows
    assert result.to_json()["unhealthy_windows"] == 0


def test_a_blocked_worker_marks_its_window_unhealthy(tmp_path: Path) -> None:
    stop_s = 0.4
    stopped: list[tuple[int, int]] = []

    def on_record(rec: Record) -> None:
        if rec.id == 8 and not stopped:  # ~1.6 s in: freeze worker 0's event loop for 400 ms
            worker = next(p for p in mp.active_children() if p.name == "inferaudit-load-0")
            assert worker.pid is not None
            t0 = time.perf_counter_ns()
            os.kill(worker.pid, signal.SIGSTOP)
            time.sleep(stop_s)
            os.kill(worker.pid, signal.SIGCONT)
            stopped.append((t0, time.perf_counter_ns()))

    load = Load(rate=5.0, requests=20, arrivals="constant")
    with FakeServer(Behaviour(delay_s=0.01)) as srv:
        s = spec(srv.base_url, load, workers=2, error_budget=GENEROUS)
        result = run_load(s, tmp_path / "r.jsonl", on_record=on_record)
    t0, t1 = (t - result.epoch_ns for t in stopped[0])
    during = [w for w in result.health if w.start_ns < t1 and w.end_ns > t0]
    assert during
    for w in during:  # the frozen loop woke >= 390 ms late (stop less one 10 ms tick)
        assert w.loop_delay_max_ms is not None and w.loop_delay_max_ms >= 390.0
        assert not w.healthy and w.reason is not None and "loop delay p99" in w.reason
    assert result.to_json()["unhealthy_windows"] >= 1
