"""Hand-made run directories for the evidence/verify tests (no load engine involved)."""

from __future__ import annotations

import hashlib
import os
import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from inferaudit.home import make_engine
from inferaudit.judge.suite import recheck
from inferaudit.measure.metrics import summarize
from inferaudit.measure.protocol import SLO, Endpoint, Load, RunSpec, canonical_bytes
from inferaudit.measure.records import Record, write_records

MS = 1_000_000
PG_ENV = "INFERAUDIT_TEST_PG_URL"


@contextmanager
def database(kind: str, base: Path) -> Iterator[str]:
    """A fresh database URL: a SQLite file under ``base``, or a private schema on the server of
    INFERAUDIT_TEST_PG_URL (selected by ``options=-csearch_path=...``; dropped afterwards)."""
    if kind == "sqlite":
        yield f"sqlite:///{base / 'test.sqlite3'}"
        return
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"{PG_ENV} is not set (source scripts/start-postgres)")
    schema = f"s_{uuid.uuid4().hex[:12]}"
    admin = make_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    scoped = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield scoped.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def make_spec(requests: int) -> RunSpec:
    return RunSpec(
        endpoint=Endpoint(base_url="http://127.0.0.1:9/v1", model="tiny-model"),
        load=Load(rate=20.0, requests=requests),
        slo=SLO(bounds_ms={"ttft_p99": 400.0}),
        seed=11,
        label="hand-made",
    )


def make_records(n: int, seed: int = 3, chunks: int = 16) -> list[Record]:
    """``n`` plausible completed requests (and one failure) with exact integer-ns times."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        scheduled = i * 50 * MS
        sent = scheduled + rng.randrange(0, 2 * MS)
        first = sent + rng.randrange(80, 300) * MS
        times = [first]
        for _ in range(chunks - 1):
            times.append(times[-1] + rng.randrange(15_000, 25_000) * 1000)
        failed = i == n - 1 and n > 3
        out.append(
            Record(
                id=i,
                scheduled_ns=scheduled,
                sent_ns=sent,
                first_chunk_ns=first,
                first_content_ns=None if failed else first,
                chunk_ns=[] if failed else times,
                chunk_chars=[] if failed else [4] * chunks,
                done_ns=times[-1] + MS,
                status=500 if failed else 200,
                error_class="http_500" if failed else None,
                finish_reason=None if failed else "length",
                model="tiny-model",
                usage_prompt_tokens=None if failed else 32,
                usage_completion_tokens=None if failed else chunks,
                content_chunks=0 if failed else chunks,
                output_chars=0 if failed else 4 * chunks,
                prompt_sha256=f"{i:064x}",
                output_sha256="" if failed else f"{i + 1:064x}",
                input_tokens=32,
                max_tokens=chunks,
                output_text=None if failed else "word" * chunks,
            )
        )
    return out


CHECKS = ("output-length", "first-token", "fluidity", "errors")


SEED = bytes(range(100, 132))  # a fixed 32-byte run seed for the commitment tests


def make_run_dir(
    run_dir: Path,
    n: int = 40,
    chunks: int = 16,
    *,
    layout: str = "v2",
    seed: bytes | None = None,
) -> Path:
    """spec.json, records.jsonl, summary.json and meta.json, as `run` writes them.

    ``layout="v2"``: the verdicts in verdicts.json and summary.json without ``checks``;
    ``layout="v1"``: the verdicts in summary.json under ``checks`` (inferaudit 0.1).
    With ``seed``, the spec commits to it (contract C5) and seed.json reveals it.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    update: dict[str, object] = {"checks": CHECKS}
    if seed is not None:
        update["seed_commitment"] = hashlib.sha256(b"inferaudit.seed/v1\n" + seed).hexdigest()
    spec = make_spec(n).model_copy(update=update)
    records = make_records(n, chunks=chunks)
    (run_dir / "spec.json").write_bytes(canonical_bytes(spec))
    write_records(run_dir / "records.jsonl", records)
    summary = summarize(records, spec).to_json()
    health = None if layout == "v1" else []  # v1: the frozen v1 rules; v2: no health windows
    verdicts = [v.to_json() for v in recheck(records, spec, names=CHECKS, health=health)]
    if layout == "v1":
        summary["checks"] = verdicts
    else:
        (run_dir / "verdicts.json").write_bytes(orjson.dumps(verdicts, option=orjson.OPT_INDENT_2))
    (run_dir / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    meta = {
        "environment": {"tool": "inferaudit", "python": "3.11", "host": "test"},
        "started_wall": "2026-11-29T00:00:00Z",
        "models": {"object": "list", "data": [{"id": "tiny-model", "object": "model"}]},
    }
    (run_dir / "meta.json").write_bytes(orjson.dumps(meta))
    if seed is not None:
        (run_dir / "seed.json").write_bytes(orjson.dumps({"seed": seed.hex()}))
    return run_dir
