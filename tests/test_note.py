"""C2SP signed notes, keys, checkpoints, cosignatures, tlog-proof text: vectors, strictness."""

from __future__ import annotations

import base64

import pytest

from inferaudit.seal.keys import (
    ALG_COSIGNATURE_V1,
    KeyFormatError,
    Signer,
    key_id,
    parse_signer,
    parse_trust,
    parse_verifier,
)
from inferaudit.seal.ledger.note import (
    Checkpoint,
    InvalidSignatureError,
    NoteError,
    Signature,
    TlogProof,
    UnverifiedNoteError,
    open_checkpoint,
    open_note,
    parse_checkpoint,
    parse_tlog_proof,
    sign_checkpoint,
    sign_note,
    split_cosignature,
    split_note,
)

# golang.org/x/mod sumdb/note note_test.go (ledger-vectors.md)
SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
SIGLINE = (
    "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6"
    "KE6RyyBwJnAM=\n"
)
# C2SP signed-note example
C2SP_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
C2SP_TEXT = "This is an example message.\n"
C2SP_SIG = (
    "Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM="
)
# C2SP tlog-cosignature / transparency-dev formats note_cosigv1_test.go
COSIG_VKEY = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"
COSIG_SIG = (
    "ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWWOworDcFiEBYJ"
    "XORmnFBOBA=="
)


def test_go_key_vectors() -> None:
    signer = parse_signer(SKEY)
    assert signer.name == "PeterNeumann"
    assert signer.key_hash == 0xC74F20A3
    assert signer.private_text() == SKEY
    assert signer.verifier().text() == VKEY
    verifier = parse_verifier(VKEY)
    assert verifier == signer.verifier()
    assert "AYEKFALV" not in repr(signer)  # the seed never shows in a repr


def test_go_signature_vector_exact() -> None:
    signer = parse_signer(SKEY)
    assert sign_note(TEXT, [signer]) == TEXT + "\n" + SIGLINE
    note = open_note(TEXT + "\n" + SIGLINE, [parse_verifier(VKEY)])
    assert note.text == TEXT
    assert [(s.name, s.key_hash) for s in note.verified] == [("PeterNeumann", 0xC74F20A3)]


def test_c2sp_example_verifies() -> None:
    msg = C2SP_TEXT + "\n" + f"— example.com/foo {C2SP_SIG}\n"
    note = open_note(msg, [parse_verifier(C2SP_VKEY)])
    assert note.text == C2SP_TEXT


def test_cosignature_vector() -> None:
    witness = parse_verifier(COSIG_VKEY)
    assert witness.alg == ALG_COSIGNATURE_V1
    assert key_id(witness.name, ALG_COSIGNATURE_V1, witness.public) == 0xDA77ADE7
    raw = base64.b64decode(COSIG_SIG)
    sig = Signature("remora.n621.de", int.from_bytes(raw[:4], "big"), raw[4:])
    assert sig.key_hash == 0x646846B9
    timestamp, ed = split_cosignature(sig)
    assert timestamp == 1727964367
    assert len(ed) == 64


def test_unknown_keys_ignored_and_bad_signatures_rejected() -> None:
    signer = parse_signer(SKEY)
    other = Signer(name="other.example", seed=bytes(range(32)))
    msg = sign_note(TEXT, [other, signer])
    note = open_note(msg, [parse_verifier(VKEY)])
    assert [s.name for s in note.unverified] == ["other.example"]
    with pytest.raises(UnverifiedNoteError):
        open_note(msg, [])
    tampered = msg.replace("cryptography", "cryptographY")
    with pytest.raises(InvalidSignatureError) as info:
        open_note(tampered, [parse_verifier(VKEY)])
    assert info.value.name == "PeterNeumann"
    assert info.value.key_hash == 0xC74F20A3


@pytest.mark.parametrize(
    "msg",
    [
        TEXT + SIGLINE,  # no blank line
        TEXT + "\n" + SIGLINE.rstrip("\n"),  # signature block without final newline
        TEXT + "\n" + SIGLINE.replace("— ", "- "),  # not an em dash
        TEXT + "\n" + SIGLINE.replace("x08go", "x08go "),  # extra space
        TEXT + "\n" + SIGLINE.replace("nAM=", "nAM"),  # bad base64
        "no newline at end\n\n" + SIGLINE.replace("PeterNeumann", "Peter+Neumann"),
        "bad\x01control\n\n" + SIGLINE,
    ],
)
def test_malformed_notes_rejected(msg: str) -> None:
    with pytest.raises(NoteError):
        split_note(msg)


def test_split_at_last_blank_line() -> None:
    signer = parse_signer(SKEY)
    text = "para one\n\npara two\n"
    note = open_note(sign_note(text, [signer]), [signer.verifier()])
    assert note.text == text


def test_checkpoint_roundtrip_and_strictness() -> None:
    root = bytes(range(32))
    cp = Checkpoint("example.com/log", 70000, root)
    assert cp.text() == f"example.com/log\n70000\n{base64.b64encode(root).decode()}\n"
    assert parse_checkpoint(cp.text()) == cp
    b64 = base64.b64encode(root).decode()
    for bad in [
        f"example.com/log\n070000\n{b64}\n",  # leading zero
        f"example.com/log\n+70000\n{b64}\n",
        f"example.com/log\n70_000\n{b64}\n",
        f"example.com/log\n70000\n{b64[:-4]}\n",  # 29 bytes
        f"example.com/log\n70000\n{b64}",  # no final newline
        f"\n70000\n{b64}\n",
        f"example.com/log\n70000\n{b64}\n\n",  # empty extension line
    ]:
        with pytest.raises(NoteError):
            parse_checkpoint(bad)


def test_checkpoint_signed_by_origin_key_only() -> None:
    log = Signer(name="example.com/log", seed=bytes(32))
    impostor = Signer(name="example.com/log", seed=bytes([1] * 32))
    cp = Checkpoint("example.com/log", 5, bytes(32))
    note = sign_checkpoint(cp, log)
    got, _ = open_checkpoint(note, [log.verifier()])
    assert got == cp
    with pytest.raises(UnverifiedNoteError):
        open_checkpoint(note, [impostor.verifier()])
    other_origin = Signer(name="other", seed=bytes(32))
    with pytest.raises(NoteError):
        sign_checkpoint(cp, other_origin)


def test_tlog_proof_roundtrip() -> None:
    log = Signer(name="example.com/log", seed=bytes(32))
    note = sign_checkpoint(Checkpoint("example.com/log", 5, bytes(32)), log)
    proof = TlogProof(index=3, hashes=(bytes(32), bytes([7]) * 32), checkpoint=note, extra=b"hi")
    text = proof.text()
    assert text.startswith("c2sp.org/tlog-proof@v1\nextra aGk=\nindex 3\n")
    assert parse_tlog_proof(text) == proof
    for bad in [
        text.replace("index 3", "index 03"),
        text.replace("c2sp.org/tlog-proof@v1", "c2sp.org/tlog-proof@v2"),
        text.replace("index 3\n", ""),
        text.replace("\n\n", "\n", 1),
    ]:
        with pytest.raises(NoteError):
            parse_tlog_proof(bad)


def test_key_format_errors() -> None:
    with pytest.raises(KeyFormatError):
        parse_verifier(VKEY.replace("c74f20a3", "c74f20a4"))  # ID does not match the key
    with pytest.raises(KeyFormatError):
        parse_signer(SKEY.replace("c74f20a3", "C74F20A3"))
    with pytest.raises(KeyFormatError):
        Signer.generate("has space")
    trust = parse_trust(f"# comment\nsigner {VKEY}\nlog {C2SP_VKEY}  # the log\n")
    assert [v.name for v in trust.signers] == ["PeterNeumann"]
    assert [v.name for v in trust.logs] == ["example.com/foo"]
    assert parse_trust(trust.text()) == trust
    with pytest.raises(KeyFormatError, match=":2:"):
        parse_trust(f"signer {VKEY}\nwitness {VKEY}\n")
