"""Model identity: fingerprint agreement (known answers), file format, and the twin end to end."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from inferaudit.audit.run import RunOptions
from inferaudit.audit.run import run_verification as execute
from inferaudit.errors import ConfigError
from inferaudit.judge.identity import check_identity
from inferaudit.judge.verdict import Outcome, Verdict, format_verdict
from inferaudit.measure.fingerprint import (
    VERSION_V2,
    Entry,
    Fingerprint,
    agreement,
    check_fits,
    load_fingerprint,
    token_ends,
)
from inferaudit.measure.probes.plan import plan_traffic
from inferaudit.measure.protocol import Api, Endpoint, Length, Load, RunSpec, Sampling, Workload
from inferaudit.measure.records import Record
from inferaudit.measure.workload import commit_seed
from inferaudit.seal.recompute import recheck_verdicts
from inferaudit.twin.launch import start_twin
from inferaudit.twin.options import TwinOptions

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
    assert agreement(REF, ENDS, REF) == (4, 4, False)
    assert agreement(REF, ENDS, " alpha beta gamma delta and more") == (4, 4, False)
    assert agreement(REF, ENDS, " alpha beta gammX delta") == (2, 4, False)  # in token 3
    assert agreement(REF, ENDS, " omega") == (0, 4, False)
    assert agreement(REF, ENDS, " alpha beta") == (2, 4, False)  # stopped early: rest is lost
    assert agreement(REF, ENDS, " alpha beta", limit=2) == (2, 2, False)  # it asked for two
    assert agreement(REF, ENDS, " alpha beta", limit=9) == (2, 4, False)


# The reference's alternatives per token: " gamma" barely beat " gammX" (0.25 nats), and
# " omega" was far behind " alpha" (3 nats).
TOP = (
    {" alpha": -0.5, " omega": -3.5},
    {" beta": -0.1},
    {" gamma": -0.9, " gammX": -1.15, " zeta": -2.0},
    {" delta": -0.2},
)


def test_divergence_on_a_near_tie_is_not_a_disagreement() -> None:
    tie = " alpha beta gammX zzz"  # parted on token 3, then went its own way
    mine = token_ends([6, 5, 6, 4])
    # Token 3 counts as reproduced; what follows a different token is not compared.
    assert agreement(REF, ENDS, tie, top=TOP, candidate_ends=mine) == (3, 3, True)
    # Without the reference's logprobs, or its own token boundaries, it is a plain divergence.
    assert agreement(REF, ENDS, tie) == (2, 4, False)
    assert agreement(REF, ENDS, tie, top=TOP) == (2, 4, False)
    # A token the reference ranked 1.1 nats lower, or never listed, is a real disagreement.
    far = " alpha beta zeta delta"
    far_ends = token_ends([6, 5, 5, 6])
    assert agreement(REF, ENDS, far, top=TOP, candidate_ends=far_ends) == (2, 4, False)
    assert agreement(REF, ENDS, " omega", top=TOP, candidate_ends=(6,)) == (0, 4, False)
    # Both tokens must be near the reference's best: here its own pick was far below it.
    low = (*TOP[:2], {" gammX": -0.2, " gamma": -1.5}, TOP[3])
    assert agreement(REF, ENDS, tie, top=low, candidate_ends=mine) == (2, 4, False)
    # The candidate's token must start where the reference's did (one token per event).
    merged = token_ends([11, 10])  # " alpha beta" and " gammX zzz" as two events
    assert agreement(REF, ENDS, tie, top=TOP, candidate_ends=merged) == (2, 4, False)


def replay_record(i: int, tag: str, text: str) -> Record:
    return Record(id=i, tag=f"fingerprint:{tag}", scheduled_ns=0, output_text=text)


def test_identity_check_threshold() -> None:
    fp = fp_of(entry("0"), entry("1"))
    same = [replay_record(1, "0", REF), replay_record(2, "1", REF)]
    v = check_identity(same, fp)
    assert v.verdict is Outcome.passed and v.numbers["agreement"] == 1.0
    half = [replay_record(1, "0", REF), replay_record(2, "1", " alpha beta X")]
    v = check_identity(half, fp)  # 6 of 8 tokens: 75% < 90%, but over 2 replays only
    assert v.verdict is Outcome.inconclusive, format_verdict(v)
    assert v.numbers["agreement"] == 0.75
    # Hoeffding: 2 honest replays average below 1 - sqrt(ln(1000) / 4) = -0.31 with p < 1e-3
    assert v.numbers["per_prompt_mean"] == 0.75
    assert v.numbers["per_prompt_mean_bound"] == round(1 - math.sqrt(math.log(1000) / 4), 6)
    assert "over 2 replays the reference's own variation" in v.summary
    # a v2 fingerprint keeps the plain threshold (evidence judged with it recomputes the same)
    old = dataclasses.replace(fp, version=VERSION_V2)
    assert format_verdict(check_identity(half, old)) == (
        "identity: greedy outputs agree with the twin-m reference on 75% of tokens "
        "(threshold 90%): not the claimed model — FAIL"
    )
    # 40 replays that all part halfway: a mean of 0.5 < 1 - sqrt(ln(1000) / 80) = 0.79
    many = fp_of(*(entry(str(i)) for i in range(40)))
    parted = [replay_record(i, str(i), " alpha beta X") for i in range(40)]
    v = check_identity(parted, many)
    assert v.verdict is Outcome.failed, format_verdict(v)
    assert v.numbers["per_prompt_mean_bound"] == round(1 - math.sqrt(math.log(1000) / 80), 6)
    assert check_identity([], fp).verdict is Outcome.inconclusive


def test_identity_check_forgives_near_ties() -> None:
    fp = fp_of(Entry("0", "hidden", 4, REF, ENDS, "", TOP), entry("1"))
    tie = replay_record(1, "0", " alpha beta gammX zzz").model_copy(
        update={"chunk_chars": [6, 5, 6, 4]}
    )
    v = check_identity([tie, replay_record(2, "1", REF)], fp)
    assert v.verdict is Outcome.passed, format_verdict(v)
    assert (v.numbers["tokens_agreeing"], v.numbers["tokens_compared"]) == (7, 7)
    assert v.numbers["near_tie_divergences"] == 1 and v.numbers["prompts_fully_agreeing"] == 1
    assert v.summary.endswith("(1 of 2 prompts exactly, 1 parted on a near-tie; threshold 90%)")
    # The same divergence against an entry without logprobs: 6 of 8 tokens, a failure.
    plain = dataclasses.replace(fp_of(entry("0"), entry("1")), version=VERSION_V2)
    assert check_identity([tie, replay_record(2, "1", REF)], plain).verdict is Outcome.failed


def test_replays_are_seeded_and_shaped_like_the_load() -> None:
    fp = fp_of(*(entry(str(k)) for k in range(8)))
    run = commit_seed(spec(40), bytes(32)).model_copy(update={"sampling": Sampling()})
    plans = plan_traffic(run, conformance=False, caching=False, prefix=False, replays=fp.entries)
    again = plan_traffic(run, conformance=False, caching=False, prefix=False, replays=fp.entries)
    assert plans.injected == again.injected and plans.after == ()
    assert len(plans.injected) == 4  # 10% of 40 measured requests
    assert all(0 <= i < 40 and p.id == i for i, p in plans.injected.items())
    assert {p.phase for p in plans.injected.values()} == {"measure"}
    # the body keys and values of the position they replace: nothing tells them apart
    assert all(p.extra_body == {"temperature": 0.0, "top_p": 1.0} for p in plans.injected.values())
    assert all(p.max_tokens == 32 for p in plans.injected.values())
    assert len({p.tag for p in plans.injected.values()}) == 4
    other = commit_seed(spec(40), bytes(31) + b"\1")
    moved = plan_traffic(other, conformance=False, caching=False, prefix=False, replays=fp.entries)
    assert set(moved.injected) != set(plans.injected)  # positions come from the secret seed


def test_a_fingerprint_that_does_not_fit_the_run_is_refused() -> None:
    fp = fp_of(entry("0"))  # a v1-style file: prompts of 3 words ("some hidden prompt")
    with pytest.raises(ConfigError, match=r"--input-tokens 3; this run sends 32"):
        check_fits(fp, spec())
    chat = spec().model_copy(
        update={"endpoint": Endpoint(base_url="http://127.0.0.1:1/v1", model=MODEL, api=Api.chat)}
    )
    with pytest.raises(ConfigError, match="recorded over the completions API"):
        check_fits(fp, chat)
    hot = spec().model_copy(update={"sampling": Sampling(temperature=0.7)})
    with pytest.raises(ConfigError, match="needs greedy sampling"):
        check_fits(fp, hot)


def test_fingerprint_file_round_trip_and_errors(tmp_path: Path) -> None:
    fp = fp_of(entry("0"), Entry("1", "hidden", 4, REF, ENDS, "", TOP))
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
    with start_twin(TwinOptions(ttft_ms=10, tpot_ms=1, model=MODEL)) as twin:
        cmd = [sys.executable, "-m", "inferaudit", "fingerprint", "record"]
        cmd += ["--endpoint", twin.base_url, "--model", MODEL, "--out", str(path)]
        cmd += ["--prompts", "8", "--input-tokens", "32", "--output-tokens", "16"]
        cmd += ["--repeats", "2"]
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"}
        )
    assert done.returncode == 0, done.stderr
    assert (
        "self-agreement 1.0000, threshold 0.9000, likelihood calibrated on 128 tokens "
        "(0 partings, at most 0.25 nats each)"
    ) in done.stdout
    return path


def test_recorded_fingerprint(reference: Path) -> None:
    fp = load_fingerprint(reference)
    assert len(fp.entries) == 8
    assert fp.self_agreement == 1.0 and fp.threshold == 0.9  # the twin is deterministic
    assert all(len(e.token_ends) == 16 and e.token_ends[-1] == len(e.text) for e in fp.entries)
    assert len({e.prompt for e in fp.entries}) == 8
    # The twin answers logprobs: 5 best tokens and the chosen one, for each streamed token.
    assert all(e.top_logprobs is not None and len(e.top_logprobs) == 16 for e in fp.entries)
    assert all(5 <= len(top) <= 6 for e in fp.entries for top in e.top_logprobs or ())
    assert "near-ties judged from the reference's top-5 logprobs" in fp.calibration
    # The likelihood calibration: the repeat round parted nowhere in 8 x 16 scored tokens.
    assert fp.version == "inferaudit.fingerprint/v3" and fp.likelihood is not None
    assert (fp.likelihood.tokens, fp.likelihood.partings, fp.likelihood.deficit) == (128, 0, 0.0)
    assert (fp.likelihood.rate, fp.likelihood.nats) == (0.0234042, 0.25)  # 2.9957 / 128
    assert "likelihood: 0 partings over 128 scored tokens" in fp.calibration


def run_identity(tmp_path: Path, reference: Path, *behave: str) -> Verdict:
    args = TwinOptions(ttft_ms=10, tpot_ms=1, model=MODEL, behave=behave)
    with start_twin(args) as twin:
        options = RunOptions(checks=["identity"], fingerprint=reference, sign=False)
        # 40 requests: 4 replays, enough for the agreement rule to fail at p < 1e-3 (identity)
        outcome = execute(spec(40, base_url=twin.base_url), tmp_path / "run", options)
    (v,) = outcome.verdicts
    return v


def test_honest_twin_matches_its_fingerprint(tmp_path: Path, reference: Path) -> None:
    v = run_identity(tmp_path, reference)
    assert v.verdict is Outcome.passed, format_verdict(v)
    assert v.numbers["replayed"] == 4 and v.numbers["agreement"] == 1.0
    assert v.numbers["likelihood_deficit_nats"] == 0.0 and v.numbers["likelihood_partings"] == 0
    assert v.numbers["likelihood_tokens_scored"] == 64  # four replays of the 16 recorded tokens


def test_model_swap_fails_identity(tmp_path: Path, reference: Path) -> None:
    v = run_identity(tmp_path, reference, "model-swap:after=0")
    # verify's offline recheck recomputes the same verdict from the records and the file
    signed = orjson.loads((tmp_path / "run" / "verdicts.json").read_bytes())
    assert recheck_verdicts(tmp_path / "run", signed, None, reference, v2=True)[0] is True
    assert recheck_verdicts(tmp_path / "run", signed, None, None, v2=True) == (
        True,
        "0 recomputed from the records: equal; not rechecked without the run's files: identity",
    )
    assert v.verdict is Outcome.failed, format_verdict(v)
    assert v.numbers["replayed"] == 4
    assert v.numbers["agreement"] < 0.1
    # Every replay parted at once. The twin's greedy text is drawn from its Zipf law, not its
    # argmax: its own token is seldom in its top 5, and then an unlisted served token cannot be
    # shown less likely than it (the bound lies above), so the likelihood rule rarely adds here.
    assert (v.numbers["likelihood_partings"], v.numbers["likelihood_tokens_scored"]) == (4, 4)
