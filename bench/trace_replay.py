"""Trace replay: does the load runner keep a recorded trace's absolute schedule?

Builds a Mooncake-like trace (``measure.traces.synthetic_trace``: Poisson instants rounded to
whole ms, as Mooncake records them; 3 families of shared prefix blocks), writes it as Mooncake
JSONL and reads it back (``load_trace``), starts the nginx SSE server of
``bench/client_capacity.py`` (a fixed 128-chunk body, so the server costs nothing) and replays
the trace through the real runner (``run_load``) with a RunSpec whose ``workload.trace`` binds
the written file and ``load.arrivals`` is ``trace``: the runner takes the trace's own instants
(``schedule.schedule_offsets_ns``) and its workers plan each entry (``measure.planner``: shared
blocks + a unique salted tail, ``max_tokens`` = the entry's output length).

Printed: client lag (actual send - scheduled send) p50/p99 in ms and the share of requests
whose lag exceeds 1 ms; requests/s offered (``mean_rate``: (n - 1) / trace span) and achieved
((n - 1) / span of the actual sends); errors. No assertion: the figures depend on what else the
machine runs; say so when quoting them.

Run by hand:  .venv/bin/python bench/trace_replay.py [--requests N] [--rate R] [--speedup S]
              [--workers W] [--seed K] [--api completions|chat]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from client_capacity import MODEL, free_port, start_nginx
from inferaudit.measure.load.runner import run_load
from inferaudit.measure.protocol import (
    Api,
    Arrivals,
    Endpoint,
    Load,
    RunSpec,
    Trace,
    Workload,
)
from inferaudit.measure.records import read_records
from inferaudit.measure.traces import (
    TraceEntry,
    load_trace,
    mean_rate,
    synthetic_trace,
    trace_offsets_ns,
    write_mooncake,
)

BLOCK_TOKENS = 512


def replay(base_url: str, args: argparse.Namespace, tmp: Path) -> None:
    entries: tuple[TraceEntry, ...] = tuple(synthetic_trace(args.requests, args.rate, args.seed))
    path = write_mooncake(entries, tmp / "trace.jsonl")
    loaded = load_trace(path)
    assert loaded.entries == entries, "the written trace reads back as built"
    offered = mean_rate(loaded.entries, args.speedup)
    spec = RunSpec(
        endpoint=Endpoint(base_url=base_url, model=MODEL, api=Api(args.api)),
        workload=Workload(
            trace=Trace(
                path=str(path),
                sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                format="mooncake",
                speedup=args.speedup,
                block_tokens=BLOCK_TOKENS,
            )
        ),
        load=Load(rate=offered, arrivals=Arrivals.trace, requests=len(entries), timeout_s=30),
        workers=args.workers,
        seed=args.seed,
    )
    offsets = trace_offsets_ns(loaded.entries, args.speedup)
    words = sum(e.input_length for e in loaded.entries)
    print(
        f"trace: {len(entries)} requests over {offsets[-1] / 1e9:.2f} s (speedup "
        f"{args.speedup:g}), {words / len(entries):.0f} prompt words/request, "
        f"{len({h for e in entries for h in e.hash_ids})} distinct blocks of "
        f"{sum(len(e.hash_ids) for e in entries)}"
    )
    records_path = tmp / "records.jsonl"
    result = run_load(spec, records_path)
    records = read_records(records_path)
    sent = [r for r in records if r.sent_ns is not None]
    lags_ms = np.array([r.lag_ns for r in sent if r.lag_ns is not None]) / 1e6
    sends = np.sort(np.array([r.sent_ns for r in sent if r.sent_ns is not None]))
    achieved = (len(sends) - 1) / ((sends[-1] - sends[0]) / 1e9) if len(sends) > 1 else 0.0
    errors = sum(not r.ok for r in records)
    print(
        f"records: {len(records)} ({len(sent)} sent, {errors} errors); run {result.elapsed_s:.2f} s"
    )
    print(
        f"lag p50 {np.percentile(lags_ms, 50):.3f} ms, p99 {np.percentile(lags_ms, 99):.3f} ms, "
        f"max {lags_ms.max():.3f} ms; lag > 1 ms: {100 * np.mean(lags_ms > 1.0):.2f} % of requests"
    )
    print(f"requests/s offered {offered:.1f}, achieved {achieved:.1f} (sends' span)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=500.0, help="the trace's mean rate, req/s")
    ap.add_argument("--speedup", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--api", choices=("completions", "chat"), default="completions")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="inferaudit-trace-") as d:
        tmp = Path(d)
        port = free_port()
        nginx = start_nginx(tmp, port)
        try:
            print(
                f"nginx on 127.0.0.1:{port}; workers={args.workers}; host cpus={os.cpu_count()}; "
                f"loadavg={os.getloadavg()[0]:.2f}"
            )
            replay(f"http://127.0.0.1:{port}/v1", args, tmp)
        finally:
            nginx.terminate()
            nginx.wait(10)


if __name__ == "__main__":
    main()
