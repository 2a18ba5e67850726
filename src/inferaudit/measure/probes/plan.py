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
Otherwise (a short run) they go, with the replays, in a supplementary block of ``AUDIT_BLOCK``
(64) + K requests (12 repeats, 12 shared-prefix prompts) sent after the load at its concurrency
(phase ``audit``): fresh plans with the audit plans at seeded random positions among them, so
that host drift hits both arms (never unique-then-repeat).

A closed loop run for a duration (``n`` unknown) carries them inside its load too
(:class:`AuditStream`): each measured position ``i`` draws its role from the 64-bit number
``prf(key, "role", i)`` (``key = prf(secret seed, "audit-stream", 0)``): a repeat with
probability 1/16 (``PAIR_EVERY``; from the ``2c``-th measured position on), a shared-prefix
prompt with 1/16 (from the ``c + 1``-th), a replay with 1/10 (``REPLAY_EVERY``), else ordinary
(the bands of checks that are off are ordinary). A repeat resends the plan of an ordinary
position ``2c .. 4c`` before it, a shared-prefix prompt takes its prime among the ordinary
positions ``c + 1 .. 2c + 1`` before it, each chosen by ``prf(key, "source"/"prime", i)``
(none there: the position keeps its own plan). The ``t``-th replay position of the run replays
entry ``perm_u[t mod E]``, ``u = t div E``, ``perm_u`` a permutation of the ``E`` entries drawn
from ``prf(key, "replay-order", u)``: every entry once before any twice. So every position's
plan is a function of its id (and the seed) alone, whatever the run's length; a run of about
``16 * MIN_PAIRS + 2c`` measured positions carries the ``MIN_PAIRS`` (8) pairs a judge needs.
When the load has ended (:func:`top_up`), only what it fell short of is sent after it in an
``audit`` block: ``ceil((MIN_PAIRS - got) * BLOCK_PAIRS / MIN_PAIRS)`` repeats (likewise
shared-prefix prompts) when fewer than ``MIN_PAIRS`` measured repeats completed, and
``min(E, AUDIT_BLOCK // 10)`` replays when no measured replay completed; the numbers go into
the run's ``meta.json`` (``audit_top_up``) and the observer's phase line.

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
from enum import Enum

import numpy as np

from inferaudit.measure.fingerprint import TAG, Entry
from inferaudit.measure.planner import Planner
from inferaudit.measure.protocol import Load, RunSpec
from inferaudit.measure.workload import RequestPlan, planning_seed, prf, prf_rng

__all__ = [
    "AUDIT",
    "CACHE_REPEAT",
    "LENGTH_TAG",
    "MIN_PAIRS",
    "PREFIX_HIT",
    "PROBE",
    "AuditStream",
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
MIN_PAIRS = 8  # = judge.caching.MIN_PAIRS (measure may not import judge; a test keeps them equal)
PAIR_EVERY = 16  # a stream's repeats and shared-prefix prompts: 1 measured position in 16 each
REPLAY_EVERY = 10  # a stream's replays: 1 in 10
_SPAN = 1 << 64


class Role(Enum):
    """What a measured position of an :class:`AuditStream` carries."""

    ordinary = "ordinary"
    repeat = "repeat"
    hit = "hit"
    replay = "replay"


class AuditStream:
    """The audit plans of a closed loop run for a duration, on demand (module docstring): an
    ``AuditLookup`` for the run's ``Planner``. Picklable (it travels to the load workers); it
    holds a key derived from the secret seed, never the seed. Its caches only speed up lookups
    in increasing id order: any id's plan is the same whatever was looked up before."""

    def __init__(
        self,
        key: bytes,
        start: int,
        conc: int,
        *,
        caching: bool,
        prefix: bool,
        replays: Sequence[Entry] = (),
    ) -> None:
        self.key = key
        self.start = start  # the first measured position (load.warmup)
        self.conc = conc
        self.caching = caching
        self.prefix = prefix
        self.replays = tuple(replays)
        repeat = _SPAN // PAIR_EVERY if caching else 0
        hit = _SPAN // PAIR_EVERY if prefix else 0
        replay = _SPAN // REPLAY_EVERY if self.replays else 0
        self._cuts = (repeat, repeat + hit, repeat + hit + replay)
        self._scanned = start  # replay ordinals are known for the ids below this one
        self._replays_before = 0  # replay positions below ``_scanned``
        self._ordinals: dict[int, int] = {}  # replay position -> its ordinal in the run
        self._orders: dict[int, list[int]] = {}  # cycle -> permutation of the entries
        self._roles: dict[int, Role] = {}  # recent roles (the windows of later lookups)

    def role(self, i: int) -> Role:
        """What measured position ``i`` carries (its id alone decides)."""
        role = self._roles.get(i)
        if role is None:
            role = self._roles[i] = self._draw(i)
            if len(self._roles) > 16 * self.conc + 256:  # keep the ones near ``i``
                self._roles = {q: r for q, r in self._roles.items() if q >= i - 4 * self.conc - 1}
        return role

    def _draw(self, i: int) -> Role:
        m = i - self.start
        if m < 0:
            return Role.ordinary
        u = int.from_bytes(prf(self.key, b"role", i)[:8], "big")
        repeat, hit, replay = self._cuts
        if u < repeat:
            return Role.repeat if m >= 2 * self.conc else Role.ordinary
        if u < hit:
            return Role.hit if m >= self.conc + 1 else Role.ordinary
        return Role.replay if u < replay else Role.ordinary

    def at(self, i: int, planner: Planner) -> RequestPlan | None:
        """The audit plan sent at measured position ``i`` (None: its own plan)."""
        role = self.role(i)
        c = self.conc
        if role is Role.ordinary:
            return None
        own = planner.generated(i)
        if role is Role.repeat:
            q = self._earlier(i, 2 * c, 4 * c, b"source")
            if q is None:
                return None
            first = planner.generated(q)
            return dataclasses.replace(first, id=i, phase=own.phase, tag=CACHE_REPEAT)
        if role is Role.hit:
            q = self._earlier(i, c + 1, 2 * c + 1, b"prime")
            if q is None or own.input_tokens is None:
                return None
            return _shared_prefix(own, planner.generated(q), planner)
        return _replay(own, self._entry(self._ordinal(i)))

    def _earlier(self, i: int, lo: int, hi: int, label: bytes) -> int | None:
        """An ordinary measured position ``lo .. hi`` before ``i``, drawn by ``prf(key, label,
        i)`` (None when there is none)."""
        cands = [
            q for q in range(max(self.start, i - hi), i - lo + 1) if self.role(q) is Role.ordinary
        ]
        if not cands:
            return None
        return cands[int.from_bytes(prf(self.key, label, i)[:8], "big") % len(cands)]

    def _ordinal(self, i: int) -> int:
        """How many replay positions precede replay position ``i`` (scanned once, in order)."""
        if i >= self._scanned:
            for q in range(self._scanned, i + 1):
                if self.role(q) is Role.replay:
                    self._ordinals[q] = self._replays_before
                    self._replays_before += 1
            self._scanned = i + 1
        return self._ordinals[i]

    def _entry(self, t: int) -> Entry:
        cycle, k = divmod(t, len(self.replays))
        order = self._orders.get(cycle)
        if order is None:
            rng = prf_rng(self.key, b"replay-order", cycle)
            order = self._orders[cycle] = rng.permutation(len(self.replays)).tolist()
        return self.replays[order[k]]


@dataclass(frozen=True)
class AuditTraffic:
    injected: dict[int, RequestPlan]  # measured positions -> the audit plan sent there
    before: tuple[RequestPlan, ...]  # phase "probe", before the load
    after: tuple[RequestPlan, ...]  # phase "audit", after the load (may be empty)
    concurrency: int  # of the separate phases: the run's (closed loop) or 4
    # a closed loop run for a duration: its in-load audit plans, on demand (``run_load(audit=)``);
    # what it falls short of goes after the load (``probes.top_up``)
    stream: AuditStream | None = None


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
    before = _probes(spec, planner) if conformance else ()
    if n is None:  # a closed loop for a duration: inside the load, on demand
        stream = None
        if caching or prefix or replays:
            key = prf(seed, b"audit-stream", 0)
            stream = AuditStream(key, spec.load.warmup, conc, caching=caching, prefix=prefix,
                                 replays=replays)  # fmt: skip
        return AuditTraffic({}, before, (), conc, stream)
    k = min(len(replays), max(1, n // 10)) if replays else 0
    pairs = int(np.clip(n // 16, 8, 64))
    injected: dict[int, RequestPlan] = {}
    after: tuple[RequestPlan, ...] = ()
    rng = prf_rng(seed, b"audit-positions", 0)
    picks = pick_entries(rng, replays, k)
    if n >= IN_LOAD_MIN:
        positions = list(range(spec.load.warmup, spec.load.warmup + n))
        plans = [planner.generated(i) for i in positions]
        chosen = _place(rng, plans, planner, picks, pairs if caching else 0, pairs if prefix else 0,
                        conc)  # fmt: skip
        injected = {p.id: p for p in chosen}
    else:
        if picks:
            ids = rng.choice(n, size=len(picks), replace=False) + spec.load.warmup
            for i, e in zip(sorted(int(x) for x in ids), picks, strict=True):
                injected[i] = _replay(planner.generated(i), e)
        if caching or prefix:
            after = audit_block(rng, planner, (), BLOCK_PAIRS if caching else 0,
                           BLOCK_PAIRS if prefix else 0, conc)  # fmt: skip
    return AuditTraffic(injected, before, after, conc)


def audit_block(
    rng: np.random.Generator,
    planner: Planner,
    picks: Sequence[Entry],
    repeats: int,
    hits: int,
    conc: int,
) -> tuple[RequestPlan, ...]:
    """The supplementary ``audit`` block: ``AUDIT_BLOCK`` + replays fresh plans, the audit
    plans at seeded positions among them."""
    size = AUDIT_BLOCK + len(picks)
    plans = [planner.generated(AUDIT_ID_BASE + j, phase=AUDIT) for j in range(size)]
    chosen = _place(rng, plans, planner, picks, repeats, hits, conc)
    by_id = {p.id: p for p in chosen}
    return tuple(by_id.get(p.id, p) for p in plans)


def pick_entries(rng: np.random.Generator, entries: Sequence[Entry], k: int) -> list[Entry]:
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
        dataclasses.replace(planner.generated(PROBE_ID_BASE + k, phase=PROBE), tag=LENGTH_TAG)
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
