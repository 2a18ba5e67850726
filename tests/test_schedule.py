"""Arrival schedules: constant spacing, Poisson statistics, seeded determinism, bounds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from inferaudit.measure.load.schedule import arrival_offsets_ns, split_concurrency, worker_share
from inferaudit.measure.protocol import Load


def test_constant_spacing_is_exact() -> None:
    offsets = arrival_offsets_ns(Load(rate=4, arrivals="constant", requests=5), seed=1)
    assert offsets.tolist() == [0, 250_000_000, 500_000_000, 750_000_000, 1_000_000_000]
    assert offsets.dtype == np.int64


def test_warmup_is_added_to_requests() -> None:
    offsets = arrival_offsets_ns(Load(rate=10, requests=20, warmup=3), seed=0)
    assert len(offsets) == 23
    assert offsets[0] == 0
    assert np.all(np.diff(offsets) >= 0)


def test_poisson_is_seeded_and_deterministic() -> None:
    load = Load(rate=50, requests=1000)
    a = arrival_offsets_ns(load, seed=7)
    assert np.array_equal(a, arrival_offsets_ns(load, seed=7))
    assert not np.array_equal(a, arrival_offsets_ns(load, seed=8))


def test_poisson_gaps_are_exponential_with_the_requested_mean() -> None:
    rate = 100.0
    gaps = np.diff(arrival_offsets_ns(Load(rate=rate, requests=20_000), seed=3)) / 1e9
    # the mean of 19,999 exponential gaps has standard error (1/rate)/sqrt(n) ~ 0.07 ms
    assert abs(gaps.mean() - 1 / rate) < 5 * (1 / rate) / np.sqrt(len(gaps))
    # shape: Kolmogorov-Smirnov against Exp(rate); fixed seed, so the p-value is fixed too
    assert stats.kstest(gaps, "expon", args=(0, 1 / rate)).pvalue > 0.01
    # coefficient of variation of an exponential is 1 (a constant schedule would give 0)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.03)


def test_duration_bounds_the_measured_window_after_warmup() -> None:
    load = Load(rate=200, duration_s=5.0, warmup=10)
    offsets = arrival_offsets_ns(load, seed=11)
    start = offsets[10]
    measured = offsets[10:]
    assert measured.max() < start + 5_000_000_000
    # about rate x duration measured arrivals (Poisson: sd = sqrt(1000) ~ 32)
    assert abs(len(measured) - 1000) < 5 * np.sqrt(1000)


def test_duration_and_requests_schedules_share_their_prefix() -> None:
    by_count = arrival_offsets_ns(Load(rate=100, requests=5000), seed=5)
    by_time = arrival_offsets_ns(Load(rate=100, duration_s=10.0), seed=5)
    n = min(len(by_count), len(by_time))
    assert n > 900
    assert np.array_equal(by_count[:n], by_time[:n])


def test_requests_and_duration_whichever_ends_first() -> None:
    offsets = arrival_offsets_ns(Load(rate=100, requests=50, duration_s=100.0), seed=1)
    assert len(offsets) == 50
    offsets = arrival_offsets_ns(
        Load(rate=10, arrivals="constant", requests=1000, duration_s=1.0), seed=1
    )
    assert offsets.tolist() == [i * 100_000_000 for i in range(10)]


def test_explicit_count_overrides_requests() -> None:
    offsets = arrival_offsets_ns(Load(rate=2, arrivals="constant", requests=100), seed=0, count=3)
    assert offsets.tolist() == [0, 500_000_000, 1_000_000_000]


def test_worker_share_is_round_robin_and_complete() -> None:
    shares = [list(worker_share(10, 3, w)) for w in range(3)]
    assert shares == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


def test_split_concurrency() -> None:
    assert split_concurrency(8, 3) == [3, 3, 2]
    assert split_concurrency(2, 4) == [1, 1, 0, 0]
    assert sum(split_concurrency(97, 5)) == 97


@pytest.mark.parametrize("arrivals", ["constant", "poisson"])
def test_rate_inf_schedules_every_request_at_zero(arrivals: str) -> None:
    # vLLM's meaning of --request-rate inf: every request is sent at t=0
    load = Load(rate=float("inf"), arrivals=arrivals, requests=5, warmup=2)
    assert arrival_offsets_ns(load, seed=1).tolist() == [0] * 7
    assert arrival_offsets_ns(load, seed=1, count=3).tolist() == [0] * 3


def test_rate_inf_survives_canonical_json_and_infinite_durations_are_refused() -> None:
    from pydantic import ValidationError

    from inferaudit.measure.protocol import Endpoint, RunSpec, canonical_bytes

    spec = RunSpec(
        endpoint=Endpoint(base_url="http://127.0.0.1:9/v1", model="m"),
        load=Load(rate=float("inf"), requests=4),
    )
    data = canonical_bytes(spec)  # RFC 8785 has no infinity: the rate is the string "inf"
    assert b'"rate":"inf"' in data
    assert RunSpec.model_validate_json(data).load.rate == float("inf")
    assert Load(rate=2.5, requests=1).model_dump(mode="json")["rate"] == 2.5
    with pytest.raises(ValidationError, match="rate inf sends every request at t=0: give requests"):
        Load(rate=float("inf"), duration_s=10)
    with pytest.raises(ValidationError, match="duration_s must be finite"):
        Load(concurrency=2, duration_s=float("inf"))
    with pytest.raises(ValidationError, match="finite"):
        Load(concurrency=2, requests=1, stall_timeout_s=float("inf"))
