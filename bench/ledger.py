"""Ledger benchmarks, run by hand; prints figures.

    .venv/bin/python bench/ledger.py                       # SQLite only
    .venv/bin/python bench/ledger.py --pg postgresql+psycopg://postgres@127.0.0.1/inferaudit_test

Measures:
  1. batched append throughput (entries/s) on SQLite and, with --pg, PostgreSQL
     (targets: >= 20,000/s batched on SQLite);
  2. inclusion-proof time at 10^6 entries, read from stored hashes (target: < 1 ms);
  3. `verify` of a sealed 10,000-request run, everything included (target: < 2 s).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import orjson
from sqlalchemy import text
from sqlalchemy.engine import make_url

from inferaudit.home import make_engine
from inferaudit.measure.metrics import summarize
from inferaudit.measure.protocol import SLO, Endpoint, Load, RunSpec, canonical_bytes
from inferaudit.measure.records import Record, write_records
from inferaudit.seal.keys import Signer, TrustPolicy
from inferaudit.seal.ledger import merkle
from inferaudit.seal.ledger.store import Ledger
from inferaudit.seal.publish import seal_run
from inferaudit.seal.verify import verify_run

LOG = Signer(name="bench.test/log", seed=bytes(range(32)))
MS = 1_000_000


def bench_append(url: str, total: int, batch: int, leaf_bytes: int) -> float:
    ledger = Ledger(make_engine(url), signer=LOG)
    rng = random.Random(1)
    leaves = [rng.randbytes(leaf_bytes) for _ in range(total)]
    t0 = time.perf_counter()
    for i in range(0, total, batch):
        ledger.append(leaves[i : i + batch])
    elapsed = time.perf_counter() - t0
    ledger.sign_checkpoint()
    ledger.close()
    return total / elapsed


def bench_proofs(url: str, size: int, batch: int, samples: int) -> tuple[float, float, float]:
    ledger = Ledger(make_engine(url), signer=LOG)
    have = ledger.size()
    t0 = time.perf_counter()
    for i in range(have, size, batch):
        ledger.append([i.to_bytes(8, "big") for i in range(i, min(i + batch, size))])
    build = time.perf_counter() - t0
    root = ledger.root(size)
    rng = random.Random(2)
    times = []
    for _ in range(samples):
        index = rng.randrange(size)
        t = time.perf_counter()
        proof = ledger.inclusion_proof(index, size)
        times.append(time.perf_counter() - t)
        merkle.verify_inclusion(
            index, size, merkle.hash_leaf(index.to_bytes(8, "big")), proof, root
        )
    ledger.close()
    return build, statistics.median(times) * 1e3, sorted(times)[int(0.99 * samples)] * 1e3


def make_run(run_dir: Path, n: int, chunks: int = 64) -> None:
    rng = random.Random(3)
    spec = RunSpec(
        endpoint=Endpoint(base_url="http://127.0.0.1:9/v1", model="bench-model"),
        load=Load(rate=50.0, requests=n),
        slo=SLO(bounds_ms={"ttft_p99": 400.0}),
    )
    records = []
    for i in range(n):
        scheduled = i * 20 * MS
        sent = scheduled + rng.randrange(0, MS)
        times = [sent + rng.randrange(80, 300) * MS]
        for _ in range(chunks - 1):
            times.append(times[-1] + rng.randrange(15_000, 25_000) * 1000)
        records.append(
            Record(
                id=i, scheduled_ns=scheduled, sent_ns=sent, first_chunk_ns=times[0],
                first_content_ns=times[0], chunk_ns=times, chunk_chars=[4] * chunks,
                done_ns=times[-1] + MS, status=200, finish_reason="length",
                usage_prompt_tokens=256, usage_completion_tokens=chunks, content_chunks=chunks,
                output_chars=4 * chunks, prompt_sha256=f"{i:064x}", output_sha256=f"{i:064x}",
                input_tokens=256, max_tokens=chunks, output_text="word" * chunks,
            )
        )  # fmt: skip
    run_dir.mkdir(parents=True)
    (run_dir / "spec.json").write_bytes(canonical_bytes(spec))
    write_records(run_dir / "records.jsonl", records)
    summary = summarize(records, spec).to_json()
    summary["checks"] = []  # a v1 run directory (verdicts inside the summary; none here)
    (run_dir / "summary.json").write_bytes(orjson.dumps(summary))
    (run_dir / "meta.json").write_bytes(orjson.dumps({"models": {"data": [{"id": "bench"}]}}))


def bench_verify(base: Path, n: int) -> tuple[float, int]:
    run = base / "run"
    make_run(run, n)
    signer = Signer(name="bench-runner", seed=bytes(32))
    with Ledger(make_engine(f"sqlite:///{base / 'verify.db'}"), signer=LOG) as ledger:
        ledger.append([os.urandom(16) for _ in range(1000)])
        seal_run(run, signer, ledger)
    trust = TrustPolicy(signers=(signer.verifier(),), logs=(LOG.verifier(),))
    t0 = time.perf_counter()
    report = verify_run(run, trust)
    elapsed = time.perf_counter() - t0
    assert report.ok, report.failures()
    return elapsed, (run / "records.jsonl").stat().st_size


def pg_schema_url(base: str) -> tuple[str, str]:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with make_engine(base).begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False), schema


def drop_schema(base: str, schema: str) -> None:
    with make_engine(base).begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pg", help="PostgreSQL URL (a scratch schema is created and dropped)")
    ap.add_argument("--append", type=int, default=100_000, help="entries for the append bench")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--leaf-bytes", type=int, default=1024)
    ap.add_argument("--proof-size", type=int, default=1_000_000)
    ap.add_argument("--proof-samples", type=int, default=2000)
    ap.add_argument("--verify-requests", type=int, default=10_000)
    ap.add_argument("--keep", type=Path, help="keep the SQLite files here (reuse the 10^6 tree)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        rate = bench_append(
            f"sqlite:///{base / f'append-{uuid.uuid4().hex[:6]}.db'}",
            args.append, args.batch, args.leaf_bytes,
        )  # fmt: skip
        shape = f"{args.append:,} x {args.leaf_bytes} B, batches of {args.batch}"
        print(f"sqlite append: {rate:,.0f} entries/s ({shape}; target >= 20,000)")
        if args.pg:
            url, schema = pg_schema_url(args.pg)
            try:
                rate = bench_append(url, args.append, args.batch, args.leaf_bytes)
                print(f"postgresql append: {rate:,.0f} entries/s ({shape})")
            finally:
                drop_schema(args.pg, schema)
        build, p50, p99 = bench_proofs(
            f"sqlite:///{base / 'proofs.db'}", args.proof_size, 10_000, args.proof_samples
        )
        print(
            f"inclusion proof at {args.proof_size:,} entries (sqlite, stored hashes): "
            f"median {p50:.3f} ms, p99 {p99:.3f} ms (target < 1 ms; built in {build:.1f} s)"
        )
        if args.pg:
            url, schema = pg_schema_url(args.pg)
            try:
                _, p50, p99 = bench_proofs(url, min(args.proof_size, 200_000), 10_000, 500)
                print(
                    f"inclusion proof at {min(args.proof_size, 200_000):,} entries "
                    f"(postgresql): median {p50:.3f} ms, p99 {p99:.3f} ms"
                )
            finally:
                drop_schema(args.pg, schema)
        vt, size = bench_verify(Path(tempfile.mkdtemp(dir=base)), args.verify_requests)
        print(
            f"verify of a {args.verify_requests:,}-request run ({size / 1e6:.1f} MB records): "
            f"{vt:.2f} s (target < 2 s)"
        )


if __name__ == "__main__":
    main()
