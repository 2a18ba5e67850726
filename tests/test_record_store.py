"""The judges' records held as columns and byte ranges (``measure.record_store``) give the same
verdicts, byte for byte, as the records held whole: on the sealed v1 and v2 evidence (whose
signed verdicts ``verify`` recomputes through the store), and on runs against cheating twins
judged through the store and again from the whole records."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest

from inferaudit.errors import RecordError
from inferaudit.judge.suite import recheck
from inferaudit.judge.verdict import Outcome
from inferaudit.measure import record_store
from inferaudit.measure.health import read_health
from inferaudit.measure.protocol import RunSpec
from inferaudit.measure.record_store import RecordStore, open_records
from inferaudit.measure.records import Record, read_records
from inferaudit.seal.keys import load_trust
from inferaudit.seal.verify import verify_run
from test_checks_twin import run_checks

DATA = Path(__file__).parent / "data"


def test_every_attribute_of_a_view_is_its_records() -> None:
    path = DATA / "evidence-v2" / "records.jsonl"
    whole = read_records(path)
    store = RecordStore(path)
    assert len(store) == len(whole) == 83
    properties = [n for n, a in vars(Record).items() if isinstance(a, property)]
    assert {"ok", "cancelled", "lag_ns", "text_complete"} <= set(properties)
    for view, rec in zip(store, whole, strict=True):
        for name in [*Record.model_fields, *properties]:
            got, want = getattr(view, name), getattr(rec, name)
            assert got == want and type(got) is type(want), (rec.id, name)
        assert view.to_line() == rec.to_line()
        assert view.model_copy(update={"done_ns": 1}).done_ns == 1
    assert store[-1].id == whole[-1].id and [r.id for r in store[1:3]] == [r.id for r in whole[1:3]]


def test_a_bad_line_is_named_and_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    lines = (DATA / "evidence-v2" / "records.jsonl").read_bytes().splitlines(keepends=True)
    path = tmp_path / "records.jsonl"
    path.write_bytes(b"".join(lines[:3]) + b"\n" + lines[3][:40])  # a blank line, a torn write
    ids = [r.id for r in RecordStore(path)]
    assert ids == [r.id for r in read_records(path)] and len(ids) == 3
    path.write_bytes(lines[0] + b'{"id": "x"}\n')
    with pytest.raises(RecordError, match=r"records.jsonl:2: bad record"):
        RecordStore(path)


@pytest.mark.parametrize("usage", [1 << 63, -(1 << 63), (1 << 64) - 1])
def test_a_number_no_column_holds_is_kept_exactly(tmp_path: Path, usage: int) -> None:
    # ``usage`` is the server's to choose: 2^63 overflows an int64 column and -2^63 is the
    # columns' None; either must read back as sent, never as None or an error.
    lines = (DATA / "evidence-v2" / "records.jsonl").read_bytes().splitlines(keepends=True)
    rec = Record.model_validate(orjson.loads(lines[1]))
    odd = rec.model_copy(update={"usage_completion_tokens": usage})
    path = tmp_path / "records.jsonl"
    path.write_bytes(lines[0] + odd.to_line() + lines[2])
    store, whole = RecordStore(path), read_records(path)
    assert whole[1].usage_completion_tokens == usage
    assert [r.usage_completion_tokens for r in store] == [r.usage_completion_tokens for r in whole]
    assert store[1].output_tokens == usage and store[0].usage_completion_tokens is not None


def test_a_small_file_is_read_whole_and_a_large_one_stored(tmp_path: Path) -> None:
    path = DATA / "evidence-v1" / "records.jsonl"
    assert isinstance(open_records(path), list)
    assert isinstance(open_records(path, in_memory_bytes=0), RecordStore)


@pytest.mark.parametrize("version", ["evidence-v1", "evidence-v2"])
def test_sealed_evidence_verifies_through_the_store(
    tmp_path: Path, version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(record_store, "IN_MEMORY_BYTES", 0)  # every records file is stored
    stores: list[RecordStore] = []

    def spy(path: Path) -> RecordStore:
        stores.append(RecordStore(path))
        return stores[-1]

    monkeypatch.setattr(record_store, "RecordStore", spy)
    run = tmp_path / "run"
    shutil.copytree(DATA / version, run)
    report = verify_run(run, load_trust(DATA / version / "trust.txt"))
    assert report.ok, [f"{c.name}: {c.detail}" for c in report.failures()]
    assert len(stores) == 1 and len(stores[0]) == len(read_records(run / "records.jsonl"))
    # and an edited record is still caught through the store
    path = run / "records.jsonl"
    path.write_bytes(path.read_bytes().replace(b'"phase":"measure"', b'"phase":"warmup"', 1))
    assert not verify_run(run, load_trust(DATA / version / "trust.txt")).ok


@pytest.mark.parametrize(
    ("behave", "checks", "failing"),
    [
        ("burst:every=2", ["fluidity", "first-token", "output-length", "errors"], "fluidity"),
        ("role-first-chunk", ["first-token", "token-accounting"], "first-token"),
        ("response-cache", ["caching", "conformance"], "caching"),
    ],
)
def test_a_cheat_judged_through_the_store_is_judged_as_from_whole_records(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    behave: str,
    checks: list[str],
    failing: str,
) -> None:
    monkeypatch.setattr(record_store, "IN_MEMORY_BYTES", 0)
    slow = failing == "caching"  # a cache's answer far beyond any client stall (test_checks_*)
    verdicts = run_checks(tmp_path, (behave,), checks=checks, ttft_ms=400 if slow else 30)
    assert verdicts[failing].verdict is Outcome.failed, verdicts[failing].summary
    run = tmp_path / "run"
    spec = RunSpec.model_validate_json((run / "spec.json").read_bytes())
    signed = {v["check"]: v for v in orjson.loads((run / "verdicts.json").read_bytes())}
    listed = signed.get("conformance", {}).get("numbers", {}).get("items", {}).get("model_listed")
    whole = recheck(
        read_records(run / "records.jsonl"),
        spec,
        names=checks,
        model_listed=listed or "not recorded",
        health=read_health(run / "health.jsonl"),
    )
    assert {v.check for v in whole} == set(signed) == set(checks)
    for v in whole:
        assert orjson.loads(orjson.dumps(v.to_json())) == signed[v.check], v.check


def test_the_summarys_lag_reason_is_what_the_timing_checks_are_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``inferaudit run`` and ``verify`` hand ``recheck`` the reasons of the summary they have
    just computed: the verdicts are those of the lag rule found from the records again, and
    the records are not summarized a second time."""
    from inferaudit.judge import suite
    from inferaudit.judge.noise import LAG_REASON_PREFIX
    from inferaudit.measure.metrics import summarize

    run = DATA / "evidence-v2"
    spec = RunSpec.model_validate_json((run / "spec.json").read_bytes())
    records = open_records(run / "records.jsonl", in_memory_bytes=0)
    health = read_health(run / "health.jsonl")
    names = ("first-token", "fluidity")
    found = recheck(records, spec, names=names, health=health)
    reasons = summarize(records, spec).invalid_reasons

    def summarized(*_: object) -> str | None:
        raise AssertionError("the records were summarized again")

    monkeypatch.setattr(suite, "run_lag_problem", summarized)
    told = recheck(records, spec, names=names, health=health, summary_reasons=reasons)
    assert [v.to_json() for v in told] == [v.to_json() for v in found]
    lagged = f"{LAG_REASON_PREFIX}: lag p99 9 ms moves TTFT p50 by more than the budget"
    told = recheck(records, spec, names=names, health=health, summary_reasons=["x", lagged])
    for verdict, before in zip(told, found, strict=True):  # named, and no FAIL can come of it
        assert lagged in orjson.dumps(verdict.to_json()).decode(), verdict
        assert lagged not in orjson.dumps(before.to_json()).decode()
