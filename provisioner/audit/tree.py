"""The audit Merkle tree as stored: complete subtrees in ``audit_node``.

Appending a leaf reads the O(log n) peaks of the tree, adds the leaf and writes the
subtrees it completes (one on average), all in the appending transaction: the tree never
has to be recomputed, and inclusion or consistency proofs are a single lookup of at most
2·log2(n) nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from sqlalchemy import and_, insert, or_
from sqlmodel import Session, col, select

from provisioner.audit import merkle
from provisioner.audit.merkle import NodeId
from provisioner.db.models import AuditNode
from provisioner.errors import ProofError

NodeGetter = Callable[[Sequence[NodeId]], Mapping[NodeId, bytes]]

_CHUNK = 200  # pairs per query: 400 bound parameters


def node_getter(session: Session) -> NodeGetter:
    """Fetch stored nodes by id, in as few queries as the id list allows (Core, not the
    ORM: this runs in every append)."""
    conn = session.connection()

    def get(ids: Sequence[NodeId]) -> Mapping[NodeId, bytes]:
        found: dict[NodeId, bytes] = {}
        wanted = list(dict.fromkeys(ids))
        for i in range(0, len(wanted), _CHUNK):
            part = wanted[i : i + _CHUNK]
            # OR of (level, idx) pairs, not a row-value IN: SQLite answers the OR with one
            # primary-key lookup per pair, but scans the table for the row-value IN.
            rows = conn.execute(
                select(AuditNode.level, AuditNode.idx, AuditNode.hash).where(
                    or_(
                        *(
                            and_(col(AuditNode.level) == lv, col(AuditNode.idx) == ix)
                            for lv, ix in part
                        )
                    )
                )
            ).all()
            found.update({(lv, ix): bytes(h) for lv, ix, h in rows})
        return found

    return get


def add_leaf(session: Session, size_before: int, leaf: bytes) -> None:
    """Append leaf number ``size_before`` (0-based) and store the subtrees it completes.

    Only the left siblings the new leaf merges with are read: one per trailing 1-bit of
    ``size_before`` (none for every other append, one on average)."""
    index = size_before
    siblings = []
    level = 0
    while (index >> level) & 1:
        siblings.append((level, (index >> level) - 1))
        level += 1
    found = node_getter(session)(siblings) if siblings else {}
    rows = [{"level": 0, "idx": index, "hash": leaf}]
    h = leaf
    for lv, ix in siblings:
        if (lv, ix) not in found:
            raise ProofError(f"the stored Merkle tree lacks node ({lv}, {ix})")
        h = merkle.node_hash(found[(lv, ix)], h)
        rows.append({"level": lv + 1, "idx": index >> (lv + 1), "hash": h})
    session.connection().execute(insert(AuditNode), rows)


def root(session: Session, size: int) -> bytes:
    """The tree head over the first ``size`` leaves, from the stored peaks."""
    return merkle.Frontier.from_nodes(size, node_getter(session)).root()


def inclusion_proof(session: Session, index: int, size: int) -> list[bytes]:
    return merkle.inclusion_proof(index, size, node_getter(session))


def consistency_proof(session: Session, old_size: int, new_size: int) -> list[bytes]:
    return merkle.consistency_proof(old_size, new_size, node_getter(session))
