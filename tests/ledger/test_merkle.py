"""RFC 9162 tree, stored nodes and proofs: upstream vectors, golden roots, Hypothesis properties.

The reference functions here (`naive_*`) follow the RFC's recursive definitions on lists and ranges,
written apart from the module's iterative code, so the two check each other.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpucap.ledger import merkle
from gpucap.ledger.errors import VerificationError

VECTORS = Path(__file__).parent / "vectors" / "tlog"
VECTOR_FILES = sorted(VECTORS.glob("**/*.json"))
Range = tuple[int, int]


def split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def naive_mth(hashes: list[bytes]) -> bytes:
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = split(len(hashes))
    return hashlib.sha256(b"\x01" + naive_mth(hashes[:k]) + naive_mth(hashes[k:])).digest()


def naive_path(m: int, lo: int, hi: int) -> list[Range]:
    """RFC 9162 PATH(m, D[lo:hi]) as the ranges of its elements, leaf first."""
    if hi - lo == 1:
        return []
    k = split(hi - lo)
    if m < lo + k:
        return [*naive_path(m, lo, lo + k), (lo + k, hi)]
    return [*naive_path(m, lo + k, hi), (lo, lo + k)]


def naive_subproof(m: int, lo: int, hi: int, whole: bool) -> list[Range]:
    """RFC 9162 SUBPROOF(m, D[lo:hi], b) as ranges; m is an absolute leaf count."""
    if m == hi:
        return [] if whole else [(lo, hi)]
    k = split(hi - lo)
    if m <= lo + k:
        return [*naive_subproof(m, lo, lo + k, whole), (lo + k, hi)]
    return [*naive_subproof(m, lo + k, hi, False), (lo, lo + k)]


def shape(lo: int, hi: int, named: dict[Range, str]) -> Any:
    """The expression a verifier computes for MTH(D[lo:hi]) when `named` ranges are given."""
    if (lo, hi) in named:
        return named[(lo, hi)]
    if hi - lo <= 1:
        return "?"
    k = split(hi - lo)
    return (shape(lo, lo + k, named), shape(lo + k, hi, named))


def inclusion_shape(index: int, size: int) -> Any:
    named = {r: f"p{j}" for j, r in enumerate(naive_path(index, 0, size))}
    return shape(0, size, {**named, (index, index + 1): "leaf"})


def consistency_shape(size1: int, size2: int) -> Any:
    named = {r: f"p{j}" for j, r in enumerate(naive_subproof(size1, 0, size2, True))}
    if size1 & (size1 - 1) == 0:
        named[(0, size1)] = "root1"
    return shape(0, size1, named), shape(0, size2, named)


def leaves_of(size: int, salt: bytes) -> list[bytes]:
    """Distinct leaf hashes (distinct so that no two subtrees share a hash)."""
    return [merkle.leaf_hash(i.to_bytes(4, "big") + salt) for i in range(size)]


def store_of(hashes: list[bytes]) -> dict[merkle.NodeId, bytes]:
    nodes, _, _ = merkle.append([], 0, hashes)
    return {(n.level, n.index): n.hash for n in nodes}


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# --- upstream vectors -----------------------------------------------------------------------


def test_every_vector_folder_was_copied() -> None:
    assert len(VECTOR_FILES) == 196
    assert {p.relative_to(VECTORS).parts[0] for p in VECTOR_FILES} == {"inclusion", "consistency"}


def run_vector(kind: str, case: dict[str, Any]) -> None:
    b64 = base64.b64decode
    proof = [b64(p) for p in case["proof"] or []]
    if kind == "inclusion":
        index, size, leaf = case["leafIdx"], case["treeSize"], b64(case["leafHash"])
        merkle.verify_inclusion(index, size, leaf, proof, b64(case["root"]))
    else:
        roots = b64(case["root1"]), b64(case["root2"])
        merkle.verify_consistency(case["size1"], case["size2"], proof, *roots)


@pytest.mark.parametrize("path", VECTOR_FILES, ids=lambda p: str(p.relative_to(VECTORS)))
def test_vector(path: Path) -> None:
    case = json.loads(path.read_text())
    kind = path.relative_to(VECTORS).parts[0]
    if case["wantErr"]:
        with pytest.raises(VerificationError):
            run_vector(kind, case)
    else:
        run_vector(kind, case)


# --- golden values and tables ----------------------------------------------------------------

# Roots of the RFC 6962 reference tree (the leaves of certificate-transparency's tests),
# sizes 1..8; the size-8 root is also the root of the vectors in inclusion/1.
RFC6962_LEAVES = [bytes.fromhex(h) for h in ["", "00", "10", "2021", "3031", "40414243",
                  "5051525354555657", "606162636465666768696a6b6c6d6e6f"]]  # fmt: skip
RFC6962_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def test_empty_tree_root() -> None:
    want = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert merkle.EMPTY_ROOT.hex() == want
    assert merkle.root([]) == merkle.root_from_frontier([]) == merkle.EMPTY_ROOT
    assert merkle.frontier_nodes(0) == []


@pytest.mark.parametrize("size", range(1, 9))
def test_rfc6962_reference_roots(size: int) -> None:
    hashes = [merkle.leaf_hash(leaf) for leaf in RFC6962_LEAVES[:size]]
    _, frontier, _ = merkle.append([], 0, hashes)
    assert merkle.root(hashes).hex() == RFC6962_ROOTS[size - 1]
    assert merkle.root_from_frontier(frontier).hex() == RFC6962_ROOTS[size - 1]


def test_hash_prefixes() -> None:
    assert merkle.leaf_hash(b"a") == hashlib.sha256(b"\x00a").digest()
    assert merkle.node_hash(b"l", b"r") == hashlib.sha256(b"\x01lr").digest()


@pytest.mark.parametrize("size", range(0, 70))
def test_small_roots_match_naive(size: int) -> None:
    hashes = leaves_of(size, b"golden")
    _, frontier, _ = merkle.append([], 0, hashes)
    assert merkle.root(hashes) == merkle.root_from_frontier(frontier) == naive_mth(hashes)


@pytest.mark.parametrize(
    ("size", "want"),
    [(1, [(0, 0)]), (2, [(1, 0)]), (7, [(2, 0), (1, 2), (0, 6)]), (13, [(3, 0), (2, 2), (0, 12)])],
)
def test_frontier_nodes(size: int, want: list[merkle.NodeId]) -> None:
    assert merkle.frontier_nodes(size) == want


def test_generation_refuses_bad_arguments() -> None:
    store = store_of(leaves_of(5, b"x"))
    for index, size in [(5, 5), (-1, 5), (0, 0)]:
        with pytest.raises(ValueError, match="not in a tree"):
            merkle.inclusion_nodes(index, size)
    for size1, size2 in [(0, 5), (5, 5), (6, 5)]:
        with pytest.raises(ValueError, match="no consistency proof"):
            merkle.consistency_proof(size1, size2, store)
    with pytest.raises(ValueError, match=r"tree nodes \[\(0, 4\)\] were not fetched"):
        merkle.inclusion_proof(0, 5, {k: v for k, v in store.items() if k != (0, 4)})
    _, frontier, _ = merkle.append([], 0, leaves_of(3, b"x"))
    with pytest.raises(ValueError, match="frontier does not match"):
        merkle.append(frontier, 4, [])
    with pytest.raises(ValueError, match="not 32"):
        merkle.append(frontier, 3, [b"short"])


H = merkle.leaf_hash(b"h")


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((3, 3, H, [], H), "not below the tree size"),
        ((0, 0, H, [], H), "not below the tree size"),
        ((-1, 3, H, [H, H], H), "not below the tree size"),
        ((0, 1, b"x" * 31, [], H), "leaf_hash: is 31 bytes"),
        ((0, 1, H, [], b"x" * 33), "root: is 33 bytes"),
        ((0, 2, H, [b""], H), r"proof\[0\]: is 0 bytes"),
        ((0, 1, H, [H], H), "has 1 hashes, expected 0"),
        ((0, 4, H, [H], H), "has 1 hashes, expected 2"),
        ((0, 1, H, [], merkle.EMPTY_ROOT), "does not lead to the root"),
    ],
)
def test_inclusion_edge_cases(args: tuple[Any, ...], match: str) -> None:
    with pytest.raises(VerificationError, match=match):
        merkle.verify_inclusion(*args)


E = merkle.EMPTY_ROOT


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((2, 1, [], H, H), "no consistency between size 2 and size 1"),
        ((-1, 1, [], H, H), "no consistency"),
        ((3, 3, [H], H, H), "expected an empty proof"),
        ((3, 3, [], H, E), "root2: differs from root1"),
        ((0, 5, [H], E, H), "expected an empty proof"),
        ((0, 5, [], H, H), "root1: is not the root of the empty tree"),
        ((0, 0, [], H, H), "root1: is not the root of the empty tree"),
        ((0, 5, [], E, b"x"), "root2: is 1 bytes"),
        ((1, 2, [], H, H), "has 0 hashes, expected 1"),
        ((1, 2, [b"x" * 32, H], H, H), "has 2 hashes, expected 1"),
        ((2, 3, [H], b"", H), "root1: is 0 bytes"),
    ],
)
def test_consistency_edge_cases(args: tuple[Any, ...], match: str) -> None:
    with pytest.raises(VerificationError, match=match):
        merkle.verify_consistency(*args)


def test_trivial_consistency_accepted() -> None:
    merkle.verify_consistency(0, 0, [], E, E)
    merkle.verify_consistency(0, 7, [], E, H)
    merkle.verify_consistency(7, 7, [], H, H)


def test_every_proof_of_the_small_trees() -> None:
    hashes = leaves_of(40, b"all")
    for size in range(1, 41):
        store, root = store_of(hashes[:size]), naive_mth(hashes[:size])  # only this tree's nodes
        for index in range(size):
            proof = merkle.inclusion_proof(index, size, store)
            merkle.verify_inclusion(index, size, hashes[index], proof, root)
        for size1 in range(1, size):
            proof = merkle.consistency_proof(size1, size, store)
            merkle.verify_consistency(size1, size, proof, naive_mth(hashes[:size1]), root)


# --- properties -----------------------------------------------------------------------------

sizes = st.integers(min_value=1, max_value=300)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), size=st.integers(min_value=0, max_value=300), salt=st.binary(max_size=8))
def test_incremental_append_matches_reference(data: st.DataObject, size: int, salt: bytes) -> None:
    hashes = leaves_of(size, salt)
    frontier: list[merkle.Node] = []
    done = 0
    emitted: list[merkle.Node] = []
    while done < size:
        batch = data.draw(st.integers(min_value=0, max_value=size - done), label="batch")
        new, frontier, done = merkle.append(frontier, done, hashes[done : done + batch])
        emitted += new
        assert [(n.level, n.index) for n in frontier] == merkle.frontier_nodes(done)
        assert merkle.root_from_frontier(frontier) == naive_mth(hashes[:done])
    want = {
        (level, i): naive_mth(hashes[i << level : (i + 1) << level])
        for level in range(size.bit_length())
        for i in range(size >> level)
    }
    assert {(n.level, n.index): n.hash for n in emitted} == want
    assert len(emitted) == len(want)  # no node is emitted twice
    assert merkle.root_from_frontier(frontier) == merkle.root(hashes)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), size=sizes, salt=st.binary(max_size=8))
def test_inclusion_proofs(data: st.DataObject, size: int, salt: bytes) -> None:
    hashes = leaves_of(size, salt)
    store, root = store_of(hashes), naive_mth(hashes)
    index = data.draw(st.integers(min_value=0, max_value=size - 1), label="index")
    nodes = merkle.inclusion_nodes(index, size)
    assert len(nodes) <= 2 * size.bit_length()
    proof = merkle.inclusion_proof(index, size, {n: store[n] for n in nodes})
    assert proof == [naive_mth(hashes[a:b]) for a, b in naive_path(index, 0, size)]
    merkle.verify_inclusion(index, size, hashes[index], proof, root)
    assert merkle.root_from_inclusion(index, size, hashes[index], proof) == root

    with pytest.raises(VerificationError):
        merkle.verify_inclusion(index, size, hashes[index], proof, flip(root, 5))
    extra = data.draw(st.binary(min_size=32, max_size=32), label="extra")
    at = data.draw(st.integers(min_value=0, max_value=len(proof)), label="insert at")
    with pytest.raises(VerificationError):
        merkle.verify_inclusion(index, size, hashes[index], [*proof[:at], extra, *proof[at:]], root)
    if proof:
        j = data.draw(st.integers(min_value=0, max_value=len(proof) - 1), label="element")
        bit = data.draw(st.integers(min_value=0, max_value=255), label="bit")
        bad = [*proof[:j], flip(proof[j], bit), *proof[j + 1 :]]
        with pytest.raises(VerificationError):
            merkle.verify_inclusion(index, size, hashes[index], bad, root)
        with pytest.raises(VerificationError):
            merkle.verify_inclusion(index, size, hashes[index], proof[:j] + proof[j + 1 :], root)

    # Another (index, size) verifies exactly when the verifier computes the same expression. In
    # one tree a wrong index always fails; across sizes the proof does not commit to either
    # (index 0 of 3 and of 4 agree, so do index 1 of 2 and index 2 of 3): the size, and so the
    # tree, is trusted only from a signed checkpoint.
    index2 = data.draw(st.integers(min_value=0, max_value=size + 3), label="other index")
    size2 = data.draw(st.integers(min_value=index2 + 1, max_value=size + 4), label="other size")
    if (index2, size2) != (index, size):
        same = inclusion_shape(index2, size2) == inclusion_shape(index, size)
        assert size2 != size or not same
        try:
            merkle.verify_inclusion(index2, size2, hashes[index], proof, root)
        except VerificationError:
            assert not same
        else:
            assert same


@settings(max_examples=200, deadline=None)
@given(data=st.data(), size2=st.integers(min_value=2, max_value=300), salt=st.binary(max_size=8))
def test_consistency_proofs(data: st.DataObject, size2: int, salt: bytes) -> None:
    hashes = leaves_of(size2, salt)
    store = store_of(hashes)
    size1 = data.draw(st.integers(min_value=1, max_value=size2 - 1), label="size1")
    root1, root2 = naive_mth(hashes[:size1]), naive_mth(hashes)
    nodes = merkle.consistency_nodes(size1, size2)
    assert len(nodes) <= 2 * size2.bit_length()
    proof = merkle.consistency_proof(size1, size2, {n: store[n] for n in nodes})
    assert proof == [naive_mth(hashes[a:b]) for a, b in naive_subproof(size1, 0, size2, True)]
    merkle.verify_consistency(size1, size2, proof, root1, root2)

    with pytest.raises(VerificationError):
        merkle.verify_consistency(size1, size2, proof, root2, root1)
    with pytest.raises(VerificationError):
        merkle.verify_consistency(size1, size2, proof, root1, flip(root2, 0))
    j = data.draw(st.integers(min_value=0, max_value=len(proof) - 1), label="element")
    bit = data.draw(st.integers(min_value=0, max_value=255), label="bit")
    bad = [*proof[:j], flip(proof[j], bit), *proof[j + 1 :]]
    with pytest.raises(VerificationError):
        merkle.verify_consistency(size1, size2, bad, root1, root2)
    with pytest.raises(VerificationError):
        merkle.verify_consistency(size1, size2, proof[:j] + proof[j + 1 :], root1, root2)
    extra = data.draw(st.binary(min_size=32, max_size=32), label="extra")
    with pytest.raises(VerificationError):
        merkle.verify_consistency(size1, size2, [*proof[:j], extra, *proof[j:]], root1, root2)

    # Other sizes verify exactly when the verifier computes the same two expressions (4 -> 8
    # and 4 -> 6 agree: neither size is committed to by the proof itself).
    other1 = data.draw(st.integers(min_value=1, max_value=size2 + 2), label="other size1")
    other2 = data.draw(st.integers(min_value=other1 + 1, max_value=size2 + 4), label="other size2")
    if (other1, other2) != (size1, size2):
        same = consistency_shape(other1, other2) == consistency_shape(size1, size2)
        try:
            merkle.verify_consistency(other1, other2, proof, root1, root2)
        except VerificationError:
            assert not same
        else:
            assert same
