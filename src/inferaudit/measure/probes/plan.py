"""Where audit traffic goes: positions drawn from the run's secret seed (sends nothing).

Inside the load (the measured positions ``warmup .. warmup + n - 1``, ``n`` known in advance):

* **replays** (identity): ``K = min(entries, max(1, n // 10))`` positions carry a fingerprint
  entry's prompt instead of their own, with the position's own ``max_tokens`` and sampling keys
  (tag ``fingerprint:<entry id>``). The fingerprint was recorded with the run's workload flags
  (``fingerprint.check_fits``), so a replayed prompt is a draw from the same distribution.
* **repeats** (caching): ``R`` positions resend the exact plan (prompt, ``max_tokens``, sampling
  keys) of an earlier ordinary position ``2c .. 4c`` positions before them (``c``: concurrency),
  so that the first sending has usually finished (tag ``cache:repeat``).
* **shared-prefix prompts** (prefix reuse): ``H`` positions send their own length, made of an
  earlier ordinary position's (the *prime*, ``c + 1 .. 2c + 1`` before) first words and a tail of
  ``TAIL`` words of their own (tag ``prefix:hit:<prime id>:<shared words>``).

``R = H = clamp(n // 16, 8, 64)``; they go inside the load when ``n >= IN_LOAD_MIN`` (128).
Otherwise (a short run, or a closed loop run for a duration, whose length is not known) they go,
with the replays, in a supplementary block of ``AUDIT_BLOCK`` (64) + K requests (12 repeats, 12
shared-prefix prompts) sent after the
load at its concurrency (phase ``audit``): fresh plans with the audit plans at seeded random
positions among them, so that host drift hits both arms (never unique-then-repeat).

Conformance probes (phase ``probe``, before the load): ``LENGTH_PROBES`` fresh plans of the
workload's own lengths; with ``temperature > 0`` and ``seed_per_request``, three more of one
prompt, two with the same sampling seed and one with another.

Ids of separate phases start at ``PROBE_ID_BASE`` / ``AUDIT_ID_BASE``; ids never reach the wire
(every draw of a request is a PRF of its id under the secret seed), so their range says nothing
to the server.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from inferaudit.measure.fingerprint import TAG, Entry
from inferaudit.measure.protocol import Load, RunSpec
from inferaudit.measure.workload import Planner, RequestPlan, planning_seed, prf_rng

__all__ = [
    "AUDIT",
    "CACHE_REPEAT",
    "LENGTH_TAG",
    "PREFIX_HIT",
    "PROBE",
    "AuditTraffic",
    "measured_count",
    "plan_traffic",
]

PROBE, AUDIT = "probe", "audit"
CACHE_REPEAT = "cache:repeat"
PREFIX_HIT = "prefix:hit:"
LENGTH_TAG = "probe:length"
SEED_TAG = "probe:seed-"
TAIL = 8
IN_LOAD_MIN = 128
AUDIT_BLOCK = 64
BLOCK_PAIRS = 12  # repeats and shared-prefix prompts in the block (a judge needs 8 pairs)
LENGTH_PROBES = 6
PROBE_ID_BASE = 1 << 52
AUDIT_ID_BASE = PROBE_ID_BASE + (1 << 32)


@dataclass(frozen=True)
class AuditTraffic:
    injected: dict[int, RequestPlan]  # measured positions -> the audit plan sent there
    before: tuple[RequestPlan, ...]  # phase "probe", before the load
    after: tuple[RequestPlan, ...]  # phase "audit", after the load (may be empty)
    concurrency: int  # of the separate phases: the run's (closed loop) or 4


def measured_count(load: Load) -> int | None:
    """Measured positions known before the run (None: a closed loop for a duration)."""
    if load.requests is not None:
        return load.requests
    if load.rate is not None and load.duration_s is not None:
        return max(1, int(0.8 * load.rate * load.duration_s))  # Poisson: most of them arrive
    return None


def plan_traffic(
    spec: RunSpec,
    *,
    conformance: bool,
    caching: bool,
    prefix: bool,
    replays: Sequence[Entry] = (),
    planner: Planner | None = None,
) -> AuditTraffic:
    """The audit traffic of ``spec``'s run (see the module docstring)."""
    planner = planner or Planner.from_spec(spec)
    seed = planning_seed(spec)
    conc = spec.load.concurrency or 4
    n = measured_count(spec.load)
    k = min(len(replays), max(1, (n or AUDIT_BLOCK) // 10)) if replays else 0
    pairs = int(np.clip((n or 0) // 16, 8, 64))
    in_load = n is not None and n >= IN_LOAD_MIN
    before = _probes(spec, planner) if conformance else ()
    injected: dict[int, RequestPlan] = {}
    after: tuple[RequestPlan, ...] = ()
    rng = prf_rng(seed, b"audit-positions", 0)
    picks = _pick_entries(rng, replays, k)
    if in_load:
        assert n is not None
        positions = list(range(spec.load.warmup, spec.load.warmup + n))
        plans = [planner.generated(i) for i in positions]
        chosen = _place(rng, plans, planner, picks, pairs if caching else 0, pairs if prefix else 0,
                        conc)  # fmt: skip
        injected = {p.id: p for p in chosen}
    else:
        if n is not None and picks:
            ids = rng.choice(n, size=len(picks), replace=False) + spec.load.warmup
            for i, e in zip(sorted(int(x) for x in ids), picks, strict=True):
                injected[i] = _replay(planner.generated(i), e)
            picks = []
        if caching or prefix or picks:
            size = AUDIT_BLOCK + len(picks)
            plans = [planner.generated(AUDIT_ID_BASE + j, phase=AUDIT) for j in range(size)]
            chosen = _place(rng, plans, planner, picks, BLOCK_PAIRS if caching else 0,
                            BLOCK_PAIRS if prefix else 0,
                            conc)  # fmt: skip
            by_id = {p.id: p for p in chosen}
            after = tuple(by_id.get(p.id, p) for p in plans)
    return AuditTraffic(injected, before, after, conc)


def _pick_entries(rng: np.random.Generator, entries: Sequence[Entry], k: int) -> list[Entry]:
    if not k:
        return []
    return [entries[int(j)] for j in rng.choice(len(entries), size=k, replace=False)]


def _replay(own: RequestPlan, e: Entry) -> RequestPlan:
    """Entry ``e``'s prompt at ``own``'s position, with its length and body keys."""
    words = e.input_tokens if e.input_tokens is not None else None
    return dataclasses.replace(own, prompt=e.prompt, input_tokens=words, tag=f"{TAG}{e.id}")


def _place(
    rng: np.random.Generator,
    plans: Sequence[RequestPlan],
    planner: Planner,
    replays: Sequence[Entry],
    repeats: int,
    hits: int,
    conc: int,
) -> list[RequestPlan]:
    """Audit plans at seeded positions of ``plans`` (a block sent in order): the replaced plans.

    Repeats and shared-prefix prompts need an earlier *ordinary* plan (never itself replaced)
    at a gap of ``2c .. 4c`` (repeats) or ``c + 1 .. 2c + 1`` (prefix) positions.
    """
    size = len(plans)
    free = set(range(size))
    ordinary = set(range(size))
    out: list[RequestPlan] = []

    def take(lo: int) -> int | None:
        cands = sorted(j for j in free if j >= lo)
        if not cands:
            return None
        j = cands[int(rng.integers(len(cands)))]
        free.discard(j)
        ordinary.discard(j)
        return j

    def source(j: int, lo_gap: int, hi_gap: int) -> int | None:
        cands = [q for q in range(max(0, j - hi_gap), j - lo_gap + 1) if q in ordinary]
        if not cands:
            return None
        q = cands[int(rng.integers(len(cands)))]
        free.discard(q)  # stays ordinary: a source is sent unchanged
        return q

    for _ in range(repeats):
        j = take(2 * conc)
        if j is None:
            break
        q = source(j, 2 * conc, 4 * conc)
        if q is None:
            free.add(j)
            ordinary.add(j)
            continue
        first = plans[q]
        out.append(dataclasses.replace(first, id=plans[j].id, phase=plans[j].phase,
                                       tag=CACHE_REPEAT))  # fmt: skip
    for _ in range(hits):
        j = take(conc + 1)
        if j is None:
            break
        q = source(j, conc + 1, 2 * conc + 1)
        if q is None or plans[j].input_tokens is None:
            free.add(j)
            ordinary.add(j)
            continue
        out.append(_shared_prefix(plans[j], plans[q], planner))
    for e in replays:
        j = take(0)
        if j is None:
            break
        out.append(_replay(plans[j], e))
    return out


def _shared_prefix(own: RequestPlan, prime: RequestPlan, planner: Planner) -> RequestPlan:
    """``own``'s length: the prime's first words, then ``own``'s last ``TAIL`` words."""
    length = own.input_tokens or len(own.prompt.split())
    head = prime.prompt.split()[: max(length - TAIL, 0)]
    tail = own.prompt.split()[-TAIL:]
    pad = planner.words(own.id, max(length - len(head) - len(tail), 0))
    words = head + pad + tail
    prompt = " ".join(words[:length])
    return dataclasses.replace(own, prompt=prompt, tag=f"{PREFIX_HIT}{prime.id}:{len(head)}")


def _probes(spec: RunSpec, planner: Planner) -> tuple[RequestPlan, ...]:
    plans = [
        dataclasses.replace(
            planner.generated(PROBE_ID_BASE + k, phase=PROBE), tag=LENGTH_TAG
        )
        for k in range(LENGTH_PROBES)
    ]
    s = spec.sampling
    if s is not None and s.temperature > 0 and s.seed_per_request:
        a = planner.generated(PROBE_ID_BASE + LENGTH_PROBES, phase=PROBE)
        c = planner.generated(PROBE_ID_BASE + LENGTH_PROBES + 1, phase=PROBE)
        for t, own in (("a", a), ("b", a), ("c", c)):
            plans.append(
                dataclasses.replace(
                    a,
                    id=PROBE_ID_BASE + LENGTH_PROBES + 2 + "abc".index(t),
                    tag=f"{SEED_TAG}{t}",
                    extra_body=own.extra_body,  # b: a's own seed; c: another seed
                )
            )
    return tuple(plans)
