"""When each request is sent: absolute arrival schedules for open-loop load.

An open-loop schedule is computed in full before the run as integer nanosecond offsets from the
run's epoch, so it does not depend on how the client keeps up (no coordinated omission): a late
request keeps its scheduled time and the lag is recorded. Offset 0 is the first arrival.

* ``constant``: arrival ``k`` at ``k / rate``.
* ``poisson``: inter-arrival gaps are exponential with mean ``1 / rate``
  (``Generator.exponential(1 / rate)``), drawn from a numpy PCG64 generator; arrival ``k`` is
  the sum of the first ``k`` gaps.
* ``gamma``: gaps are ``Generator.gamma(shape=k, scale=1 / (rate * k))`` with ``k =
  load.burstiness`` (vLLM ``bench serve --burstiness`` semantics): mean ``1 / rate``,
  coefficient of variation ``1 / sqrt(k)``; ``k = 1`` is Poisson, ``k < 1`` burstier, ``k > 1``
  more even. It is drawn from a generator seeded exactly as ``poisson``'s (numpy's gamma of
  shape 1 is its exponential, so gamma with burstiness 1 is ``poisson`` draw for draw).
* ``rate inf``: every arrival at offset 0 (nothing is drawn).

The generator's seed (:func:`arrival_seed`): for a spec that commits to a secret seed (v2), the
256-bit key ``prf(secret seed, "arrivals", 0)`` (``measure.workload.prf``), so no arrival
instant can be predicted before the seed is revealed; for a spec without one (v1, or a library
caller's spec planned under its public ``spec.seed``), ``(spec.seed, STREAM_ARRIVALS)``, exactly
as inferaudit 0.1 drew it. Without a ramp the instants are drawn exactly as 0.1 drew them, so
old runs replay to the nanosecond.

Ramp-up (``load.ramp_up_s = T``, ``load.ramp_start_rate = r0``): the intensity rises linearly
from ``r0`` to ``r`` over the first ``T`` seconds, then stays at ``r``. It is a time change: the
process is drawn at unit rate in operational time ``s`` (constant: ``s_k = k``; poisson: unit
exponential gaps; gamma: ``gamma(k, 1 / k)`` gaps; same generator as above), and each instant
is mapped through the inverse of the cumulative intensity

    Λ(t) = r0 t + (r - r0) t² / (2T)      for t < T,   Λ(T) = (r0 + r) T / 2,
    Λ(t) = Λ(T) + r (t - T)               for t >= T,

    t = 2 s / (r0 + sqrt(r0² + 2 (r - r0) s / T))  for s < Λ(T)   (the quadratic's root),
    t = T + (s - Λ(T)) / r                          for s >= Λ(T).

E.g. constant arrivals at r = 4/s ramped from 0 over 2 s: s_k = k, instants sqrt(k) s for
k < 4, then 2, 2.25, 2.5, ... s. The ramp spans the schedule's start (warm-up included).

The first ``load.warmup`` arrivals are the warm-up. Measured arrivals follow: ``load.requests`` of
them, or those within ``load.duration_s`` of the first measured arrival, whichever ends first.

Closed loop has no precomputed schedule: a request's scheduled time is when its slot became free
(the runner implements it); :func:`split_concurrency` divides the slots between workers (and an
open loop's ``max_concurrency`` cap likewise).
"""

from __future__ import annotations

import math

import numpy as np

from inferaudit.errors import ConfigError
from inferaudit.measure.protocol import Arrivals, Load, RunSpec
from inferaudit.measure.traces import load_protocol_trace, trace_offsets_ns
from inferaudit.measure.workload import planning_seed, prf

__all__ = [
    "ARRIVALS_LABEL",
    "STREAM_ARRIVALS",
    "arrival_offsets_ns",
    "arrival_seed",
    "ramp_time_s",
    "schedule_offsets_ns",
    "split_concurrency",
    "worker_share",
]

STREAM_ARRIVALS = 0x5C4ED  # seed-sequence stream id of the arrival process (public seeds)
ARRIVALS_LABEL = b"arrivals"  # PRF label of the arrival key (secret seeds)


def arrival_seed(spec: RunSpec) -> int | bytes:
    """What ``spec``'s arrivals are drawn from: the 32-byte key ``prf(secret, "arrivals", 0)``
    when the spec has a secret seed (committed or in memory), else the public ``spec.seed``.
    Raises ``ConfigError`` for a spec that commits to a seed it does not carry."""
    if spec.seed_commitment is None and spec.secret_seed is None:
        return spec.seed
    return prf(planning_seed(spec), ARRIVALS_LABEL, 0)


def _rng(seed: int | bytes) -> np.random.Generator:
    if isinstance(seed, bytes):  # a secret key: all of its 256 bits seed the generator
        return np.random.default_rng(int.from_bytes(seed, "big"))
    return np.random.default_rng((seed, STREAM_ARRIVALS))


def _process_s(load: Load, seed: int | bytes, n: int, rate: float) -> np.ndarray:
    """The first ``n`` instants (seconds) of ``load``'s arrival process at ``rate``."""
    if load.arrivals == Arrivals.constant:
        return np.arange(n) / rate
    if load.arrivals == Arrivals.trace:
        raise ConfigError("load.arrivals: a trace's instants come from the trace, not a rate")
    rng = _rng(seed)
    size = max(n - 1, 0)
    if load.arrivals == Arrivals.gamma:
        k = load.burstiness
        gaps = rng.gamma(k, 1.0 / (rate * k), size=size)
    else:
        gaps = rng.exponential(1.0 / rate, size=size)
    return np.concatenate(([0.0], np.cumsum(gaps)))[:n]


def ramp_time_s(s: np.ndarray, rate: float, ramp_up_s: float, start_rate: float) -> np.ndarray:
    """Λ⁻¹(s): the instants (seconds) of operational times ``s`` under a linear ramp from
    ``start_rate`` to ``rate`` over ``ramp_up_s`` seconds (see the module docstring)."""
    assert 0 <= start_rate < rate and ramp_up_s > 0, "a ramp rises to a finite rate"
    at_top = (start_rate + rate) * ramp_up_s / 2  # Λ(T)
    slope = (rate - start_rate) / ramp_up_s
    ramp = np.minimum(s, at_top)  # the branch not taken is computed on a harmless value
    denominator = start_rate + np.sqrt(start_rate * start_rate + 2 * slope * ramp)
    rising = 2 * ramp / np.where(denominator > 0, denominator, 1.0)  # 0 only at s = 0
    return np.where(s < at_top, rising, ramp_up_s + (s - at_top) / rate)


def _times_s(load: Load, seed: int | bytes, n: int) -> np.ndarray:
    """The first ``n`` arrival times in seconds (a prefix of every longer schedule)."""
    assert load.rate is not None, "arrival offsets need an open-loop load"
    if math.isinf(load.rate):
        return np.zeros(n)
    if load.ramp_up_s is None:
        return _process_s(load, seed, n, load.rate)
    operational = _process_s(load, seed, n, 1.0)
    return ramp_time_s(operational, load.rate, load.ramp_up_s, load.ramp_start_rate)


def arrival_offsets_ns(load: Load, seed: int | bytes, count: int | None = None) -> np.ndarray:
    """Arrival offsets (int64 ns from the epoch, non-decreasing) of an open-loop run; ``seed``
    is :func:`arrival_seed` of the run's spec (an int: a public seed, the 0.1 derivation).

    ``count`` fixes the number of arrivals (e.g. an explicit list of plans) and ignores
    ``requests``/``duration_s``/``warmup``.
    """
    assert load.rate is not None, "arrival offsets need an open-loop load"
    if count is not None:
        return np.round(_times_s(load, seed, count) * 1e9).astype(np.int64)
    if load.requests is not None:
        times = _times_s(load, seed, load.warmup + load.requests)
    else:
        n = load.warmup + int(load.rate * (load.duration_s or 0) * 1.2) + 64
        while True:  # grow until the schedule runs past the measurement window
            times = _times_s(load, seed, n)
            if times[-1] >= times[load.warmup] + (load.duration_s or 0):
                break
            n *= 2
    if load.duration_s is not None and len(times) > load.warmup:
        end = times[load.warmup] + load.duration_s
        measured = times[load.warmup :]
        times = np.concatenate((times[: load.warmup], measured[measured < end]))
    return np.round(times * 1e9).astype(np.int64)


def schedule_offsets_ns(spec: RunSpec, count: int | None = None) -> np.ndarray:
    """The open-loop schedule of ``spec``'s run: a trace's own instants (divided by its speedup,
    first entry at 0; the first ``warmup + requests`` entries, or the warm-up and the entries
    within ``duration_s`` of the first measured one; ``count``: the first ``count``), else
    :func:`arrival_offsets_ns` drawn from :func:`arrival_seed`."""
    load, trace = spec.load, spec.workload.trace
    if load.arrivals != Arrivals.trace or trace is None:
        return arrival_offsets_ns(load, arrival_seed(spec), count)
    offsets = trace_offsets_ns(load_protocol_trace(trace).entries, trace.speedup)
    if count is not None:
        return offsets[:count]
    if load.requests is not None:
        offsets = offsets[: load.warmup + load.requests]
    if load.duration_s is not None and len(offsets) > load.warmup:
        end = offsets[load.warmup] + round(load.duration_s * 1e9)
        measured = offsets[load.warmup :]
        offsets = np.concatenate((offsets[: load.warmup], measured[measured < end]))
    return offsets


def worker_share(total: int, workers: int, worker: int) -> range:
    """Positions in the schedule that ``worker`` sends: round-robin, so each worker's arrivals
    stay evenly spread over the run."""
    return range(worker, total, workers)


def split_concurrency(concurrency: int, workers: int) -> list[int]:
    """Slots per worker (the first ``concurrency % workers`` get one more): closed-loop
    concurrency, or an open loop's ``max_concurrency`` cap."""
    base, extra = divmod(concurrency, workers)
    return [base + (w < extra) for w in range(workers)]
