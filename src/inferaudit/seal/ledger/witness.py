"""A C2SP tlog-witness: it cosigns a log's checkpoint only when it extends what it cosigned before.

Request (C2SP tlog-witness v1, ``POST /add-checkpoint``)::

    old 7                       the size of the checkpoint the log thinks the witness holds
    <base64 hash>               the RFC 9162 consistency proof from ``old`` to the new size
    ...                         (none when ``old`` is 0 or equals the new size; at most 63)
    <blank line>
    <signed checkpoint note>

Answers: 200 with one cosignature line (C2SP tlog-cosignature v1, ``— <witness name>
base64(key ID || u64 BE timestamp || Ed25519 signature)``, key ID computed with sigtype 0x04);
400 a malformed request, or ``old`` larger than the checkpoint; 403 no valid signature by the
origin's configured log key; 404 an origin this witness does not watch; 409 (``text/x.tlog.size``
body ``<size>\\n``) when ``old`` is not the size the witness holds, or when the checkpoint has the
size of one it cosigned but another root (a fork); 422 the consistency proof does not verify.

State (SQLAlchemy Core, SQLite in the witness's data directory by default):
  witness_logs         origin -> latest cosigned size, root and signed note; advanced by a
                       compare-and-swap on (size, root) inside a locked transaction, persisted
                       before the cosignature is made, so no two requests advance one state to
                       two roots.
  witness_checkpoints  (origin, size) -> every checkpoint cosigned, for fork detection.
A signed checkpoint whose size the witness cosigned with another root is a proof that the log
misbehaved: both notes (each carrying only the log's valid signatures) are saved as
``forks/<quoted origin>-<size>-<n>.txt`` and listed by ``list_forks``.

The witness key is an Ed25519 key: its private file ``witness.key`` holds the standard
``PRIVATE+KEY+...`` text (sigtype 0x01, as Go's ``note`` and transparency-dev's
``NewSignerForCosignatureV1`` take it, created 0600); ``witness.pub`` holds the cosignature
verifier key (sigtype 0x04), which ``seal.keys.parse_verifier`` reads.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    and_,
    insert,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from inferaudit.errors import ConfigError, LedgerError
from inferaudit.seal.keys import (
    ALG_COSIGNATURE_V1,
    ALG_ED25519,
    Signer,
    Verifier,
    key_id,
    parse_signer,
    read_private_key_file,
)
from inferaudit.seal.ledger import merkle
from inferaudit.seal.ledger.note import (
    InvalidSignatureError,
    NoteError,
    Signature,
    UnverifiedNoteError,
    b64decode_strict,
    cosignature_message,
    open_note,
    parse_checkpoint,
    parse_decimal,
    split_note,
)

MAX_BODY_BYTES = 64 * 1024
MAX_PROOF_LINES = 63
KEY_FILE = "witness.key"
PUB_FILE = "witness.pub"
DB_FILE = "witness.sqlite3"
FORKS_DIR = "forks"
SIZE_CONTENT_TYPE = "text/x.tlog.size"

metadata = MetaData()
logs_t = Table(
    "witness_logs",
    metadata,
    Column("origin", String(255), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("root", LargeBinary, nullable=False),
    Column("note", Text),
)
history_t = Table(
    "witness_checkpoints",
    metadata,
    Column("origin", String(255), primary_key=True),
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("root", LargeBinary, nullable=False),
    Column("note", Text, nullable=False),
)


class WitnessRefusal(LedgerError):
    """An add-checkpoint request the witness refuses: ``status`` is the HTTP answer; a 409
    carries ``latest_size``, the size this witness holds for the log."""

    def __init__(self, status: int, message: str, latest_size: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.latest_size = latest_size


# -- the witness key -----------------------------------------------------------------------------


@dataclass(frozen=True)
class WitnessSigner:
    """An Ed25519 key that makes tlog-cosignature/v1 signatures (key ID with sigtype 0x04)."""

    signer: Signer

    @property
    def name(self) -> str:
        return self.signer.name

    @property
    def key_hash(self) -> int:
        return key_id(self.signer.name, ALG_COSIGNATURE_V1, self.signer.public)

    def verifier(self) -> Verifier:
        return Verifier(
            name=self.name,
            key_hash=self.key_hash,
            public=self.signer.public,
            alg=ALG_COSIGNATURE_V1,
        )

    def cosign(self, checkpoint_text: str, timestamp: int) -> Signature:
        """The cosignature of a checkpoint's note text at ``timestamp`` (seconds since 1970)."""
        assert 0 <= timestamp < 1 << 64, "timestamp out of range: the code has a bug"
        sig = self.signer.sign(cosignature_message(checkpoint_text, timestamp))
        return Signature(self.name, self.key_hash, timestamp.to_bytes(8, "big") + sig)


def create_witness_key(home: Path, name: str) -> WitnessSigner:
    """``witness init``: a new witness key in ``home`` (private file created 0600, never
    overwritten), its 0x04 verifier key beside it."""
    witness = WitnessSigner(Signer.generate(name))
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    priv = home / KEY_FILE
    try:
        fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"a witness key already exists at {priv}") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(witness.signer.private_text() + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    (home / PUB_FILE).write_text(witness.verifier().text() + "\n")
    return witness


def load_witness_key(home: Path) -> WitnessSigner:
    """The witness key of ``home``; refused when its file is readable by group or others."""
    priv = home / KEY_FILE
    try:
        text = read_private_key_file(priv)
    except FileNotFoundError:
        raise ConfigError(f"no witness key in {home} (run `inferaudit witness init`)") from None
    except PermissionError:
        raise ConfigError(f"key file {priv}: permission denied") from None
    return WitnessSigner(parse_signer(text))


# -- the request ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AddCheckpoint:
    old: int
    proof: tuple[bytes, ...]
    note: str  # the signed checkpoint note


def parse_add_checkpoint(body: bytes) -> AddCheckpoint:
    """Parse an add-checkpoint body strictly (400 on anything malformed)."""
    if len(body) > MAX_BODY_BYTES:
        raise WitnessRefusal(413, f"request body is over {MAX_BODY_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WitnessRefusal(400, "request body is not UTF-8") from None
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise WitnessRefusal(400, "request has no blank line before the checkpoint")
    lines = head.split("\n")
    if not lines[0].startswith("old "):
        raise WitnessRefusal(400, "request must start with 'old <size>'")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise WitnessRefusal(400, f"consistency proof has more than {MAX_PROOF_LINES} hashes")
    try:
        old = parse_decimal(lines[0][len("old ") :], "old size")
        proof = []
        for i, line in enumerate(lines[1:]):
            h = b64decode_strict(line, f"proof hash {i}")
            if len(h) != merkle.HASH_SIZE:
                raise NoteError(f"proof hash {i} is {len(h)} bytes, not {merkle.HASH_SIZE}")
            proof.append(h)
    except NoteError as exc:
        raise WitnessRefusal(400, str(exc)) from None
    return AddCheckpoint(old=old, proof=tuple(proof), note=note)


# -- state ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogState:
    origin: str
    size: int
    root: bytes
    note: str | None  # the latest cosigned checkpoint (with the log's signatures), if any


@dataclass(frozen=True)
class Fork:
    """Two checkpoints of one log at one size with different roots, both signed by its key."""

    origin: str
    size: int
    held: str  # the note the witness had cosigned
    presented: str  # the note that contradicts it
    path: Path

    def text(self) -> str:
        return f"{self.held}\n{self.presented}"


def _log_note(text: str, verified: Iterable[Signature]) -> str:
    return text + "\n" + "".join(s.line() for s in verified)


def _fork_stem(origin: str, size: int) -> str:
    return f"{quote(origin, safe='')}-{size}-"


def parse_fork_file(path: Path) -> Fork:
    """A saved fork proof: the held note, a blank line, the presented note."""
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise NoteError(f"{path}: not UTF-8") from None
    first_blank = content.find("\n\n")
    second_blank = content.find("\n\n", first_blank + 2)
    if first_blank < 0 or second_blank < 0:
        raise NoteError(f"{path}: not two signed notes")
    held, presented = content[: second_blank + 1], content[second_blank + 2 :]
    cps = [parse_checkpoint(split_note(n)[0]) for n in (held, presented)]
    if cps[0].origin != cps[1].origin or cps[0].size != cps[1].size or cps[0].root == cps[1].root:
        raise NoteError(f"{path}: the two checkpoints are not a fork")
    return Fork(cps[0].origin, cps[0].size, held, presented, path)


def list_forks(home: Path) -> list[Fork]:
    """Every fork proof saved in ``home/forks``, in name order."""
    base = home / FORKS_DIR
    if not base.is_dir():
        return []
    return [parse_fork_file(p) for p in sorted(base.glob("*.txt"))]


def _save_fork(home: Path, origin: str, size: int, held: str, presented: str) -> Path:
    """Write a fork proof once (the same pair again is not written twice)."""
    base = home / FORKS_DIR
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    content = f"{held}\n{presented}"
    stem = _fork_stem(origin, size)
    n = 1
    while True:
        path = base / f"{stem}{n}.txt"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            if path.read_text(encoding="utf-8") == content:
                return path
            n += 1
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(content)
        return path


class Witness:
    """A witness of the logs in ``logs`` (origin -> its log keys), keeping state in ``engine``
    and fork proofs under ``home``."""

    def __init__(
        self,
        engine: Engine,
        signer: WitnessSigner,
        logs: dict[str, tuple[Verifier, ...]],
        home: Path,
        clock: Callable[[], int] = lambda: int(time.time()),
    ) -> None:
        for origin, keys in logs.items():
            if not keys:
                raise ConfigError(f"log {origin}: no log key given")
            for key in keys:
                if key.name != origin or key.alg != ALG_ED25519:
                    raise ConfigError(
                        f"log {origin}: key {key.keyid} is not an Ed25519 key named {origin}"
                    )
        self.engine = engine
        self.signer = signer
        self.logs = dict(logs)
        self.home = home
        self.clock = clock
        self._lock = threading.Lock()
        try:
            with engine.connect() as conn:
                conn.execution_options(sqlite_immediate=True)
                with conn.begin():
                    metadata.create_all(conn)
                    have = set(conn.execute(select(logs_t.c.origin)).scalars())
                    for origin in sorted(set(logs) - have):
                        conn.execute(
                            insert(logs_t).values(origin=origin, size=0, root=merkle.EMPTY_ROOT)
                        )
        except SQLAlchemyError as exc:
            raise LedgerError(f"witness database: {_first_line(exc)}") from None

    @contextmanager
    def _locked(self, origin: str) -> Iterator[tuple[Connection, LogState]]:
        with self._lock:
            try:
                with self.engine.connect() as conn:
                    conn.execution_options(sqlite_immediate=True)
                    with conn.begin():
                        row = conn.execute(
                            select(logs_t).where(logs_t.c.origin == origin).with_for_update()
                        ).one()
                        yield conn, LogState(row.origin, row.size, bytes(row.root), row.note)
            except SQLAlchemyError as exc:
                raise LedgerError(f"witness database: {_first_line(exc)}") from None

    def states(self) -> list[LogState]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(logs_t).order_by(logs_t.c.origin)).all()
        return [
            LogState(r.origin, r.size, bytes(r.root), r.note) for r in rows if r.origin in self.logs
        ]

    def add_checkpoint(self, body: bytes) -> str:
        """Handle one add-checkpoint request; the cosignature line, or ``WitnessRefusal``.

        (1) parse the request and the checkpoint (400); (2) the origin must be watched (404),
        its log key must sign the note (403), ``old`` must not exceed its size (400); (3) under
        the lock, a checkpoint of a size already cosigned must have the same root (else a fork:
        saved, 409); (4) ``old`` must be the size held (409); (5) the proof must take the held
        root to the new one (422); (6) the new state is compare-and-swapped in and committed;
        (7) then cosigned.
        """
        # (1): the request, and the checkpoint's syntax.
        req = parse_add_checkpoint(body)
        try:
            text, _ = split_note(req.note)
            cp = parse_checkpoint(text)
        except NoteError as exc:
            raise WitnessRefusal(400, f"checkpoint: {exc}") from None
        # (2): a log this witness watches, signed by its key.
        keys = self.logs.get(cp.origin)
        if keys is None:
            raise WitnessRefusal(404, f"unknown log origin {cp.origin[:100]!r}")
        try:
            opened = open_note(req.note, keys)
        except (UnverifiedNoteError, InvalidSignatureError) as exc:
            raise WitnessRefusal(403, f"checkpoint not signed by the log key: {exc}") from None
        except NoteError as exc:
            raise WitnessRefusal(400, f"checkpoint: {exc}") from None
        if req.old > cp.size:
            raise WitnessRefusal(400, f"old size {req.old} is beyond the checkpoint's {cp.size}")
        note = _log_note(text, opened.verified)
        with self._locked(cp.origin) as (conn, held):
            # (3): the same size as a checkpoint already cosigned needs the same root.
            seen = conn.execute(
                select(history_t.c.root, history_t.c.note).where(
                    history_t.c.origin == cp.origin, history_t.c.size == cp.size
                )
            ).first()
            if seen is not None and bytes(seen.root) != cp.root:
                _save_fork(self.home, cp.origin, cp.size, str(seen.note), note)
                raise WitnessRefusal(
                    409,
                    f"fork: a checkpoint of size {cp.size} with another root was cosigned",
                    held.size,
                )
            # (4): the log's view of this witness must be current.
            if req.old != held.size:
                raise WitnessRefusal(409, f"witness is at size {held.size}", held.size)
            # (5): the new checkpoint extends the held one.
            self._check_proof(req, cp.size, cp.root, held)
            # (6): persist before answering.
            done = conn.execute(
                update(logs_t)
                .where(
                    and_(
                        logs_t.c.origin == cp.origin,
                        logs_t.c.size == held.size,
                        logs_t.c.root == held.root,
                    )
                )
                .values(size=cp.size, root=cp.root, note=note)
            )
            if done.rowcount != 1:
                raise WitnessRefusal(409, "the witness state changed concurrently", held.size)
            if seen is None:
                conn.execute(
                    insert(history_t).values(
                        origin=cp.origin, size=cp.size, root=cp.root, note=note
                    )
                )
        # (7): the cosignature.
        return self.signer.cosign(text, self.clock()).line()

    @staticmethod
    def _check_proof(req: AddCheckpoint, size: int, root: bytes, held: LogState) -> None:
        if req.old == 0:
            if req.proof:
                raise WitnessRefusal(422, "a proof from size 0 must be empty")
            if size == 0 and root != merkle.EMPTY_ROOT:
                raise WitnessRefusal(422, "a checkpoint of size 0 must have the empty root")
            return
        try:
            merkle.verify_consistency(req.old, size, req.proof, held.root, root)
        except merkle.ProofError as exc:
            raise WitnessRefusal(422, f"consistency proof does not verify: {exc}") from None

    def describe(self) -> str:
        """A short text: the witness key and the logs it watches, with the sizes it holds."""
        lines = [f"inferaudit witness {self.signer.name}", f"key {self.signer.verifier().text()}"]
        for st in self.states():
            lines.append(f"log {st.origin} size {st.size}")
        return "\n".join(lines) + "\n"


def _first_line(exc: BaseException) -> str:
    return str(getattr(exc, "orig", None) or exc).splitlines()[0]
