"""The default trust policy, and the checkpoints a verifier knows: split views and forks.

``default_policy(home)`` trusts the keys of the local data directory (the runner's signer key
and the ledger's log key, when present) and remembers checkpoints in ``home/checkpoints``.

Known checkpoints (``CheckpointMemory.check``), per log (origin + log key ID):

  * the local ledger's, when the local ledger IS that log (same origin, and its latest
    checkpoint verifies under the same log key);
  * the latest checkpoint this data directory has verified, kept as its signed note text in
    ``checkpoints/<origin>+<key ID>``.

The rule for a checkpoint C (size n, root r) that a proof shows, signed by a trusted log key:

  1. if the local ledger is that log and holds n leaves, its root at size n must be r;
  2. against the remembered checkpoint M (size m): m = n needs the same root; m != n needs an
     RFC 9162 consistency proof between them, taken from the local ledger and verified against
     both roots — without one, C is "inconsistent or unprovable" and fails (never passes
     silently);
  3. with nothing known about the log (no ledger, nothing remembered), C is accepted on first
     use and remembered;
  4. two signed checkpoints of one size with different roots are a fork: both notes are shown
     and saved in ``checkpoints/forks/<origin>+<key ID>-<size>.txt``, and C fails.

After a pass, C is remembered when it is larger than M (or nothing was remembered).
"""

from __future__ import annotations

import base64
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from inferaudit.errors import InferauditError
from inferaudit.home import db_url, make_engine
from inferaudit.seal.keys import (
    DEFAULT_SIGNER_NAME,
    TrustPolicy,
    Verifier,
    key_paths,
    load_verifier,
)
from inferaudit.seal.ledger import merkle
from inferaudit.seal.ledger.note import Checkpoint, NoteError, open_checkpoint
from inferaudit.seal.ledger.store import DEFAULT_LOG_NAME, Ledger

CHECKPOINTS_DIR = "checkpoints"
FORKS_DIR = "forks"


@dataclass(frozen=True)
class ForkProof:
    """Two checkpoints of one log that cannot both be honest: ``seen`` came with the evidence,
    ``known`` is the one this verifier knew (same size, different root, for a true fork)."""

    origin: str
    size: int
    seen: str  # signed note text
    known: str  # signed note text
    saved: Path | None  # where both notes were kept

    def text(self) -> str:
        return f"{self.seen}\n{self.known}"


@dataclass(frozen=True)
class Consistency:
    ok: bool
    detail: str
    fork: ForkProof | None = None


def _b64(root: bytes) -> str:
    return base64.b64encode(root).decode()


def _log_id(log: Verifier) -> str:
    return f"{quote(log.name, safe='')}+{log.key_hash:08x}"


@dataclass(frozen=True)
class CheckpointMemory:
    """Where a verifier keeps the checkpoints it knows, and the local ledger it may consult."""

    directory: Path  # <data dir>/checkpoints
    ledger_url: str | None = None

    def remembered_path(self, log: Verifier) -> Path:
        return self.directory / _log_id(log)

    def remembered(self, log: Verifier) -> tuple[str, Checkpoint] | None:
        """The latest checkpoint remembered for ``log`` (re-verified under its key), or None."""
        path = self.remembered_path(log)
        try:
            note = path.read_text()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise NoteError(f"remembered checkpoint {path}: {exc}") from None
        try:
            cp, _ = open_checkpoint(note, [log])
        except NoteError as exc:
            raise NoteError(f"remembered checkpoint {path} does not verify: {exc}") from None
        return note, cp

    def check(self, note: str, cp: Checkpoint, log: Verifier) -> Consistency:
        """Check ``cp`` (verified under ``log``) against what is known; see the module rule."""
        try:
            known = self.remembered(log)
        except NoteError as exc:
            return Consistency(False, str(exc))
        ledger = self._ledger(cp.origin, log)
        try:
            result = self._check(note, cp, log, known, ledger)
        except InferauditError as exc:
            result = Consistency(False, f"checkpoint consistency: {exc.diagnostics()}")
        finally:
            if ledger is not None:
                ledger.close()
        if result.ok and (known is None or cp.size > known[1].size):
            result = Consistency(True, result.detail + self._remember(note, cp, log))
        return result

    # -- the rule ------------------------------------------------------------------------------

    def _check(
        self,
        note: str,
        cp: Checkpoint,
        log: Verifier,
        known: tuple[str, Checkpoint] | None,
        ledger: Ledger | None,
    ) -> Consistency:
        parts: list[str] = []
        local_size = ledger.size() if ledger is not None else 0
        # (1): the local ledger, when it is this log and covers the checkpoint.
        if ledger is not None and cp.size <= local_size:
            local_root = ledger.root(cp.size)
            if local_root != cp.root:
                local_note = ledger.checkpoint_at(cp.size)
                if local_note is not None:
                    return self._fork(note, local_note, cp, log)
                return Consistency(
                    False,
                    f"inconsistent with the local ledger: its tree at size {cp.size} has root "
                    f"{_b64(local_root)}, the checkpoint says {_b64(cp.root)}",
                )
            parts.append(f"matches the local ledger's tree at size {cp.size}")
        elif ledger is not None:
            latest = ledger.latest_checkpoint()
            if known is None and latest is not None:
                known = (latest, open_checkpoint(latest, [log])[0])
        # (2): the remembered checkpoint (or the local ledger's, when it is behind).
        if known is not None:
            known_note, old = known
            if old.size == cp.size:
                if old.root != cp.root:
                    return self._fork(note, known_note, cp, log)
                parts.append(f"same as the remembered checkpoint at size {old.size}")
            elif ledger is not None and max(old.size, cp.size) <= local_size:
                small, big = sorted((old, cp), key=lambda c: c.size)
                if small.size > 0:
                    proof = ledger.consistency_proof(small.size, big.size)
                    try:
                        merkle.verify_consistency(small.size, big.size, proof, small.root, big.root)
                    except merkle.ProofError as exc:
                        return Consistency(
                            False,
                            f"inconsistent with the remembered checkpoint at size {old.size} "
                            f"({exc})",
                        )
                parts.append(
                    f"consistent with the remembered checkpoint at size {old.size} "
                    "(RFC 9162 proof from the local ledger)"
                )
            else:
                return Consistency(
                    False,
                    f"inconsistent or unprovable: this checkpoint is at size {cp.size}, the "
                    f"known one at size {old.size}, and no local ledger of {cp.origin} can prove "
                    "them consistent (verify where the log's ledger is: --data-dir/--db)",
                )
        if not parts:
            parts.append(f"first checkpoint of {log.keyid} seen here (size {cp.size})")
        return Consistency(True, "; ".join(parts))

    def _fork(self, seen: str, known: str, cp: Checkpoint, log: Verifier) -> Consistency:
        path = self.directory / FORKS_DIR / f"{_log_id(log)}-{cp.size}.txt"
        saved: Path | None = path
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.write_text(f"{seen}\n{known}")
        except OSError:
            saved = None
        where = f"; both kept in {saved}" if saved is not None else ""
        fork = ForkProof(cp.origin, cp.size, seen, known, saved)
        return Consistency(
            False,
            f"FORK: two checkpoints of size {cp.size} signed by {log.keyid} with different "
            f"roots (both notes printed below{where})",
            fork,
        )

    # -- storage ---------------------------------------------------------------------------------

    def _remember(self, note: str, cp: Checkpoint, log: Verifier) -> str:
        """Keep ``note`` as the latest for ``log`` unless a larger one got there first."""
        path = self.remembered_path(log)
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(self.directory / ".lock", "a") as lock:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
                try:
                    current = self.remembered(log)
                except NoteError:
                    current = None
                if current is not None and current[1].size >= cp.size:
                    return ""
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text(note)
                os.replace(tmp, path)
        except OSError as exc:
            return f"; not remembered ({exc.strerror or exc})"
        return f"; remembered in {path}"

    def _ledger(self, origin: str, log: Verifier) -> Ledger | None:
        """The local ledger, when it exists and is this log (same origin, same log key)."""
        if self.ledger_url is None:
            return None
        try:
            url = make_url(self.ledger_url)
        except ArgumentError:
            return None
        if url.get_backend_name() == "sqlite":
            if not url.database or url.database == ":memory:":
                return None
            if not Path(url.database).expanduser().is_file():
                return None
        try:
            ledger = Ledger(make_engine(self.ledger_url))
        except InferauditError:
            return None
        try:
            latest = ledger.latest_checkpoint()
            if ledger.origin != origin or latest is None:
                raise NoteError("not this log")
            open_checkpoint(latest, [log])
        except InferauditError:
            ledger.close()
            return None
        return ledger


def default_policy(home: Path, db: str | None = None) -> TrustPolicy:
    """The keys of the local data directory: the runner's signer key and the ledger's log key
    (each when present), remembering checkpoints in ``home/checkpoints`` and consulting the
    local ledger (``db``, else ``INFERAUDIT_DB``, else the SQLite file in ``home``)."""

    def have(name: str) -> bool:
        priv, pub = key_paths(home, name)
        return priv.exists() or pub.exists()

    return TrustPolicy(
        signers=tuple(load_verifier(home, n) for n in [DEFAULT_SIGNER_NAME] if have(n)),
        logs=tuple(load_verifier(home, n) for n in [DEFAULT_LOG_NAME] if have(n)),
        source=f"this data directory {home}",
        memory=CheckpointMemory(home / CHECKPOINTS_DIR, db_url(db, home)),
    )
