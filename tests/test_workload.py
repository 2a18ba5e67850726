"""Workload: deterministic plans, unique salts, lengths, datasets, injected plans."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from inferaudit.errors import ConfigError
from inferaudit.measure.protocol import Endpoint, Length, Load, RunSpec, Workload
from inferaudit.measure.workload import (
    SALT_WORDS,
    VOCAB,
    Planner,
    RequestPlan,
    load_dataset,
    salt,
    salt_key,
    synthetic_prompt,
)


def spec(seed: int = 42, warmup: int = 0, **workload: object) -> RunSpec:
    return RunSpec(
        endpoint=Endpoint(base_url="http://127.0.0.1:9/v1", model="m"),
        load=Load(rate=1, requests=10, warmup=warmup),
        workload=Workload(**workload),  # type: ignore[arg-type]
        seed=seed,
    )


def unsalt(key: bytes, words: str) -> int:
    """Inverse of the salt's Feistel network, written independently from the forward one."""
    value = int.from_bytes(bytes(VOCAB.index(w) for w in words.split()), "big")
    left, right = value >> 32, value & 0xFFFFFFFF
    for r in reversed(range(4)):
        f = hashlib.blake2b(left.to_bytes(4, "big") + bytes((r,)), key=key, digest_size=4)
        left, right = right ^ int.from_bytes(f.digest(), "big"), left
    return (left << 32) | right


def test_salt_known_answers() -> None:
    key = salt_key(42)
    assert salt(key, 0) == "fact first or such since study because its"
    assert salt(key, 1) == "moment kind did will both they that moment"
    assert salt(salt_key(0), 0) == "even happen men no education back read by"


@pytest.mark.parametrize("i", [0, 1, 2, 255, 256, 65_537, 2**32 - 1, 2**32, 2**63 + 12345])
def test_salt_is_a_bijection_of_the_id(i: int) -> None:
    key = salt_key(7)
    assert unsalt(key, salt(key, i)) == i


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
    assert load_dataset(path, good)[0].prompt == "alpha"
    with pytest.raises(ConfigError, match="differs from the protocol's dataset_sha256"):
        load_dataset(path, "0" * 64)


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
        load_dataset(write(tmp_path, text))
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
    key = salt_key(1)
    a = synthetic_prompt(key, 5, 20, np.random.default_rng(3))
    b = synthetic_prompt(key, 5, 20, np.random.default_rng(3))
    c = synthetic_prompt(key, 5, 20)
    assert a == b and a != c
    assert a.split()[:SALT_WORDS] == c.split()[:SALT_WORDS] == salt(key, 5).split()
    assert len(a.split()) == len(c.split()) == 20
