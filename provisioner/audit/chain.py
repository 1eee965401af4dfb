"""Append-only hash chain of audit events.

Each event's hash is SHA-256 over the canonical encoding of all its fields *and* the previous
event's hash, so editing, deleting or reordering any row breaks every later link and
``verify`` names the first bad one. Appends happen inside the caller's transaction, so an
event exists if and only if the state change it describes was committed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, text
from sqlmodel import Session, col, select

from provisioner.db.models import AuditEvent

GENESIS_HASH = "0" * 64

# Defence in depth: a payload key that smells of a secret is a programming error.
_SECRET_WORDS = ("pin", "password", "token", "secret", "private")


def _canonical_payload(payload: Mapping[str, Any]) -> str:
    for key in payload:
        low = key.lower()
        if any(w in low for w in _SECRET_WORDS) and not low.endswith("_hash"):
            raise ValueError(f"audit payload key {key!r} looks like a secret; never audit secrets")
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def event_hash(
    *,
    seq: int,
    ts: str,
    actor: str,
    event_type: str,
    station_id: str | None,
    batch_id: int | None,
    device_id: int | None,
    chip_serial: str | None,
    payload: str,
    prev_hash: str,
) -> str:
    """SHA-256 (hex) of one event's canonical encoding, chained to ``prev_hash``."""
    body = json.dumps(
        [seq, ts, actor, event_type, station_id, batch_id, device_id, chip_serial, payload],
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(bytes.fromhex(prev_hash) + body.encode()).hexdigest()


def _hash_of(ev: AuditEvent, prev_hash: str) -> str:
    return event_hash(
        seq=ev.seq,
        ts=ev.ts,
        actor=ev.actor,
        event_type=ev.event_type,
        station_id=ev.station_id,
        batch_id=ev.batch_id,
        device_id=ev.device_id,
        chip_serial=ev.chip_serial,
        payload=ev.payload,
        prev_hash=prev_hash,
    )


def append(
    session: Session,
    event_type: str,
    *,
    actor: str,
    station_id: str | None = None,
    batch_id: int | None = None,
    device_id: int | None = None,
    chip_serial: str | None = None,
    payload: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """Append one event in the caller's transaction (which must be able to write).

    Concurrency: on SQLite the transaction already holds the database write lock (BEGIN
    IMMEDIATE); on PostgreSQL the table is locked so two appenders cannot fork the chain.
    """
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        session.exec(text("LOCK TABLE audit_event IN EXCLUSIVE MODE"))  # type: ignore[call-overload]
    last = session.exec(select(AuditEvent).order_by(col(AuditEvent.seq).desc()).limit(1)).first()
    seq = 1 if last is None else last.seq + 1
    prev = GENESIS_HASH if last is None else last.hash
    ev = AuditEvent(
        seq=seq,
        ts=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        actor=actor,
        event_type=event_type,
        station_id=station_id,
        batch_id=batch_id,
        device_id=device_id,
        chip_serial=chip_serial,
        payload=_canonical_payload(payload or {}),
        prev_hash=prev,
        hash="",
    )
    ev.hash = _hash_of(ev, prev)
    session.add(ev)
    session.flush()
    return ev


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of a full chain check; ``first_bad_seq`` is None when the chain is intact."""

    events: int
    first_bad_seq: int | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.first_bad_seq is None


def verify(session: Session, *, chunk: int = 5000) -> VerifyResult:
    """Recompute the whole chain from the genesis and report the first inconsistency."""
    prev_hash = GENESIS_HASH
    expected_seq = 1
    checked = 0
    while True:
        rows = session.exec(
            select(AuditEvent)
            .where(col(AuditEvent.seq) >= expected_seq)
            .order_by(col(AuditEvent.seq))
            .limit(chunk)
        ).all()
        if not rows:
            break
        for ev in rows:
            if ev.seq != expected_seq:
                return VerifyResult(
                    checked, expected_seq, f"event {expected_seq} is missing (next is {ev.seq})"
                )
            if ev.prev_hash != prev_hash:
                return VerifyResult(
                    checked, ev.seq, f"event {ev.seq} does not link to event {ev.seq - 1}"
                )
            if _hash_of(ev, prev_hash) != ev.hash:
                return VerifyResult(
                    checked, ev.seq, f"event {ev.seq} ({ev.event_type}) was altered"
                )
            prev_hash = ev.hash
            expected_seq += 1
            checked += 1
    total = session.exec(select(func.count()).select_from(AuditEvent)).one()
    if total != checked:
        return VerifyResult(checked, expected_seq, "rows exist outside the chain's sequence")
    return VerifyResult(checked)
