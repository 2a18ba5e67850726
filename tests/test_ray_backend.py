"""``--backend ray`` on a real two-node Ray cluster on this machine (a head and a second node
with its own raylet, object store and resources), against the twin.

The cluster is ``ray.cluster_utils.Cluster``: each node is a separate set of Ray processes, the
second joined to the head's GCS address exactly as ``ray start --address`` joins one. Every
node has one CPU, so the placement group's two one-CPU bundles land one per node.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

ray = pytest.importorskip("ray")

from inferaudit.audit.run import RunOptions, problems, run_verification  # noqa: E402
from inferaudit.errors import ClientOverloadError, ConfigError  # noqa: E402
from inferaudit.measure.load.ray_backend import (  # noqa: E402
    ClockReading,
    RayBackend,
    RayInfo,
    clock_problem,
    probe_address,
)
from inferaudit.measure.load.runner import run_load  # noqa: E402
from inferaudit.measure.protocol import (  # noqa: E402
    Endpoint,
    ErrorBudget,
    Length,
    Load,
    RunSpec,
    Workload,
)
from inferaudit.measure.records import CANCELLED, Record, read_records  # noqa: E402
from inferaudit.measure.selftest import run_node_self_tests  # noqa: E402
from inferaudit.twin.launch import start_twin  # noqa: E402
from inferaudit.twin.options import TwinOptions  # noqa: E402

pytestmark = pytest.mark.slow

TTFT_MS, TPOT_MS, OUTPUT = 50.0, 10.0, 32


def within(measured: float, truth: float) -> bool:
    return abs(measured - truth) <= 0.05 * truth + 1.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    c: Any = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {"head": 1}, "include_dashboard": False},
    )
    second = c.add_node(num_cpus=1, resources={"node2": 1})
    c.wait_for_nodes()
    try:
        yield c, second
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()


def twin_spec(base_url: str, requests: int, rate: float) -> RunSpec:
    return RunSpec(
        endpoint=Endpoint(base_url=base_url, model="inferaudit-twin"),
        workload=Workload(
            input_tokens=Length(lo=32, hi=32), output_tokens=Length(lo=OUTPUT, hi=OUTPUT)
        ),
        load=Load(rate=rate, requests=requests, warmup=4),
        workers=2,
        seed=3,
    )


def test_two_nodes_share_the_schedule_and_measure_the_twin(cluster: Any, tmp_path: Path) -> None:
    c, _ = cluster
    truth_path = tmp_path / "truth.jsonl"
    with start_twin(TwinOptions(ttft_ms=TTFT_MS, tpot_ms=TPOT_MS, truth=truth_path)) as twin:
        spec = twin_spec(twin.base_url, requests=40, rate=10.0)
        options = RunOptions(checks=(), sign=False, backend=RayBackend(address=c.address))
        outcome = run_verification(spec, tmp_path / "run", options)

    records = read_records(tmp_path / "run" / "records.jsonl")
    assert len(records) == 44 and all(r.ok for r in records)
    assert sorted(r.id for r in records) == list(range(44))
    # the schedule is partitioned exactly: worker w sends positions w, w + 2, ...
    for w in (0, 1):
        assert sorted(r.id for r in records if r.worker == w) == list(range(w, 44, 2))
    meta = orjson.loads((tmp_path / "run" / "meta.json").read_bytes())
    load = meta["load"]
    assert load["backend"] == "ray" and load["sent"] == 44 and load["finished"] == 44
    assert [w["finished"] for w in load["workers"]] == [22, 22]
    info = load["ray"]
    assert info["nodes"] == 2 and info["lost"] == [] and info["lost_requests"] == 0
    clocks = info["clocks"]
    assert len({c["node_id"] for c in clocks}) == 2
    for clock in clocks:
        # one host: the true offset is 0, and a min-RTT estimate is within half its round trip
        for when in ("before", "after"):
            rtt = clock[f"rtt_{when}_ns"]
            assert rtt > 0 and abs(clock[f"offset_{when}_ns"]) <= rtt // 2 + 1
        assert clock["uncertainty_ns"] == max(clock["rtt_before_ns"], clock["rtt_after_ns"]) // 2
        assert clock["drift_ns"] == clock["offset_after_ns"] - clock["offset_before_ns"]
    assert info["clock_uncertainty_ns"] == max(c["uncertainty_ns"] for c in clocks)
    # no loss voids it; the clocks void it only when their measured uncertainty exceeds the
    # budget, and then the run says so with both numbers (a host with two busy tenants on its
    # 2 cores gave a best ping round trip of 12 ms: 6.2 ms uncertainty against 1.03 allowed)
    worst_ms = info["clock_uncertainty_ns"] / 1e6
    clock = [p for p in meta["load_problems"] if "clock" in p]
    assert meta["load_problems"] == clock and list(outcome.load_problems) == clock
    assert not [p for p in problems(outcome) if "lost" in p]
    if clock:
        [line] = clock
        allowed = re.fullmatch(
            rf"clock offset uncertainty {worst_ms:.3f} ms between the Ray workers and the "
            r"driver exceeds the error budget's ([0-9.]+) ms",
            line,
        )
        assert allowed is not None and worst_ms > float(allowed[1]), line
        assert f"invalid: {line}" in problems(outcome)  # the run is invalid for it

    measured = [r for r in records if r.phase == "measure"]
    assert {r.usage_completion_tokens for r in measured} == {OUTPUT}
    truth = [orjson.loads(line) for line in truth_path.read_bytes().splitlines()]
    truth = [t for t in truth if t["stream"] and t["max_tokens"] == OUTPUT]
    true_ttft = np.median([(t["first_sent_ns"] - t["arrival_ns"]) / 1e6 for t in truth])
    true_tpot = np.median(
        [(t["sent_ns"][-1] - t["sent_ns"][0]) / 1e6 / (len(t["sent_ns"]) - 1) for t in truth]
    )
    summary = outcome.summary
    ttft_sent, ttft, tpot = summary.ttft_from_sent_ms.p50, summary.ttft_ms.p50, summary.tpot_ms.p50
    assert ttft_sent is not None and ttft is not None and tpot is not None
    assert within(ttft_sent, true_ttft), (summary.ttft_ms, true_ttft)
    assert within(ttft, true_ttft)
    assert within(tpot, true_tpot), (summary.tpot_ms, true_tpot)


def test_a_closed_loop_is_refused_on_ray(cluster: Any, tmp_path: Path) -> None:
    c, _ = cluster
    spec = RunSpec(
        endpoint=Endpoint(base_url="http://127.0.0.1:9/v1", model="m"),
        load=Load(concurrency=2, requests=4),
        workers=2,
    )
    with pytest.raises(ConfigError, match="open-loop loads only"):
        run_load(spec, tmp_path / "r.jsonl", backend=RayBackend(address=c.address))


def test_clock_uncertainty_beyond_the_budget_voids_the_run() -> None:
    def info(rtt_ns: int) -> RayInfo:
        clock = ClockReading(0, "n", "127.0.0.1", 10, rtt_ns, 12, rtt_ns // 2)
        return RayInfo(address="auto", nodes=1, clocks=(clock,))

    budget = ErrorBudget()  # 2 %, at least 1 ms
    assert info(4_000_000).clock_uncertainty_ns == 2_000_000
    assert clock_problem(info(4_000_000), budget, 20.0) == (
        "clock offset uncertainty 2.000 ms between the Ray workers and the driver exceeds the "
        "error budget's 1.000 ms"
    )
    assert clock_problem(info(4_000_000), budget, 500.0) is None  # 2 % of 500 ms: 10 ms
    assert clock_problem(info(2_000_000), budget, None) is None  # 1 ms: within the floor


def test_should_stop_stops_every_worker(cluster: Any, tmp_path: Path) -> None:
    c, _ = cluster
    seen: list[Record] = []
    with start_twin(TwinOptions(ttft_ms=20.0, tpot_ms=5.0)) as twin:
        spec = twin_spec(twin.base_url, requests=200, rate=10.0)
        result = run_load(
            spec,
            tmp_path / "records.jsonl",
            on_record=seen.append,
            should_stop=lambda: len(seen) >= 6,
            backend=RayBackend(address=c.address),
        )
    records = read_records(tmp_path / "records.jsonl")
    assert result.interrupted and 6 <= len(records) < 100
    assert len(records) == result.finished == len(seen)
    assert all(r.ok or r.error_class == CANCELLED for r in records)
    assert [w.sent for w in result.workers] == [sum(r.worker == w for r in records) for w in (0, 1)]
    assert result.ray is not None and result.ray.lost == ()
    assert all(c.offset_after_ns is not None for c in result.ray.clocks)


def test_each_node_self_tests_its_share_before_the_run(cluster: Any) -> None:
    c, _ = cluster
    spec = twin_spec("http://127.0.0.1:9/v1", requests=40, rate=20.0)
    results = run_node_self_tests(spec, 2, c.address, duration_s=1.0)
    assert len({node for node, _ in results}) == 2  # one per node
    for _, r in results:
        assert r.mode == "open" and r.planned == 10.0 and r.tested == 20.0 and r.workers == 1
        assert r.failed == 0 and r.requests > 0 and r.passed


def test_a_node_too_busy_to_self_test_is_the_client_overloaded(
    cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver waits for the nodes' self-tests as long as they may take; past that, one
    line naming the node (ClientOverloadError), not Ray's GetTimeoutError. Here the wait is
    cut to 1 s: less than the 1 s self-test itself, after its server starts."""
    import inferaudit.measure.selftest as selftest

    c, _ = cluster
    monkeypatch.setattr(selftest, "NODE_TASK_START_S", -selftest.SERVER_START_TIMEOUT_S - 4.0)
    spec = twin_spec("http://127.0.0.1:9/v1", requests=40, rate=20.0)
    with pytest.raises(ClientOverloadError) as caught:
        run_node_self_tests(spec, 2, c.address, duration_s=1.0)
    assert str(caught.value) == (
        "Ray worker 0's node: its client self-test did not finish within 0 s "
        "(the node is too busy to test itself)"
    )


def test_a_lost_node_keeps_its_records_and_marks_the_run(cluster: Any, tmp_path: Path) -> None:
    """Run last: it removes the second node from the module's cluster. Which worker the
    placement group put there is read from the result (its clock's node id)."""
    c, second = cluster
    seen: list[Record] = []
    removed = threading.Event()

    def on_record(rec: Record) -> None:
        seen.append(rec)
        if len(seen) == 10 and not removed.is_set():
            removed.set()  # the node goes while the driver keeps polling
            threading.Thread(target=c.remove_node, args=(second,), daemon=True).start()

    with start_twin(TwinOptions(ttft_ms=20.0, tpot_ms=5.0)) as twin:
        spec = twin_spec(twin.base_url, requests=56, rate=8.0)
        result = run_load(
            spec,
            tmp_path / "records.jsonl",
            on_record=on_record,
            backend=RayBackend(address=c.address),
        )
    records = read_records(tmp_path / "records.jsonl")
    assert removed.is_set() and result.ray is not None
    [gone] = [k.worker for k in result.ray.clocks if k.node_id == second.node_id]
    kept_worker = 1 - gone
    # every position has exactly one record: the survivor's, the lost worker's finished ones,
    # and the lost worker's unfinished ones, cancelled as the client's fault
    assert sorted(r.id for r in records) == list(range(60))
    assert sorted(r.id for r in records if r.worker == gone) == list(range(gone, 60, 2))
    assert all(r.ok for r in records if r.worker == kept_worker), {
        (r.error_class, r.error_message) for r in records if not r.ok
    }
    lost = [r for r in records if r.worker == gone and not r.ok]
    kept = [r for r in records if r.worker == gone and r.ok]
    assert kept and lost
    for r in lost:
        assert r.error_class == CANCELLED
        assert r.error_message is not None
        assert f"client's Ray worker {gone} was lost" in r.error_message
    assert result.ray.lost_requests == len(lost)  # the driver wrote them: never seen sent
    assert all(r.sent_ns is None and r.phase in ("warmup", "measure") for r in lost)
    assert len(result.ray.lost) == 1
    assert result.ray.lost[0].startswith(f"load worker {gone} lost mid-run")
    assert result.finished == 60
    assert result.ray.clocks[gone].offset_after_ns is None
    assert result.ray.clocks[kept_worker].offset_after_ns is not None


def test_a_wrong_ray_address_is_one_line_before_any_ray_call(tmp_path: Path) -> None:
    """Nothing listens at the address: `inferaudit run --backend ray` says so in one line, exit
    2, without waiting for ray.init's retries (the probe runs first; the endpoint is never
    contacted, so none is needed)."""
    with socket.socket() as s:  # a port nobody listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "inferaudit", "run", "--endpoint", "http://127.0.0.1:9",
             "--model", "m", "--rate", "2", "--requests", "4", "--backend", "ray",
             "--ray-address", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "INFERAUDIT_HOME": str(tmp_path)},
        )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert f"--ray-address 127.0.0.1:{port}: no Ray head answers there" in lines[0]
    assert "Traceback" not in proc.stderr


def test_a_malformed_ray_address_is_refused() -> None:
    with pytest.raises(ConfigError, match="not auto or HOST:PORT"):
        probe_address("head-without-port")
    probe_address("auto")  # Ray's own lookup, not probed
