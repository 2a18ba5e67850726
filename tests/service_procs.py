"""Real processes for the end-to-end service tests: `inferaudit witness serve` (stopped when a
test says so), the CLI as a subprocess, a database (SQLite file or a private PostgreSQL schema)
for a whole module, free ports on 127.0.0.1.

The log service itself is started by ``test_service.serve`` (it reads the port uvicorn picked);
a witness logs nothing at startup, so it gets a free port chosen here and is polled until its
status page answers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from conftest_ledger import database  # noqa: F401 - the tests of services take it from here
from inferaudit.seal.keys import Verifier, parse_verifier
from inferaudit.seal.ledger.witnessing import WitnessEndpoint

START_TIMEOUT_S = 120.0  # only against a hang: two busy cores start Python slowly


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(
    *args: str | Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m inferaudit ARGS`` with a wide terminal (one line per verify step)."""
    return subprocess.run(
        [sys.executable, "-m", "inferaudit", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "COLUMNS": "400", **(env or {})},
    )


@dataclass
class WitnessProc:
    """One `inferaudit witness serve` process: its data directory, key and port."""

    name: str
    home: Path
    key: Verifier  # its cosignature verifier key (0x04), as `witness init` printed it
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> WitnessEndpoint:
        return WitnessEndpoint(self.url, self.key)

    @property
    def option(self) -> str:
        """The service's ``--witness URL=VKEY``."""
        return f"{self.url}={self.key.text()}"

    def start(self, log: Verifier) -> None:
        """Serve the log ``log`` (ORIGIN=VKEY); return once its status page answers."""
        assert self.proc is None, "already running"
        self.log_file = open(self.home / "serve.log", "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "inferaudit", "witness", "serve", "--data-dir", str(self.home),
             "--log", f"{log.name}={log.text()}", "--port", str(self.port)],
            stdout=self.log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self.proc.poll() is None, f"witness {self.name} exited:\n{self.output()}"
            try:
                if httpx.get(self.url + "/", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"witness {self.name} did not start"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
            self.proc = None
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None

    @property
    def running(self) -> bool:
        return self.proc is not None

    def output(self) -> str:
        path = self.home / "serve.log"
        return path.read_text(errors="replace") if path.exists() else ""


def make_witness(home: Path, name: str) -> WitnessProc:
    """`inferaudit witness init` in ``home``: the witness's key, read from what it printed."""
    made = cli("witness", "init", "--data-dir", home, "--name", name)
    assert made.returncode == 0, made.stderr
    key = parse_verifier(made.stdout.strip().splitlines()[-1])
    assert key.name == name
    return WitnessProc(name=name, home=home, key=key)


@contextmanager
def witnesses(base: Path, names: tuple[str, ...], log: Verifier) -> Iterator[list[WitnessProc]]:
    """One running witness of ``log`` per name (each its own data directory and key); every one
    still running is stopped afterwards, and none may have logged its private key."""
    procs = [make_witness(base / f"witness-{i}", name) for i, name in enumerate(names)]
    with ExitStack() as stack:
        for w in procs:
            stack.callback(w.stop)
            w.start(log)
        yield procs
    for w in procs:
        assert "PRIVATE+KEY" not in w.output(), w.name
