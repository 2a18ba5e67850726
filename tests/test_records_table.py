"""Records as a table: known-answer per-request values, Parquet/CSV round trips, the evidence
status a table states, and `inferaudit export`."""

from __future__ import annotations

import csv
from pathlib import Path

import orjson
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import inferaudit.cli.export  # noqa: F401 - registers `inferaudit export`
from inferaudit.cli.app import app
from inferaudit.errors import ConfigError, RecordError
from inferaudit.measure.metrics import summarize
from inferaudit.measure.protocol import Endpoint, Load, RunSpec, canonical_bytes
from inferaudit.measure.records import Record, write_records
from inferaudit.present.records_table import (
    BATCH_ROWS,
    COLUMNS,
    EVIDENCE_KEY,
    records_table,
    write_records_table,
)

MS = 1_000_000
UNSIGNED = "not verified: envelope signature: envelope.dsse.json is missing"


def crafted() -> list[Record]:
    """Four hand-made records: a plain reply, a session's second turn whose usage exceeds its
    chunks (under a concurrency cap), a failed request, and a 1-token warm-up reply."""
    return [
        Record(
            id=0, session=0, turn=0, scheduled_ns=0, sent_ns=1 * MS, first_chunk_ns=10 * MS,
            first_content_ns=11 * MS, chunk_ns=[11 * MS, 21 * MS, 41 * MS],
            chunk_chars=[3, 3, 3], content_chunks=3, done_ns=41 * MS, status=200,
            finish_reason="length", usage_prompt_tokens=8, usage_completion_tokens=3,
            input_tokens=8, max_tokens=3, output_chars=9,
        ),
        Record(
            id=1, session=0, turn=1, scheduled_ns=2 * MS, slot_ns=3 * MS, sent_ns=3_500_000,
            first_chunk_ns=5 * MS, first_content_ns=5 * MS, chunk_ns=[5 * MS, 9 * MS],
            chunk_chars=[2, 6], content_chunks=2, done_ns=9 * MS, status=200,
            finish_reason="stop", usage_prompt_tokens=20, usage_completion_tokens=5,
            input_tokens=20, max_tokens=8, output_chars=8,
        ),
        Record(
            id=2, scheduled_ns=1 * MS, sent_ns=1 * MS, done_ns=2 * MS, status=429,
            error_class="http_429", input_tokens=8, max_tokens=3,
        ),
        Record(
            id=3, phase="warmup", tag="=cmd()", scheduled_ns=0, sent_ns=0,
            first_chunk_ns=1 * MS, first_content_ns=1 * MS, chunk_ns=[1 * MS], chunk_chars=[4],
            content_chunks=1, done_ns=1 * MS, status=200, finish_reason="stop", output_chars=4,
        ),
    ]  # fmt: skip


# The exact rows of crafted(): TTFT from the scheduled send, TPOT over usage tokens, ITL split
# over the usage tokens of a chunk (record 1: usage 5 over chunks of 2 and 6 chars -> 1 + 4
# tokens, so its 4 ms gap gives four 1 ms samples); output_tokens is the proven count.
EXPECTED: list[dict[str, object]] = [
    dict(
        id=0, session=0, turn=0, worker=0, phase="measure", tag=None, scheduled_ms=0.0,
        slot_wait_ms=0.0, lag_ms=1.0, ttft_ms=11.0, ttft_from_send_ms=10.0, e2e_ms=41.0,
        tpot_ms=15.0, itl_mean_ms=15.0, itl_p50_ms=15.0, itl_p99_ms=19.9, itl_max_ms=20.0,
        output_tokens=3, usage_completion_tokens=3, usage_prompt_tokens=8, content_chunks=3,
        input_tokens=8, max_tokens=3, status=200, error_class=None, finish_reason="length",
        ok=True,
    ),
    dict(
        id=1, session=0, turn=1, worker=0, phase="measure", tag=None, scheduled_ms=2.0,
        slot_wait_ms=1.0, lag_ms=0.5, ttft_ms=3.0, ttft_from_send_ms=1.5, e2e_ms=7.0,
        tpot_ms=1.0, itl_mean_ms=1.0, itl_p50_ms=1.0, itl_p99_ms=1.0, itl_max_ms=1.0,
        output_tokens=2, usage_completion_tokens=5, usage_prompt_tokens=20, content_chunks=2,
        input_tokens=20, max_tokens=8, status=200, error_class=None, finish_reason="stop",
        ok=True,
    ),
    dict(
        id=2, session=None, turn=None, worker=0, phase="measure", tag=None, scheduled_ms=1.0,
        slot_wait_ms=0.0, lag_ms=0.0, ttft_ms=None, ttft_from_send_ms=None, e2e_ms=None,
        tpot_ms=None, itl_mean_ms=None, itl_p50_ms=None, itl_p99_ms=None, itl_max_ms=None,
        output_tokens=0, usage_completion_tokens=None, usage_prompt_tokens=None,
        content_chunks=0, input_tokens=8, max_tokens=3, status=429, error_class="http_429",
        finish_reason=None, ok=False,
    ),
    dict(
        id=3, session=None, turn=None, worker=0, phase="warmup", tag="=cmd()",
        scheduled_ms=0.0, slot_wait_ms=0.0, lag_ms=0.0, ttft_ms=1.0, ttft_from_send_ms=1.0,
        e2e_ms=1.0, tpot_ms=None, itl_mean_ms=None, itl_p50_ms=None, itl_p99_ms=None,
        itl_max_ms=None, output_tokens=1, usage_completion_tokens=None, usage_prompt_tokens=None,
        content_chunks=1, input_tokens=None, max_tokens=None, status=200, error_class=None,
        finish_reason="stop", ok=True,
    ),
]  # fmt: skip


def spec(version: str = "inferaudit.runspec/v2") -> RunSpec:
    return RunSpec.model_validate(
        {
            "spec_version": version,
            "endpoint": Endpoint(base_url="http://127.0.0.1:9/v1", model="tiny-model"),
            "load": Load(rate=10.0, max_concurrency=2, requests=3),
        }
    )


def make_run_dir(path: Path, records: list[Record], run_spec: RunSpec | None = None) -> Path:
    """An unsigned run directory: spec.json, records.jsonl and summary.json, nothing sealed."""
    path.mkdir(parents=True)
    s = run_spec or spec()
    (path / "spec.json").write_bytes(canonical_bytes(s))
    write_records(path / "records.jsonl", records)
    (path / "summary.json").write_bytes(orjson.dumps(summarize(records, s).to_json()))
    return path


@pytest.fixture
def empty_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("INFERAUDIT_HOME", str(home))
    monkeypatch.delenv("INFERAUDIT_DB", raising=False)
    return home


def test_rows_have_the_known_values() -> None:
    table = records_table(iter(crafted()))
    assert tuple(table.column_names) == COLUMNS
    assert table.to_pylist() == EXPECTED
    assert str(table.schema.field("ok").type) == "bool"
    assert str(table.schema.field("session").type) == "int64"
    assert str(table.schema.field("ttft_ms").type) == "double"


def test_a_v1_spec_credits_usage_in_output_tokens() -> None:
    table = records_table(crafted(), spec("inferaudit.runspec/v1"))
    assert table.column("output_tokens").to_pylist() == [3, 5, 0, 1]


def test_many_records_span_several_batches() -> None:
    base = crafted()[0]
    many = (base.model_copy(update={"id": i, "scheduled_ns": i * MS}) for i in range(20_000))
    table = records_table(many)
    assert table.num_rows == 20_000
    assert table.column("id").to_pylist() == list(range(20_000))
    assert table.column("ttft_ms").to_pylist()[-1] == 11.0 - 19_999.0  # scheduled later


def test_no_records_is_an_empty_typed_table() -> None:
    table = records_table([])
    assert table.num_rows == 0 and tuple(table.column_names) == COLUMNS


def test_parquet_round_trip_states_the_evidence(tmp_path: Path, empty_home: Path) -> None:
    run = make_run_dir(tmp_path / "run", crafted())
    path = write_records_table(run, "parquet")
    assert path == run / "records.parquet"
    back = pq.read_table(path)
    assert back.to_pylist() == EXPECTED
    meta = back.schema.metadata
    assert meta[EVIDENCE_KEY.encode()].decode() == UNSIGNED
    assert meta[b"inferaudit.output_tokens"].startswith(b"proven")
    assert b"not a credited figure" in meta[b"inferaudit.note"]


def test_csv_round_trip_with_a_sidecar(tmp_path: Path, empty_home: Path) -> None:
    run = make_run_dir(tmp_path / "run", crafted())
    out = tmp_path / "exports" / "table.csv"
    assert write_records_table(run, "csv", out) == out
    header = out.read_text().splitlines()[0]
    assert header == ",".join(f'"{c}"' for c in COLUMNS)  # one header line, no comment
    types = {f.name: f.type for f in records_table([]).schema}
    options = pa_csv.ConvertOptions(column_types=types, strings_can_be_null=True)
    back = pa_csv.read_csv(out, convert_options=options).to_pylist()
    want = [dict(r) for r in EXPECTED]
    want[3]["tag"] = "'=cmd()"  # csv_cell: a spreadsheet never runs it as a formula
    assert back == want
    with out.open() as fh:
        assert [r["error_class"] for r in csv.DictReader(fh)] == ["", "", "http_429", ""]
    sidecar = orjson.loads((tmp_path / "exports" / "table.csv.json").read_bytes())
    assert sidecar["evidence"] == UNSIGNED
    assert sidecar["records"] == "records.jsonl" and sidecar["rows"] == 4
    assert sidecar["trust_policy"].startswith("trusting")


def test_bad_input_is_one_line(tmp_path: Path, empty_home: Path) -> None:
    with pytest.raises(ConfigError, match=r"not a run directory$"):
        write_records_table(tmp_path / "nowhere", "csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"not a run directory \(records.jsonl missing\)"):
        write_records_table(tmp_path / "empty", "parquet")
    run = make_run_dir(tmp_path / "run", crafted())
    with pytest.raises(ConfigError, match="--format 'xlsx'"):
        write_records_table(run, "xlsx")  # type: ignore[arg-type]
    broken = crafted()[0].model_copy(update={"content_chunks": 2})
    (run / "records.jsonl").write_bytes(broken.to_line())
    with pytest.raises(RecordError) as exc:
        write_records_table(run, "csv")
    assert str(exc.value) == (
        f"{run / 'records.jsonl'}: record 0: content_chunks is 2 but 3 chunk times were recorded"
    )


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_an_export_that_fails_after_a_batch_leaves_no_half_table(
    tmp_path: Path, empty_home: Path, fmt: str
) -> None:
    base = crafted()[0]
    good = [base.model_copy(update={"id": i}) for i in range(BATCH_ROWS + 5)]
    broken = base.model_copy(update={"id": len(good), "content_chunks": 2})
    run = make_run_dir(tmp_path / "run", crafted())
    write_records(run / "records.jsonl", [*good, broken])  # the bad record is in batch 2
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(RecordError, match=f"record {len(good)}: content_chunks is 2"):
        write_records_table(run, fmt)  # type: ignore[arg-type]
    assert sorted(p.name for p in run.iterdir()) == before  # no table, no partial file


def test_cli_export(tmp_path: Path, empty_home: Path) -> None:
    run = make_run_dir(tmp_path / "run", crafted())
    runner = CliRunner()
    r = runner.invoke(app, ["export", str(run), "--format", "csv"])
    assert r.exit_code == 0, r.output
    assert r.output.strip() == f"wrote {run / 'records.csv'}"
    assert len(pa_csv.read_csv(run / "records.csv")) == 4
    out = tmp_path / "t.parquet"
    r = runner.invoke(app, ["export", str(run), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert pq.read_table(out).column("ttft_ms").to_pylist() == [11.0, 3.0, None, 1.0]
    r = runner.invoke(app, ["export", str(tmp_path / "missing")])
    assert isinstance(r.exception, ConfigError)
    assert str(r.exception) == f"{tmp_path / 'missing'}: not a run directory"
    r = runner.invoke(app, ["export", str(run), "--format", "json"])
    assert isinstance(r.exception, ConfigError)
    assert str(r.exception) == "--format 'json'; expected parquet, csv"
