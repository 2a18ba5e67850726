"""Runs that end: stall and first-byte timeouts, the end rule of --duration, signals, a worker
that dies, a parent that is killed, a full disk. Small servers on 127.0.0.1 (tests/fakes.py).

Durations are compared with the configured limits as ratios with generous margins (never an
absolute bound): a timeout never fires early (its timer checks the clock), and the run ends
within a few times the limit, far below the total timeout that held it before.
"""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import IO, Any

import orjson
import pytest

from fakes import Behaviour, FakeServer
from inferaudit.errors import StorageError, WorkerError
from inferaudit.measure import records as records_module
from inferaudit.measure.load.runner import run_load
from inferaudit.measure.load.schedule import arrival_offsets_ns
from inferaudit.measure.protocol import Endpoint, Length, Load, RunSpec, Workload
from inferaudit.measure.records import Record, read_records

MODEL = "fake-model"
NS = 1_000_000_000


def spec(base_url: str, load: Load, workers: int = 1) -> RunSpec:
    return RunSpec(
        endpoint=Endpoint(base_url=base_url, model=MODEL),
        load=load,
        workers=workers,
        workload=Workload(input_tokens=Length(lo=16, hi=16), output_tokens=Length(lo=8, hi=8)),
        seed=3,
    )


def test_a_stream_that_stalls_after_three_chunks_is_a_stall_timeout(tmp_path: Path) -> None:
    # 4 requests at concurrency 2 against a stream that goes silent after 3 chunks: before, each
    # held its slot for the whole timeout (2 rounds x 120 s here); now each ends stall_s after
    # its last byte, as the endpoint's failure.
    stall, timeout = 0.5, 120.0
    load = Load(concurrency=2, requests=4, stall_timeout_s=stall, timeout_s=timeout)
    with FakeServer(Behaviour(stall_after=3)) as srv:
        result = run_load(spec(srv.base_url, load), tmp_path / "records.jsonl")
    records = read_records(tmp_path / "records.jsonl")
    assert len(records) == 4 and result.finished == 4 and result.cancelled == 0
    assert {r.error_class for r in records} == {"stall_timeout"}
    assert {r.error_message for r in records} == {"the stream stalled: no byte for 0.5 s"}
    assert all(r.status == 200 and r.content_chunks == 3 for r in records)
    for r in records:
        assert r.done_ns is not None
        gap = (r.done_ns - r.chunk_ns[-1]) / NS  # last byte is the last chunk (or just after)
        assert 1.0 <= gap / stall < 8.0
    assert result.elapsed_s / timeout < 0.1  # ended in ~2 stall periods, not 2 timeouts


@pytest.mark.parametrize("closed", [True, False])
def test_an_endless_stream_is_cancelled_after_the_window_and_grace(
    tmp_path: Path, closed: bool
) -> None:
    # A server streaming 1 token/s forever, --duration 2 and 1 s of grace: at 3 s every request
    # in flight is cut off and recorded as cancelled with its chunks so far.
    duration, grace = 2.0, 1.0
    pattern: dict[str, Any] = (
        {"concurrency": 2} if closed else {"rate": 2.0, "arrivals": "constant"}
    )
    load = Load(**pattern, duration_s=duration, grace_s=grace, timeout_s=600.0)
    with FakeServer(Behaviour(endless=True, delay_s=1.0)) as srv:
        s = spec(srv.base_url, load)
        result = run_load(s, tmp_path / "records.jsonl")
    records = read_records(tmp_path / "records.jsonl")
    expected = 2 if closed else len(arrival_offsets_ns(load, s.seed))  # 0, 0.5, 1.0, 1.5 s
    assert len(records) == expected == result.sent == result.finished == result.cancelled
    assert all(r.cancelled and not r.ok for r in records)
    assert {r.error_message for r in records} == {
        "cancelled: still running 1 s after the 2 s window"
    }
    end = (duration + grace) * NS
    assert all(r.done_ns is not None and r.done_ns >= end for r in records)
    assert all(r.status == 200 and r.content_chunks >= 1 for r in records)  # partial timings
    assert all(r.first_content_ns is not None and r.chunk_ns[-1] < r.done_ns for r in records)
    assert result.elapsed_s / (duration + grace) < 3.0


_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import orjson
    from inferaudit.measure.load.runner import run_load
    from inferaudit.measure.protocol import Endpoint, Length, Load, RunSpec, Workload

    if __name__ == "__main__":
        spec = RunSpec(
            endpoint=Endpoint(base_url=sys.argv[1], model="fake-model"),
            load=Load.model_validate_json(sys.argv[3]), workers=2,
            workload=Workload(input_tokens=Length(lo=8, hi=8), output_tokens=Length(lo=4, hi=4)),
        )
        result = run_load(spec, Path(sys.argv[2]))
        sys.stdout.buffer.write(orjson.dumps(result.to_json()))
    """
)


def _child(tmp_path: Path, base_url: str, load: Load) -> subprocess.Popen[bytes]:
    script = tmp_path / "run.py"
    script.write_text(_CHILD)
    return subprocess.Popen(
        [sys.executable, str(script), base_url, str(tmp_path / "records.jsonl"),
         load.model_dump_json()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip


def _wait_for(condition: Any, what: str, limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_records_the_requests_in_flight_as_cancelled(tmp_path: Path, signum: int) -> None:
    # Before: SIGINT left 0 records, the in-flight requests were dropped.
    with FakeServer(Behaviour(endless=True, delay_s=0.2)) as srv:
        proc = _child(tmp_path, srv.base_url, Load(concurrency=3, requests=10))
        _wait_for(lambda: srv.seen.completions >= 3, "3 requests in flight")
        time.sleep(0.5)  # a chunk or two each
        os.kill(proc.pid, signum)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    result = orjson.loads(out)
    records = read_records(tmp_path / "records.jsonl")
    assert len(records) == 3 == result["finished"] == result["cancelled"] == result["sent"]
    assert {r.error_message for r in records} == {"cancelled: the run was stopped"}
    assert all(r.cancelled and r.status == 200 for r in records)
    assert result["interrupted"] is True


def test_a_worker_that_dies_ends_the_run_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    seen: list[Record] = []
    killed: list[int] = []

    def on_record(rec: Record) -> None:
        seen.append(rec)
        if len(seen) == 10 and not killed:
            worker = next(p for p in mp.active_children() if p.name == "inferaudit-load-1")
            assert worker.pid is not None
            os.kill(worker.pid, signal.SIGKILL)
            killed.append(worker.pid)

    load = Load(rate=100.0, requests=5_000, arrivals="constant")
    with FakeServer(Behaviour(delay_s=0.005)) as srv, pytest.raises(WorkerError) as info:
        run_load(spec(srv.base_url, load, workers=2), path, on_record=on_record)
    message = str(info.value)
    assert "\n" not in message
    assert f"load worker 1 (pid {killed[0]}) died: exit code -9 (killed by SIGKILL)" in message
    assert path.read_bytes().endswith(b"\n")
    kept = read_records(path)
    assert len(kept) == len(seen) >= 10
    assert f"the {len(kept)} records written before are kept" in message


def test_workers_exit_quietly_when_the_parent_is_killed(tmp_path: Path) -> None:
    with FakeServer(Behaviour(delay_s=0.002)) as srv:
        proc = _child(tmp_path, srv.base_url, Load(rate=200.0, requests=100_000))
        path = tmp_path / "records.jsonl"
        _wait_for(lambda: path.exists() and path.read_bytes().count(b"\n") >= 20, "20 records")
        os.kill(proc.pid, signal.SIGKILL)
        # the workers hold the same stderr: it closes when the last of them has exited
        _, err = proc.communicate(timeout=120)
    text = err.decode(errors="replace")
    assert "Traceback" not in text and "BrokenPipe" not in text, text


class _FullDisk:
    """A file whose disk fills after ``room`` bytes: the write that crosses it lands in part."""

    def __init__(self, fh: IO[bytes], room: int) -> None:
        self.fh = fh
        self.room = room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            self.fh.write(data[: self.room])
            self.fh.flush()
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.fh.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fh, name)


def test_a_full_disk_ends_the_run_in_one_line_with_whole_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = open

    def full_open(path: Any, mode: str = "r", *a: Any, **kw: Any) -> Any:
        fh = real_open(path, mode, *a, **kw)
        return _FullDisk(fh, 5_000) if str(path).endswith("records.jsonl") else fh

    monkeypatch.setattr(records_module, "open", full_open, raising=False)
    path = tmp_path / "records.jsonl"
    with FakeServer() as srv, pytest.raises(StorageError) as info:
        run_load(spec(srv.base_url, Load(concurrency=2, requests=200)), path)
    message = str(info.value)
    assert "\n" not in message and "no space left on device" in message
    data = path.read_bytes()
    assert data.endswith(b"\n") and 0 < len(data) <= 5_000
    kept = read_records(path)
    assert f"the {len(kept)} records before it are kept" in message


def test_rate_inf_sends_every_request_at_time_zero(tmp_path: Path) -> None:
    load = Load(rate=float("inf"), requests=6)
    with FakeServer(Behaviour(delay_s=0.01)) as srv:
        result = run_load(spec(srv.base_url, load, workers=2), tmp_path / "records.jsonl")
        peak = srv.seen.max_in_flight
    records = read_records(tmp_path / "records.jsonl")
    assert sorted(r.id for r in records) == list(range(6)) and all(r.ok for r in records)
    assert {r.scheduled_ns for r in records} == {0}
    assert result.planned == 6 and peak >= 3  # all in flight together, from both workers


def test_ten_1mb_answers_make_a_small_records_file(tmp_path: Path) -> None:
    # Before, every record kept the whole text: ten 1 MB answers made a >10 MB records.jsonl.
    # Now a record keeps at most max_text_bytes (64 KiB by default); the digest and the
    # character count are of the whole text.
    import hashlib

    big = Behaviour(big_chunks=1000, chunk_bytes=1000)  # 1,000,000 characters per answer
    full = hashlib.sha256(b"x" * 1_000_000).hexdigest()
    path = tmp_path / "records.jsonl"
    # an answer this long is within the content cap of 4,000 tokens, not of spec()'s 8
    long = Workload(input_tokens=Length(lo=16, hi=16), output_tokens=Length(lo=4000, hi=4000))
    with FakeServer(big) as srv:
        s = spec(srv.base_url, Load(concurrency=2, requests=10)).model_copy(
            update={"workload": long}
        )
        run_load(s, path)
    records = read_records(path)
    assert len(records) == 10 and all(r.ok for r in records)
    limit = Workload().max_text_bytes
    assert limit == 65_536
    for r in records:
        assert r.output_chars == 1_000_000 and r.output_sha256 == full
        assert r.output_text == "x" * limit and not r.text_complete
    assert path.stat().st_size < 10 * 1_000_000 / 8  # ~0.8 MB (text, and 1,000 chunk times each)
    # --keep-full-text (max_text_bytes None) keeps all of it
    keep = spec("http://x/v1", Load(concurrency=2, requests=2))
    wl = long.model_copy(update={"max_text_bytes": None})
    keep = keep.model_copy(update={"workload": wl})
    with FakeServer(big) as srv:
        keep = keep.model_copy(update={"endpoint": Endpoint(base_url=srv.base_url, model=MODEL)})
        run_load(keep, tmp_path / "full.jsonl")
    whole = read_records(tmp_path / "full.jsonl")
    assert all(r.text_complete and r.output_text == "x" * 1_000_000 for r in whole)
