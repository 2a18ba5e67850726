"""What ``verify`` recomputes from the records: the summary (step 9) and the verdicts (step 11).

Each function returns ``(ok, detail)`` for its step; every failure is one line naming what
differs (at most ``MAX_DIFFS`` differences, then a count).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError

from inferaudit.errors import InferauditError
from inferaudit.measure.protocol import RunSpec
from inferaudit.measure.record_store import open_records
from inferaudit.measure.records import Record, file_lines, read_records
from inferaudit.measure.rundir import (
    HEALTH_FILE,
    RECORDS_FILE,
    SERVER_METRICS_FILE,
    SPEC_FILE,
    TELEMETRY_FILE,
    file_sha256,
)
from inferaudit.seal.evidence import canonical

if TYPE_CHECKING:
    from inferaudit.measure.summary import Summary

MAX_DIFFS = 5
Summarize = Callable[[Sequence[Record], RunSpec], "Summary | dict[str, Any]"]


def _flatten(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        for key in sorted(value):
            yield from _flatten(value[key], f"{prefix}.{key}")
    else:
        yield prefix, value


def summary_diffs(signed: dict[str, Any], recomputed: dict[str, Any]) -> list[str]:
    """``summary.<key path> differs: <signed> vs <recomputed>`` for each disagreement."""
    a = dict(_flatten({k: v for k, v in signed.items() if k != "checks"}, "summary"))
    b = dict(_flatten({k: v for k, v in recomputed.items() if k != "checks"}, "summary"))
    out = []
    for key in sorted(a.keys() | b.keys()):
        if key not in b:
            out.append(f"{key} is signed but not recomputed")
        elif key not in a:
            out.append(f"{key} is recomputed but not signed")
        elif a[key] != b[key] or type(a[key]) is not type(b[key]):
            out.append(f"{key} differs: {_show(a[key])} vs {_show(b[key])}")
    return out


def _show(v: Any) -> str:
    text = orjson.dumps(v).decode()
    return text if len(text) <= 60 else text[:57] + "..."


def _spec(run_dir: Path) -> RunSpec:
    try:
        data = (run_dir / SPEC_FILE).read_bytes()
    except FileNotFoundError:
        data = b""
    return RunSpec.model_validate_json(data)


def recompute_summary(
    run_dir: Path, signed: dict[str, Any], summarize: Summarize | None
) -> tuple[bool, str]:
    """Step 9: ``summarize(records, spec)`` equals the signed summary, key by key."""
    try:
        from inferaudit.measure.metrics import summarize as default_summarize
        from inferaudit.measure.scrapes import read_telemetry

        spec = _spec(run_dir)
        path = run_dir / RECORDS_FILE
        if summarize is None:  # with the operator-reported telemetry the run recorded, if any
            telemetry_path = run_dir / TELEMETRY_FILE
            telemetry = read_telemetry(telemetry_path) if telemetry_path.exists() else None
            # streamed: the records file is read, never held (memory bounded by the columns)
            result: Summary | dict[str, Any] = default_summarize(path, spec, telemetry)
            count = sum(1 for _ in file_lines(path))
        else:
            records = read_records(path)
            result = summarize(records, spec)
            count = len(records)
        as_json = result if isinstance(result, dict) else result.to_json()
        recomputed = orjson.loads(canonical(as_json, "summary"))
    except ValidationError as exc:
        return False, f"spec.json is not a valid RunSpec: {exc.errors()[0]['msg']}"
    except InferauditError as exc:
        return False, exc.diagnostics()
    diffs = summary_diffs(signed, recomputed)
    if diffs:
        more = f" (+{len(diffs) - MAX_DIFFS} more)" if len(diffs) > MAX_DIFFS else ""
        return False, "; ".join(diffs[:MAX_DIFFS]) + more
    return True, f"recomputed from {count} records: equal"


def recheck_verdicts(
    run_dir: Path,
    signed: Any,
    tokenizer: Path | None,
    fingerprint: Path | None,
    *,
    v2: bool,
    summary_reasons: Sequence[str] | None = None,
) -> tuple[bool, str]:
    """Step 11: every verdict recomputed from the records equals the run's verdict.

    A v2 run is rechecked with its client health windows (``health.jsonl``; none when absent),
    a v1 run by the frozen v1 rules (``health=None``); ``server-counters`` with the run's
    server samples (``server-metrics.jsonl``; the check gives no verdict when the run has none,
    and a signed verdict that is not recomputed is a difference). ``summary_reasons``: the
    ``invalid_reasons`` of a summary recomputed from these records (``judge.suite.recheck``)."""
    from inferaudit.judge.suite import USES_TOKENIZER, recheck
    from inferaudit.measure.fingerprint import load_fingerprint
    from inferaudit.measure.health import read_health
    from inferaudit.measure.server_metrics import read_samples
    from inferaudit.measure.tokenizer import load_tokenizer

    if not isinstance(signed, list):
        return False, "the run has no verdicts list"
    try:
        spec = _spec(run_dir)
        records = open_records(run_dir / RECORDS_FILE)  # memory bounded (record_store)
        skipped: list[str] = []
        tok = fp = None
        for path, digest, uses, what in (
            (tokenizer, spec.tokenizer_sha256, USES_TOKENIZER, "--tokenizer"),
            (fingerprint, spec.fingerprint_sha256, ("identity",), "--fingerprint"),
        ):
            if digest is None:
                continue
            if path is None:
                skipped += [n for n in spec.checks if n in uses]
            elif file_sha256(path) != digest:
                return False, f"{what} {path} is not the file the run used"
            elif what == "--tokenizer":
                tok = load_tokenizer(path)
            else:
                fp = load_fingerprint(path)
        by_check = {v.get("check"): v for v in signed if isinstance(v, dict)}
        conformance = by_check.get("conformance", {}).get("numbers", {})
        listed = conformance.get("items", {}).get("model_listed", "not recorded")
        names = [n for n in spec.checks if n not in skipped]
        health = read_health(run_dir / HEALTH_FILE) if v2 else None
        server_path = run_dir / SERVER_METRICS_FILE
        server = read_samples(server_path) if server_path.exists() else None
        recomputed = recheck(
            records,
            spec,
            names=names,
            tokenizer=tok,
            fingerprint=fp,
            model_listed=listed,
            health=health,
            server=server,
            summary_reasons=summary_reasons,
        )
    except ValidationError as exc:
        return False, f"spec.json is not a valid RunSpec: {exc.errors()[0]['msg']}"
    except InferauditError as exc:
        return False, exc.diagnostics()
    diffs = [f"{n}: signed but not in the protocol" for n in by_check if n not in spec.checks]
    again = {v.check for v in recomputed}
    diffs += [
        f"verdict {n} is signed but not recomputed (its input file is missing)"
        for n in by_check
        if n in names and n not in again
    ]
    for verdict in recomputed:
        mine = orjson.loads(canonical(verdict.to_json(), "verdict"))
        theirs = by_check.get(verdict.check)
        if theirs is None:
            diffs.append(f"verdict {verdict.check} is missing")
        elif theirs != mine:
            diffs.append(
                f"verdict {verdict.check} differs: signed {theirs.get('verdict')} "
                f"({theirs.get('summary')}) vs recomputed {mine['verdict']} ({mine['summary']})"
            )
    if diffs:
        return False, "; ".join(diffs[:MAX_DIFFS])
    detail = f"{len(recomputed)} recomputed from the records: equal"
    if skipped:
        detail += f"; not rechecked without the run's files: {', '.join(skipped)}"
    return True, detail
