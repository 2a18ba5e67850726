"""Model identity: fingerprint agreement (known answers), file format, and the twin end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from inferaudit.checks.identity import check_identity
from inferaudit.checks.verdict import Outcome, Verdict, format_verdict
from inferaudit.errors import ConfigError
from inferaudit.fingerprint import (
    Entry,
    Fingerprint,
    agreement,
    load_fingerprint,
    replay_plans,
    token_ends,
)
from inferaudit.protocol import Api, Endpoint, Length, Load, RunSpec, Workload
from inferaudit.records import Record
from inferaudit.runs import RunOptions, execute
from inferaudit.twin.launch import start_twin

MODEL = "twin-m"
REF = " alpha beta gamma delta"  # four tokens, one per stream event
ENDS = token_ends([6, 5, 6, 6])


def fp_of(*entries: Entry, threshold: float = 0.9) -> Fingerprint:
    return Fingerprint(
        model=MODEL,
        api="completions",
        seed=1234,
        created="2026-01-01T00:00:00Z",
        self_agreement=1.0,
        threshold=threshold,
        calibration="test",
        entries=entries,
    )


def entry(ident: str = "0", text: str = REF) -> Entry:
    return Entry(ident, "some hidden prompt", 4, text, ENDS, "")


def spec(requests: int = 20, base_url: str = "http://127.0.0.1:1/v1") -> RunSpec:
    return RunSpec(
        endpoint=Endpoint(base_url=base_url, model=MODEL),
        workload=Workload(input_tokens=Length(lo=32, hi=32), output_tokens=Length(lo=32, hi=32)),
        load=Load(concurrency=4, requests=requests),
        workers=1,
        max_client_lag_p99_ms=1000.0,
    )


def test_token_ends_and_agreement_known_answers() -> None:
    assert ENDS == (6, 11, 17, 23)
    assert agreement(REF, ENDS, REF) == (4, 4)
    assert agreement(REF, ENDS, " alpha beta gamma delta and more") == (4, 4)
    assert agreement(REF, ENDS, " alpha beta gammX delta") == (2, 4)  # diverges in token 3
    assert agreement(REF, ENDS, " omega") == (0, 4)
    assert agreement(REF, ENDS, " alpha beta") == (2, 4)  # stopped early: the rest is lost
    assert agreement(REF, ENDS, " alpha beta", limit=2) == (2, 2)  # it asked for two tokens
    assert agreement(REF, ENDS, " alpha beta", limit=9) == (2, 4)


def replay_record(i: int, tag: str, text: str) -> Record:
    return Record(id=i, tag=f"fingerprint:{tag}", scheduled_ns=0, output_text=text)


def test_identity_check_threshold() -> None:
    fp = fp_of(entry("0"), entry("1"))
    same = [replay_record(1, "0", REF), replay_record(2, "1", REF)]
    v = check_identity(same, fp)
    assert v.verdict is Outcome.passed and v.numbers["agreement"] == 1.0
    half = [replay_record(1, "0", REF), replay_record(2, "1", " alpha beta X")]
    v = check_identity(half, fp)  # 6 of 8 tokens: 75% < 90%
    assert v.verdict is Outcome.failed
    assert v.numbers["agreement"] == 0.75
    assert format_verdict(v) == (
        "identity: greedy outputs agree with the twin-m reference on 75% of tokens "
        "(threshold 90%): not the claimed model — FAIL"
    )
    assert check_identity([], fp).verdict is Outcome.inconclusive


def test_replay_plans_are_seeded_and_mixed_into_measured_ids() -> None:
    fp = fp_of(*(entry(str(k)) for k in range(8)))
    plans = replay_plans(fp, spec(40))
    assert len(plans) == 4  # 10% of 40 measured requests
    assert plans == replay_plans(fp, spec(40))
    assert all(0 <= i < 40 and p.id == i and p.phase == "measure" for i, p in plans.items())
    assert {p.extra_body["temperature"] for p in plans.values()} == {0}
    assert len({p.tag for p in plans.values()}) == 4
    chat = spec().model_copy(
        update={"endpoint": Endpoint(base_url="http://127.0.0.1:1/v1", model=MODEL, api=Api.chat)}
    )
    with pytest.raises(ConfigError, match="recorded over the completions API"):
        replay_plans(fp, chat)


def test_fingerprint_file_round_trip_and_errors(tmp_path: Path) -> None:
    fp = fp_of(entry("0"))
    path = tmp_path / "fp.json"
    fp.save(path)
    assert load_fingerprint(path) == fp
    with pytest.raises(ConfigError, match="no such file"):
        load_fingerprint(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_bytes(orjson.dumps({"version": "inferaudit.fingerprint/v1", "model": "m"}))
    with pytest.raises(ConfigError, match="malformed fingerprint"):
        load_fingerprint(bad)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``inferaudit fingerprint record`` (CLI, subprocess) against an honest twin."""
    path = tmp_path_factory.mktemp("fp") / "ref.json"
    with start_twin(["--ttft-ms", "10", "--tpot-ms", "1", "--model", MODEL]) as twin:
        cmd = [sys.executable, "-m", "inferaudit", "fingerprint", "record"]
        cmd += ["--endpoint", twin.base_url, "--model", MODEL, "--out", str(path)]
        cmd += ["--prompts", "8", "--max-tokens", "16", "--repeats", "2"]
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"}
        )
    assert done.returncode == 0, done.stderr
    assert "self-agreement 1.0000, threshold 0.9000" in done.stdout
    return path


def test_recorded_fingerprint(reference: Path) -> None:
    fp = load_fingerprint(reference)
    assert len(fp.entries) == 8
    assert fp.self_agreement == 1.0 and fp.threshold == 0.9  # the twin is deterministic
    assert all(len(e.token_ends) == 16 and e.token_ends[-1] == len(e.text) for e in fp.entries)
    assert len({e.prompt for e in fp.entries}) == 8


def run_identity(tmp_path: Path, reference: Path, *behave: str) -> Verdict:
    args = ["--ttft-ms", "10", "--tpot-ms", "1", "--model", MODEL]
    for b in behave:
        args += ["--behave", b]
    with start_twin(args) as twin:
        options = RunOptions(checks=["identity"], fingerprint=reference, sign=False)
        outcome = execute(spec(base_url=twin.base_url), tmp_path / "run", options)
    (v,) = [Verdict.from_json(c) for c in outcome.summary["checks"]]
    return v


def test_honest_twin_matches_its_fingerprint(tmp_path: Path, reference: Path) -> None:
    v = run_identity(tmp_path, reference)
    assert v.verdict is Outcome.passed, format_verdict(v)
    assert v.numbers["replayed"] == 2 and v.numbers["agreement"] == 1.0


def test_model_swap_fails_identity(tmp_path: Path, reference: Path) -> None:
    v = run_identity(tmp_path, reference, "model-swap:after=0")
    assert v.verdict is Outcome.failed, format_verdict(v)
    assert v.numbers["replayed"] == 2
    assert v.numbers["agreement"] < 0.1
