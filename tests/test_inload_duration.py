"""A closed loop run for a duration carries its audit traffic inside the load (issue 8, item 3):
positions drawn from the secret seed over the unbounded sequence of measured positions, each
plan a function of its id; only a shortfall goes after the load."""

from __future__ import annotations

import hashlib
import math
import pickle
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from inferaudit.audit.run import RunOptions, run_verification
from inferaudit.judge import caching
from inferaudit.judge.verdict import Outcome, Verdict, format_verdict
from inferaudit.measure.fingerprint import TAG, Entry, Fingerprint, load_fingerprint
from inferaudit.measure.planner import Planner
from inferaudit.measure.probes.plan import (
    AUDIT,
    BLOCK_PAIRS,
    CACHE_REPEAT,
    MIN_PAIRS,
    PREFIX_HIT,
    AuditStream,
    AuditTraffic,
    Role,
    plan_traffic,
)
from inferaudit.measure.probes.top_up import top_up
from inferaudit.measure.protocol import Endpoint, Length, Load, RunSpec, Sampling, Workload
from inferaudit.measure.records import Record, read_records
from inferaudit.measure.workload import RequestPlan, commit_seed, fixed_seed
from inferaudit.twin.launch import start_twin
from inferaudit.twin.options import TwinOptions
from test_audit_traffic import rec
from test_traffic_cheats import twin_reference

MODEL = "twin-m"
WORKLOAD = Workload(input_tokens=Length.parse("40-56"), output_tokens=Length(lo=16, hi=16))


def make_spec(base_url: str = "http://127.0.0.1:1/v1", *, concurrency: int = 4,
              duration_s: float = 5.0, warmup: int = 3) -> RunSpec:  # fmt: skip
    return RunSpec(
        endpoint=Endpoint(base_url=base_url, model=MODEL),
        workload=WORKLOAD,
        load=Load(concurrency=concurrency, duration_s=duration_s, warmup=warmup),
        workers=1,
        sampling=Sampling(),
        max_client_lag_p99_ms=1000.0,  # a shared 2-core test machine; lag is not under test
    )


def entries(spec: RunSpec, n: int) -> tuple[Entry, ...]:
    planner = Planner(commit_seed(spec, fixed_seed(999)))
    return tuple(
        Entry(f"e{k}", p.prompt, 8, " w0", (3,), "", None, p.input_tokens)
        for k, p in ((k, planner.generated(10_000 + k)) for k in range(n))
    )


def stream_of(traffic: AuditTraffic) -> AuditStream:
    assert traffic.stream is not None
    return traffic.stream


def test_a_duration_run_plans_its_audit_inside_the_load() -> None:
    spec = commit_seed(make_spec(), fixed_seed(1))
    replays = entries(spec, 8)
    traffic = plan_traffic(spec, conformance=True, caching=True, prefix=True, replays=replays)
    assert traffic.injected == {} and traffic.after == ()  # nothing after the load up front
    assert len(traffic.before) == 6  # the conformance probes are unchanged
    stream = stream_of(traffic)
    planner = Planner(spec, audit=stream)
    ids = range(2_000)
    plans = [planner.plan(i) for i in ids]
    c = 4
    assert all(p.tag is None for p in plans[:3])  # warm-up positions carry nothing
    repeats = [p for p in plans if p.tag == CACHE_REPEAT]
    hits = [p for p in plans if p.tag and p.tag.startswith(PREFIX_HIT)]
    replayed = [p for p in plans if p.tag and p.tag.startswith(TAG)]
    roles = Counter(stream.role(i) for i in ids)
    # every drawn role is carried out (a source always exists at these densities)
    assert (len(repeats), len(hits), len(replayed)) == (
        roles[Role.repeat],
        roles[Role.hit],
        roles[Role.replay],
    )
    # densities 1/16, 1/16, 1/10 of ~2000 measured positions (5 binomial sigmas)
    for got, p in ((len(repeats), 1 / 16), (len(hits), 1 / 16), (len(replayed), 1 / 10)):
        assert abs(got - 1997 * p) < 5 * math.sqrt(1997 * p * (1 - p))
    assert {p.phase for p in repeats + hits + replayed} == {"measure"}
    for p in repeats:  # the exact plan of an ordinary measured position 2c..4c before
        sources = [q for q in range(p.id - 4 * c, p.id - 2 * c + 1)
                   if q >= 3 and planner.generated(q).prompt == p.prompt]  # fmt: skip
        assert len(sources) == 1 and stream.role(sources[0]) is Role.ordinary
        first = planner.plan(sources[0])
        assert first == planner.generated(sources[0])  # the source is sent unchanged
        assert (first.max_tokens, first.extra_body) == (p.max_tokens, p.extra_body)
    for p in hits:
        assert p.tag is not None
        prime, shared = (int(x) for x in p.tag[len(PREFIX_HIT) :].split(":"))
        assert c + 1 <= p.id - prime <= 2 * c + 1 and stream.role(prime) is Role.ordinary
        own = planner.generated(p.id)
        assert p.prompt.split()[:shared] == planner.generated(prime).prompt.split()[:shared]
        assert len(p.prompt.split()) == own.input_tokens and p.extra_body == own.extra_body
    # replays: every entry once before any twice, each at its position's own body keys
    first_cycle = [p.tag for p in replayed[:8]]
    assert sorted(first_cycle) == sorted(f"{TAG}{e.id}" for e in replays)
    assert sorted(p.tag for p in replayed[8:16]) == sorted(first_cycle)
    assert all(p.extra_body == planner.generated(p.id).extra_body for p in replayed)
    # a function of the id alone: a fresh copy (as a worker gets it), asked in any order
    copy = pickle.loads(pickle.dumps(Planner(spec, audit=stream)))
    assert [copy.plan(i) for i in reversed(ids)] == plans[::-1]
    # same secret, same positions; another secret, others
    same = plan_traffic(spec, conformance=False, caching=True, prefix=True, replays=replays)
    assert [stream_of(same).role(i) for i in ids] == [stream.role(i) for i in ids]
    other = plan_traffic(commit_seed(make_spec(), fixed_seed(2)), conformance=False,
                         caching=True, prefix=True, replays=replays)  # fmt: skip
    assert [stream_of(other).role(i) for i in ids] != [stream.role(i) for i in ids]
    # no check that needs traffic: no stream
    none = plan_traffic(spec, conformance=False, caching=False, prefix=False)
    assert none.stream is None and none.injected == {} and none.after == ()


def measured(plans: list[RequestPlan], ok: bool = True) -> list[Record]:
    out = []
    for k, p in enumerate(plans):
        r = rec(p.id, 10.0 * k, 40.0, p.prompt, p.tag)
        out.append(r if ok else r.model_copy(update={"error_class": "cancelled"}))
    return out


def test_only_the_shortfall_goes_after_the_load() -> None:
    assert MIN_PAIRS == caching.MIN_PAIRS
    spec = commit_seed(make_spec(), fixed_seed(1))
    replays = entries(spec, 8)
    traffic = plan_traffic(spec, conformance=False, caching=True, prefix=True, replays=replays)
    planner = Planner(spec, audit=stream_of(traffic))
    plans = [planner.plan(i) for i in range(3, 2_000)]

    def pick(what: str, n: int) -> list[RequestPlan]:
        return [p for p in plans if (p.tag or "").startswith(what)][:n]

    enough = measured(pick(CACHE_REPEAT, 8) + pick(PREFIX_HIT, 8) + pick(TAG, 1))
    done = top_up(spec, traffic, enough)
    assert done.plans == () and done.added.to_json() == {
        "repeats": 0, "prefix_hits": 0, "replays": 0
    }  # fmt: skip
    assert done.to_json()["in_load_completed"] == {"repeats": 8, "prefix_hits": 8, "replays": 1}
    # 5 repeats completed (2 more were cut off), 8 shared-prefix prompts, no replay
    short = measured(pick(CACHE_REPEAT, 5) + pick(PREFIX_HIT, 8))
    short += measured(pick(CACHE_REPEAT, 7)[5:], ok=False)
    extra = top_up(spec, traffic, short)
    assert (extra.in_load.repeats, extra.in_load.hits, extra.in_load.replays) == (5, 8, 0)
    assert (extra.needed.repeats, extra.needed.hits, extra.needed.replays) == (8, 8, 1)
    assert extra.added.repeats == math.ceil(3 * BLOCK_PAIRS / MIN_PAIRS) == 5
    assert extra.added.hits == 0 and extra.added.replays == 6  # min(8 entries, 64 // 10)
    assert len(extra.plans) == 64 + 6 and {p.phase for p in extra.plans} == {AUDIT}
    assert sum(p.tag == CACHE_REPEAT for p in extra.plans) == 5
    assert extra.line() == (
        "5 of 8 repeats in the load, 5 more after it; 0 of 1 replays in the load, 6 more after it"
    )
    assert top_up(spec, traffic, short).plans == extra.plans  # drawn from the seed


# ---- end to end, against the twin -------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fingerprint of the honest twin, recorded with the runs' workload flags."""
    return twin_reference(tmp_path_factory.mktemp("fp") / "ref.json", WORKLOAD)


# Measured positions the twin runs below surely reach (each saw 2-3x this on a busy 2-core
# machine): the secret is chosen so that enough audit requests fall inside them.
REACH = 160


def secret_for(spec: RunSpec, fp: Fingerprint | None, *, caching_on: bool, prefix_on: bool,
               need: int) -> bytes:  # fmt: skip
    """The first fixed secret whose stream puts ``need`` repeats (and shared-prefix prompts,
    and 2 replays) in the first ``REACH`` measured positions: the run then needs no top-up
    however the machine's speed varies above that."""
    for k in range(200):
        seed = fixed_seed(k)
        traffic = plan_traffic(commit_seed(spec, seed), conformance=False, caching=caching_on,
                               prefix=prefix_on, replays=fp.entries if fp else ())  # fmt: skip
        stream = stream_of(traffic)
        roles = Counter(stream.role(i) for i in range(spec.load.warmup, spec.load.warmup + REACH))
        if (roles[Role.repeat] >= need and (not prefix_on or roles[Role.hit] >= need)
                and (fp is None or roles[Role.replay] >= 2)):  # fmt: skip
            return seed
    raise AssertionError("no seed in 200 meets the counts")


class Phases:
    """A run observer that keeps the phase lines."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def phase(self, name: str, total: int | None) -> None:
        self.names.append(name)

    def record(self, record: Record) -> None:
        pass


@dataclass
class Ran:
    spec: RunSpec
    records: list[Record]
    verdicts: dict[str, Verdict]
    meta: dict[str, Any]
    phases: list[str]


def run_twin(tmp_path: Path, behave: tuple[str, ...], checks: list[str], *, duration_s: float,
             ttft_ms: int, secret: bytes | None = None, fingerprint: Path | None = None,
             concurrency: int = 8) -> Ran:  # fmt: skip
    obs = Phases()
    with start_twin(TwinOptions(ttft_ms=ttft_ms, tpot_ms=1, model=MODEL, behave=behave)) as twin:
        spec = make_spec(twin.base_url, concurrency=concurrency, duration_s=duration_s)
        if secret is not None:
            spec = spec.model_copy(update={"secret_seed": secret})
        options = RunOptions(checks=checks, fingerprint=fingerprint, sign=False)
        outcome = run_verification(spec, tmp_path / "run", options, obs)
    return Ran(
        outcome.spec,
        read_records(tmp_path / "run" / "records.jsonl"),
        {v.check: v for v in outcome.verdicts},
        orjson.loads((tmp_path / "run" / "meta.json").read_bytes()),
        obs.names,
    )


def test_duration_run_judges_from_audit_inside_the_load(tmp_path: Path, reference: Path) -> None:
    fp = load_fingerprint(reference)
    checks = ["caching", "prefix-cache", "identity"]
    secret = secret_for(make_spec(concurrency=8), fp, caching_on=True, prefix_on=True, need=11)
    ran = run_twin(tmp_path, (), checks, duration_s=4.0, ttft_ms=30, secret=secret,
                   fingerprint=reference)  # fmt: skip
    spec, records = ran.spec, ran.records
    measure = [r for r in records if r.phase == "measure"]
    assert len(measure) >= REACH, f"only {len(measure)} measured requests: machine too slow"
    # ground truth: each measured record carries exactly the plan its id draws
    traffic = plan_traffic(spec, conformance=False, caching=True, prefix=True,
                           replays=fp.entries)  # fmt: skip
    planner = Planner(spec, audit=stream_of(traffic))
    for r in measure:
        plan = planner.plan(r.id)
        assert (r.tag, r.prompt_sha256) == (
            plan.tag,
            hashlib.sha256(plan.prompt.encode()).hexdigest(),
        )
    tags = Counter((r.tag or "").split(":")[0] for r in measure)
    assert tags["cache"] >= 11 and tags["prefix"] >= 11 and tags["fingerprint"] >= 2
    # enough inside the load: no after-load block, and the run says so
    assert {r.phase for r in records} == {"warmup", "measure"}
    assert ran.meta["audit_top_up"]["after_load_requests"] == 0
    assert not any(n.startswith("checks: audit block") for n in ran.phases)
    verdicts = ran.verdicts
    for name in checks:
        v = verdicts[name]
        assert v.verdict is Outcome.passed, format_verdict(v)
    assert verdicts["caching"].numbers["pairs"] >= MIN_PAIRS
    assert verdicts["identity"].numbers["replayed"] == tags["fingerprint"]


def test_a_cache_is_caught_inside_a_duration_run(tmp_path: Path) -> None:
    secret = secret_for(make_spec(concurrency=8), None, caching_on=True, prefix_on=False,
                        need=11)  # fmt: skip
    # ~116 ms requests (the cached ones ~1 ms): about 340 measured positions in 5 s
    ran = run_twin(tmp_path, ("response-cache",), ["caching"], duration_s=5.0, ttft_ms=100,
                   secret=secret)  # fmt: skip
    v = ran.verdicts["caching"]
    assert v.verdict is Outcome.failed, format_verdict(v)
    assert {r.phase for r in ran.records} == {"warmup", "measure"}
    repeats = [r for r in ran.records if r.tag == CACHE_REPEAT]
    assert len(repeats) >= 11 and {r.phase for r in repeats} == {"measure"}


def test_a_short_duration_run_tops_up_after_the_load(tmp_path: Path) -> None:
    # 1 s at concurrency 4 of ~250 ms requests: about 16 measured positions, too few for pairs
    ran = run_twin(tmp_path, (), ["caching"], duration_s=1.0, ttft_ms=230, concurrency=4)
    numbers = ran.meta["audit_top_up"]
    got = numbers["in_load_completed"]["repeats"]
    assert got < MIN_PAIRS and numbers["needed"]["repeats"] == MIN_PAIRS
    added = math.ceil((MIN_PAIRS - got) * BLOCK_PAIRS / MIN_PAIRS)
    assert numbers["after_load"]["repeats"] == added
    audit = [r for r in ran.records if r.phase == AUDIT]
    assert len(audit) == numbers["after_load_requests"] == 64
    assert sum(r.tag == CACHE_REPEAT for r in audit) == added
    line = f"checks: audit block (the load fell short: {got} of 8 repeats in the load, "
    assert any(n.startswith(line) for n in ran.phases), ran.phases
    v = ran.verdicts["caching"]
    assert v.verdict is Outcome.passed, format_verdict(v)
