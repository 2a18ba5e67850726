"""The default trust policy, and the checkpoints a verifier knows: split views and forks.

``default_policy(home)`` trusts the keys of the local data directory (the runner's signer key
and the ledger's log key, when present) and remembers checkpoints in ``home/checkpoints``.

Known checkpoints (``CheckpointMemory.check``), per log (origin + log key ID):

  * the local ledger's, when the local ledger IS that log (same origin, and its latest
    checkpoint verifies under the same log key);
  * the latest checkpoint this data directory has verified, kept as its signed note text in
    ``checkpoints/<origin>+<key ID>``;
  * with a remote log (``verify --log URL``: ``CheckpointMemory.remote``, a tile log), the
    log's current checkpoint R as its server shows it, once ``open_remote`` has found it signed
    by the run's log key and cosigned by the policy's witness quorum.

The rule for a checkpoint C (size n, root r) that a proof shows, signed by a trusted log key:

  1. if the local ledger is that log and holds n leaves, its root at size n must be r;
  2. against the remembered checkpoint M (size m), and the remote one R: m = n needs the same
     root; m != n needs an RFC 9162 consistency proof between them, taken from the local ledger
     (when it holds both sizes) or else from the remote log's tiles (when R covers both), and
     verified against both signed roots — without one, C is "inconsistent or unprovable" and
     fails (never passes silently);
  3. with nothing known about the log (no ledger, nothing remembered, no remote), C is
     accepted on first use and remembered;
  4. two signed checkpoints of one size with different roots are a fork: both notes are shown
     and saved in ``checkpoints/forks/<origin>+<key ID>-<size>.txt``, and C fails.

With a remote R, R is first checked by the same rule against what is known here (a fork
between R and M is R's fault), then C against M and R. After a pass, the largest of C and R
is remembered when it is larger than M (or nothing was remembered).

Witness quorum (``witness_quorum``): a checkpoint note must carry valid C2SP
tlog-cosignature/v1 lines over its own text by at least K distinct witness keys of the policy;
cosignatures by other keys are ignored, and an invalid one (a wrong key, another checkpoint's
text) is named and not counted.
"""

from __future__ import annotations

import base64
import fcntl
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol
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
from inferaudit.seal.ledger.note import (
    Checkpoint,
    InvalidSignatureError,
    NoteError,
    UnverifiedNoteError,
    open_checkpoint,
    split_note,
    verify_cosignature,
)
from inferaudit.seal.ledger.store import DEFAULT_LOG_NAME, Ledger
from inferaudit.seal.ledger.tile_client import LogUnreachableError

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
    seen_from: str = "shown by this run"
    known_from: str = "known here"

    def text(self) -> str:
        return f"{self.seen}\n{self.known}"


@dataclass(frozen=True)
class Consistency:
    ok: bool
    detail: str
    fork: ForkProof | None = None


class LogSource(Protocol):
    """Where a log is served (``seal.ledger.tile_client.TileLog``): its current checkpoint, and
    proofs and entries read from its tiles (all untrusted until checked against signed roots)."""

    location: str

    def checkpoint(self) -> str: ...

    def consistency_proof(
        self, size1: int, size2: int, *, tiles: int | None = None
    ) -> list[bytes]: ...

    def entry(self, index: int, size: int) -> bytes: ...


@dataclass(frozen=True)
class RemoteCheckpoint:
    """A log's current checkpoint from its server, verified by ``open_remote``."""

    source: LogSource
    note: str
    checkpoint: Checkpoint


@dataclass(frozen=True)
class Quorum:
    ok: bool
    detail: str
    cosigned: tuple[tuple[Verifier, int], ...]  # (witness key, cosignature time), policy order


@dataclass(frozen=True)
class Known:
    """A checkpoint this verifier knows, and how to name it in a detail line."""

    note: str
    checkpoint: Checkpoint
    label: str  # "the remembered checkpoint" / "the log's checkpoint at URL"
    source: str  # for a fork proof: "known here" / "served by the log at URL"


def _utc(timestamp: int) -> str:
    try:
        return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return f"time {timestamp} (out of range)"


def witness_quorum(note: str, policy: TrustPolicy) -> Quorum:
    """Do at least ``policy.witnesses_required`` distinct policy witnesses cosign ``note``'s
    own text (C2SP tlog-cosignature/v1)? ``note`` must be a well-formed signed note."""
    need, n = policy.witnesses_required, len(policy.witnesses)
    if need == 0:
        return Quorum(True, "no witness required by the policy", ())
    text, sigs = split_note(note)
    cosigned: list[tuple[Verifier, int]] = []
    invalid: list[str] = []
    for w in policy.witnesses:
        mine = [s for s in sigs if (s.name, s.key_hash) == (w.name, w.key_hash)]
        times: list[int] = []
        for sig in mine:
            try:
                t = verify_cosignature(text, sig, w)
            except NoteError:
                t = None
            if t is not None:
                times.append(t)
        if times:
            cosigned.append((w, min(times)))
        elif mine:
            invalid.append(w.keyid)
    bad = f"; not counted: an invalid cosignature by {', '.join(invalid)}" if invalid else ""
    if len(cosigned) >= need:
        who = ", ".join(f"{w.keyid} at {_utc(t)}" for w, t in cosigned)
        detail = f"{len(cosigned)} of {n} witnesses cosigned ({who}); the policy needs {need}"
        return Quorum(True, detail + bad, tuple(cosigned))
    who = f" ({', '.join(w.keyid for w, _ in cosigned)})" if cosigned else ""
    detail = f"{len(cosigned)} of {n} witnesses cosigned{who}; the policy needs {need}"
    return Quorum(False, detail + bad, tuple(cosigned))


def open_remote(
    source: LogSource, log: Verifier, policy: TrustPolicy
) -> tuple[bool, str, RemoteCheckpoint | None]:
    """Fetch the log's current checkpoint from ``source`` and require it to be signed by
    ``log`` (the key that signed the run's checkpoint, so the same origin) and cosigned by the
    policy's witness quorum. (ok, detail, the verified checkpoint when ok). An unreachable log
    raises ``LogUnreachableError``; anything else it serves wrong is a failed check."""
    where = f"the log at {source.location}"
    try:
        note = source.checkpoint()
        cp, _ = open_checkpoint(note, [log])
    except LogUnreachableError:
        raise
    except UnverifiedNoteError as exc:
        return False, f"{where}: its checkpoint is not signed by {log.keyid} ({exc})", None
    except InvalidSignatureError as exc:
        return False, f"{where}: checkpoint: {exc}", None
    except InferauditError as exc:
        return False, f"{where}: {exc.diagnostics()}", None
    quorum = witness_quorum(note, policy)
    detail = f"{where}: {cp.origin} size {cp.size} signed by {log.keyid}; {quorum.detail}"
    if not quorum.ok:
        return False, detail, None
    return True, detail, RemoteCheckpoint(source, note, cp)


def _b64(root: bytes) -> str:
    return base64.b64encode(root).decode()


def _log_id(log: Verifier) -> str:
    return f"{quote(log.name, safe='')}+{log.key_hash:08x}"


@dataclass(frozen=True)
class CheckpointMemory:
    """Where a verifier keeps the checkpoints it knows, the local ledger it may consult, and
    the remote log whose current checkpoint and tiles it may consult (``verify --log``)."""

    directory: Path  # <data dir>/checkpoints
    ledger_url: str | None = None
    remote: LogSource | None = None

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

    def check(
        self, note: str, cp: Checkpoint, log: Verifier, remote: RemoteCheckpoint | None = None
    ) -> Consistency:
        """Check ``cp`` (verified under ``log``) against what is known, and against ``remote``
        (verified by ``open_remote``) when given; see the module rule. An unreachable remote
        log raises ``LogUnreachableError``."""
        try:
            known = self.remembered(log)
        except NoteError as exc:
            return Consistency(False, str(exc))
        ledger = self._ledger(cp.origin, log)
        try:
            result = self._check_all(note, cp, log, known, ledger, remote)
        except LogUnreachableError:
            raise
        except InferauditError as exc:
            result = Consistency(False, f"checkpoint consistency: {exc.diagnostics()}")
        finally:
            if ledger is not None:
                ledger.close()
        newest = (note, cp)
        if remote is not None and remote.checkpoint.size > cp.size:
            newest = (remote.note, remote.checkpoint)
        if result.ok and (known is None or newest[1].size > known[1].size):
            result = Consistency(True, result.detail + self._remember(*newest, log))
        return result

    # -- the rule ------------------------------------------------------------------------------

    def _check_all(
        self,
        note: str,
        cp: Checkpoint,
        log: Verifier,
        known: tuple[str, Checkpoint] | None,
        ledger: Ledger | None,
        remote: RemoteCheckpoint | None,
    ) -> Consistency:
        knowns = [] if known is None else [Known(*known, "the remembered checkpoint", "known here")]
        if remote is None:
            return self._check(note, cp, log, knowns, ledger, None, "shown by this run")
        where = f"the log at {remote.source.location}"
        first = self._check(
            remote.note, remote.checkpoint, log, knowns, ledger, remote, f"served by {where}"
        )
        if not first.ok:
            return Consistency(False, f"{where}: {first.detail}", first.fork)
        label = f"the checkpoint of {where}"
        knowns.append(Known(remote.note, remote.checkpoint, label, f"served by {where}"))
        second = self._check(note, cp, log, knowns, ledger, remote, "shown by this run")
        if not second.ok:
            return second
        return Consistency(
            True,
            f"{where} (size {remote.checkpoint.size}): {first.detail}; "
            f"this run's (size {cp.size}): {second.detail}",
        )

    def _check(
        self,
        note: str,
        cp: Checkpoint,
        log: Verifier,
        knowns: list[Known],
        ledger: Ledger | None,
        remote: RemoteCheckpoint | None,
        seen_from: str,
    ) -> Consistency:
        parts: list[str] = []
        local_size = ledger.size() if ledger is not None else 0
        # (1): the local ledger, when it is this log and covers the checkpoint.
        if ledger is not None and cp.size <= local_size:
            local_root = ledger.root(cp.size)
            if local_root != cp.root:
                local_note = ledger.checkpoint_at(cp.size)
                if local_note is not None:
                    local = Known(local_note, cp, "the local ledger", "known here")
                    return self._fork(note, cp, log, local, seen_from)
                return Consistency(
                    False,
                    f"inconsistent with the local ledger: its tree at size {cp.size} has root "
                    f"{_b64(local_root)}, the checkpoint says {_b64(cp.root)}",
                )
            parts.append(f"matches the local ledger's tree at size {cp.size}")
        elif ledger is not None and not knowns:
            latest = ledger.latest_checkpoint()
            if latest is not None:
                old = open_checkpoint(latest, [log])[0]
                knowns = [Known(latest, old, "the remembered checkpoint", "known here")]
        # (2): each known checkpoint (or the local ledger's, when it is behind).
        for k in knowns:
            result = self._against(note, cp, log, k, ledger, local_size, remote, seen_from)
            if not result.ok:
                return result
            parts.append(result.detail)
        if not parts:
            parts.append(f"first checkpoint of {log.keyid} seen here (size {cp.size})")
        return Consistency(True, "; ".join(parts))

    def _against(
        self,
        note: str,
        cp: Checkpoint,
        log: Verifier,
        known: Known,
        ledger: Ledger | None,
        local_size: int,
        remote: RemoteCheckpoint | None,
        seen_from: str,
    ) -> Consistency:
        old = known.checkpoint
        if old.size == cp.size:
            if old.root != cp.root:
                return self._fork(note, cp, log, known, seen_from)
            return Consistency(True, f"same as {known.label} at size {old.size}")
        small, big = sorted((old, cp), key=lambda c: c.size)
        if ledger is not None and big.size <= local_size:
            source = "the local ledger"
            proof = ledger.consistency_proof(small.size, big.size) if small.size else []
        elif remote is not None and big.size <= remote.checkpoint.size:
            source = f"the tiles of the log at {remote.source.location}"
            tiles = remote.checkpoint.size
            proof = remote.source.consistency_proof(small.size, big.size, tiles=tiles)
        else:
            if remote is None:
                nobody = f"no local ledger of {cp.origin} can prove them consistent"
            else:
                nobody = (
                    f"neither a local ledger of {cp.origin} nor the log at "
                    f"{remote.source.location} (size {remote.checkpoint.size}) can prove them "
                    "consistent"
                )
            return Consistency(
                False,
                f"inconsistent or unprovable: this checkpoint is at size {cp.size}, the "
                f"known one at size {old.size}, and {nobody} (verify where the log's ledger "
                "is: --data-dir/--db)",
            )
        if small.size > 0:
            try:
                merkle.verify_consistency(small.size, big.size, proof, small.root, big.root)
            except merkle.ProofError as exc:
                return Consistency(
                    False, f"inconsistent with {known.label} at size {old.size} ({exc})"
                )
        return Consistency(
            True, f"consistent with {known.label} at size {old.size} (RFC 9162 proof from {source})"
        )

    def _fork(
        self, seen: str, cp: Checkpoint, log: Verifier, known: Known, seen_from: str
    ) -> Consistency:
        path = self.directory / FORKS_DIR / f"{_log_id(log)}-{cp.size}.txt"
        saved: Path | None = path
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.write_text(f"{seen}\n{known.note}")
        except OSError:
            saved = None
        where = f"; both kept in {saved}" if saved is not None else ""
        fork = ForkProof(cp.origin, cp.size, seen, known.note, saved, seen_from, known.source)
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
