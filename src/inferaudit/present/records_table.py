"""A run's records as a table: one row per request, typed columns, as Parquet or CSV.

``record_batches(records)`` turns records (streamed: ``iter_records``) into batches of typed
columns (no generated text is kept); ``records_table`` gathers them into a ``pyarrow.Table``.
Every per-request value comes from ``metrics.request_times``, the one place TTFT, E2E, TPOT and
ITL of a record are derived:

  id, session, turn, worker, phase, tag      the record's own fields (session/turn: multi-turn)
  scheduled_ms                               scheduled send, ms since the run's epoch
  slot_wait_ms                               wait for a free slot (``Record.slot_wait_ns``;
                                             0 without ``max_concurrency``)
  lag_ms                                     the client's send lag (``Record.lag_ns``)
  ttft_ms                                    scheduled send -> first content event
  ttft_from_send_ms                          actual send -> first content event
  e2e_ms                                     scheduled send -> done
  tpot_ms                                    (done - first content) / (output tokens - 1)
  itl_mean_ms, itl_p50_ms, itl_p99_ms,       the record's own ITL samples (``itl_samples_ms``;
  itl_max_ms                                 percentiles by ``stats.percentile``, numpy linear)
  output_tokens                              the count the summary credits the request with
                                             (``RequestTimes.credited_tokens``: proven for a v2
                                             protocol, usage for v1; proven without a spec)
  usage_completion_tokens, usage_prompt_tokens, content_chunks, input_tokens, max_tokens,
  status, error_class, finish_reason, ok     the record's own fields (``ok``: no error class)

Undefined values are nulls (a failed request has no TTFT; a 1-token reply no TPOT; a reply
with one content event no ITL). Values are unrounded: the table is raw data, never a credited
figure. Every phase is listed (warm-up and check traffic too; ``phase`` tells them apart).

``write_records_table(run_dir, fmt, out)`` writes ``run_dir/records.parquet`` (or ``.csv``) a
batch at a time into a temporary file renamed when whole (memory bounded by a batch; a failed
export leaves no half table), and states whether the run's evidence verified under a trust
policy (default: the data directory's own keys, ``trust.default_policy``) via
``seal.verified.open_verified``: "verified" or
"not verified: <reason>". Parquet carries it in the schema metadata (``inferaudit.evidence``,
with ``inferaudit.trust_policy``, ``inferaudit.output_tokens`` and ``inferaudit.note``); a CSV
has a plain header line and a sidecar ``<out>.json`` holding the same keys. CSV text cells
pass through ``claims.csv_cell`` (no spreadsheet formula).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from pydantic import ValidationError

from inferaudit import home
from inferaudit.errors import ConfigError, RecordError, validation_message
from inferaudit.intent.claims import csv_cell
from inferaudit.measure import stats
from inferaudit.measure.definitions import CREDIT_BASIS, USAGE_BASIS
from inferaudit.measure.metrics import request_times
from inferaudit.measure.protocol import RunSpec
from inferaudit.measure.records import Record, iter_records
from inferaudit.measure.rundir import RECORDS_FILE, SPEC_FILE
from inferaudit.seal.keys import TrustPolicy
from inferaudit.seal.trust import default_policy
from inferaudit.seal.verified import UnverifiedRun, VerifiedRun, open_verified

__all__ = [
    "COLUMNS",
    "EVIDENCE_KEY",
    "NOT_VERIFIED_PREFIX",
    "TABLE_FORMATS",
    "VERIFIED",
    "Evidence",
    "TableFormat",
    "default_trust",
    "evidence_status",
    "in_file",
    "records_table",
    "require_records",
    "run_evidence",
    "write_records_table",
]

TableFormat = Literal["parquet", "csv"]
TABLE_FORMATS: tuple[TableFormat, ...] = ("parquet", "csv")
EVIDENCE_KEY = "inferaudit.evidence"
VERIFIED = "verified"
NOT_VERIFIED_PREFIX = "not verified: "
NOTE = "raw per-request data from records.jsonl; not a credited figure (see summary.json)"
NS_PER_MS = 1_000_000
BATCH_ROWS = 8192

_I = pa.int64()
_F = pa.float64()
_S = pa.string()
SCHEMA = pa.schema(
    [
        ("id", _I),
        ("session", _I),
        ("turn", _I),
        ("worker", _I),
        ("phase", _S),
        ("tag", _S),
        ("scheduled_ms", _F),
        ("slot_wait_ms", _F),
        ("lag_ms", _F),
        ("ttft_ms", _F),
        ("ttft_from_send_ms", _F),
        ("e2e_ms", _F),
        ("tpot_ms", _F),
        ("itl_mean_ms", _F),
        ("itl_p50_ms", _F),
        ("itl_p99_ms", _F),
        ("itl_max_ms", _F),
        ("output_tokens", _I),
        ("usage_completion_tokens", _I),
        ("usage_prompt_tokens", _I),
        ("content_chunks", _I),
        ("input_tokens", _I),
        ("max_tokens", _I),
        ("status", _I),
        ("error_class", _S),
        ("finish_reason", _S),
        ("ok", pa.bool_()),
    ]
)
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)
TEXT_COLUMNS: tuple[str, ...] = tuple(f.name for f in SCHEMA if f.type == _S)

Cell = int | float | str | bool | None


def _ms(ns: int | None) -> float | None:
    return None if ns is None else ns / NS_PER_MS


def _row(record: Record, spec: RunSpec | None) -> tuple[Cell, ...]:
    """One record's cells in ``COLUMNS`` order."""
    t = request_times(record)
    itl = sorted(t.itl_ms)
    return (
        record.id,
        record.session,
        record.turn,
        record.worker,
        record.phase,
        record.tag,
        record.scheduled_ns / NS_PER_MS,
        record.slot_wait_ns / NS_PER_MS,
        _ms(record.lag_ns),
        t.ttft_ms,
        _ms(t.ttft_sent_ns),
        t.e2e_ms,
        t.tpot_ms,
        math.fsum(itl) / len(itl) if itl else None,
        stats.percentile(itl, 50.0) if itl else None,
        stats.percentile(itl, 99.0) if itl else None,
        itl[-1] if itl else None,
        t.proven_tokens if spec is None else t.credited_tokens(spec),
        record.usage_completion_tokens,
        record.usage_prompt_tokens,
        record.content_chunks,
        record.input_tokens,
        record.max_tokens,
        record.status,
        record.error_class,
        record.finish_reason,
        record.ok,
    )


def _batch(rows: Sequence[tuple[Cell, ...]]) -> pa.RecordBatch:
    columns = [pa.array([r[i] for r in rows], type=f.type) for i, f in enumerate(SCHEMA)]
    return pa.RecordBatch.from_arrays(columns, schema=SCHEMA)


def record_batches(
    records: Iterable[Record], spec: RunSpec | None = None
) -> Iterator[pa.RecordBatch]:
    """The rows of ``records`` (see the module doc) in ``BATCH_ROWS``-row batches, at least one;
    ``spec`` decides the credited token count. Records are consumed one at a time and kept only
    as the cells of the batch being built. RecordError for an inconsistent record."""
    rows: list[tuple[Cell, ...]] = []
    any_batch = False
    for record in records:
        rows.append(_row(record, spec))
        if len(rows) == BATCH_ROWS:
            yield _batch(rows)
            any_batch, rows = True, []
    if rows or not any_batch:
        yield _batch(rows)


def records_table(records: Iterable[Record], spec: RunSpec | None = None) -> pa.Table:
    """One row per record, as one table (``record_batches`` gathered)."""
    return pa.Table.from_batches(list(record_batches(records, spec)), schema=SCHEMA)


@dataclass(frozen=True)
class Evidence:
    """What a table states about the run it came from."""

    status: str  # "verified" | "not verified: <reason>"
    trust_policy: str  # the policy the run was opened under (``TrustPolicy.describe``)
    spec: RunSpec | None  # the signed spec when verified, else spec.json when present


def evidence_status(run: VerifiedRun | UnverifiedRun) -> str:
    """``verified``, or ``not verified: <the first failed step>`` (one line)."""
    if isinstance(run, VerifiedRun):
        return VERIFIED
    return NOT_VERIFIED_PREFIX + run.reason


def _spec_file(run_dir: Path) -> RunSpec | None:
    path = run_dir / SPEC_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return RunSpec.model_validate_json(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: not a RunSpec ({validation_message(exc)})") from None


def default_trust() -> TrustPolicy:
    """The data directory's default trust policy: its own runner and ledger keys."""
    return default_policy(home.data_dir(create=False))


def run_evidence(run_dir: Path, policy: TrustPolicy | None = None) -> Evidence:
    """Open ``run_dir`` under ``policy`` (default: ``default_trust()``)."""
    if policy is None:
        policy = default_trust()
    run = open_verified(run_dir, policy)
    spec = run.spec if isinstance(run, VerifiedRun) else _spec_file(run_dir)
    return Evidence(status=evidence_status(run), trust_policy=policy.describe(), spec=spec)


def require_records(run_dir: Path) -> Path:
    """``run_dir/records.jsonl``; ConfigError when ``run_dir`` is not a run directory."""
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: not a run directory")
    path = run_dir / RECORDS_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a run directory ({RECORDS_FILE} missing)")
    return path


def in_file(path: Path, message: str) -> str:
    """``message`` naming ``path`` first (unchanged when it already does)."""
    return message if message.startswith(str(path)) else f"{path}: {message}"


def _for_csv(batch: pa.RecordBatch) -> pa.RecordBatch:
    columns = list(batch.columns)
    for name in TEXT_COLUMNS:
        i = SCHEMA.get_field_index(name)
        cells = [None if v is None else csv_cell(v) for v in columns[i].to_pylist()]
        columns[i] = pa.array(cells, type=_S)
    return pa.RecordBatch.from_arrays(columns, schema=SCHEMA)


def write_records_table(
    run_dir: Path,
    fmt: TableFormat,
    out: Path | None = None,
    *,
    policy: TrustPolicy | None = None,
) -> Path:
    """Write the records table of ``run_dir`` (default ``run_dir/records.<fmt>``); its path.

    ConfigError for an unknown format or a directory without ``records.jsonl``; RecordError
    (naming the file) for a record that is malformed or inconsistent.
    """
    if fmt not in TABLE_FORMATS:
        raise ConfigError(f"--format {fmt!r}; expected {', '.join(TABLE_FORMATS)}")
    records_path = require_records(run_dir)
    evidence = run_evidence(run_dir, policy)
    credited = evidence.spec is None or evidence.spec.credits_proven
    meta = {
        EVIDENCE_KEY: evidence.status,
        "inferaudit.trust_policy": evidence.trust_policy,
        "inferaudit.output_tokens": CREDIT_BASIS if credited else USAGE_BASIS,
        "inferaudit.note": NOTE,
    }
    path = out if out is not None else run_dir / f"records.{fmt}"
    path.parent.mkdir(parents=True, exist_ok=True)
    # written batch by batch (memory bounded by a batch, not by the run) into a temporary file
    # that replaces ``path`` only when whole: a failed or killed export leaves no half table
    partial = path.with_name(f".{path.name}.partial")
    rows = 0
    try:
        batches = record_batches(iter_records(records_path), evidence.spec)
        if fmt == "parquet":
            encoded = {k.encode(): v.encode() for k, v in meta.items()}
            with pq.ParquetWriter(partial, SCHEMA.with_metadata(encoded)) as pq_writer:
                for batch in batches:
                    pq_writer.write_batch(batch)
                    rows += batch.num_rows
        else:
            with pa_csv.CSVWriter(partial, SCHEMA) as csv_writer:
                for batch in batches:
                    csv_writer.write_batch(_for_csv(batch))
                    rows += batch.num_rows
        partial.replace(path)
    except RecordError as exc:
        raise RecordError(in_file(records_path, str(exc))) from None
    finally:
        partial.unlink(missing_ok=True)
    if fmt == "csv":
        sidecar: dict[str, str | int] = {"records": RECORDS_FILE, "rows": rows}
        sidecar.update({k.removeprefix("inferaudit."): v for k, v in meta.items()})
        path.with_name(path.name + ".json").write_bytes(
            orjson.dumps(sidecar, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
        )
    return path
