"""Client capacity: how fast can inferaudit's load runner drive a server that costs nothing?

Starts nginx (Debian package) on 127.0.0.1 with a temporary config whose every POST to
``/v1/completions`` and ``/v1/chat/completions`` answers a fixed SSE body of 128 content events
(+ finish, usage and ``[DONE]``) via ``return 200 '...'``, and ``/v1/models``. Then drives it with
``run_load`` at increasing open-loop Poisson rates and prints, per rate: achieved request and
content-chunk rates, client lag (sent - scheduled) p50/p99, errors, and client CPU seconds per
1,000 requests (workers' and this process's ``getrusage``; start-up separately). The answer is
the highest rate sustained with lag p99 < 5 ms, no errors and >= 95 % of the requested rate in
one of ``--tries`` tries (default 2; every try is printed): on a shared machine another tenant's
burst breaks a 5 ms bound now and then, and one try that holds the rate shows the client can.

Then, in the same invocation and against the same nginx, path and POST body, ``wrk`` (Debian
package; C, reads whole responses, no SSE parsing) at a few connection counts, closed loop as
fast as it can: its best responses/s is the ceiling this machine's loopback and nginx allow, and
inferaudit's highest sustained rate is printed as a share of it (wrk also gets ``--tries`` tries
per connection count, its best counted).

Run by hand:  .venv/bin/python bench/client_capacity.py [--workers N] [--seconds S]
              [--rates 500,1000,...] [--api completions|chat] [--wrk-connections 16,64,256]
              [--wrk-threads N] [--tries N]
Figures depend on what else the machine runs at the time; say so when quoting them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inferaudit.measure.load.client import Target, build_body
from inferaudit.measure.load.runner import run_load
from inferaudit.measure.protocol import Api, Endpoint, Length, Load, RunSpec, Workload
from inferaudit.measure.records import read_records
from inferaudit.measure.workload import RequestPlan

CHUNKS = 128
MODEL = "bench-model"


def sse_events(chat: bool) -> tuple[str, str, str]:
    """(content event, finish event, usage event) as SSE text."""
    base = {"id": "cmpl-bench", "created": 1, "model": MODEL}
    if chat:
        kind = {"object": "chat.completion.chunk"}
        content = {"index": 0, "delta": {"content": " tok"}, "finish_reason": None}
        last = {"index": 0, "delta": {}, "finish_reason": "length"}
    else:
        kind = {"object": "text_completion"}
        content = {"index": 0, "text": " tok", "finish_reason": None}
        last = {"index": 0, "text": "", "finish_reason": "length"}
    usage = {"prompt_tokens": 64, "completion_tokens": CHUNKS, "total_tokens": 64 + CHUNKS}
    events = (
        {**base, **kind, "choices": [content]},
        {**base, **kind, "choices": [last]},
        {**base, **kind, "choices": [], "usage": usage},
    )
    ev = tuple(f"data: {json.dumps(e, separators=(',', ':'))}\n\n" for e in events)
    return ev[0], ev[1], ev[2]


def nginx_quote(text: str) -> str:
    assert "$" not in text and "'" not in text, "the text must not need nginx variables"
    return "'" + text.replace("\\", "\\\\").replace("\n", "\\n") + "'"


def sse_location(path: str, chat: bool) -> str:
    """A location answering the 128-chunk body. A config token is limited to 4 KiB, so the
    body is ``return 200 '$c$c...$f$u$d'`` over variables holding one event each."""
    content, finish, usage = sse_events(chat)
    body = "$c" * CHUNKS + "$f$u$d"
    return f"""
        location = {path} {{
            default_type text/event-stream;
            set $c {nginx_quote(content)};
            set $f {nginx_quote(finish)};
            set $u {nginx_quote(usage)};
            set $d {nginx_quote("data: [DONE]" + chr(10) * 2)};
            return 200 '{body}';
        }}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nginx(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    models = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]})
    conf = f"""
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
daemon off;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    server {{
        listen 127.0.0.1:{port};
        {sse_location("/v1/completions", chat=False)}
        {sse_location("/v1/chat/completions", chat=True)}
        location = /v1/models {{
            default_type application/json;
            return 200 {nginx_quote(models)};
        }}
    }}
}}
"""
    (tmp / "nginx.conf").write_text(conf)
    proc = subprocess.Popen([nginx, "-c", str(tmp / "nginx.conf"), "-p", str(tmp)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        if proc.poll() is not None:
            raise SystemExit(f"nginx exited: {(tmp / 'error.log').read_text()}")
        time.sleep(0.05)
    raise SystemExit("nginx did not start")


def wrk_script(base_url: str, api: Api, tmp: Path) -> Path:
    """A wrk Lua script that POSTs what inferaudit sends for the benchmark's workload (the same
    headers and a body of the same shape and length)."""
    target = Target.of(Endpoint(base_url=base_url, model=MODEL, api=api), None)
    plan = RequestPlan(
        id=0, phase="measure", prompt=" tok" * 64, input_tokens=64, max_tokens=CHUNKS
    )
    body = build_body(plan, target).decode()
    assert "]==]" not in body
    lines = ['wrk.method = "POST"', f"wrk.body = [==[{body}]==]"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in target.headers.items()]
    path = tmp / f"wrk-{api}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_wrk(url: str, script: Path, connections: int, threads: int, seconds: float) -> WrkPoint:
    """One wrk run: its responses/s, and its non-2xx and socket errors (0 expected)."""
    cmd = [
        shutil.which("wrk") or "wrk",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = re.search(r"^Requests/sec:\s+([0-9.]+)", out, re.M)
    if rps is None:
        raise SystemExit(f"wrk printed no Requests/sec:\n{out}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return WrkPoint(connections, float(rps.group(1)), errors + (int(bad.group(1)) if bad else 0))


@dataclass(frozen=True)
class WrkPoint:
    connections: int
    rps: float
    errors: int


def cpu(who: int) -> float:
    u = resource.getrusage(who)
    return u.ru_utime + u.ru_stime


def one_point(base_url: str, api: Api, rate: float, seconds: float, workers: int, tmp: Path):
    spec = RunSpec(
        endpoint=Endpoint(base_url=base_url, model=MODEL, api=api),
        load=Load(rate=rate, requests=max(int(rate * seconds), 1), timeout_s=30),
        workload=Workload(input_tokens=Length(lo=64, hi=64), output_tokens=Length(lo=128, hi=128)),
        workers=workers,
        seed=1,
    )
    path = tmp / f"records-{api}-{rate:g}.jsonl"
    done = [0]

    def on_record(record: dict) -> None:  # what the CLI's progress does, minimally
        done[0] += 1

    self0, child0 = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
    result = run_load(spec, path, on_record=on_record)
    self_s = cpu(resource.RUSAGE_SELF) - self0
    child_s = cpu(resource.RUSAGE_CHILDREN) - child0
    records = read_records(path)
    path.unlink()
    lags = np.array([r.lag_ns for r in records if r.lag_ns is not None]) / 1e6
    errors = sum(not r.ok for r in records)
    chunks = sum(r.content_chunks for r in records)
    start = min(r.scheduled_ns for r in records)
    end = max(r.done_ns or 0 for r in records)
    window = (end - start) / 1e9
    run_cpu = sum(w.cpu_run_s for w in result.workers) + self_s
    return {
        "rate": rate,
        "requests": len(records),
        "errors": errors,
        "achieved_rps": len(records) / window,
        "chunks_per_s": chunks / window,
        "lag_p50_ms": float(np.percentile(lags, 50)),
        "lag_p99_ms": float(np.percentile(lags, 99)),
        "cpu_s_per_1k": 1000 * run_cpu / len(records),
        "parent_cpu_s_per_1k": 1000 * self_s / len(records),
        "cpu_s_per_1k_with_startup": 1000 * (child_s + self_s) / len(records),
    }


def held(p: dict, rate: float) -> bool:
    """The point sustained ``rate``: lag p99 < 5 ms, no errors, >= 95 % of it achieved."""
    return p["lag_p99_ms"] < 5 and p["errors"] == 0 and p["achieved_rps"] >= 0.95 * rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rates", default="1000,2000,3000,4000,5000,6000,6500,7000,7500,8000")
    ap.add_argument("--api", choices=("completions", "chat"), default="completions")
    ap.add_argument("--wrk-connections", default="16,64,256")
    ap.add_argument("--wrk-threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--tries", type=int, default=2, help="tries per rate (and per wrk point)")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install -y wrk (scripts/setup --test does)")
    rates = [float(r) for r in args.rates.split(",")]
    with tempfile.TemporaryDirectory(prefix="inferaudit-bench-") as d:
        tmp = Path(d)
        port = free_port()
        nginx = start_nginx(tmp, port)
        try:
            base = f"http://127.0.0.1:{port}/v1"
            print(
                f"nginx on {base}; {CHUNKS}-chunk SSE body; workers={args.workers}; "
                f"{args.seconds:g} s per point; host cpus={os.cpu_count()}; "
                f"loadavg={os.getloadavg()[0]:.2f}"
            )
            print(
                f"{'rate':>7} {'achieved':>9} {'chunks/s':>9} {'lag p50':>8} {'lag p99':>8} "
                f"{'errors':>6} {'cpu s/1k':>8} {'(parent)':>8} {'(+start)':>8}"
            )
            best = None
            for rate in rates:
                for t in range(args.tries):
                    p = one_point(base, Api(args.api), rate, args.seconds, args.workers, tmp)
                    ok = held(p, rate)
                    print(
                        f"{rate:7g} {p['achieved_rps']:9.0f} {p['chunks_per_s']:9.0f} "
                        f"{p['lag_p50_ms']:8.2f} {p['lag_p99_ms']:8.2f} {p['errors']:6d} "
                        f"{p['cpu_s_per_1k']:8.3f} {p['parent_cpu_s_per_1k']:8.3f} "
                        f"{p['cpu_s_per_1k_with_startup']:8.3f}"
                        f"{'' if ok else '  (not sustained)'}",
                        flush=True,
                    )
                    if ok:
                        best = {**p, "try": f"try {t + 1} of {args.tries}"}
                        break  # one try that holds the rate shows the client can
            if best is None:
                print("no rate sustained with client lag p99 < 5 ms")
            else:
                print(
                    f"highest sustained ({best['try']}): {best['achieved_rps']:.0f} req/s, "
                    f"{best['chunks_per_s']:.0f} content chunks/s, lag p99 "
                    f"{best['lag_p99_ms']:.2f} ms, {best['cpu_s_per_1k']:.3f} CPU s per 1,000 "
                    f"requests (in run; {best['cpu_s_per_1k_with_startup']:.3f} with start-up)"
                )
            script = wrk_script(base, Api(args.api), tmp)
            url = f"{base}/{'chat/completions' if args.api == 'chat' else 'completions'}"
            print(f"wrk, {args.wrk_threads} threads, {args.seconds:g} s per point, same POST:")
            points = []
            for c in (int(c) for c in args.wrk_connections.split(",")):
                for _ in range(args.tries):
                    w = run_wrk(url, script, c, args.wrk_threads, args.seconds)
                    points.append(w)
                    print(
                        f"  {w.connections:5d} connections: {w.rps:9.0f} responses/s, "
                        f"{w.errors} errors"
                    )
            top = max(points, key=lambda w: w.rps)
            mine = 0.0 if best is None else best["achieved_rps"]
            print(
                f"wrk best {top.rps:.0f} responses/s ({top.connections} connections); inferaudit "
                f"sustained {mine:.0f} req/s = {100 * mine / top.rps:.1f}% of it "
                f"(loadavg {os.getloadavg()[0]:.2f})"
            )
        finally:
            nginx.terminate()
            nginx.wait(10)


if __name__ == "__main__":
    main()
