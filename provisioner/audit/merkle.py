"""RFC 6962 / RFC 9162 Merkle tree hashing, incremental append and proofs.

The audit log is an append-only list of entries whose Merkle Tree Hash (MTH) is signed in
checkpoints. Everything here is pure computation over hashes: storage is the caller's job,
reached through a ``get`` callback that returns stored *perfect* subtree hashes by
:data:`NodeId`. Only perfect subtrees are ever stored because they never change once
complete; the hash of any non-perfect (right-edge) subtree is folded on demand from the
perfect subtrees that make it up (:func:`range_ids`).

Proof generation follows RFC 6962 §2.1.1-2.1.2 (PATH and PROOF/SUBPROOF) and verification
follows RFC 9162 §2.1.3.2 and §2.1.4.2, so proofs interoperate with other CT-style tooling.

Leaf and node hashing and the two proof checks are the standalone verifier's
(:mod:`provisioner.audit.verifier`): one implementation for the product and the auditor.
Here they are re-exported, the checks raising the product's ProofError.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from provisioner.audit import verifier
from provisioner.audit.verifier import EMPTY_ROOT, HASH_SIZE, NODE_PREFIX, leaf_hash, node_hash
from provisioner.errors import ProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "Frontier",
    "NodeGetter",
    "NodeId",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "peak_ids",
    "range_ids",
    "root_of",
    "verify_consistency",
    "verify_inclusion",
]

NodeId = tuple[int, int]
"""``(level, index)``: the perfect subtree over leaves ``[index*2**level, (index+1)*2**level)``."""

NodeGetter = Callable[[Sequence[NodeId]], Mapping[NodeId, bytes]]

Range = tuple[int, int]


def _fold(hashes: Sequence[bytes]) -> bytes:
    """MTH of consecutive perfect subtrees, largest first.

    The RFC 6962 split puts the largest perfect subtree on the left and recurses on the
    rest, so the tree over such a sequence is always ``h0 | (h1 | (h2 | ...))``.
    """
    h = hashes[-1]
    for p in reversed(hashes[:-1]):
        h = node_hash(p, h)
    return h


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over already-hashed leaves in O(n) time and O(log n) memory.

    Used to recompute a root from scratch (e.g. full verification of the log), so it never
    holds whole tree levels: each peak of the tree is hashed block by block, keeping only a
    stack of perfect-subtree peaks plus one fixed-size block.
    """
    if not leaf_hashes:
        return EMPTY_ROOT
    peaks = [
        _perfect_root(leaf_hashes, index << level, level)
        for level, index in peak_ids(len(leaf_hashes))
    ]
    return _fold(peaks)


_BLOCK_LEVEL = 8  # blocks of 256 leaves: big enough to amortise the loop, small in memory


def _perfect_root(leaves: Sequence[bytes], start: int, level: int) -> bytes:
    """MTH of the perfect subtree of ``2**level`` leaves beginning at ``start``.

    Blocks are hashed a level at a time with comprehensions (the per-hash interpreter cost
    dominates SHA-256 itself), and block roots are merged through a stack of peaks.
    """
    block = min(level, _BLOCK_LEVEL)
    size = 1 << block
    stack: list[bytes] = []
    for i in range(1 << (level - block)):
        first = start + i * size
        h = _perfect_block(leaves[first : first + size])
        n = i
        while n & 1:  # each trailing one bit is an equal-sized peak that merges now
            h = node_hash(stack.pop(), h)
            n >>= 1
        stack.append(h)
    return stack[0]


def _perfect_block(hashes: Sequence[bytes]) -> bytes:
    """MTH of a power-of-two count of hashes, one level per pass."""
    sha256 = hashlib.sha256
    level = list(hashes)
    while len(level) > 1:
        pairs = iter(level)  # the same iterator twice yields (left, right) pairs
        level = [sha256(NODE_PREFIX + a + b).digest() for a, b in zip(pairs, pairs, strict=True)]
    return level[0]


def peak_ids(size: int) -> list[NodeId]:
    """The perfect subtrees that make up leaves ``[0, size)``, largest first."""
    if size < 0:
        raise ValueError(f"tree size must not be negative, got {size}")
    return _decompose(0, size)


def range_ids(begin: int, end: int) -> list[NodeId]:
    """The perfect subtrees covering leaves ``[begin, end)`` in the RFC 6962 split.

    This is how the hash of a right-edge, possibly non-perfect subtree is obtained from
    stored nodes. ``begin`` must be aligned as RFC 6962 recursion leaves it (a multiple of
    the largest piece); anything else is a caller bug and raises ValueError.
    """
    if not 0 <= begin < end:
        raise ValueError(f"invalid leaf range [{begin}, {end})")
    return _decompose(begin, end - begin)


def _decompose(begin: int, count: int) -> list[NodeId]:
    """Split ``count`` leaves starting at ``begin`` into perfect subtrees, largest first."""
    ids: list[NodeId] = []
    start = begin
    for level in range(count.bit_length() - 1, -1, -1):
        if count >> level & 1:
            if start % (1 << level):
                raise ValueError(f"leaf range starting at {begin} is not subtree-aligned")
            ids.append((level, start >> level))
            start += 1 << level
    return ids


@dataclass(frozen=True)
class Frontier:
    """The right edge of the tree: the roots of the perfect subtrees that make up `size`
    leaves, left to right (largest first), one per set bit of `size`.

    What an appender keeps so appending never recomputes the tree.
    """

    size: int = 0
    peaks: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        """Refuse a frontier whose peaks cannot belong to `size`: it would yield wrong roots."""
        if self.size < 0 or len(self.peaks) != self.size.bit_count():
            raise ValueError(f"a tree of {self.size} leaves has {self.size.bit_count()} peaks")

    def append(self, leaf: bytes) -> tuple[Frontier, list[tuple[NodeId, bytes]]]:
        """Add one leaf HASH.

        Returns the new frontier and every node completed by this append, leaf first:
        ``[((0, old_size), leaf), ((1, old_size//2), h), ...]`` -- exactly the perfect
        subtrees that became complete, which is what the caller must store.
        """
        peaks = list(self.peaks)
        h = leaf
        level = 0
        done: list[tuple[NodeId, bytes]] = [((0, self.size), leaf)]
        n = self.size
        while n & 1:  # a peak of the same level exists: they merge into one level higher
            h = node_hash(peaks.pop(), h)
            level += 1
            n >>= 1
            done.append(((level, self.size >> level), h))
        peaks.append(h)
        return Frontier(self.size + 1, tuple(peaks)), done

    def root(self) -> bytes:
        """The MTH of the `size` leaves (EMPTY_ROOT when there are none)."""
        return _fold(self.peaks) if self.peaks else EMPTY_ROOT

    @classmethod
    def from_nodes(cls, size: int, get: NodeGetter) -> Frontier:
        """Rebuild the frontier of a stored tree with a single ``get`` round trip."""
        ids = peak_ids(size)
        found = _fetch(ids, get)
        return cls(size, tuple(found[i] for i in ids))


def _fetch(ids: Sequence[NodeId], get: NodeGetter) -> dict[NodeId, bytes]:
    """Call ``get`` once for the distinct ids and insist every one came back, well formed.

    A missing or malformed node means the store cannot back the requested answer, which is
    reported as a proof failure rather than a silently wrong hash.
    """
    wanted = list(dict.fromkeys(ids))
    if not wanted:
        return {}
    got = get(wanted)
    found: dict[NodeId, bytes] = {}
    for node in wanted:
        value = got.get(node)
        if value is None:
            raise ProofError(f"Merkle tree node {node} (level, index) is missing")
        if len(value) != HASH_SIZE:
            raise ProofError(f"Merkle tree node {node} is {len(value)} bytes, not {HASH_SIZE}")
        found[node] = bytes(value)
    return found


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``): RFC 6962's k."""
    return 1 << ((n - 1).bit_length() - 1)


def _combine(ranges: Sequence[Range], get: NodeGetter) -> list[bytes]:
    """Turn subtree ranges into their MTHs, fetching every needed node in one call."""
    pieces = [range_ids(b, e) for b, e in ranges]
    found = _fetch([node for ids in pieces for node in ids], get)
    return [_fold([found[node] for node in ids]) for ids in pieces]


def _path_ranges(index: int, size: int) -> list[Range]:
    """The subtrees of RFC 6962 PATH(index, D[0:size]), leaf-to-root order.

    Walks the RFC recursion from the root down, recording the sibling subtree at each
    split, then reverses so the deepest sibling comes first.
    """
    ranges: list[Range] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
    ranges.reverse()
    return ranges


def _consistency_ranges(old_size: int, new_size: int) -> list[Range]:
    """The subtrees of RFC 6962 PROOF(old_size, D[0:new_size]) (SUBPROOF with the b flag).

    ``whole`` is SUBPROOF's b: true while the current subtree's left edge is the tree's,
    in which case the verifier already knows the old subtree's hash (the old root).
    """
    ranges: list[Range] = []
    lo, hi = 0, new_size
    whole = True
    while old_size != hi:
        k = _split(hi - lo)
        if old_size - lo <= k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
            whole = False
    if not whole:
        ranges.append((lo, hi))
    ranges.reverse()
    return ranges


def inclusion_proof(index: int, size: int, get: NodeGetter) -> list[bytes]:
    """RFC 6962 PATH(index, D[0:size]) (audit path, leaf-to-root order as RFC 9162 §2.1.3.1).

    Computed from stored perfect-subtree node hashes: every NodeId needed is worked out
    first and fetched with ONE ``get`` call, then non-perfect right subtrees are folded.
    """
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    return _combine(_path_ranges(index, size), get)


def consistency_proof(old_size: int, new_size: int, get: NodeGetter) -> list[bytes]:
    """RFC 6962 PROOF(old_size, D[0:new_size]), with the same one-call ``get`` rule.

    Equal sizes give an empty proof; the empty tree has no proof (nothing to be consistent
    with), so ``0 < old_size <= new_size`` is required.
    """
    if not 0 < old_size <= new_size:
        raise ProofError(f"no consistency proof from size {old_size} to size {new_size}")
    if old_size == new_size:
        return []
    return _combine(_consistency_ranges(old_size, new_size), get)


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that leaf HASH ``leaf`` is entry ``index`` of the tree of ``size`` with ``root``
    (RFC 9162 §2.1.3.2); raises ProofError naming the reason on failure."""
    try:
        verifier.verify_inclusion(leaf, index, size, proof, root)
    except verifier.VerifierError as exc:
        raise ProofError(str(exc)) from exc


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """Check that the tree (new_size, new_root) extends the tree (old_size, old_root)
    (RFC 9162 §2.1.4.2; ``0 < old_size <= new_size``); raises ProofError on failure."""
    try:
        verifier.verify_consistency(old_size, new_size, proof, old_root, new_root)
    except verifier.VerifierError as exc:
        raise ProofError(str(exc)) from exc
