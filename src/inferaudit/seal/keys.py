"""Ed25519 keys in the C2SP signed-note text forms, their files, and the trust policy file.

Text forms (C2SP signed-note; Go ``golang.org/x/mod/sumdb/note``):
  verifier key  ``<name>+<hex key ID>+<base64(0x01 || 32-byte public key)>``
  private key   ``PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 || 32-byte seed)>``
The key ID is the first 4 bytes of SHA-256(name || 0x0A || 0x01 || public key), big-endian.

Files in the data directory: ``keys/<quoted name>.key`` (private, created 0600 with ``os.open``,
never chmod-ed afterwards) and ``keys/<quoted name>.pub`` (the verifier key line). A private key
file that group or others may access (any 0o077 mode bit) is refused with one line naming the
``chmod 600`` that fixes it, wherever a private key is loaded (as ssh does).

Trust policy (``--trust FILE``), a text file of lines, ``#`` starting a comment::

    # inferaudit trust policy v1
    signer <verifier key>     # accepted signer of evidence envelopes (DSSE)
    log <verifier key>        # accepted transparency-log key (checkpoint signatures)
    witness <verifier key>    # a witness whose cosignatures count (C2SP tlog-cosignature, 0x04)
    witnesses 2 of 3          # the quorum: K of the N witness lines must cosign

Signer and log keys are plain Ed25519 keys (0x01), witness keys cosignature keys (0x04): a key
of the other kind on a line is refused (a witness key must never stand in for a log's).
Without witness lines no cosignature is required (policies before witnesses read unchanged);
witness lines without a ``witnesses`` line require all of them. ``witnesses K of N`` takes
canonical decimals, N equal to the number of witness lines and 1 <= K <= N, at most once.
A verifier key line must be well formed; unknown words or malformed keys are errors naming the
line, never skipped.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import stat
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from inferaudit.errors import ConfigError, InferauditError

if TYPE_CHECKING:
    from inferaudit.seal.trust import CheckpointMemory

ALG_ED25519 = 0x01
ALG_COSIGNATURE_V1 = 0x04  # C2SP tlog-cosignature (witness keys)
KEYS_DIR = "keys"
DEFAULT_SIGNER_NAME = "inferaudit-runner"  # the key `run` and `demo` sign evidence with
TRUST_HEADER = "# inferaudit trust policy v1"


class KeyFormatError(ConfigError):
    """A key text or key file is malformed."""


def check_name(name: str) -> str:
    """A key name: non-empty, no ``+``, no whitespace or control characters (C2SP signed-note)."""
    if not name:
        raise KeyFormatError("key name is empty")
    for ch in name:
        if ch == "+" or ch.isspace() or unicodedata.category(ch).startswith(("C", "Z")):
            raise KeyFormatError(
                f"key name {name!r}: '+', spaces and control characters are not allowed"
            )
    return name


def key_id(name: str, alg: int, public: bytes) -> int:
    """SHA-256(name || 0x0A || alg || public)[:4] as a big-endian integer."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public).digest()
    return int.from_bytes(digest[:4], "big")


def b64decode_strict(text: str, what: str, error: type[InferauditError] = KeyFormatError) -> bytes:
    """Standard padded base64, canonical only (one text per value); else ``error``."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise error(f"{what}: bad base64") from None
    if base64.b64encode(raw).decode() != text:
        raise error(f"{what}: non-canonical base64")
    return raw


def _parse_hex_id(text: str, what: str) -> int:
    if len(text) != 8 or any(c not in "0123456789abcdef" for c in text):
        raise KeyFormatError(f"{what}: key ID must be 8 lowercase hex digits")
    return int(text, 16)


@dataclass(frozen=True)
class Verifier:
    """A public key that checks signatures: ``name``, ``key_hash`` (the key ID), the algorithm."""

    name: str
    key_hash: int
    public: bytes
    alg: int = ALG_ED25519

    @property
    def keyid(self) -> str:
        """``name+hexid``: the DSSE ``keyid`` of signatures made with this key."""
        return f"{self.name}+{self.key_hash:08x}"

    def text(self) -> str:
        raw = bytes([self.alg]) + self.public
        return f"{self.keyid}+{base64.b64encode(raw).decode()}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Ed25519 check of ``signature`` over ``message`` (for 0x04 keys, over the
        cosignature/v1 message the caller built)."""
        if len(signature) != 64:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(self.public).verify(signature, message)
        except InvalidSignature:
            return False
        return True


def parse_verifier(text: str) -> Verifier:
    """Parse ``name+hexid+base64(alg||key)``; the key ID must match the key."""
    text = text.strip()
    parts = text.split("+", 2)  # the base64 key may itself hold '+'
    if len(parts) != 3:
        raise KeyFormatError(f"verifier key {text[:40]!r}: expected name+hexid+base64")
    name, hex_id, b64 = parts
    check_name(name)
    want = _parse_hex_id(hex_id, f"verifier key {name}")
    raw = b64decode_strict(b64, f"verifier key {name}")
    if len(raw) != 33 or raw[0] not in (ALG_ED25519, ALG_COSIGNATURE_V1):
        raise KeyFormatError(f"verifier key {name}: not an Ed25519 key (0x01|0x04 + 32 bytes)")
    alg, public = raw[0], raw[1:]
    if key_id(name, alg, public) != want:
        raise KeyFormatError(f"verifier key {name}: key ID {hex_id} does not match the key")
    return Verifier(name=name, key_hash=want, public=public, alg=alg)


@dataclass(frozen=True)
class Signer:
    """An Ed25519 private key with its name. ``repr`` never shows the key."""

    name: str
    seed: bytes = field(repr=False)

    def __post_init__(self) -> None:
        check_name(self.name)
        if len(self.seed) != 32:
            raise KeyFormatError(f"private key {self.name}: seed must be 32 bytes")

    @property
    def _private(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.seed)

    @property
    def public(self) -> bytes:
        return self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def key_hash(self) -> int:
        return key_id(self.name, ALG_ED25519, self.public)

    @property
    def keyid(self) -> str:
        return f"{self.name}+{self.key_hash:08x}"

    def verifier(self) -> Verifier:
        return Verifier(name=self.name, key_hash=self.key_hash, public=self.public)

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    def private_text(self) -> str:
        raw = bytes([ALG_ED25519]) + self.seed
        return f"PRIVATE+KEY+{self.keyid}+{base64.b64encode(raw).decode()}"

    @classmethod
    def generate(cls, name: str) -> Signer:
        check_name(name)
        seed = Ed25519PrivateKey.generate().private_bytes_raw()
        return cls(name=name, seed=seed)


def parse_signer(text: str) -> Signer:
    """Parse ``PRIVATE+KEY+name+hexid+base64(0x01||seed)`` (split on '+' at most 4 times)."""
    parts = text.strip().split("+", 4)
    if len(parts) != 5 or parts[0] != "PRIVATE" or parts[1] != "KEY":
        raise KeyFormatError("private key: expected PRIVATE+KEY+name+hexid+base64")
    _, _, name, hex_id, b64 = parts
    check_name(name)
    want = _parse_hex_id(hex_id, f"private key {name}")
    raw = b64decode_strict(b64, f"private key {name}")
    if len(raw) != 33 or raw[0] != ALG_ED25519:
        raise KeyFormatError(f"private key {name}: not an Ed25519 key (0x01 + 32 bytes)")
    signer = Signer(name=name, seed=raw[1:])
    if signer.key_hash != want:
        raise KeyFormatError(f"private key {name}: key ID {hex_id} does not match the key")
    return signer


# -- files ---------------------------------------------------------------------------------------


def key_paths(home: Path, name: str) -> tuple[Path, Path]:
    """(private key file, verifier key file) for ``name`` under ``home/keys``."""
    stem = quote(check_name(name), safe="")
    base = home / KEYS_DIR
    return base / f"{stem}.key", base / f"{stem}.pub"


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def save_signer(home: Path, signer: Signer) -> tuple[Path, Path]:
    """Write a new key pair; the private file is created 0600 and never overwritten."""
    priv, pub = key_paths(home, signer.name)
    priv.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        _write_new(priv, (signer.private_text() + "\n").encode(), 0o600)
    except FileExistsError:
        raise ConfigError(f"key {signer.name!r} already exists at {priv}") from None
    pub.write_text(signer.verifier().text() + "\n")
    return priv, pub


def generate_key(home: Path, name: str) -> Signer:
    """``inferaudit keys generate``: a new Ed25519 key pair saved in the data directory."""
    signer = Signer.generate(name)
    save_signer(home, signer)
    return signer


class KeyPermissionError(ConfigError):
    """A private key file that group or others may read (refused, as ssh does)."""


def read_private_key_file(path: Path) -> str:
    """A private key file's text, refused when its mode lets group or others in (ssh's rule:
    any of the 0o077 bits). The mode is checked on the open file, so a swap cannot slip by."""
    fd = os.open(path, os.O_RDONLY)
    with os.fdopen(fd, "r") as fh:
        mode = stat.S_IMODE(os.fstat(fh.fileno()).st_mode)
        if mode & 0o077:
            raise KeyPermissionError(
                f"key file {path} is readable by others (mode {mode:04o}); chmod 600 {path}"
            )
        return fh.read()


def load_signer(home: Path, name: str) -> Signer:
    priv, _ = key_paths(home, name)
    try:
        text = read_private_key_file(priv)
    except FileNotFoundError:
        raise ConfigError(f"no key named {name!r} in {priv.parent}") from None
    except PermissionError:
        raise ConfigError(f"key file {priv}: permission denied") from None
    signer = parse_signer(text)
    if signer.name != name:
        raise KeyFormatError(f"{priv}: holds key {signer.name!r}, not {name!r}")
    return signer


def load_or_create_signer(data_dir: Path, name: str) -> Signer:
    """The signer ``name`` from the data directory, generated (0600) on first use."""
    priv, _ = key_paths(data_dir, name)
    if priv.exists():
        return load_signer(data_dir, name)
    signer = Signer.generate(name)
    try:
        save_signer(data_dir, signer)
    except ConfigError:
        # Another process created it between our check and our write: use theirs.
        return load_signer(data_dir, name)
    return signer


def load_verifier(home: Path, name: str) -> Verifier:
    _, pub = key_paths(home, name)
    try:
        return parse_verifier(pub.read_text())
    except FileNotFoundError:
        return load_signer(home, name).verifier()


def list_keys(home: Path) -> list[Verifier]:
    base = home / KEYS_DIR
    if not base.is_dir():
        return []
    return [parse_verifier(p.read_text()) for p in sorted(base.glob("*.pub"))]


# -- trust policy --------------------------------------------------------------------------------


_QUORUM = re.compile(r"witnesses (0|[1-9][0-9]{0,5}) of (0|[1-9][0-9]{0,5})")
_KINDS = "expected 'signer KEY', 'log KEY', 'witness KEY' or 'witnesses K of N'"


@dataclass(frozen=True)
class TrustPolicy:
    """Which keys a verifier accepts: evidence signers, transparency logs, and the witnesses
    whose cosignatures a log's checkpoint needs (``witness_quorum`` of them; None: all).

    ``source`` says where the policy came from (for ``describe``); ``memory`` is where known
    checkpoints are remembered and checked for forks (``seal.trust``), None for a bare policy.
    """

    signers: tuple[Verifier, ...] = ()
    logs: tuple[Verifier, ...] = ()
    source: str = "given keys"
    memory: CheckpointMemory | None = None
    witnesses: tuple[Verifier, ...] = ()
    witness_quorum: int | None = None  # None: every witness must cosign

    def __post_init__(self) -> None:
        for v in (*self.signers, *self.logs):
            if v.alg != ALG_ED25519:
                raise KeyFormatError(f"key {v.keyid} is a witness key (0x04), not a signing key")
        for v in self.witnesses:
            if v.alg != ALG_COSIGNATURE_V1:
                raise KeyFormatError(f"witness key {v.keyid} is not a cosignature key (0x04)")
        if len({(v.name, v.key_hash) for v in self.witnesses}) != len(self.witnesses):
            raise KeyFormatError("a witness key is listed twice")
        k, n = self.witness_quorum, len(self.witnesses)
        if k is not None and not 1 <= k <= n:
            raise KeyFormatError(f"witness quorum {k} is outside 1..{n} (the witnesses listed)")

    @property
    def witnesses_required(self) -> int:
        """How many distinct policy witnesses must cosign a checkpoint (0: none required)."""
        return len(self.witnesses) if self.witness_quorum is None else self.witness_quorum

    def text(self) -> str:
        lines = [TRUST_HEADER]
        lines += [f"signer {v.text()}" for v in self.signers]
        lines += [f"log {v.text()}" for v in self.logs]
        lines += [f"witness {v.text()}" for v in self.witnesses]
        if self.witness_quorum is not None:
            lines.append(f"witnesses {self.witness_quorum} of {len(self.witnesses)}")
        return "\n".join(lines) + "\n"

    def describe(self) -> str:
        """One line for outputs: ``trusting signer K, log L[, witnesses 2 of 3: a, b, c]
        (this data directory /x)``."""

        def names(keys: tuple[Verifier, ...]) -> str:
            return ", ".join(v.keyid for v in keys) or "none"

        plural = "s" if len(self.signers) > 1 else ""
        logs = "s" if len(self.logs) > 1 else ""
        quorum = ""
        if self.witnesses:
            n = len(self.witnesses)
            quorum = f", witnesses {self.witnesses_required} of {n}: {names(self.witnesses)}"
        return (
            f"trusting signer{plural} {names(self.signers)}, log{logs} {names(self.logs)}"
            f"{quorum} ({self.source})"
        )


def parse_trust(text: str, source: str = "trust policy") -> TrustPolicy:
    """A trust policy file's keys and witness quorum; ``source`` names it in errors and in
    ``describe``. Every error names the line it is about."""
    signers: list[Verifier] = []
    logs: list[Verifier] = []
    witnesses: list[Verifier] = []
    quorum: tuple[int, int, int] | None = None  # (line number, K, N)
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source}:{number}"
        kind, _, rest = line.partition(" ")
        if kind == "witnesses":
            match = _QUORUM.fullmatch(line)
            if match is None:
                raise KeyFormatError(f"{where}: expected 'witnesses K of N' (canonical decimals)")
            if quorum is not None:
                raise KeyFormatError(
                    f"{where}: a second 'witnesses' line (first on line {quorum[0]})"
                )
            quorum = (number, int(match[1]), int(match[2]))
            continue
        if kind not in ("signer", "log", "witness"):
            raise KeyFormatError(f"{where}: {_KINDS}")
        try:
            verifier = parse_verifier(rest)
        except KeyFormatError as exc:
            raise KeyFormatError(f"{where}: {exc}") from None
        if kind == "witness":
            if verifier.alg != ALG_COSIGNATURE_V1:
                raise KeyFormatError(
                    f"{where}: witness key {verifier.name} is not a cosignature key (0x04)"
                )
            if any((v.name, v.key_hash) == (verifier.name, verifier.key_hash) for v in witnesses):
                raise KeyFormatError(f"{where}: witness key {verifier.keyid} is listed twice")
            witnesses.append(verifier)
            continue
        if verifier.alg != ALG_ED25519:
            raise KeyFormatError(
                f"{where}: {kind} key {verifier.name} is a witness key (0x04), not a signing key"
            )
        (signers if kind == "signer" else logs).append(verifier)
    witness_quorum: int | None = None
    if quorum is not None:
        number, k, n = quorum
        if n != len(witnesses):
            raise KeyFormatError(
                f"{source}:{number}: 'witnesses {k} of {n}' but the policy lists "
                f"{len(witnesses)} witness key{'s' if len(witnesses) != 1 else ''}"
            )
        if not 1 <= k <= n:
            raise KeyFormatError(f"{source}:{number}: 'witnesses {k} of {n}' needs 1 <= K <= N")
        witness_quorum = k
    return TrustPolicy(
        signers=tuple(signers),
        logs=tuple(logs),
        source=source,
        witnesses=tuple(witnesses),
        witness_quorum=witness_quorum,
    )


def load_trust(path: Path) -> TrustPolicy:
    try:
        policy = parse_trust(path.read_text(), str(path))
        return replace(policy, source=f"trust policy {path}")
    except FileNotFoundError:
        raise ConfigError(f"trust policy {path}: no such file") from None
