"""Every workload of the protocol run end to end against a real twin process on 127.0.0.1, with
exact counts checked against the twin's truth file: dataset formats, multi-turn sessions, shared
prefixes, trace replay, a concurrency cap on an open loop; and the caching checks' declaration
when the workload shares prefixes on purpose."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from inferaudit.audit.run import RunOptions, RunOutcome, run_verification
from inferaudit.audit.specs import SpecInputs, build_specs
from inferaudit.measure.datasets import load_conversations
from inferaudit.measure.protocol import Api
from inferaudit.measure.records import Record, read_records
from inferaudit.measure.samples import sample_path, write_hf_sample
from inferaudit.measure.traces import load_trace, trace_offsets_ns
from inferaudit.twin.launch import start_twin
from inferaudit.twin.options import TwinOptions

MODEL = "inferaudit-twin"


def truth_lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def run(
    tmp_path: Path,
    checks: tuple[str, ...] | None = (),
    ttft_ms: float = 200,
    behaviours: tuple[str, ...] = (),
    **inputs: Any,
) -> tuple[RunOutcome, list[Record], list[dict[str, Any]]]:
    """One run against a fresh twin. Its TTFT (default 200 ms) gives the error budget room for
    a busy client's few ms of send lag (2% of the figure)."""
    truth = tmp_path / "truth.jsonl"
    options = TwinOptions(ttft_ms=ttft_ms, tpot_ms=1, truth=truth, behave=behaviours)
    with start_twin(options) as twin:
        fields: dict[str, Any] = {"endpoint": twin.base_url, "model": MODEL, "workers": 1}
        fields.update(inputs)
        (spec,) = build_specs(SpecInputs(**fields))
        outcome = run_verification(spec, tmp_path / "run", RunOptions(checks=checks, sign=False))
    return outcome, read_records(tmp_path / "run" / "records.jsonl"), truth_lines(truth)


@pytest.mark.parametrize(
    ("name", "fmt", "turns"),
    [("sharegpt.json", "sharegpt", [1, 2, 4, 3, 1, 2]), ("chat.jsonl", "openai-chat",
     [1, 1, 2, 1, 1, 3])],
)  # fmt: skip
def test_multi_turn_sessions_send_every_turn_with_its_history(
    tmp_path: Path, name: str, fmt: str, turns: list[int]
) -> None:
    path = sample_path(name)
    outcome, records, truth = run(
        tmp_path, api=Api.chat, dataset=path, multi_turn=True, think_time=0.02, concurrency=2,
        requests=6, output_tokens="6",
    )  # fmt: skip
    assert outcome.summary.valid, outcome.summary.invalid_reasons
    by_session: dict[int, list[Record]] = defaultdict(list)
    for r in records:
        assert r.ok and r.session is not None and r.turn is not None
        by_session[r.session].append(r)
    assert sorted(len(v) for v in by_session.values()) == sorted(turns)
    assert len(records) == sum(turns) == len(truth)
    for session in by_session.values():
        session.sort(key=lambda r: r.turn or 0)
        assert [r.turn for r in session] == list(range(len(session)))
        for prev, nxt in itertools.pairwise(session):
            assert prev.done_ns is not None
            assert nxt.scheduled_ns == prev.done_ns + 20_000_000  # exactly its think time
    # The twin received each turn's history: 2t+1 messages (one more with a system prompt)
    systems = sum(c.system is not None for c in load_conversations(path, fmt))  # type: ignore[arg-type]
    messages = Counter(t["messages"] for t in truth)
    expected = Counter(2 * t + 1 for n in turns for t in range(n))
    assert sum(messages.values()) == sum(expected.values())
    with_system = [t for t in truth if t["roles"] and t["roles"][0] == "system"]
    assert len({t["last_user_sha256"] for t in with_system}) >= systems
    assert Counter(t["messages"] - (t["roles"][0] == "system") for t in truth) == expected
    assert [t.requests for t in outcome.summary.turns or ()] == [
        sum(1 for n in turns if n > k) for k in range(max(turns))
    ]


@pytest.mark.parametrize(
    ("name", "rows"), [("prompts.jsonl", 8), ("sharegpt.json", 6), ("chat.jsonl", 6), ("hf", 6)]
)
def test_each_dataset_format_is_sent_as_it_reads(tmp_path: Path, name: str, rows: int) -> None:
    if name == "hf":
        pytest.importorskip("datasets")
        path = write_hf_sample(tmp_path / "hf")
    else:
        path = sample_path(name)
    outcome, records, truth = run(tmp_path, api=Api.chat, dataset=path, concurrency=2,
                                  requests=rows, output_tokens="4")  # fmt: skip
    assert outcome.spec.workload.dataset_sha256 is not None
    assert len(records) == rows == len(truth) and all(r.ok for r in records)
    # every row exactly once (the seeded order is a permutation), as its first user turn
    assert len({t["last_user_sha256"] for t in truth}) == rows
    assert {t["messages"] for t in truth} <= {1, 2}


def test_shared_prefixes_are_seen_by_the_twins_prefix_cache_view(tmp_path: Path) -> None:
    outcome, records, truth = run(
        tmp_path, prefix_tokens=64, prefix_groups=3, input_tokens="24", output_tokens="4",
        concurrency=1, requests=30,
    )  # fmt: skip
    assert outcome.summary.valid and len(truth) == 30
    hits = Counter(t["prefix_hit_tokens"] for t in truth)
    # the first request of each group misses; every later one reuses exactly the 64 shared
    # tokens (its own salted prompt follows)
    assert hits == Counter({0: 3, 64: 27})
    assert {r.input_tokens for r in records} == {88}


def test_prefix_workloads_make_the_caching_checks_say_so(tmp_path: Path) -> None:
    # The twin really caches prefixes: the audit's shared-prefix prompts come back faster than
    # their controls, which fails an ordinary protocol and passes, said so, this one.
    outcome, _, _ = run(
        tmp_path, checks=("caching", "prefix-cache"), behaviours=("prefix-cache",),
        prefix_tokens=64, prefix_groups=2, input_tokens="200", output_tokens="4",
        concurrency=2, requests=40,
    )  # fmt: skip
    by_name = {v.check: v for v in outcome.verdicts}
    why = "the workload shares 2 system prompt(s) of 64 tokens"
    for name in ("caching", "prefix-cache"):
        assert by_name[name].verdict.value == "pass", by_name[name]
        assert by_name[name].numbers["prefix_reuse_expected"] == why
    assert by_name["prefix-cache"].summary.endswith(f"prefix caching is expected: {why}")


def test_a_trace_is_replayed_on_its_own_schedule(tmp_path: Path) -> None:
    path = sample_path("mooncake.jsonl")
    entries = load_trace(path).entries
    outcome, records, truth = run(tmp_path, trace=path, trace_speedup=2.0)
    assert outcome.summary.valid, outcome.summary.invalid_reasons
    assert len(records) == len(entries) == len(truth)
    records.sort(key=lambda r: r.id)
    scheduled = np.array([r.scheduled_ns for r in records]) - records[0].scheduled_ns
    assert (scheduled == trace_offsets_ns(entries, 2.0)).all()  # the trace's instants, exactly
    lags = sorted(r.lag_ns or 0 for r in records)
    assert outcome.summary.error_budget is not None and outcome.summary.error_budget.within
    assert lags[-1] >= 0
    for r, e in zip(records, entries, strict=True):
        assert (r.input_tokens, r.max_tokens) == (e.input_length, e.output_length)
    # Entries whose first block an earlier entry already sent reuse at least that block.
    first_seen: set[int] = set()
    expect_hit = []
    for e in entries:
        expect_hit.append(bool(e.hash_ids) and e.hash_ids[0] in first_seen)
        first_seen.update(e.hash_ids[:1])
    by_prompt_tokens = sorted(truth, key=lambda t: t["arrival_ns"])
    assert sum(t["prefix_hit_tokens"] >= 512 for t in by_prompt_tokens) == sum(expect_hit)


def test_a_rate_with_a_concurrency_cap_waits_for_slots(tmp_path: Path) -> None:
    outcome, records, truth = run(
        tmp_path, ttft_ms=100, rate=20.0, max_concurrency=2, requests=20, output_tokens="8",
        input_tokens="16",
    )  # fmt: skip
    assert len(records) == 20
    assert all(r.slot_ns is not None and r.slot_ns >= r.scheduled_ns for r in records)
    assert sum(r.slot_wait_ns > 0 for r in records) >= 5  # 20/s, 2 slots, ~110 ms requests
    spans = sorted((t["arrival_ns"], t["done_ns"]) for t in truth)
    for i, (start, _) in enumerate(spans):
        assert sum(1 for s, d in spans[:i] if d > start) <= 1  # never more than 2 at once
    wait = outcome.summary.slot_wait_ms
    assert wait is not None and wait.n == 20 and (wait.max or 0) > 0
    assert outcome.summary.valid, outcome.summary.invalid_reasons


def test_sessions_run_with_every_check_that_fits(tmp_path: Path) -> None:
    # The checks' own traffic (probes, repeats, shared-prefix pairs) is planned from the same
    # conversations, at ids of its own, beside the sessions.
    outcome, records, _ = run(
        tmp_path, checks=None, api=Api.chat, dataset=sample_path("sharegpt.json"),
        multi_turn=True, concurrency=2, requests=6, output_tokens="4",
    )  # fmt: skip
    measured = [r for r in records if r.phase == "measure"]
    # six measured positions, each a session's first turn or an audit request put in its place
    assert sum(r.turn in (0, None) for r in measured) == 6
    assert all(r.ok for r in records)
    names = {v.check for v in outcome.verdicts}
    assert {"conformance", "caching", "prefix-cache", "errors"} <= names
    assert not [v for v in outcome.verdicts if v.verdict.value == "fail"]
