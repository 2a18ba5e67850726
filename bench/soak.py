"""Soak: a long run of mixed faults against a local fault server; nothing may be lost.

Starts an OpenAI-compatible fault server (aiohttp, in a child process) on 127.0.0.1 whose answers
are, by a fixed seeded draw per request: a normal stream of ``--tokens`` events, a stream that
stalls after 3 events (held open until the client gives up), a connection reset mid-stream, HTTP
429, HTTP 503, or malformed SSE. Then runs ``inferaudit run`` (the CLI, as a user would) at an
open-loop Poisson ``--rate`` for ``--minutes``, with a short stall timeout, and prints:

* requests the schedule planned, requests the server received, records written, and records
  lost (planned - recorded: target 0) with the count per status / error class;
* the client's RSS (the CLI process and its workers, summed from /proc) at start, its peak
  and at the end of the load, and the growth, against a stated bound;
* the exit status of ``inferaudit run`` (1 expected: the errors check fails the endpoint).

Run by hand:  .venv/bin/python bench/soak.py [--minutes 30] [--rate 200] [--stall-s 2]
Figures depend on what else the machine runs at the time; say so when quoting them.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

from aiohttp import web

MODEL = "soak-model"
KINDS = ("ok", "stall", "reset", "http_429", "http_503", "malformed")
WEIGHTS = (0.70, 0.06, 0.06, 0.06, 0.06, 0.06)
RSS_GROWTH_BOUND_MB = 100.0  # stated bound: the load phase may grow the client by this much


def _event(text: str, finish: str | None = None) -> bytes:
    choice = {"index": 0, "text": text, "finish_reason": finish}
    body = {"id": "cmpl-soak", "object": "text_completion", "model": MODEL, "choices": [choice]}
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def _serve(port: int, tokens: int, counts_path: str, ready: object) -> None:
    rng = random.Random(7)
    received: collections.Counter[str] = collections.Counter()

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def completions(request: web.Request) -> web.StreamResponse:
        await request.read()
        kind = rng.choices(KINDS, WEIGHTS)[0]
        received[kind] += 1
        if kind == "http_429":
            return web.json_response({"error": {"message": "slow down"}}, status=429)
        if kind == "http_503":
            return web.json_response({"error": {"message": "overloaded"}}, status=503)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if kind == "malformed":
            await resp.write(b"data: {not json\n\n")
            return resp
        for i in range(tokens):
            if kind == "stall" and i == 3:
                await asyncio.sleep(3600)
            if kind == "reset" and i == tokens // 2:
                assert request.transport is not None
                request.transport.abort()
                return resp
            await resp.write(_event(" tok"))
            await asyncio.sleep(0.002)
        await resp.write(_event("", "length"))
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def dump() -> None:
        while True:
            await asyncio.sleep(1.0)
            Path(counts_path).write_text(json.dumps(dict(received)))

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/v1/models", models)
        app.router.add_post("/v1/completions", completions)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
        asyncio.get_running_loop().create_task(dump())
        ready.set()  # type: ignore[attr-defined]
        await asyncio.Event().wait()

    asyncio.run(main())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree_rss_mb(pid: int) -> float:
    """RSS of ``pid`` and all its descendants, from /proc (MB)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        children[ppid].append(int(entry))
    total_kb = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        stack.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--stall-s", type=float, default=2.0, help="client stall timeout")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    port = _free_port()
    tmp = Path(tempfile.mkdtemp(prefix="inferaudit-soak-"))
    counts_path = tmp / "server-counts.json"
    ctx = get_context("spawn")
    ready = ctx.Event()
    server = ctx.Process(target=_serve, args=(port, args.tokens, str(counts_path), ready))
    server.start()
    if not ready.wait(30):
        sys.exit("fault server did not start")
    duration = args.minutes * 60
    out = tmp / "run"
    cmd = [
        sys.executable, "-m", "inferaudit", "run",
        "--endpoint", f"http://127.0.0.1:{port}/v1", "--model", MODEL,
        "--rate", str(args.rate), "--duration", str(duration),
        "--input-tokens", "16", "--output-tokens", str(args.tokens), "--no-enforce-length",
        "--stall-timeout", str(args.stall_s), "--checks", "errors",
        "--no-self-test", "--no-sign", "--workers", str(args.workers), "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "INFERAUDIT_HOME": str(tmp / "home")}
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    samples: list[tuple[float, float]] = []
    while proc.poll() is None:
        samples.append((time.monotonic() - t0, _tree_rss_mb(proc.pid)))
        time.sleep(1.0)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    elapsed = time.monotonic() - t0
    time.sleep(1.5)
    server.terminate()
    server.join(10)
    os.kill(server.pid, signal.SIGKILL) if server.is_alive() else None

    statuses: collections.Counter[str] = collections.Counter()
    recorded = 0
    planned = None
    with open(out / "records.jsonl", "rb") as fh:
        for line in fh:
            rec = json.loads(line)
            recorded += 1
            statuses[rec.get("error_class") or "ok"] += 1
    meta = json.loads((out / "meta.json").read_text())
    planned = meta.get("load", {}).get("planned")
    received = json.loads(counts_path.read_text()) if counts_path.exists() else {}
    load_samples = [rss for t, rss in samples if 10 < t < duration]
    start_rss = load_samples[0] if load_samples else float("nan")
    end_rss = load_samples[-1] if load_samples else float("nan")
    print(f"soak: {args.minutes:g} min at {args.rate:g} req/s, stall timeout {args.stall_s:g} s")
    print(f"  planned {planned}, server received {sum(received.values())} {received}")
    print(f"  recorded {recorded}, lost {None if planned is None else planned - recorded}")
    print(f"  records by class: {dict(statuses)}")
    print(
        f"  client RSS (all processes): start {start_rss:.0f} MB, end of load {end_rss:.0f} MB, "
        f"growth {end_rss - start_rss:+.0f} MB (bound {RSS_GROWTH_BOUND_MB:g} MB), "
        f"peak {max((r for _, r in samples), default=float('nan')):.0f} MB"
    )
    print(f"  exit status {proc.returncode} after {elapsed:.0f} s; stderr: {stderr.strip()[-300:]}")
    print(f"  run directory: {out}")


if __name__ == "__main__":
    main()
