"""The transparency log's storage: SQLAlchemy 2 Core over SQLite (WAL) or PostgreSQL.

Tables:
  ledger_state        one row (id 1): origin, tree size, last signed checkpoint (size, root, note).
                      Every write locks it first (SQLite ``BEGIN IMMEDIATE``; PostgreSQL
                      ``SELECT ... FOR UPDATE``), so indices are dense and assigned under a lock.
  ledger_entries      idx -> leaf bytes (RFC 8785 envelope) and leaf hash (indexed for lookup).
  ledger_nodes        id = level << 48 | k -> hash of every complete perfect subtree (see
                      ``merkle``); one integer key, so a proof's nodes are one primary-key IN;
                      proofs and roots are read from here, never recomputed from the leaves.
  ledger_checkpoints  every signed checkpoint, by size.

A checkpoint is signed only after checking, under the lock, that the stored tree still reaches
the last signed root and that a consistency proof from it verifies; the state row is then
updated with a compare-and-swap on the last signed size, so two inconsistent checkpoints can
never both be issued. Appending a leaf that is already logged returns its existing index.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    Row,
    String,
    Table,
    Text,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from inferaudit.errors import LedgerError
from inferaudit.home import make_engine
from inferaudit.seal.keys import Signer, check_name, key_paths, load_or_create_signer, load_signer
from inferaudit.seal.ledger import merkle
from inferaudit.seal.ledger.note import (
    Checkpoint,
    TlogProof,
    parse_checkpoint,
    sign_checkpoint,
    split_note,
)

MAX_LEAF_BYTES = 65_535
DEFAULT_LOG_NAME = "inferaudit-ledger"
_READ_CHUNK = 500
_K_BITS = 48  # node keys: level << 48 | k, so up to 2^48 leaves
_PG_SCHEMA_LOCK = 0x1F_A11D17  # advisory-lock key held while creating the schema

# 64-bit keys; on SQLite "INTEGER PRIMARY KEY" makes the key the rowid itself (no second B-tree).
_Index = BigInteger().with_variant(Integer(), "sqlite")
metadata = MetaData()
state_t = Table(
    "ledger_state",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("origin", String(255), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("checkpoint_size", BigInteger, nullable=False),
    Column("checkpoint_root", LargeBinary),
    Column("checkpoint", Text),
)
entries_t = Table(
    "ledger_entries",
    metadata,
    Column("idx", _Index, primary_key=True, autoincrement=False),
    Column("leaf_hash", LargeBinary, nullable=False, index=True),
    Column("data", LargeBinary, nullable=False),
)
nodes_t = Table(
    "ledger_nodes",
    metadata,
    Column("id", _Index, primary_key=True, autoincrement=False),  # level << 48 | k
    Column("hash", LargeBinary, nullable=False),
)
checkpoints_t = Table(
    "ledger_checkpoints",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("root", LargeBinary, nullable=False),
    Column("note", Text, nullable=False),
)


@dataclass(frozen=True)
class LedgerState:
    origin: str
    size: int
    checkpoint_size: int
    checkpoint: str | None


def _node_key(node: merkle.NodeId) -> int:
    level, k = node
    assert 0 <= level < 64 and 0 <= k < 1 << _K_BITS, "node out of range: the code has a bug"
    return level << _K_BITS | k


def _node_id(key: int) -> merkle.NodeId:
    return key >> _K_BITS, key & ((1 << _K_BITS) - 1)


def _bulk_insert(conn: Connection, table: Table, rows: list[tuple[object, ...]]) -> None:
    """executemany straight on the driver: SQLAlchemy's per-row bind processing is the
    bottleneck of batched appends, and these rows are plain ints and bytes."""
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    cols = ", ".join(c.name for c in table.columns)
    marks = ", ".join(mark for _ in table.columns)
    conn.exec_driver_sql(f"INSERT INTO {table.name} ({cols}) VALUES ({marks})", rows)


def _reader(conn: Connection) -> merkle.NodeReader:
    def read(ids: Sequence[merkle.NodeId]) -> list[bytes]:
        found: dict[merkle.NodeId, bytes] = {}
        for i in range(0, len(ids), _READ_CHUNK):
            chunk = [_node_key(n) for n in ids[i : i + _READ_CHUNK]]
            rows = conn.execute(select(nodes_t.c.id, nodes_t.c.hash).where(nodes_t.c.id.in_(chunk)))
            found.update({_node_id(r.id): bytes(r.hash) for r in rows})
        missing = [n for n in ids if n not in found]
        if missing:
            raise LedgerError(f"ledger storage is missing tree node {missing[0]}")
        return [found[n] for n in ids]

    return read


class Ledger:
    """A transparency log of leaves (RFC 8785 DSSE envelopes) in one SQL database."""

    def __init__(self, engine: Engine, origin: str | None = None, signer: Signer | None = None):
        self.engine = engine
        self.signer = signer
        self.created = False
        try:
            self.origin = self._init(origin or (signer.name if signer else None))
        except SQLAlchemyError as exc:
            raise LedgerError(f"ledger database: {_first_line(exc)}") from None
        if signer is not None and signer.name != self.origin:
            raise LedgerError(
                f"log key {signer.name!r} does not match ledger origin {self.origin!r}"
            )

    # -- transactions ----------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[tuple[Connection, Row[Any]]]:
        """A write transaction holding the ledger lock; yields the locked state row."""
        try:
            with self.engine.connect() as conn:
                conn.execution_options(sqlite_immediate=True)
                with conn.begin():
                    row = conn.execute(
                        select(state_t).where(state_t.c.id == 1).with_for_update()
                    ).one()
                    yield conn, row
        except OperationalError as exc:
            raise LedgerError(f"ledger database: {_first_line(exc)}") from None

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn, conn.begin():
                yield conn
        except OperationalError as exc:
            raise LedgerError(f"ledger database: {_first_line(exc)}") from None

    def _init(self, origin: str | None) -> str:
        with self.engine.connect() as conn:
            conn.execution_options(sqlite_immediate=True)
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_SCHEMA_LOCK})
                metadata.create_all(conn)
                row = conn.execute(select(state_t.c.origin).where(state_t.c.id == 1)).first()
                if row is None:
                    origin = check_name(origin or DEFAULT_LOG_NAME)  # the origin names the log key
                    conn.execute(
                        insert(state_t).values(id=1, origin=origin, size=0, checkpoint_size=0)
                    )
                    self.created = True
                    return origin
        if origin is not None and origin != row.origin:
            raise LedgerError(f"this ledger's origin is {row.origin!r}, not {origin!r}")
        return str(row.origin)

    # -- reads -----------------------------------------------------------------------------------

    def state(self) -> LedgerState:
        with self._reading() as conn:
            row = conn.execute(select(state_t).where(state_t.c.id == 1)).one()
        return LedgerState(row.origin, row.size, row.checkpoint_size, row.checkpoint)

    def size(self) -> int:
        return self.state().size

    def root(self, size: int | None = None) -> bytes:
        with self._reading() as conn:
            current = conn.execute(select(state_t.c.size)).scalar_one()
            size = current if size is None else size
            if not 0 <= size <= current:
                raise LedgerError(f"tree size {size} is beyond the log's size {current}")
            return merkle.tree_root(size, _reader(conn))

    def entry(self, index: int) -> bytes:
        with self._reading() as conn:
            data = conn.execute(
                select(entries_t.c.data).where(entries_t.c.idx == index)
            ).scalar_one_or_none()
        if data is None:
            raise LedgerError(f"no entry {index} in the log")
        return bytes(data)

    def entries(self, start: int, end: int) -> list[bytes]:
        with self._reading() as conn:
            rows = conn.execute(
                select(entries_t.c.data)
                .where(entries_t.c.idx >= start, entries_t.c.idx < end)
                .order_by(entries_t.c.idx)
            ).all()
        if len(rows) != end - start:
            raise LedgerError(f"entries {start}..{end - 1} are not all in the log")
        return [bytes(r.data) for r in rows]

    def hashes(self, level: int, start: int, end: int) -> list[bytes]:
        """Stored node hashes ``(level, k)`` for k in [start, end)."""
        with self._reading() as conn:
            lo, hi = _node_key((level, start)), _node_key((level, end))
            rows = conn.execute(
                select(nodes_t.c.hash)
                .where(nodes_t.c.id >= lo, nodes_t.c.id < hi)
                .order_by(nodes_t.c.id)
            ).all()
        if len(rows) != end - start:
            raise LedgerError(f"ledger storage is missing level-{level} nodes in {start}..{end}")
        return [bytes(r.hash) for r in rows]

    def find(self, leaf: bytes) -> int:
        """Index of a logged leaf (by its hash)."""
        with self._reading() as conn:
            idx = conn.execute(
                select(entries_t.c.idx)
                .where(entries_t.c.leaf_hash == merkle.hash_leaf(leaf))
                .order_by(entries_t.c.idx)
                .limit(1)
            ).scalar_one_or_none()
        if idx is None:
            raise LedgerError("that entry is not in the log")
        return int(idx)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        with self._reading() as conn:
            current = conn.execute(select(state_t.c.size)).scalar_one()
            if size > current:
                raise LedgerError(f"tree size {size} is beyond the log's size {current}")
            try:
                return merkle.inclusion_proof(index, size, _reader(conn))
            except merkle.ProofError as exc:
                raise LedgerError(str(exc)) from None

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        with self._reading() as conn:
            current = conn.execute(select(state_t.c.size)).scalar_one()
            if not 0 <= size1 <= size2 <= current:
                raise LedgerError(
                    f"no consistency proof from {size1} to {size2} in a log of size {current}"
                )
            if size1 == 0:
                return []  # the empty tree is a prefix of every tree (C2SP tlog-witness)
            return merkle.consistency_proof(size1, size2, _reader(conn))

    def latest_checkpoint(self) -> str | None:
        return self.state().checkpoint

    def checkpoint_at(self, size: int) -> str | None:
        with self._reading() as conn:
            note = conn.execute(
                select(checkpoints_t.c.note).where(checkpoints_t.c.size == size)
            ).scalar_one_or_none()
        return None if note is None else str(note)

    # -- writes ----------------------------------------------------------------------------------

    def append(self, leaves: Sequence[bytes]) -> list[int]:
        """Append leaves in one transaction under the lock; return their indices.

        A leaf already in the log (same leaf hash) keeps its index and is not appended again.
        """
        for i, leaf in enumerate(leaves):
            if len(leaf) > MAX_LEAF_BYTES:
                raise LedgerError(f"entry {i} is {len(leaf)} bytes; the limit is {MAX_LEAF_BYTES}")
        hashes = [merkle.hash_leaf(leaf) for leaf in leaves]
        with self._locked() as (conn, st):
            known: dict[bytes, int] = {}
            unique = list(dict.fromkeys(hashes))
            for i in range(0, len(unique), _READ_CHUNK):
                rows = conn.execute(
                    select(entries_t.c.leaf_hash, entries_t.c.idx).where(
                        entries_t.c.leaf_hash.in_(unique[i : i + _READ_CHUNK])
                    )
                )
                known.update({bytes(r.leaf_hash): int(r.idx) for r in rows})
            size = st.size
            new_rows: list[tuple[object, ...]] = []
            new_hashes: list[bytes] = []
            indices: list[int] = []
            for leaf, h in zip(leaves, hashes, strict=True):
                if h not in known:
                    known[h] = size + len(new_hashes)
                    new_rows.append((known[h], h, leaf))
                    new_hashes.append(h)
                indices.append(known[h])
            if new_hashes:
                nodes = merkle.new_nodes(size, new_hashes, _reader(conn))
                _bulk_insert(conn, entries_t, new_rows)
                _bulk_insert(conn, nodes_t, [(_node_key((lv, k)), h) for lv, k, h in nodes])
                done = conn.execute(
                    update(state_t)
                    .where(state_t.c.id == 1, state_t.c.size == size)
                    .values(size=size + len(new_hashes))
                )
                if done.rowcount != 1:
                    raise LedgerError("the log's size changed while it was locked")
        return indices

    def sign_checkpoint(self, signer: Signer | None = None) -> str:
        """Sign a checkpoint of the current tree (or return the last one if nothing changed)."""
        signer = signer or self.signer
        if signer is None:
            raise LedgerError(f"no log key {self.origin!r} in this data directory to sign with")
        if signer.name != self.origin:
            raise LedgerError(
                f"log key {signer.name!r} does not match ledger origin {self.origin!r}"
            )
        with self._locked() as (conn, st):
            if st.checkpoint is not None and st.checkpoint_size == st.size:
                return str(st.checkpoint)
            read = _reader(conn)
            root = merkle.tree_root(st.size, read)
            if st.checkpoint is not None and st.checkpoint_size > 0:
                old_root = bytes(st.checkpoint_root)
                if merkle.tree_root(st.checkpoint_size, read) != old_root:
                    raise LedgerError(
                        f"stored tree no longer reaches the checkpoint at size {st.checkpoint_size}"
                    )
                proof = merkle.consistency_proof(st.checkpoint_size, st.size, read)
                merkle.verify_consistency(st.checkpoint_size, st.size, proof, old_root, root)
            note = sign_checkpoint(Checkpoint(self.origin, st.size, root), signer)
            done = conn.execute(
                update(state_t)
                .where(state_t.c.id == 1, state_t.c.checkpoint_size == st.checkpoint_size)
                .values(checkpoint_size=st.size, checkpoint_root=root, checkpoint=note)
            )
            if done.rowcount != 1:
                raise LedgerError("another checkpoint was signed concurrently")
            conn.execute(insert(checkpoints_t).values(size=st.size, root=root, note=note))
        return note

    def add_cosignatures(self, note: str) -> None:
        """Store ``note`` in place of the signed checkpoint of its size (and of the latest one,
        when it is the latest): only signature lines may be added (witness cosignatures), after
        the stored ones, none under the log's own name; the text and every stored signature
        line must be identical."""
        text, sigs = split_note(note)
        cp = parse_checkpoint(text)
        with self._locked() as (conn, st):
            stored = conn.execute(
                select(checkpoints_t.c.note).where(checkpoints_t.c.size == cp.size)
            ).scalar_one_or_none()
            if stored is None:
                raise LedgerError(f"the log has no signed checkpoint of size {cp.size}")
            stored_text, stored_sigs = split_note(str(stored))
            if stored_text != text:
                raise LedgerError(f"that note is not the log's checkpoint of size {cp.size}")
            if sigs[: len(stored_sigs)] != stored_sigs:
                raise LedgerError(
                    f"that note does not keep the log's signatures of checkpoint {cp.size}"
                )
            added = sigs[len(stored_sigs) :]
            if any(s.name == self.origin for s in added):
                raise LedgerError("only witness cosignatures may be added to a checkpoint")
            if len({(s.name, s.key_hash) for s in sigs}) != len(sigs):
                raise LedgerError("that note holds two signatures by one key")
            conn.execute(
                update(checkpoints_t).where(checkpoints_t.c.size == cp.size).values(note=note)
            )
            if st.checkpoint_size == cp.size:
                conn.execute(update(state_t).where(state_t.c.id == 1).values(checkpoint=note))

    # -- proofs for export -----------------------------------------------------------------------

    def tlog_proof(self, index: int, checkpoint: str | None = None) -> TlogProof:
        """C2SP tlog-proof for entry ``index`` against ``checkpoint`` (default: the latest)."""
        note = checkpoint or self.latest_checkpoint()
        if note is None:
            raise LedgerError("the log has no signed checkpoint yet (run `ledger checkpoint`)")
        cp = parse_checkpoint(split_note(note)[0])
        if index >= cp.size:
            raise LedgerError(
                f"entry {index} is not covered by the checkpoint at size {cp.size} "
                "(run `ledger checkpoint`)"
            )
        proof = self.inclusion_proof(index, cp.size)
        leaf_hash = merkle.hash_leaf(self.entry(index))
        merkle.verify_inclusion(index, cp.size, leaf_hash, proof, cp.root)
        return TlogProof(index=index, hashes=tuple(proof), checkpoint=note)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _first_line(exc: BaseException) -> str:
    return str(getattr(exc, "orig", None) or exc).splitlines()[0]


def open_ledger(url: str, home: Path, *, origin: str | None = None) -> Ledger:
    """The ledger at ``url`` with its log key from ``home``.

    The log key (named after the origin) is created on first use: when this call creates the
    ledger, or the ledger has never signed a checkpoint. A ledger whose checkpoints another data
    directory's key signs opens without a signer here (appends work; checkpoints need that key).
    """
    engine = make_engine(url)
    ledger = Ledger(engine, origin)
    priv, _ = key_paths(home, ledger.origin)
    if priv.exists():
        ledger.signer = load_signer(home, ledger.origin)
    elif ledger.created or ledger.latest_checkpoint() is None:
        ledger.signer = load_or_create_signer(home, ledger.origin)
    return ledger
