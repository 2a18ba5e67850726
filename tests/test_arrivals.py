"""Arrival processes and the open-loop cap: gamma, ramp-up, rate inf, max_concurrency.

Schedules are checked exactly (known answers) or statistically on the computed schedule with a
fixed seed; runs go against a real twin process on 127.0.0.1 and are judged from its truth file
and the records, never from wall-clock bounds.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from pathlib import Path
from time import perf_counter_ns
from typing import Any

import numpy as np
import orjson
import pytest
from scipy import stats

from inferaudit.measure.load.gate import SlotGate
from inferaudit.measure.load.runner import run_load
from inferaudit.measure.load.schedule import STREAM_ARRIVALS, arrival_offsets_ns, ramp_time_s
from inferaudit.measure.protocol import Arrivals, Endpoint, Length, Load, RunSpec, Workload
from inferaudit.measure.records import Record, read_records
from inferaudit.twin.launch import start_twin
from inferaudit.twin.options import TwinOptions

MODEL = "twin-model"


def _spec(base_url: str, load: Load, workers: int = 2, out: int = 3) -> RunSpec:
    return RunSpec(
        endpoint=Endpoint(base_url=base_url, model=MODEL),
        load=load,
        workers=workers,
        workload=Workload(input_tokens=Length(lo=16, hi=16), output_tokens=Length(lo=out, hi=out)),
        seed=1,
    )


def _truth(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


# --- gamma -----------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0.25, 4.0])
def test_gamma_gaps_have_mean_one_over_rate_and_cv_one_over_sqrt_k(k: float) -> None:
    rate, n = 100.0, 200_000
    load = Load(rate=rate, requests=n, arrivals=Arrivals.gamma, burstiness=k)
    offsets = arrival_offsets_ns(load, seed=3)
    # exactly the documented draw: Gamma(shape=k, scale=1/(rate k)) from (seed, STREAM_ARRIVALS)
    gaps_s = np.random.default_rng((3, STREAM_ARRIVALS)).gamma(k, 1 / (rate * k), n - 1)
    expected = np.round(np.concatenate(([0.0], np.cumsum(gaps_s))) * 1e9).astype(np.int64)
    assert np.array_equal(offsets, expected)
    gaps = np.diff(offsets) / 1e9
    sd_of_mean = (1 / rate) / math.sqrt(k) / math.sqrt(n)
    assert abs(gaps.mean() - 1 / rate) < 5 * sd_of_mean
    assert gaps.std() / gaps.mean() == pytest.approx(1 / math.sqrt(k), rel=0.03)
    if k > 1:  # no sub-nanosecond gaps to be rounded away: the shape itself fits
        assert stats.kstest(gaps, "gamma", args=(k, 0, 1 / (rate * k))).pvalue > 0.01


def test_gamma_of_burstiness_one_is_poisson_draw_for_draw() -> None:
    poisson = arrival_offsets_ns(Load(rate=50, requests=2000), seed=9)
    gamma = arrival_offsets_ns(Load(rate=50, requests=2000, arrivals=Arrivals.gamma), seed=9)
    assert np.array_equal(poisson, gamma)
    bursty = arrival_offsets_ns(
        Load(rate=50, requests=2000, arrivals=Arrivals.gamma, burstiness=0.5), 9
    )
    assert not np.array_equal(poisson, bursty)


def test_gamma_under_a_secret_key_uses_all_of_it() -> None:
    key = bytes(range(32))
    load = Load(rate=20, requests=50, arrivals=Arrivals.gamma, burstiness=2.0)
    offsets = arrival_offsets_ns(load, key)
    gaps = np.random.default_rng(int.from_bytes(key, "big")).gamma(2.0, 1 / 40, 49)
    expected = np.round(np.concatenate(([0.0], np.cumsum(gaps))) * 1e9).astype(np.int64)
    assert np.array_equal(offsets, expected)
    assert not np.array_equal(offsets, arrival_offsets_ns(load, bytes(32)))


# --- ramp-up ---------------------------------------------------------------------------------


def test_constant_ramp_from_zero_known_answer() -> None:
    # r = 4/s, T = 2 s, r0 = 0: Λ(t) = t² for t < 2 (Λ(2) = 4), then 4 + 4 (t - 2); s_k = k
    load = Load(rate=4, arrivals=Arrivals.constant, requests=7, ramp_up_s=2.0)
    assert arrival_offsets_ns(load, seed=1).tolist() == [
        0,  # sqrt(0)
        1_000_000_000,  # sqrt(1)
        1_414_213_562,  # sqrt(2) = 1.41421356237
        1_732_050_808,  # sqrt(3) = 1.73205080757
        2_000_000_000,  # the ramp's end: 2 + 0/4
        2_250_000_000,
        2_500_000_000,
    ]


def test_constant_ramp_from_a_start_rate_known_answer() -> None:
    # r = 4/s, T = 2 s, r0 = 2/s: Λ(t) = 2t + t²/2 (Λ(2) = 6), so t_k = sqrt(4 + 2k) - 2
    load = Load(rate=4, arrivals=Arrivals.constant, requests=8, ramp_up_s=2.0, ramp_start_rate=2.0)
    assert arrival_offsets_ns(load, seed=1).tolist() == [
        0,
        449_489_743,  # sqrt(6) - 2 = 0.44948974278
        828_427_125,  # sqrt(8) - 2 = 0.82842712475
        1_162_277_660,  # sqrt(10) - 2 = 1.16227766017
        1_464_101_615,  # sqrt(12) - 2 = 1.46410161514
        1_741_657_387,  # sqrt(14) - 2 = 1.74165738677
        2_000_000_000,  # sqrt(16) - 2: the ramp's end
        2_250_000_000,
    ]


def test_ramp_time_inverts_the_cumulative_intensity() -> None:
    rate, ramp, r0 = 10.0, 3.0, 1.0
    t = np.linspace(0, 6, 601)
    cumulative = np.where(
        t < ramp,
        r0 * t + (rate - r0) * t * t / (2 * ramp),
        (r0 + rate) * ramp / 2 + rate * (t - ramp),
    )
    assert np.allclose(ramp_time_s(cumulative, rate, ramp, r0), t, rtol=0, atol=1e-12)


def test_poisson_ramp_counts_follow_the_intensity() -> None:
    # r = 1000/s from 0 over 2 s: Λ(1) = 250, Λ(2) = 1000, then 1000 more per second
    load = Load(rate=1000, requests=4000, ramp_up_s=2.0)
    t = arrival_offsets_ns(load, seed=4) / 1e9
    for lo, hi, mean in ((0, 1, 250), (1, 2, 750), (2, 3, 1000)):
        count = int(((t >= lo) & (t < hi)).sum())
        assert abs(count - mean) < 5 * math.sqrt(mean), (lo, hi, count)
    # the operational-time draw is the unit-rate process of the unramped schedule's generator
    unit = np.cumsum(np.random.default_rng((4, STREAM_ARRIVALS)).exponential(1.0, 3999))
    expected = ramp_time_s(np.concatenate(([0.0], unit)), 1000, 2.0, 0.0)
    assert np.array_equal(arrival_offsets_ns(load, 4), np.round(expected * 1e9).astype(np.int64))


def test_a_ramp_leaves_a_duration_window_intact() -> None:
    load = Load(rate=100, duration_s=3.0, warmup=5, ramp_up_s=1.0, arrivals=Arrivals.constant)
    offsets = arrival_offsets_ns(load, seed=1)
    start = offsets[5]
    assert offsets[-1] < start + 3_000_000_000
    assert offsets[-1] + 10_000_000 >= start + 3_000_000_000  # past the ramp: 10 ms apart


# --- rate inf --------------------------------------------------------------------------------


@pytest.mark.parametrize("arrivals", [Arrivals.constant, Arrivals.poisson, Arrivals.gamma])
def test_rate_inf_schedules_everything_at_zero(arrivals: Arrivals) -> None:
    burst = 0.5 if arrivals == Arrivals.gamma else 1.0
    load = Load(rate=math.inf, requests=6, warmup=2, arrivals=arrivals, burstiness=burst)
    assert arrival_offsets_ns(load, seed=1).tolist() == [0] * 8


def test_rate_inf_run_sends_every_request_at_zero(tmp_path: Path) -> None:
    truth = tmp_path / "truth.jsonl"
    with start_twin(TwinOptions(ttft_ms=5, tpot_ms=1, served_model_name=MODEL, truth=truth)) as tw:
        spec = _spec(tw.base_url, Load(rate=math.inf, requests=8))
        result = run_load(spec, tmp_path / "records.jsonl")
    records = read_records(tmp_path / "records.jsonl")
    assert sorted(r.id for r in records) == list(range(8))
    assert all(r.ok and r.scheduled_ns == 0 for r in records)
    assert (result.planned, result.sent, result.finished) == (8, 8, 8)
    assert len(_truth(truth)) == 8


# --- the slot gate ---------------------------------------------------------------------------


def test_slot_gate_times_are_when_a_slot_became_free() -> None:
    async def main() -> None:
        gate = SlotGate(1)
        assert await gate.acquire(100) == 100  # free from the start: its due time
        waiter = asyncio.ensure_future(gate.acquire(200))
        await asyncio.sleep(0)
        assert not waiter.done()  # the one slot is held
        before = perf_counter_ns()
        gate.release()
        after = perf_counter_ns()
        slot = await waiter
        assert before <= slot <= after  # handed over at the release
        before = perf_counter_ns()
        gate.release()
        after = perf_counter_ns()
        # a slot freed at R, taken by a request due before R: the slot time is R, not its due
        assert before <= await gate.acquire(5) <= after
        late = perf_counter_ns() + 10**12
        gate.release()
        assert await gate.acquire(late) == late  # free before it was due: its due time

    asyncio.run(main())


def test_slot_gate_serves_waiters_in_order() -> None:
    async def main() -> list[int]:
        gate = SlotGate(2)
        await gate.acquire(0)
        await gate.acquire(0)
        order: list[int] = []

        async def one(i: int) -> None:
            await gate.acquire(0)
            order.append(i)

        tasks = [asyncio.ensure_future(one(i)) for i in range(4)]
        await asyncio.sleep(0)
        cancelled = tasks.pop(1)
        cancelled.cancel()  # a waiter that gives up is skipped
        for _ in range(3):
            gate.release()
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        assert gate.held == 2
        return order

    assert asyncio.run(main()) == [0, 2, 3]


# --- max_concurrency with a rate -------------------------------------------------------------


def _overlap(spans: list[tuple[int, int]]) -> int:
    """The most spans in progress at once (a span's end frees its place before a start at the
    same instant)."""
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    peak = now = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def test_max_concurrency_caps_an_open_loop(tmp_path: Path) -> None:
    truth = tmp_path / "truth.jsonl"
    options = TwinOptions(ttft_ms=20, tpot_ms=10, served_model_name=MODEL, truth=truth)
    with start_twin(options) as tw:
        load = Load(rate=50, requests=20, arrivals=Arrivals.constant, max_concurrency=2)
        result = run_load(_spec(tw.base_url, load, workers=3, out=8), tmp_path / "r.jsonl")
    records = read_records(tmp_path / "r.jsonl")
    lines = _truth(truth)
    assert len(records) == len(lines) == 20 and all(r.ok for r in records)
    # the server never saw more than 2 requests overlapping (arrival .. done)
    assert _overlap([(ln["arrival_ns"], ln["done_ns"]) for ln in lines]) <= 2
    assert len(result.workers) == 2  # min(workers, cap): one slot each
    assert [w.max_in_flight for w in result.workers] == [1, 1]
    offsets = arrival_offsets_ns(load, 1).tolist()
    assert {r.id: r.scheduled_ns for r in records} == dict(enumerate(offsets))
    slots = [r.slot_ns for r in records]
    assert all(s is not None for s in slots)
    assert all(r.slot_ns is not None and r.slot_ns >= r.scheduled_ns for r in records)
    waited = [r for r in records if r.slot_wait_ns > 0]
    assert len(waited) >= 10  # 20 ms apart, each holding its slot for 90 ms or more
    # a waiting request's slot is the end of the one before it in its worker (one slot each)
    by_worker: dict[int, list[Record]] = {}
    for r in sorted(records, key=lambda r: r.scheduled_ns):
        by_worker.setdefault(r.worker, []).append(r)
    for mine in by_worker.values():
        for prev, nxt in itertools.pairwise(mine):
            assert prev.done_ns is not None and nxt.slot_ns is not None and nxt.sent_ns is not None
            assert nxt.slot_ns >= prev.done_ns
            assert nxt.sent_ns >= nxt.slot_ns
    # the client's lag is from max(scheduled, slot): small beside the waits for a slot
    lags = sorted(r.lag_ns or 0 for r in records)
    waits = sorted(r.slot_wait_ns for r in waited)
    assert lags[len(lags) // 2] * 10 < waits[len(waits) // 2]
    assert all((r.lag_ns or 0) >= 0 for r in records)
