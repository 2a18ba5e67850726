"""Open-loop arrivals drawn from the run's secret seed (issue 8, item 2): unpredictable before
the seed is revealed; specs without a secret seed (v1 evidence) keep the 0.1 derivation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fakes import FakeServer
from inferaudit.errors import ConfigError
from inferaudit.measure.load.runner import run_load
from inferaudit.measure.load.schedule import arrival_offsets_ns, arrival_seed
from inferaudit.measure.protocol import SPEC_VERSION_V1, Endpoint, Length, Load, RunSpec, Workload
from inferaudit.measure.records import read_records
from inferaudit.measure.workload import commit_seed, fixed_seed, prf

# Computed with the 0.1 formula (default_rng((seed, 0x5C4ED)) exponential gaps) before the
# arrival stream could come from a secret seed: public seeds must keep giving exactly these.
PINNED = [
    (Load(rate=10, requests=6), 7, [0, 58500712, 64076450, 395895989, 577402633, 586003455]),
    (
        Load(rate=4, requests=4, warmup=2),
        0,
        [0, 248695074, 407643538, 480611408, 569507744, 580219088],
    ),
    (Load(rate=50, duration_s=0.1), 123, [0, 48730191, 50562813, 71082355, 71749215, 98396711]),
]


def make_spec(load: Load, seed: int = 0, *, v1: bool = False) -> RunSpec:
    spec = RunSpec(
        endpoint=Endpoint(base_url="http://127.0.0.1:1/v1", model="fake-model"),
        workload=Workload(input_tokens=Length(lo=16, hi=16), output_tokens=Length(lo=3, hi=3)),
        load=load,
        seed=seed,
        workers=1,
    )
    return spec.model_copy(update={"spec_version": SPEC_VERSION_V1}) if v1 else spec


@pytest.mark.parametrize(("load", "seed", "expected"), PINNED)
def test_public_seeds_keep_the_old_derivation(load: Load, seed: int, expected: list[int]) -> None:
    assert arrival_offsets_ns(load, seed).tolist() == expected
    for spec in (make_spec(load, seed), make_spec(load, seed, v1=True)):
        assert arrival_seed(spec) == seed  # no secret seed: the public one, as in 0.1
        assert arrival_offsets_ns(load, arrival_seed(spec)).tolist() == expected


def test_the_secret_seed_decides_the_arrivals() -> None:
    load = Load(rate=50, requests=200)
    base = make_spec(load, seed=7)
    a = commit_seed(base, fixed_seed(1))
    b = commit_seed(base, fixed_seed(2))
    again = commit_seed(base, fixed_seed(1))
    off_a = arrival_offsets_ns(load, arrival_seed(a))
    assert np.array_equal(off_a, arrival_offsets_ns(load, arrival_seed(again)))  # same secret
    assert not np.array_equal(off_a, arrival_offsets_ns(load, arrival_seed(b)))  # other secret
    # the public seed no longer predicts them, and the key is a PRF of the secret, not the secret
    assert not np.array_equal(off_a, arrival_offsets_ns(load, 7))
    assert arrival_seed(a) == prf(fixed_seed(1), b"arrivals", 0) != fixed_seed(1)
    # a public seed that differs changes nothing once the secret decides
    other_public = commit_seed(make_spec(load, seed=8), fixed_seed(1))
    assert np.array_equal(off_a, arrival_offsets_ns(load, arrival_seed(other_public)))
    # still a Poisson process of the asked rate: 199 exponential gaps of mean 20 ms
    gaps = np.diff(off_a) / 1e9
    assert abs(gaps.mean() - 0.02) < 5 * 0.02 / np.sqrt(len(gaps))


def test_a_committed_spec_without_its_secret_cannot_be_scheduled() -> None:
    committed = commit_seed(make_spec(Load(rate=5, requests=3)), fixed_seed(3))
    stored = RunSpec.model_validate_json(committed.model_dump_json())  # as read from spec.json
    assert stored.secret_seed is None and stored.seed_commitment is not None
    with pytest.raises(ConfigError, match="cannot be planned without it"):
        arrival_seed(stored)
    revealed = stored.model_copy(update={"secret_seed": fixed_seed(3)})  # after the reveal
    assert arrival_seed(revealed) == arrival_seed(committed)


def test_the_runner_sends_at_the_secret_arrivals(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    with FakeServer() as srv:
        base = make_spec(Load(rate=200, requests=30, warmup=2))
        s = commit_seed(base.model_copy(update={"endpoint": Endpoint(
            base_url=srv.base_url, model="fake-model")}), fixed_seed(9))  # fmt: skip
        run_load(s, path)
    records = read_records(path)
    offsets = arrival_offsets_ns(s.load, arrival_seed(s)).tolist()
    assert {r.id: r.scheduled_ns for r in records} == dict(enumerate(offsets))
    assert offsets != arrival_offsets_ns(s.load, s.seed).tolist()
