"""A real `inferaudit witness serve` process on 127.0.0.1, asked by a real ledger: it cosigns
the log's growth, refuses a rollback and a split view, and keeps the fork as evidence."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from inferaudit.seal.keys import key_paths, parse_verifier
from inferaudit.seal.ledger.note import open_note, split_note
from inferaudit.seal.ledger.store import DEFAULT_LOG_NAME, Ledger, open_ledger
from inferaudit.seal.ledger.witnessing import WitnessEndpoint, request_cosignatures

WITNESS_NAME = "witness.test/w1"


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inferaudit", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _open_log(home: Path) -> Ledger:
    return open_ledger(f"sqlite:///{home / 'ledger.sqlite3'}", home)


@dataclass
class Served:
    url: str
    home: Path
    endpoint: WitnessEndpoint
    log_home: Path


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    home = tmp_path / "witness"
    init = _cli("witness", "init", "--data-dir", home, "--name", WITNESS_NAME)
    assert init.returncode == 0, init.stderr
    witness_key = parse_verifier(init.stdout.strip().splitlines()[-1])
    log_home = tmp_path / "log"
    with _open_log(log_home) as ledger:
        assert ledger.signer is not None
        log_key = ledger.signer.verifier().text()
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "inferaudit",
            "witness",
            "serve",
            "--data-dir",
            str(home),
            "--log",
            f"{DEFAULT_LOG_NAME}={log_key}",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                if httpx.get(url + "/", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the witness did not start"
            time.sleep(0.1)
        yield Served(url, home, WitnessEndpoint(url, witness_key), log_home)
    finally:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert "PRIVATE+KEY" not in out + err


def _grow(ledger: Ledger, size: int, tag: str = "entry") -> str:
    ledger.append([f"{tag} {i}".encode() for i in range(ledger.size(), size)])
    return ledger.sign_checkpoint()


def _cosign(ledger: Ledger, note: str, served: Served) -> tuple[bool, str, str]:
    result = request_cosignatures(ledger, note, [served.endpoint], timeout_s=30)
    (answer,) = result.answers
    assert answer.witness == WITNESS_NAME
    return answer.ok, answer.detail, result.note


def _grown_to_7(served: Served) -> tuple[Ledger, str, str]:
    """The log cosigned at size 3, then 7; its notes as signed (no cosignature lines)."""
    ledger = _open_log(served.log_home)
    assert ledger.signer is not None
    note3 = _grow(ledger, 3)
    ok, detail, cosigned3 = _cosign(ledger, note3, served)
    assert ok, detail
    ledger.add_cosignatures(cosigned3)
    note7 = _grow(ledger, 7)
    ok, detail, cosigned7 = _cosign(ledger, note7, served)
    assert ok, detail
    ledger.add_cosignatures(cosigned7)
    return ledger, note3, note7


def test_witness_cosigns_the_log_as_it_grows(served: Served) -> None:
    ledger, note3, note7 = _grown_to_7(served)
    assert ledger.signer is not None
    keys = [ledger.signer.verifier(), served.endpoint.key]
    for size, note in ((3, note3), (7, note7)):
        stored = ledger.checkpoint_at(size)
        assert stored is not None and stored.startswith(note)
        opened = open_note(stored, keys)
        assert [s.name for s in opened.verified] == [DEFAULT_LOG_NAME, WITNESS_NAME]
    assert ledger.latest_checkpoint() == ledger.checkpoint_at(7)
    page = httpx.get(served.url + "/", timeout=30).text
    assert f"log {DEFAULT_LOG_NAME} size 7\n" in page
    assert served.endpoint.key.text() in page
    # The same checkpoint again is cosigned again; nothing new is added to the note.
    stored7 = ledger.latest_checkpoint()
    assert stored7 is not None
    result = request_cosignatures(ledger, stored7, [served.endpoint], timeout_s=30)
    assert result.answers[0].ok and result.note == stored7
    ledger.close()


def test_a_witness_that_is_down_does_not_stop_the_others(served: Served) -> None:
    with _open_log(served.log_home) as ledger:
        note = _grow(ledger, 2)
        down = WitnessEndpoint(f"http://127.0.0.1:{_free_port()}", served.endpoint.key)
        result = request_cosignatures(ledger, note, [down, served.endpoint], timeout_s=30)
    assert [a.ok for a in result.answers] == [False, True]
    assert result.answers[0].detail.startswith("unreachable: ConnectError")
    assert result.note.startswith(note) and len(split_note(result.note)[1]) == 2


def test_a_split_view_is_refused_and_the_fork_kept(served: Served, tmp_path: Path) -> None:
    ledger, _, note7 = _grown_to_7(served)
    # A second ledger under the SAME log key, with a different entry: another tree of size 7.
    forged_home = tmp_path / "forged"
    priv, _ = key_paths(served.log_home, DEFAULT_LOG_NAME)
    (forged_home / "keys").mkdir(parents=True, mode=0o700)
    shutil.copy2(priv, key_paths(forged_home, DEFAULT_LOG_NAME)[0])
    with _open_log(forged_home) as forged:
        forged.append([b"entry 0", b"a different entry 1"])
        forged_note = _grow(forged, 7)
        assert forged.root(7) != ledger.root(7)
        ok, detail, note = _cosign(forged, forged_note, served)
    assert (ok, detail, note) == (False, "409: witness is at size 7", forged_note)
    shown = _cli("witness", "forks", "--data-dir", served.home)
    assert shown.returncode == 1, shown.stderr
    assert f"fork of {DEFAULT_LOG_NAME} at size 7" in shown.stdout
    assert f"{note7}\n{forged_note}" in shown.stdout
    ok, detail, _ = _cosign(ledger, ledger.latest_checkpoint() or "", served)
    assert ok, detail  # the honest log is still cosigned
    ledger.close()


def test_a_rollback_is_refused(served: Served) -> None:
    ledger, note3, _ = _grown_to_7(served)
    ok, detail, note = _cosign(ledger, note3, served)
    assert (ok, detail) == (False, "409: witness is at size 7, beyond this checkpoint's size 3")
    assert note == note3
    raw = httpx.post(served.url + "/add-checkpoint", content=f"old 3\n\n{note3}", timeout=30)
    assert (raw.status_code, raw.headers["content-type"], raw.text) == (
        409,
        "text/x.tlog.size",
        "7\n",
    )
    assert _cli("witness", "forks", "--data-dir", served.home).returncode == 0
    big = httpx.post(served.url + "/add-checkpoint", content=b"x" * (65 * 1024), timeout=30)
    assert big.status_code == 413
    ledger.close()


def test_serve_refuses_a_key_file_others_can_read(tmp_path: Path) -> None:
    home = tmp_path / "witness"
    assert _cli("witness", "init", "--data-dir", home, "--name", WITNESS_NAME).returncode == 0
    (home / "witness.key").chmod(0o644)
    done = _cli("witness", "serve", "--data-dir", home, "--log", "a=b", "--port", "1")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "readable by others" in lines[0] and "chmod 600" in lines[0]
    assert "PRIVATE" not in done.stderr + done.stdout
