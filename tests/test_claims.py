"""Claims: model, import/export round trips, line-numbered rejection, registry, findings, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from inferaudit import home
from inferaudit.cli import app
from inferaudit.errors import ClaimsError, ConfigError
from inferaudit.intent.claims import (
    Claim,
    ClaimImportError,
    ClaimInput,
    ClaimStore,
    Provenance,
    build_claim,
    dump_claims,
    findings,
    parse_claims,
    read_claims,
    seed_claims,
)

XINING = "xining-unicom-cctv-2025-09-16-signed"


@pytest.fixture
def store(tmp_path: Path) -> ClaimStore:
    return ClaimStore(home.make_engine(f"sqlite:///{tmp_path / 'ledger.sqlite3'}"))


def simple(claim_id: str, value: float = 1.0, **kw: object) -> Claim:
    args: dict[str, object] = {
        "claim_id": claim_id,
        "statement": f"{claim_id} states {value} PFLOPS",
        "status": "signed",
        "certainty": "likely",
        "source_url": "https://example.org/a",
        "source_class": "vendor",
        "city": "Xining",
        "metric": "compute",
        "value": value,
        "unit": "PFLOPS",
        "basis": "signed",
        "created": "2026-11-28",
    }
    args.update(kw)
    return build_claim(ClaimInput.model_validate(args))


def test_seed_loads_all_sixteen_claims() -> None:
    claims = seed_claims()
    assert len(claims) == 16
    assert {c.claim_id for c in claims} >= {XINING, "huawei-ascend-910c-primary-platform"}
    x = next(c for c in claims if c.claim_id == XINING)
    assert x.statement_original is not None and "3479P" in x.statement_original
    assert x.sources[0].provenance is Provenance.aggregator
    assert x.vendors == ["Zhonghao Xinying", "Alibaba T-Head", "MetaX", "Biren"]


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv"])
def test_round_trip_through_every_format(fmt: str) -> None:
    claims = seed_claims()
    text = dump_claims(claims, fmt)
    again = parse_claims(text, fmt)
    assert again == claims
    assert dump_claims(again, fmt) == text


def test_import_export_import_through_the_registry(store: ClaimStore, tmp_path: Path) -> None:
    seed = seed_claims()
    assert len(store.add(seed).added) == 16
    out = tmp_path / "export.json"
    out.write_text(dump_claims([s.claim for s in store.query()], "json"))
    exported = read_claims(out)
    assert exported == seed
    result = ClaimStore(store.engine).add(exported)
    assert (result.added, len(result.unchanged)) == ([], 16)


def test_bad_records_are_named_by_line_and_field(store: ClaimStore, tmp_path: Path) -> None:
    good = simple("good-claim").to_json()
    bad_basis = simple("bad-basis").to_json()
    bad_basis["quantities"][0]["basis"] = "rumour"
    no_sources = simple("no-sources").to_json()
    del no_sources["sources"]
    path = tmp_path / "claims.json"
    path.write_text(json.dumps([good, bad_basis, no_sources], indent=2))
    lines = path.read_text().splitlines()
    line_of = {
        cid: next(i for i, t in enumerate(lines, 1) if cid in t) - 1
        for cid in ("bad-basis", "no-sources")
    }  # each object opens on the line before its "claim_id"
    with pytest.raises(ClaimImportError) as info:
        read_claims(path)
    problems = info.value.problems
    assert len(problems) == 2
    assert problems[0].startswith(
        f"line {line_of['bad-basis']} (bad-basis): field quantities.0.basis"
    )
    assert problems[1].startswith(f"line {line_of['no-sources']} (no-sources): field sources")
    assert store.all() == []


def test_jsonl_and_csv_errors_name_their_line(tmp_path: Path) -> None:
    rows = [simple(f"claim-{i}").to_json() for i in range(3)]
    rows[2]["certainty"] = "maybe"
    text = "\n".join(json.dumps(r) for r in rows) + "\n"
    with pytest.raises(ClaimImportError, match=r"line 3 \(claim-2\): field certainty"):
        parse_claims(text, "jsonl")
    csv_text = dump_claims([simple(f"claim-{i}") for i in range(3)], "csv")
    broken = csv_text.replace('"claim-1",', '"claim 1",', 1)
    with pytest.raises(ClaimImportError, match=r"line 3 \(claim 1\): field claim_id"):
        parse_claims(broken, "csv")
    with pytest.raises(ClaimsError, match="line 2: invalid JSON"):
        parse_claims('{"claim_id": "x"}\n{oops\n', "jsonl")


def test_duplicates_in_one_file_are_rejected() -> None:
    text = dump_claims([simple("dup-claim"), simple("dup-claim", 2.0)], "jsonl")
    with pytest.raises(ClaimImportError, match=r"line 2 .* duplicate of line 1"):
        parse_claims(text, "jsonl")


def test_nothing_half_imported_when_the_registry_refuses(store: ClaimStore) -> None:
    store.add([simple("first")])
    with pytest.raises(ClaimImportError) as info:
        store.add([simple("second"), simple("first", 9.0), simple("third", supersedes="nope")])
    assert info.value.problems == [
        "first: already stored with other content; claims are immutable, add a correction "
        "that supersedes it",
        "third: field supersedes: unknown claim 'nope'",
    ]
    assert [s.claim.claim_id for s in store.all()] == ["first"]


def test_supersede(store: ClaimStore) -> None:
    store.add([simple("old-claim", 1.0)])
    store.supersede("old-claim", simple("new-claim", 2.0, supersedes="old-claim"))
    assert [s.claim.claim_id for s in store.query()] == ["new-claim"]
    history = store.query(include_superseded=True)
    assert [(s.claim.claim_id, s.superseded_by) for s in history] == [
        ("old-claim", "new-claim"),
        ("new-claim", None),
    ]
    with pytest.raises(ClaimImportError, match="already superseded by new-claim"):
        store.add([simple("fork-claim", supersedes="old-claim")])
    with pytest.raises(ClaimsError, match="expected 'new-claim'"):
        store.supersede("new-claim", simple("other-claim"))


def test_filters(store: ClaimStore) -> None:
    store.add(seed_claims())
    assert {s.claim.claim_id for s in store.query(site="xining", vendor="metax")} == {XINING}
    assert len(store.query(site="Xining")) == 5
    assert {s.claim.claim_id for s in store.query(status="signed", certainty="likely")} >= {XINING}
    with pytest.raises(ConfigError, match="--status 'done'"):
        store.query(status="done")


def test_xining_sum_of_parts_finding() -> None:
    claims = seed_claims()
    x = next(c for c in claims if c.claim_id == XINING)
    found = findings(x, claims)
    assert [(f.rule, f.severity) for f in found] == [
        ("sum-of-parts", "discrepancy"),
        ("sum-of-parts", "consistent"),
    ]
    assert found[0].message == (
        "compute: stated total 3,479 PFLOPS (signed) but the stated parts sum to "
        "1,945 + 984 + 450 + 200 = 3,579 PFLOPS (+100, +2.9%)"
    )
    assert "16,384 + 4,096 + 1,328 + 1,024 = 22,832 cards" in found[1].message


def test_sum_of_parts_over_part_of_claims() -> None:
    parent = simple("site-total", 100.0)
    parts = [
        simple("part-a", 60.0, part_of="site-total"),
        simple("part-b", 50.0, part_of="site-total"),
    ]
    (f,) = findings(parent, [parent, *parts])
    assert f.severity == "discrepancy"
    assert "the part claims (part-a, part-b) sum to 60 + 50 = 110 PFLOPS (+10, +10.0%)" in f.message
    fixed = simple("part-b2", 40.0, part_of="site-total")
    (ok,) = findings(parent, [parent, parts[0], fixed])
    assert ok.severity == "consistent"


def test_claims_are_frozen() -> None:
    c = simple("frozen-claim")
    with pytest.raises(ValueError, match="frozen"):
        c.status = "cancelled"  # type: ignore[misc]


def test_cli_import_show_list_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERAUDIT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("INFERAUDIT_DB", raising=False)
    runner = CliRunner()
    r = runner.invoke(app, ["claims", "import", "--example"])
    assert r.exit_code == 0, r.output
    assert "imported 16 claim(s)" in r.output
    assert "signed into the ledger at indices 0, 1" in r.output
    r = runner.invoke(app, ["claims", "show", XINING])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "stated total 3,479 PFLOPS (signed) but the stated parts sum to" in text
    assert "ledger index: 8" in text
    r = runner.invoke(app, ["claims", "list", "--vendor", "biren"])
    assert "1 claim(s)" in r.output
    out = tmp_path / "out.jsonl"
    r = runner.invoke(app, ["claims", "export", "--format", "jsonl", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert read_claims(out) == seed_claims()


def test_cli_import_reports_each_bad_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERAUDIT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("INFERAUDIT_DB", raising=False)
    rows = [simple("a-claim").to_json(), simple("b-claim").to_json()]
    rows[1]["status"] = "finished"
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    r = CliRunner().invoke(app, ["claims", "import", str(path)])
    assert r.exit_code == 2
    assert "1 bad record(s); nothing imported" in r.output
    assert "line 2 (b-claim): field status" in r.output
    r = CliRunner().invoke(app, ["claims", "list"])
    assert "0 claim(s)" in r.output


def test_cli_add_without_a_terminal_names_missing_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERAUDIT_HOME", str(tmp_path / "home"))
    r = CliRunner().invoke(app, ["claims", "add", "--id", "x-claim"])
    assert isinstance(r.exception, ConfigError)
    assert "missing --statement, --status, --certainty, --source-url, --source-class" in str(
        r.exception
    )
    r = CliRunner().invoke(
        app,
        [
            "claims",
            "add",
            "--id",
            "x-claim",
            "--statement",
            "X serves 500 tok/s",
            "--status",
            "operational_claimed",
            "--certainty",
            "unknown",
            "--source-url",
            "https://x.example",
            "--source-class",
            "vendor",
            "--metric",
            "tokens_per_second",
            "--value",
            "500",
            "--unit",
            "tokens/s",
            "--basis",
            "announced",
            "--model",
            "llama-3.1-8b",
            "--accelerator",
            "H100",
            "--count",
            "1",
            "--concurrency",
            "1",
        ],
    )
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["claims", "show", "x-claim"])
    assert "roofline: implausible" in " ".join(r.output.split())
