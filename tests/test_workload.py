"""Workload: deterministic plans, unique salts, lengths, datasets, injected plans."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import numpy as np
import pytest

from inferaudit.errors import ConfigError
from inferaudit.measure.datasets import load_conversations
from inferaudit.measure.planner import Planner
from inferaudit.measure.protocol import Endpoint, Length, Load, RunSpec, Sampling, Workload
from inferaudit.measure.workload import (
    SALT_WORDS,
    VOCAB,
    RequestPlan,
    commit_seed,
    fixed_seed,
    load_seed,
    salt,
    seed_commitment,
    synthetic_prompt,
    write_seed,
)


def spec(seed: int = 42, warmup: int = 0, **workload: object) -> RunSpec:
    return RunSpec(
        endpoint=Endpoint(base_url="http://127.0.0.1:9/v1", model="m"),
        load=Load(rate=1, requests=10, warmup=warmup),
        workload=Workload(**workload),  # type: ignore[arg-type]
        seed=seed,
    )


SECRET = bytes(range(32))


def test_salt_is_hmac_sha256_of_the_id() -> None:
    # Written independently of the module: HMAC-SHA256(seed, "salt" 0x00 id64), first 8 bytes.
    for i in (0, 1, 2**40, 2**63 + 12345):
        mac = hmac.new(SECRET, b"salt\0" + i.to_bytes(8, "big"), hashlib.sha256).digest()
        assert salt(SECRET, i) == " ".join(VOCAB[b] for b in mac[:8])
    # pinned with `openssl dgst -sha256 -mac HMAC -macopt hexkey:0001..1f` over "salt\0" + 8 zeros
    assert salt(SECRET, 0) == "paper can game lot create those paper center"


def test_seed_commitment_known_answer_and_round_trip(tmp_path: Path) -> None:
    expected = hashlib.sha256(b"inferaudit.seed/v1\n" + SECRET).hexdigest()
    assert seed_commitment(SECRET) == expected
    committed = commit_seed(spec(), SECRET)
    assert committed.seed_commitment == expected
    # The secret is in memory only: not in the canonical JSON, not in the repr.
    dumped = committed.model_dump_json()
    assert SECRET.hex() not in dumped and "secret" not in dumped and "secret" not in repr(committed)
    assert load_seed(tmp_path) is None
    write_seed(tmp_path, SECRET)
    assert (tmp_path / "seed.json").read_text() == f'{{"seed":"{SECRET.hex()}"}}\n'
    assert load_seed(tmp_path) == SECRET


@pytest.mark.parametrize(
    "text", ['{"seed": "00"}', '{"seed": 5}', "[]", '{"seed": "' + "A" * 64 + '"}', "nope"]
)
def test_malformed_seed_file_is_one_line(tmp_path: Path, text: str) -> None:
    (tmp_path / "seed.json").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_seed(tmp_path)
    assert "\n" not in str(info.value)


def test_planner_needs_the_secret_of_a_committed_spec() -> None:
    committed = commit_seed(spec(), SECRET)
    assert Planner(committed).plan(3) == Planner(commit_seed(spec(), SECRET)).plan(3)
    assert Planner(committed).plan(3).prompt != Planner(spec()).plan(3).prompt
    with pytest.raises(ConfigError, match="cannot be planned without it"):
        Planner(committed.model_copy(update={"secret_seed": None}))
    with pytest.raises(ConfigError, match="does not match"):
        Planner(committed.model_copy(update={"secret_seed": bytes(32)}))
    # a spec without a commitment plans under the public fixed seed of spec.seed
    public = commit_seed(spec(seed=7), fixed_seed(7))
    assert Planner(spec(seed=7)).plan(0) == Planner(public).plan(0)


def test_sampling_keys_are_the_same_for_every_plan() -> None:
    greedy = spec().model_copy(update={"sampling": Sampling()})
    bodies = [Planner(greedy).plan(i).extra_body for i in range(20)]
    assert all(b == {"temperature": 0.0, "top_p": 1.0} for b in bodies)
    assert all(type(b["temperature"]) is float for b in bodies)
    seeded = spec().model_copy(
        update={"sampling": Sampling(temperature=0.7, top_p=0.9, seed_per_request=True)}
    )
    bodies = [Planner(seeded).plan(i).extra_body for i in range(200)]
    assert {tuple(b) for b in bodies} == {("temperature", "top_p", "seed")}
    seeds = [b["seed"] for b in bodies]
    assert all(isinstance(x, int) and 0 <= x < 2**31 for x in seeds)
    assert len(set(seeds)) == 200


def test_no_two_prompts_share_a_prefix() -> None:
    planner = Planner(spec(input_tokens=Length(lo=16, hi=16)))
    prompts = [planner.plan(i).prompt for i in range(20_000)]
    firsts = [p.split()[:SALT_WORDS] for p in prompts]
    assert len({" ".join(f) for f in firsts}) == len(prompts)
    # not even the first two words repeat often: they spread over 65,536 combinations
    pairs = [" ".join(f[:2]) for f in firsts]
    assert len(set(pairs)) > 15_000


def test_plans_are_deterministic_from_seed_and_id() -> None:
    a, b = Planner(spec(seed=5)), Planner(spec(seed=5))
    assert [a.plan(i) for i in range(50)] == [b.plan(i) for i in reversed(range(50))][::-1]
    other = Planner(spec(seed=6))
    assert all(a.plan(i).prompt != other.plan(i).prompt for i in range(50))


def test_synthetic_lengths_fixed() -> None:
    planner = Planner(spec(input_tokens=Length(lo=100, hi=100), output_tokens=Length(lo=7, hi=7)))
    plan = planner.plan(3)
    assert plan.input_tokens == 100
    assert len(plan.prompt.split(" ")) == 100
    assert set(plan.prompt.split(" ")) <= set(VOCAB)
    assert plan.max_tokens == 7
    assert plan.extra_body == {}


def test_prompt_shorter_than_the_salt_is_the_salt() -> None:
    plan = Planner(spec(input_tokens=Length(lo=3, hi=3))).plan(0)
    assert plan.input_tokens == SALT_WORDS
    assert len(plan.prompt.split(" ")) == SALT_WORDS


def test_uniform_lengths_cover_the_range() -> None:
    planner = Planner(spec(input_tokens=Length.parse("20-30"), output_tokens=Length.parse("1-4")))
    plans = [planner.plan(i) for i in range(400)]
    assert {p.input_tokens for p in plans} == set(range(20, 31))
    assert {p.max_tokens for p in plans} == {1, 2, 3, 4}
    assert all(len(p.prompt.split(" ")) == p.input_tokens for p in plans)


def test_normal_lengths_stay_in_range_and_centre() -> None:
    planner = Planner(spec(output_tokens=Length.parse("100-400:normal")))
    outs = [planner.plan(i).max_tokens or 0 for i in range(2000)]
    assert min(outs) >= 100 and max(outs) <= 400
    mean = sum(outs) / len(outs)
    assert abs(mean - 250) < 5  # sd 50, standard error of the mean ~1.1
    within_one_sd = sum(200 <= o <= 300 for o in outs) / len(outs)
    assert 0.64 < within_one_sd < 0.72  # 68.3 % for a normal


def test_warmup_phase_then_measure() -> None:
    planner = Planner(spec(warmup=3))
    assert [planner.plan(i).phase for i in range(5)] == [
        "warmup",
        "warmup",
        "warmup",
        "measure",
        "measure",
    ]


def test_injected_plans_replace_generated_ones() -> None:
    probe = RequestPlan(4, "measure", "What is 2+2?", 8, tag="fp-1", extra_body={"seed": 1})
    planner = Planner(spec(), injected={4: probe})
    assert planner.plan(4) is probe
    assert planner.plan(5).tag is None
    with pytest.raises(ConfigError, match="injected plan at id 3 carries id 4"):
        Planner(spec(), injected={3: probe})


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text(text)
    return path


def test_dataset_rows_in_seeded_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '{"prompt": "alpha", "output_tokens": 3}\n\n{"prompt": "beta"}\n{"prompt": "gamma"}\n',
    )
    s = spec(dataset=str(path), output_tokens=Length(lo=9, hi=9))
    planner = Planner.from_spec(s)
    plans = [planner.plan(i) for i in range(6)]
    assert sorted(p.prompt for p in plans[:3]) == ["alpha", "beta", "gamma"]
    assert [p.prompt for p in plans[3:]] == [p.prompt for p in plans[:3]]  # cycles
    assert {p.prompt: p.max_tokens for p in plans} == {"alpha": 3, "beta": 9, "gamma": 9}
    assert all(p.input_tokens is None for p in plans)
    assert [p.prompt for p in plans] == [Planner.from_spec(s).plan(i).prompt for i in range(6)]


def test_dataset_digest_must_match(tmp_path: Path) -> None:
    path = write(tmp_path, '{"prompt": "alpha"}\n')
    good = hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_conversations(path, None, good)[0].turns[0].user == "alpha"
    with pytest.raises(ConfigError, match="differs from the protocol's dataset_sha256"):
        load_conversations(path, None, "0" * 64)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"prompt": "a"}\n{"prompt": "b"\n', r"data.jsonl:2: not JSON"),
        ('{"prompt": "a"}\n\n[1, 2]\n', r"data.jsonl:3: expected an object"),
        ('{"prompt": ""}\n', r'data.jsonl:1: "prompt" must be a non-empty string'),
        ('{"prompt": "a", "output_tokens": 0}\n', r'data.jsonl:1: "output_tokens" must be a'),
        ('{"prompt": "a", "output_tokens": true}\n', r'data.jsonl:1: "output_tokens" must be'),
        ('{"prompt": "a", "extra": 1}\n', r"data.jsonl:1: unknown field 'extra'"),
        ("\n\n", r"no prompts in it"),
    ],
)
def test_bad_dataset_lines_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_conversations(write(tmp_path, text), None)
    assert "\n" not in str(info.value)


def test_missing_dataset_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        Planner.from_spec(spec(dataset=str(tmp_path / "nope.jsonl")))
    assert str(info.value) == f"dataset {tmp_path / 'nope.jsonl'}: no such file"


def test_planner_pickles_for_worker_processes() -> None:
    import pickle

    planner = Planner(spec(seed=9))
    copy = pickle.loads(pickle.dumps(planner))
    assert copy.plan(17) == planner.plan(17)


def test_synthetic_prompt_body_from_a_caller_generator() -> None:
    key = fixed_seed(1)
    a = synthetic_prompt(key, 5, 20, np.random.default_rng(3))
    b = synthetic_prompt(key, 5, 20, np.random.default_rng(3))
    c = synthetic_prompt(key, 5, 20)
    assert a == b and a != c
    assert a.split()[:SALT_WORDS] == c.split()[:SALT_WORDS] == salt(key, 5).split()
    assert len(a.split()) == len(c.split()) == 20
