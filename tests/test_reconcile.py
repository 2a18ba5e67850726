"""Reconciliation on crafted claims and hand-made run directories: one test per status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from inferaudit.errors import ConfigError
from inferaudit.intent.claims import Claim, build_claim, seed_claims
from inferaudit.intent.reconcile import (
    Status,
    load_evidence,
    provenance_bucket,
    reconcile,
    reconcile_claim,
    rollups,
    roofline_check,
)
from inferaudit.intent.roofline import Plausibility
from inferaudit.measure import metrics
from inferaudit.measure.protocol import SLO, Endpoint, Load, RunSpec, canonical_bytes
from inferaudit.measure.records import Record, write_records

MS = 1_000_000


def make_run(
    run_dir: Path,
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
) -> Path:
    """A run directory: spec.json, records.jsonl and the real metrics.summarize summary.

    Steady state: ``tokens`` output tokens every ``interval_ms`` -> tokens*1000/interval tok/s.
    ``jitter`` spreads TTFT and token gaps deterministically (0.5x to 2.5x) for chart tests.
    """
    spec = RunSpec(
        endpoint=Endpoint(base_url="http://127.0.0.1:9/v1", model=model),
        load=Load(rate=1000 / interval_ms, requests=requests, arrivals="constant"),
        slo=SLO.parse(slo) if slo else SLO(),
        deployment=deployment,
        claim=claim,
        max_client_lag_p99_ms=5.0,
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
                usage_completion_tokens=tokens,
                content_chunks=tokens,
                output_chars=3 * tokens,
                max_tokens=tokens,
            )
        )
    run_dir.mkdir(parents=True)
    (run_dir / "spec.json").write_bytes(canonical_bytes(spec))
    write_records(run_dir / "records.jsonl", records)
    summary: dict[str, Any] = metrics.summarize(records, spec)
    summary["checks"] = [
        {
            "check": "token_accounting",
            "verdict": "fail" if failed_check else "pass",
            "summary": "usage says more tokens than were streamed" if failed_check else "ok",
            "numbers": {},
        }
    ]
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


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
        claim_id=claim_id,
        statement=f"dep-a serves Llama 3.1 8B at {value} tokens/s",
        status="operational_claimed",
        certainty="unknown",
        source_url="https://vendor.example/claim",
        source_class=source_class,
        entities=[("NVIDIA", "chip_vendor"), ("Operator Y", "operator")],
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


def summary_of(run: Path) -> dict[str, Any]:
    return json.loads((run / "summary.json").read_text())


def test_verified_uses_the_lower_confidence_bound(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r1", claim="tps-claim")
    low = summary_of(run)["output_throughput_ci"]["low"]
    assert 900 < low < 1000  # 50 tokens every 50 ms = 1000 tok/s at steady state
    (r,) = reconcile([tps_claim()], load_evidence([run]))
    assert r.status is Status.verified
    assert r.verified == low
    assert r.value_basis == "ci-low"
    assert r.ratio == pytest.approx(low / 900)


def test_shortfall_states_the_ratio(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r1")
    low = summary_of(run)["output_throughput_ci"]["low"]
    (r,) = reconcile([tps_claim(value=2000.0)], load_evidence([run]))
    assert r.status is Status.shortfall
    assert r.ratio == pytest.approx(low / 2000.0)
    assert f"{low / 2000.0:.1%}" in r.reasons[0]


def test_tolerance_decides_between_verified_and_shortfall(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r1")
    low = summary_of(run)["output_throughput_ci"]["low"]
    claim = tps_claim(value=low / 0.95 * 0.999)  # within 5 % of the lower bound
    ev = load_evidence([run])
    assert reconcile_claim(claim, ev, tolerance=0.05).status is Status.verified
    assert reconcile_claim(claim, ev, tolerance=0.0).status is Status.shortfall
    with pytest.raises(ConfigError, match="tolerance"):
        reconcile_claim(claim, ev, tolerance=1.0)


def test_unverified_without_matching_evidence(tmp_path: Path) -> None:
    other = make_run(tmp_path / "other", deployment="dep-b")
    (r,) = reconcile([tps_claim()], load_evidence([other]))
    assert r.status is Status.unverified
    assert r.runs == ()
    assert r.reasons == ("no run matches this claim",)


def test_match_by_deployment_model_and_slo(tmp_path: Path) -> None:
    claim = tps_claim(slo="ttft_p90=2000ms")
    strict = make_run(tmp_path / "strict", slo="ttft_p90=1000ms")
    loose = make_run(tmp_path / "loose", slo="ttft_p90=3000ms")
    no_slo = make_run(tmp_path / "noslo")
    other_model = make_run(tmp_path / "qwen", model="qwen2.5-7b", slo="ttft_p90=1000ms")
    r = reconcile_claim(claim, load_evidence([strict, loose, no_slo, other_model]))
    assert [j.label for j in r.runs] == ["strict"]
    assert r.status is Status.verified


def test_slo_not_met_does_not_count(tmp_path: Path) -> None:
    claim = tps_claim(slo="ttft_p90=10ms")
    run = make_run(tmp_path / "r1", slo="ttft_p90=10ms")  # every TTFT is 20 ms
    r = reconcile_claim(claim, load_evidence([run]))
    assert r.status is Status.unverified
    assert r.verified is None
    assert any("SLO ttft_p90 verdict fail" in why for why in r.reasons)


def test_point_value_fallback_says_why(tmp_path: Path) -> None:
    run = make_run(tmp_path / "few", requests=6, claim="tps-claim")
    s = summary_of(run)
    assert s["output_throughput_ci"]["low"] is None
    r = reconcile_claim(tps_claim(value=100.0), load_evidence([run]))
    assert r.status is Status.verified
    assert r.value_basis == "point"
    assert r.verified == s["output_throughput_tok_s"]
    assert any("no confidence interval" in why for why in r.reasons)


def test_implausible_above_the_roofline() -> None:
    # 1 x H100, Llama 3.1 8B bf16, one stream: at most 3.35e12 / 16.06e9 = 208.6 tokens/s
    claim = tps_claim(value=240.0, concurrency=1)
    check = roofline_check(claim)
    assert check is not None and check.verdict is Plausibility.implausible
    r = reconcile_claim(claim, [])
    assert r.status is Status.implausible
    assert "memory-bound" in r.reasons[0]
    declared = tps_claim(value=240.0, concurrency=1, techniques=("speculative-decoding",))
    assert reconcile_claim(declared, []).status is Status.unverified


def test_contradicted_by_a_failed_check(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r1", failed_check=True)
    r = reconcile_claim(tps_claim(), load_evidence([run]))
    assert r.status is Status.contradicted
    assert "integrity check token_accounting failed" in r.reasons[0]


def test_contradicted_by_an_invalid_run(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r1", all_errors=True)
    assert summary_of(run)["valid"] is False
    r = reconcile_claim(tps_claim(), load_evidence([run]))
    assert r.status is Status.contradicted
    assert "no measured request completed" in r.reasons[0]


def test_client_lag_is_the_tools_fault_not_the_vendors(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r1", lag_ms=20.0)
    assert summary_of(run)["valid"] is False
    r = reconcile_claim(tps_claim(), load_evidence([run]))
    assert r.status is Status.unverified
    assert any("client-side fault" in why for why in r.reasons)
    both = make_run(tmp_path / "r2", lag_ms=20.0, failed_check=True)
    r = reconcile_claim(tps_claim(), load_evidence([both]))
    assert r.status is Status.unverified
    assert "failed checks not counted against the claim: token_accounting" in r.reasons[0]


def test_sweep_directory_gives_one_item_per_point(tmp_path: Path) -> None:
    make_run(tmp_path / "sw" / "point-000", interval_ms=100.0)
    make_run(tmp_path / "sw" / "point-001", interval_ms=50.0)
    (tmp_path / "sw" / "sweep.json").write_text('{"points": []}')
    ev = load_evidence([tmp_path / "sw"])
    assert [e.label for e in ev] == ["sw/point-000", "sw/point-001"]
    r = reconcile_claim(tps_claim(), ev)
    assert r.status is Status.verified  # the best point counts
    assert r.verified == summary_of(tmp_path / "sw" / "point-001")["output_throughput_ci"]["low"]


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a run directory"):
        load_evidence([tmp_path])


def test_rollups_and_self_disclosure(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r1")
    vendor = tps_claim("a-claim", 900.0)
    media = tps_claim("b-claim", 500.0, deployment="dep-z", source_class="independent_media")
    results = reconcile([vendor, media], load_evidence([run]))
    assert [provenance_bucket(r) for r in results] == [
        "independent measurement",
        "media / aggregator only",
    ]
    (site,) = rollups(results, "site")
    assert (site.key, site.metric, site.stage) == ("Xining", "tokens_per_second", "committed")
    assert site.claimed == 1400.0
    assert site.verified == 900.0  # capped at the claim it verifies
    assert site.self_disclosed_only == 0.0
    unmeasured = reconcile([vendor], [])
    (row,) = rollups(unmeasured, "vendor")
    assert (row.key, row.self_disclosed_only) == ("NVIDIA", 900.0)


def test_seed_rollups_split_hardware_lines() -> None:
    results = reconcile(seed_claims(), [])
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
