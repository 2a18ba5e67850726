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

Run by hand:  .venv/bin/python bench/ray_capacity.py [--seconds S] [--rates 250,500,...]
Figures depend on what else the machine runs at the time; say so when quoting them.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from client_capacity import MODEL, free_port, start_nginx
from inferaudit.measure.load.ray_backend import RayBackend
from inferaudit.measure.load.runner import run_load
from inferaudit.measure.protocol import Endpoint, Length, Load, RunSpec, Workload
from inferaudit.measure.records import read_records


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
    result = run_load(spec, path, backend=backend)
    records = read_records(path)
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
    }


def sustained(
    name: str, base: str, rates: list[float], seconds: float, workers: int, tmp: Path,
    backend: RayBackend | None,
) -> str:  # fmt: skip
    best: dict[str, Any] | None = None
    for rate in rates:
        p = one_point(base, rate, seconds, workers, tmp, backend)
        ok = p["lag_p99_ms"] < 5 and p["errors"] == 0 and p["achieved_rps"] >= 0.95 * rate
        clock = "" if p["clock_us"] is None else f" clock±{p['clock_us']:.0f}us"
        print(
            f"  {name:<22} rate {rate:6g}: achieved {p['achieved_rps']:7.0f} req/s, lag p99 "
            f"{p['lag_p99_ms']:7.2f} ms, errors {p['errors']}{clock}"
            f"{'' if ok else '  (not sustained)'}",
            flush=True,
        )
        if not ok:
            break  # the rates only go up from here
        best = p
    if best is None:
        return f"{name}: no rate sustained with client lag p99 < 5 ms"
    return (
        f"{name}: {best['achieved_rps']:.0f} req/s sustained (lag p99 {best['lag_p99_ms']:.2f} ms)"
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
        try:
            lines.append(sustained("local, 1 worker", base, rates, args.seconds, 1, tmp, None))
            if cpus > 1:
                name = f"local, {cpus} workers"
                lines.append(sustained(name, base, rates, args.seconds, cpus, tmp, None))
            cluster = Cluster(
                initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
            )
            backend = RayBackend(address=cluster.address)
            lines.append(sustained("ray, 1 node", base, rates, args.seconds, 1, tmp, backend))
            cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            lines.append(sustained("ray, 2 nodes", base, rates, args.seconds, 2, tmp, backend))
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


if __name__ == "__main__":
    main()
