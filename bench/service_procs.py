"""Processes and databases for bench/service.py: `inferaudit serve`, `inferaudit witness serve`,
the CLI, fresh PostgreSQL schemas. Every process started here is stopped by its own handle."""

from __future__ import annotations

import collections
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlalchemy.engine import make_url

from inferaudit.home import make_engine
from inferaudit.seal.keys import Verifier, load_or_create_signer, parse_verifier
from inferaudit.seal.ledger.store import DEFAULT_LOG_NAME

READY = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
LIMIT = "1000000"  # --rate and --burst of the benchmarked services: measure it, not the limiter


def cli(*args: str) -> str:
    """``python -m inferaudit ARGS``; its stdout (one clear line from stderr when it fails)."""
    done = subprocess.run(
        [sys.executable, "-m", "inferaudit", *args],
        capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"inferaudit {args[0]} {args[1]}: {done.stderr.strip()[-300:]}")
    return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)


@contextmanager
def serve(data: Path, db: str, *extra: str) -> Iterator[str]:
    """`inferaudit serve` on a port the OS picks; its base URL. Its output is drained (the
    last 50 lines kept, shown only if it fails to start)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferaudit", "serve", "--data-dir", str(data), "--db", db,
         "--host", "127.0.0.1", "--port", "0", "--rate", LIMIT, "--burst", LIMIT, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    tail: collections.deque[str] = collections.deque(maxlen=50)
    port: list[int] = []
    ready = threading.Event()

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            m = READY.search(line)
            if m and not port:
                port.append(int(m.group(1)))
                ready.set()
        ready.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        ready.wait(180)
        if not port:
            raise RuntimeError("inferaudit serve did not start:\n" + "\n".join(tail))
        yield f"http://127.0.0.1:{port[0]}"
    finally:
        stop(proc)
        reader.join(10)


@contextmanager
def witness(home: Path, name: str, log: Verifier) -> Iterator[tuple[str, Verifier]]:
    """`inferaudit witness serve` of ``log``; (its URL, its cosignature key)."""
    key = parse_verifier(
        cli("witness", "init", "--data-dir", str(home), "--name", name).split()[-1]
    )
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferaudit", "witness", "serve", "--data-dir", str(home),
         "--log", f"{log.name}={log.text()}", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                httpx.post(url + "/add-checkpoint", content=b"", timeout=5)
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"witness {name} did not start") from None
                time.sleep(0.2)
        yield url, key
    finally:
        stop(proc)


@contextmanager
def pg_schema(base: str) -> Iterator[str]:
    """A fresh schema on the PostgreSQL server; a URL selecting it (dropped afterwards)."""
    schema = f"bench_svc_{uuid.uuid4().hex[:10]}"
    admin = make_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@dataclass(frozen=True)
class Log:
    """A prepared service: its data directory, database, log key and submit tokens."""

    data: Path
    db: str
    key: Verifier
    tokens: tuple[str, ...]


def prepare_log(data: Path, db: str, auditor: Verifier, tokens: int) -> Log:
    """The log key (0600, in ``data``), the auditor key and ``tokens`` tokens, via the CLI."""
    key = load_or_create_signer(data, DEFAULT_LOG_NAME).verifier()
    where = ("--data-dir", str(data), "--db", db)
    cli("log", "auditor", "add", auditor.text(), *where)
    made = tuple(
        cli("log", "token", "add", f"submitter-{i}", "--scope", "submit-evidence",
            "--scope", "submit-claims", *where).strip()
        for i in range(tokens)
    )  # fmt: skip
    return Log(data, db, key, made)
