"""The ledger's storage, run against SQLite and (when INFERAUDIT_TEST_PG_URL is set) PostgreSQL."""

from __future__ import annotations

import multiprocessing
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from conftest_ledger import database
from inferaudit.errors import LedgerError
from inferaudit.home import make_engine
from inferaudit.seal.keys import Signer
from inferaudit.seal.ledger import merkle
from inferaudit.seal.ledger.note import open_checkpoint, parse_tlog_proof
from inferaudit.seal.ledger.store import Ledger, nodes_t, open_ledger
from inferaudit.seal.ledger.tiles import export_tiles, tile_index_path, tile_path, unbundle
from test_merkle import LEAVES, ROOTS  # transparency-dev known answers; ROOTS[n]: n leaves

LOG = "example.test/log"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL: a SQLite file, or a private schema on the PostgreSQL server."""
    with database(request.param, tmp_path) as url:
        yield url


def _signer() -> Signer:
    return Signer(name=LOG, seed=bytes(range(32)))


def _ledger(url: str) -> Ledger:
    return Ledger(make_engine(url), signer=_signer())


def test_roots_match_published_vectors(db: str) -> None:
    with _ledger(db) as ledger:
        assert ledger.root() == merkle.EMPTY_ROOT
        for n, leaf in enumerate(LEAVES, 1):
            assert ledger.append([leaf]) == [n - 1]
            assert ledger.root().hex() == ROOTS[n]
        for m in range(1, 9):
            assert ledger.root(m).hex() == ROOTS[m]


def test_batches_proofs_and_dedupe(db: str) -> None:
    rng = random.Random(7)
    leaves = [f"entry {i}".encode() for i in range(150)]
    with _ledger(db) as ledger:
        i = 0
        while i < len(leaves):
            step = rng.choice([1, 2, 5, 31, 64])
            assert ledger.append(leaves[i : i + step]) == list(range(i, min(i + step, 150)))
            i += step
        hashes = [merkle.hash_leaf(x) for x in leaves]
        roots = {n: ledger.root(n) for n in range(1, 151)}
        for n in (1, 2, 3, 7, 8, 9, 64, 100, 127, 128, 129, 150):
            for m in range(0, n, max(1, n // 9)):
                merkle.verify_inclusion(m, n, hashes[m], ledger.inclusion_proof(m, n), roots[n])
            for m in range(1, n + 1, max(1, n // 9)):
                proof = ledger.consistency_proof(m, n)
                merkle.verify_consistency(m, n, proof, roots[m], roots[n])
        assert ledger.consistency_proof(0, 5) == []
        # An entry already logged keeps its index; a batch with repeats appends each once.
        assert ledger.append([leaves[3], b"new", b"new"]) == [3, 150, 150]
        assert ledger.size() == 151
        assert ledger.find(b"new") == 150
        assert ledger.entry(42) == leaves[42]
        with pytest.raises(LedgerError, match="not in the log"):
            ledger.find(b"never appended")
        with pytest.raises(LedgerError, match="65535"):
            ledger.append([b"x" * 65_536])
        ledger.append([b"y" * 65_535])
        with pytest.raises(LedgerError, match="beyond"):
            ledger.inclusion_proof(0, 10_000)


def test_checkpoints_and_tlog_proof(db: str) -> None:
    with _ledger(db) as ledger:
        with pytest.raises(LedgerError, match="no signed checkpoint"):
            ledger.tlog_proof(0)
        ledger.append(LEAVES[:5])
        note5 = ledger.sign_checkpoint()
        assert ledger.sign_checkpoint() == note5  # nothing new: same checkpoint
        cp5, _ = open_checkpoint(note5, [_signer().verifier()])
        assert (cp5.origin, cp5.size, cp5.root.hex()) == (LOG, 5, ROOTS[5])
        ledger.append(LEAVES[5:])
        with pytest.raises(LedgerError, match="not covered"):
            ledger.tlog_proof(6, note5)
        note8 = ledger.sign_checkpoint()
        assert ledger.checkpoint_at(5) == note5
        proof = parse_tlog_proof(ledger.tlog_proof(6).text())
        cp8, _ = open_checkpoint(proof.checkpoint, [_signer().verifier()])
        assert proof.checkpoint == note8
        merkle.verify_inclusion(6, 8, merkle.hash_leaf(LEAVES[6]), list(proof.hashes), cp8.root)
        with pytest.raises(LedgerError, match="does not match"):
            ledger.sign_checkpoint(Signer(name="someone-else", seed=bytes(32)))


def test_never_signs_a_fork(db: str) -> None:
    """If stored history changes under a signed checkpoint, no new checkpoint is signed."""
    with _ledger(db) as ledger:
        ledger.append(LEAVES[:4])
        ledger.sign_checkpoint()
        ledger.append(LEAVES[4:])
        with ledger.engine.begin() as conn:
            conn.execute(
                update(nodes_t)
                .where(nodes_t.c.id == 2 << 48)  # node (level 2, k 0): the root of size 4
                .values(hash=b"\x00" * 32)
            )
        with pytest.raises(LedgerError, match="no longer reaches the checkpoint at size 4"):
            ledger.sign_checkpoint()


def test_origin_is_fixed(db: str, tmp_path: Path) -> None:
    with _ledger(db) as ledger:
        ledger.append([b"a"])
        ledger.sign_checkpoint()
    with pytest.raises(LedgerError, match="origin"):
        Ledger(make_engine(db), origin="another/log")
    with open_ledger(db, tmp_path / "home") as ledger:
        assert ledger.origin == LOG
        assert ledger.signer is None  # the log key lives elsewhere: appends yes, checkpoints no
        with pytest.raises(LedgerError, match="no log key"):
            ledger.sign_checkpoint()


def test_open_ledger_creates_log_key(db: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    with open_ledger(db, home, origin="fresh.test/log") as ledger:
        assert ledger.signer is not None and ledger.signer.name == "fresh.test/log"
        key_file = next((home / "keys").glob("*.key"))
        assert key_file.stat().st_mode & 0o777 == 0o600
        ledger.append([b"a"])
        ledger.sign_checkpoint()


def _appender(url: str, worker: int, batches: int, out: multiprocessing.Queue) -> None:
    ledger = _ledger(url)
    notes = []
    for b in range(batches):
        ledger.append([f"w{worker} b{b} e{e}".encode() for e in range(7)])
        notes.append(ledger.sign_checkpoint())
    ledger.close()
    out.put(notes)


def test_two_processes_append_at_once(db: str) -> None:
    with _ledger(db):
        pass  # schema exists before the race (creating it concurrently is covered too, below)
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue = ctx.Queue()
    batches = 15
    procs = [ctx.Process(target=_appender, args=(db, w, batches, out)) for w in range(2)]
    for p in procs:
        p.start()
    notes = [n for _ in procs for n in out.get(timeout=120)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    with _ledger(db) as ledger:
        size = ledger.size()
        assert size == 2 * batches * 7
        entries = ledger.entries(0, size)  # dense: every index 0..size-1 present
        assert len(set(entries)) == size
        final = ledger.root(size)
        key = _signer().verifier()
        sizes = set()
        for note in notes:
            cp, _ = open_checkpoint(note, [key])
            sizes.add(cp.size)
            # every checkpoint either process got is a prefix of the final tree: no fork
            assert ledger.root(cp.size) == cp.root
            proof = ledger.consistency_proof(cp.size, size)
            merkle.verify_consistency(cp.size, size, proof, cp.root, final)
        assert max(sizes) == size


def _creator(url: str, out: multiprocessing.Queue) -> None:
    ledger = _ledger(url)
    ledger.append([os.urandom(8)])
    ledger.close()
    out.put("ok")


def test_concurrent_first_open(db: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue = ctx.Queue()
    procs = [ctx.Process(target=_creator, args=(db, out)) for _ in range(2)]
    for p in procs:
        p.start()
    assert [out.get(timeout=120) for _ in procs] == ["ok", "ok"]
    for p in procs:
        p.join(timeout=60)
    with _ledger(db) as ledger:
        assert ledger.size() == 2


def test_tile_paths() -> None:
    assert tile_index_path(1234067) == "x001/x234/067"
    assert tile_index_path(0) == "000"
    assert tile_path(0, 5) == "tile/0/005"
    assert tile_path(2, 1, 17) == "tile/2/001.p/17"
    assert tile_path("entries", 1234067, 3) == "tile/entries/x001/x234/067.p/3"


@pytest.mark.slow
def test_tiles_of_70000_leaves(tmp_path: Path) -> None:
    """tlog-tiles vector: 273 full level-0 tiles + 112; 1 full level-1 + 17; level-2 width 1."""
    with _ledger(f"sqlite:///{tmp_path / 'l.db'}") as ledger:
        leaves = [i.to_bytes(4, "big") for i in range(70_000)]
        for i in range(0, 70_000, 10_000):
            ledger.append(leaves[i : i + 10_000])
        ledger.sign_checkpoint()
        result = export_tiles(ledger, tmp_path / "tiles")
        root = ledger.root()
    out = tmp_path / "tiles"
    assert result.size == 70_000
    level0 = sorted(p.relative_to(out / "tile/0").as_posix() for p in (out / "tile/0").rglob("*")
                    if p.is_file())  # fmt: skip
    assert len(level0) == 274
    assert "272" in level0 and "273.p/112" in level0
    assert (out / "tile/1/000").stat().st_size == 256 * 32
    assert (out / "tile/1/001.p/17").stat().st_size == 17 * 32
    assert (out / "tile/2/000.p/1").stat().st_size == 32
    assert not (out / "tile/3").exists()
    # The level-0 hashes in the tiles rebuild the checkpoint's root; the bundles hold the leaves.
    hashes = b"".join((out / "tile/0" / name).read_bytes() for name in
                      [f"{n:03d}" for n in range(273)] + ["273.p/112"])  # fmt: skip
    leaf_hashes = [hashes[i : i + 32] for i in range(0, len(hashes), 32)]
    assert leaf_hashes[12345] == merkle.hash_leaf(leaves[12345])
    level = leaf_hashes  # fold the tree bottom-up (RFC 9162: an odd node is carried up)
    while len(level) > 1:
        nxt = [merkle.hash_children(a, b) for a, b in zip(level[::2], level[1::2], strict=False)]
        level = nxt + ([level[-1]] if len(level) % 2 else [])
    assert level[0] == root
    assert unbundle((out / "tile/entries/273.p/112").read_bytes()) == leaves[69_888:]
    note = (out / "checkpoint").read_text()
    cp, _ = open_checkpoint(note, [_signer().verifier()])
    assert (cp.size, cp.root) == (70_000, root)


def test_home_and_database_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from inferaudit.errors import ConfigError
    from inferaudit.home import data_dir, db_url

    monkeypatch.setenv("INFERAUDIT_HOME", str(tmp_path / "env-home"))
    monkeypatch.delenv("INFERAUDIT_DB", raising=False)
    assert data_dir() == tmp_path / "env-home"
    assert (tmp_path / "env-home").stat().st_mode & 0o777 == 0o700
    assert data_dir(tmp_path / "flag") == tmp_path / "flag"  # the flag wins over the env
    assert db_url(None, tmp_path / "h") == f"sqlite:///{tmp_path / 'h' / 'ledger.sqlite3'}"
    monkeypatch.setenv("INFERAUDIT_DB", "postgresql+psycopg://u@127.0.0.1/x")
    assert db_url(None, tmp_path) == "postgresql+psycopg://u@127.0.0.1/x"
    assert db_url("sqlite:///a.db", tmp_path) == "sqlite:///a.db"
    with pytest.raises(ConfigError, match="only sqlite and postgresql"):
        db_url("mysql://u@h/db")
    with pytest.raises(ConfigError, match="not a SQLAlchemy URL"):
        db_url("not a url")
