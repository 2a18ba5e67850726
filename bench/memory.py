"""Memory: is the client's memory bounded by what is in flight, not by the run's length?

Two measurements, each printing peak RSS figures next to the request count (run both at two
lengths: the figures must stay flat, not grow with the count):

``client``  starts nginx (as ``bench/client_capacity.py`` does: every POST answers a fixed SSE
            body of 128 content events) and, in a child process, runs ``run_load`` at an
            open-loop ``--rate`` for ``--seconds`` and then ``metrics.summarize`` over the
            records file, as ``inferaudit run`` does. This process samples the child's process
            tree (parent + load workers) from /proc every 0.5 s and prints, per phase, the peak
            of the summed VmRSS, and the sum of every process's own VmHWM (an upper bound: the
            processes need not peak together). Target for 30 min at 1,000 req/s
            (``--rate 1000 --seconds 1800``): under 500 MB.
``verify``  writes a synthetic run directory of ``--records`` valid records (``--chunks``
            content events each, text kept) and its spec, then in fresh child processes: the
            summary (``summarize(records.jsonl, spec)``, written as ``summary.json``) and
            ``verify``'s recomputation of it (``seal.recompute.recompute_summary``), the
            verdicts of every check that needs no extra file, judged as ``inferaudit run``
            does (``measure.record_store.open_records``), and ``verify``'s recheck of them
            (``seal.recompute.recheck_verdicts``), each printing its VmHWM. Target at 10^6
            records: under 1 GB.

Run by hand:  .venv/bin/python bench/memory.py client [--rate 200] [--seconds 120] [--workers 2]
              .venv/bin/python bench/memory.py verify [--records 1000000] [--chunks 16]
Figures depend on what else the machine runs at the time; say so when quoting them.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from inferaudit.measure.protocol import Api, Endpoint, Length, Load, RunSpec, Workload

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from client_capacity import MODEL, free_port, start_nginx  # noqa: E402


def _status_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in kB; (0, 0) when it has gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/*/stat)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children[ppid].append(int(entry))
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(children.get(p, []))
    return out


def _self_hwm_mb() -> float:
    return _status_kb(os.getpid())[1] / 1024


def _spec(base_url: str, rate: float, seconds: float, workers: int, chunks: int) -> RunSpec:
    return RunSpec(
        endpoint=Endpoint(base_url=base_url, model=MODEL, api=Api.completions),
        load=Load(rate=rate, duration_s=seconds, timeout_s=30),
        workload=Workload(
            input_tokens=Length(lo=64, hi=64), output_tokens=Length(lo=chunks, hi=chunks)
        ),
        workers=workers,
        seed=1,
    )


# -- client ---------------------------------------------------------------------------------


def _client_child(base_url: str, rate: float, seconds: float, workers: int, tmp: Path) -> None:
    from inferaudit.measure.load.runner import run_load
    from inferaudit.measure.metrics import summarize

    spec = _spec(base_url, rate, seconds, workers, 128)
    phase = tmp / "phase"
    phase.write_text("load")
    path = tmp / "records.jsonl"
    result = run_load(spec, path, health_path=tmp / "health.jsonl")
    phase.write_text("summary")
    summary = summarize(path, spec)
    phase.write_text("done")
    print(json.dumps({"finished": result.finished, "measured": summary.requests}), flush=True)


def client(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="inferaudit-memory-") as d:
        tmp = Path(d)
        port = free_port()
        nginx = start_nginx(tmp, port)
        try:
            cmd = [sys.executable, __file__, "_client", f"http://127.0.0.1:{port}/v1",
                   str(args.rate), str(args.seconds), str(args.workers), str(tmp)]  # fmt: skip
            child = subprocess.Popen(cmd, stdout=subprocess.PIPE)
            peak_sum: dict[str, float] = collections.defaultdict(float)
            hwm: dict[int, int] = {}
            first_sum: dict[str, float] = {}
            while child.poll() is None:
                phase = (tmp / "phase").read_text() if (tmp / "phase").exists() else "start"
                total = 0
                for pid in _tree(child.pid):
                    rss, high = _status_kb(pid)
                    total += rss
                    hwm[pid] = max(hwm.get(pid, 0), high)
                mb = total / 1024
                peak_sum[phase] = max(peak_sum[phase], mb)
                first_sum.setdefault(phase, mb)
                time.sleep(0.5)
            out = child.stdout.read().decode() if child.stdout else ""
        finally:
            nginx.terminate()
            nginx.wait(10)
    if child.returncode != 0:
        raise SystemExit(f"the run failed (exit {child.returncode})")
    counts = json.loads(out.strip().splitlines()[-1])
    print(
        f"client: {args.rate:g} req/s x {args.seconds:g} s, {args.workers} workers, 128-event "
        f"responses: {counts['finished']} records ({counts['measured']} measured)"
    )
    for phase in ("load", "summary"):
        if phase in peak_sum:
            print(
                f"  {phase:8} RSS of all processes: first sample {first_sum[phase]:.0f} MB, "
                f"peak {peak_sum[phase]:.0f} MB"
            )
    print(
        f"  peak RSS (sampled sum, all processes): {max(peak_sum.values()):.0f} MB; sum of "
        f"each process's VmHWM: {sum(hwm.values()) / 1024:.0f} MB (bound: 500 MB)"
    )


# -- verify ---------------------------------------------------------------------------------


def write_run(run_dir: Path, n: int, chunks: int, rate: float = 1000.0) -> RunSpec:
    """A synthetic run directory: ``spec.json`` and ``n`` valid measured records."""
    from inferaudit.judge.suite import ALL_CHECKS
    from inferaudit.measure.protocol import canonical_bytes

    run_dir.mkdir(parents=True, exist_ok=True)
    spec = _spec("http://127.0.0.1:9/v1", rate, n / rate, 4, chunks).model_copy(
        update={"checks": tuple(c for c in ALL_CHECKS if c not in ("identity", "server-counters"))}
    )
    (run_dir / "spec.json").write_bytes(canonical_bytes(spec))
    (run_dir / "health.jsonl").write_bytes(b"")  # no client windows: the timing rules abstain
    rng = random.Random(1)
    with open(run_dir / "records.jsonl", "wb") as fh:
        for i in range(n):
            scheduled = i * 1_000_000_000 // int(rate)
            sent = scheduled + rng.randint(20_000, 400_000)
            first = sent + rng.randint(20_000_000, 60_000_000)
            times = [first]
            for _ in range(chunks - 1):
                times.append(times[-1] + rng.randint(5_000_000, 15_000_000))
            chars = [rng.randint(2, 8) for _ in range(chunks)]
            text = "".join("x" * c for c in chars)
            failed = i % 500 == 7
            rec = {
                "id": i, "worker": i % 4, "phase": "measure", "scheduled_ns": scheduled,
                "sent_ns": sent, "first_chunk_ns": first, "first_content_ns": first,
                "chunk_ns": times, "chunk_chars": chars, "done_ns": times[-1] + 100_000,
                "status": 200, "error_class": "stream_truncated" if failed else None,
                "finish_reason": None if failed else "length", "model": MODEL,
                "usage_prompt_tokens": 64, "usage_completion_tokens": chunks,
                "content_chunks": chunks, "empty_chunks_before_content": 1,
                "output_chars": len(text),
                "prompt_sha256": hashlib.sha256(str(i).encode()).hexdigest(),
                "output_sha256": hashlib.sha256(text.encode()).hexdigest(),
                "input_tokens": 64, "max_tokens": chunks, "output_text": text,
            }  # fmt: skip
            fh.write(orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE))
    return spec


def _summary_child(run_dir: Path) -> None:
    from inferaudit.measure.metrics import summarize
    from inferaudit.seal.evidence import canonical

    spec = RunSpec.model_validate_json((run_dir / "spec.json").read_bytes())
    t0 = time.monotonic()
    summary = summarize(run_dir / "records.jsonl", spec)
    (run_dir / "summary.json").write_bytes(canonical(summary.to_json(), "summary"))
    out = {"s": time.monotonic() - t0, "hwm_mb": _self_hwm_mb(), "requests": summary.requests}
    print(json.dumps(out), flush=True)


def _recompute_child(run_dir: Path) -> None:
    from inferaudit.seal.recompute import recompute_summary

    signed = orjson.loads((run_dir / "summary.json").read_bytes())
    t0 = time.monotonic()
    ok, detail = recompute_summary(run_dir, signed, None)
    out = {"s": time.monotonic() - t0, "hwm_mb": _self_hwm_mb(), "ok": ok, "detail": detail}
    print(json.dumps(out), flush=True)


def _summary_reasons(run_dir: Path) -> list[str]:
    """The invalid reasons of the summary ``_summary`` wrote (what ``run`` and ``verify`` pass
    the verdicts)."""
    reasons: list[str] = orjson.loads((run_dir / "summary.json").read_bytes())["invalid_reasons"]
    return reasons


def _judge_child(run_dir: Path) -> None:
    """The verdicts as ``inferaudit run`` judges them (``open_records``: a store when large;
    told the reasons of the summary ``_summary`` wrote)."""
    from inferaudit.judge.suite import recheck
    from inferaudit.measure.record_store import RecordStore, open_records

    spec = RunSpec.model_validate_json((run_dir / "spec.json").read_bytes())
    reasons = _summary_reasons(run_dir)
    t0 = time.monotonic()
    records = open_records(run_dir / "records.jsonl")
    verdicts = recheck(records, spec, names=spec.checks, health=[], summary_reasons=reasons)
    (run_dir / "verdicts.json").write_bytes(orjson.dumps([v.to_json() for v in verdicts]))
    out = {
        "s": time.monotonic() - t0,
        "hwm_mb": _self_hwm_mb(),
        "store": isinstance(records, RecordStore),
        "verdicts": [f"{v.check} {v.verdict.value}" for v in verdicts],
    }
    print(json.dumps(out), flush=True)


def _recheck_child(run_dir: Path) -> None:
    """``verify``'s recheck of the verdicts ``_judge`` wrote, told the reasons of the summary
    ``_recompute`` found equal, as ``verify`` does."""
    from inferaudit.seal.recompute import recheck_verdicts

    signed = orjson.loads((run_dir / "verdicts.json").read_bytes())
    reasons = _summary_reasons(run_dir)
    t0 = time.monotonic()
    ok, detail = recheck_verdicts(run_dir, signed, None, None, v2=True, summary_reasons=reasons)
    out = {"s": time.monotonic() - t0, "hwm_mb": _self_hwm_mb(), "ok": ok, "detail": detail}
    print(json.dumps(out), flush=True)


CHILDREN = {
    "_summary": _summary_child,
    "_recompute": _recompute_child,
    "_judge": _judge_child,
    "_recheck": _recheck_child,
}


def _child(kind: str, run_dir: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, __file__, kind, str(run_dir)], capture_output=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{kind} failed: {done.stderr.decode()[-2000:]}")
    result: dict[str, object] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


def verify(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="inferaudit-memory-", dir=args.dir) as d:
        run_dir = Path(d) / "run"
        t0 = time.monotonic()
        write_run(run_dir, args.records, args.chunks)
        size = (run_dir / "records.jsonl").stat().st_size
        print(
            f"verify: {args.records} records x {args.chunks} content events, records.jsonl "
            f"{size / 1e6:.0f} MB (written in {time.monotonic() - t0:.0f} s)"
        )
        summary = _child("_summary", run_dir)
        print(
            f"  summary:   {summary['requests']} measured requests, peak RSS (VmHWM) "
            f"{summary['hwm_mb']:.0f} MB, {summary['s']:.0f} s"
        )
        again = _child("_recompute", run_dir)
        print(
            f"  recompute: {'equal' if again['ok'] else 'DIFFERS'} ({again['detail']}), peak RSS "
            f"(VmHWM) {again['hwm_mb']:.0f} MB, {again['s']:.0f} s (bound: 1 GB)"
        )
        judged = _child("_judge", run_dir)
        print(
            f"  verdicts:  {', '.join(judged['verdicts'])} "  # type: ignore[arg-type]
            f"({'record store' if judged['store'] else 'records held whole'}), peak RSS "
            f"(VmHWM) {judged['hwm_mb']:.0f} MB, {judged['s']:.0f} s"
        )
        rechecked = _child("_recheck", run_dir)
        print(
            f"  recheck:   {'equal' if rechecked['ok'] else 'DIFFERS'} ({rechecked['detail']}), "
            f"peak RSS (VmHWM) {rechecked['hwm_mb']:.0f} MB, {rechecked['s']:.0f} s "
            "(bound: 1 GB)"
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_client":
        url, rate, seconds, workers, tmp = sys.argv[2:7]
        _client_child(url, float(rate), float(seconds), int(workers), Path(tmp))
        return
    if len(sys.argv) > 1 and sys.argv[1] in CHILDREN:
        CHILDREN[sys.argv[1]](Path(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("client", help="peak RSS of a load run and its summary")
    c.add_argument("--rate", type=float, default=200.0)
    c.add_argument("--seconds", type=float, default=120.0)
    c.add_argument("--workers", type=int, default=2)
    v = sub.add_parser("verify", help="peak RSS of summary and verify over a synthetic run")
    v.add_argument("--records", type=int, default=1_000_000)
    v.add_argument("--chunks", type=int, default=16)
    v.add_argument("--dir", default=None, help="where to write the run (default: $TMPDIR)")
    args = ap.parse_args()
    client(args) if args.what == "client" else verify(args)


if __name__ == "__main__":
    main()
