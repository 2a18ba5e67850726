"""C2SP signed notes, tlog checkpoints and tlog-proof text.

Signed note (C2SP signed-note, Go ``sumdb/note``)::

    <text: one or more lines, each ending in "\\n">
    <blank line>
    — <key name> <base64(4-byte key ID || signature)>
    ...

The signed message is the text including its final newline; the note splits at the LAST blank
line. Signatures from unknown keys are ignored; a known key whose signature fails is an error; a
note that no known key verifies is an error.

Checkpoint (C2SP tlog-checkpoint) note text::

    example.com/log          origin (the log key's name)
    70000                    tree size, canonical decimal
    <base64 root hash>       32 bytes, standard padded base64
    [extension lines]

Proof (C2SP tlog-proof@v1), offline-verifiable evidence that an entry is in the log::

    c2sp.org/tlog-proof@v1
    [extra <base64>]
    index <N>
    <base64 hash>            the RFC 9162 inclusion proof, one hash a line
    <blank line>
    <signed checkpoint note>
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from inferaudit.errors import LedgerError
from inferaudit.seal import keys
from inferaudit.seal.keys import (
    ALG_COSIGNATURE_V1,
    ALG_ED25519,
    KeyFormatError,
    Signer,
    Verifier,
    check_name,
)

SIG_PREFIX = "— "  # em dash, space
MAX_SIGNATURES = 100
MAX_NOTE_BYTES = 1 << 20
PROOF_HEADER = "c2sp.org/tlog-proof@v1"
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")


class NoteError(LedgerError):
    """A signed note, checkpoint or proof text is malformed or does not verify."""


class UnverifiedNoteError(NoteError):
    """No trusted key signed the note."""


class InvalidSignatureError(NoteError):
    """A trusted key's signature on the note is wrong."""

    def __init__(self, name: str, key_hash: int) -> None:
        super().__init__(f"invalid signature by {name}+{key_hash:08x}")
        self.name = name
        self.key_hash = key_hash


def parse_decimal(text: str, what: str) -> int:
    """Canonical non-negative decimal: no sign, no leading zeros, no underscores, < 2^64."""
    if not _DECIMAL.fullmatch(text) or int(text) >= 1 << 64:
        raise NoteError(f"{what} {text[:30]!r} is not a canonical decimal")
    return int(text)


def b64decode_strict(text: str, what: str) -> bytes:
    return keys.b64decode_strict(text, what, NoteError)


@dataclass(frozen=True)
class Signature:
    name: str
    key_hash: int
    sig: bytes

    def line(self) -> str:
        raw = self.key_hash.to_bytes(4, "big") + self.sig
        return f"{SIG_PREFIX}{self.name} {base64.b64encode(raw).decode()}\n"


@dataclass(frozen=True)
class Note:
    """An opened note: its text, the verified signatures and the ones from unknown keys."""

    text: str
    verified: tuple[Signature, ...]
    unverified: tuple[Signature, ...]


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("note text must end in a newline")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise NoteError("note text holds control characters")


def sign_note(text: str, signers: Sequence[Signer]) -> str:
    """The signed note: ``text``, a blank line, one signature line per signer."""
    _check_text(text)
    if not signers:
        raise NoteError("a note needs at least one signer")
    message = text.encode()
    lines = [Signature(s.name, s.key_hash, s.sign(message)).line() for s in signers]
    return text + "\n" + "".join(lines)


def split_note(msg: str) -> tuple[str, list[Signature]]:
    """Split a signed note into its text and its (unchecked) signatures; strict about syntax."""
    if len(msg.encode()) > MAX_NOTE_BYTES:
        raise NoteError("note is too large")
    cut = msg.rfind("\n\n")
    if cut < 0:
        raise NoteError("note has no blank line before its signatures")
    text, block = msg[: cut + 1], msg[cut + 2 :]
    _check_text(text)
    if not block.endswith("\n"):
        raise NoteError("note signatures must end in a newline")
    sigs: list[Signature] = []
    for line in block[:-1].split("\n"):
        if not line.startswith(SIG_PREFIX):
            raise NoteError(f"malformed signature line {line[:40]!r}")
        name, sep, b64 = line[len(SIG_PREFIX) :].partition(" ")
        if not sep or " " in b64:
            raise NoteError(f"malformed signature line {line[:40]!r}")
        try:
            check_name(name)
        except KeyFormatError as exc:
            raise NoteError(f"signature line: {exc}") from None
        raw = b64decode_strict(b64, f"signature by {name}")
        if len(raw) < 5:
            raise NoteError(f"signature by {name} is too short")
        sigs.append(Signature(name, int.from_bytes(raw[:4], "big"), raw[4:]))
        if len(sigs) > MAX_SIGNATURES:
            raise NoteError(f"note has more than {MAX_SIGNATURES} signatures")
    return text, sigs


def open_note(msg: str, known: Iterable[Verifier]) -> Note:
    """Verify a signed note against ``known`` keys (C2SP rules); return what was verified."""
    text, sigs = split_note(msg)
    by_id = {(v.name, v.key_hash): v for v in known}
    verified: list[Signature] = []
    unverified: list[Signature] = []
    seen: set[tuple[str, int]] = set()
    for sig in sigs:
        key = by_id.get((sig.name, sig.key_hash))
        if key is None:
            unverified.append(sig)
            continue
        if (sig.name, sig.key_hash) in seen:
            raise NoteError(f"two signatures by {sig.name}+{sig.key_hash:08x}")
        seen.add((sig.name, sig.key_hash))
        if key.alg == ALG_COSIGNATURE_V1:
            ok = verify_cosignature(text, sig, key) is not None
        else:
            ok = key.alg == ALG_ED25519 and key.verify(text.encode(), sig.sig)
        if not ok:
            raise InvalidSignatureError(sig.name, sig.key_hash)
        verified.append(sig)
    if not verified:
        names = ", ".join(sorted({s.name for s in sigs})) or "none"
        raise UnverifiedNoteError(f"unknown key (signed by: {names})")
    return Note(text=text, verified=tuple(verified), unverified=tuple(unverified))


def cosignature_message(checkpoint_text: str, timestamp: int) -> bytes:
    """C2SP tlog-cosignature v1: ``cosignature/v1\ntime <T>\n`` + checkpoint note text."""
    return f"cosignature/v1\ntime {timestamp}\n{checkpoint_text}".encode()


def split_cosignature(sig: Signature) -> tuple[int, bytes]:
    """(timestamp, Ed25519 signature) of a witness cosignature (u64 BE time || 64 bytes)."""
    if len(sig.sig) != 72:
        raise NoteError(f"cosignature by {sig.name} is {len(sig.sig)} bytes, not 72")
    return int.from_bytes(sig.sig[:8], "big"), sig.sig[8:]


def verify_cosignature(checkpoint_text: str, sig: Signature, key: Verifier) -> int | None:
    """The cosignature's timestamp if ``key`` (type 0x04) signed this checkpoint, else None."""
    if key.alg != ALG_COSIGNATURE_V1 or (sig.name, sig.key_hash) != (key.name, key.key_hash):
        return None
    timestamp, raw = split_cosignature(sig)
    return timestamp if key.verify(cosignature_message(checkpoint_text, timestamp), raw) else None


# -- checkpoints ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode()]
        return "\n".join([*lines, *self.extensions]) + "\n"


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse checkpoint note text (not the signatures) strictly."""
    if not text.endswith("\n"):
        raise NoteError("checkpoint must end in a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise NoteError("checkpoint needs origin, size and root lines")
    origin, size_text, root_text, *ext = lines
    if not origin:
        raise NoteError("checkpoint origin is empty")
    size = parse_decimal(size_text, "checkpoint size")
    root = b64decode_strict(root_text, "checkpoint root")
    if len(root) != 32:
        raise NoteError(f"checkpoint root is {len(root)} bytes, not 32")
    if any(not line for line in ext):
        raise NoteError("checkpoint has an empty extension line")
    return Checkpoint(origin=origin, size=size, root=root, extensions=tuple(ext))


def sign_checkpoint(checkpoint: Checkpoint, signer: Signer) -> str:
    if signer.name != checkpoint.origin:
        raise NoteError(f"log key {signer.name!r} does not match the origin {checkpoint.origin!r}")
    return sign_note(checkpoint.text(), [signer])


def open_checkpoint(msg: str, logs: Iterable[Verifier]) -> tuple[Checkpoint, Note]:
    """Verify a signed checkpoint: a trusted log key whose name is the origin must sign it."""
    text, _ = split_note(msg)
    cp = parse_checkpoint(text)
    note = open_note(msg, [v for v in logs if v.name == cp.origin])
    return cp, note


# -- tlog-proof ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlogProof:
    index: int
    hashes: tuple[bytes, ...]
    checkpoint: str  # the signed checkpoint note
    extra: bytes | None = None

    def text(self) -> str:
        lines = [PROOF_HEADER]
        if self.extra is not None:
            lines.append(f"extra {base64.b64encode(self.extra).decode()}")
        lines.append(f"index {self.index}")
        lines += [base64.b64encode(h).decode() for h in self.hashes]
        return "\n".join(lines) + "\n\n" + self.checkpoint


def parse_tlog_proof(text: str) -> TlogProof:
    head, sep, checkpoint = text.partition("\n\n")
    if not sep:
        raise NoteError("tlog-proof has no blank line before its checkpoint")
    lines = head.split("\n")
    if lines[0] != PROOF_HEADER:
        raise NoteError(f"tlog-proof must start with {PROOF_HEADER!r}")
    rest = lines[1:]
    extra: bytes | None = None
    if rest and rest[0].startswith("extra "):
        extra = b64decode_strict(rest[0][len("extra ") :], "tlog-proof extra")
        rest = rest[1:]
    if not rest or not rest[0].startswith("index "):
        raise NoteError("tlog-proof has no index line")
    index = parse_decimal(rest[0][len("index ") :], "tlog-proof index")
    hashes = []
    for i, line in enumerate(rest[1:]):
        h = b64decode_strict(line, f"tlog-proof hash {i}")
        if len(h) != 32:
            raise NoteError(f"tlog-proof hash {i} is {len(h)} bytes, not 32")
        hashes.append(h)
    split_note(checkpoint)  # syntax only; signatures are checked against a policy by the caller
    return TlogProof(index=index, hashes=tuple(hashes), checkpoint=checkpoint, extra=extra)
