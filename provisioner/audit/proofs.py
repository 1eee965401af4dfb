"""Proof files an auditor can check offline: a chip's events, each with its inclusion
proof, under one signed checkpoint.

The files are written here (they need the database); they are read and checked by the
standalone verifier (:mod:`provisioner.audit.verifier`: stdlib + cryptography, no database,
no settings), which an auditor runs as one file and ``audit check-proof`` runs in-process.
Format ``/2`` writes hashes as hex; files of format ``/1`` (base64) are still read.
Inclusion shows these events are in the log the factory signed; it cannot show that no
other event of the chip exists — for that an auditor runs ``audit verify`` on the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from sqlmodel import Session, col, select

from provisioner.audit import checkpoint as cpmod
from provisioner.audit import merkle, tree, verifier
from provisioner.audit.chain import entry_of
from provisioner.audit.entry import Entry
from provisioner.db.models import AuditCheckpoint, AuditEvent
from provisioner.errors import NotFoundError, ProofError

PROOF_FORMAT = verifier.PROOF_FORMAT


def build(session: Session, chip_serial: str) -> dict[str, Any]:
    """The proof document for ``chip_serial`` under the latest checkpoint."""
    serial = chip_serial.upper()
    events = session.exec(
        select(AuditEvent).where(AuditEvent.chip_serial == serial).order_by(col(AuditEvent.seq))
    ).all()
    if not events:
        raise NotFoundError(f"no audit event names chip {serial}")
    cp = session.exec(
        select(AuditCheckpoint).order_by(col(AuditCheckpoint.size).desc()).limit(1)
    ).first()
    covered = [e for e in events if cp is not None and e.seq <= cp.size]
    if cp is None or not covered:
        raise NotFoundError(
            f"no signed checkpoint covers chip {serial}'s events yet: wait for the signer's "
            "next checkpoint or run `provisioner audit checkpoint`"
        )
    get = tree.node_getter(session)
    root = bytes.fromhex(cp.root_hash)
    items = []
    for e in covered:
        entry = entry_of(e)
        leaf = merkle.leaf_hash(entry.encode())
        path = merkle.inclusion_proof(e.seq - 1, cp.size, get)
        # Never hand out a proof that fails: a damaged stored tree is reported here.
        merkle.verify_inclusion(leaf, e.seq - 1, cp.size, path, root)
        items.append(
            {
                "event": entry.as_json(),
                "leaf_index": e.seq - 1,
                "leaf_hash": verifier.hash_text(leaf),
                "inclusion_proof": [verifier.hash_text(h) for h in path],
            }
        )
    return {
        "format": PROOF_FORMAT,
        "chip_serial": serial,
        "checkpoint": cp.note,
        "events": items,
        "events_after_checkpoint": len(events) - len(covered),
    }


@dataclass(frozen=True)
class ProofReport:
    chip_serial: str
    origin: str
    tree_size: int
    events: list[Entry]
    events_after_checkpoint: int


def check(raw: bytes, public_key: ec.EllipticCurvePublicKey) -> ProofReport:
    """Verify a proof file (:func:`verifier.check_proof`); ProofError says what does not
    hold, its ``__cause__`` the verifier's finer error (wrong input, wrong key, edited)."""
    try:
        r = verifier.check_proof(raw, public_key)
    except verifier.VerifierError as exc:
        raise ProofError(str(exc)) from exc
    return ProofReport(r.chip_serial, r.origin, r.tree_size, r.events, r.events_after_checkpoint)


CONSISTENCY_FORMAT = verifier.CONSISTENCY_FORMAT


def build_consistency(session: Session, old: int, new: int | None = None) -> dict[str, Any]:
    """The consistency proof between the signed checkpoints at sizes ``old`` and ``new``
    (default: the latest)."""
    rows = {
        cp.size: cp
        for cp in session.exec(select(AuditCheckpoint).order_by(col(AuditCheckpoint.size)))
    }
    if new is None and rows:
        new = max(rows)
    for size in (old, new):
        if size is None or size not in rows:
            raise NotFoundError(
                f"no signed checkpoint at size {size} (see `provisioner audit checkpoints`)"
            )
    assert new is not None
    if old > new:
        raise ProofError(f"the older checkpoint ({old}) must not be larger than {new}")
    path = tree.consistency_proof(session, old, new)
    return {
        "format": CONSISTENCY_FORMAT,
        "old": rows[old].note,
        "new": rows[new].note,
        "proof": [verifier.hash_text(h) for h in path],
    }


def check_consistency(
    raw: bytes, public_key: ec.EllipticCurvePublicKey
) -> tuple[cpmod.Checkpoint, cpmod.Checkpoint]:
    """Verify a consistency file offline (:func:`verifier.check_consistency`): both
    checkpoints signed by the key, same log, and the newer tree extends the older one."""
    try:
        r = verifier.check_consistency(raw, public_key)
    except verifier.VerifierError as exc:
        raise ProofError(str(exc)) from exc
    return r.old, r.new
