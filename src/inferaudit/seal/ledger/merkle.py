"""RFC 6962 / RFC 9162 Merkle trees: hashing, proof generation from stored hashes, verification.

Hashing (RFC 9162 §2.1.1): leaf hash ``SHA-256(0x00 || leaf)``,
interior ``SHA-256(0x01 || l || r)``,
empty tree ``SHA-256("")``.

Stored hashes are addressed by ``(level, k)``: the root of the perfect subtree over leaves
``[k·2^level, (k+1)·2^level)``. A log stores every such node once it is complete (about 2 per
leaf); any tree root, inclusion proof or consistency proof needs only O(log n) of them, fetched
in one batch: the generators below first *plan* the node IDs, then fold the fetched hashes.

Verifiers take plain values and raise ``ProofError`` (a ``LedgerError``) on untrusted input:
``verify_inclusion(index, size, leaf_hash, proof, root)`` per RFC 9162 §2.1.3.2 and
``verify_consistency(size1, size2, proof, root1, root2)`` per §2.1.4.2. Every hash must be
exactly 32 bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from inferaudit.errors import LedgerError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

NodeId = tuple[int, int]  # (level, k)
NodeReader = Callable[[Sequence[NodeId]], Sequence[bytes]]


class ProofError(LedgerError):
    """A Merkle proof does not verify, or its inputs are malformed."""


def hash_leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def hash_children(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly less than ``n`` (n >= 2)."""
    assert n >= 2, "split of a tree with fewer than two leaves: the code has a bug"
    return 1 << ((n - 1).bit_length() - 1)


# -- planning: which stored nodes a computation needs --------------------------------------------


def range_nodes(lo: int, hi: int) -> list[NodeId]:
    """The perfect subtrees, left to right, whose right fold is MTH(D[lo:hi]).

    Valid for the ranges RFC 9162's recursion produces: ``lo`` is a multiple of a power of two
    at least ``hi - lo``, so the range splits into aligned chunks of decreasing size.
    """
    assert 0 <= lo < hi, "empty or reversed range: the code has a bug"
    nodes: list[NodeId] = []
    n = hi - lo
    while n:
        level = n.bit_length() - 1
        assert lo % (1 << level) == 0, "unaligned range: the code has a bug"
        nodes.append((level, lo >> level))
        lo += 1 << level
        n -= 1 << level
    return nodes


def _fold(hashes: Sequence[bytes]) -> bytes:
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = hash_children(h, acc)
    return acc


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The ranges whose MTH make up PATH(index, D[0:size]), in proof order (leaf side first)."""
    if not 0 <= index < size:
        raise ProofError(f"index {index} is outside a tree of size {size}")
    ranges: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo = lo + k
    ranges.reverse()
    return ranges


def consistency_ranges(size1: int, size2: int) -> list[tuple[int, int]]:
    """The ranges whose MTH make up PROOF(size1, D[0:size2]) (RFC 9162 §2.1.4.1), in order."""
    if not 0 < size1 <= size2:
        raise ProofError(f"no consistency proof from size {size1} to size {size2}")
    ranges: list[tuple[int, int]] = []
    lo, hi, m, whole = 0, size2, size1, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo, m, whole = lo + k, m - k, False
    if not whole:
        ranges.append((lo, hi))
    ranges.reverse()
    return ranges


def hash_ranges(ranges: Sequence[tuple[int, int]], read: NodeReader) -> list[bytes]:
    """MTH of each range, reading every stored node they need in one call to ``read``."""
    plans = [range_nodes(lo, hi) for lo, hi in ranges]
    wanted = sorted({node for plan in plans for node in plan})
    got = dict(zip(wanted, read(wanted), strict=True))
    return [_fold([got[node] for node in plan]) for plan in plans]


def tree_root(size: int, read: NodeReader) -> bytes:
    return EMPTY_ROOT if size == 0 else hash_ranges([(0, size)], read)[0]


def inclusion_proof(index: int, size: int, read: NodeReader) -> list[bytes]:
    return hash_ranges(inclusion_ranges(index, size), read)


def consistency_proof(size1: int, size2: int, read: NodeReader) -> list[bytes]:
    if size1 == size2:
        return []
    return hash_ranges(consistency_ranges(size1, size2), read)


def new_nodes(
    start: int, leaf_hashes: Sequence[bytes], read: NodeReader
) -> list[tuple[int, int, bytes]]:
    """Every node ``(level, k, hash)`` completed by appending ``leaf_hashes`` at ``start``.

    Reads at most one stored node per level (the left sibling of the first new node).
    """
    end = start + len(leaf_hashes)
    out: list[tuple[int, int, bytes]] = [(0, start + i, h) for i, h in enumerate(leaf_hashes)]
    if not leaf_hashes:
        return out
    # Old left siblings needed: at level l-1, child 2*(start >> l) when it was already complete.
    old: list[NodeId] = []
    level = 1
    while (1 << level) <= end:
        k = start >> level
        if k < (end >> level) and ((2 * k + 1) << (level - 1)) <= start:
            old.append((level - 1, 2 * k))
        level += 1
    have: dict[NodeId, bytes] = dict(zip(old, read(old), strict=True)) if old else {}
    layer: dict[int, bytes] = {start + i: h for i, h in enumerate(leaf_hashes)}
    level = 1
    while (1 << level) <= end:
        nxt: dict[int, bytes] = {}
        for k in range(start >> level, end >> level):  # the nodes this append completes
            left = layer[2 * k] if 2 * k in layer else have[(level - 1, 2 * k)]
            nxt[k] = hash_children(left, layer[2 * k + 1])
            out.append((level, k, nxt[k]))
        layer = nxt
        level += 1
    return out


# -- verification (RFC 9162 §2.1.3.2, §2.1.4.2) --------------------------------------------------


def _check_hash(h: bytes, what: str) -> None:
    if len(h) != HASH_SIZE:
        raise ProofError(f"{what} is {len(h)} bytes, not {HASH_SIZE}")


def root_from_inclusion_proof(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes]
) -> bytes:
    """The root that ``proof`` leads to from ``leaf_hash`` at ``index`` in a tree of ``size``."""
    if not 0 <= index < size:
        raise ProofError(f"index {index} is outside a tree of size {size}")
    _check_hash(leaf_hash, "leaf hash")
    fn, sn = index, size - 1
    r = leaf_hash
    for i, p in enumerate(proof):
        _check_hash(p, f"proof hash {i}")
        if sn == 0:
            raise ProofError(f"inclusion proof has {len(proof)} hashes, more than it needs")
        if fn & 1 or fn == sn:
            r = hash_children(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = hash_children(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"inclusion proof has {len(proof)} hashes, fewer than it needs")
    return r


def verify_inclusion(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise ``ProofError`` unless ``proof`` shows ``leaf_hash`` at ``index`` under ``root``."""
    _check_hash(root, "root")
    if root_from_inclusion_proof(index, size, leaf_hash, proof) != root:
        raise ProofError("inclusion proof does not reach root")


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Raise ``ProofError`` unless ``proof`` shows tree ``size1`` is a prefix of tree ``size2``.

    Size 0 is refused here (as transparency-dev does); callers handle the empty tree above.
    """
    for i, p in enumerate(proof):
        _check_hash(p, f"proof hash {i}")
    if not 0 < size1 <= size2:
        raise ProofError(f"no consistency proof from size {size1} to size {size2}")
    if size1 == size2:  # as transparency-dev: equal sizes need an empty proof and equal roots
        if proof:
            raise ProofError("consistency proof between equal sizes must be empty")
        if root1 != root2:
            raise ProofError("equal tree sizes with different roots")
        return
    _check_hash(root1, "root1")
    _check_hash(root2, "root2")
    if not proof:
        raise ProofError("consistency proof is empty")
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # size1 is a power of two: its root starts the path
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"consistency proof has {len(proof)} hashes, more than it needs")
        if fn & 1 or fn == sn:
            fr = hash_children(c, fr)
            sr = hash_children(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = hash_children(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"consistency proof has {len(proof)} hashes, fewer than it needs")
    if fr != root1:
        raise ProofError("consistency proof does not reach the old root")
    if sr != root2:
        raise ProofError("consistency proof does not reach the new root")
