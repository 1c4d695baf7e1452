"""RFC 9162 Merkle tree hashing, stored perfect subtrees, proofs and their verifiers (pure).

Hashing (RFC 9162 section 2.1.1, same as RFC 6962): a leaf's hash is SHA-256(0x00 || leaf), an
inner node's is SHA-256(0x01 || left || right), the empty tree's root is SHA-256(b""). For n > 1
leaves, MTH(D[0:n]) = node(MTH(D[0:k]), MTH(D[k:n])) with k the largest power of two below n.

Storage: a *node* is the hash of a perfect subtree, keyed (level, index): it covers leaves
[index * 2**level, (index + 1) * 2**level); level 0 index i is leaf i's hash. The *frontier* of a
tree of `size` leaves is its binary decomposition, largest subtree first: one node per set bit of
`size`, e.g. size 13 -> [(3, 0), (2, 2), (0, 12)]. The root folds the frontier right to left.
Every proof element is the hash of a subtree [a, b) that is either perfect or ends at the tree's
right edge; the latter is folded from perfect nodes, so a proof needs O(log n) stored nodes.
Proof generation raises ValueError on arguments the caller should have checked; the verifiers
raise VerificationError(path, reason).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from gpucap.ledger.errors import VerificationError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

NodeId = tuple[int, int]  # (level, index)
Range = tuple[int, int]  # leaves [a, b)


@dataclass(frozen=True, slots=True)
class Node:
    """One stored perfect-subtree hash: a row (level, index, hash) of the tree-node table."""

    level: int
    index: int
    hash: bytes


def leaf_hash(leaf: bytes) -> bytes:
    """The hash of one log entry's bytes (the 0x00 prefix keeps leaves apart from nodes)."""
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an inner node from its two children."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH by the RFC's recursive definition, for verifiers that hold every entry."""

    def mth(lo: int, hi: int) -> bytes:
        if hi - lo == 1:
            return leaf_hashes[lo]
        k = _split(hi - lo)
        return node_hash(mth(lo, lo + k), mth(lo + k, hi))

    return mth(0, len(leaf_hashes)) if leaf_hashes else EMPTY_ROOT


def frontier_nodes(size: int) -> list[NodeId]:
    """The (level, index) of the frontier of a tree of `size` leaves, largest first."""
    out: list[NodeId] = []
    start = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            out.append((level, start >> level))
            start += 1 << level
    return out


def root_from_frontier(frontier: Sequence[Node]) -> bytes:
    """The tree's root: the frontier folded right to left; EMPTY_ROOT for an empty tree."""
    return _fold([node.hash for node in frontier])


def _fold(hashes: list[bytes]) -> bytes:
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def append(
    frontier: Sequence[Node], size: int, new_leaf_hashes: Iterable[bytes]
) -> tuple[list[Node], list[Node], int]:
    """Append leaves in O(k + log n): (every newly complete node incl. leaves, frontier, size)."""
    if [(n.level, n.index) for n in frontier] != frontier_nodes(size):
        raise ValueError(f"frontier does not match a tree of size {size}")
    stack = list(frontier)
    new_nodes: list[Node] = []
    for h in new_leaf_hashes:
        if len(h) != HASH_SIZE:
            raise ValueError(f"leaf hash {size} is {len(h)} bytes, not {HASH_SIZE}")
        node = Node(0, size, h)
        new_nodes.append(node)
        size += 1
        while stack and stack[-1].level == node.level:
            left = stack.pop()
            node = Node(node.level + 1, left.index >> 1, node_hash(left.hash, node.hash))
            new_nodes.append(node)
        stack.append(node)
    return new_nodes, stack, size


def _decompose(lo: int, hi: int) -> list[NodeId]:
    """The perfect nodes of a proof's subtree [lo, hi), largest first. It is perfect or the
    tree's right edge, so lo is aligned to a power of two >= hi - lo and every node is too."""
    out: list[NodeId] = []
    while lo < hi:
        level = (hi - lo).bit_length() - 1
        out.append((level, lo >> level))
        lo += 1 << level
    return out


def _path(leaf: int, size: int, stop: int) -> tuple[Range, list[Range]]:
    """Walk down D[0:size] towards `leaf` until a range ends at `stop`: (that range, the
    siblings passed on the way, top first)."""
    lo, hi, siblings = 0, size, []
    while hi - lo > 1 and hi != stop:
        k = _split(hi - lo)
        if leaf < lo + k:
            siblings.append((lo + k, hi))
            hi = lo + k
        else:
            siblings.append((lo, lo + k))
            lo += k
    return (lo, hi), siblings


def _inclusion_ranges(index: int, size: int) -> list[Range]:
    """The subtrees [a, b) of RFC 9162 PATH(index, D[0:size]), leaf level first."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is not in a tree of size {size}")
    return _path(index, size, -1)[1][::-1]


def _consistency_ranges(size1: int, size2: int) -> list[Range]:
    """The subtrees [a, b) of RFC 9162 PROOF(size1, D[0:size2]): the siblings on the path to
    leaf size1 - 1 down to the first range [lo, size1), led by that range unless lo is 0 (then
    it is the old tree itself, whose root the verifier has)."""
    if not 0 < size1 < size2:
        raise ValueError(f"no consistency proof from size {size1} to size {size2}")
    (lo, hi), siblings = _path(size1 - 1, size2, size1)
    return ([(lo, hi)] if lo else []) + siblings[::-1]


def _nodes(ranges: list[Range]) -> list[NodeId]:
    return [node for lo, hi in ranges for node in _decompose(lo, hi)]


def _hashes(ranges: list[Range], get: Mapping[NodeId, bytes]) -> list[bytes]:
    missing = [node for node in _nodes(ranges) if node not in get]
    if missing:
        raise ValueError(f"tree nodes {missing} were not fetched")
    return [_fold([get[node] for node in _decompose(lo, hi)]) for lo, hi in ranges]


def inclusion_nodes(index: int, size: int) -> list[NodeId]:
    """The stored nodes that `inclusion_proof(index, size, ...)` needs (O(log size))."""
    return _nodes(_inclusion_ranges(index, size))


def inclusion_proof(index: int, size: int, get: Mapping[NodeId, bytes]) -> list[bytes]:
    """The RFC 9162 inclusion proof of leaf `index` in the tree of `size`, from fetched nodes."""
    return _hashes(_inclusion_ranges(index, size), get)


def consistency_nodes(size1: int, size2: int) -> list[NodeId]:
    """The stored nodes that `consistency_proof(size1, size2, ...)` needs; 0 < size1 < size2."""
    return _nodes(_consistency_ranges(size1, size2))


def consistency_proof(size1: int, size2: int, get: Mapping[NodeId, bytes]) -> list[bytes]:
    """The RFC 9162 consistency proof from tree size1 to tree size2, from fetched nodes."""
    return _hashes(_consistency_ranges(size1, size2), get)


def _fail(reason: str, path: str = "proof") -> VerificationError:
    return VerificationError(path, reason)


def _check_hashes(proof: Sequence[bytes], **named: bytes) -> None:
    for name, value in [*named.items(), *((f"proof[{i}]", p) for i, p in enumerate(proof))]:
        if len(value) != HASH_SIZE:
            raise _fail(f"is {len(value)} bytes, not a {HASH_SIZE}-byte SHA-256 hash", name)


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that an inclusion proof leads to (RFC 9162 section 2.1.3.2), or raise."""
    if not 0 <= index < size:
        raise _fail(f"leaf index {index} is not below the tree size {size}")
    _check_hashes(proof, leaf_hash=leaf)
    want = len(_inclusion_ranges(index, size))
    if len(proof) != want:
        raise _fail(f"inclusion proof has {len(proof)} hashes, expected {want}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:  # this test and the final one are the RFC's; the length check pre-empts them
            raise _fail("inclusion proof is too long for the tree size")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and fn & 1 == 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn:
        raise _fail("inclusion proof is too short for the tree size")
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root_hash: bytes
) -> None:
    """Raise VerificationError unless `proof` shows leaf hash `leaf` at `index` under root_hash."""
    _check_hashes([], root=root_hash)
    if root_from_inclusion(index, size, leaf, proof) != root_hash:
        raise _fail("inclusion proof does not lead to the root")


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Raise VerificationError unless the tree (size2, root2) extends (size1, root1).

    Equal sizes need an empty proof and equal roots (compared as given: the upstream vectors
    accept any equal byte strings); size1 == 0 needs an empty proof, the empty root as root1
    and, when size2 > 0, any 32-byte root2, since every tree extends the empty one.
    """
    if not 0 <= size1 <= size2:
        raise _fail(f"no consistency between size {size1} and size {size2}")
    if size1 == size2 or size1 == 0:
        if proof:
            raise _fail(f"expected an empty proof from size {size1} to {size2}")
        if size1 == 0 and root1 != EMPTY_ROOT:
            raise _fail("is not the root of the empty tree", "root1")
        if size1 == size2 and root1 != root2:
            raise _fail(f"differs from root1 at the same size {size1}", "root2")
        if size1 < size2:
            _check_hashes([], root2=root2)
        return
    _check_hashes(proof, root1=root1, root2=root2)
    want = len(_consistency_ranges(size1, size2))
    if len(proof) != want:
        raise _fail(f"consistency proof has {len(proof)} hashes, expected {want}")
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # size1 is a power of two: the old root is the first subtree
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise _fail("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while fn and fn & 1 == 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if fr != root1:
        raise _fail("consistency proof does not lead to root1")
    if sr != root2 or sn:
        raise _fail("consistency proof does not lead to root2")
