"""The C2SP tlog-witness logic: it cosigns what extends its view and refuses everything else."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from conftest_ledger import database
from inferaudit.errors import ConfigError, LedgerError
from inferaudit.home import make_engine
from inferaudit.seal.keys import (
    ALG_COSIGNATURE_V1,
    Signer,
    key_id,
    parse_signer,
    parse_verifier,
)
from inferaudit.seal.ledger import merkle
from inferaudit.seal.ledger.note import (
    Checkpoint,
    open_note,
    parse_checkpoint,
    sign_checkpoint,
    split_cosignature,
    split_note,
    verify_cosignature,
)
from inferaudit.seal.ledger.store import Ledger
from inferaudit.seal.ledger.witness import (
    MAX_PROOF_LINES,
    Witness,
    WitnessRefusal,
    WitnessSigner,
    create_witness_key,
    list_forks,
    load_witness_key,
)

ORIGIN = "log.example/test"
NOW = 1_727_964_367
# C2SP tlog-cosignature vector (transparency-dev/formats note/note_cosigv1_test.go)
COSIG_VKEY = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"
COSIG_SIG = (
    "ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWWOworDcFiEBYJ"
    "XORmnFBOBA=="
)
# Go sumdb/note test key (a standard 0x01 private key; the witness derives its 0x04 key ID)
SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"

LOG_KEY = Signer(name=ORIGIN, seed=bytes(range(32)))
WITNESS_KEY = WitnessSigner(Signer(name="witness.example/w1", seed=bytes(range(32, 64))))


def _body(old: int, note: str, proof: list[bytes] | tuple[bytes, ...] = ()) -> bytes:
    lines = [f"old {old}", *(base64.b64encode(h).decode() for h in proof)]
    return ("\n".join(lines) + "\n\n" + note).encode()


class Log:
    """A ledger that grows on request and signs a checkpoint at each size it reaches."""

    def __init__(self, path: Path, tag: str = "entry", signer: Signer = LOG_KEY) -> None:
        self.ledger = Ledger(make_engine(f"sqlite:///{path}"), signer=signer)
        self.tag = tag

    def grow(self, size: int) -> str:
        have = self.ledger.size()
        self.ledger.append([f"{self.tag} {i}".encode() for i in range(have, size)])
        return self.ledger.sign_checkpoint()

    def body(self, old: int, note: str) -> bytes:
        size = parse_checkpoint(split_note(note)[0]).size
        return _body(old, note, self.ledger.consistency_proof(old, size))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The witness's database: a SQLite file, or a private schema on the PostgreSQL server."""
    with database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def engine(db: str) -> Iterator[Engine]:
    engine = make_engine(db)
    yield engine
    engine.dispose()


@pytest.fixture
def witness(tmp_path: Path, engine: Engine) -> Witness:
    return Witness(
        engine, WITNESS_KEY, {ORIGIN: (LOG_KEY.verifier(),)}, tmp_path, clock=lambda: NOW
    )


@pytest.fixture
def log(tmp_path: Path) -> Log:
    return Log(tmp_path / "log.sqlite3")


def _refusal(witness: Witness, body: bytes) -> WitnessRefusal:
    with pytest.raises(WitnessRefusal) as info:
        witness.add_checkpoint(body)
    return info.value


def _held(witness: Witness) -> tuple[int, bytes]:
    (state,) = witness.states()
    return state.size, state.root


def test_cosigns_a_first_checkpoint(witness: Witness, log: Log) -> None:
    note = log.grow(3)
    line = witness.add_checkpoint(log.body(0, note))
    assert line.startswith("— witness.example/w1 ") and line.endswith("\n")
    raw = base64.b64decode(line.split(" ")[2])
    assert len(raw) == 4 + 8 + 64
    assert int.from_bytes(raw[:4], "big") == key_id(
        "witness.example/w1", ALG_COSIGNATURE_V1, WITNESS_KEY.signer.public
    )
    assert int.from_bytes(raw[4:12], "big") == NOW
    text = split_note(note)[0]
    cosigned = note + line
    opened = open_note(cosigned, [LOG_KEY.verifier(), WITNESS_KEY.verifier()])
    assert [s.name for s in opened.verified] == [ORIGIN, "witness.example/w1"]
    assert verify_cosignature(text, opened.verified[1], WITNESS_KEY.verifier()) == NOW
    assert _held(witness) == (3, log.ledger.root(3))
    # the stored view is the checkpoint with the log's signature only
    assert witness.states()[0].note == note


def test_cosigns_the_same_checkpoint_again_and_grows_with_a_proof(
    witness: Witness, log: Log
) -> None:
    note3 = log.grow(3)
    first = witness.add_checkpoint(log.body(0, note3))
    assert witness.add_checkpoint(log.body(3, note3)) == first  # same clock, same key: same line
    note7 = log.grow(7)
    line = witness.add_checkpoint(log.body(3, note7))
    sig = split_note(note7 + line)[1][1]
    assert verify_cosignature(split_note(note7)[0], sig, WITNESS_KEY.verifier()) == NOW
    assert _held(witness) == (7, log.ledger.root(7))
    note8 = log.grow(8)  # 7 -> 8: a proof of more than one hash
    assert len(log.ledger.consistency_proof(7, 8)) == 4
    witness.add_checkpoint(log.body(7, note8))
    assert _held(witness) == (8, log.ledger.root(8))


def test_stale_view_answers_409_with_the_size_held(witness: Witness, log: Log) -> None:
    note3 = log.grow(3)
    witness.add_checkpoint(log.body(0, note3))
    note7 = log.grow(7)
    witness.add_checkpoint(log.body(3, note7))
    note9 = log.grow(9)
    refused = _refusal(witness, log.body(3, note9))
    assert (refused.status, refused.latest_size) == (409, 7)
    refused = _refusal(witness, log.body(0, note9))
    assert (refused.status, refused.latest_size) == (409, 7)
    assert _held(witness) == (7, log.ledger.root(7))
    witness.add_checkpoint(log.body(7, note9))  # the retry from the size it gave
    assert _held(witness) == (9, log.ledger.root(9))


def test_rollback_is_refused(witness: Witness, log: Log) -> None:
    note3 = log.grow(3)
    witness.add_checkpoint(log.body(0, note3))
    witness.add_checkpoint(log.body(3, log.grow(7)))
    refused = _refusal(witness, _body(3, note3))
    assert (refused.status, refused.latest_size) == (409, 7)
    refused = _refusal(witness, _body(7, note3))  # old beyond the checkpoint's size
    assert refused.status == 400
    assert _held(witness) == (7, log.ledger.root(7))
    assert list_forks(witness.home) == []  # an older checkpoint of the same tree is no fork


def test_fork_is_refused_and_saved(witness: Witness, log: Log, tmp_path: Path) -> None:
    note3 = log.grow(3)
    witness.add_checkpoint(log.body(0, note3))
    note7 = log.grow(7)
    witness.add_checkpoint(log.body(3, note7))
    # The same log key signs another tree of size 7 (a split view).
    forged_log = Log(tmp_path / "forged.sqlite3", tag="other")
    forged = forged_log.grow(7)
    assert forged_log.ledger.root(7) != log.ledger.root(7)
    refused = _refusal(witness, _body(7, forged))
    assert (refused.status, refused.latest_size) == (409, 7)
    assert _held(witness) == (7, log.ledger.root(7))
    (fork,) = list_forks(witness.home)
    assert (fork.origin, fork.size) == (ORIGIN, 7)
    assert (fork.held, fork.presented) == (note7, forged)
    assert fork.path == tmp_path / "forks" / "log.example%2Ftest-7-1.txt"
    assert fork.path.read_text() == f"{note7}\n{forged}"
    # the same fork again is refused again, and saved once
    assert _refusal(witness, _body(0, forged)).status == 409
    assert len(list_forks(witness.home)) == 1
    # a fork at an older size the witness cosigned is caught too
    forged3 = forged_log.ledger
    other3 = sign_checkpoint(Checkpoint(ORIGIN, 3, forged3.root(3)), LOG_KEY)
    assert _refusal(witness, _body(3, other3)).latest_size == 7
    assert [(f.size, f.path.name) for f in list_forks(witness.home)] == [
        (3, "log.example%2Ftest-3-1.txt"),
        (7, "log.example%2Ftest-7-1.txt"),
    ]


def test_two_concurrent_requests_cannot_both_advance(
    tmp_path: Path, db: str, engine: Engine, log: Log
) -> None:
    """Two witnesses on one database (as two processes would be): of two checkpoints of one
    size with different roots, offered at once from the same state, exactly one is cosigned."""
    logs = {ORIGIN: (LOG_KEY.verifier(),)}
    first = Witness(engine, WITNESS_KEY, logs, tmp_path, clock=lambda: NOW)
    second = Witness(
        make_engine(db),
        WITNESS_KEY,
        logs,
        tmp_path,
        clock=lambda: NOW,
    )
    first.add_checkpoint(log.body(0, log.grow(3)))
    other = Log(tmp_path / "other.sqlite3", tag="entry")
    other.grow(3)
    other.ledger.append([b"divergent 3", b"divergent 4"])
    bodies = [log.body(3, log.grow(5)), other.body(3, other.ledger.sign_checkpoint())]
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def offer(w: Witness, body: bytes) -> None:
        barrier.wait(timeout=60)
        try:
            w.add_checkpoint(body)
            statuses.append(200)
        except WitnessRefusal as exc:
            statuses.append(exc.status)

    pairs = zip((first, second), bodies, strict=True)
    threads = [threading.Thread(target=offer, args=pair) for pair in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(statuses) == [200, 409]
    size, root = _held(first)
    assert size == 5 and root in (log.ledger.root(5), other.ledger.root(5))
    assert len(list_forks(tmp_path)) == 1


def test_bad_proof_is_422(witness: Witness, log: Log) -> None:
    note3 = log.grow(3)
    assert _refusal(witness, _body(0, note3, [bytes(32)])).status == 422  # from 0: empty proof
    witness.add_checkpoint(log.body(0, note3))
    note7 = log.grow(7)
    proof = log.ledger.consistency_proof(3, 7)
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
        assert _refusal(witness, _body(3, note7, bad)).status == 422
    assert _refusal(witness, _body(3, note7, proof[:-1])).status == 422
    assert _refusal(witness, _body(3, note7)).status == 422
    assert _refusal(witness, _body(3, note3, [proof[0]])).status == 422  # same size: no proof
    assert _held(witness) == (3, log.ledger.root(3))


def test_wrong_key_is_403_and_unknown_origin_404(
    witness: Witness, log: Log, tmp_path: Path
) -> None:
    note3 = log.grow(3)
    impostor = Signer(name=ORIGIN, seed=bytes(range(64, 96)))
    other = Log(tmp_path / "impostor.sqlite3", signer=impostor)
    refused = _refusal(witness, other.body(0, other.grow(3)))
    assert refused.status == 403
    tampered = note3.replace(
        base64.b64encode(log.ledger.root(3)).decode(), base64.b64encode(bytes(32)).decode()
    )
    assert _refusal(witness, _body(0, tampered)).status == 403  # the log key's signature fails
    stranger = Log(tmp_path / "stranger.sqlite3", signer=Signer("elsewhere.example", bytes(32)))
    assert _refusal(witness, stranger.body(0, stranger.grow(2))).status == 404
    assert _held(witness) == (0, merkle.EMPTY_ROOT)
    witness.add_checkpoint(log.body(0, note3))


@pytest.mark.parametrize(
    "body",
    [
        b"old 0\n",  # no checkpoint
        b"old 0\nCHECKPOINT",  # no blank line
        b"old 03\n\n{note}",  # leading zero
        b"old +3\n\n{note}",
        b"old -1\n\n{note}",
        b"old 3 \n\n{note}",
        b"Old 0\n\n{note}",
        b"old 0\nAAAA\n\n{note}",  # a 3-byte hash
        b"old 0\n" + base64.b64encode(bytes(32)).rstrip(b"=") + b"\n\n{note}",  # unpadded
        b"old 0\n"
        + b"\n".join([base64.b64encode(bytes(32))] * (MAX_PROOF_LINES + 1))
        + b"\n\n{note}",
        b"old 0\n\n\xff{note}",  # not UTF-8
        b"old 0\n\n{text}",  # a checkpoint without signatures
        b"old 0\n\n\n{note}",  # an empty line before the note
        b"old 9\n\n{note}",  # old beyond the checkpoint's size
    ],
)
def test_malformed_requests_are_400(witness: Witness, log: Log, body: bytes) -> None:
    note = log.grow(3)
    body = body.replace(b"{note}", note.encode()).replace(b"{text}", split_note(note)[0].encode())
    assert _refusal(witness, body).status == 400


def test_witness_key_files(tmp_path: Path) -> None:
    home = tmp_path / "w"
    made = create_witness_key(home, "witness.example/w2")
    assert (home / "witness.key").stat().st_mode & 0o777 == 0o600
    vkey = (home / "witness.pub").read_text().strip()
    assert parse_verifier(vkey) == made.verifier()
    assert parse_verifier(vkey).alg == ALG_COSIGNATURE_V1
    assert load_witness_key(home).verifier() == made.verifier()
    with pytest.raises(ConfigError, match="already exists"):
        create_witness_key(home, "witness.example/w2")
    (home / "witness.key").chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_witness_key(home)


def test_cosignature_known_answers() -> None:
    """The C2SP vector's key parses as a 0x04 key with its published key ID; its signature
    splits into the published timestamp; our key IDs use sigtype 0x04 (Go's 0x01 key text)."""
    remora = parse_verifier(COSIG_VKEY)
    assert (remora.alg, remora.key_hash) == (ALG_COSIGNATURE_V1, 0xDA77ADE7)
    (sig,) = split_note(f"x\n\n— remora.n621.de {COSIG_SIG}\n")[1]
    assert sig.key_hash == 0x646846B9
    assert split_cosignature(sig)[0] == 1727964367
    peter = WitnessSigner(parse_signer(SKEY))
    assert peter.signer.key_hash == 0xC74F20A3  # the Go vector's 0x01 key ID
    assert peter.key_hash == key_id("PeterNeumann", ALG_COSIGNATURE_V1, peter.signer.public)
    assert peter.key_hash != peter.signer.key_hash
    text = "log.example/test\n1\nbjQLnP/zepicpUTmu3gKLHiQHT+zNzh2hRGjBhevoB0=\n"
    cosig = peter.cosign(text, 1727964367)
    assert split_cosignature(cosig)[0] == 1727964367
    assert verify_cosignature(text, cosig, peter.verifier()) == 1727964367
    assert verify_cosignature(text.replace("1\n", "2\n", 1), cosig, peter.verifier()) is None
    assert verify_cosignature(text, cosig, peter.signer.verifier()) is None  # a 0x01 key: no


def test_add_cosignatures(tmp_path: Path, log: Log) -> None:
    note3 = log.grow(3)
    witness = Witness(
        make_engine(f"sqlite:///{tmp_path / 'w.sqlite3'}"),
        WITNESS_KEY,
        {ORIGIN: (LOG_KEY.verifier(),)},
        tmp_path,
        clock=lambda: NOW,
    )
    cosigned3 = note3 + witness.add_checkpoint(log.body(0, note3))
    log.ledger.add_cosignatures(cosigned3)
    assert log.ledger.latest_checkpoint() == cosigned3
    assert log.ledger.checkpoint_at(3) == cosigned3
    note7 = log.grow(7)
    cosigned7 = note7 + witness.add_checkpoint(log.body(3, note7))
    log.ledger.add_cosignatures(cosigned7)
    assert (log.ledger.checkpoint_at(3), log.ledger.latest_checkpoint()) == (cosigned3, cosigned7)
    text3, sigs3 = split_note(cosigned3)
    refused = [
        text3 + "\n" + sigs3[1].line(),  # the log's own signature dropped
        note3.replace(  # another text of that size
            base64.b64encode(log.ledger.root(3)).decode(), base64.b64encode(bytes(32)).decode()
        ),
        cosigned3 + sigs3[1].line(),  # two lines by one key
        cosigned3
        + sign_checkpoint(
            Checkpoint(ORIGIN, 3, log.ledger.root(3)), Signer(ORIGIN, bytes(32))
        ).split("\n\n")[1],  # a second "log" signature
        sign_checkpoint(Checkpoint(ORIGIN, 5, log.ledger.root(5)), LOG_KEY),  # no such checkpoint
    ]
    for note in refused:
        with pytest.raises(LedgerError):
            log.ledger.add_cosignatures(note)
    assert log.ledger.checkpoint_at(3) == cosigned3


def test_witness_refuses_a_log_key_of_another_name(tmp_path: Path, engine: Engine) -> None:
    with pytest.raises(ConfigError, match="not an Ed25519 key named"):
        Witness(engine, WITNESS_KEY, {"a.example": (LOG_KEY.verifier(),)}, tmp_path)
    with pytest.raises(ConfigError, match="not an Ed25519 key named"):
        Witness(engine, WITNESS_KEY, {"witness.example/w1": (WITNESS_KEY.verifier(),)}, tmp_path)
