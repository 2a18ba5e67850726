"""The service's evidence store: run bundles uploaded for ledger entries, unpacked safely and
verified once; the dashboard reads only what is cached here.

A bundle is a gzip-compressed tar of one run directory's files (``pack_run`` makes one). It is
untrusted input, so ``EvidenceStore.add(index, entry, bundle)``:

    1. refuses a bundle over ``max_bundle_bytes`` before reading it;
    2. unpacks it into a fresh directory under ``root/tmp``, streaming, member by member:
       regular files only (no links, directories, devices, FIFOs or sparse files), flat names
       matching ``NAME_PATTERN`` (no ``/``, no ``..``, no absolute paths), each name once, at
       most ``max_files`` files, each at most ``max_file_bytes``; the gzip stream itself may
       inflate to at most ``max_unpacked_bytes`` (headers included), so a decompression bomb
       stops where the cap is reached;
    3. checks that its ``envelope.dsse.json`` holds exactly ``entry``, the ledger's leaf at
       ``index``;
    4. refuses a second, different bundle for an index that has one (evidence is immutable); the
       same files again give the same outcome. Bundles are compared by ``files_digest``: SHA-256
       over the ``sha256sum``-style listing ``<hex sha256>  <name>\\n`` of its files by name;
    5. moves the directory to ``root/runs/<index>`` with one rename;
    6. verifies it with ``seal.verified.open_verified`` under the trust policy (a run whose
       proof names another entry than ``index`` is not verified);
    7. records (index, status, reason, files digest, file names, time) in the table
       ``service_evidence``.

The outcomes are cached in memory. When a store first serves a read, and on the first read after
its trust policy is replaced, every stored bundle is verified again, once, under its policy, so a
bundle edited on disk is listed as not verified (the table keeps what was found at upload).
Pages never verify anything themselves.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tarfile
import threading
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import orjson
from sqlalchemy import BigInteger, Column, Engine, Integer, MetaData, String, Table, Text, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from inferaudit.errors import DataError, InferauditError, StorageError
from inferaudit.measure.rundir import ENVELOPE_FILE
from inferaudit.seal.keys import TrustPolicy
from inferaudit.seal.verified import UnverifiedRun, VerifiedRun, open_verified

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9][A-Za-z0-9_-]*){0,3}")
MAX_NAME_CHARS = 100
DEFAULT_MAX_BUNDLE_BYTES = 64 << 20
DEFAULT_MAX_FILES = 32
DEFAULT_MAX_FILE_BYTES = 256 << 20
DEFAULT_MAX_UNPACKED_BYTES = 512 << 20
_BLOCK = 1 << 16

Status = Literal["verified", "unverified"]

_Index = BigInteger().with_variant(Integer(), "sqlite")
metadata = MetaData()
evidence_t = Table(
    "service_evidence",
    metadata,
    Column("idx", _Index, primary_key=True, autoincrement=False),  # the ledger entry
    Column("status", String(12), nullable=False),
    Column("reason", Text, nullable=True),
    Column("files_digest", String(64), nullable=False),
    Column("files", Text, nullable=False),  # JSON list of the bundle's file names
    Column("added_at", String(40), nullable=False),
)


class EvidenceError(InferauditError):
    """The evidence store refused an upload or cannot read its storage."""


class BundleError(EvidenceError, DataError):
    """An uploaded bundle is not a safe, flat gzip tar of run files within the limits."""


class BundleTooLargeError(BundleError):
    """A bundle, a file in it or its unpacked size is over a limit."""


class EntryMismatchError(BundleError):
    """The bundle's envelope is not the ledger entry it was uploaded for."""


class EvidenceImmutableError(EvidenceError):
    """Another bundle was already stored for that entry: evidence is never replaced."""


@dataclass(frozen=True)
class EvidenceOutcome:
    """What an upload found: ``reason`` is None exactly when the run verified."""

    index: int
    status: Status
    reason: str | None


@dataclass(frozen=True)
class EvidenceRow:
    """One stored bundle as the store holds it now (``run`` verified, or why not)."""

    index: int
    status: Status
    reason: str | None
    files_digest: str
    files: tuple[str, ...]
    added_at: str
    run: VerifiedRun | UnverifiedRun

    @property
    def outcome(self) -> EvidenceOutcome:
        return EvidenceOutcome(self.index, self.status, self.reason)


def check_name(name: str) -> str:
    """A bundle member's name: flat, ``NAME_PATTERN``, at most 100 characters; else BundleError."""
    if len(name) > MAX_NAME_CHARS or not NAME_PATTERN.fullmatch(name):
        raise BundleError(f"bundle member {name[:60]!r}: only flat file names are allowed")
    return name


def files_digest(digests: dict[str, str]) -> str:
    """SHA-256 of the listing ``<hex sha256>  <name>\\n`` of ``digests`` sorted by name."""
    listing = "".join(f"{digests[n]}  {n}\n" for n in sorted(digests))
    return hashlib.sha256(listing.encode()).hexdigest()


def pack_run(run_dir: Path) -> bytes:
    """A bundle of ``run_dir``: every regular file with an allowed name, gzip tar, flat."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for path in sorted(run_dir.iterdir()):
            if path.is_file() and not path.is_symlink() and NAME_PATTERN.fullmatch(path.name):
                tar.add(path, arcname=path.name, recursive=False)
    return out.getvalue()


class _Inflated(io.RawIOBase):
    """A gzip stream's bytes, decompressed on demand; BundleTooLargeError past ``limit``."""

    def __init__(self, data: bytes, limit: int) -> None:
        self._src = memoryview(data)
        self._pos = 0
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip header and trailer required
        self._pending = b""
        self._out = 0
        self._limit = limit

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        """Read to the end of the stream (within the limit), checking its trailer."""
        buf = memoryview(bytearray(_BLOCK))
        while self.readinto(buf):
            pass

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            if self._z.eof:
                if self._pos < len(self._src) or self._z.unused_data:
                    raise BundleError("bundle: data after the end of the gzip stream")
                return 0
            if self._pos >= len(self._src) and not self._z.unconsumed_tail:
                raise BundleError("bundle: the gzip stream is truncated")
            room = self._limit - self._out + 1
            src = self._z.unconsumed_tail or self._src[self._pos : self._pos + _BLOCK]
            if not self._z.unconsumed_tail:
                self._pos += len(src)
            try:
                self._pending = self._z.decompress(src, min(room, _BLOCK))
            except zlib.error:
                raise BundleError("bundle: not a gzip stream") from None
            self._out += len(self._pending)
            if self._out > self._limit:
                raise BundleTooLargeError(
                    f"bundle unpacks to more than {self._limit:,} bytes; the limit"
                )
        n = min(len(buf), len(self._pending))
        buf[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _first_line(exc: BaseException) -> str:
    return (str(getattr(exc, "orig", None) or exc).splitlines() or [type(exc).__name__])[0]


class EvidenceStore:
    """Run bundles by ledger index under ``root/runs``, their outcomes in ``service_evidence``."""

    def __init__(
        self,
        engine: Engine,
        root: Path,
        policy: TrustPolicy,
        max_bundle_bytes: int = DEFAULT_MAX_BUNDLE_BYTES,
        max_files: int = DEFAULT_MAX_FILES,
        *,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES,
    ) -> None:
        assert min(max_bundle_bytes, max_files, max_file_bytes, max_unpacked_bytes) > 0
        self.engine = engine
        self.root = root
        self._policy = policy
        self.max_bundle_bytes = max_bundle_bytes
        self.max_files = max_files
        self.max_file_bytes = max_file_bytes
        self.max_unpacked_bytes = max_unpacked_bytes
        self._lock = threading.RLock()  # the cache
        self._upload_lock = threading.Lock()
        self._rows: dict[int, EvidenceRow] | None = None  # loaded (and re-verified) on first use
        self._verified: list[VerifiedRun] = []
        self._unverified: list[EvidenceRow] = []
        self.version = 0  # bumped on every change of what the store holds
        try:
            (root / "runs").mkdir(parents=True, exist_ok=True)
            (root / "tmp").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"evidence store {root}: {exc.strerror}") from None
        try:
            with engine.begin() as conn:
                metadata.create_all(conn)
        except SQLAlchemyError as exc:
            raise EvidenceError(f"evidence database: {_first_line(exc)}") from None

    @property
    def policy(self) -> TrustPolicy:
        return self._policy

    @policy.setter
    def policy(self, policy: TrustPolicy) -> None:
        """A new trust policy (e.g. an auditor key registered): every stored bundle is verified
        again under it, once, on the next read."""
        with self._lock:
            self._policy = policy
            self._rows = None

    # -- reads -----------------------------------------------------------------------------------

    def run_dir(self, index: int) -> Path:
        return self.root / "runs" / str(index)

    def get(self, index: int) -> EvidenceRow | None:
        return self._loaded().get(index)

    def verified(self) -> list[VerifiedRun]:
        """Every stored run that verifies now, by ledger index (cached, never re-verified)."""
        with self._lock:
            self._loaded()
            return list(self._verified)

    def unverified(self) -> list[EvidenceRow]:
        """Every stored bundle that does not verify, with its reason, by ledger index."""
        with self._lock:
            self._loaded()
            return list(self._unverified)

    def rows(self) -> list[EvidenceRow]:
        """Every stored bundle, by ledger index."""
        with self._lock:
            return [self._loaded()[i] for i in sorted(self._loaded())]

    def _loaded(self) -> dict[int, EvidenceRow]:
        with self._lock:
            if self._rows is None:
                try:
                    with self.engine.connect() as conn:
                        stored = conn.execute(select(evidence_t).order_by(evidence_t.c.idx)).all()
                except SQLAlchemyError as exc:
                    raise EvidenceError(f"evidence database: {_first_line(exc)}") from None
                self._rows = {}
                for r in stored:
                    files = tuple(str(n) for n in orjson.loads(r.files))
                    self._rows[int(r.idx)] = self._open(
                        int(r.idx), str(r.files_digest), files, str(r.added_at)
                    )
                self._index()
            return self._rows

    def _index(self) -> None:
        assert self._rows is not None
        ordered = [self._rows[i] for i in sorted(self._rows)]
        self._verified = [r.run for r in ordered if isinstance(r.run, VerifiedRun)]
        self._unverified = [r for r in ordered if not isinstance(r.run, VerifiedRun)]
        self.version += 1

    def _open(self, index: int, digest: str, files: tuple[str, ...], added_at: str) -> EvidenceRow:
        """(6): verify the stored directory; the run's proof must be for this very entry."""
        run_dir = self.run_dir(index)
        run = open_verified(run_dir, self._policy)
        if isinstance(run, VerifiedRun) and run.ledger_index != index:
            run = UnverifiedRun(
                run_dir, f"inclusion: its proof is for entry {run.ledger_index}, not {index}"
            )
        if isinstance(run, VerifiedRun):
            return EvidenceRow(index, "verified", None, digest, files, added_at, run)
        return EvidenceRow(index, "unverified", run.reason, digest, files, added_at, run)

    # -- writes ----------------------------------------------------------------------------------

    def add(self, index: int, entry: bytes, bundle: bytes) -> EvidenceOutcome:
        """Store and verify the bundle of ledger entry ``index`` (see the module docstring)."""
        if index < 0:
            raise EvidenceError(f"entry index {index} is negative")
        # (1)
        if len(bundle) > self.max_bundle_bytes:
            raise BundleTooLargeError(
                f"bundle is {len(bundle):,} bytes; the limit is {self.max_bundle_bytes:,}"
            )
        tmp = self.root / "tmp" / uuid.uuid4().hex
        try:
            # (2)
            digests = self._unpack(bundle, tmp)
            # (3)
            if ENVELOPE_FILE not in digests:
                raise EntryMismatchError(f"bundle has no {ENVELOPE_FILE}")
            if (tmp / ENVELOPE_FILE).read_bytes() != entry:
                raise EntryMismatchError(
                    f"bundle's {ENVELOPE_FILE} is not ledger entry {index} (byte for byte)"
                )
            digest = files_digest(digests)
            with self._upload_lock:  # uploads one at a time; reads go on meanwhile
                # (4)
                known = self._loaded().get(index)
                if known is not None:
                    if known.files_digest != digest:
                        raise EvidenceImmutableError(
                            f"entry {index} already has other evidence (files digest "
                            f"{known.files_digest[:16]}…); evidence is never replaced"
                        )
                    return known.outcome
                # (5)
                target = self.run_dir(index)
                if target.exists():  # left by a crash before its row was written
                    shutil.rmtree(target)
                os.rename(tmp, target)
                # (6)
                now = datetime.now(UTC).isoformat(timespec="seconds")
                row = self._open(index, digest, tuple(sorted(digests)), now)
                # (7)
                self._record(row)
                with self._lock:
                    self._loaded()[index] = row
                    self._index()
                return row.outcome
        except OSError as exc:
            raise StorageError(f"evidence store: {exc.strerror or exc}") from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _record(self, row: EvidenceRow) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    evidence_t.insert().values(
                        idx=row.index,
                        status=row.status,
                        reason=row.reason,
                        files_digest=row.files_digest,
                        files=orjson.dumps(list(row.files)).decode(),
                        added_at=row.added_at,
                    )
                )
        except IntegrityError:
            raise EvidenceImmutableError(
                f"entry {row.index} already has evidence (stored by another process)"
            ) from None
        except SQLAlchemyError as exc:
            raise EvidenceError(f"evidence database: {_first_line(exc)}") from None

    def _unpack(self, bundle: bytes, into: Path) -> dict[str, str]:
        """(2): extract the bundle's members into ``into``; return each file's SHA-256."""
        into.mkdir(mode=0o700)
        digests: dict[str, str] = {}
        stream = _Inflated(bundle, self.max_unpacked_bytes)
        try:
            with tarfile.open(fileobj=io.BufferedReader(stream), mode="r|") as tar:
                for member in _members(tar):
                    name = check_name(member.name)
                    if not member.isreg() or member.issparse():
                        raise BundleError(f"bundle member {name!r} is not a regular file")
                    if name in digests:
                        raise BundleError(f"bundle member {name!r} appears twice")
                    if len(digests) >= self.max_files:
                        raise BundleTooLargeError(
                            f"bundle holds more than {self.max_files} files; the limit"
                        )
                    if member.size > self.max_file_bytes:
                        raise BundleTooLargeError(
                            f"bundle member {name!r} is {member.size:,} bytes; the limit is "
                            f"{self.max_file_bytes:,}"
                        )
                    digests[name] = _extract(tar, member, into / name)
            stream.drain()  # the whole gzip stream must be sound, up to its end
        except tarfile.TarError as exc:
            raise BundleError(f"bundle is not a tar archive ({_first_line(exc)})") from None
        except EOFError:
            raise BundleError("bundle: the tar archive is truncated") from None
        return digests


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while True:
        member = tar.next()
        if member is None:
            return
        yield member


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> str:
    src = tar.extractfile(member)
    assert src is not None, "a regular member has a file object"
    h = hashlib.sha256()
    left = member.size
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as out:
        while left > 0:
            block = src.read(min(_BLOCK, left))
            if not block:
                raise BundleError(f"bundle member {member.name!r} is truncated")
            left -= len(block)
            h.update(block)
            out.write(block)
    return h.hexdigest()
