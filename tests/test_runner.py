"""The multi-process runner: every record written once, phases, closed-loop bound, stopping."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from fakes import Behaviour, FakeServer
from inferaudit.errors import WorkerError
from inferaudit.measure.load.runner import LoadResult, run_load
from inferaudit.measure.protocol import Endpoint, Length, Load, RunSpec, Workload
from inferaudit.measure.records import Record, read_records
from inferaudit.measure.workload import RequestPlan

MODEL = "fake-model"


def spec(base_url: str, load: Load, workers: int = 2, **kw: Any) -> RunSpec:
    return RunSpec(
        endpoint=Endpoint(base_url=base_url, model=MODEL),
        load=load,
        workers=workers,
        workload=Workload(input_tokens=Length(lo=16, hi=16), output_tokens=Length(lo=3, hi=3)),
        seed=kw.pop("seed", 1),
        **kw,
    )


def test_open_loop_two_workers_write_every_record_once(tmp_path: Path) -> None:
    seen: list[Record] = []
    path = tmp_path / "records.jsonl"
    with FakeServer() as srv:
        s = spec(srv.base_url, Load(rate=300, requests=60, warmup=5))
        result = run_load(s, path, on_record=seen.append)
        prompts = [b["prompt"] for b in srv.seen.bodies]
    records = read_records(path)
    assert sorted(r.id for r in records) == list(range(65))
    assert all(r.ok for r in records)
    assert {r.id for r in records if r.phase == "warmup"} == set(range(5))
    assert {r.worker for r in records} == {0, 1}
    assert all(r.worker == r.id % 2 for r in records)  # round-robin positions
    assert len(set(prompts)) == 65
    assert [r.id for r in seen] == [r.id for r in records]  # on_record in file order
    assert (result.mode, result.planned, result.sent, result.finished) == ("open", 65, 65, 65)
    assert not result.interrupted and result.cancelled == 0
    assert [w.exitcode for w in result.workers] == [0, 0]
    assert sum(w.finished for w in result.workers) == 65
    # the schedule is absolute: scheduled times are the seeded arrival offsets
    from inferaudit.measure.load.schedule import arrival_offsets_ns

    offsets = arrival_offsets_ns(s.load, s.seed).tolist()
    assert {r.id: r.scheduled_ns for r in records} == dict(enumerate(offsets))
    assert all(r.sent_ns is not None and r.sent_ns >= r.scheduled_ns for r in records)
    assert result.to_json()["epoch_wall"].endswith("Z")


def test_closed_loop_never_exceeds_concurrency(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    with FakeServer(Behaviour(delay_s=0.02)) as srv:
        result = run_load(spec(srv.base_url, Load(concurrency=3, requests=24, warmup=2)), path)
        peak = srv.seen.max_in_flight
    records = read_records(path)
    assert peak == 3
    assert sorted(r.id for r in records) == list(range(26))
    assert sum(r.phase == "warmup" for r in records) == 2
    assert sum(w.max_in_flight for w in result.workers) == 3
    assert result.mode == "closed" and result.finished == 26


def test_connections_are_open_before_the_clock(tmp_path: Path) -> None:
    # Closed loop: each slot's connection is opened (GET /models) before the epoch and every
    # measured request reuses one, so none pays a handshake.
    with FakeServer(Behaviour(delay_s=0.01)) as srv:
        result = run_load(spec(srv.base_url, Load(concurrency=3, requests=12)), tmp_path / "r")
        seen = srv.seen
    assert [w.connections_opened for w in result.workers] == [2, 1]
    assert (seen.connections, seen.requests - seen.completions, seen.completions) == (3, 3, 12)
    # Open loop: up to OPEN_LOOP_CONNECTIONS per worker, never more than it has requests.
    with FakeServer() as srv:
        load = Load(rate=200.0, requests=5, arrivals="constant")
        result = run_load(spec(srv.base_url, load), tmp_path / "o")
    assert [w.connections_opened for w in result.workers] == [3, 2]


def test_workers_ask_for_priority_and_record_what_they_got(tmp_path: Path) -> None:
    # A worker asks for nice CLIENT_NICE; without the privilege it keeps the parent's niceness.
    # Either way the niceness it ran at is part of the load report (evidence).
    from inferaudit.measure.load.worker import CLIENT_NICE

    own = os.getpriority(os.PRIO_PROCESS, 0)
    may = os.geteuid() == 0
    with FakeServer() as srv:
        result = run_load(spec(srv.base_url, Load(concurrency=2, requests=4)), tmp_path / "r")
    expected = min(own, CLIENT_NICE) if may else own
    assert [w.nice for w in result.workers] == [expected, expected]
    assert result.to_json()["workers"][0]["nice"] == expected
    assert os.getpriority(os.PRIO_PROCESS, 0) == own  # the parent is left as it was


def test_closed_loop_schedules_when_the_slot_frees(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    with FakeServer(Behaviour(delay_s=0.005)) as srv:
        run_load(spec(srv.base_url, Load(concurrency=1, requests=8), workers=1), path)
    records = sorted(read_records(path), key=lambda r: r.id)
    assert records[0].scheduled_ns == 0
    for prev, nxt in itertools.pairwise(records):
        assert prev.done_ns is not None
        assert nxt.scheduled_ns >= prev.done_ns


def test_explicit_plans_keep_their_ids_phases_and_tags(tmp_path: Path) -> None:
    plans = [
        RequestPlan(100 + i, "cache-repeat", "same prompt", 2, 2, tag=f"g{i % 2}") for i in range(6)
    ]
    path = tmp_path / "records.jsonl"
    with FakeServer() as srv:
        s = spec(srv.base_url, Load(concurrency=2, requests=1))
        result = run_load(s, path, plans=plans)
        assert [b["prompt"] for b in srv.seen.bodies] == ["same prompt"] * 6
    records = read_records(path)
    assert sorted(r.id for r in records) == list(range(100, 106))
    assert {r.phase for r in records} == {"cache-repeat"}
    assert {r.id: r.tag for r in records} == {100 + i: f"g{i % 2}" for i in range(6)}
    assert result.planned == 6


def test_injected_plans_are_sent_in_the_load(tmp_path: Path) -> None:
    probe = RequestPlan(3, "measure", "fingerprint prompt", 2, 2, tag="fp", extra_body={"seed": 9})
    path = tmp_path / "records.jsonl"
    with FakeServer() as srv:
        run_load(spec(srv.base_url, Load(rate=200, requests=6)), path, injected={3: probe})
        bodies = {b["prompt"]: b for b in srv.seen.bodies}
    by_id = {r.id: r for r in read_records(path)}
    assert by_id[3].tag == "fp" and by_id[3].max_tokens == 2
    assert bodies["fingerprint prompt"]["seed"] == 9


def test_errors_are_recorded_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    with FakeServer(Behaviour(error_every=3)) as srv:
        result = run_load(spec(srv.base_url, Load(concurrency=1, requests=9), workers=1), path)
    classes = [r.error_class for r in sorted(read_records(path), key=lambda r: r.id)]
    assert classes == [None, None, "http_429"] * 3
    assert result.finished == 9


def test_should_stop_interrupts_and_keeps_finished_records(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    seen: list[Record] = []
    with FakeServer(Behaviour(delay_s=0.01)) as srv:
        s = spec(srv.base_url, Load(rate=100, requests=10_000))
        result = run_load(s, path, on_record=seen.append, should_stop=lambda: len(seen) >= 5)
    records = read_records(path)
    assert result.interrupted
    assert 5 <= len(records) == result.finished < 10_000
    assert result.sent == result.finished  # the requests in flight are recorded, cancelled
    assert sum(r.cancelled for r in records) == result.cancelled
    assert all(r.error_message == "cancelled: the run was stopped" for r in records if r.cancelled)


@pytest.mark.parametrize(
    ("signum", "group"), [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)]
)
def test_signal_keeps_every_finished_record(tmp_path: Path, signum: int, group: bool) -> None:
    """SIGINT/SIGTERM to the runner, or SIGINT to its whole process group (a terminal Ctrl-C)."""
    path = tmp_path / "records.jsonl"
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            from pathlib import Path
            import orjson
            from inferaudit.measure.load.runner import run_load
            from inferaudit.measure.protocol import Endpoint, Load, RunSpec

            if __name__ == "__main__":
                spec = RunSpec(
                    endpoint=Endpoint(base_url=sys.argv[1], model="fake-model"),
                    load=Load(rate=200, requests=100_000), workers=2,
                )
                result = run_load(spec, Path(sys.argv[2]))
                sys.stdout.buffer.write(orjson.dumps(result.to_json()))
            """
        )
    )
    with FakeServer(Behaviour(delay_s=0.002)) as srv:
        proc = subprocess.Popen(
            [sys.executable, str(script), srv.base_url, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if path.exists() and path.read_bytes().count(b"\n") >= 20:
                break
            time.sleep(0.05)
        if group:
            os.killpg(proc.pid, signum)
        else:
            os.kill(proc.pid, signum)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    result = orjson.loads(out)
    assert result["interrupted"] is True
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""  # the file ends with a complete line
    records = read_records(path)
    assert len(records) == result["finished"] >= 20
    assert len({r.id for r in records}) == len(records)


def test_load_result_json_is_serialisable(tmp_path: Path) -> None:
    with FakeServer() as srv:
        result = run_load(
            spec(srv.base_url, Load(rate=100, requests=2), workers=1), tmp_path / "r.jsonl"
        )
    assert isinstance(result, LoadResult)
    data = orjson.loads(orjson.dumps(result.to_json()))
    assert data["finished"] == 2 and len(data["workers"]) == 1
    # one host, one clock: the offset is within half the round trip that measured it
    worker = data["workers"][0]
    assert worker["clock_rtt_ns"] > 0
    assert abs(worker["clock_offset_ns"]) <= worker["clock_rtt_ns"] // 2 + 1


def test_closed_loop_duration_bounds_the_run(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    with FakeServer(Behaviour(delay_s=0.002)) as srv:
        result = run_load(spec(srv.base_url, Load(concurrency=2, duration_s=1.0)), path)
    records = read_records(path)
    assert min(r.scheduled_ns for r in records) == 0  # no warm-up: the window opens at the epoch
    assert all(r.scheduled_ns < 1_000_000_000 for r in records)
    assert max(r.scheduled_ns for r in records) > 500_000_000  # and it was used
    assert result.planned is None and result.finished == len(records) > 10


def test_api_key_from_the_named_variable_reaches_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IA_RUNNER_KEY", "sk-runner")
    with FakeServer(Behaviour(api_key="sk-runner")) as srv:
        s = spec(srv.base_url, Load(rate=100, requests=2), workers=1)
        s = s.model_copy(
            update={"endpoint": s.endpoint.model_copy(update={"api_key_env": "IA_RUNNER_KEY"})}
        )
        run_load(s, tmp_path / "r.jsonl")
        assert {h["authorization"] for h in srv.seen.headers} == {"Bearer sk-runner"}
    records = read_records(tmp_path / "r.jsonl")
    assert [r.error_class for r in records] == [None, None]
    assert b"sk-runner" not in (tmp_path / "r.jsonl").read_bytes()


def test_a_worker_bug_raises_instead_of_hanging(tmp_path: Path) -> None:
    bad = RequestPlan(0, "probe", "p", 1, extra_body={"x": object()})  # not JSON-serialisable
    with FakeServer() as srv, pytest.raises(WorkerError, match="worker 0: TypeError"):
        run_load(
            spec(srv.base_url, Load(concurrency=1, requests=1), workers=1),
            tmp_path / "r",
            plans=[bad],
        )
