"""When each request is sent: absolute arrival schedules for open-loop load.

An open-loop schedule is computed in full before the run as integer nanosecond offsets from the
run's epoch, so it does not depend on how the client keeps up (no coordinated omission): a late
request keeps its scheduled time and the lag is recorded. Offset 0 is the first arrival.

* ``constant``: arrival ``k`` at ``k / rate``.
* ``poisson``: inter-arrival gaps are exponential with mean ``1 / rate``, drawn from a numpy
  PCG64 generator; arrival ``k`` is the sum of the first ``k`` gaps. The generator's seed
  (:func:`arrival_seed`): for a spec that commits to a secret seed (v2), the 256-bit key
  ``prf(secret seed, "arrivals", 0)`` (``measure.workload.prf``), so no arrival instant can be
  predicted before the seed is revealed; for a spec without one (v1, or a library caller's spec
  planned under its public ``spec.seed``), ``(spec.seed, STREAM_ARRIVALS)``, exactly as
  inferaudit 0.1 drew it.

The first ``load.warmup`` arrivals are the warm-up. Measured arrivals follow: ``load.requests`` of
them, or those within ``load.duration_s`` of the first measured arrival, whichever ends first.

Closed loop has no precomputed schedule: a request's scheduled time is when its slot became free
(the runner implements it); :func:`split_concurrency` divides the slots between workers.
"""

from __future__ import annotations

import numpy as np

from inferaudit.measure.protocol import Arrivals, Load, RunSpec
from inferaudit.measure.workload import planning_seed, prf

__all__ = [
    "ARRIVALS_LABEL",
    "STREAM_ARRIVALS",
    "arrival_offsets_ns",
    "arrival_seed",
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


def _times_s(load: Load, seed: int | bytes, n: int) -> np.ndarray:
    """The first ``n`` arrival times in seconds (a prefix of every longer schedule)."""
    assert load.rate is not None, "arrival offsets need an open-loop load"
    if load.arrivals == Arrivals.constant:
        return np.arange(n) / load.rate
    if isinstance(seed, bytes):  # a secret key: all of its 256 bits seed the generator
        rng = np.random.default_rng(int.from_bytes(seed, "big"))
    else:
        rng = np.random.default_rng((seed, STREAM_ARRIVALS))
    gaps = rng.exponential(1.0 / load.rate, size=max(n - 1, 0))
    return np.concatenate(([0.0], np.cumsum(gaps)))[:n]


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


def worker_share(total: int, workers: int, worker: int) -> range:
    """Positions in the schedule that ``worker`` sends: round-robin, so each worker's arrivals
    stay evenly spread over the run."""
    return range(worker, total, workers)


def split_concurrency(concurrency: int, workers: int) -> list[int]:
    """Closed-loop slots per worker (the first ``concurrency % workers`` get one more)."""
    base, extra = divmod(concurrency, workers)
    return [base + (w < extra) for w in range(workers)]
