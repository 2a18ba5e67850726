"""`inferaudit run` from the command line: bad input gives one clear line, never a traceback;
errors mid-run are recorded per request and the run goes on; secrets never reach the disk;
a run stopped by a signal keeps every finished record."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from fakes import Behaviour, FakeServer, closed_port
from inferaudit.measure.records import read_records
from inferaudit.twin.launch import start_twin
from inferaudit.twin.options import TwinOptions

BASE = ["--concurrency", "2", "--requests", "6", "--input-tokens", "16", "--output-tokens", "4"]


def cli(*args: str, env: dict[str, str] | None = None, home: Path) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "INFERAUDIT_HOME": str(home), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "inferaudit", "run", *args, "--workers", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        env=full_env,
    )


def one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert needle in lines[0], lines[0]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--rate", "0", "--requests", "5"], "--rate 0: the arrival rate must be positive"),
        (["--concurrency", "1"], "give --requests N or --duration SECONDS"),
        (["--rate", "2", "--concurrency", "2", "--requests", "3"], "exactly one of"),
        (["--concurrency", "1", "--requests", "3", "--dataset", "nope.jsonl"], "no such file"),
        (["--concurrency", "1", "--requests", "3", "--slo", "ttft=5"], "SLO bound 'ttft'"),
        (["--concurrency", "1", "--requests", "3", "--output-tokens", "0"], "token length"),
        (
            ["--concurrency", "1", "--requests", "3", "--api-key-env", "IA_UNSET_KEY"],
            "IA_UNSET_KEY",
        ),
    ],
)
def test_bad_flags(tmp_path: Path, home: Path, extra: list[str], needle: str) -> None:
    proc = cli("--endpoint", "http://127.0.0.1:9/v1", "--model", "m", *extra,
               "--out", str(tmp_path / "r"), home=home)  # fmt: skip
    one_line_error(proc, needle)


def test_unreachable_endpoint(tmp_path: Path, home: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    proc = cli("--endpoint", url, "--model", "m", *BASE, "--out", str(tmp_path / "r"), home=home)
    one_line_error(proc, "cannot reach")


def test_wrong_model_and_missing_credentials(tmp_path: Path, home: Path) -> None:
    with start_twin(TwinOptions(ttft_ms=5, tpot_ms=1, api_key="s3cret")) as twin:
        out = str(tmp_path / "a")
        proc = cli("--endpoint", twin.base_url, "--model", "inferaudit-twin", *BASE, "--out", out,
                   home=home)  # fmt: skip
        one_line_error(proc, "401")
        proc = cli("--endpoint", twin.base_url, "--model", "no-such-model", *BASE,
                   "--api-key-env", "IA_KEY", "--out", str(tmp_path / "b"),
                   env={"IA_KEY": "s3cret"}, home=home)  # fmt: skip
        one_line_error(proc, "no-such-model")


def test_key_is_used_but_never_written(tmp_path: Path, home: Path) -> None:
    secret = "sk-test-7f3a9c0e"
    with start_twin(TwinOptions(ttft_ms=5, tpot_ms=1, api_key=secret)) as twin:
        proc = cli("--endpoint", twin.base_url, "--model", "inferaudit-twin", *BASE,
                   "--api-key-env", "IA_KEY", "--checks", "none", "--max-lag-ms", "100",
                   "--out", str(tmp_path / "r"),
                   env={"IA_KEY": secret}, home=home)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = [p for p in (tmp_path / "r").rglob("*") if p.is_file()]
    files += [p for p in home.rglob("*") if p.is_file()]
    assert any(p.name == "records.jsonl" for p in files)
    for path in files:
        assert secret.encode() not in path.read_bytes(), path
    assert secret not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("behaviour", "error_class"),
    [
        (Behaviour(error_every=3, error_status=429), "http_429"),
        (Behaviour(error_every=3, error_status=401), "http_401"),
        (Behaviour(error_every=3, error_status=500), "http_500"),
        (Behaviour(malformed_at=1), "sse_malformed"),
        (Behaviour(drop_after=2), "stream_truncated"),
    ],
)
def test_errors_mid_run_are_recorded_and_the_run_goes_on(
    tmp_path: Path, home: Path, behaviour: Behaviour, error_class: str
) -> None:
    with FakeServer(behaviour) as srv:
        proc = cli("--endpoint", srv.base_url, "--model", "fake-model", *BASE, "--checks", "none",
                   "--no-sign", "--out", str(tmp_path / "r"), home=home)  # fmt: skip
    assert "Traceback" not in proc.stderr + proc.stdout
    records = read_records(tmp_path / "r" / "records.jsonl")
    assert len(records) == 6  # every request recorded, failed or not
    failed = [r for r in records if not r.ok]
    assert failed and {r.error_class for r in failed} == {error_class}
    summary = orjson.loads((tmp_path / "r" / "summary.json").read_bytes())
    assert summary["failed"] == len(failed)
    assert summary["errors"] == {error_class: len(failed)}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_keeps_finished_records(tmp_path: Path, home: Path, sig: int) -> None:
    out = tmp_path / "r"
    with start_twin(TwinOptions(ttft_ms=20, tpot_ms=20)) as twin:
        proc = subprocess.Popen(
            [sys.executable, "-m", "inferaudit", "run", "--endpoint", twin.base_url,
             "--model", "inferaudit-twin", "--concurrency", "4", "--requests", "1000",
             "--output-tokens", "8", "--input-tokens", "8", "--checks", "none", "--no-sign",
             "--workers", "2", "--out", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "INFERAUDIT_HOME": str(home)},
        )  # fmt: skip
        records = out / "records.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if records.exists() and records.read_bytes().count(b"\n") >= 10:
                break
            time.sleep(0.1)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stdout + stderr
    assert "Traceback" not in stdout + stderr
    assert "interrupted" in stdout
    kept = read_records(records)  # every line parses: nothing torn, nothing lost
    assert 10 <= len(kept) < 1000
    assert len({r.id for r in kept}) == len(kept)
    assert (out / "summary.json").exists()
