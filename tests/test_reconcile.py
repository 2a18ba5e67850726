"""Reconciliation on crafted claims and hand-made, sealed run directories: one test per status,
and every kind of evidence that does not verify refused with its reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from inferaudit import home as home_mod
from inferaudit.errors import ConfigError
from inferaudit.intent.claims import Claim, ClaimInput, build_claim, seed_claims
from inferaudit.intent.reconcile import (
    RunSet,
    Status,
    open_runs,
    reconcile,
    reconcile_claim,
    roofline_check,
    run_label,
)
from inferaudit.intent.rollups import provenance_bucket, rollups
from inferaudit.intent.roofline import Plausibility
from inferaudit.judge.suite import recheck
from inferaudit.measure import metrics
from inferaudit.measure.protocol import (
    SLO,
    SPEC_VERSION,
    SPEC_VERSION_V1,
    Endpoint,
    Load,
    RunSpec,
    SpecVersion,
    canonical_bytes,
)
from inferaudit.measure.records import Record, write_records
from inferaudit.seal.keys import DEFAULT_SIGNER_NAME, load_or_create_signer
from inferaudit.seal.ledger.store import open_ledger
from inferaudit.seal.publish import seal_run
from inferaudit.seal.trust import default_policy

MS = 1_000_000
NO_RUNS = RunSet("no trust policy (no runs given)", (), ())


def seal(run_dir: Path, home: Path) -> Path:
    """Sign the run with ``home``'s runner key and log it in ``home``'s ledger."""
    signer = load_or_create_signer(home, DEFAULT_SIGNER_NAME)
    with open_ledger(home_mod.db_url(None, home), home) as ledger:
        seal_run(run_dir, signer, ledger)
    return run_dir


def runs_of(home: Path, *paths: Path) -> RunSet:
    """The run directories opened under ``home``'s default trust policy."""
    return open_runs(paths, default_policy(home))


def make_run(
    run_dir: Path,
    home: Path,
    *,
    deployment: str | None = "dep-a",
    model: str = "meta-llama/Llama-3.1-8B-Instruct",
    claim: str | None = None,
    requests: int = 200,
    tokens: int = 50,
    interval_ms: float = 50.0,
    gap_ms: float = 2.0,
    ttft_ms: float = 20.0,
    lag_ms: float = 0.0,
    slo: str | None = None,
    failed_check: bool = False,
    all_errors: bool = False,
    jitter: bool = False,
    usage_extra: int = 0,
    version: SpecVersion = SPEC_VERSION,
) -> Path:
    """A sealed run directory (v2 layout): spec.json, records.jsonl, the real summary and the
    real verdicts of the ``token-accounting`` check, signed and logged in ``home``.

    Steady state: ``tokens`` output tokens every ``interval_ms`` -> tokens*1000/interval tok/s.
    ``failed_check``: the server's usage reports twice the tokens it streamed, so the check
    really fails. ``jitter`` spreads TTFT and token gaps deterministically (0.5x to 2.5x).
    ``usage_extra``: usage claims that many tokens more than the stream delivered, per request,
    within ``max_tokens`` (so that without a tokenizer token-accounting can only say
    inconclusive: multi-token events or inflation).
    """
    spec = RunSpec(
        spec_version=version,
        endpoint=Endpoint(base_url="http://127.0.0.1:9/v1", model=model),
        load=Load(rate=1000 / interval_ms, requests=requests, arrivals="constant"),
        slo=SLO.parse(slo) if slo else SLO(),
        deployment=deployment,
        claim=claim,
        max_client_lag_p99_ms=5.0,
        checks=("token-accounting",),
    )
    records = []
    for i in range(requests):
        scheduled = int(i * interval_ms * MS)
        sent = scheduled + int(lag_ms * MS)
        if all_errors:
            records.append(
                Record(
                    id=i,
                    scheduled_ns=scheduled,
                    sent_ns=sent,
                    done_ns=sent + MS,
                    status=500,
                    error_class="http_500",
                )
            )
            continue
        spread = 0.5 + 2.0 * ((i * 37) % 100) ** 2 / 10_000 if jitter else 1.0
        first = sent + int(ttft_ms * spread * MS)
        chunks = [first + int(k * gap_ms * spread * MS) for k in range(tokens)]
        records.append(
            Record(
                id=i,
                scheduled_ns=scheduled,
                sent_ns=sent,
                first_chunk_ns=first,
                first_content_ns=first,
                chunk_ns=chunks,
                chunk_chars=[3] * tokens,
                done_ns=chunks[-1],
                status=200,
                finish_reason="length",
                usage_completion_tokens=(2 * tokens if failed_check else tokens) + usage_extra,
                content_chunks=tokens,
                output_chars=3 * tokens,
                max_tokens=tokens + usage_extra,
            )
        )
    run_dir.mkdir(parents=True)
    (run_dir / "spec.json").write_bytes(canonical_bytes(spec))
    write_records(run_dir / "records.jsonl", records)
    summary = metrics.summarize(records, spec).to_json()
    (run_dir / "summary.json").write_bytes(orjson.dumps(summary))
    verdicts = [v.to_json() for v in recheck(records, spec, names=spec.checks, health=())]
    (run_dir / "verdicts.json").write_bytes(orjson.dumps(verdicts))
    return seal(run_dir, home)


def tps_claim(
    claim_id: str = "tps-claim",
    value: float = 900.0,
    *,
    deployment: str | None = "dep-a",
    model: str | None = "llama-3.1-8b",
    slo: str | None = None,
    accelerator: str | None = "H100-SXM",
    count: int | None = 1,
    concurrency: int | None = 64,
    source_class: str = "vendor",
    techniques: tuple[str, ...] = (),
) -> Claim:
    return build_claim(
        ClaimInput(
            claim_id=claim_id,
            statement=f"dep-a serves Llama 3.1 8B at {value} tokens/s",
            status="operational_claimed",
            certainty="unknown",
            source_url="https://vendor.example/claim",
            source_class=source_class,
            entities=(("NVIDIA", "chip_vendor"), ("Operator Y", "operator")),
            city="Xining",
            deployment=deployment,
            accelerator=accelerator,
            count=count,
            metric="tokens_per_second",
            value=value,
            unit="tokens/s",
            basis="announced",
            precision="bf16",
            model=model,
            concurrency=concurrency,
            context_tokens=1024,
            slo=slo,
            techniques=techniques,
        )
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """The data directory whose keys sign the runs and whose default policy trusts them."""
    return tmp_path / "home"


def summary_of(run: Path) -> dict[str, Any]:
    return json.loads((run / "summary.json").read_text())


def test_verified_uses_the_lower_confidence_bound(tmp_path: Path, home: Path) -> None:
    run = make_run(tmp_path / "r1", home, claim="tps-claim")
    low = summary_of(run)["output_throughput_ci"]["low"]
    assert 900 < low < 1000  # 50 tokens every 50 ms = 1000 tok/s at steady state
    (r,) = reconcile([tps_claim()], runs_of(home, run))
    assert r.status is Status.verified
    assert r.verified == low
    assert r.value_basis == "ci-low"
    assert r.ratio == pytest.approx(low / 900)


def test_shortfall_states_the_ratio(tmp_path: Path, home: Path) -> None:
    run = make_run(tmp_path / "r1", home)
    low = summary_of(run)["output_throughput_ci"]["low"]
    (r,) = reconcile([tps_claim(value=2000.0)], runs_of(home, run))
    assert r.status is Status.shortfall
    assert r.ratio == pytest.approx(low / 2000.0)
    assert f"{low / 2000.0:.1%}" in r.reasons[0]


def test_tolerance_decides_between_verified_and_shortfall(tmp_path: Path, home: Path) -> None:
    run = make_run(tmp_path / "r1", home)
    low = summary_of(run)["output_throughput_ci"]["low"]
    claim = tps_claim(value=low / 0.95 * 0.999)  # within 5 % of the lower bound
    ev = runs_of(home, run)
    assert reconcile_claim(claim, ev, tolerance=0.05).status is Status.verified
    assert reconcile_claim(claim, ev, tolerance=0.0).status is Status.shortfall
    with pytest.raises(ConfigError, match="tolerance"):
        reconcile_claim(claim, ev, tolerance=1.0)


def test_only_the_tokens_the_stream_proves_are_credited(tmp_path: Path, home: Path) -> None:
    honest = make_run(tmp_path / "honest", home, claim="tps-claim")
    inflated = make_run(tmp_path / "inflated", home, claim="tps-claim", usage_extra=1)
    s = summary_of(inflated)
    # +1 token claimed on every request (2%): the usage-based figure is higher, not credited
    assert s["token_credit"]["uncredited_tokens"] == 200
    assert s["token_credit"]["usage_based_throughput_tok_s"] > s["output_throughput_tok_s"]
    assert s["output_throughput_ci"] == summary_of(honest)["output_throughput_ci"]
    (r,) = reconcile([tps_claim()], runs_of(home, inflated))
    assert runs_of(home, inflated).verified[0].verdicts[0].verdict.value == "inconclusive"
    assert r.status is Status.verified
    assert r.verified == summary_of(honest)["output_throughput_ci"]["low"]
    assert r.runs[0].reasons == (f"lower 95% bound of proven output tokens/s: {r.verified:.4g}",)


def test_v1_evidence_with_usage_above_the_stream_is_not_credited(
    tmp_path: Path, home: Path
) -> None:
    agree = make_run(tmp_path / "v1-agree", home, claim="tps-claim", version=SPEC_VERSION_V1)
    above = make_run(
        tmp_path / "v1-above", home, claim="tps-claim", version=SPEC_VERSION_V1, usage_extra=1
    )
    assert "token_credit" not in summary_of(above)  # a v1 summary credits usage
    (r,) = reconcile([tps_claim()], runs_of(home, above))
    assert r.status is Status.unverified and r.verified is None
    assert r.runs[0].reasons == (
        "not credited: its v1 summary credits usage above the stream's content events on 200 "
        "requests, so it holds no proven lower bound (re-run with this version)",
    )
    (ok,) = reconcile([tps_claim()], runs_of(home, agree))  # usage == events: proven as is
    assert ok.status is Status.verified
    assert ok.verified == summary_of(agree)["output_throughput_ci"]["low"]
    assert ok.runs[0].reasons[0].startswith("lower 95% bound of output tokens/s: ")


def test_unverified_without_matching_evidence(tmp_path: Path, home: Path) -> None:
    other = make_run(tmp_path / "other", home, deployment="dep-b")
    (r,) = reconcile([tps_claim()], runs_of(home, other))
    assert r.status is Status.unverified
    assert r.runs == ()
    assert r.reasons == ("no verified run matches this claim",)


def test_match_by_deployment_model_and_slo(tmp_path: Path, home: Path) -> None:
    claim = tps_claim(slo="ttft_p90=2000ms")
    strict = make_run(tmp_path / "strict", home, slo="ttft_p90=1000ms")
    loose = make_run(tmp_path / "loose", home, slo="ttft_p90=3000ms")
    no_slo = make_run(tmp_path / "noslo", home)
    other_model = make_run(tmp_path / "qwen", home, model="qwen2.5-7b", slo="ttft_p90=1000ms")
    r = reconcile_claim(claim, runs_of(home, strict, loose, no_slo, other_model))
    assert [j.label for j in r.runs] == ["strict"]
    assert r.status is Status.verified


def test_slo_not_met_does_not_count(tmp_path: Path, home: Path) -> None:
    claim = tps_claim(slo="ttft_p90=10ms")
    run = make_run(tmp_path / "r1", home, slo="ttft_p90=10ms")  # every TTFT is 20 ms
    r = reconcile_claim(claim, runs_of(home, run))
    assert r.status is Status.unverified
    assert r.verified is None
    assert any("SLO ttft_p90 verdict fail" in why for why in r.reasons)


def test_point_value_fallback_says_why(tmp_path: Path, home: Path) -> None:
    run = make_run(tmp_path / "few", home, requests=6, claim="tps-claim")
    s = summary_of(run)
    assert s["output_throughput_ci"]["low"] is None
    r = reconcile_claim(tps_claim(value=100.0), runs_of(home, run))
    assert r.status is Status.verified
    assert r.value_basis == "point"
    assert r.verified == s["output_throughput_tok_s"]
    assert any("no confidence interval" in why for why in r.reasons)


def test_implausible_above_the_roofline() -> None:
    # 1 x H100, Llama 3.1 8B bf16, one stream: at most 3.35e12 / 16.06e9 = 208.6 tokens/s
    claim = tps_claim(value=240.0, concurrency=1)
    check = roofline_check(claim)
    assert check is not None and check.verdict is Plausibility.implausible
    r = reconcile_claim(claim, NO_RUNS)
    assert r.status is Status.implausible
    assert "memory-bound" in r.reasons[0]
    declared = tps_claim(value=240.0, concurrency=1, techniques=("speculative-decoding",))
    assert reconcile_claim(declared, NO_RUNS).status is Status.unverified


def test_contradicted_by_a_failed_check(tmp_path: Path, home: Path) -> None:
    run = make_run(tmp_path / "r1", home, failed_check=True)
    r = reconcile_claim(tps_claim(), runs_of(home, run))
    assert r.status is Status.contradicted
    assert "integrity check token-accounting failed: usage claims more tokens" in r.reasons[0]


def test_contradicted_by_an_invalid_run(tmp_path: Path, home: Path) -> None:
    run = make_run(tmp_path / "r1", home, all_errors=True)
    assert summary_of(run)["valid"] is False
    r = reconcile_claim(tps_claim(), runs_of(home, run))
    assert r.status is Status.contradicted
    assert "no measured request completed" in r.reasons[0]


def test_client_lag_is_the_tools_fault_not_the_vendors(tmp_path: Path, home: Path) -> None:
    run = make_run(tmp_path / "r1", home, lag_ms=20.0)
    assert summary_of(run)["valid"] is False
    r = reconcile_claim(tps_claim(), runs_of(home, run))
    assert r.status is Status.unverified
    assert any("client-side fault" in why for why in r.reasons)
    both = make_run(tmp_path / "r2", home, lag_ms=20.0, failed_check=True)
    r = reconcile_claim(tps_claim(), runs_of(home, both))
    assert r.status is Status.unverified
    assert "failed checks not counted against the claim: token-accounting" in r.reasons[0]


def test_sweep_directory_gives_one_item_per_point(tmp_path: Path, home: Path) -> None:
    make_run(tmp_path / "sw" / "point-000", home, interval_ms=100.0)
    make_run(tmp_path / "sw" / "point-001", home, interval_ms=50.0)
    (tmp_path / "sw" / "sweep.json").write_text('{"points": []}')
    ev = runs_of(home, tmp_path / "sw")
    assert [run_label(e.run_dir) for e in ev.verified] == ["sw/point-000", "sw/point-001"]
    r = reconcile_claim(tps_claim(), ev)
    assert r.status is Status.verified  # the best point counts
    assert r.verified == summary_of(tmp_path / "sw" / "point-001")["output_throughput_ci"]["low"]


def test_not_a_run_directory(tmp_path: Path, home: Path) -> None:
    with pytest.raises(ConfigError, match="not a run directory"):
        runs_of(home, tmp_path)


def test_rollups_and_self_disclosure(tmp_path: Path, home: Path) -> None:
    run = make_run(tmp_path / "r1", home)
    vendor = tps_claim("a-claim", 900.0)
    media = tps_claim("b-claim", 500.0, deployment="dep-z", source_class="independent_media")
    results = reconcile([vendor, media], runs_of(home, run))
    assert [provenance_bucket(r) for r in results] == [
        "independent measurement",
        "media / aggregator only",
    ]
    (site,) = rollups(results, "site")
    assert (site.key, site.metric, site.stage) == ("Xining", "tokens_per_second", "committed")
    assert site.claimed == 1400.0
    assert site.verified == 900.0  # capped at the claim it verifies
    assert site.self_disclosed_only == 0.0
    unmeasured = reconcile([vendor], NO_RUNS)
    (row,) = rollups(unmeasured, "vendor")
    assert (row.key, row.self_disclosed_only) == ("NVIDIA", 900.0)


def test_seed_rollups_split_hardware_lines() -> None:
    results = reconcile(seed_claims(), NO_RUNS)
    assert all(r.status is Status.unverified for r in results)
    cards = {
        r.key: r.claimed
        for r in rollups(results, "vendor")
        if r.metric == "card_count" and r.stage == "committed"
    }
    assert cards == {
        "Alibaba T-Head": 16384.0,
        "MetaX": 4096.0,
        "Biren": 1328.0,
        "zhonghao-xinying": 1024.0,
    }


def _edit_json(path: Path, change: Any) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def tamper_summary(run: Path) -> None:
    _edit_json(run / "summary.json", lambda s: s["output_throughput_ci"].update(low=5000.0))


def tamper_spec(run: Path) -> None:
    _edit_json(run / "spec.json", lambda s: s.update(deployment="dep-a", label="edited"))


def tamper_verdicts(run: Path) -> None:
    _edit_json(run / "verdicts.json", lambda v: v[0].update(summary="all fine"))


def tamper_proof(run: Path) -> None:
    lines = (run / "entry.tlog-proof").read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("index "))
    lines[index] = "index 7"
    (run / "entry.tlog-proof").write_text("\n".join(lines) + "\n")


# How each kind of forged evidence is refused: the failed verify step names it.
REFUSALS = {
    "summary": (tamper_summary, "subjects: summary.json digest mismatch"),
    "spec": (tamper_spec, "subjects: spec.json digest mismatch"),
    "verdicts": (tamper_verdicts, "subjects: verdicts.json digest mismatch"),
    "proof": (tamper_proof, "inclusion"),
}


def forged_run(kind: str, tmp_path: Path, home: Path) -> Path:
    """A run that would verify the claim, made unverifiable in one way."""
    if kind == "untrusted key":
        return make_run(tmp_path / "forged", tmp_path / "other-home", claim="tps-claim")
    run = make_run(tmp_path / "forged", home, claim="tps-claim")
    REFUSALS[kind][0](run)
    return run


@pytest.mark.parametrize("kind", [*REFUSALS, "untrusted key"])
def test_evidence_that_does_not_verify_is_never_credited(
    tmp_path: Path, home: Path, kind: str
) -> None:
    make_run(tmp_path / "trusted-other", home, deployment="dep-z")  # home's keys exist
    run = forged_run(kind, tmp_path, home)
    runs = runs_of(home, run)
    assert runs.verified == ()
    (refused,) = runs.refused
    expected = REFUSALS[kind][1] if kind in REFUSALS else "envelope signature: unknown key"
    assert expected in refused.reason
    r = reconcile_claim(tps_claim(), runs)
    assert r.status is Status.unverified
    assert r.verified is None and r.runs == ()
    assert f"forged: evidence not verified: {refused.reason}" in r.reasons
