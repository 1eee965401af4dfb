"""RFC 6962 Merkle tree: the production code against a literal transcription of the RFC.

The oracle below is RFC 6962 §2.1 written recursively and naively, so that any cleverness
in :mod:`provisioner.audit.merkle` (frontiers, stored nodes, iterative proofs) is checked
against the definitions rather than against itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence

import pytest

from provisioner.audit import merkle
from provisioner.audit.merkle import NodeId
from provisioner.errors import ProofError

MAX_PROOF_LEAVES = 40

# --- the oracle: RFC 6962 §2.1, verbatim recursion --------------------------------------------


def _k(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over raw entries."""
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = _k(len(d))
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n])."""
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b)."""
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def ref_proof(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n])."""
    return ref_subproof(m, d, True)


def ref_path_shape(m: int, n: int) -> list[str]:
    """Which side each PATH(m, D[n]) sibling sits on, leaf first.

    Two (index, size) pairs with the same shape combine a proof identically, so a root hash
    alone cannot tell them apart (the signed checkpoint is what binds the size); a verifier
    can only be expected to reject a wrong index or size when the shape differs.
    """
    if n == 1:
        return []
    k = _k(n)
    return [*ref_path_shape(m, k), "R"] if m < k else [*ref_path_shape(m - k, n - k), "L"]


def ref_proof_shape(m: int, n: int, b: bool = True) -> list[str]:
    """The same for SUBPROOF(m, D[n], b): "S" marks the old subtree's own hash."""
    if m == n:
        return [] if b else ["S"]
    k = _k(n)
    if m <= k:
        return [*ref_proof_shape(m, k, b), "R"]
    return [*ref_proof_shape(m - k, n - k, False), "L"]


# --- fixtures ---------------------------------------------------------------------------------


def entries(n: int) -> list[bytes]:
    return [f"entry {i}".encode() for i in range(n)]


Getter = Callable[[Sequence[NodeId]], Mapping[NodeId, bytes]]


def build_store(n: int) -> tuple[dict[NodeId, bytes], list[merkle.Frontier]]:
    """Append n entries, keeping every emitted node and every intermediate frontier."""
    store: dict[NodeId, bytes] = {}
    frontiers = [merkle.Frontier()]
    for e in entries(n):
        f, nodes = frontiers[-1].append(merkle.leaf_hash(e))
        for node, h in nodes:
            assert node not in store, f"node {node} emitted twice"
            store[node] = h
        frontiers.append(f)
    return store, frontiers


class CountingGetter:
    """A ``get`` over a dict that records how often, and with what, it is called."""

    def __init__(self, store: Mapping[NodeId, bytes]) -> None:
        self.store = store
        self.calls: list[list[NodeId]] = []

    def __call__(self, ids: Sequence[NodeId]) -> Mapping[NodeId, bytes]:
        self.calls.append(list(ids))
        return {i: self.store[i] for i in ids if i in self.store}


STORE, FRONTIERS = build_store(MAX_PROOF_LEAVES)
ENTRIES = entries(MAX_PROOF_LEAVES)


def flipped(h: bytes, byte: int = 0, bit: int = 0) -> bytes:
    """``h`` with one bit inverted."""
    b = bytearray(h)
    b[byte] ^= 1 << bit
    return bytes(b)


# --- hashing and the known vectors ------------------------------------------------------------

# Inputs and roots from transparency-dev/merkle testonly/constants.go (LeafInputs, RootHashes),
# the same set certificate-transparency-go's RFC 6962 tests use.
VECTOR_LEAVES = [
    bytes.fromhex(x)
    for x in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
VECTOR_ROOTS = [
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


def test_empty_root_is_sha256_of_nothing() -> None:
    assert merkle.EMPTY_ROOT.hex() == VECTOR_ROOTS[0]
    assert merkle.root_of([]) == merkle.EMPTY_ROOT
    assert merkle.Frontier().root() == merkle.EMPTY_ROOT
    assert merkle.HASH_SIZE == 32


def test_leaf_and_node_hash_domain_separation() -> None:
    assert merkle.leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    a, b = merkle.leaf_hash(b"a"), merkle.leaf_hash(b"b")
    assert merkle.node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    assert merkle.node_hash(a, b) != merkle.node_hash(b, a)


@pytest.mark.parametrize("size", range(len(VECTOR_ROOTS)))
def test_known_roots(size: int) -> None:
    leaves = [merkle.leaf_hash(e) for e in VECTOR_LEAVES[:size]]
    assert merkle.root_of(leaves).hex() == VECTOR_ROOTS[size]
    f = merkle.Frontier()
    for leaf in leaves:
        f, _ = f.append(leaf)
    assert f.root().hex() == VECTOR_ROOTS[size]
    assert ref_mth(VECTOR_LEAVES[:size]).hex() == VECTOR_ROOTS[size]


def test_root_of_matches_oracle() -> None:
    # Crosses the internal block size (256 leaves) in both directions.
    for n in [*range(70), 255, 256, 257, 511, 512, 513, 1000, 1024, 1300]:
        d = entries(n)
        assert merkle.root_of([merkle.leaf_hash(e) for e in d]) == ref_mth(d), n


# --- frontier ---------------------------------------------------------------------------------


def test_frontier_root_after_every_append() -> None:
    d = entries(70)
    f = merkle.Frontier()
    assert f.root() == ref_mth([])
    for i, e in enumerate(d):
        old_size = f.size
        f, nodes = f.append(merkle.leaf_hash(e))
        assert f.size == i + 1
        assert len(f.peaks) == f.size.bit_count()
        assert f.root() == ref_mth(d[: i + 1])
        # The emitted nodes are exactly the perfect subtrees completed by this leaf.
        expected = [((0, old_size), merkle.leaf_hash(e))]
        level = 1
        while (old_size + 1) % (1 << level) == 0:
            idx = old_size >> level
            expected.append(((level, idx), ref_mth(d[idx << level : (idx + 1) << level])))
            level += 1
        assert nodes == expected


def test_frontier_is_immutable_and_appends_do_not_share_state() -> None:
    f0 = merkle.Frontier()
    f1, _ = f0.append(merkle.leaf_hash(b"x"))
    f2a, _ = f1.append(merkle.leaf_hash(b"a"))
    f2b, _ = f1.append(merkle.leaf_hash(b"b"))
    assert f0.size == 0 and f1.size == 1
    assert f2a.root() != f2b.root()


def test_frontier_rejects_inconsistent_peaks() -> None:
    with pytest.raises(ValueError):
        merkle.Frontier(3, (merkle.EMPTY_ROOT,))


def test_frontier_from_nodes_uses_one_call() -> None:
    for size in range(MAX_PROOF_LEAVES + 1):
        get = CountingGetter(STORE)
        f = merkle.Frontier.from_nodes(size, get)
        assert f == FRONTIERS[size]
        assert len(get.calls) == (1 if size else 0)


def test_frontier_from_nodes_missing_peak() -> None:
    store = dict(STORE)
    del store[(2, 0)]
    with pytest.raises(ProofError):
        merkle.Frontier.from_nodes(6, CountingGetter(store))


def test_peak_ids() -> None:
    assert merkle.peak_ids(0) == []
    assert merkle.peak_ids(1) == [(0, 0)]
    assert merkle.peak_ids(7) == [(2, 0), (1, 2), (0, 6)]
    assert merkle.peak_ids(8) == [(3, 0)]
    assert merkle.peak_ids(13) == [(3, 0), (2, 2), (0, 12)]


def test_range_ids() -> None:
    assert merkle.range_ids(8, 13) == [(2, 2), (0, 12)]
    assert merkle.range_ids(4, 7) == [(1, 2), (0, 6)]
    assert merkle.range_ids(6, 7) == [(0, 6)]
    assert merkle.range_ids(0, 16) == [(4, 0)]
    for begin, end in [(3, 3), (5, 4), (2, 7)]:
        with pytest.raises(ValueError):
            merkle.range_ids(begin, end)


# --- proof generation against the oracle ------------------------------------------------------


def test_inclusion_proofs_match_oracle() -> None:
    for size in range(1, MAX_PROOF_LEAVES + 1):
        for index in range(size):
            get = CountingGetter(STORE)
            proof = merkle.inclusion_proof(index, size, get)
            assert proof == ref_path(index, ENTRIES[:size]), (index, size)
            assert len(get.calls) <= 1
            if get.calls:
                assert len(set(get.calls[0])) == len(get.calls[0]), "duplicate ids requested"


def test_consistency_proofs_match_oracle() -> None:
    for n in range(1, MAX_PROOF_LEAVES + 1):
        for m in range(1, n + 1):
            get = CountingGetter(STORE)
            proof = merkle.consistency_proof(m, n, get)
            assert proof == ref_proof(m, ENTRIES[:n]), (m, n)
            assert len(get.calls) <= 1


def test_proof_generation_rejects_bad_sizes() -> None:
    get = CountingGetter(STORE)
    for index, size in [(0, 0), (5, 5), (6, 5), (-1, 5)]:
        with pytest.raises(ProofError):
            merkle.inclusion_proof(index, size, get)
    for m, n in [(0, 5), (0, 0), (6, 5), (-1, 3)]:
        with pytest.raises(ProofError):
            merkle.consistency_proof(m, n, get)
    assert merkle.consistency_proof(5, 5, get) == []
    assert get.calls == []


def test_missing_node_raises() -> None:
    store = dict(STORE)
    del store[(0, 6)]
    with pytest.raises(ProofError):
        merkle.inclusion_proof(7, 7, CountingGetter(store))
    with pytest.raises(ProofError):
        merkle.consistency_proof(3, 7, CountingGetter(store))


def test_malformed_node_raises() -> None:
    store = dict(STORE)
    store[(0, 1)] = b"short"
    with pytest.raises(ProofError):
        merkle.inclusion_proof(0, 4, CountingGetter(store))


# --- verification -----------------------------------------------------------------------------


def _root(size: int) -> bytes:
    return FRONTIERS[size].root()


def _leaf(index: int) -> bytes:
    return merkle.leaf_hash(ENTRIES[index])


def _rejects_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    try:
        merkle.verify_inclusion(leaf, index, size, proof, root)
    except ProofError:
        return True
    return False


def _rejects_consistency(
    m: int, n: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> bool:
    try:
        merkle.verify_consistency(m, n, proof, old_root, new_root)
    except ProofError:
        return True
    return False


def test_verify_inclusion_accepts_and_rejects() -> None:
    junk = merkle.leaf_hash(b"junk")
    for size in range(1, MAX_PROOF_LEAVES + 1):
        root = _root(size)
        for index in range(size):
            leaf = _leaf(index)
            proof = ref_path(index, ENTRIES[:size])
            merkle.verify_inclusion(leaf, index, size, proof, root)
            for i, p in enumerate(proof):
                for byte, bit in [(0, 0), (31, 7), (17, 3)]:
                    bad = [*proof[:i], flipped(p, byte, bit), *proof[i + 1 :]]
                    assert _rejects_inclusion(leaf, index, size, bad, root)
            assert _rejects_inclusion(flipped(leaf), index, size, proof, root)
            for other in range(size):
                if other != index:
                    assert _rejects_inclusion(leaf, other, size, proof, root), (index, other)
            for other_size in (size - 1, size + 1, size * 2):
                same = index < other_size and ref_path_shape(index, other_size) == ref_path_shape(
                    index, size
                )
                assert _rejects_inclusion(leaf, index, other_size, proof, root) != same
            if proof:
                assert _rejects_inclusion(leaf, index, size, proof[:-1], root)
            assert _rejects_inclusion(leaf, index, size, [*proof, junk], root)
            assert _rejects_inclusion(leaf, index, size, proof, flipped(root))
            assert _rejects_inclusion(leaf, index, size, proof, _root(size - 1))


def test_verify_inclusion_rejects_malformed_input() -> None:
    proof = ref_path(2, ENTRIES[:5])
    with pytest.raises(ProofError):
        merkle.verify_inclusion(_leaf(2), 2, 5, [proof[0][:31], *proof[1:]], _root(5))
    with pytest.raises(ProofError):
        merkle.verify_inclusion(_leaf(2), 2, 5, proof, _root(5) + b"\0")
    with pytest.raises(ProofError):
        merkle.verify_inclusion(_leaf(0), 0, 0, [], merkle.EMPTY_ROOT)
    with pytest.raises(ProofError):
        merkle.verify_inclusion(_leaf(0), -1, 5, proof, _root(5))


def test_verify_consistency_accepts_and_rejects() -> None:
    junk = merkle.leaf_hash(b"junk")
    for n in range(1, MAX_PROOF_LEAVES + 1):
        new_root = _root(n)
        for m in range(1, n + 1):
            old_root = _root(m)
            proof = ref_proof(m, ENTRIES[:n])
            merkle.verify_consistency(m, n, proof, old_root, new_root)
            for i, p in enumerate(proof):
                for byte, bit in [(0, 0), (31, 7), (9, 4)]:
                    bad = [*proof[:i], flipped(p, byte, bit), *proof[i + 1 :]]
                    assert _rejects_consistency(m, n, bad, old_root, new_root)
            assert _rejects_consistency(m, n, proof, flipped(old_root), new_root)
            assert _rejects_consistency(m, n, proof, old_root, flipped(new_root))
            if proof:
                assert _rejects_consistency(m, n, proof[:-1], old_root, new_root)
            assert _rejects_consistency(m, n, [*proof, junk], old_root, new_root)
            shape = ref_proof_shape(m, n)
            for other_m, other_n in [(m - 1, n), (m + 1, n), (m, n - 1), (m, n + 1), (m, 2 * n)]:
                if (other_m, other_n) == (m, n) or not 0 < other_m <= other_n:
                    continue
                same = ref_proof_shape(other_m, other_n) == shape
                rejected = _rejects_consistency(other_m, other_n, proof, old_root, new_root)
                assert rejected != same, (m, n, other_m, other_n)


def test_wrong_size_with_a_different_shape_is_rejected() -> None:
    """The shape exemption above is narrow: most wrong sizes change the shape."""
    assert ref_path_shape(0, 3) == ref_path_shape(0, 4)
    assert ref_path_shape(2, 3) != ref_path_shape(2, 4)
    proof = ref_path(2, ENTRIES[:3])
    assert _rejects_inclusion(_leaf(2), 2, 4, proof, _root(3))
    assert _rejects_inclusion(_leaf(2), 2, 4, proof, _root(4))
    assert ref_proof_shape(2, 5) == ref_proof_shape(2, 6) != ref_proof_shape(2, 3)
    proof = ref_proof(2, ENTRIES[:5])
    assert _rejects_consistency(2, 3, proof, _root(2), _root(5))
    assert _rejects_consistency(2, 3, proof, _root(2), _root(3))


def test_verify_consistency_edge_cases() -> None:
    merkle.verify_consistency(4, 4, [], _root(4), _root(4))
    with pytest.raises(ProofError):
        merkle.verify_consistency(4, 4, [], _root(4), _root(5))
    with pytest.raises(ProofError):
        merkle.verify_consistency(4, 4, [_root(4)], _root(4), _root(4))
    with pytest.raises(ProofError):
        merkle.verify_consistency(0, 4, [], merkle.EMPTY_ROOT, _root(4))
    with pytest.raises(ProofError):
        merkle.verify_consistency(5, 4, [], _root(5), _root(4))
    with pytest.raises(ProofError):
        merkle.verify_consistency(3, 7, [], _root(3), _root(7))
    proof = ref_proof(3, ENTRIES[:7])
    with pytest.raises(ProofError):
        merkle.verify_consistency(3, 7, [p[:16] for p in proof], _root(3), _root(7))


def test_proofs_from_stored_nodes_verify_on_a_larger_tree() -> None:
    """Spot checks beyond the exhaustive range, where the tree has more levels."""
    store, frontiers = build_store(1000)
    get = CountingGetter(store)
    leaves = [merkle.leaf_hash(e) for e in entries(1000)]
    for index, size in [(0, 1000), (999, 1000), (511, 513), (512, 513), (700, 777)]:
        proof = merkle.inclusion_proof(index, size, get)
        merkle.verify_inclusion(leaves[index], index, size, proof, frontiers[size].root())
    for m, n in [(1, 1000), (511, 1000), (512, 1000), (513, 1000), (999, 1000), (300, 777)]:
        proof = merkle.consistency_proof(m, n, get)
        merkle.verify_consistency(m, n, proof, frontiers[m].root(), frontiers[n].root())
    assert merkle.root_of(leaves) == frontiers[1000].root()
