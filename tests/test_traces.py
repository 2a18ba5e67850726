"""Trace replay: strict Mooncake / BurstGPT parsing, exact offsets, seeded shared-block prompts."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest

import inferaudit
from inferaudit.errors import ConfigError, DataError
from inferaudit.measure.protocol import Trace
from inferaudit.measure.traces import (
    BURSTGPT_HEADER,
    TraceEntry,
    detect_trace_format,
    load_protocol_trace,
    load_trace,
    main,
    mean_rate,
    synthetic_trace,
    trace_offsets_ns,
    trace_prompt,
    write_trace_samples,
)
from inferaudit.measure.workload import VOCAB, fixed_seed, prf, salt

SAMPLES = Path(inferaudit.__file__).parent / "data" / "samples"
SEED = fixed_seed(7)
HEADER = ",".join(BURSTGPT_HEADER)


def _common_words(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a.split(), b.split(), strict=False):
        if x != y:
            break
        n += 1
    return n


# ---- the shipped samples ----


def test_mooncake_sample_exact() -> None:
    trace = load_trace(SAMPLES / "mooncake.jsonl")
    assert trace.format == "mooncake"
    assert len(trace.entries) == 40
    assert trace.skipped_failed == 0
    assert sum(len(e.hash_ids) for e in trace.entries) == 108
    assert sum(e.input_length for e in trace.entries) == 45584
    assert sum(e.output_length for e in trace.entries) == 699
    assert trace.entries[0] == TraceEntry(0.0, 742, 12, (2, 6))
    assert trace.entries[-1] == TraceEntry(4035.0, 1193, 26, (3, 4, 58))
    # three families of shared prefixes: first blocks 0, 2 and 3 only
    assert {e.hash_ids[0] for e in trace.entries} == {0, 2, 3}
    assert all(600 <= e.input_length <= 1600 for e in trace.entries)
    assert all(e.input_length <= 512 * len(e.hash_ids) for e in trace.entries)
    data = (SAMPLES / "mooncake.jsonl").read_bytes()
    assert trace.sha256 == hashlib.sha256(data).hexdigest()


def test_burstgpt_sample_exact() -> None:
    trace = load_trace(SAMPLES / "burstgpt.csv")
    assert trace.format == "burstgpt"
    assert len(trace.entries) == 37
    assert trace.skipped_failed == 3
    assert sum(len(e.hash_ids) for e in trace.entries) == 0
    assert sum(e.input_length for e in trace.entries) == 20086
    assert sum(e.output_length for e in trace.entries) == 5035
    assert trace.entries[0] == TraceEntry(86.0, 251, 249)
    assert trace.entries[-1] == TraceEntry(6609.0, 586, 231)


def test_samples_regenerate_byte_for_byte(tmp_path: Path) -> None:
    written = write_trace_samples(tmp_path)
    assert [p.name for p in written] == ["mooncake.jsonl", "burstgpt.csv"]
    for path in written:
        assert path.read_bytes() == (SAMPLES / path.name).read_bytes()


def test_main_writes_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.splitlines() == [
        str(tmp_path / "out" / "mooncake.jsonl"),
        str(tmp_path / "out" / "burstgpt.csv"),
    ]
    assert main([]) == 2


def test_detect_format() -> None:
    assert detect_trace_format(SAMPLES / "mooncake.jsonl") == "mooncake"
    assert detect_trace_format(SAMPLES / "burstgpt.csv") == "burstgpt"


def test_digest_binding_and_protocol_trace() -> None:
    path = SAMPLES / "burstgpt.csv"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    trace = load_protocol_trace(Trace(path=str(path), sha256=digest, format="burstgpt"))
    assert len(trace.entries) == 37
    with pytest.raises(ConfigError, match=r"differs from the protocol's trace sha256$"):
        load_trace(path, sha256="0" * 64)
    with pytest.raises(DataError, match=r"mooncake\.jsonl:1: expected BurstGPT's header"):
        load_trace(SAMPLES / "mooncake.jsonl", "burstgpt")


def test_extra_keys_missing_hash_ids_and_crlf(tmp_path: Path) -> None:
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text(
        '{"timestamp": 5, "input_length": 3, "output_length": 1, "note": "x"}\n\n'
        '{"timestamp": 5, "input_length": 4, "output_length": 2, "hash_ids": [9]}\n'
    )
    assert load_trace(jsonl).entries == (TraceEntry(5.0, 3, 1), TraceEntry(5.0, 4, 2, (9,)))
    csv = tmp_path / "t.csv"
    csv.write_bytes(
        (
            HEADER + "\r\n0.5,ChatGPT,10,0,10,API log\r\n0.5,GPT-4,3,4,7,Conversation log\r\n"
        ).encode()
    )
    loaded = load_trace(csv)
    assert loaded.entries == (TraceEntry(500.0, 3, 4),)
    assert loaded.skipped_failed == 1


# ---- replay: offsets and rates ----


def test_offsets_exact_with_speedup() -> None:
    entries = [
        TraceEntry(1000.0, 1, 1),
        TraceEntry(1000.0, 1, 1),
        TraceEntry(1500.0, 1, 1),
        TraceEntry(4000.5, 1, 1),
    ]
    offsets = trace_offsets_ns(entries, 2.0)
    assert offsets.dtype == np.int64
    assert offsets.tolist() == [0, 0, 250_000_000, 1_500_250_000]
    assert trace_offsets_ns(entries, 1.0).tolist() == [0, 0, 500_000_000, 3_000_500_000]
    assert mean_rate(entries, 2.0) == 3 / 1.50025
    assert mean_rate(entries[:2], 1.0) == math.inf


def test_synthetic_trace_is_deterministic_and_poisson_like() -> None:
    a = synthetic_trace(2000, 500.0, seed=3)
    assert a == synthetic_trace(2000, 500.0, seed=3)
    assert a != synthetic_trace(2000, 500.0, seed=4)
    assert a[0].timestamp_ms == 0.0
    assert all(e.timestamp_ms == int(e.timestamp_ms) for e in a)
    assert 450 < mean_rate(a, 1.0) < 550  # 2000 exponential gaps: within ~5 sigma of 500/s
    assert {e.hash_ids[0] for e in a} == {0, 2, 3}


# ---- prompts ----


def test_prompts_share_exactly_their_common_blocks() -> None:
    block = 16
    a = trace_prompt(SEED, 0, TraceEntry(0.0, 48, 1, (1, 2, 3)), block)
    b = trace_prompt(SEED, 1, TraceEntry(0.0, 48, 1, (1, 2, 9)), block)
    assert len(a.split()) == len(b.split()) == 48
    assert _common_words(a, b) == 2 * block
    # the same blocks give the same text whatever the entry's id
    assert trace_prompt(SEED, 5, TraceEntry(9.0, 48, 3, (1, 2, 3)), block) == a
    # and another seed gives other text
    assert (
        _common_words(a, trace_prompt(fixed_seed(8), 0, TraceEntry(0.0, 48, 1, (1, 2, 3)), block))
        == 0
    )


def test_prompt_known_answer() -> None:
    # block 7 of 4 words, then a 2-word tail: the first two words of request 3's salt
    words = [VOCAB[b] for b in hashlib.shake_128(prf(SEED, b"trace-block", 7)).digest(4)]
    prompt = trace_prompt(SEED, 3, TraceEntry(0.0, 6, 1, (7,)), 4)
    assert prompt == " ".join([*words, *salt(SEED, 3).split()[:2]])


def test_partial_last_block_and_unique_tails() -> None:
    block = 16
    full = trace_prompt(SEED, 0, TraceEntry(0.0, 48, 1, (1, 2, 3)), block)
    partial = trace_prompt(SEED, 0, TraceEntry(0.0, 40, 1, (1, 2, 3)), block)
    assert full.startswith(partial + " ") and len(partial.split()) == 40
    t0 = trace_prompt(SEED, 0, TraceEntry(0.0, 70, 1, (1, 2, 3)), block)
    t1 = trace_prompt(SEED, 1, TraceEntry(0.0, 70, 1, (1, 2, 3)), block)
    assert len(t0.split()) == len(t1.split()) == 70
    assert _common_words(t0, t1) == 48
    assert t0.split()[48:56] == salt(SEED, 0).split()
    assert t1.split()[48:56] == salt(SEED, 1).split()
    tail = [VOCAB[b] for b in hashlib.shake_128(prf(SEED, b"trace-tail", 0)).digest(14)]
    assert t0.split()[56:] == tail


def test_entry_without_blocks_is_a_unique_salted_prompt() -> None:
    p0 = trace_prompt(SEED, 0, TraceEntry(0.0, 30, 1), 512)
    p1 = trace_prompt(SEED, 1, TraceEntry(0.0, 30, 1), 512)
    assert len(p0.split()) == len(p1.split()) == 30
    assert p0.startswith(salt(SEED, 0) + " ") and p1.startswith(salt(SEED, 1) + " ")
    assert p0 != p1
    assert trace_prompt(SEED, 0, TraceEntry(0.0, 3, 1), 512) == " ".join(salt(SEED, 0).split()[:3])


def test_sample_prompts_word_counts() -> None:
    trace = load_trace(SAMPLES / "mooncake.jsonl")
    prompts = [trace_prompt(SEED, i, e, 512) for i, e in enumerate(trace.entries)]
    assert [len(p.split()) for p in prompts] == [e.input_length for e in trace.entries]
    # entries of one family share its first block: 512 words at least
    same = [i for i, e in enumerate(trace.entries) if e.hash_ids[0] == 0]
    assert _common_words(prompts[same[0]], prompts[same[1]]) >= 512
    assert len(set(prompts)) == 40


# ---- one-line errors for bad input ----

_M = '{"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [1]}\n'
BAD_MOONCAKE = [
    ("not json\n", r"t\.jsonl:1: not JSON"),
    (_M + "[1, 2]\n", r"t\.jsonl:2: expected a JSON object, got list"),
    ('{"timestamp": 0, "output_length": 2}\n', r":1: field 'input_length' is missing"),
    (_M.replace('"timestamp": 0', '"timestamp": 1.5'), r":1: field 'timestamp' must be a non"),
    (_M.replace('"timestamp": 0', '"timestamp": -3'), r":1: field 'timestamp' must be a non"),
    (_M.replace('"timestamp": 0', '"timestamp": true'), r":1: field 'timestamp' must be a non"),
    (_M.replace('"input_length": 10', '"input_length": 0'), r":1: field 'input_length' must be"),
    (_M.replace('"output_length": 2', '"output_length": 0'), r":1: field 'output_length' must"),
    (_M.replace('"output_length": 2', '"output_length": "2"'), r":1: field 'output_length' must"),
    (_M.replace("[1]", "7"), r":1: field 'hash_ids' must be a list, got 7"),
    (_M.replace("[1]", "[1, -1]"), r":1: field 'hash_ids' holds -1"),
    (_M.replace("[1]", f"[{2**64 - 1}, 1.0]"), r":1: field 'hash_ids' holds 1\.0"),
    (
        _M.replace('"timestamp": 0', '"timestamp": 9') + "\n" + _M,
        r":3: field 'timestamp' goes back",
    ),
    ("\n\n", r"t\.jsonl: no requests in it"),
]
BAD_BURSTGPT = [
    ("Timestamp,Model\n1,ChatGPT\n", r"t\.csv:1: a \.csv trace needs BurstGPT's header"),
    (HEADER + "\n1,ChatGPT,10,2,12\n", r"t\.csv:2: expected 6 fields, got 5"),
    (HEADER + "\n1e3,ChatGPT,10,2,12,API log\n", r":2: field 'Timestamp' must be decimal"),
    (HEADER + "\n-1,ChatGPT,10,2,12,API log\n", r":2: field 'Timestamp' must be decimal"),
    (HEADER + "\n1,ChatGPT,010,2,12,API log\n", r":2: field 'Request tokens' must be a canon"),
    (HEADER + "\n1,ChatGPT,10,-2,8,API log\n", r":2: field 'Response tokens' must be a canon"),
    (HEADER + "\n1,ChatGPT,0,2,2,API log\n", r":2: field 'Request tokens' must be an integer"),
    (HEADER + "\n1,ChatGPT,10,2,13,API log\n", r":2: field 'Total tokens' is 13, not Request"),
    (HEADER + "\n1, ,10,2,12,API log\n", r":2: field 'Model' is empty"),
    (
        HEADER + "\n2.5,ChatGPT,10,2,12,API log\n2.25,ChatGPT,10,0,10,API log\n",
        r":3: field 'Timestamp' goes back in time \(2\.25 after 2\.5\)",
    ),
    (HEADER + "\n1,ChatGPT,10,0,10,API log\n", r"t\.csv: no requests in it"),
    (HEADER + '\n1,"Chat\n', r"t\.csv:\d+: not CSV"),
]


@pytest.mark.parametrize(("text", "message"), BAD_MOONCAKE)
def test_bad_mooncake_lines(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as info:
        load_trace(path)
    assert "\n" not in info.value.diagnostics()
    assert str(path) in info.value.diagnostics()


@pytest.mark.parametrize(("text", "message"), BAD_BURSTGPT)
def test_bad_burstgpt_rows(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as info:
        load_trace(path)
    assert "\n" not in info.value.diagnostics()
    assert str(path) in info.value.diagnostics()


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.jsonl: no such file$"):
        load_trace(tmp_path / "missing.jsonl")
    other = tmp_path / "t.txt"
    other.write_text("hello\n")
    with pytest.raises(DataError, match=r"t\.txt:1: neither Mooncake JSONL nor a BurstGPT CSV$"):
        detect_trace_format(other)
    binary = tmp_path / "b.csv"
    binary.write_bytes(HEADER.encode() + b"\n1,\xff,1,1,2,x\n")
    with pytest.raises(DataError, match=rf"b\.csv: not UTF-8 \(byte {len(HEADER) + 3}\)$"):
        load_trace(binary)
