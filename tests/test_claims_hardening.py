"""Claims under hostile input, failures, kills and concurrency (issue 14): each case one test."""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from inferaudit import home as home_mod
from inferaudit.cli import app, main
from inferaudit.errors import ClaimsError
from inferaudit.intent.claims import (
    ClaimImportError,
    ClaimInput,
    ClaimStore,
    ClaimTooLargeError,
    Signing,
    build_claim,
    dump_claims,
    parse_claims,
)
from inferaudit.intent.claims import registry as registry_mod
from inferaudit.intent.claims import signing as signing_mod
from inferaudit.seal.keys import Signer
from inferaudit.seal.ledger.store import MAX_LEAF_BYTES, Ledger, open_ledger


def claim(claim_id: str, statement: str | None = None, **kw: object) -> object:
    args: dict[str, object] = {
        "claim_id": claim_id,
        "statement": statement or f"{claim_id} serves 500 tokens/s",
        "status": "operational_claimed",
        "certainty": "unknown",
        "source_url": "https://vendor.example/a",
        "source_class": "vendor",
        "metric": "tokens_per_second",
        "value": 500.0,
        "unit": "tokens/s",
        "basis": "announced",
        "created": "2026-11-30",
    }
    args.update(kw)
    return build_claim(ClaimInput.model_validate(args))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "home"


def _store(data: Path) -> ClaimStore:
    return ClaimStore(home_mod.make_engine(home_mod.db_url(None, home_mod.data_dir(data))))


def _ledger(data: Path) -> Ledger:
    return open_ledger(home_mod.db_url(None, home_mod.data_dir(data)), data)


def _signing(data: Path, ledger: Ledger) -> Signing:
    return Signing(Signer(name="inferaudit-claims", seed=b"\x07" * 32), ledger)


@pytest.mark.parametrize("size", [MAX_LEAF_BYTES + 1, 50_000_000])
def test_a_claim_too_large_to_sign_is_not_stored(data: Path, size: int) -> None:
    store = _store(data)
    big = claim("big-claim", "x" * size)
    with _ledger(data) as ledger:
        with pytest.raises(ClaimTooLargeError, match=r"claim big-claim: its signed ledger entry"):
            store.add([claim("small-claim"), big], signing=_signing(data, ledger))
        assert ledger.size() == 0
    assert store.all() == []


def test_a_kill_between_append_and_saving_the_index_stores_nothing_then_repairs(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(data)
    claims = [claim(f"claim-{i}") for i in range(3)]
    real = signing_mod.publish_claims

    def publish_then_die(*args: object, **kw: object) -> object:
        real(*args, **kw)  # type: ignore[arg-type]
        raise KeyboardInterrupt  # the process is killed right after the ledger append

    monkeypatch.setattr(registry_mod, "publish_claims", publish_then_die)
    with _ledger(data) as ledger, pytest.raises(KeyboardInterrupt):
        store.add(claims, signing=_signing(data, ledger))
    assert store.all() == []  # never a claim stored without its ledger index
    monkeypatch.setattr(registry_mod, "publish_claims", real)
    with _ledger(data) as ledger:
        logged = ledger.size()
        result = store.add(claims, signing=_signing(data, ledger))
        assert ledger.size() == logged == 3  # the same entries, not new ones
    assert result.added == ["claim-0", "claim-1", "claim-2"]
    assert [s.ledger_index for s in store.all()] == [0, 1, 2]


def test_claims_stored_without_an_index_are_signed_on_the_next_import(data: Path) -> None:
    store = _store(data)
    store.add([claim("old-claim")])  # an older version's row: stored, never signed
    assert store.get("old-claim").ledger_index is None
    with _ledger(data) as ledger:
        result = store.add([claim("old-claim")], signing=_signing(data, ledger))
    assert (result.added, result.unchanged, result.repaired) == ([], ["old-claim"], ["old-claim"])
    assert store.get("old-claim").ledger_index == 0


def test_a_string_value_and_a_negative_throughput_are_refused() -> None:
    good = json.loads(dump_claims([claim("good-claim")], "json"))[0]
    text_value = json.loads(json.dumps(good))
    text_value["claim_id"] = "text-value"
    text_value["quantities"][0]["value"] = "5000"
    negative = json.loads(json.dumps(good))
    negative["claim_id"] = "negative-value"
    negative["quantities"][0]["value"] = -5.0
    with pytest.raises(ClaimImportError) as info:
        parse_claims(json.dumps([text_value, negative]), "json")
    assert info.value.problems == [
        "line 1 (text-value): field quantities.0.value: Input should be a valid number",
        "line 1 (negative-value): field quantities.0: value -5: a tokens_per_second quantity "
        "cannot be negative",
    ]


def test_the_id_error_shows_the_real_pattern(
    data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("INFERAUDIT_HOME", str(data))
    monkeypatch.delenv("INFERAUDIT_DB", raising=False)
    argv = ["inferaudit", "claims", "add", "--id", "Bad Id", "--statement", "s", "--status"]
    argv += ["signed", "--certainty", "likely", "--source-url", "u", "--source-class", "vendor"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "String should match pattern '^[a-z0-9][a-z0-9._-]{2,80}$'" in err
    assert len(err.strip().splitlines()) == 1


def test_csv_export_escapes_spreadsheet_formulas() -> None:
    hostile = [
        claim("formula-a", "=cmd|' /C calc'!A0", site="+1+1", city="@SUM(A1)", country="-2+3"),
        claim("formula-b", "'=already quoted", site="\tTab", city="\rCR", country="plain"),
    ]
    text = dump_claims(hostile, "csv")
    cells = [c for row in csv.reader(io.StringIO(text, newline="")) for c in row]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert "'=cmd|' /C calc'!A0" in cells and "'+1+1" in cells and "''=already quoted" in cells
    assert parse_claims(text, "csv") == hostile  # the quote is taken off again on import


def test_show_and_list_never_print_terminal_escapes(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERAUDIT_HOME", str(data))
    monkeypatch.delenv("INFERAUDIT_DB", raising=False)
    path = data.parent / "evil.json"
    evil = claim("evil-claim", "pwn \x1b]0;owned\x07 \x1b[31mred [bold]markup[/bold] \u202eRTL")
    path.write_text(dump_claims([evil], "json"))
    runner = CliRunner()
    assert runner.invoke(app, ["claims", "import", str(path)]).exit_code == 0
    for args in (["claims", "show", "evil-claim"], ["claims", "list"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
        assert "\x1b" not in r.output and "\x07" not in r.output and "\u202e" not in r.output
    shown = runner.invoke(app, ["claims", "show", "evil-claim"]).output
    assert "pwn \\x1b]0;owned\\x07 \\x1b[31mred [bold]markup[/bold] \\u202eRTL" in shown


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_deeply_nested_brackets_give_one_line(fmt: str) -> None:
    with pytest.raises(ClaimsError, match=r"line 1: invalid JSON \(nested too deeply\)"):
        parse_claims("[" * 100_000, fmt)
    with pytest.raises(ClaimsError, match="nested too deeply"):
        parse_claims('[{"claim_id": "x", "notes": ' + "[" * 100_000 + "]", "json")


def _adder(data: str, worker: int, count: int, queue: multiprocessing.Queue[str]) -> None:
    """One `claims add` process: its own engines, ``count`` single-claim imports."""
    try:
        store = _store(Path(data))
        for i in range(count):
            with _ledger(Path(data)) as ledger:
                store.add([claim(f"w{worker}-claim-{i:02d}")], signing=_signing(Path(data), ledger))
        queue.put("ok")
    except BaseException as exc:  # reported to the parent, which fails the test with it
        queue.put(f"{type(exc).__name__}: {exc}")


def test_concurrent_adds_wait_instead_of_failing(data: Path) -> None:
    _store(data)  # the database and its tables exist; the ledger is created by the first add
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[str] = ctx.Queue()
    procs = [ctx.Process(target=_adder, args=(str(data), w, 25, queue)) for w in range(4)]
    for p in procs:
        p.start()
    outcomes = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert outcomes == ["ok"] * 4
    stored = _store(data).all()
    assert len(stored) == 100
    indices = sorted(s.ledger_index for s in stored if s.ledger_index is not None)
    assert indices == list(range(100))
