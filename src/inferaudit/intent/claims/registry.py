"""The claims registry: SQLAlchemy Core tables in the ledger's database.

Claims are immutable: the registry refuses to change a stored claim; a correction is a new claim
that ``supersedes`` it.

Storing and signing are one unit (``ClaimStore.add`` with a ``Signing``):

    1. plan: every record is checked against the registry (immutability, references,
       supersession) before anything is written; any problem refuses the whole batch;
    2. publish: the new claims, and any stored claim still without a ledger entry, are signed and
       logged in one batch (``signing.publish_claims``: every size checked first, so a claim too
       large for a ledger entry stores and logs nothing);
    3. store: one write transaction, taken with the write lock up front (SQLite ``BEGIN
       IMMEDIATE``; writers queue behind the busy timeout instead of failing "database is
       locked"), checks the plan again and inserts each claim with its ledger index.

A crash between (2) and (3) leaves log entries whose claims are not stored; publishing is
idempotent, so importing again stores them with the entries already logged, never a claim
without its index. Rows left without an index by older versions are signed on the next import.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import get_args

from pydantic import ValidationError
from sqlalchemy import Column, Connection, Engine, Integer, MetaData, String, Table, Text, select
from sqlalchemy.exc import SQLAlchemyError

from inferaudit.errors import ClaimsError, ConfigError
from inferaudit.intent.claims.files import ClaimImportError
from inferaudit.intent.claims.model import Certainty, Claim, ClaimStatus
from inferaudit.intent.claims.signing import Signing, publish_claims

metadata = MetaData()
claims_table = Table(
    "capacity_claims",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("claim_id", String(100), nullable=False, unique=True),
    Column("sha256", String(64), nullable=False),
    Column("body", Text, nullable=False),  # RFC 8785 JSON of the claim
    Column("supersedes", String(100), nullable=True, unique=True),  # no forked corrections
    Column("added_at", String(40), nullable=False),
    Column("ledger_index", Integer, nullable=True),
)


class StoredClaimError(ClaimsError):
    """A registry row does not hold the claim its hash names (edited or corrupted storage)."""


@dataclass(frozen=True)
class StoredClaim:
    claim: Claim
    seq: int
    sha256: str
    added_at: str
    superseded_by: str | None
    ledger_index: int | None


@dataclass(frozen=True)
class ImportResult:
    added: list[str]
    unchanged: list[str]  # already stored with identical content
    indices: dict[str, int]  # ledger index of every claim signed by this call
    repaired: list[str]  # stored earlier without a ledger entry, signed by this call


@dataclass(frozen=True)
class _Row:
    claim_id: str
    sha256: str
    supersedes: str | None
    ledger_index: int | None


@dataclass(frozen=True)
class _Plan:
    new: list[Claim]
    unchanged: list[Claim]
    unsigned: list[Claim]  # unchanged ones whose stored row has no ledger index


def _plan(claims: Sequence[Claim], rows: Sequence[_Row], path: str) -> _Plan:
    stored = {r.claim_id: r for r in rows}
    superseded = {r.supersedes: r.claim_id for r in rows if r.supersedes}
    incoming = {c.claim_id for c in claims}
    problems: list[str] = []
    new: list[Claim] = []
    unchanged: list[Claim] = []
    for c in claims:
        row = stored.get(c.claim_id)
        if row is not None:
            if row.sha256 == c.digest():
                unchanged.append(c)
            else:
                problems.append(
                    f"{c.claim_id}: already stored with other content; claims are immutable, "
                    "add a correction that supersedes it"
                )
            continue
        for field, ref in (("supersedes", c.supersedes), ("part_of", c.part_of)):
            if ref is not None and ref not in stored and ref not in incoming:
                problems.append(f"{c.claim_id}: field {field}: unknown claim {ref!r}")
        if c.supersedes is not None:
            if c.supersedes == c.claim_id:
                problems.append(f"{c.claim_id}: field supersedes: a claim cannot supersede itself")
            elif c.supersedes in superseded:
                problems.append(
                    f"{c.claim_id}: field supersedes: {c.supersedes} is already superseded by "
                    f"{superseded[c.supersedes]}"
                )
            superseded[c.supersedes] = c.claim_id
        new.append(c)
    if problems:
        raise ClaimImportError(path, problems)
    unsigned = [c for c in unchanged if stored[c.claim_id].ledger_index is None]
    return _Plan(new, unchanged, unsigned)


def _database_error(exc: SQLAlchemyError) -> ClaimsError:
    first = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    return ClaimsError(f"claims database: {exc.__class__.__name__}: {first}")


class ClaimStore:
    """The claims registry. Every write is one transaction: all records or none."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        try:
            with self._writing() as conn:
                metadata.create_all(conn)
        except SQLAlchemyError as exc:
            raise _database_error(exc) from None

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A write transaction holding the write lock from its first statement (SQLite ``BEGIN
        IMMEDIATE`` through ``home.make_engine``): other writers wait for it, up to the busy
        timeout, instead of failing."""
        conn = self.engine.connect().execution_options(sqlite_immediate=True)
        with conn, conn.begin():
            yield conn

    def _read_rows(self, conn: Connection) -> list[_Row]:
        t = claims_table
        result = conn.execute(select(t.c.claim_id, t.c.sha256, t.c.supersedes, t.c.ledger_index))
        return [_Row(r.claim_id, r.sha256, r.supersedes, r.ledger_index) for r in result]

    def add(
        self, claims: Sequence[Claim], *, path: str = "<input>", signing: Signing | None = None
    ) -> ImportResult:
        """Store new claims (identical ones already stored are skipped, changed ones refused);
        with ``signing``, sign and log them first (see the module docstring)."""
        try:
            # (1): plan against what is stored; nothing is written when anything is wrong.
            with self.engine.connect() as conn:
                plan = _plan(claims, self._read_rows(conn), path)
            # (2): sign and log (sizes first), new claims and stored ones still unsigned.
            to_sign = [*plan.new, *plan.unsigned] if signing is not None else []
            published = publish_claims(to_sign, signing) if signing is not None else []
            indices = {
                c.claim_id: p.index
                for c, p in zip(to_sign, published, strict=True)
                if p.index is not None
            }
            # (3): store, under the write lock, checking the plan again.
            with self._writing() as conn:
                plan = _plan(claims, self._read_rows(conn), path)
                now = datetime.now(UTC).isoformat(timespec="seconds")
                for c in plan.new:
                    conn.execute(
                        claims_table.insert().values(
                            claim_id=c.claim_id,
                            sha256=c.digest(),
                            body=c.canonical().decode("utf-8"),
                            supersedes=c.supersedes,
                            added_at=now,
                            ledger_index=indices.get(c.claim_id),
                        )
                    )
                repaired = [c.claim_id for c in plan.unsigned if c.claim_id in indices]
                for cid in repaired:
                    conn.execute(
                        claims_table.update()
                        .where(claims_table.c.claim_id == cid)
                        .values(ledger_index=indices[cid])
                    )
        except SQLAlchemyError as exc:
            raise _database_error(exc) from None
        return ImportResult(
            added=[c.claim_id for c in plan.new],
            unchanged=[c.claim_id for c in plan.unchanged],
            indices=indices,
            repaired=repaired,
        )

    def check(self, claims: Sequence[Claim], *, path: str = "<input>") -> None:
        """Refuse (``ClaimImportError``) what ``add`` would refuse; write nothing."""
        try:
            with self.engine.connect() as conn:
                _plan(claims, self._read_rows(conn), path)
        except SQLAlchemyError as exc:
            raise _database_error(exc) from None

    def add_logged(self, claim: Claim, index: int, *, path: str = "<input>") -> ImportResult:
        """Store one claim that was signed and logged elsewhere (the log service appended its
        submitted envelope at ``index``), under the same rules as ``add``: an identical stored
        claim is unchanged (given ``index`` when it had none), a changed one is refused."""
        try:
            with self._writing() as conn:
                plan = _plan([claim], self._read_rows(conn), path)
                if plan.new:
                    conn.execute(
                        claims_table.insert().values(
                            claim_id=claim.claim_id,
                            sha256=claim.digest(),
                            body=claim.canonical().decode("utf-8"),
                            supersedes=claim.supersedes,
                            added_at=datetime.now(UTC).isoformat(timespec="seconds"),
                            ledger_index=index,
                        )
                    )
                repaired = [c.claim_id for c in plan.unsigned]
                for cid in repaired:
                    conn.execute(
                        claims_table.update()
                        .where(claims_table.c.claim_id == cid)
                        .values(ledger_index=index)
                    )
        except SQLAlchemyError as exc:
            raise _database_error(exc) from None
        return ImportResult(
            added=[c.claim_id for c in plan.new],
            unchanged=[c.claim_id for c in plan.unchanged],
            indices={claim.claim_id: index} if plan.new or repaired else {},
            repaired=repaired,
        )

    def _rows(self) -> Iterator[StoredClaim]:
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(select(claims_table).order_by(claims_table.c.seq)).all()
        except SQLAlchemyError as exc:
            raise _database_error(exc) from None
        by = {r.supersedes: r.claim_id for r in rows if r.supersedes}
        for r in rows:
            try:
                claim = Claim.model_validate_json(r.body)
            except ValidationError:
                raise StoredClaimError(
                    f"stored claim {r.claim_id}: its body is not a valid claim (registry edited "
                    "or corrupted)"
                ) from None
            if claim.claim_id != r.claim_id or claim.digest() != r.sha256:
                raise StoredClaimError(
                    f"stored claim {r.claim_id} does not match its hash {r.sha256[:16]}… "
                    "(registry edited or corrupted)"
                )
            yield StoredClaim(
                claim, r.seq, r.sha256, r.added_at, by.get(r.claim_id), r.ledger_index
            )

    def all(self) -> list[StoredClaim]:
        return list(self._rows())

    def get(self, claim_id: str) -> StoredClaim:
        for s in self._rows():
            if s.claim.claim_id == claim_id:
                return s
        raise ClaimsError(f"no claim {claim_id!r} in the registry")

    def query(
        self,
        *,
        site: str | None = None,
        vendor: str | None = None,
        status: str | None = None,
        certainty: str | None = None,
        include_superseded: bool = False,
    ) -> list[StoredClaim]:
        """Claims matching every filter (site and vendor: case-insensitive substrings)."""
        for name, value, allowed in (
            ("status", status, get_args(ClaimStatus)),
            ("certainty", certainty, get_args(Certainty)),
        ):
            if value is not None and value not in allowed:
                raise ConfigError(f"--{name} {value!r}; expected one of {', '.join(allowed)}")
        out = []
        for s in self._rows():
            c = s.claim
            if s.superseded_by and not include_superseded:
                continue
            if site and not (c.subject.site and c.subject.site.matches(site)):
                continue
            if vendor and not any(vendor.lower() in v.lower() for v in c.vendors):
                continue
            if status and c.status != status:
                continue
            if certainty and c.certainty != certainty:
                continue
            out.append(s)
        return out

    def supersede(self, old_id: str, new: Claim, *, signing: Signing | None = None) -> ImportResult:
        """Store ``new`` as the correction of ``old_id`` (it must say ``supersedes: old_id``)."""
        self.get(old_id)
        if new.supersedes != old_id:
            raise ClaimsError(
                f"{new.claim_id}: field supersedes is {new.supersedes!r}, expected {old_id!r}"
            )
        return self.add([new], signing=signing)
