"""Ray capacity: the aggregate request rate ``--backend ray`` sustains with 1 and 2 Ray nodes,
next to the local runner's, against the fast nginx server of ``client_capacity.py``.

Starts nginx (``client_capacity.start_nginx``: a fixed 128-chunk SSE answer), then a local Ray
cluster (``ray.cluster_utils.Cluster``: each node its own raylet and object store, one CPU
each, the second joined to the head as ``ray start --address`` joins). For each setup --
local runner with 1 and with N workers, Ray with 1 node (1 worker), Ray with 2 nodes (2
workers, one per node) -- it drives open-loop Poisson rates upwards and reports the highest
rate sustained: client lag p99 < 5 ms, no errors, >= 95 % of the requested rate (the same rule
as client_capacity.py). On one host the nodes share its cores: the 2-node figure says what the
Ray path costs, not what two machines would give.

Per point it also prints the driver's CPU per record (this process, all its threads: Ray's
transport, validation, the write; start-up included). At the end: the driver's ingest alone
(validate + append + count one record line of the 2-node run, no Ray) and, from those measured
figures, what one driver takes at 10, 100 and 1,000 client nodes (cores, records MB/s).

Run by hand:  .venv/bin/python bench/ray_capacity.py [--seconds S] [--rates 250,500,...]
Figures depend on what else the machine runs at the time; say so when quoting them.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from client_capacity import MODEL, free_port, start_nginx
from inferaudit.measure.health import HealthRecorder
from inferaudit.measure.load.ray_backend import RayBackend
from inferaudit.measure.load.runner import run_load
from inferaudit.measure.protocol import Endpoint, Length, Load, RunSpec, Workload
from inferaudit.measure.records import RecordWriter, read_records

INGEST_RECORDS = 20_000  # records the driver-ingest measurement writes


def self_cpu_s() -> float:
    """This process's CPU seconds, all its threads (Ray's core worker threads in a driver)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one_point(
    base_url: str, rate: float, seconds: float, workers: int, tmp: Path, backend: RayBackend | None
) -> dict[str, Any]:
    spec = RunSpec(
        endpoint=Endpoint(base_url=base_url, model=MODEL),
        load=Load(rate=rate, requests=max(int(rate * seconds), 1), timeout_s=30),
        workload=Workload(input_tokens=Length(lo=64, hi=64), output_tokens=Length(lo=128, hi=128)),
        workers=workers,
        seed=1,
    )
    path = tmp / f"records-{rate:g}.jsonl"
    cpu0 = self_cpu_s()
    result = run_load(spec, path, backend=backend)
    driver_s = self_cpu_s() - cpu0
    records = read_records(path)
    line = path.read_bytes().split(b"\n", 1)[0]
    path.unlink()
    lags = np.array([r.lag_ns for r in records if r.lag_ns is not None]) / 1e6
    start = min(r.scheduled_ns for r in records)
    end = max(r.done_ns or 0 for r in records)
    return {
        "rate": rate,
        "achieved_rps": len(records) / ((end - start) / 1e9),
        "lag_p99_ms": float(np.percentile(lags, 99)) if len(lags) else float("inf"),
        "errors": sum(not r.ok for r in records),
        "clock_us": None if result.ray is None else result.ray.clock_uncertainty_ns / 1e3,
        "driver_us": 1e6 * driver_s / len(records),  # start-up (spawn, pings) included
        "driver_s": driver_s,
        "records": len(records),
        "line": line,
    }


def ingest_cost(line: bytes, tmp: Path) -> tuple[float, int]:
    """The driver's own work per record, apart from Ray's transport: validate one record line
    and append it to ``records.jsonl`` (``RecordWriter.append_line``, a flush each), and count
    it into client health -- what ``RayBackend._write`` and the local parent do per record.
    Returns (CPU microseconds per record, bytes per record line)."""
    endpoint = Endpoint(base_url="http://127.0.0.1:1/v1", model=MODEL)
    spec = RunSpec(endpoint=endpoint, load=Load(rate=1000, requests=INGEST_RECORDS))
    recorder = HealthRecorder(None, spec, time.perf_counter_ns(), [0])
    path = tmp / "ingest.jsonl"
    with RecordWriter(path) as writer:
        cpu0 = time.process_time()
        for _ in range(INGEST_RECORDS):
            recorder.record(writer.append_line(line))
        cpu = time.process_time() - cpu0
    path.unlink()
    return 1e6 * cpu / INGEST_RECORDS, len(line) + 1


def sustained(
    name: str, base: str, rates: list[float], seconds: float, workers: int, tmp: Path,
    backend: RayBackend | None,
) -> tuple[str, list[dict[str, Any]]]:  # fmt: skip
    """The line to print for the highest rate sustained, and every sustained point."""
    best: dict[str, Any] | None = None
    points: list[dict[str, Any]] = []
    for rate in rates:
        p = one_point(base, rate, seconds, workers, tmp, backend)
        ok = p["lag_p99_ms"] < 5 and p["errors"] == 0 and p["achieved_rps"] >= 0.95 * rate
        clock = "" if p["clock_us"] is None else f" clock±{p['clock_us']:.0f}us"
        print(
            f"  {name:<22} rate {rate:6g}: achieved {p['achieved_rps']:7.0f} req/s, lag p99 "
            f"{p['lag_p99_ms']:7.2f} ms, errors {p['errors']}, driver "
            f"{p['driver_us']:.0f} CPU us/record{clock}"
            f"{'' if ok else '  (not sustained)'}",
            flush=True,
        )
        if not ok:
            break  # the rates only go up from here
        best = p
        points.append(p)
    if best is None:
        return f"{name}: no rate sustained with client lag p99 < 5 ms", points
    return (
        f"{name}: {best['achieved_rps']:.0f} req/s sustained (lag p99 {best['lag_p99_ms']:.2f} "
        f"ms; driver {best['driver_us']:.0f} CPU us/record)"
    ), points


def plan(points: list[dict[str, Any]], ingest_us: float, line_bytes: int) -> None:
    """What one driver takes at 10, 100 and 1,000 client nodes, from the measured figures:
    the 2-node run's per-node rate, and the driver's CPU per record -- the slope of its CPU
    over the records of the sustained points (start-up and polling are the intercept)."""
    print(
        f"driver ingest alone (validate + append + count, no Ray): {ingest_us:.1f} CPU us/record"
        f" = {1e6 / ingest_us:,.0f} records/s per core; {line_bytes:,} bytes per record line"
    )
    per_node_rps = points[-1]["achieved_rps"] / 2
    driver_us = points[-1]["driver_us"]
    if len(points) >= 2:
        counts, cpu = [p["records"] for p in points], [p["driver_s"] for p in points]
        slope, fixed = np.polyfit(counts, cpu, 1)
        driver_us = 1e6 * slope
        print(
            f"driver in the 2-node runs, Ray's transport included: {driver_us:.1f} CPU us per "
            f"record (fit over {len(points)} rates) + {fixed:.2f} s a run (start-up, polling)"
            f" = {1e6 / driver_us:,.0f} records/s per core"
        )
    else:
        print(f"driver in the 2-node run, start-up included: {driver_us:.0f} CPU us/record")
    for nodes in (10, 100, 1000):
        rate = nodes * per_node_rps
        print(
            f"  {nodes:>5} nodes x {per_node_rps:,.0f} req/s = {rate:,.0f} records/s: driver "
            f"{rate * driver_us / 1e6:,.1f} cores (ingest alone {rate * ingest_us / 1e6:,.1f}), "
            f"records {rate * line_bytes / 1e6:,.0f} MB/s"
        )


def main() -> None:
    import ray
    from ray.cluster_utils import Cluster

    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rates", default="250,500,750,1000,1500,2000,2500,3000")
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    cpus = os.cpu_count() or 1
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="inferaudit-raybench-") as d:
        tmp = Path(d)
        port = free_port()
        nginx = start_nginx(tmp, port)
        base = f"http://127.0.0.1:{port}/v1"
        print(f"nginx on {base}; host cpus={cpus}; loadavg={os.getloadavg()[0]:.2f}")
        cluster: Any = None
        two: list[dict[str, Any]] = []
        try:
            lines.append(sustained("local, 1 worker", base, rates, args.seconds, 1, tmp, None)[0])
            if cpus > 1:
                name = f"local, {cpus} workers"
                lines.append(sustained(name, base, rates, args.seconds, cpus, tmp, None)[0])
            cluster = Cluster(
                initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
            )
            backend = RayBackend(address=cluster.address)
            lines.append(sustained("ray, 1 node", base, rates, args.seconds, 1, tmp, backend)[0])
            cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            line, two = sustained("ray, 2 nodes", base, rates, args.seconds, 2, tmp, backend)
            lines.append(line)
        finally:
            if ray.is_initialized():
                ray.shutdown()
            if cluster is not None:
                cluster.shutdown()
            nginx.terminate()
            nginx.wait(10)
    print("highest sustained aggregate rate (lag p99 < 5 ms, no errors, >= 95 % of asked):")
    for line in lines:
        print("  " + line)
    if two:
        with tempfile.TemporaryDirectory(prefix="inferaudit-ingest-") as d:
            ingest_us, line_bytes = ingest_cost(two[-1]["line"], Path(d))
        plan(two, ingest_us, line_bytes)


if __name__ == "__main__":
    main()
