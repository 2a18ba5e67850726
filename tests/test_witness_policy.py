"""Trust policies with witnesses: `witness KEY` lines and a `witnesses K of N` quorum, parsed
strictly; `verify` counts valid cosignatures of the run's checkpoint (and, with --log, of the
log's current one) by distinct policy witnesses."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from conftest_ledger import make_run_dir
from inferaudit.seal.keys import (
    ALG_COSIGNATURE_V1,
    KeyFormatError,
    Signer,
    TrustPolicy,
    Verifier,
    key_id,
    load_or_create_signer,
    load_trust,
    parse_trust,
)
from inferaudit.seal.ledger.note import (
    Signature,
    cosignature_message,
    parse_tlog_proof,
    split_note,
)
from inferaudit.seal.ledger.store import open_ledger
from inferaudit.seal.ledger.tile_client import TileLog
from inferaudit.seal.ledger.tiles import export_tiles
from inferaudit.seal.publish import seal_run
from inferaudit.seal.trust import CheckpointMemory, witness_quorum
from inferaudit.seal.verify import Report, verify_run

T = 1_700_000_000  # 2023-11-14 22:13:20 UTC
DATA = Path(__file__).parent / "data"


class Witness:
    """A witness key pair made here (Ed25519, verifier key type 0x04)."""

    def __init__(self, name: str, seed: int) -> None:
        self.sk = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
        pub = self.sk.public_key().public_bytes_raw()
        self.key = Verifier(name, key_id(name, ALG_COSIGNATURE_V1, pub), pub, ALG_COSIGNATURE_V1)

    def cosign(self, note: str, timestamp: int = T, text: str | None = None) -> str:
        """``note`` with this witness's cosignature line of ``text`` (default: its own) added."""
        text = split_note(note)[0] if text is None else text
        raw = timestamp.to_bytes(8, "big") + self.sk.sign(cosignature_message(text, timestamp))
        return note + Signature(self.key.name, self.key.key_hash, raw).line()


A, B, C, D = (Witness(n, i) for i, n in enumerate(["w-a", "w-b", "w-c", "w-d"], 1))
SIGNER = Signer(name="inferaudit-runner", seed=bytes(range(32))).verifier()
LOG = Signer(name="inferaudit-ledger", seed=bytes(range(1, 33))).verifier()


def _policy_text(*extra: str) -> str:
    return "\n".join(["# inferaudit trust policy v1", f"signer {SIGNER.text()}",
                      f"log {LOG.text()}", *extra]) + "\n"  # fmt: skip


# -- parsing -------------------------------------------------------------------------------------


def test_witnesses_and_quorum_parse_and_round_trip() -> None:
    text = _policy_text(*(f"witness {w.key.text()}" for w in (A, B, C)), "witnesses 2 of 3")
    policy = parse_trust(text, "t.txt")
    assert policy.witnesses == (A.key, B.key, C.key)
    assert (policy.witness_quorum, policy.witnesses_required) == (2, 2)
    assert policy.text() == text
    assert parse_trust(policy.text(), "t.txt") == policy
    assert policy.describe() == (
        f"trusting signer {SIGNER.keyid}, log {LOG.keyid}, witnesses 2 of 3: "
        f"{A.key.keyid}, {B.key.keyid}, {C.key.keyid} (t.txt)"
    )
    # Witness lines without a quorum line: every one of them is required.
    text = _policy_text(f"witness {A.key.text()}  # the first", f"witness {B.key.text()}")
    policy = parse_trust(text)
    assert (policy.witness_quorum, policy.witnesses_required) == (None, 2)
    assert not any(line.startswith("witnesses ") for line in policy.text().splitlines())
    assert parse_trust(policy.text()) == policy
    assert policy.describe() == (
        f"trusting signer {SIGNER.keyid}, log {LOG.keyid}, witnesses 2 of 2: {A.key.keyid}, "
        f"{B.key.keyid} (trust policy)"
    )


def test_policies_without_witnesses_read_as_before() -> None:
    for fixture in ("evidence-v1", "evidence-v2"):
        path = DATA / fixture / "trust.txt"
        policy = load_trust(path)
        assert (policy.witnesses, policy.witness_quorum, policy.witnesses_required) == ((), None, 0)
        assert policy.text() == parse_trust(path.read_text()).text()
        assert "witness" not in policy.describe()
    assert witness_quorum("x\n\n— k AAAAAAA=\n", TrustPolicy()).detail == (
        "no witness required by the policy"
    )


W = f"witness {A.key.text()}"


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        ([f"witness {LOG.text()}"],
         "t:4: witness key inferaudit-ledger is not a cosignature key (0x04)"),
        ([f"log {A.key.text()}"], "t:4: log key w-a is a witness key (0x04), not a signing key"),
        ([f"signer {B.key.text()}"],
         "t:4: signer key w-b is a witness key (0x04), not a signing key"),
        ([W, "witnesses 1 of 2"], "t:5: 'witnesses 1 of 2' but the policy lists 1 witness key"),
        ([W, f"witness {B.key.text()}", "witnesses 2 of 3"],
         "t:6: 'witnesses 2 of 3' but the policy lists 2 witness keys"),
        (["witnesses 1 of 1"], "t:4: 'witnesses 1 of 1' but the policy lists 0 witness keys"),
        ([W, "witnesses 0 of 1"], "t:5: 'witnesses 0 of 1' needs 1 <= K <= N"),
        ([W, "witnesses 2 of 1"], "t:5: 'witnesses 2 of 1' needs 1 <= K <= N"),
        ([W, "witnesses 01 of 1"], "t:5: expected 'witnesses K of N' (canonical decimals)"),
        ([W, "witnesses +1 of 1"], "t:5: expected 'witnesses K of N' (canonical decimals)"),
        ([W, "witnesses 1 of 1 extra"], "t:5: expected 'witnesses K of N' (canonical decimals)"),
        ([W, "witnesses  1 of 1"], "t:5: expected 'witnesses K of N' (canonical decimals)"),
        ([W, "witnesses one of one"], "t:5: expected 'witnesses K of N' (canonical decimals)"),
        ([W, "witnesses 1 of 1", "witnesses 1 of 1"],
         "t:6: a second 'witnesses' line (first on line 5)"),
        ([W, W], f"t:5: witness key {A.key.keyid} is listed twice"),
        (["witness"], "t:4: verifier key '': expected name+hexid+base64"),
        (["quorum 1 of 1"],
         "t:4: expected 'signer KEY', 'log KEY', 'witness KEY' or 'witnesses K of N'"),
    ],
)  # fmt: skip
def test_bad_witness_lines_are_refused_naming_the_line(lines: list[str], error: str) -> None:
    with pytest.raises(KeyFormatError) as info:
        parse_trust(_policy_text(*lines), "t")
    assert str(info.value) == error


def test_a_policy_built_in_code_is_checked_too() -> None:
    with pytest.raises(KeyFormatError, match=r"^witness key inferaudit-ledger\+[0-9a-f]{8} is not"):
        TrustPolicy(witnesses=(LOG,))
    with pytest.raises(KeyFormatError, match=r"^witness quorum 3 is outside 1\.\.2 "):
        TrustPolicy(witnesses=(A.key, B.key), witness_quorum=3)
    with pytest.raises(KeyFormatError, match=r"^a witness key is listed twice$"):
        TrustPolicy(witnesses=(A.key, A.key))


# -- the quorum on notes -------------------------------------------------------------------------


def _note() -> str:
    signer = Signer(name="inferaudit-ledger", seed=bytes(range(1, 33)))
    text = "inferaudit-ledger\n5\n" + "A" * 43 + "=\n"
    raw = signer.sign(text.encode())
    return text + "\n" + Signature(signer.name, signer.key_hash, raw).line()


TWO_OF_THREE = TrustPolicy(witnesses=(A.key, B.key, C.key), witness_quorum=2)


def test_two_of_three_passes_with_two_and_fails_with_one() -> None:
    note = _note()
    q = witness_quorum(B.cosign(A.cosign(note), T + 60), TWO_OF_THREE)
    assert q.ok and q.cosigned == ((A.key, T), (B.key, T + 60))
    assert q.detail == (
        f"2 of 3 witnesses cosigned ({A.key.keyid} at 2023-11-14 22:13:20 UTC, "
        f"{B.key.keyid} at 2023-11-14 22:14:20 UTC); the policy needs 2"
    )
    q = witness_quorum(A.cosign(note), TWO_OF_THREE)
    assert not q.ok
    assert q.detail == f"1 of 3 witnesses cosigned ({A.key.keyid}); the policy needs 2"
    assert witness_quorum(note, TWO_OF_THREE).detail == (
        "0 of 3 witnesses cosigned; the policy needs 2"
    )


def test_unknown_repeated_and_wrong_text_cosignatures_do_not_count() -> None:
    note = _note()
    # D is no witness of the policy: its cosignature is ignored, not even named.
    q = witness_quorum(D.cosign(A.cosign(note)), TWO_OF_THREE)
    assert (q.ok, q.detail) == (
        False,
        f"1 of 3 witnesses cosigned ({A.key.keyid}); the policy needs 2",
    )
    # The same witness twice is one witness.
    q = witness_quorum(A.cosign(A.cosign(note), T + 1), TWO_OF_THREE)
    assert (q.ok, len(q.cosigned)) == (False, 1)
    # B's cosignature of another checkpoint's text, pasted under this one: never counted.
    other = "inferaudit-ledger\n6\n" + "B" * 43 + "=\n"
    q = witness_quorum(B.cosign(A.cosign(note), text=other), TWO_OF_THREE)
    assert (q.ok, q.detail) == (
        False,
        f"1 of 3 witnesses cosigned ({A.key.keyid}); the policy needs 2; "
        f"not counted: an invalid cosignature by {B.key.keyid}",
    )
    # Lines under B's name and key ID signed by C's key, or too short: not counted either.
    made_by_c = C.sk.sign(cosignature_message(split_note(note)[0], T))
    for raw in (T.to_bytes(8, "big") + made_by_c, bytes(70)):
        line = Signature(B.key.name, B.key.key_hash, raw).line()
        q = witness_quorum(A.cosign(note) + line, TWO_OF_THREE)
        assert (q.ok, q.cosigned) == (False, ((A.key, T),))
        assert q.detail.endswith(f"; not counted: an invalid cosignature by {B.key.keyid}")


def test_all_witnesses_are_needed_without_a_quorum_line() -> None:
    policy = parse_trust(_policy_text(f"witness {A.key.text()}", f"witness {B.key.text()}"))
    note = _note()
    assert witness_quorum(B.cosign(A.cosign(note)), policy).ok
    q = witness_quorum(B.cosign(note), policy)
    assert (q.ok, q.detail) == (
        False,
        f"1 of 2 witnesses cosigned ({B.key.keyid}); the policy needs 2",
    )


# -- verify_run ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, TrustPolicy]:
    """(data dir of the log, sealed run, a policy trusting its keys) — checkpoint size 3."""
    base = tmp_path_factory.mktemp("witnessed")
    home = base / "home"
    run = make_run_dir(base / "run", n=10)
    signer = load_or_create_signer(home, "inferaudit-runner")
    with open_ledger(f"sqlite:///{home / 'ledger.sqlite3'}", home) as ledger:
        ledger.append([b"one", b"two"])
        seal_run(run, signer, ledger)
        assert ledger.signer is not None
        policy = TrustPolicy(signers=(signer.verifier(),), logs=(ledger.signer.verifier(),))
    return home, run, policy


def _cosigned_copy(run: Path, dst: Path, *witnesses: Witness) -> Path:
    copy = dst / "copy"
    shutil.copytree(run, copy)
    proof = parse_tlog_proof((run / "entry.tlog-proof").read_text())
    note = proof.checkpoint
    for w in witnesses:
        note = w.cosign(note)
    (copy / "entry.tlog-proof").write_text(replace(proof, checkpoint=note).text())
    return copy


def _step(report: Report, name: str) -> tuple[bool, str]:
    step = next(s for s in report.steps if s.name == name)
    return step.ok, step.detail


def test_verify_needs_two_of_three_witnesses(
    sealed: tuple[Path, Path, TrustPolicy], tmp_path: Path
) -> None:
    _, run, base = sealed
    policy = replace(base, witnesses=(A.key, B.key, C.key), witness_quorum=2)
    report = verify_run(_cosigned_copy(run, tmp_path / "two", A, D, C), policy)
    assert report.ok, report.failures()
    assert _step(report, "witnesses") == (
        True,
        f"2 of 3 witnesses cosigned ({A.key.keyid} at 2023-11-14 22:13:20 UTC, "
        f"{C.key.keyid} at 2023-11-14 22:13:20 UTC); the policy needs 2",
    )
    report = verify_run(_cosigned_copy(run, tmp_path / "one", A, D), policy)
    assert [s.name for s in report.failures()] == ["witnesses"]
    assert _step(report, "witnesses") == (
        False,
        f"1 of 3 witnesses cosigned ({A.key.keyid}); the policy needs 2",
    )
    assert report.verified is None
    # The same run under a policy without witnesses: nothing required, D's line is ignored.
    assert _step(verify_run(_cosigned_copy(run, tmp_path / "none", D), base), "witnesses") == (
        True,
        "no witness required by the policy",
    )


def test_verify_log_needs_the_quorum_on_the_logs_checkpoint_too(
    sealed: tuple[Path, Path, TrustPolicy], tmp_path: Path
) -> None:
    home, run, base = sealed
    tiles = tmp_path / "tiles"
    with open_ledger(f"sqlite:///{home / 'ledger.sqlite3'}", home) as ledger:
        export_tiles(ledger, tiles)
    copy = _cosigned_copy(run, tmp_path / "run", A)
    policy = replace(base, witnesses=(A.key,))

    def check() -> Report:
        memory = CheckpointMemory(tmp_path / "v" / "checkpoints", remote=TileLog(str(tiles)))
        return verify_run(copy, replace(policy, memory=memory))

    report = check()  # the log's checkpoint file carries no cosignature
    assert [s.name for s in report.failures()] == ["log checkpoint", "log entry"]
    assert _step(report, "log checkpoint")[0] is False
    detail = _step(report, "log checkpoint")[1]
    assert detail == (
        f"the log at {tiles}: inferaudit-ledger size 3 signed by {base.logs[0].keyid}; "
        "0 of 1 witnesses cosigned; the policy needs 1"
    )
    (tiles / "checkpoint").write_text(A.cosign((tiles / "checkpoint").read_text(), T + 5))
    report = check()
    assert report.ok, report.failures()
    assert _step(report, "log checkpoint")[1].endswith(
        f"1 of 1 witnesses cosigned ({A.key.keyid} at 2023-11-14 22:13:25 UTC); the policy needs 1"
    )


def test_keys_trust_writes_witness_lines(tmp_path: Path) -> None:
    from inferaudit.cli import app

    home = tmp_path / "home"
    load_or_create_signer(home, "inferaudit-runner")
    load_or_create_signer(home, "inferaudit-ledger")
    (tmp_path / "a.pub").write_text(A.key.text() + "\n")
    runner = CliRunner()
    args = ["keys", "trust", "--data-dir", str(home), "--witness", str(tmp_path / "a.pub"),
            "--witness", B.key.text(), "--witness", C.key.text()]  # fmt: skip
    result = runner.invoke(app, [*args, "--witness-quorum", "2"])
    assert result.exit_code == 0, result.output
    policy = parse_trust(result.output)
    assert (policy.witnesses, policy.witness_quorum) == ((A.key, B.key, C.key), 2)
    assert result.output.endswith(f"witness {C.key.text()}\nwitnesses 2 of 3\n")
    result = runner.invoke(app, args)
    assert parse_trust(result.output).witnesses_required == 3
    assert not any(line.startswith("witnesses ") for line in result.output.splitlines())
    bad = runner.invoke(app, ["keys", "trust", "--data-dir", str(home), "--witness", LOG.text()])
    assert isinstance(bad.exception, KeyFormatError)
    assert str(bad.exception) == (
        f"--witness {LOG.text()}: {LOG.keyid} is not a cosignature key (0x04)"
    )
    bad = runner.invoke(app, [*args, "--witness-quorum", "4"])
    assert str(bad.exception) == "witness quorum 4 is outside 1..3 (the witnesses listed)"
    bad = runner.invoke(app, ["keys", "trust", "--data-dir", str(home), "--witness-quorum", "1"])
    assert str(bad.exception) == "--witness-quorum needs at least one --witness"


def test_keys_trust_takes_a_remote_log_key_as_file_or_text(tmp_path: Path) -> None:
    """A log service's key is not in the verifier's data directory: `--log` takes its .pub file
    or its text; a witness key there is refused, as on a policy file's `log` line."""
    from inferaudit.cli import app

    home = tmp_path / "home"
    runner_key = load_or_create_signer(home, "inferaudit-runner").verifier()
    (tmp_path / "log.pub").write_text(LOG.text() + "\n")
    runner = CliRunner()
    base = ["keys", "trust", "--data-dir", str(home)]
    for given in (str(tmp_path / "log.pub"), LOG.text()):
        result = runner.invoke(app, [*base, "--log", given])
        assert result.exit_code == 0, result.output
        policy = parse_trust(result.output)
        assert (policy.signers, policy.logs) == ((runner_key,), (LOG,))
    bad = runner.invoke(app, [*base, "--log", A.key.text()])
    assert str(bad.exception) == (
        f"--log {A.key.text()}: {A.key.keyid} is a witness cosignature key (0x04)"
    )
    missing = runner.invoke(app, [*base, "--log", str(tmp_path / "nope.pub")])
    assert (
        str(missing.exception) == f"--log {tmp_path / 'nope.pub'}: no such file, and not a key text"
    )
