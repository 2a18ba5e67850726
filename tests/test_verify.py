"""Offline `verify`: a sealed hand-made run passes; any flipped byte fails and says where."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from conftest_ledger import make_run_dir
from inferaudit.seal.evidence import seal_run
from inferaudit.seal.keys import Signer, TrustPolicy, load_or_create_signer
from inferaudit.seal.ledger.store import open_ledger
from inferaudit.seal.verify import Report, summary_diffs, verify_run

STEPS = [
    "envelope signature",
    "statement",
    "subjects",
    "checkpoint signature",
    "inclusion",
    "summary",
    "summary file",
    "verdicts",
]


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrustPolicy]:
    base = tmp_path_factory.mktemp("sealed")
    home = base / "home"
    run = make_run_dir(base / "run", n=40)
    signer = load_or_create_signer(home, "inferaudit-runner")
    with open_ledger(f"sqlite:///{home / 'ledger.sqlite3'}", home) as ledger:
        ledger.append([f"earlier entry {i}".encode() for i in range(37)])
        seal_run(run, signer, ledger)
        assert ledger.signer is not None
        trust = TrustPolicy(signers=(signer.verifier(),), logs=(ledger.signer.verifier(),))
    return run, trust


def failed(report: Report) -> dict[str, str]:
    return {c.name: c.detail for c in report.failures()}


def test_sealed_run_verifies(sealed: tuple[Path, TrustPolicy]) -> None:
    run, trust = sealed
    report = verify_run(run, trust)
    assert [c.name for c in report.checks] == STEPS
    assert report.ok, failed(report)
    details = {c.name: c.detail for c in report.checks}
    assert details["inclusion"] == "entry 37 of 38"
    assert details["summary"] == "recomputed from 40 records: equal"
    assert details["envelope signature"].startswith("signed by inferaudit-runner+")
    assert details["verdicts"] == "4 recomputed from the records: equal"


def test_a_verdict_signed_wrong_is_caught(tmp_path: Path) -> None:
    """A signer who flips a verdict before signing: signature and digests hold, step 8 fails."""
    home = tmp_path / "home"
    run = make_run_dir(tmp_path / "run", n=20)
    summary = orjson.loads((run / "summary.json").read_bytes())
    errors = next(c for c in summary["checks"] if c["check"] == "errors")
    assert errors["verdict"] == "fail"  # make_records leaves one request failed
    errors["verdict"] = "pass"
    (run / "summary.json").write_bytes(orjson.dumps(summary))
    signer = load_or_create_signer(home, "inferaudit-runner")
    with open_ledger(f"sqlite:///{home / 'ledger.sqlite3'}", home) as ledger:
        seal_run(run, signer, ledger)
        trust = TrustPolicy(signers=(signer.verifier(),), logs=(ledger.signer.verifier(),))
    report = verify_run(run, trust)
    assert list(failed(report)) == ["verdicts"]
    assert failed(report)["verdicts"].startswith("verdict errors differs: signed pass")


def test_untrusted_keys(sealed: tuple[Path, TrustPolicy]) -> None:
    run, trust = sealed
    stranger = Signer(name="inferaudit-runner", seed=bytes(32)).verifier()
    report = verify_run(run, TrustPolicy(signers=(stranger,), logs=trust.logs))
    assert failed(report) == {"envelope signature": f"envelope signature: unknown key "
                                                    f"({trust.signers[0].keyid})"}  # fmt: skip
    log_stranger = Signer(name=trust.logs[0].name, seed=bytes(32)).verifier()
    report = verify_run(run, TrustPolicy(signers=trust.signers, logs=(log_stranger,)))
    assert failed(report) == {
        "checkpoint signature": "checkpoint signature: unknown key",
        "inclusion": "no trusted checkpoint to check the proof against",
    }


def _copy(run: Path, tmp: Path) -> Path:
    dst = tmp / "copy"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(run, dst)
    return dst


def _positions(size: int, seed: int, extra: list[int]) -> list[int]:
    rng = random.Random(seed)
    picked = set(rng.sample(range(size), min(size, 150))) | {0, size - 1}
    picked |= {p for p in extra if 0 <= p < size}
    return sorted(picked)


def _flip(path: Path, pos: int, original: bytes) -> None:
    data = bytearray(original)
    data[pos] ^= 0x01
    path.write_bytes(bytes(data))


def test_flipping_records_bytes(sealed: tuple[Path, TrustPolicy], tmp_path: Path) -> None:
    run, trust = sealed
    copy = _copy(run, tmp_path)
    original = (copy / "records.jsonl").read_bytes()
    for pos in _positions(len(original), 1, []):
        _flip(copy / "records.jsonl", pos, original)
        fails = failed(verify_run(copy, trust))
        assert "records.jsonl digest mismatch" in fails.get("subjects", ""), (pos, fails)


def test_flipping_statement_bytes(sealed: tuple[Path, TrustPolicy], tmp_path: Path) -> None:
    run, trust = sealed
    copy = _copy(run, tmp_path)
    original = (copy / "statement.json").read_bytes()
    for pos in _positions(len(original), 2, []):
        _flip(copy / "statement.json", pos, original)
        fails = failed(verify_run(copy, trust))
        assert set(fails) == {"statement"}, (pos, fails)
        assert "statement.json differs from the signed envelope payload" in fails["statement"]


def test_flipping_envelope_bytes(sealed: tuple[Path, TrustPolicy], tmp_path: Path) -> None:
    run, trust = sealed
    copy = _copy(run, tmp_path)
    original = (copy / "envelope.dsse.json").read_bytes()
    tail = list(range(len(original) - 200, len(original)))  # payloadType, keyid, sig
    for pos in _positions(len(original), 3, tail):
        _flip(copy / "envelope.dsse.json", pos, original)
        fails = failed(verify_run(copy, trust))
        assert fails, pos
        assert {"envelope signature", "inclusion"} & set(fails), (pos, fails)


def test_flipping_proof_and_checkpoint_bytes(
    sealed: tuple[Path, TrustPolicy], tmp_path: Path
) -> None:
    run, trust = sealed
    copy = _copy(run, tmp_path)
    original = (copy / "entry.tlog-proof").read_bytes()
    checkpoint_at = original.index(b"\n\n") + 2
    for pos in range(len(original)):  # every byte: the proof lines, then the signed checkpoint
        _flip(copy / "entry.tlog-proof", pos, original)
        fails = failed(verify_run(copy, trust))
        if pos >= checkpoint_at:
            assert "checkpoint signature" in fails, (pos, fails)
        else:
            assert {"checkpoint signature", "inclusion"} & set(fails), (pos, fails)
        assert set(fails) <= {"checkpoint signature", "inclusion"}, (pos, fails)
    # Entry 36 is 37's sibling: same proof length, so only the root comparison can catch it.
    (copy / "entry.tlog-proof").write_bytes(original.replace(b"index 37\n", b"index 36\n"))
    assert failed(verify_run(copy, trust)) == {"inclusion": "inclusion proof does not reach root"}


def test_signed_summary_that_records_do_not_support(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path / "run", n=40)
    summary = orjson.loads((run / "summary.json").read_bytes())
    true_p99 = summary["ttft_ms"]["p99"]
    summary["ttft_ms"]["p99"] = 812.4
    (run / "summary.json").write_bytes(orjson.dumps(summary))
    signer = Signer(name="inferaudit-runner", seed=bytes(range(32)))
    seal_run(run, signer, None)
    report = verify_run(run, TrustPolicy(signers=(signer.verifier(),)))
    fails = failed(report)
    assert fails["summary"] == f"summary.ttft_ms.p99 differs: 812.4 vs {true_p99}"
    assert fails["checkpoint signature"] == "entry.tlog-proof is missing"
    assert "envelope signature" not in fails


def test_summary_diffs_name_each_key() -> None:
    a = {"requests": 5, "ttft_ms": {"p50": 1.0, "p99": 2.0}, "checks": ["x"], "valid": True}
    b = {"requests": 5, "ttft_ms": {"p50": 1.0, "p99": 2.5}, "valid": 1, "extra": None}
    assert summary_diffs(a, b) == [
        "summary.extra is recomputed but not signed",
        "summary.ttft_ms.p99 differs: 2.0 vs 2.5",
        "summary.valid differs: true vs 1",
    ]


def test_cli_keys_ledger_verify(tmp_path: Path) -> None:
    from inferaudit.cli import app

    runner = CliRunner()
    home = tmp_path / "home"
    h = ["--data-dir", str(home)]

    def cli(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return result.output

    vkey = cli("keys", "generate", "--name", "alice.test", *h).strip().splitlines()[-1]
    assert vkey.startswith("alice.test+")
    assert (home / "keys" / "alice.test.key").stat().st_mode & 0o777 == 0o600
    assert vkey in cli("keys", "list", *h)

    run = make_run_dir(tmp_path / "run", n=8)
    seal_run(run, load_or_create_signer(home, "inferaudit-runner"), None)
    out = cli("ledger", "append", str(run / "envelope.dsse.json"), *h)
    assert out.startswith("0\t") and "\ninferaudit-ledger\n1\n" in out
    cli("ledger", "prove", "--leaf", str(run / "envelope.dsse.json"), "-o",
        str(run / "entry.tlog-proof"), *h)  # fmt: skip
    assert cli("ledger", "prove", "0", *h) == (run / "entry.tlog-proof").read_text()
    cli("keys", "trust", "-o", str(tmp_path / "trust.txt"), *h)
    out = cli("verify", str(run), "--trust", str(tmp_path / "trust.txt"))
    assert out.count("ok ") == 8 and "verified" in out

    other = make_run_dir(tmp_path / "other", n=6)
    seal_run(other, load_or_create_signer(home, "inferaudit-runner"), None)
    cli("ledger", "append", str(other / "envelope.dsse.json"), *h)
    lines = cli("ledger", "consistency", "1", "2", *h).splitlines()
    assert lines[0].startswith("old 1 ") and lines[1].startswith("new 2 ") and len(lines) == 3
    assert "size        2" in cli("ledger", "show", *h)
    assert "tree size 2" in cli("ledger", "export-tiles", str(tmp_path / "tiles"), *h)
    assert (tmp_path / "tiles" / "tile" / "0" / "000.p" / "2").stat().st_size == 64

    records = run / "records.jsonl"
    records.write_bytes(records.read_bytes().replace(b'"id":3', b'"id":4', 1))
    result = runner.invoke(app, ["verify", str(run), "--trust", str(tmp_path / "trust.txt")])
    assert result.exit_code == 1
    assert "FAIL subjects: records.jsonl digest mismatch" in result.output


def test_out_of_domain_statement_is_a_failure_not_a_crash(tmp_path: Path) -> None:
    from inferaudit.seal.evidence import sign_envelope

    run = make_run_dir(tmp_path / "run", n=5)
    signer = Signer(name="inferaudit-runner", seed=bytes(range(32)))
    payload = b'{"_type":"https://in-toto.io/Statement/v1","predicate":{"n":9007199254740993}}'
    (run / "envelope.dsse.json").write_bytes(orjson.dumps(sign_envelope(payload, signer)))
    (run / "statement.json").write_bytes(payload)
    fails = failed(verify_run(run, TrustPolicy(signers=(signer.verifier(),))))
    assert "envelope signature" not in fails
    assert "exceeds safe integer domain" in fails["statement"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["statement.json", "envelope.dsse.json"])
def test_flipping_every_byte(sealed: tuple[Path, TrustPolicy], tmp_path: Path, name: str) -> None:
    """Exhaustive version of the sampled flips above (every byte of the signed artefacts).

    ``summarize`` is stubbed to keep this quick, so the summary step always fails here."""
    run, trust = sealed
    copy = _copy(run, tmp_path)
    original = (copy / name).read_bytes()
    for pos in range(len(original)):
        _flip(copy / name, pos, original)
        fails = failed(verify_run(copy, trust, summarize=lambda records, spec: {}))
        if name == "statement.json":
            assert set(fails) == {"statement", "summary"}, (pos, fails)
        else:
            assert {"envelope signature", "inclusion"} & set(fails), (pos, fails)
