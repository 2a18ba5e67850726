"""Audit traffic cannot be told from load: positions from the secret seed, one body shape, and
judges that compare repeats with controls sent at the same time (no unique-then-repeat drift)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from scipy import stats

from fakes import Behaviour, FakeServer
from inferaudit.audit.run import RunOptions, run_verification
from inferaudit.judge.caching import check_caching, check_prefix_cache
from inferaudit.judge.verdict import Outcome
from inferaudit.measure.fingerprint import Entry, Fingerprint, RecordedWorkload
from inferaudit.measure.planner import Planner
from inferaudit.measure.probes.plan import CACHE_REPEAT, PREFIX_HIT, plan_traffic
from inferaudit.measure.protocol import Endpoint, Length, Load, RunSpec, Sampling, Workload
from inferaudit.measure.records import Record, read_records
from inferaudit.measure.workload import (
    VOCAB,
    commit_seed,
    fresh_seed,
    load_seed,
    seed_commitment,
)

MODEL = "fake-model"
WORKLOAD = Workload(input_tokens=Length.parse("24-40"), output_tokens=Length(lo=8, hi=8))


def make_spec(base_url: str, requests: int = 24) -> RunSpec:
    return RunSpec(
        endpoint=Endpoint(base_url=base_url, model=MODEL),
        workload=WORKLOAD,
        load=Load(concurrency=2, requests=requests),
        workers=1,
        max_client_lag_p99_ms=1000.0,
    )


def fingerprint_for(spec: RunSpec, n: int = 8) -> Fingerprint:
    """A fingerprint drawn as ``fingerprint record`` draws one: the run's workload, another
    secret seed (its texts do not matter here)."""
    planner = Planner(commit_seed(spec, fresh_seed()))
    entries = tuple(
        Entry(str(k), p.prompt, 8, " w0", (3,), "", None, p.input_tokens)
        for k, p in ((k, planner.generated(k)) for k in range(n))
    )
    return Fingerprint(
        MODEL, "completions", None, "2026-01-01T00:00:00Z", 1.0, 0.9, "test", entries,
        RecordedWorkload.of(spec.workload),
    )  # fmt: skip


def test_load_replay_and_probe_requests_are_indistinguishable(tmp_path: Path) -> None:
    with FakeServer(Behaviour(models=(MODEL,))) as srv:
        spec = make_spec(srv.base_url)
        fp_path = tmp_path / "fp.json"
        fingerprint_for(spec).save(fp_path)
        outcome = run_verification(
            spec, tmp_path / "run", RunOptions(sign=False, fingerprint=fp_path)
        )
        bodies = list(srv.seen.bodies)
    records = read_records(tmp_path / "run" / "records.jsonl")
    assert len(bodies) == len(records)
    kind = {}
    for r in records:
        what = "load" if r.phase == "measure" and r.tag is None else "audit"
        kind.setdefault(r.prompt_sha256, set()).add(what)
    audit = [b for b in bodies if "audit" in kind[hashlib.sha256(b["prompt"].encode()).hexdigest()]]
    load = [b for b in bodies if kind[hashlib.sha256(b["prompt"].encode()).hexdigest()] == {"load"}]
    tags = {(r.tag or "").split(":")[0] for r in records}
    assert {"fingerprint", "cache", "prefix", "probe"} <= tags  # every kind of audit request
    assert len(audit) > 40 and len(load) > 10
    # (1) the same keys, in the same order, with the same value types and sampling values
    shape = [(k, type(v).__name__) for k, v in bodies[0].items()]
    assert shape == [
        ("model", "str"), ("prompt", "str"), ("max_tokens", "int"), ("ignore_eos", "bool"),
        ("min_tokens", "int"), ("stream", "bool"), ("stream_options", "dict"),
        ("temperature", "float"), ("top_p", "float"),
    ]  # fmt: skip
    assert all([(k, type(v).__name__) for k, v in b.items()] == shape for b in bodies)
    constant = {k: v for k, v in bodies[0].items() if k not in ("prompt",)}
    assert all({k: v for k, v in b.items() if k != "prompt"} == constant for b in bodies)
    # (2) the same prompt form: vocabulary words only, a length drawn from the workload's range
    lengths = {"audit": [], "load": []}
    for name, group in (("audit", audit), ("load", load)):
        for b in group:
            words = b["prompt"].split(" ")
            assert set(words) <= set(VOCAB)
            assert 24 <= len(words) <= 40
            lengths[name].append(len(words))
    assert stats.ks_2samp(lengths["audit"], lengths["load"]).pvalue > 1e-3
    # (3) the seed: committed in spec.json, revealed after the run, and it matches
    seed = load_seed(tmp_path / "run")
    assert seed is not None and seed_commitment(seed) == outcome.spec.seed_commitment
    assert seed.hex() not in (tmp_path / "run" / "spec.json").read_text()


def test_plan_puts_the_audit_inside_a_long_load() -> None:
    spec = commit_seed(make_spec("http://127.0.0.1:1/v1", requests=400), fresh_seed())
    spec = spec.model_copy(update={"sampling": Sampling()})
    traffic = plan_traffic(spec, conformance=True, caching=True, prefix=True)
    assert traffic.after == ()  # all inside the load
    plans = Planner(spec)
    repeats = [p for p in traffic.injected.values() if p.tag == CACHE_REPEAT]
    hits = [p for p in traffic.injected.values() if p.tag and p.tag.startswith(PREFIX_HIT)]
    assert len(repeats) == len(hits) == 25  # 400 // 16
    for p in repeats:  # an exact earlier plan, 2c..4c positions before
        gap = range(max(0, p.id - 8), p.id - 3)
        sources = [q for q in gap if plans.generated(q).prompt == p.prompt]
        assert sources and sources[0] not in traffic.injected
        assert plans.generated(sources[0]).extra_body == p.extra_body
    for p in hits:
        prime, shared = (int(x) for x in p.tag[len(PREFIX_HIT) :].split(":"))
        assert 3 <= p.id - prime <= 5 and prime not in traffic.injected
        own = plans.generated(p.id)
        assert p.prompt.split()[:shared] == plans.generated(prime).prompt.split()[:shared]
        assert len(p.prompt.split()) == own.input_tokens and p.max_tokens == own.max_tokens
    # different secret, different positions
    other = commit_seed(make_spec("http://127.0.0.1:1/v1", requests=400), fresh_seed())
    moved = plan_traffic(other, conformance=False, caching=True, prefix=True)
    assert set(moved.injected) != set(traffic.injected)


def rec(i: int, sent_ms: float, ttft_ms: float, prompt: str, tag: str | None = None) -> Record:
    sent = int(sent_ms * 1e6)
    first = sent + int(ttft_ms * 1e6)
    return Record(
        id=i, tag=tag, scheduled_ns=sent, sent_ns=sent, first_chunk_ns=first,
        first_content_ns=first, chunk_ns=[first], chunk_chars=[3], done_ns=first + 1_000_000,
        status=200, finish_reason="length", content_chunks=1, usage_completion_tokens=1,
        output_chars=3, prompt_sha256=hashlib.sha256(prompt.encode()).hexdigest(),
        input_tokens=32, max_tokens=1,
    )  # fmt: skip


def drifting(cache: bool, slope: float = 1.0) -> list[Record]:
    """Host speed drifts (TTFT moves ``slope`` ms per request); every 4th request repeats the
    prompt sent 9 requests before it (served in 1 ms by a cache when ``cache``)."""
    out = []
    for i in range(96):
        ttft = 120.0 + slope * i
        if i % 4 == 3 and i >= 8:
            out.append(rec(i, 200.0 * i, 1.0 if cache else ttft, f"p{i - 9}", CACHE_REPEAT))
        else:
            out.append(rec(i, 200.0 * i, ttft, f"p{i}"))
    return out


def test_drift_alone_is_not_caching_and_a_cache_is() -> None:
    # The false alarm of issue 8: comparing later repeats with earlier uniques reads drift as
    # caching (here repeats would look *slower*, and the opposite drift faster). Controls sent
    # next to each repeat see the same drift.
    honest = check_caching(drifting(cache=False))
    assert honest.verdict is Outcome.passed, honest.summary
    assert honest.numbers["pairs"] == 22 and abs(honest.numbers["ttft_improvement"]) < 0.05
    assert check_caching(drifting(cache=False, slope=-1.0)).verdict is Outcome.passed
    cached = check_caching(drifting(cache=True))
    assert cached.verdict is Outcome.failed and cached.numbers["ttft_improvement"] > 0.9
    allowed = check_caching(drifting(cache=True), allowed=True)
    assert allowed.verdict is Outcome.passed
    assert allowed.summary.endswith("caching allowed by the protocol")


def test_too_few_pairs_is_inconclusive_not_a_pass() -> None:
    few = drifting(cache=True)[:30]
    v = check_caching(few)
    assert v.verdict is Outcome.inconclusive and v.numbers["pairs"] < 8
    assert check_prefix_cache(few).verdict is Outcome.inconclusive


@pytest.mark.parametrize("cached", [False, True])
def test_prefix_hits_against_controls(cached: bool) -> None:
    out = []
    for i in range(64):
        ttft = 40.0 + (i % 5)
        if i % 4 == 3:
            tag = f"{PREFIX_HIT}{i - 3}:24"
            out.append(rec(i, 10.0 * i, 8.0 if cached else ttft, f"h{i}", tag))
        else:
            out.append(rec(i, 10.0 * i, ttft, f"p{i}"))
    v = check_prefix_cache(out)
    assert v.numbers["pairs"] == 16
    assert v.verdict is (Outcome.failed if cached else Outcome.passed), v.summary
