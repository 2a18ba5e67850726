"""Offline `verify`: a sealed hand-made run passes; any flipped byte fails and says where."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from conftest_ledger import SEED, make_run_dir
from inferaudit.seal.keys import Signer, TrustPolicy, load_or_create_signer
from inferaudit.seal.ledger.store import open_ledger
from inferaudit.seal.publish import seal_run
from inferaudit.seal.verify import Report, summary_diffs, verify_run

STEPS = [
    "envelope signature",
    "statement",
    "subjects",
    "meta",
    "seed",
    "checkpoint signature",
    "witnesses",
    "checkpoint consistency",
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
    assert [c.name for c in report.steps] == STEPS
    assert report.ok, failed(report)
    details = {c.name: c.detail for c in report.steps}
    assert details["inclusion"] == "entry 37 of 38"
    assert details["summary"] == "recomputed from 40 records: equal"
    assert details["envelope signature"].startswith("signed by inferaudit-runner+")
    assert details["verdicts"] == "4 recomputed from the records: equal"
    assert details["statement"] == "in-toto Statement v1, https://inferaudit.dev/inference-run/v2"
    assert details["seed"] == "skipped: no commitment (v1 spec)"
    assert details["checkpoint consistency"] == (
        "not compared: this trust policy keeps no checkpoints"
    )
    assert details["witnesses"] == "no witness required by the policy"
    assert report.verified is not None
    assert report.verified.ledger_index == 37
    assert report.verified.predicate_type == "https://inferaudit.dev/inference-run/v2"


@pytest.mark.parametrize("layout", ["v2", "v1"])
def test_a_verdict_signed_wrong_is_caught(tmp_path: Path, layout: str) -> None:
    """A signer who flips a verdict before signing: signature and digests hold, the verdicts
    step fails (v2: against verdicts.json; v1: against summary.json's checks)."""
    home = tmp_path / "home"
    run = make_run_dir(tmp_path / "run", n=20, layout=layout)
    where = run / ("verdicts.json" if layout == "v2" else "summary.json")
    data = orjson.loads(where.read_bytes())
    verdicts = data if layout == "v2" else data["checks"]
    errors = next(c for c in verdicts if c["check"] == "errors")
    assert errors["verdict"] == "fail"  # make_records leaves one request failed
    errors["verdict"] = "pass"
    where.write_bytes(orjson.dumps(data))
    signer = load_or_create_signer(home, "inferaudit-runner")
    with open_ledger(f"sqlite:///{home / 'ledger.sqlite3'}", home) as ledger:
        seal_run(run, signer, ledger)
        assert ledger.signer is not None
        trust = TrustPolicy(signers=(signer.verifier(),), logs=(ledger.signer.verifier(),))
    report = verify_run(run, trust)
    assert list(failed(report)) == ["verdicts"]
    assert failed(report)["verdicts"].startswith("verdict errors differs: signed pass")
    assert report.verified is None


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
        "checkpoint consistency": "no trusted checkpoint to compare",
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
        allowed = {"checkpoint signature", "checkpoint consistency", "inclusion"}
        assert set(fails) <= allowed, (pos, fails)
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
    out = cli("verify", str(run), "--trust", str(tmp_path / "trust.txt"), *h)
    assert out.count("ok ") == len(STEPS) and "verified" in out
    assert out.startswith("policy: trusting signer inferaudit-runner+")
    assert f"(trust policy {tmp_path / 'trust.txt'})" in out.splitlines()[0]

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
    result = runner.invoke(app, ["verify", str(run), "--trust", str(tmp_path / "trust.txt"), *h])
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


def _sealed_copy(tmp_path: Path, **kw: object) -> tuple[Path, TrustPolicy]:
    run = make_run_dir(tmp_path / "run", n=12, **kw)  # type: ignore[arg-type]
    signer = Signer(name="inferaudit-runner", seed=bytes(range(32)))
    seal_run(run, signer, None)
    return run, TrustPolicy(signers=(signer.verifier(),))


def _without_ledger(report: Report) -> dict[str, str]:
    """The failures other than the ones every ledger-less run has (no proof file)."""
    fails = failed(report)
    for name in ("checkpoint signature", "checkpoint consistency", "inclusion"):
        fails.pop(name)
    return fails


def test_meta_json_is_evidence_in_v2(tmp_path: Path) -> None:
    run, trust = _sealed_copy(tmp_path)
    assert _without_ledger(verify_run(run, trust)) == {}
    original = (run / "meta.json").read_bytes()
    (run / "meta.json").write_bytes(original.replace(b'"host":"test"', b'"host":"best"'))
    fails = _without_ledger(verify_run(run, trust))
    assert fails == {
        "subjects": "meta.json digest mismatch",
        "meta": "meta.json environment differs from the signed environment",
    }
    _flip(run / "meta.json", 3, original)
    assert "meta.json digest mismatch" in _without_ledger(verify_run(run, trust))["subjects"]
    (run / "meta.json").unlink()
    assert _without_ledger(verify_run(run, trust)) == {
        "subjects": "meta.json is missing",
        "meta": "meta.json is missing (the statement binds it)",
    }


def test_meta_json_in_v1_is_compared_with_the_predicate(tmp_path: Path) -> None:
    run, trust = _sealed_copy(tmp_path, layout="v1")
    report = verify_run(run, trust)
    assert _without_ledger(report) == {}
    assert {s.name: s.detail for s in report.steps}["statement"].endswith("inference-run/v1")
    meta = orjson.loads((run / "meta.json").read_bytes())
    meta["models"]["data"][0]["id"] = "other-model"
    (run / "meta.json").write_bytes(orjson.dumps(meta))
    assert _without_ledger(verify_run(run, trust)) == {
        "meta": "meta.json models differs from the signed models"
    }
    (run / "meta.json").unlink()
    report = verify_run(run, trust)
    assert _without_ledger(report) == {}
    assert {s.name: s.detail for s in report.steps}["meta"] == (
        "meta.json is missing: it is not evidence in v1 (the signed copy is)"
    )


def test_v2_files_added_or_edited_after_signing(tmp_path: Path) -> None:
    run, trust = _sealed_copy(tmp_path)
    (run / "health.jsonl").write_bytes(b"")  # no windows: only its binding can fail
    assert _without_ledger(verify_run(run, trust)) == {
        "subjects": "health.jsonl is present but not bound by the statement"
    }
    (run / "health.jsonl").unlink()
    verdicts = orjson.loads((run / "verdicts.json").read_bytes())
    verdicts[0]["summary"] = "all good"
    (run / "verdicts.json").write_bytes(orjson.dumps(verdicts))
    fails = _without_ledger(verify_run(run, trust))
    assert fails["subjects"] == "verdicts.json digest mismatch"
    assert fails["summary file"] == "verdicts.json differs from the signed verdicts"
    assert fails["verdicts"].startswith(f"verdict {verdicts[0]['check']} differs: signed ")


def test_seed_commitment(tmp_path: Path) -> None:
    run, trust = _sealed_copy(tmp_path, seed=SEED)
    report = verify_run(run, trust)
    assert _without_ledger(report) == {}
    assert {s.name: s.detail for s in report.steps}["seed"].startswith(
        "seed.json matches the commitment "
    )
    (run / "seed.json").write_bytes(orjson.dumps({"seed": bytes(32).hex()}))
    fails = _without_ledger(verify_run(run, trust))
    assert fails["seed"] == "seed.json does not match the spec's seed_commitment"
    (run / "seed.json").write_bytes(b'{"seed": "not hex"}')
    assert _without_ledger(verify_run(run, trust))["seed"] == (
        'seed.json must be {"seed": "<64 lowercase hex chars>"}'
    )
    (run / "seed.json").unlink()
    assert _without_ledger(verify_run(run, trust)) == {
        "subjects": "seed.json is missing",
        "seed": "the spec commits to a seed but seed.json is missing",
    }
