"""Identity by the reference's log-likelihood of the served tokens: known answers on crafted
entries and records, the calibration, the judge's two rules, and old fingerprint files."""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest

from inferaudit.errors import ConfigError
from inferaudit.judge.identity import check_identity
from inferaudit.judge.verdict import Outcome, format_verdict
from inferaudit.measure.fingerprint import (
    VERSION_V2,
    Entry,
    Fingerprint,
    LikelihoodCalibration,
    load_fingerprint,
    token_ends,
)
from inferaudit.measure.likelihood import (
    ALPHA,
    Scored,
    allowed_deficit,
    allowed_partings,
    calibrate,
    score,
    upper_rate,
)
from inferaudit.measure.records import Record

REF = " alpha beta gamma delta"  # four tokens, one per stream event
ENDS = token_ends([6, 5, 6, 6])  # (6, 11, 17, 23)
# The reference's alternatives per token, its own token included (as servers list them).
TOP = (
    {" alpha": -0.5, " omega": -3.5, " al": -4.0},
    {" beta": -0.25, " bet": -2.0},
    {" gamma": -0.75, " gammX": -1.0, " gam": -2.5, " zeta": -3.0},
    {" delta": -0.125, "": -1.5, " epsilon": -4.5},
)


def s(candidate: str, events: list[int], limit: int | None = None) -> Scored:
    return score(REF, ENDS, TOP, candidate, token_ends(events), limit)


def test_reproduced_path_scores_zero_on_every_token() -> None:
    assert s(REF, [6, 5, 6, 6]) == Scored(4, 0, 0.0)
    assert s(REF + " and more", [6, 5, 6, 6, 9]) == Scored(4, 0, 0.0)  # beyond: not scored
    assert s(" alpha beta", [6, 5], limit=2) == Scored(2, 0, 0.0)  # it asked for two
    assert s(" alpha beta gammX", [6, 5, 6], limit=2) == Scored(2, 0, 0.0)


def test_deficit_at_the_first_divergence_known_answers() -> None:
    # a listed token: own logprob minus the served one's, exactly; what follows is not scored
    assert s(" alpha beta gammX zzz", [6, 5, 6, 4]) == Scored(3, 1, 0.25)
    assert s(" omega and so on", [6, 4, 3, 3]) == Scored(1, 1, 3.0)
    # an unlisted token: at most the lowest stored logprob (" zeta" -3.0), flagged as bounded
    assert s(" alpha beta kappa", [6, 5, 6]) == Scored(3, 1, 2.25, 1)
    # the served token is a prefix of the rest; the best listed prefix bounds it (" gam" -2.5),
    # never below the lowest stored
    assert s(" alpha beta gamut", [6, 5, 6]) == Scored(3, 1, 1.75)
    # stopped where the reference went on: the end of text, "" when listed, else the bound
    assert s(" alpha beta gamma", [6, 5, 6]) == Scored(4, 1, 1.375)
    assert s(" alpha", [6]) == Scored(2, 1, 1.75, 1)  # no "" among token 2's: at most -2.0
    # a served token the reference scored above its own pick (its sampler's doing): 0
    higher = (*TOP[:2], {" gamma": -0.75, " gammX": -0.5}, TOP[3])
    assert score(REF, ENDS, higher, " alpha beta gammX", token_ends([6, 5, 6])) == Scored(3, 1, 0.0)


def test_a_deficit_that_cannot_be_bounded_scores_zero() -> None:
    # the replay's events do not start where the reference's token did: unknown served token
    assert s(" alpha beta gammX zzz", [6, 11, 4]) == Scored(3, 1, 0.0)
    # the reference did not list its own token, or nothing besides it
    bare = (*TOP[:2], {" gammX": -1.0}, TOP[3])
    assert score(REF, ENDS, bare, " alpha beta gammX", token_ends([6, 5, 6])) == Scored(3, 1, 0.0)
    alone = (*TOP[:2], {" gamma": -0.75}, TOP[3])
    assert score(REF, ENDS, alone, " alpha beta gammX", token_ends([6, 5, 6])) == Scored(3, 1, 0.0)
    with pytest.raises(ValueError, match="aligned"):
        score(REF, ENDS, TOP[:3], REF, ENDS)


def test_rate_bound_and_allowance_known_answers() -> None:
    assert upper_rate(0, 128) == pytest.approx(-math.log(0.05) / 128, rel=1e-12)
    assert upper_rate(2, 100) == pytest.approx(12.591587243743977 / 200, rel=1e-12)
    with pytest.raises(ValueError):
        upper_rate(0, 0)

    def quantile(mu: float) -> int:  # the smallest k with P(X <= k) >= 1 - ALPHA
        k, term, cdf = 0, math.exp(-mu), math.exp(-mu)
        while cdf < 1 - ALPHA:
            k += 1
            term *= mu / k
            cdf += term
        return k

    cal = LikelihoodCalibration(128, 0, 0.0, 0.0, 0.0234, 0.25)
    for tokens, q in ((1, 1), (10, 3), (128, 10), (1000, 40)):
        assert allowed_partings(cal, tokens) == quantile(0.0234 * tokens) == q
    assert allowed_deficit(cal, 128) == 2.5
    assert allowed_partings(cal, 0) == 0
    tiny = LikelihoodCalibration(1_000_000, 0, 0.0, 0.0, 3e-6, 0.25)
    assert allowed_deficit(tiny, 100) == 0.0  # P(any parting) = 3e-4 < ALPHA: none allowed


def test_calibration_from_the_reference_repeats() -> None:
    assert calibrate([]) is None
    cal = calibrate([Scored(16, 0, 0.0), Scored(5, 1, 0.0625), Scored(16, 0, 0.0)])
    assert cal == LikelihoodCalibration(
        tokens=37,
        partings=1,
        deficit=0.0625,
        max_deficit=0.0625,
        rate=float(f"{upper_rate(1, 37):.6g}"),
        nats=0.25,  # NEAR_TIE_NATS: a same-model parting may cost that much
    )
    assert cal.rate == 0.128213  # chi2(0.95, 4) / 2 = 4.743865 over 37 tokens
    wide = calibrate([Scored(3, 1, 0.5), Scored(8, 0, 0.0)])
    assert wide is not None and (wide.nats, wide.max_deficit) == (0.5, 0.5)


# ---- the judge ---------------------------------------------------------------------------

CAL = LikelihoodCalibration(10_000, 0, 0.0, 0.0, 0.0003, 0.25)


def fp_of(n: int, likelihood: LikelihoodCalibration | None = CAL) -> Fingerprint:
    entries = tuple(Entry(str(k), f"hidden {k}", 4, REF, ENDS, "", TOP) for k in range(n))
    return Fingerprint(
        model="twin-m",
        api="completions",
        seed=None,
        created="2026-01-01T00:00:00Z",
        self_agreement=1.0,
        threshold=0.9,
        calibration="test",
        entries=entries,
        likelihood=likelihood,
    )


def replay(k: int, text: str, events: list[int]) -> Record:
    return Record(
        id=k,
        tag=f"fingerprint:{k}",
        scheduled_ns=0,
        output_text=text,
        chunk_chars=events,
        max_tokens=4,
    )


NEAR_TIE = (" alpha beta gammX zzz", [6, 5, 6, 4])  # deficit 0.25: agreement forgives it


def test_likelihood_fails_a_substitute_that_agreement_forgives() -> None:
    fp = fp_of(10)
    records = [replay(k, *NEAR_TIE) for k in range(10)]
    v = check_identity(records, fp)
    assert v.verdict is Outcome.failed, format_verdict(v)
    n = v.numbers
    assert n["agreement"] == 1.0 and n["near_tie_divergences"] == 10  # agreement alone: pass
    assert (n["likelihood_tokens_scored"], n["likelihood_partings"]) == (30, 10)
    assert n["likelihood_deficit_nats"] == 2.5
    assert n["likelihood_allowed_nats"] == 0.25  # 0.0003 x 30 tokens: one parting allowed
    assert n["likelihood_gap_nats_per_token"] == 0.0833333
    assert v.summary == (
        "the served tokens cost the reference 2.5 nats of log-likelihood over 30 scored tokens "
        "(10 parted; at most 0.25 for the same model): not the claimed model"
    )
    # the same replays judged with a fingerprint without the calibration (a v2 file): a pass
    old = check_identity(records, fp_of(10, likelihood=None))
    assert old.verdict is Outcome.passed
    assert not any(k.startswith("likelihood") for k in old.numbers)


def test_one_near_tie_in_ten_is_the_same_model() -> None:
    records = [replay(0, *NEAR_TIE), *(replay(k, REF, [6, 5, 6, 6]) for k in range(1, 10))]
    v = check_identity(records, fp_of(10))
    assert v.verdict is Outcome.passed, format_verdict(v)
    assert v.numbers["likelihood_deficit_nats"] == v.numbers["likelihood_allowed_nats"] == 0.25
    assert v.summary.endswith(
        "; the served tokens cost the reference 0.25 nats of log-likelihood over 39 scored "
        "tokens (1 parted; at most 0.25 for the same model)"
    )


def test_both_rules_named_when_both_fail() -> None:
    records = [replay(k, " omega and so on", [6, 4, 3, 3]) for k in range(4)]
    v = check_identity(records, fp_of(4))
    assert v.verdict is Outcome.failed
    assert v.numbers["agreement"] == 0.0 and v.numbers["likelihood_deficit_nats"] == 12.0
    assert v.summary == (
        "greedy outputs agree with the twin-m reference on 0% of tokens (threshold 90%); the "
        "served tokens cost the reference 12 nats of log-likelihood over 4 scored tokens (4 "
        "parted; at most 0.25 for the same model): not the claimed model"
    )


def test_v3_round_trip_and_v2_files_judge_as_before(tmp_path: Path) -> None:
    fp = fp_of(2)
    path = tmp_path / "fp.json"
    fp.save(path)
    assert orjson.loads(path.read_bytes())["version"] == "inferaudit.fingerprint/v3"
    assert load_fingerprint(path) == fp
    # a v2 file: no likelihood key; it loads without a calibration, and saves back as it was
    data = orjson.loads(path.read_bytes())
    del data["likelihood"]
    data["version"] = VERSION_V2
    v2 = tmp_path / "v2.json"
    v2.write_bytes(orjson.dumps(data))
    old = load_fingerprint(v2)
    assert old.likelihood is None and old.version == VERSION_V2
    assert orjson.loads(orjson.dumps(old.to_json())) == data
    records = [replay(k, *NEAR_TIE) for k in range(2)]
    assert check_identity(records, old) == check_identity(records, fp_of(2, likelihood=None))
    # a v3 file must state its likelihood (null for none)
    del data["version"]
    data["version"] = "inferaudit.fingerprint/v3"
    bad = tmp_path / "bad.json"
    bad.write_bytes(orjson.dumps(data))
    with pytest.raises(ConfigError, match="malformed fingerprint"):
        load_fingerprint(bad)
