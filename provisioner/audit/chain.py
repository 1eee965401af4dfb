"""Appending to the audit log: a hash chain of events that are also Merkle-tree leaves.

Each event's ``hash`` is SHA-256 over the previous event's hash and the event's canonical
bytes (:mod:`provisioner.audit.entry`), which protects every row the way EJBCA's
integrity-protected log does: editing, deleting or reordering a row breaks every later
link. The same bytes, hashed as an RFC 6962 leaf, extend the Merkle tree whose heads the
HSM signs (:mod:`provisioner.audit.checkpointer`), which is what an insider who rewrites
the whole chain cannot forge. Appends happen inside the caller's transaction, so an event
exists if and only if the state change it describes was committed.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, text
from sqlmodel import Session, col, select

from provisioner.audit import merkle, tree
from provisioner.audit.entry import Entry, canonical_payload, role_of

# The chain hash is the verifier's (one implementation, the one auditors run).
from provisioner.audit.verifier import GENESIS_HASH as GENESIS_HASH
from provisioner.audit.verifier import link_hash as link_hash
from provisioner.db.models import AuditEvent


def entry_of(ev: AuditEvent) -> Entry:
    return Entry(
        seq=ev.seq,
        ts=ev.ts,
        actor=ev.actor,
        role=ev.role,
        event_type=ev.event_type,
        station_id=ev.station_id,
        socket=ev.socket,
        batch_id=ev.batch_id,
        device_id=ev.device_id,
        chip_serial=ev.chip_serial,
        payload=ev.payload,
    )


def lock_for_append(session: Session) -> None:
    """Serialise appenders. SQLite: the transaction already holds the write lock (BEGIN
    IMMEDIATE). PostgreSQL: lock the table so two appenders cannot fork the chain."""
    if session.get_bind().dialect.name == "postgresql":
        session.exec(text("LOCK TABLE audit_event IN EXCLUSIVE MODE"))  # type: ignore[call-overload]


def append(
    session: Session,
    event_type: str,
    *,
    actor: str,
    role: str | None = None,
    station_id: str | None = None,
    socket: int | None = None,
    batch_id: int | None = None,
    device_id: int | None = None,
    chip_serial: str | None = None,
    payload: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """Append one event in the caller's transaction (which must be able to write).

    ``role`` defaults to the actor's ``role:`` prefix. Returns the event as written (not
    attached to the session)."""
    lock_for_append(session)
    conn = session.connection()
    last = conn.execute(
        select(AuditEvent.seq, AuditEvent.hash).order_by(col(AuditEvent.seq).desc()).limit(1)
    ).first()
    seq = 1 if last is None else last[0] + 1
    prev = GENESIS_HASH if last is None else last[1]
    ev = AuditEvent(
        seq=seq,
        ts=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        actor=actor,
        role=role if role is not None else role_of(actor),
        event_type=event_type,
        station_id=station_id,
        socket=socket,
        batch_id=batch_id,
        device_id=device_id,
        chip_serial=chip_serial,
        payload=canonical_payload(payload or {}),
        prev_hash=prev,
        hash="",
    )
    encoded = entry_of(ev).encode()
    ev.hash = link_hash(prev, encoded)
    # Core INSERTs, not session.add: the ORM's unit of work would cost more than the
    # hashing (appends run inside every state change, so they must stay cheap).
    conn.execute(insert(AuditEvent), [ev.model_dump()])
    tree.add_leaf(session, seq - 1, merkle.leaf_hash(encoded))
    return ev
