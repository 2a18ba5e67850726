"""A verification run, end to end: freeze the protocol, probe, load, measure, check, seal.

    1. freeze: write the canonical RunSpec (``spec.json``) before the first request;
    2. preflight: the endpoint answers and lists the model (``meta.json`` keeps what it said);
    2b. client self-test (``RunOptions.self_test``): 2x the planned load against a local fast
       server (``selftest.py``), judged against the error budget (``measure.budget``) of
       ``RunOptions.expected_ttft_ms`` when the caller knows the endpoint's TTFT, else reported
       (the smallest TTFT it can carry) and left to the run's own validity rule; its result goes
       into ``meta.json``; refused if it cannot keep up (after the preflight, so a mistyped
       endpoint fails at once, and before any request reaches the endpoint);
    3. checks before the run (conformance probes);
    4. the load: records appended to ``records.jsonl`` as each request finishes; around it
       only, the side endpoints are scraped (``audit.sidecars``): the server's ``/metrics``
       (``RunOptions.server_metrics``; "auto": the endpoint's own when it answers) into
       ``server-metrics.jsonl`` and a telemetry agent (``RunOptions.telemetry``) into
       ``telemetry.jsonl``, before, every second during and after the load; ``meta.json``
       records ``server_metrics`` (and ``telemetry``) ``{"url", "samples", "failed"}``.
       What they report is recorded, never measured;
    5. checks after the run (record checks, extra phases such as the caching audit);
    6. summary: ``metrics.summarize`` over the records -> ``summary.json``; the verdicts ->
       ``verdicts.json`` (contract C2: the statement binds both);
    7. evidence: statement + DSSE envelope, appended to the ledger, inclusion proof saved; with
       ``RunOptions.publish`` (a log service URL), the envelope signed here goes to that remote
       log instead (``seal.remote``), its index and tlog-proof against the remote checkpoint
       are written the same way, and then, every evidence file being final, the run directory
       is uploaded to the service as its bundle.

``problems(outcome)`` states when a run does not pass (the CLI's exit status, the demo's).

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
from typing import Any, Literal, Protocol

import orjson

from inferaudit import __version__
from inferaudit.audit.sidecars import Parse, check_options, start_sidecars
from inferaudit.errors import ClientOverloadError, ConfigError
from inferaudit.home import data_dir, db_url
from inferaudit.judge.suite import plan_checks
from inferaudit.judge.verdict import Outcome, Verdict
from inferaudit.measure.health import read_health
from inferaudit.measure.load.client import check_endpoint
from inferaudit.measure.load.preflight import api_key_for
from inferaudit.measure.load.ray_backend import RayBackend, clock_problem
from inferaudit.measure.load.runner import run_load
from inferaudit.measure.metrics import summarize
from inferaudit.measure.planner import Planner
from inferaudit.measure.probes.send import model_listed, send_phase
from inferaudit.measure.probes.top_up import top_up
from inferaudit.measure.protocol import RunSpec, Sampling, canonical_bytes
from inferaudit.measure.record_store import open_records
from inferaudit.measure.records import Record, iter_records
from inferaudit.measure.rundir import (
    HEALTH_FILE,
    META_FILE,
    RECORDS_FILE,
    SERVER_METRICS_FILE,
    SPEC_FILE,
    SUMMARY_FILE,
    SWEEP_FILE,
    TELEMETRY_FILE,
    VERDICTS_FILE,
    file_sha256,
)
from inferaudit.measure.scrapes import read_telemetry
from inferaudit.measure.selftest import run_node_self_tests, run_self_test
from inferaudit.measure.server_metrics import read_samples
from inferaudit.measure.summary import Summary
from inferaudit.measure.workload import commit_seed, fresh_seed, write_seed
from inferaudit.seal.keys import DEFAULT_SIGNER_NAME, load_or_create_signer
from inferaudit.seal.ledger.store import open_ledger
from inferaudit.seal.publish import seal_run
from inferaudit.seal.remote import RemoteLog, seal_run_remote


class RunObserver(Protocol):
    """Progress sink: the CLI renders these; tests may collect them."""

    def phase(self, name: str, total: int | None) -> None: ...

    def record(self, record: Record) -> None: ...


class _Silent:
    def phase(self, name: str, total: int | None) -> None:
        pass

    def record(self, record: Record) -> None:
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
    # The endpoint's TTFT p50 (ms) when known before the run (e.g. from an earlier run): the
    # self-test then judges its lag against that figure's error budget.
    expected_ttft_ms: float | None = None
    # The server's Prometheus /metrics, scraped around the load: a URL; "auto": the endpoint's
    # base without /v1 plus /metrics when it answers with Prometheus text; None: off. The CLI
    # and the demo use "auto"; library callers (tests) opt in.
    server_metrics: str | Literal["auto"] | None = None
    # An `inferaudit agent` URL (its /samples), scraped around the load; None: off.
    # telemetry_parse reads its answers (None: measure.scrapes.telemetry_reading, the agent's).
    telemetry: str | None = None
    telemetry_parse: Parse | None = None
    # A log service (``inferaudit serve``) to seal into instead of the local ledger, and the
    # bearer token for it (``seal.remote.read_token``; never shown in a repr).
    publish: str | None = None
    publish_token: str | None = field(default=None, repr=False)
    # Run the load on a Ray cluster (``--backend ray``); None: local worker processes.
    backend: RayBackend | None = None


@dataclass
class RunOutcome:
    run_dir: Path
    spec: RunSpec
    summary: Summary
    verdicts: tuple[Verdict, ...] = ()
    interrupted: bool = False
    evidence: dict[str, Any] = field(default_factory=dict)
    # the load's own reasons the run is invalid (Ray: a lost client node, clock uncertainty)
    load_problems: tuple[str, ...] = ()


def problems(outcome: RunOutcome) -> list[str]:
    """Why a run does not pass, one line each; empty when it passes. The rule:

    a run fails when it was interrupted, when it is invalid (the summary's reasons), when an
    integrity check failed, or when a measured request failed and the protocol has an SLO (a
    failed request violates every bound) or the errors check ran. Without an SLO and without
    the errors check, failed requests are reported but judged by nothing.
    """
    s = outcome.summary
    out: list[str] = []
    if outcome.interrupted:
        out.append("interrupted: finished requests are kept in records.jsonl")
    out.extend(f"invalid: {why}" for why in s.invalid_reasons)
    out.extend(f"invalid: {why}" for why in outcome.load_problems)
    out.extend(
        f"check {v.check} failed: {v.summary}"
        for v in outcome.verdicts
        if v.verdict == Outcome.failed
    )
    if s.failed and failures_judged(outcome.spec):
        by = "the SLO" if outcome.spec.slo.bounds_ms else "the errors check"
        out.append(f"{s.failed} of {s.requests} measured requests failed ({by} counts them)")
    return out


def failures_judged(spec: RunSpec) -> bool:
    """Whether failed measured requests fail the run: an SLO is set or the errors check ran."""
    return bool(spec.slo.bounds_ms) or "errors" in spec.checks


def prepare_dir(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: exists and is not a directory; give a directory for --out")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"{run_dir}: output directory exists and is not empty")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except (NotADirectoryError, FileExistsError):
        raise ConfigError(f"{run_dir}: a parent of it is a file, not a directory") from None


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


def run_verification(
    spec: RunSpec,
    run_dir: Path,
    options: RunOptions = RunOptions(),
    observer: RunObserver | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RunOutcome:
    """Run one measurement point under ``spec`` into ``run_dir`` (see the module docstring)."""
    obs = observer or _Silent()
    check_options(options.server_metrics, options.telemetry)
    if options.publish is not None:  # reachable before anything is measured
        if not options.sign:
            raise ConfigError("--publish needs signed evidence: drop --no-sign")
        _remote(options).checkpoint()
    prepare_dir(run_dir)
    records_path = run_dir / RECORDS_FILE

    # (1): freeze the protocol, with the checks resolved, before anything is sent.
    suite = plan_checks(
        spec,
        selected=None if options.checks is None else list(options.checks),
        tokenizer=options.tokenizer,
        fingerprint=options.fingerprint,
    )
    spec = spec.model_copy(
        update={
            "checks": suite.names,
            "tokenizer_sha256": options.tokenizer and file_sha256(options.tokenizer),
            "fingerprint_sha256": options.fingerprint and file_sha256(options.fingerprint),
            "sampling": spec.sampling or Sampling(),  # one body shape for every request
        }
    )
    # A fresh secret seed (unless the caller fixed one): spec.json holds its commitment only;
    # the audit traffic's positions are drawn from it (TRAFFIC, contract C5).
    secret = spec.secret_seed or fresh_seed()
    spec = commit_seed(spec, secret)
    # the run's planner: its dataset or trace read once, the tokenizer for exact prompt lengths
    planner = Planner.from_spec(spec, tokenizer=suite.tokenizer)
    traffic = suite.traffic(spec, planner)
    (run_dir / SPEC_FILE).write_bytes(canonical_bytes(spec))

    # (2): preflight — one clear error when the endpoint cannot be used at all.
    meta: dict[str, Any] = {
        "environment": environment(),
        "started_wall": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "models": check_endpoint(spec.endpoint, options.api_key),
    }
    write_json(run_dir / META_FILE, meta)

    # (2b): can the client keep up with 2x this load within the error budget? (DESIGN §6.2;
    # the result is evidence)
    if options.self_test and options.backend is not None:  # each Ray node, at its share
        obs.phase("client self-test per Ray node (2x its share, a server on each node)", None)
        backend = options.backend
        nodes = run_node_self_tests(spec, backend.workers or spec.workers, backend.address,
                                    figure_ms=options.expected_ttft_ms)  # fmt: skip
        meta["self_test"] = {"per_node": [{"node_id": n, **r.to_json()} for n, r in nodes]}
        write_json(run_dir / META_FILE, meta)
        for node, r in nodes:
            if not r.passed and not (should_stop is not None and should_stop()):
                raise ClientOverloadError(f"Ray node {node[:12]}: {r.message()}")
    elif options.self_test:
        obs.phase("client self-test (2x load, local server)", None)
        self_test = run_self_test(spec, figure_ms=options.expected_ttft_ms, should_stop=should_stop)
        meta["self_test"] = self_test.to_json()
        write_json(run_dir / META_FILE, meta)
        if not self_test.passed and not (should_stop is not None and should_stop()):
            raise ClientOverloadError(self_test.message())

    # (3): checks that probe before the load (shaped like load requests).
    listed = model_listed(spec, options.api_key)
    if traffic.before:
        obs.phase("checks: conformance probes", len(traffic.before))
        send_phase(spec, traffic.before, api_key=options.api_key, concurrency=1,
                   records_path=records_path, on_record=obs.record)  # fmt: skip

    # (4): the load itself.
    total = None if spec.load.requests is None else spec.load.requests + spec.load.warmup
    obs.phase(f"load {spec.load.label()}", total)
    sidecars = start_sidecars(
        spec.endpoint.base_url,
        run_dir,
        server_metrics=options.server_metrics,
        telemetry=options.telemetry,
        telemetry_parse=options.telemetry_parse,
        api_key=options.api_key if options.api_key is not None else api_key_for(spec.endpoint),
        server_file=SERVER_METRICS_FILE,
        telemetry_file=TELEMETRY_FILE,
    )  # the "before" samples, right before the load
    try:
        result = run_load(
            spec,
            records_path,
            api_key=options.api_key,
            planner=planner.with_audit(traffic.injected, traffic.stream),
            on_record=obs.record,
            should_stop=should_stop,
            health_path=run_dir / HEALTH_FILE,
            backend=options.backend,
        )
    except BaseException:
        sidecars.close()  # their spools stay; no sample file without the epoch
        raise
    sidecars.after()  # the "after" samples, before the audit block
    meta.update(sidecars.finish(result.epoch_ns))
    meta["load"] = result.to_json()
    write_json(run_dir / META_FILE, meta)

    # (5): the supplementary audit block (a short run's repeats, shared-prefix prompts and
    # replays, interleaved with fresh prompts; for a closed loop run for a duration, only what
    # its load fell short of); then the seed is revealed; then every verdict.
    verdicts: list[Verdict] = []
    after, label = traffic.after, "checks: audit block"
    if not result.interrupted and traffic.stream is not None:
        extra = top_up(spec, traffic, iter_records(records_path), planner=planner)  # one pass
        meta["audit_top_up"] = extra.to_json()
        write_json(run_dir / META_FILE, meta)
        after = extra.plans
        if after:
            label = f"checks: audit block (the load fell short: {extra.line()})"
    if not result.interrupted and after:
        obs.phase(label, len(after))
        send_phase(spec, after, api_key=options.api_key,
                   concurrency=traffic.concurrency, records_path=records_path,
                   on_record=obs.record, health_path=run_dir / HEALTH_FILE)  # fmt: skip
    write_seed(run_dir, secret)  # after the last request (contract C5)
    # (6): the summary is a pure function of records and protocol (plus what the operator's
    # telemetry reported, kept apart in its ``reported`` block); then the verdicts beside it.
    telemetry_path = run_dir / TELEMETRY_FILE
    telemetry = read_telemetry(telemetry_path) if telemetry_path.exists() else None
    summary = summarize(records_path, spec, telemetry)
    if not result.interrupted:
        verdicts = suite.judge(
            open_records(records_path),  # memory bounded, however long the run (record_store)
            spec,
            model_listed=listed,
            # the noise-aware timing rules where the run recorded client health (C3)
            health=read_health(run_dir / HEALTH_FILE) if (run_dir / HEALTH_FILE).exists() else None,
            # the server's own counters, when its /metrics was scraped (reported, compared)
            server=read_samples(run_dir / SERVER_METRICS_FILE)
            if (run_dir / SERVER_METRICS_FILE).exists()
            else None,
            summary_reasons=summary.invalid_reasons,  # its lag rule, not summarized again
        )
    load_problems: tuple[str, ...] = ()
    if result.ray is not None:  # a Ray run: its losses and clocks can void it (meta.json says)
        figure = summary.ttft_from_sent_ms.p50 if summary.ttft_from_sent_ms else None
        clocks = clock_problem(result.ray, spec.error_budget, figure)
        load_problems = (*result.ray.lost, *([clocks] if clocks else []))
        meta["load_problems"] = list(load_problems)
        write_json(run_dir / META_FILE, meta)
    write_json(run_dir / SUMMARY_FILE, summary.to_json())
    write_json(run_dir / VERDICTS_FILE, [v.to_json() for v in verdicts])
    outcome = RunOutcome(
        run_dir=run_dir,
        spec=spec,
        summary=summary,
        verdicts=tuple(verdicts),
        interrupted=result.interrupted,
        load_problems=load_problems,
    )

    # (7): evidence — statement, envelope, ledger entry, inclusion proof.
    if options.sign and not result.interrupted:
        outcome.evidence = seal(run_dir, options)
    return outcome


def seal(run_dir: Path, options: RunOptions) -> dict[str, Any]:
    """Publish the run's statement (``seal.publish``: sign, append, checkpoint, proof) and
    write its evidence files; returns what was written (keys, ledger index, origin, log key).

    With ``options.publish``: signed here, logged by the remote service, then the run
    directory is uploaded as the entry's bundle (``bundle``: the service's verification)."""
    home = data_dir(options.data_dir)
    signer = load_or_create_signer(home, DEFAULT_SIGNER_NAME)
    if options.publish is not None:
        remote = _remote(options)
        out = seal_run_remote(run_dir, signer, remote)
        index = out["ledger_index"]
        assert isinstance(index, int), "a remote seal names its index: the code has a bug"
        bundle = remote.upload_bundle(index, run_dir)
        out["bundle"] = bundle.status + (f" ({bundle.reason})" if bundle.reason else "")
        return out
    with open_ledger(db_url(options.db_url, home), home) as ledger:
        return seal_run(run_dir, signer, ledger)


def _remote(options: RunOptions) -> RemoteLog:
    assert options.publish is not None
    return RemoteLog(options.publish, options.publish_token)


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
        outcome = run_verification(spec, parent / f"point-{i:03d}", options, observer, should_stop)
        outcomes.append(outcome)
        write_json(parent / SWEEP_FILE, {"points": [_sweep_row(o) for o in outcomes]})
        if outcome.interrupted:
            break
    return outcomes


def _sweep_row(outcome: RunOutcome) -> dict[str, Any]:
    """A sweep.json row: the point's directory, its Load, and the summary's flat row."""
    row = outcome.summary.row().to_json()
    return {
        "dir": outcome.run_dir.name,
        "load": outcome.spec.load.model_dump(mode="json"),
        "label": row.pop("load"),
        **row,
    }
