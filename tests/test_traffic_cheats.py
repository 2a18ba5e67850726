"""Cheats written after reading the code (issue 8): each against the check that must catch it,
the honest twin under the same run passing; caching's timing comparison under client noise; a
user-fixed seed.

* ``replay-detect`` serves the real model only to what looks like audit traffic (the first
  requests, a request after an idle server, a body or a prompt length unlike the others):
  replays are sent inside the load with the load's own body and lengths, so it can only guess,
  substitutes the replays along with the load, and ``identity`` fails.
* ``prefill-cut`` reads only the tail of long prompts: replays are long prompts too (recorded
  with the run's workload flags), the reference answered the whole prompt, so ``identity``
  fails.
* ``cache-under-load`` replays cached answers only above a concurrency: the repeats run inside
  the load at the run's own concurrency, so ``caching`` fails.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from inferaudit.audit.run import RunOptions, run_verification
from inferaudit.judge.caching import CACHE_REPEAT, check_caching, check_prefix_cache
from inferaudit.judge.verdict import Outcome, Verdict, format_verdict
from inferaudit.measure.fingerprint import TAG
from inferaudit.measure.fingerprint_record import record_fingerprint
from inferaudit.measure.probes.interrupts import CutStreams, cut_by_arrivals, is_cut
from inferaudit.measure.protocol import Endpoint, Length, Load, RunSpec, Workload
from inferaudit.measure.records import Record, read_records
from inferaudit.measure.workload import fixed_seed, seed_commitment
from inferaudit.twin.launch import start_twin
from inferaudit.twin.options import TwinOptions
from test_audit_traffic import rec

MODEL = "twin-m"
WORKLOAD = Workload(input_tokens=Length.parse("56-72"), output_tokens=Length(lo=16, hi=16))


def spec(base_url: str, requests: int, concurrency: int) -> RunSpec:
    return RunSpec(
        endpoint=Endpoint(base_url=base_url, model=MODEL),
        workload=WORKLOAD,
        load=Load(concurrency=concurrency, requests=requests),
        workers=1,
        max_client_lag_p99_ms=1000.0,
    )


def twin_reference(path: Path, workload: Workload) -> Path:
    """A fingerprint of the honest twin, recorded with ``workload``'s flags, saved at ``path``."""
    with start_twin(TwinOptions(ttft_ms=10, tpot_ms=1, model=MODEL)) as twin:
        endpoint = Endpoint(base_url=twin.base_url, model=MODEL)
        fp = record_fingerprint(endpoint, workload=workload, prompts=16, repeats=2)
    assert fp.self_agreement == 1.0
    fp.save(path)
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fingerprint of the honest twin, recorded with the runs' workload flags."""
    return twin_reference(tmp_path_factory.mktemp("fp") / "ref.json", WORKLOAD)


@dataclass
class Ran:
    verdicts: dict[str, Verdict]
    records: list[Record]
    truth: dict[str, list[str]]  # output_sha256 -> behaviours that acted on it


def run(tmp_path: Path, behave: tuple[str, ...], checks: list[str], *, requests: int,
        concurrency: int, fingerprint: Path | None = None, ttft_ms: float = 10) -> Ran:  # fmt: skip
    truth = tmp_path / "truth.jsonl"
    args = TwinOptions(ttft_ms=ttft_ms, tpot_ms=1, model=MODEL, behave=behave, truth=truth)
    with start_twin(args) as twin:
        options = RunOptions(checks=checks, fingerprint=fingerprint, sign=False)
        outcome = run_verification(
            spec(twin.base_url, requests, concurrency), tmp_path / "run", options
        )
    lines = [orjson.loads(x) for x in truth.read_bytes().splitlines() if x.strip()]
    return Ran(
        {v.check: v for v in outcome.verdicts},
        read_records(tmp_path / "run" / "records.jsonl"),
        {t["output_sha256"]: t["behaviours"] for t in lines},
    )


def replays(ran: Ran) -> list[Record]:
    return [r for r in ran.records if r.tag and r.tag.startswith(TAG)]


def test_honest_twin_passes_identity_with_long_prompts(tmp_path: Path, reference: Path) -> None:
    ran = run(tmp_path, (), ["conformance", "identity"], requests=60, concurrency=4,
              fingerprint=reference)  # fmt: skip
    v = ran.verdicts["identity"]
    assert v.verdict is Outcome.passed, format_verdict(v)
    assert v.numbers["replayed"] == 6 and v.numbers["agreement"] == 1.0


def test_replay_detect_can_only_guess_and_identity_fails(tmp_path: Path, reference: Path) -> None:
    ran = run(tmp_path, ("replay-detect",), ["conformance", "identity"], requests=60,
              concurrency=4, fingerprint=reference)  # fmt: skip
    v = ran.verdicts["identity"]
    assert v.verdict is Outcome.failed, format_verdict(v)
    assert v.numbers["replayed"] == 6
    # What the server guessed (the truth file): it served the real model to its first 8
    # requests (the 6 probes, 2 of the load), after an idle server, and to prompt lengths it
    # had not seen among its first 32; the rest got the substitute. A replay got the real model
    # only where a guess hit it by chance, as load requests did: the agreement is that share.
    spared = [r for r in replays(ran) if "replay-detect" not in ran.truth[r.output_sha256]]
    assert abs(v.numbers["agreement"] - len(spared) / 6) < 0.1
    measured = [r for r in ran.records if r.phase == "measure" and not r.tag]
    swapped = [r for r in measured if "replay-detect" in ran.truth[r.output_sha256]]
    assert len(swapped) >= len(measured) // 2  # the cheat paid: most of the load substituted


def test_prefill_cut_fails_identity(tmp_path: Path, reference: Path) -> None:
    ran = run(tmp_path, ("prefill-cut:above=48",), ["identity"], requests=60, concurrency=4,
              fingerprint=reference)  # fmt: skip
    v = ran.verdicts["identity"]
    assert v.verdict is Outcome.failed, format_verdict(v)
    assert v.numbers["agreement"] < 0.2
    # every prompt was over 48 words: the server read only its tail, and still reported all
    assert all("prefill-cut" in ran.truth[r.output_sha256] for r in ran.records)
    assert all(
        r.usage_prompt_tokens is not None and r.usage_prompt_tokens >= 56 for r in ran.records
    )


@pytest.mark.parametrize("behave", [(), ("cache-under-load:threshold=4",)])
def test_cache_under_load_fails_caching(tmp_path: Path, behave: tuple[str, ...]) -> None:
    # 160 measured requests: the repeats are inside the load, at its concurrency (8). A 40 ms
    # first token: a control is charged what the client's stalls (and two too short to be
    # recorded, 3 ms each) can have delayed it, and a cache must stand beyond that.
    ran = run(tmp_path, behave, ["caching"], requests=160, concurrency=8, ttft_ms=40)
    v = ran.verdicts["caching"]
    assert v.numbers["pairs"] >= 8
    repeats = [r for r in ran.records if r.tag == CACHE_REPEAT]
    assert repeats and all(r.phase == "measure" for r in repeats)
    if not behave:
        assert v.verdict is Outcome.passed, format_verdict(v)
        return
    if v.verdict is Outcome.inconclusive and v.numbers.get("excused_by_stalls"):
        # a busy machine: the client's own stalls could have made the signal, so it is not
        # charged (never a false FAIL), and says so; the cache's advantage was still measured
        assert "the client was busy" in v.summary, format_verdict(v)
        assert _number(v.numbers["throughput_improvement"]) > 2, format_verdict(v)
    else:
        assert v.verdict is Outcome.failed, format_verdict(v)
    hits = [r for r in repeats if "cache-under-load" in ran.truth.get(r.output_sha256, [])]
    assert len(hits) >= len(repeats) // 2


# ---- caching's timing comparison under client noise (judge.noise rules) -----------------


@dataclass(frozen=True)
class Window:
    """The health-window fields the judges read (contract C3)."""

    start_ns: int
    end_ns: int
    healthy: bool
    loop_delay_p99_ms: float | None = 1.0
    loop_delay_max_ms: float | None = 2.0
    reason: str | None = None
    phase: str = "measure"
    stalls: tuple[tuple[int, int, int], ...] | None = None


def cached_run(cache_from: int = 0) -> list[Record]:
    """Every 4th request (from the 8th) repeats the prompt sent 9 before; repeats from id
    ``cache_from`` on are served in 1 ms (a cache), the others in the controls' 120 ms."""
    out = []
    for i in range(96):
        if i % 4 == 3 and i >= 8:
            fast = i >= cache_from
            out.append(rec(i, 200.0 * i, 1.0 if fast else 120.0 + i % 3, f"p{i - 9}",
                           CACHE_REPEAT))  # fmt: skip
        else:
            out.append(rec(i, 200.0 * i, 120.0 + i % 3, f"p{i}"))
    return out


def windows(
    healthy_until_ms: float, end_ms: float = 20_000.0, busy_stall_ms: float = 100.0
) -> list[Window]:
    """1 s windows over the run, healthy before ``healthy_until_ms``; the busy ones saw stalls
    of up to ``busy_stall_ms`` (the healthy ones 2 ms)."""
    out = []
    for t in range(0, int(end_ms), 1000):
        ok = t + 1000 <= healthy_until_ms
        out.append(
            Window(int(t * 1e6), int((t + 1000) * 1e6), ok,
                   loop_delay_max_ms=2.0 if ok else busy_stall_ms,
                   reason=None if ok else "loop delay p99 9 ms > 2 ms")
        )  # fmt: skip
    return out


def test_caching_fails_only_on_a_healthy_client() -> None:
    records = cached_run()
    assert check_caching(records).verdict is Outcome.failed  # no health given: as before
    healthy = check_caching(records, health=windows(1e9))
    assert healthy.verdict is Outcome.failed, healthy.summary
    assert healthy.numbers["pairs_judged"] == 22 and healthy.numbers["busy_requests"] == 0
    # every window busy: the same finding, inconclusive with the numbers
    busy = check_caching(records, health=windows(0.0))
    assert busy.verdict is Outcome.inconclusive
    assert busy.summary.startswith("inconclusive — the client was busy: repeated prompts")
    assert busy.numbers["busy_windows"] == 20 and busy.numbers["judged_requests"] == 0
    assert busy.numbers["ttft_improvement"] > 0.9
    # ... unless stalls that short cannot explain it: 1 ms repeats against 120 ms controls,
    # every control charged twice a 5 ms stall, is still a cache
    robust = check_caching(records, health=windows(0.0, busy_stall_ms=5.0))
    assert robust.verdict is Outcome.failed, robust.summary
    assert robust.numbers["controls_hastened_by_client_stalls"] is True
    assert "twice the client's worst stall" in robust.summary
    # a run that recorded no health data, or one invalid for client lag, never FAILs
    assert check_caching(records, health=[]).verdict is Outcome.inconclusive
    lag = "client fell behind its schedule: send lag p99 40 ms > 2 ms"
    lagged = check_caching(records, health=windows(1e9), lag_problem=lag)
    assert lagged.verdict is Outcome.inconclusive and "invalid for client lag" in lagged.summary


def test_a_finding_only_in_busy_windows_is_inconclusive() -> None:
    # the repeats are fast from 8.6 s on (14 of 22), and the client was busy from 10 s on
    records = cached_run(cache_from=43)
    assert check_caching(records).verdict is Outcome.failed  # counting every pair
    v = check_caching(records, health=windows(10_000.0))
    assert v.verdict is Outcome.inconclusive, v.summary
    assert "counting pairs in busy windows" in v.summary
    assert v.numbers["pairs_judged"] == 10  # the healthy pairs alone show nothing
    honest = check_caching(cached_run(cache_from=10**6), health=windows(10_000.0))
    assert honest.verdict is Outcome.passed, honest.summary


def test_prefix_cache_follows_the_same_rules() -> None:
    out = []
    for i in range(64):
        if i % 4 == 3:
            out.append(rec(i, 10.0 * i, 8.0, f"h{i}", f"prefix:hit:{i - 3}:24"))
        else:
            out.append(rec(i, 10.0 * i, 40.0 + i % 5, f"p{i}"))
    assert check_prefix_cache(out, health=windows(1e9)).verdict is Outcome.failed
    v = check_prefix_cache(out, health=windows(0.0))
    assert v.verdict is Outcome.inconclusive and "the server caches prompt prefixes" in v.summary


# ---- --seed N: a reproducible rehearsal ---------------------------------------------------


def cli_run(base_url: str, out: Path, *seed: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "inferaudit", "run", "--endpoint", base_url, "--model", MODEL,
           "--concurrency", "1", "--requests", "3", "--input-tokens", "16", "--max-lag-ms", "1000",
           "--output-tokens",
           "4", "--checks", "none", "--workers", "1", "--no-sign", "--no-self-test",
           "--out", str(out), *seed]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_fixed_seed_reproduces_a_run_and_the_default_is_fresh(tmp_path: Path) -> None:
    with start_twin(TwinOptions(ttft_ms=2, tpot_ms=1, model=MODEL)) as twin:
        for name, seed in (("a", ("--seed", "5")), ("b", ("--seed", "5")), ("c", ()), ("d", ())):
            done = cli_run(twin.base_url, tmp_path / name, *seed)
            assert done.returncode == 0, done.stdout + done.stderr

    def seen(name: str) -> tuple[str, str, list[str]]:
        run_dir = tmp_path / name
        commitment = orjson.loads((run_dir / "spec.json").read_bytes())["seed_commitment"]
        revealed = orjson.loads((run_dir / "seed.json").read_bytes())["seed"]
        prompts = [r.prompt_sha256 for r in read_records(run_dir / "records.jsonl")]
        return commitment, revealed, prompts

    a, b, c, d = (seen(n) for n in "abcd")
    assert a == b  # the same commitment, seed and prompts
    assert a[1] == fixed_seed(5).hex() and a[0] == seed_commitment(fixed_seed(5))
    assert c[1] != d[1] and c[0] != d[0] and c[2] != d[2]  # fresh each time
    assert c[1] != a[1]


# ---- a reference that cannot take two requests at once (issue 14) ------------------------


def stream(i: int, sent_ms: float, first_ms: float, end_ms: float, cut: bool) -> Record:
    ns = 1_000_000
    return Record(
        id=i, scheduled_ns=int(sent_ms * ns), sent_ns=int(sent_ms * ns),
        first_chunk_ns=int(first_ms * ns), first_content_ns=int(first_ms * ns),
        chunk_ns=[int(first_ms * ns)], chunk_chars=[3], done_ns=int(end_ms * ns), status=200,
        error_class="stream_truncated" if cut else None,
        error_message="Response payload is not completed" if cut else None,
        finish_reason=None if cut else "length", content_chunks=1, output_chars=3,
        prompt_sha256=f"{i:064x}", max_tokens=16,
    )  # fmt: skip


def test_streams_cut_by_the_next_arrival_are_named() -> None:
    # As llama-cpp-python 0.3.36 did with 4 requests at once (times in ms, measured): each
    # stream cut after its first token, when the next request's prefill began.
    seen = [stream(0, 0, 93, 93, True), stream(1, 0, 193, 193, True),
            stream(2, 1, 277, 277, True), stream(3, 1, 367, 709, False)]  # fmt: skip
    found = cut_by_arrivals(seen)
    assert found == CutStreams(3, 4)
    assert found.line() == (
        "3 of 4 streams were cut off when another request arrived, which was then served: it "
        "serves one request at a time and aborts the stream in flight when another arrives "
        "(llama-cpp-python's default: start it with --interrupt_requests False)"
    )
    # streams cut while the others were already streaming (a crash, shedding): not this
    crash = [stream(0, 0, 50, 120, True), stream(1, 0, 60, 130, True), stream(2, 0, 55, 400, False)]
    assert cut_by_arrivals(crash) is None
    assert cut_by_arrivals([stream(0, 0, 50, 400, False)]) is None  # nothing cut
    assert cut_by_arrivals([stream(0, 0, 50, 90, True)]) is None  # nobody waiting


def test_a_stream_ended_by_a_bare_done_is_cut_too() -> None:
    # llama-cpp-python 0.3.36 behind sse-starlette 3.7 (measured here): the aborted streams end
    # with ``data: [DONE]`` after one chunk and no finish_reason, so the client sees no error.
    def bare(r: Record) -> Record:
        return r.model_copy(update={"error_class": None, "error_message": None})

    seen = [bare(stream(0, 0, 93, 93, True)), bare(stream(1, 0, 193, 193, True)),
            bare(stream(2, 1, 277, 277, True)), stream(3, 1, 367, 709, False)]  # fmt: skip
    assert [is_cut(r) for r in seen] == [True, True, True, False]
    assert cut_by_arrivals(seen) == CutStreams(3, 4)
    # a stream that ended saying why is not cut, whatever its length; an HTTP error is not a stream
    assert not is_cut(stream(0, 0, 50, 60, False))
    assert not is_cut(bare(stream(0, 0, 50, 60, True)).model_copy(update={"status": 500}))


def test_conformance_says_what_the_server_did(tmp_path: Path) -> None:
    from inferaudit.judge.conformance import check_conformance

    probes = [stream(100 + k, 500.0 * k, 500.0 * k + 50, 500.0 * k + 200, False) for k in range(3)]
    update = {"phase": "probe", "tag": "probe:length", "usage_completion_tokens": 1,
              "max_tokens": 1}  # fmt: skip
    probes = [r.model_copy(update=update) for r in probes]
    load = [stream(0, 2000, 2093, 2093, True), stream(1, 2000, 2193, 2500, False)]
    v = check_conformance(probes + load, spec("http://127.0.0.1:1/v1", 2, 2))
    assert v.verdict is Outcome.failed
    item = v.numbers["items"]["concurrent_requests"]
    assert item.startswith("ignored: in phase measure, 1 of 2 streams were cut off")
    assert "--interrupt_requests False" in v.summary
    fine = check_conformance(probes, spec("http://127.0.0.1:1/v1", 2, 2))
    assert fine.numbers["items"]["concurrent_requests"] == "honoured"


def _number(value: object) -> float:
    assert isinstance(value, int | float), value
    return float(value)
