"""Log-service benchmark (issue 11), run by hand against PostgreSQL; prints figures.

    source scripts/start-postgres && .venv/bin/python bench/service.py
    .venv/bin/python bench/service.py --pg postgresql+psycopg://postgres:postgres@127.0.0.1/db \
        --witnesses 1 --submitters 8 --per-submitter 500 --entries 100000

Every service is a real ``python -m inferaudit serve`` subprocess on a free 127.0.0.1 port over
a fresh PostgreSQL schema (dropped afterwards), with a fresh data directory; the auditor key and
one submit token per submitter are made through the CLI (``inferaudit log auditor add``, ``log
token add``) before it starts. The per-token rate limit is raised (``--rate``/``--burst``
1,000,000) so that it measures the service, not the limiter. Client and server share this
machine's cores.

Measures:
  1. submissions: S submitters (threads, one httpx client and one token each) POST their P
     distinct envelopes (prepared before timing: one sealed run's statement, its records.jsonl
     digest varied per envelope, signed by the registered auditor key) one after another, as
     fast as the server answers. submissions/s = S*P / wall time from the common start to the
     last answer; latency = one POST, from send to parsed answer. Then: the indices are exactly
     0..S*P-1 (gaps = missing ones, duplicates = indices given twice); 50 envelopes submitted
     again keep their index; every tlog-proof (also the resubmissions') is checked offline
     (the checkpoint's log signature, its index, the envelope's leaf hash to the root); every
     returned checkpoint is consistent with the next larger one (``/api/v1/proof/consistency``
     verified against both signed roots; one size with two roots is a fork) and the final
     ``/checkpoint`` reaches each of them. Reference: 1 submitter x P on a fresh service
     (ratio printed). With ``--witnesses N``: the same again with N ``inferaudit witness
     serve`` processes asked for every checkpoint (quorum N; cosignatures counted).
  2. dashboard: a ledger of ``--entries`` entries (minimal v2 run envelopes appended in batches
     of 1,000 on the service's database before it starts), the seed claims (POST
     /api/v1/claims) and 2 run bundles (``seal_run_remote`` + upload, verified by the service).
     After 3 warm-up GETs, 100 GETs of each page over one keep-alive client; p50/p95 per page
     next to the same at ``--reference-entries`` and the p95 ratio.

Percentiles are nearest-rank: p-th = the ceil(p*n)-th smallest of n samples.
"""

from __future__ import annotations

import argparse
import base64
import collections
import hashlib
import itertools
import math
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy.engine import make_url

from inferaudit.errors import LedgerError
from inferaudit.home import make_engine
from inferaudit.intent.claims import claim_statement, seed_claims
from inferaudit.judge.suite import recheck
from inferaudit.measure.metrics import summarize
from inferaudit.measure.protocol import SLO, Endpoint, Load, RunSpec, canonical_bytes
from inferaudit.measure.records import Record, write_records
from inferaudit.seal.evidence import PREDICATE_TYPE_V2, STATEMENT_TYPE, build_statement
from inferaudit.seal.keys import (
    DEFAULT_SIGNER_NAME,
    Signer,
    Verifier,
    load_or_create_signer,
)
from inferaudit.seal.ledger import merkle
from inferaudit.seal.ledger.note import (
    open_checkpoint,
    parse_tlog_proof,
    split_note,
    verify_cosignature,
)
from inferaudit.seal.ledger.store import Ledger
from inferaudit.seal.publish import publish, publish_many
from inferaudit.seal.remote import RemoteLog, seal_run_remote
from service_procs import LIMIT, Log, pg_schema, prepare_log, serve, witness

PG_ENV = "INFERAUDIT_TEST_PG_URL"
MS = 1_000_000
CHECKS = ("output-length", "first-token", "fluidity", "errors")
RESUBMIT = 50
PAGE_GETS, WARM_GETS = 100, 3


# -- evidence ------------------------------------------------------------------------------------


def make_run(run_dir: Path, n: int, seed: int) -> Path:
    """A run directory as `run` writes it (v2 layout), from hand-made plausible records."""
    rng = random.Random(seed)
    spec = RunSpec(
        endpoint=Endpoint(base_url="http://127.0.0.1:9/v1", model="bench-model"),
        load=Load(rate=20.0, requests=n),
        slo=SLO(bounds_ms={"ttft_p99": 400.0}),
        seed=seed,
        label=f"bench-service-{seed}",
        checks=CHECKS,
    )
    records = []
    for i in range(n):
        sent = i * 50 * MS + rng.randrange(0, 2 * MS)
        times = [sent + rng.randrange(80, 300) * MS]
        for _ in range(15):
            times.append(times[-1] + rng.randrange(15_000, 25_000) * 1000)
        records.append(
            Record(
                id=i, scheduled_ns=i * 50 * MS, sent_ns=sent, first_chunk_ns=times[0],
                first_content_ns=times[0], chunk_ns=times, chunk_chars=[4] * 16,
                done_ns=times[-1] + MS, status=200, finish_reason="length", model="bench-model",
                usage_prompt_tokens=32, usage_completion_tokens=16, content_chunks=16,
                output_chars=64, prompt_sha256=f"{i:064x}", output_sha256=f"{i + 1:064x}",
                input_tokens=32, max_tokens=16, output_text="word" * 16,
            )
        )  # fmt: skip
    run_dir.mkdir(parents=True)
    (run_dir / "spec.json").write_bytes(canonical_bytes(spec))
    write_records(run_dir / "records.jsonl", records)
    verdicts = [v.to_json() for v in recheck(records, spec, names=CHECKS, health=[])]
    (run_dir / "verdicts.json").write_bytes(orjson.dumps(verdicts))
    (run_dir / "summary.json").write_bytes(orjson.dumps(summarize(records, spec).to_json()))
    meta = {"models": {"object": "list", "data": [{"id": "bench-model", "object": "model"}]}}
    (run_dir / "meta.json").write_bytes(orjson.dumps(meta))
    return run_dir


def _digest(tag: str, i: int) -> dict[str, str]:
    return {"sha256": hashlib.sha256(f"{tag}/{i}".encode()).hexdigest()}


def submission_envelopes(run_dir: Path, signer: Signer, n: int) -> list[bytes]:
    """``n`` distinct envelopes of the run's statement: records.jsonl's digest varied."""
    base = build_statement(run_dir)
    statements = []
    for i in range(n):
        subjects = [
            {"name": s["name"], "digest": _digest("records", i)}
            if s["name"] == "records.jsonl"
            else s
            for s in base["subject"]
        ]
        statements.append({**base, "subject": subjects})
    return [p.envelope for p in publish_many(statements, signer, None)]


def filler_envelopes(spec: dict[str, Any], signer: Signer, n: int) -> list[bytes]:
    """``n`` distinct minimal v2 run envelopes (the four required subjects, no summary)."""
    names = ("records.jsonl", "spec.json", "summary.json", "verdicts.json")
    statements = [
        {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": f, "digest": _digest(f, i)} for f in names],
            "predicateType": PREDICATE_TYPE_V2,
            "predicate": {"spec": spec, "summary": {}, "verdicts": []},
        }
        for i in range(n)
    ]
    return [p.envelope for p in publish_many(statements, signer, None)]


# -- submissions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    envelope: bytes
    index: int
    checkpoint: str
    proof: str
    latency_s: float


def submit(client: httpx.Client, envelope: bytes) -> Answer:
    t = time.perf_counter()
    r = client.post("/api/v1/evidence", content=envelope)
    if r.status_code != 200:
        raise RuntimeError(f"POST /api/v1/evidence: HTTP {r.status_code}: {r.text[:300]}")
    body = orjson.loads(r.content)
    latency = time.perf_counter() - t
    return Answer(envelope, body["index"], body["checkpoint"], body["proof"], latency)


def client(url: str, token: str) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    return httpx.Client(base_url=url, headers=headers, timeout=300.0)


def submit_all(
    url: str, tokens: Sequence[str], work: Sequence[Sequence[bytes]]
) -> tuple[list[Answer], float]:
    """Each submitter (a thread, its own client and token) sends its envelopes in turn;
    (every answer, wall seconds from the common start to the last answer)."""
    answers: list[list[Answer]] = [[] for _ in work]
    failures: list[BaseException] = []
    start = threading.Barrier(len(work) + 1)

    def submitter(k: int) -> None:
        with client(url, tokens[k]) as c:
            c.get("/checkpoint")  # connect before the clock starts
            start.wait()
            try:
                for envelope in work[k]:
                    answers[k].append(submit(c, envelope))
            except BaseException as exc:  # reported below: a lost error is a wrong number
                failures.append(exc)

    threads = [threading.Thread(target=submitter, args=(k,)) for k in range(len(work))]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if failures:
        raise RuntimeError(f"{len(failures)} submitter(s) failed; first: {failures[0]}")
    return [a for per in answers for a in per], wall


@dataclass(frozen=True)
class Checked:
    gaps: int
    duplicates: int
    forks: int
    proofs_ok: int
    proofs: int
    same_again: int
    again: int
    checkpoints: int
    final_size: int
    cosigned: int  # answers whose checkpoint carries a valid cosignature of every witness


def proof_ok(a: Answer, log: Verifier) -> tuple[bool, int, bytes]:
    """Whether the answer's tlog-proof verifies offline; (ok, checkpoint size, its root)."""
    try:
        proof = parse_tlog_proof(a.proof)
        cp, _ = open_checkpoint(proof.checkpoint, [log])
        leaf = merkle.hash_leaf(a.envelope)
        merkle.verify_inclusion(proof.index, cp.size, leaf, list(proof.hashes), cp.root)
    except LedgerError:
        return False, -1, b""
    return proof.index == a.index and proof.checkpoint == a.checkpoint, cp.size, cp.root


def consistent(c: httpx.Client, old: int, new: int, roots: tuple[bytes, bytes]) -> bool:
    r = c.get("/api/v1/proof/consistency", params={"old": old, "size": new})
    if r.status_code != 200:
        return False
    hashes = [base64.b64decode(h, validate=True) for h in orjson.loads(r.content)["hashes"]]
    try:
        merkle.verify_consistency(old, new, hashes, roots[0], roots[1])
    except LedgerError:
        return False
    return True


def check(
    url: str, log: Log, answers: Sequence[Answer], before: int, witnesses: Sequence[Verifier]
) -> Checked:
    """The checks of the module docstring (1)."""
    rng = random.Random(7)
    sample = rng.sample(list(answers), min(RESUBMIT, len(answers)))
    with client(url, log.tokens[0]) as c:
        again = [submit(c, a.envelope) for a in sample]
        same = sum(b.index == a.index for a, b in zip(sample, again, strict=True))
        everything = [*answers, *again]
        indices = collections.Counter(a.index for a in answers)
        expected = set(range(before, before + len(answers)))
        roots: dict[int, set[bytes]] = collections.defaultdict(set)
        ok = 0
        for a in everything:
            good, size, root = proof_ok(a, log.key)
            ok += good
            if good:
                roots[size].add(root)
        forks = sum(len(r) - 1 for r in roots.values())
        sizes = sorted(roots)
        one = {s: next(iter(roots[s])) for s in sizes}
        for old, new in itertools.pairwise(sizes):
            forks += not consistent(c, old, new, (one[old], one[new]))
        final, _ = open_checkpoint(c.get("/checkpoint").text, [log.key])
        for s in sizes:
            if s == final.size:
                forks += one[s] != final.root
            else:
                forks += s > final.size or not consistent(c, s, final.size, (one[s], final.root))
    cosigned = sum(_cosigned(a.checkpoint, witnesses) for a in answers) if witnesses else 0
    return Checked(
        gaps=len(expected - set(indices)) + len(set(indices) - expected),
        duplicates=sum(n - 1 for n in indices.values()),
        forks=forks,
        proofs_ok=ok,
        proofs=len(everything),
        same_again=same,
        again=len(again),
        checkpoints=len(sizes),
        final_size=final.size,
        cosigned=cosigned,
    )


def _cosigned(note: str, witnesses: Sequence[Verifier]) -> bool:
    body, sigs = split_note(note)
    by_key = {(w.name, w.key_hash): w for w in witnesses}
    good = {
        key.name
        for s in sigs
        if (key := by_key.get((s.name, s.key_hash))) is not None
        and verify_cosignature(body, s, key) is not None
    }
    return len(good) == len(witnesses)


def pct(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[max(0, math.ceil(q * len(s)) - 1)]


@dataclass(frozen=True)
class Figures:
    rate: float
    p50_ms: float
    p99_ms: float
    line: str


def bench_submissions(
    pg: str, tmp: Path, auditor: Signer, envelopes: Sequence[bytes], submitters: int,
    per: int, witnesses: int,
) -> Figures:  # fmt: skip
    """One fresh service (and ``witnesses`` witnesses): submit, check, format the line."""
    with pg_schema(pg) as db, ExitStack() as stack:
        base = Path(tempfile.mkdtemp(dir=tmp))
        log = prepare_log(base / "service", db, auditor.verifier(), submitters)
        keys: list[Verifier] = []
        extra: list[str] = []
        for w in range(witnesses):
            url, key = stack.enter_context(witness(base / f"witness{w}", f"w{w}", log.key))
            keys.append(key)
            extra += ["--witness", f"{url}={key.text()}"]
        url = stack.enter_context(serve(log.data, db, *extra))
        work = [envelopes[k * per : (k + 1) * per] for k in range(submitters)]
        answers, wall = submit_all(url, log.tokens, work)
        got = check(url, log, answers, 0, keys)
    lat = [a.latency_s for a in answers]
    n = len(answers)
    rate, p50, p99 = n / wall, pct(lat, 0.50) * 1e3, pct(lat, 0.99) * 1e3
    cos = f", {got.cosigned}/{n} answers cosigned by all {witnesses}" if witnesses else ""
    line = (
        f"{submitters} x {per:,} = {n:,} in {wall:.1f} s: {rate:,.1f} submissions/s, latency "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms; gaps {got.gaps}, duplicates {got.duplicates}, "
        f"forks {got.forks}, proofs {got.proofs_ok}/{got.proofs} verified; "
        f"{got.same_again}/{got.again} resubmissions kept their index; {got.checkpoints:,} "
        f"checkpoints consistent pairwise and with the final /checkpoint (size "
        f"{got.final_size:,}){cos}"
    )
    if got.gaps or got.duplicates or got.forks or got.proofs_ok != got.proofs:
        line += "  <-- CHECK FAILED"
    if got.same_again != got.again or (witnesses and got.cosigned != n):
        line += "  <-- CHECK FAILED"
    return Figures(rate, p50, p99, line)


# -- dashboard -----------------------------------------------------------------------------------


PAGES = ("/", "/ledger", "/ledger?entry=<random>", "/claims/<id>", "/runs/<index>")


def bench_dashboard(
    pg: str, tmp: Path, auditor: Signer, filler: Sequence[bytes], runs: Sequence[Path]
) -> dict[str, list[float]]:
    """A service over a ledger of ``len(filler)`` entries, the seed claims and the runs'
    bundles; per page, the seconds of each of 100 warm GETs."""
    with pg_schema(pg) as db:
        base = Path(tempfile.mkdtemp(dir=tmp))
        log = prepare_log(base / "service", db, auditor.verifier(), 1)
        t = time.perf_counter()
        with Ledger(make_engine(db)) as ledger:
            for i in range(0, len(filler), 1000):
                ledger.append(filler[i : i + 1000])
        fill = time.perf_counter() - t
        print(f"  ledger of {len(filler):,} filler entries appended in {fill:.1f} s")
        with serve(log.data, db) as url:
            remote = RemoteLog(url, log.tokens[0], timeout_s=300.0)
            claims = seed_claims()
            for claim in claims:
                remote.submit_claim(publish(claim_statement(claim), auditor, None).envelope)
            indices = []
            for k, run in enumerate(runs):
                copy = base / f"run{k}"
                copy.mkdir()
                for f in run.iterdir():
                    (copy / f.name).write_bytes(f.read_bytes())
                index = int(str(seal_run_remote(copy, auditor, remote)["ledger_index"]))
                up = remote.upload_bundle(index, copy)
                if up.status != "verified":
                    raise RuntimeError(f"bundle {index}: {up.status}: {up.reason}")
                indices.append(index)
            size = len(filler) + len(claims) + len(runs)
            rng = random.Random(11)
            paths: dict[str, Callable[[], str]] = {
                "/": lambda: "/",
                "/ledger": lambda: "/ledger",
                "/ledger?entry=<random>": lambda: f"/ledger?entry={rng.randrange(size)}",
                "/claims/<id>": lambda: f"/claims/{rng.choice(claims).claim_id}",
                "/runs/<index>": lambda: f"/runs/{rng.choice(indices)}",
            }
            times: dict[str, list[float]] = {}
            with httpx.Client(base_url=url, timeout=300.0) as c:
                for page, path in paths.items():
                    for _ in range(WARM_GETS):
                        _get(c, path())
                    times[page] = [_get(c, path()) for _ in range(PAGE_GETS)]
    return times


def _get(c: httpx.Client, path: str) -> float:
    t = time.perf_counter()
    r = c.get(path)
    r.read()
    elapsed = time.perf_counter() - t
    if r.status_code != 200:
        raise RuntimeError(f"GET {path}: HTTP {r.status_code}")
    return elapsed


# -- main ----------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--pg", default=os.environ.get(PG_ENV), help=f"PostgreSQL URL (${PG_ENV})")
    ap.add_argument("--submitters", type=int, default=8)
    ap.add_argument("--per-submitter", type=int, default=500)
    ap.add_argument("--witnesses", type=int, default=0, help="also run with N witnesses")
    ap.add_argument("--entries", type=int, default=100_000, help="ledger size for the dashboard")
    ap.add_argument("--reference-entries", type=int, default=1_000)
    ap.add_argument("--skip-dashboard", action="store_true")
    args = ap.parse_args()
    if not args.pg:
        raise SystemExit("no PostgreSQL: `source scripts/start-postgres` or give --pg URL")
    shown = make_url(args.pg).render_as_string(hide_password=True)
    print(f"PostgreSQL {shown}, a fresh schema per service; per-token rate limit {LIMIT}/s")

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        auditor = load_or_create_signer(tmp / "auditor", DEFAULT_SIGNER_NAME)
        runs = [make_run(tmp / "runs" / f"r{k}", 40 + 20 * k, seed=k + 1) for k in range(2)]
        total = args.submitters * args.per_submitter
        t = time.perf_counter()
        envelopes = submission_envelopes(runs[0], auditor, total)
        print(
            f"prepared {total:,} distinct envelopes ({len(envelopes[0]):,} B each) "
            f"in {time.perf_counter() - t:.1f} s"
        )
        ref = bench_submissions(args.pg, tmp, auditor, envelopes, 1, args.per_submitter, 0)
        print(f"reference, 0 witnesses: {ref.line}")
        main_run = bench_submissions(
            args.pg, tmp, auditor, envelopes, args.submitters, args.per_submitter, 0
        )
        print(f"submissions, 0 witnesses: {main_run.line}")
        print(
            f"ratio {args.submitters} submitters / 1: throughput {main_run.rate / ref.rate:.2f}x, "
            f"p50 {main_run.p50_ms / ref.p50_ms:.2f}x, p99 {main_run.p99_ms / ref.p99_ms:.2f}x"
        )
        if args.witnesses:
            wit = bench_submissions(
                args.pg, tmp, auditor, envelopes, args.submitters, args.per_submitter,
                args.witnesses,
            )  # fmt: skip
            print(f"submissions, {args.witnesses} witness(es): {wit.line}")
            print(
                f"ratio {args.witnesses} witness(es) / 0: throughput "
                f"{wit.rate / main_run.rate:.2f}x, p99 {wit.p99_ms / main_run.p99_ms:.2f}x"
            )
        if args.skip_dashboard:
            return
        t = time.perf_counter()
        spec = orjson.loads((runs[0] / "spec.json").read_bytes())
        filler = filler_envelopes(spec, auditor, max(args.entries, args.reference_entries))
        print(
            f"prepared {len(filler):,} filler entries ({len(filler[0]):,} B each) "
            f"in {time.perf_counter() - t:.1f} s"
        )
        small = bench_dashboard(args.pg, tmp, auditor, filler[: args.reference_entries], runs)
        big = bench_dashboard(args.pg, tmp, auditor, filler[: args.entries], runs)
        a, b = f"{args.reference_entries:,}", f"{args.entries:,}"
        print(f"dashboard, warm, {PAGE_GETS} GETs per page (+ seed claims, 2 run bundles):")
        print(
            f"  {'page':<24} {a + ' p50':>12} {'p95':>9} {b + ' p50':>14} {'p95':>9} {'p95 x':>7}"
        )
        for page in PAGES:
            s, g = small[page], big[page]
            print(
                f"  {page:<24} {pct(s, 0.5) * 1e3:>9.1f} ms {pct(s, 0.95) * 1e3:>6.1f} ms "
                f"{pct(g, 0.5) * 1e3:>11.1f} ms {pct(g, 0.95) * 1e3:>6.1f} ms "
                f"{pct(g, 0.95) / pct(s, 0.95):>6.2f}x"
            )


if __name__ == "__main__":
    main()
