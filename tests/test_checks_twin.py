"""`inferaudit run` (the library entry point) against the twin: each adversarial behaviour is
caught by its check, and the honest twin passes every check (no false alarm)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from inferaudit.audit.run import RunOptions
from inferaudit.audit.run import run_verification as execute
from inferaudit.judge.suite import recheck
from inferaudit.judge.verdict import Outcome, Verdict, format_verdict
from inferaudit.measure.health import read_health
from inferaudit.measure.protocol import Api, Endpoint, Length, Load, RunSpec, Workload
from inferaudit.measure.records import read_records
from inferaudit.measure.tokenizer import load_tokenizer
from inferaudit.twin.launch import start_twin
from inferaudit.twin.options import TwinOptions

MODEL = "twin-m"


def twin_args(*behave: str, ttft_ms: int = 30, tpot_ms: int = 5) -> TwinOptions:
    return TwinOptions(tpot_ms=tpot_ms, model=MODEL, ttft_ms=ttft_ms, behave=behave)


def make_spec(
    base_url: str,
    *,
    seed: int = 0,
    requests: int = 20,
    api: Api = Api.completions,
    output_tokens: int = 32,
) -> RunSpec:
    out = Length(lo=output_tokens, hi=output_tokens)
    return RunSpec(
        endpoint=Endpoint(base_url=base_url, model=MODEL, api=api),
        workload=Workload(input_tokens=Length(lo=32, hi=32), output_tokens=out),
        load=Load(concurrency=4, requests=requests),
        seed=seed,
        workers=1,
        max_client_lag_p99_ms=1000.0,  # a shared 2-core test machine; lag is not under test
    )


def run_checks(
    tmp_path: Path,
    behave: tuple[str, ...] = (),
    *,
    checks: list[str] | None = None,
    seed: int = 0,
    tokenizer: Path | None = None,
    fingerprint: Path | None = None,
    api: Api = Api.completions,
    ttft_ms: int = 30,
    output_tokens: int = 32,
    tpot_ms: int = 5,
) -> dict[str, Verdict]:
    with start_twin(twin_args(*behave, ttft_ms=ttft_ms, tpot_ms=tpot_ms)) as twin:
        spec = make_spec(twin.base_url, seed=seed, api=api, output_tokens=output_tokens)
        options = RunOptions(
            checks=checks, sign=False, tokenizer=tokenizer, fingerprint=fingerprint
        )
        outcome = execute(spec, tmp_path / "run", options)
    verdicts = list(outcome.verdicts)
    return {v.check: v for v in verdicts}


def assert_fails(verdicts: dict[str, Verdict], name: str) -> Verdict:
    v = verdicts[name]
    assert v.verdict is Outcome.failed, format_verdict(v)
    line = format_verdict(v)
    assert line.startswith(f"{name}: ") and line.endswith(" — FAIL") and "\n" not in line
    return v


def test_response_cache_numbers(tmp_path: Path) -> None:
    verdicts = run_checks(tmp_path, ("response-cache",), checks=["caching"], ttft_ms=400)
    v = assert_fails(verdicts, "caching")
    # Replays answer in 1 ms instead of 400 ms (plus client overhead on a busy machine): far
    # beyond the stalls a busy machine charges to the controls.
    assert v.numbers["ttft_improvement"] > 0.8
    assert v.numbers["unique"]["ttft_p50_ms"] >= 400.0
    assert v.summary.startswith("repeated prompts ")
    assert re.fullmatch(
        r"repeated prompts (\d+% faster than|\d+x as fast as) unique "
        r"\((first token|throughput), p=\S+; limit 10%\)"
        r"( \(with every control hastened by all that the client's stalls can delay it\))?",
        v.summary,
    ), v.summary


def test_early_stop_is_also_a_conformance_finding(tmp_path: Path) -> None:
    v = assert_fails(run_checks(tmp_path, ("early-stop",), checks=["conformance"]), "conformance")
    assert v.numbers["items"]["ignore_eos"].startswith("ignored: asked 32")  # the workload's
    assert v.numbers["items"]["max_tokens"] == "honoured"


def test_usage_inflate_exact_with_tokenizer(tmp_path: Path, word_tokenizer: Path) -> None:
    verdicts = run_checks(
        tmp_path, ("usage-inflate",), checks=["token-accounting"], tokenizer=word_tokenizer
    )
    v = assert_fails(verdicts, "token-accounting")
    assert v.numbers["client_tokens"] == 20 * 32  # every request delivered 32 words
    assert v.numbers["usage_tokens"] == 20 * 40  # ceil(32 x 1.25)
    assert v.numbers["relative_difference"] == 0.25


def test_honest_twin_passes_every_check(tmp_path: Path, word_tokenizer: Path) -> None:
    verdicts = run_checks(tmp_path, tokenizer=word_tokenizer)
    assert sorted(verdicts) == sorted(
        [
            "conformance",
            "output-length",
            "token-accounting",
            "first-token",
            "fluidity",
            "caching",
            "prefix-cache",
            "errors",
        ]
    )
    bad = [format_verdict(v) for v in verdicts.values() if v.verdict is not Outcome.passed]
    assert not bad, bad
    assert verdicts["token-accounting"].numbers["exact_requests"] == 20
    # Every verdict is recomputed offline, identically, from records.jsonl alone.
    records = read_records(tmp_path / "run" / "records.jsonl")
    spec = RunSpec.model_validate_json((tmp_path / "run" / "spec.json").read_bytes())
    again = recheck(
        records,
        spec,
        names=list(verdicts),
        tokenizer=load_tokenizer(word_tokenizer),
        model_listed="honoured",
        health=read_health(tmp_path / "run" / "health.jsonl"),
    )
    assert [v.to_json() for v in again] == [v.to_json() for v in verdicts.values()]
    phases = {r.phase for r in records}
    assert phases == {"probe", "measure", "audit"}  # the audit requests go inside the load
    # the timing checks judged with the run's client health windows, when it wrote them
    recorded = (tmp_path / "run" / "health.jsonl").is_file()
    for name in ("first-token", "fluidity"):
        assert verdicts[name].numbers["client_health"] == (
            "health windows" if recorded else "not recorded: every request judged"
        )


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_honest_twin_no_false_alarm_over_seeds(
    tmp_path: Path, word_tokenizer: Path, seed: int
) -> None:
    verdicts = run_checks(tmp_path, seed=seed, tokenizer=word_tokenizer)
    assert len(verdicts) == 8
    # Never a FAIL; on a busy shared machine a timing check may say the client was busy.
    bad = [
        format_verdict(v)
        for v in verdicts.values()
        if v.verdict is Outcome.failed
        or (v.verdict is Outcome.inconclusive and "the client was busy" not in v.summary)
    ]
    assert not bad, bad
