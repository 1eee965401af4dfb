"""Proof files an auditor can check offline: a chip's events, each with its inclusion
proof, under one signed checkpoint.

``check`` needs only the file and the audit public key (stdlib + cryptography, no
database, no settings): it verifies the checkpoint's signature, recomputes each event's
leaf hash from its fields and checks each inclusion proof against the signed root.
Inclusion shows these events are in the log the factory signed; it cannot show that no
other event of the chip exists — for that an auditor runs ``audit verify`` on the log.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from sqlmodel import Session, col, select

from provisioner.audit import checkpoint as cpmod
from provisioner.audit import merkle, tree
from provisioner.audit.chain import entry_of
from provisioner.audit.entry import Entry
from provisioner.db.models import AuditCheckpoint, AuditEvent
from provisioner.errors import NotFoundError, ProofError

PROOF_FORMAT = "provisioner-audit-proof/1"


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
        path = merkle.inclusion_proof(e.seq - 1, cp.size, get)
        # Never hand out a proof that fails: a damaged stored tree is reported here.
        merkle.verify_inclusion(merkle.leaf_hash(entry.encode()), e.seq - 1, cp.size, path, root)
        items.append(
            {
                "event": entry.as_json(),
                "leaf_index": e.seq - 1,
                "inclusion_proof": [base64.b64encode(h).decode() for h in path],
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
    """Verify a proof file; ProofError says what does not hold."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProofError(f"not a proof file (JSON: {exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != PROOF_FORMAT:
        raise ProofError(f"not a proof file (format must be {PROOF_FORMAT!r})")
    note, serial, items = doc.get("checkpoint"), doc.get("chip_serial"), doc.get("events")
    if not isinstance(note, str) or not isinstance(serial, str) or not isinstance(items, list):
        raise ProofError("proof file lacks checkpoint, chip_serial or events")
    origin = note.split("\n", 1)[0]
    # The key name is the origin (our convention); the key itself is the auditor's.
    cp = cpmod.open_signed(note, origin, public_key, origin)
    if not items:
        raise ProofError("the proof file proves no event")
    entries = []
    for n, item in enumerate(items, 1):
        try:
            entry = Entry.from_json(item["event"])
            index = item["leaf_index"]
            proof = [base64.b64decode(h, validate=True) for h in item["inclusion_proof"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ProofError(f"event #{n} of the proof file is malformed ({exc})") from None
        if entry.chip_serial != serial:
            raise ProofError(f"event {entry.seq} is about chip {entry.chip_serial}, not {serial}")
        if index != entry.seq - 1:
            raise ProofError(f"event {entry.seq} claims leaf index {index}")
        try:
            merkle.verify_inclusion(
                merkle.leaf_hash(entry.encode()), index, cp.size, proof, cp.root
            )
        except ProofError as exc:
            raise ProofError(f"event {entry.seq} ({entry.event_type}): {exc}") from None
        entries.append(entry)
    after = doc.get("events_after_checkpoint", 0)
    return ProofReport(serial, cp.origin, cp.size, entries, after if isinstance(after, int) else 0)


CONSISTENCY_FORMAT = "provisioner-audit-consistency/1"


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
        "proof": [base64.b64encode(h).decode() for h in path],
    }


def check_consistency(
    raw: bytes, public_key: ec.EllipticCurvePublicKey
) -> tuple[cpmod.Checkpoint, cpmod.Checkpoint]:
    """Verify a consistency file offline: both checkpoints signed by the key, same log, and
    the newer tree extends the older one unchanged."""
    try:
        doc = json.loads(raw)
        if doc.get("format") != CONSISTENCY_FORMAT:
            raise ValueError(f"format must be {CONSISTENCY_FORMAT!r}")
        notes = (doc["old"], doc["new"])
        path = [base64.b64decode(h, validate=True) for h in doc["proof"]]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ProofError(f"not a consistency file ({exc})") from None
    old, new = (cpmod.open_signed(n, n.split("\n", 1)[0], public_key) for n in notes)
    if old.origin != new.origin:
        raise ProofError(f"the checkpoints are of two logs ({old.origin}, {new.origin})")
    merkle.verify_consistency(old.size, new.size, path, old.root, new.root)
    return old, new
