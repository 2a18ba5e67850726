"""RFC 6962/9162 Merkle trees: published vectors, transparency-dev's 196 proof cases, properties."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferaudit.seal.ledger import merkle
from inferaudit.seal.ledger.merkle import ProofError

VECTORS = Path(__file__).parent / "data" / "transparency-dev-merkle" / "testdata"

# transparency-dev/merkle testonly/constants.go (ledger-vectors.md)
LEAVES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def reference_root(leaf_hashes: list[bytes]) -> bytes:
    """MTH straight from RFC 9162 §2.1.1, recursive, sharing no code with the module."""
    n = len(leaf_hashes)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaf_hashes[0]
    k = 1
    while k * 2 < n:
        k *= 2
    left, right = reference_root(leaf_hashes[:k]), reference_root(leaf_hashes[k:])
    return hashlib.sha256(b"\x01" + left + right).digest()


class MemoryNodes:
    """All complete-subtree hashes of a tree, built with ``merkle.new_nodes``, in a dict."""

    def __init__(self) -> None:
        self.nodes: dict[tuple[int, int], bytes] = {}
        self.size = 0
        self.reads = 0

    def read(self, ids):
        self.reads += len(ids)
        return [self.nodes[i] for i in ids]

    def append(self, leaf_hashes: list[bytes]) -> None:
        for level, k, h in merkle.new_nodes(self.size, leaf_hashes, self.read):
            assert (level, k) not in self.nodes
            self.nodes[(level, k)] = h
        self.size += len(leaf_hashes)


def test_record_hash_hello_world() -> None:
    # Go sumdb/tlog note_test.go: RecordHash("hello world")
    want = base64.b64decode("TszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=")
    assert merkle.hash_leaf(b"hello world") == want


def test_roots_of_published_tree() -> None:
    tree = MemoryNodes()
    assert merkle.tree_root(0, tree.read).hex() == ROOTS[0]
    for n, leaf in enumerate(LEAVES, 1):
        tree.append([merkle.hash_leaf(leaf)])
        for m in range(n + 1):
            assert merkle.tree_root(m, tree.read).hex() == ROOTS[m]


def test_batched_appends_store_the_same_nodes() -> None:
    hashes = [merkle.hash_leaf(i.to_bytes(4, "big")) for i in range(300)]
    one = MemoryNodes()
    for h in hashes:
        one.append([h])
    batched = MemoryNodes()
    cuts = [0, 3, 4, 17, 64, 65, 129, 200, 256, 299, 300]
    for a, b in itertools.pairwise(cuts):
        batched.append(hashes[a:b])
    assert batched.nodes == one.nodes
    assert len(one.nodes) == 2 * 300 - bin(300).count("1")  # every complete subtree, once


def _cases(kind: str) -> list[Path]:
    return sorted((VECTORS / kind).rglob("*.json"))


def _b64(v: str | None) -> bytes:
    return base64.b64decode(v) if v else b""


def test_vector_count() -> None:
    assert len(_cases("inclusion")) + len(_cases("consistency")) == 196


@pytest.mark.parametrize("path", _cases("inclusion"), ids=lambda p: str(p.relative_to(VECTORS)))
def test_transparency_dev_inclusion(path: Path) -> None:
    case = json.loads(path.read_text())
    proof = [_b64(p) for p in case.get("proof") or []]
    args = (case["leafIdx"], case["treeSize"], _b64(case["leafHash"]), proof, _b64(case["root"]))
    if case["wantErr"]:
        with pytest.raises(ProofError):
            merkle.verify_inclusion(*args)
    else:
        merkle.verify_inclusion(*args)


@pytest.mark.parametrize("path", _cases("consistency"), ids=lambda p: str(p.relative_to(VECTORS)))
def test_transparency_dev_consistency(path: Path) -> None:
    case = json.loads(path.read_text())
    proof = [_b64(p) for p in case.get("proof") or []]
    args = (case["size1"], case["size2"], proof, _b64(case["root1"]), _b64(case["root2"]))
    if case["wantErr"]:
        with pytest.raises(ProofError):
            merkle.verify_consistency(*args)
    else:
        merkle.verify_consistency(*args)


def _flips(proof: list[bytes]):
    for i, h in enumerate(proof):
        for bit in (0, 7, 8 * 31 + 3):
            bad = bytearray(h)
            bad[bit // 8] ^= 1 << (bit % 8)
            yield [*proof[:i], bytes(bad), *proof[i + 1 :]]
    if proof:
        yield proof[:-1]
        yield proof[1:]
    yield [*proof, proof[0] if proof else b"\x00" * 32]


def test_every_proof_up_to_100_and_every_flip_fails() -> None:
    hashes = [merkle.hash_leaf(i.to_bytes(2, "big")) for i in range(100)]
    tree = MemoryNodes()
    tree.append(hashes)
    roots = [reference_root(hashes[:n]) for n in range(101)]
    for n in range(1, 101):
        assert merkle.tree_root(n, tree.read) == roots[n]
        for m in range(n):
            proof = merkle.inclusion_proof(m, n, tree.read)
            merkle.verify_inclusion(m, n, hashes[m], proof, roots[n])
            for bad in _flips(proof):
                with pytest.raises(ProofError):
                    merkle.verify_inclusion(m, n, hashes[m], bad, roots[n])
            with pytest.raises(ProofError):
                merkle.verify_inclusion(m, n, hashes[(m + 1) % n] if n > 1 else b"x" * 32,
                                        proof, roots[n])  # fmt: skip
        for m in range(1, n + 1):
            proof = merkle.consistency_proof(m, n, tree.read)
            merkle.verify_consistency(m, n, proof, roots[m], roots[n])
            if m < n:
                for bad in _flips(proof):
                    with pytest.raises(ProofError):
                        merkle.verify_consistency(m, n, bad, roots[m], roots[n])


def test_proofs_read_few_stored_nodes() -> None:
    tree = MemoryNodes()
    tree.append([merkle.hash_leaf(i.to_bytes(4, "big")) for i in range(5000)])
    tree.reads = 0
    merkle.inclusion_proof(1234, 4999, tree.read)
    assert tree.reads <= 2 * 13  # O(log n) node reads, not the leaves


def test_bad_arguments() -> None:
    h = merkle.hash_leaf(b"")
    with pytest.raises(ProofError, match="outside"):
        merkle.verify_inclusion(1, 1, h, [], h)
    with pytest.raises(ProofError, match="32"):
        merkle.verify_inclusion(0, 1, h[:31], [], h)
    with pytest.raises(ProofError):
        merkle.verify_consistency(0, 1, [], merkle.EMPTY_ROOT, h)
    merkle.verify_inclusion(0, 1, h, [], h)  # a one-leaf tree's root is its leaf hash


# -- properties over large trees, with a cheap synthetic oracle ----------------------------------

PERIOD = 1021  # leaf i's hash depends on i mod PERIOD, so subtree hashes memoise per (level, r)


@cache
def _oracle(level: int, r: int) -> bytes:
    if level == 0:
        return hashlib.sha256(b"\x00" + r.to_bytes(2, "big")).digest()
    return merkle.hash_children(
        _oracle(level - 1, r), _oracle(level - 1, (r + (1 << (level - 1))) % PERIOD)
    )


def oracle_read(ids):
    return [_oracle(level, (k << level) % PERIOD) for level, k in ids]


def oracle_leaf(i: int) -> bytes:
    return _oracle(0, i % PERIOD)


@cache
def oracle_root(lo: int, hi: int) -> bytes:
    """RFC 9162 MTH(D[lo:hi]) by its recursive definition over the oracle."""
    n = hi - lo
    if n & (n - 1) == 0 and lo % n == 0:
        level = n.bit_length() - 1
        return _oracle(level, lo % PERIOD)
    k = 1 << ((n - 1).bit_length() - 1)
    return merkle.hash_children(oracle_root(lo, lo + k), oracle_root(lo + k, hi))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 300).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))))
def test_inclusion_all_small_sizes(case: tuple[int, int]) -> None:
    n, m = case
    proof = merkle.inclusion_proof(m, n, oracle_read)
    merkle.verify_inclusion(m, n, oracle_leaf(m), proof, oracle_root(0, n))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10**6).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))))
def test_inclusion_random_large_sizes(case: tuple[int, int]) -> None:
    n, m = case
    root = oracle_root(0, n)
    assert merkle.tree_root(n, oracle_read) == root
    proof = merkle.inclusion_proof(m, n, oracle_read)
    merkle.verify_inclusion(m, n, oracle_leaf(m), proof, root)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10**6).flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n))))
def test_consistency_random_large_sizes(case: tuple[int, int]) -> None:
    m, n = case
    proof = merkle.consistency_proof(m, n, oracle_read)
    merkle.verify_consistency(m, n, proof, oracle_root(0, m), oracle_root(0, n))


@settings(max_examples=300, deadline=None)
@given(
    st.integers(2, 10**6).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))),
    st.data(),
)
def test_altered_inclusion_proof_fails(case: tuple[int, int], data: st.DataObject) -> None:
    n, m = case
    proof = merkle.inclusion_proof(m, n, oracle_read)
    i = data.draw(st.integers(0, len(proof) - 1))
    bit = data.draw(st.integers(0, 255))
    bad = bytearray(proof[i])
    bad[bit // 8] ^= 1 << (bit % 8)
    altered = [*proof[:i], bytes(bad), *proof[i + 1 :]]
    with pytest.raises(ProofError):
        merkle.verify_inclusion(m, n, oracle_leaf(m), altered, oracle_root(0, n))


@settings(max_examples=300, deadline=None)
@given(
    st.integers(2, 10**6).flatmap(lambda n: st.tuples(st.integers(1, n - 1), st.just(n))),
    st.data(),
)
def test_altered_consistency_proof_fails(case: tuple[int, int], data: st.DataObject) -> None:
    m, n = case
    proof = merkle.consistency_proof(m, n, oracle_read)
    i = data.draw(st.integers(0, len(proof) - 1))
    bit = data.draw(st.integers(0, 255))
    bad = bytearray(proof[i])
    bad[bit // 8] ^= 1 << (bit % 8)
    altered = [*proof[:i], bytes(bad), *proof[i + 1 :]]
    with pytest.raises(ProofError):
        merkle.verify_consistency(m, n, altered, oracle_root(0, m), oracle_root(0, n))
