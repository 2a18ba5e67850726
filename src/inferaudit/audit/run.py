"""A verification run, end to end: freeze the protocol, probe, load, measure, check, seal.

    1. freeze: write the canonical RunSpec (``spec.json``) before the first request;
    2. preflight: the endpoint answers and lists the model (``meta.json`` keeps what it said);
    2b. client self-test (``RunOptions.self_test``): 2x the planned load against a local fast
       server (``selftest.py``); its result goes into ``meta.json``; refused if it cannot keep
       up (after the preflight, so a mistyped endpoint fails at once);
    3. checks before the run (conformance probes);
    4. the load: records appended to ``records.jsonl`` as each request finishes;
    5. checks after the run (record checks, extra phases such as the caching audit);
    6. summary: ``metrics.summarize`` over the records, plus the verdicts -> ``summary.json``;
    7. evidence: statement + DSSE envelope, appended to the ledger, inclusion proof saved.

A sweep is one run directory per point under a parent directory, plus ``sweep.json``.
The library never prints: ``RunObserver`` receives progress and the CLI renders it.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from inferaudit import __version__
from inferaudit.errors import ClientOverloadError, ConfigError
from inferaudit.home import data_dir, db_url
from inferaudit.judge.suite import plan_checks
from inferaudit.measure.load.client import check_endpoint
from inferaudit.measure.load.runner import run_load
from inferaudit.measure.metrics import summarize
from inferaudit.measure.protocol import RunSpec, canonical_bytes
from inferaudit.measure.records import read_records
from inferaudit.measure.rundir import META_FILE, RECORDS_FILE, SPEC_FILE, SUMMARY_FILE, SWEEP_FILE
from inferaudit.measure.selftest import run_self_test
from inferaudit.seal.evidence import file_sha256, seal_run
from inferaudit.seal.keys import DEFAULT_SIGNER_NAME, load_or_create_signer
from inferaudit.seal.ledger.store import open_ledger


class RunObserver(Protocol):
    """Progress sink: the CLI renders these; tests may collect them."""

    def phase(self, name: str, total: int | None) -> None: ...

    def record(self, record: dict[str, Any]) -> None: ...


class _Silent:
    def phase(self, name: str, total: int | None) -> None:
        pass

    def record(self, record: dict[str, Any]) -> None:
        pass


@dataclass(frozen=True)
class RunOptions:
    """What a run needs besides its protocol; none of it enters the evidence as a secret."""

    api_key: str | None = None
    checks: Sequence[str] | None = None  # None: every check that fits; (): none
    tokenizer: Path | None = None
    fingerprint: Path | None = None
    sign: bool = True
    data_dir: Path | None = None
    db_url: str | None = None
    self_test: bool = False  # the CLI turns it on; library callers (tests, demo) opt in


@dataclass
class RunOutcome:
    run_dir: Path
    summary: dict[str, Any]
    interrupted: bool = False
    evidence: dict[str, Any] = field(default_factory=dict)


def prepare_dir(run_dir: Path) -> None:
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"{run_dir}: output directory exists and is not empty")
    run_dir.mkdir(parents=True, exist_ok=True)


def write_json(path: Path, data: Any) -> None:
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")


def environment() -> dict[str, Any]:
    return {
        "tool": "inferaudit",
        "tool_version": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "argv0": os.path.basename(sys.argv[0]) if sys.argv else None,
    }


def execute(
    spec: RunSpec,
    run_dir: Path,
    options: RunOptions = RunOptions(),
    observer: RunObserver | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RunOutcome:
    """Run one measurement point under ``spec`` into ``run_dir`` (see the module docstring)."""
    obs = observer or _Silent()
    prepare_dir(run_dir)
    records_path = run_dir / RECORDS_FILE

    # (1): freeze the protocol, with the checks resolved, before anything is sent.
    suite = plan_checks(
        spec,
        selected=None if options.checks is None else list(options.checks),
        tokenizer=options.tokenizer,
        fingerprint=options.fingerprint,
        api_key=options.api_key,
    )
    spec = spec.model_copy(
        update={
            "checks": suite.names,
            "tokenizer_sha256": options.tokenizer and file_sha256(options.tokenizer),
            "fingerprint_sha256": options.fingerprint and file_sha256(options.fingerprint),
        }
    )
    suite.spec = spec
    (run_dir / SPEC_FILE).write_bytes(canonical_bytes(spec))

    # (2): preflight — one clear error when the endpoint cannot be used at all.
    meta: dict[str, Any] = {
        "environment": environment(),
        "started_wall": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "models": check_endpoint(spec.endpoint, options.api_key),
    }
    write_json(run_dir / META_FILE, meta)

    # (2b): can the client keep up with 2x this load? (DESIGN §6.2; the result is evidence)
    if options.self_test:
        obs.phase("client self-test (2x load, local server)", None)
        self_test = run_self_test(spec, should_stop=should_stop)
        meta["self_test"] = self_test.to_json()
        write_json(run_dir / META_FILE, meta)
        if not self_test.passed and not (should_stop is not None and should_stop()):
            raise ClientOverloadError(self_test.message())

    # (3): checks that probe before the load.
    verdicts = suite.before_run(records_path, obs)

    # (4): the load itself.
    total = None if spec.load.requests is None else spec.load.requests + spec.load.warmup
    obs.phase(f"load {spec.load.label()}", total)
    result = run_load(
        spec,
        records_path,
        api_key=options.api_key,
        injected=suite.injected_plans(),
        on_record=obs.record,
        should_stop=should_stop,
    )
    meta["load"] = result.to_json()
    write_json(run_dir / META_FILE, meta)

    # (5): checks over the records, and extra phases (e.g. the caching audit).
    if not result.interrupted:
        verdicts += suite.after_run(records_path, obs)

    # (6): the summary is a pure function of records and protocol.
    summary = summarize(read_records(records_path), spec)
    summary["checks"] = [v.to_json() for v in verdicts]
    write_json(run_dir / SUMMARY_FILE, summary)
    outcome = RunOutcome(run_dir=run_dir, summary=summary, interrupted=result.interrupted)

    # (7): evidence — statement, envelope, ledger entry, inclusion proof.
    if options.sign and not result.interrupted:
        outcome.evidence = seal(run_dir, options)
    return outcome


def seal(run_dir: Path, options: RunOptions) -> dict[str, Any]:
    """Sign the run directory's statement and append it to the ledger."""
    home = data_dir(options.data_dir)
    signer = load_or_create_signer(home, DEFAULT_SIGNER_NAME)
    with open_ledger(db_url(options.db_url, home), home) as ledger:
        return seal_run(run_dir, signer, ledger)


def execute_sweep(
    specs: Sequence[RunSpec],
    parent: Path,
    options: RunOptions = RunOptions(),
    observer: RunObserver | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[RunOutcome]:
    """One run per point (``point-000``, ...) and ``sweep.json`` listing them."""
    prepare_dir(parent)
    outcomes: list[RunOutcome] = []
    for i, spec in enumerate(specs):
        outcome = execute(spec, parent / f"point-{i:03d}", options, observer, should_stop)
        outcomes.append(outcome)
        write_json(
            parent / SWEEP_FILE,
            {"points": [_sweep_row(o, s) for o, s in zip(outcomes, specs, strict=False)]},
        )
        if outcome.interrupted:
            break
    return outcomes


def _sweep_row(outcome: RunOutcome, spec: RunSpec) -> dict[str, Any]:
    s = outcome.summary
    return {
        "dir": outcome.run_dir.name,
        "load": spec.load.model_dump(mode="json"),
        "request_throughput_rps": s.get("request_throughput_rps"),
        "output_throughput_tok_s": s.get("output_throughput_tok_s"),
        "goodput_rps": s.get("goodput_rps"),
        "ttft_p50_ms": (s.get("ttft_ms") or {}).get("p50"),
        "ttft_p99_ms": (s.get("ttft_ms") or {}).get("p99"),
        "tpot_p50_ms": (s.get("tpot_ms") or {}).get("p50"),
        "valid": s.get("valid"),
    }
